//! The memory plan: every temporary buffer gets an offset in one arena,
//! and buffers whose live ranges (first to last kernel touching them) do
//! not overlap share memory. Inputs and parameters live outside the arena.

use super::ir::*;

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

/// Plans the arena: greedy first fit in order of first use.
pub fn plan(p: &Program) -> MemoryPlan {
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
        let (f, l) = (first[b].min(last[b]), last[b]);
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|(_, _, pf, pl)| *pf <= l && f <= *pl)
            .map(|(o, n, _, _)| (*o, *n))
            .collect();
        busy.sort_unstable();
        let mut at = 0;
        for (o, n) in busy {
            if at + len <= o {
                break;
            }
            at = at.max(o + n);
        }
        offsets[b] = Some(at);
        placed.push((at, len, f, l));
        arena_len = arena_len.max(at + len);
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
        let m = plan(&p);
        assert_eq!(m.unshared_len, 40);
        assert_eq!(m.arena_len, 20, "{m:?}");
        // Neighbours in the chain are live together, so they never share.
        for (a, b) in [(1, 2), (2, 3), (3, 4)] {
            assert_ne!(m.offsets[a], m.offsets[b]);
        }
        assert_eq!(m.offsets[0], None);
        assert_eq!(m.peak_bytes(&p), 4 * 30);
    }
}
