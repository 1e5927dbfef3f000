//! The memory plan: every temporary buffer gets an offset in one arena,
//! and buffers whose live ranges (first to last kernel touching them) do
//! not overlap share memory. Inputs and parameters live outside the arena.
//!
//! Both executors use this one plan: the CPU's arena is a `Vec<f32>`, the
//! GPU's one device allocation (`runtime::cuda`), and every temporary
//! starts at a multiple of [`ARENA_ALIGN`] elements (256 bytes), so a
//! buffer in the device arena is as aligned as a `cuMemAlloc` of its own.

use super::ir::*;

/// The alignment of every temporary in the arena, in f32 elements: 64
/// (256 bytes, what `cuMemAlloc` guarantees for an allocation of its own;
/// on the CPU it costs at most 252 bytes per temporary).
pub const ARENA_ALIGN: usize = 64;

/// Where each buffer lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Arena offset (in f32 elements) of each temporary; `None` for
    /// inputs and parameters.
    pub offsets: Vec<Option<usize>>,
    /// Arena length in f32 elements.
    pub arena_len: usize,
    /// What the arena would need without reuse.
    pub unshared_len: usize,
}

impl MemoryPlan {
    /// The length of buffer `b` of `p` when it is held outside the arena
    /// (an input, parameter or state, which executors allocate one by one
    /// and may exchange between programs); `None` for a temporary or a
    /// buffer `p` does not have.
    pub fn own_len(&self, p: &Program, b: usize) -> Option<usize> {
        p.buffers
            .get(b)
            .filter(|_| self.offsets.get(b).is_some_and(Option::is_none))
            .map(|x| x.len)
    }

    /// Peak bytes of a run: the arena plus inputs and parameters.
    pub fn peak_bytes(&self, p: &Program) -> usize {
        let outside: usize = p
            .buffers
            .iter()
            .filter(|b| !matches!(b.kind, BufKind::Temp))
            .map(|b| b.len)
            .sum();
        self.arena_len.saturating_add(outside).saturating_mul(4)
    }
}

/// Buffers a kernel reads or writes.
pub fn touched(k: &Kernel) -> Vec<BufId> {
    let mut out = Vec::new();
    match &k.body {
        KernelBody::Contraction(c) => {
            out.extend([c.a.0, c.b.0, c.c.0]);
            out.extend(c.bias.map(|b| b.0));
        }
        KernelBody::Loop(l) => stmts(&l.body, &mut out),
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn stmts(body: &[Stmt], out: &mut Vec<BufId>) {
    for s in body {
        match s {
            Stmt::Loop { body, .. } | Stmt::IfInBounds { body, .. } => stmts(body, out),
            Stmt::Store { buf, value, .. } => {
                out.push(*buf);
                expr(value, out);
            }
            Stmt::ScatterAdd {
                buf, row, value, ..
            } => {
                out.push(*buf);
                expr(&row.value, out);
                expr(value, out);
            }
            Stmt::Set { value, .. } => expr(value, out),
        }
    }
}

fn expr(e: &Expr, out: &mut Vec<BufId>) {
    match e {
        Expr::Load(b, _) => out.push(*b),
        Expr::Gather { buf, row, .. } => {
            out.push(*buf);
            expr(&row.value, out);
        }
        Expr::Un(_, x) => expr(x, out),
        Expr::Bin(_, a, b) => {
            expr(a, out);
            expr(b, out);
        }
        Expr::Select(a, _, b, t, f) => {
            for x in [a, b, t, f] {
                expr(x, out);
            }
        }
        Expr::Const(_) | Expr::Get(_) | Expr::Iter(_) => {}
    }
}

/// Plans the arena: greedy first fit in order of first use, every offset a
/// multiple of [`ARENA_ALIGN`].
pub fn plan(p: &Program) -> MemoryPlan {
    plan_aligned(p, ARENA_ALIGN)
}

/// `n` rounded up to a multiple of `align` (saturating).
fn round_up(n: usize, align: usize) -> usize {
    n.div_ceil(align).saturating_mul(align)
}

/// [`plan`] with every offset a multiple of `align` elements (1: packed).
pub fn plan_aligned(p: &Program, align: usize) -> MemoryPlan {
    let align = align.max(1);
    let nb = p.buffers.len();
    let mut first = vec![usize::MAX; nb];
    let mut last = vec![0usize; nb];
    for (i, k) in p.kernels.iter().enumerate() {
        for b in touched(k) {
            first[b] = first[b].min(i);
            last[b] = last[b].max(i);
        }
    }
    // Outputs are read by the caller after the last kernel.
    for o in &p.outputs {
        last[o.buf] = usize::MAX;
    }
    let mut temps: Vec<BufId> = (0..nb)
        .filter(|b| matches!(p.buffers[*b].kind, BufKind::Temp))
        .collect();
    temps.sort_by_key(|b| (first[*b], *b));
    let mut offsets = vec![None; nb];
    // Placed blocks: (offset, len, first, last).
    let mut placed: Vec<(usize, usize, usize, usize)> = Vec::new();
    let mut arena_len = 0;
    for b in temps {
        let len = p.buffers[b].len;
        // The room the buffer takes: up to the next aligned offset.
        let room = round_up(len, align);
        let (f, l) = (first[b].min(last[b]), last[b]);
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|(_, _, pf, pl)| *pf <= l && f <= *pl)
            .map(|(o, n, _, _)| (*o, *n))
            .collect();
        busy.sort_unstable();
        let mut at: usize = 0;
        for (o, n) in busy {
            if at.saturating_add(room) <= o {
                break;
            }
            at = at.max(o.saturating_add(n));
        }
        offsets[b] = Some(at);
        placed.push((at, room, f, l));
        arena_len = arena_len.max(at.saturating_add(len));
    }
    let unshared_len = p
        .buffers
        .iter()
        .filter(|b| matches!(b.kind, BufKind::Temp))
        .map(|b| b.len)
        .sum();
    MemoryPlan {
        offsets,
        arena_len,
        unshared_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(name: &str, from: BufId, to: BufId, len: usize) -> Kernel {
        Kernel {
            name: name.into(),
            body: KernelBody::Loop(LoopKernel {
                vars: 1,
                scalars: 0,
                body: vec![Stmt::Loop {
                    var: 0,
                    extent: len,
                    body: vec![Stmt::Store {
                        buf: to,
                        index: Index::var(0, 1),
                        value: Expr::load(from, Index::var(0, 1)),
                    }],
                }],
            }),
        }
    }

    #[test]
    fn a_chain_reuses_memory_and_never_overlaps_live_buffers() {
        let buf = |n: &str, kind| Buffer {
            name: n.into(),
            len: 10,
            kind,
        };
        let p = Program {
            name: "chain".into(),
            batch: 1,
            buffers: vec![
                buf("x", BufKind::Input("x".into())),
                buf("a", BufKind::Temp),
                buf("b", BufKind::Temp),
                buf("c", BufKind::Temp),
                buf("d", BufKind::Temp),
            ],
            kernels: vec![
                copy("1", 0, 1, 10),
                copy("2", 1, 2, 10),
                copy("3", 2, 3, 10),
                copy("4", 3, 4, 10),
            ],
            inputs: vec![],
            params: vec![],
            outputs: vec![Binding {
                name: "d".into(),
                buf: 4,
                shape: vec![10],
                vocab: None,
            }],
        };
        let m = plan_aligned(&p, 1);
        assert_eq!(m.unshared_len, 40);
        assert_eq!(m.arena_len, 20, "{m:?}");
        // Neighbours in the chain are live together, so they never share.
        for (a, b) in [(1, 2), (2, 3), (3, 4)] {
            assert_ne!(m.offsets[a], m.offsets[b]);
        }
        assert_eq!(m.offsets[0], None);
        assert_eq!(m.peak_bytes(&p), 4 * 30);
        // Aligned: the same sharing, each buffer at a multiple of 64; the
        // last one placed ends the arena without padding.
        let m = plan(&p);
        assert_eq!(
            m.offsets,
            vec![None, Some(0), Some(64), Some(0), Some(64)],
            "{m:?}"
        );
        assert_eq!(m.arena_len, 64 + 10);
        assert_eq!(m.peak_bytes(&p), 4 * (74 + 10));
    }
}
