//! The GPU launch plan of one kernel: how its iterations map onto a grid
//! of thread blocks. The PTX printer and the launch-geometry interpreter
//! both consume this plan, so the interpreter runs exactly the thread
//! decomposition, index arithmetic and barrier phases the PTX encodes.

use super::parallel::{
    defines_before_use, disjoint, expr_reads, reduction_form, scalars_read, scalars_set, Extents,
};
use super::PtxError;
use crate::kernel::ir::*;
use crate::kernel::plan::touched;
use std::collections::HashSet;

/// Threads per block of loop kernels (and lanes of a block reduction).
pub const BLOCK: u32 = 256;
/// Edge of the square shared-memory tiles of contractions; a block has
/// `TILE × TILE` threads, one per output element of its tile.
pub const TILE: u32 = 16;
/// Most blocks launched along x; larger iteration spaces are covered by
/// grid-stride loops (which keeps launches valid on every device).
pub const MAX_GRID: u64 = 1 << 20;

/// A parallel loop variable recovered from a linear thread (or block)
/// number `t` as `(t / div) % extent`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParVar {
    /// The loop variable.
    pub var: Var,
    /// Its extent.
    pub extent: usize,
    /// Product of the extents of the variables inside it.
    pub div: u64,
}

/// One step of a block's work in [`Shape::Blocks`]; a barrier follows
/// every phase except [`Phase::Uniform`].
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// Scalar assignments every thread computes redundantly (their values
    /// are the same in all threads).
    Uniform(Vec<Stmt>),
    /// Statements only thread 0 runs (stores outside any loop).
    Single(Vec<Stmt>),
    /// A loop whose iterations are spread over the block's threads
    /// (`var = tid, tid + BLOCK, ...`); the listed scalars are reductions
    /// each thread accumulates from the operator's identity and the block
    /// combines with a shared-memory tree before adding the value the
    /// scalar had before the loop.
    Split {
        /// The loop variable.
        var: Var,
        /// Its extent.
        extent: usize,
        /// The loop body.
        body: Vec<Stmt>,
        /// Reduction scalars and their operators.
        reductions: Vec<(Scalar, BinOp)>,
    },
}

/// How a kernel's work is decomposed.
#[derive(Clone, Debug, PartialEq)]
pub enum Shape {
    /// One thread per iteration of the collapsed parallel loops, with a
    /// grid-stride loop over `total`; each thread runs `body` sequentially.
    Threads {
        /// Collapsed loops, outermost first.
        par: Vec<ParVar>,
        /// Product of their extents.
        total: u64,
        /// What one iteration runs.
        body: Vec<Stmt>,
    },
    /// One block per iteration of the parallel loops (a block-stride loop
    /// over `total`); the block's threads cooperate on the phases.
    Blocks {
        /// Parallel loops, outermost first (empty: one block).
        par: Vec<ParVar>,
        /// Product of their extents.
        total: u64,
        /// The block's work in order.
        phases: Vec<Phase>,
    },
    /// A shared-memory tiled matrix product: block `(bx, by)` computes
    /// the `TILE × TILE` output tile at rows `bx·TILE..`, columns
    /// `by·TILE..`; thread `(tx, ty)` owns row `bx·TILE + ty`, column
    /// `by·TILE + tx`. Each step of the reduction loop stages an A tile
    /// (`As[ty][tx] = A(row, k0 + tx)`) and a B tile
    /// (`Bs[ty][tx] = B(k0 + ty, col)`) in shared memory between barriers.
    Tiled(Contraction),
}

/// A kernel's launch: entry name, parameters, geometry and decomposition.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelPlan {
    /// PTX entry name (unique in its module).
    pub entry: String,
    /// The kernel's name in the IR.
    pub kernel: String,
    /// Buffers passed as `.u64` pointer parameters, in order.
    pub params: Vec<BufId>,
    /// Grid dimensions.
    pub grid: [u32; 3],
    /// Block dimensions.
    pub block: [u32; 3],
    /// Work decomposition.
    pub shape: Shape,
}

fn grid_for(total: u64, per_block: u64) -> u32 {
    // MAX_GRID < u32::MAX, so the cast cannot truncate.
    total.div_ceil(per_block).clamp(1, MAX_GRID) as u32
}

fn par_vars(loops: &[(Var, usize)]) -> Result<(Vec<ParVar>, u64), PtxError> {
    let mut div = 1u64;
    let mut out = Vec::with_capacity(loops.len());
    for (var, extent) in loops.iter().rev() {
        out.push(ParVar {
            var: *var,
            extent: *extent,
            div,
        });
        div = div
            .checked_mul(*extent as u64)
            .filter(|d| *d < i64::MAX as u64)
            .ok_or(PtxError::TooLarge)?;
    }
    out.reverse();
    Ok((out, div))
}

/// Loop variables with their extents, outermost first.
type Loops = Vec<(Var, usize)>;

/// Collapses the perfectly nested loops under the outermost one while the
/// collapsed iterations provably touch disjoint memory.
fn collapse(body: &[Stmt]) -> Option<(Loops, Vec<Stmt>)> {
    let [Stmt::Loop { var, extent, body }] = body else {
        return None;
    };
    let mut loops = vec![(*var, *extent)];
    let mut inner = body.clone();
    while let [Stmt::Loop { var, extent, body }] = inner.as_slice() {
        let mut cand = loops.clone();
        cand.push((*var, *extent));
        if !(disjoint(&cand, body, &Extents::new()) && defines_before_use(body, &HashSet::new())) {
            break;
        }
        loops = cand;
        inner = body.clone();
    }
    Some((loops, inner))
}

/// Splits `body` into block phases, or `None` when some statement cannot
/// be shared by a block's threads safely.
fn phases(body: &[Stmt], outer: &Extents, scalars: usize) -> Option<Vec<Phase>> {
    let mut out: Vec<Phase> = Vec::new();
    for (i, s) in body.iter().enumerate() {
        match s {
            Stmt::Set { .. } => match out.last_mut() {
                Some(Phase::Uniform(v)) => v.push(s.clone()),
                _ => out.push(Phase::Uniform(vec![s.clone()])),
            },
            Stmt::Store { .. } | Stmt::ScatterAdd { .. } | Stmt::IfInBounds { .. } => {
                if !scalars_set(std::slice::from_ref(s)).is_empty() {
                    return None;
                }
                out.push(Phase::Single(vec![s.clone()]));
            }
            Stmt::Loop {
                var,
                extent,
                body: lb,
            } => {
                let set: HashSet<Scalar> = scalars_set(lb).into_iter().collect();
                let mut reductions = Vec::new();
                for sc in &set {
                    if let Some(op) = sole_reduction(*sc, lb) {
                        reductions.push((*sc, op));
                    }
                }
                reductions.sort_unstable_by_key(|r| r.0);
                let red: HashSet<Scalar> = reductions.iter().map(|r| r.0).collect();
                // Private scalars must be set before use in each iteration
                // and never read after the loop (their final value would
                // be whichever thread ran the last iteration).
                let later = scalars_read(&body[i + 1..]);
                let private_ok = set
                    .iter()
                    .filter(|sc| !red.contains(sc))
                    .all(|sc| !later.contains(sc));
                let mut defined: HashSet<Scalar> = (0..scalars).collect();
                for sc in &set {
                    if !red.contains(sc) {
                        defined.remove(sc);
                    }
                }
                if !private_ok
                    || !defines_before_use(lb, &defined)
                    || !disjoint(&[(*var, *extent)], lb, outer)
                {
                    return None;
                }
                out.push(Phase::Split {
                    var: *var,
                    extent: *extent,
                    body: lb.clone(),
                    reductions,
                });
            }
        }
    }
    Some(out)
}

/// The operator if every occurrence of `s` in `body` is in a reduction
/// update `s = op(s, e)` with one operator.
fn sole_reduction(s: Scalar, body: &[Stmt]) -> Option<BinOp> {
    fn walk(s: Scalar, body: &[Stmt], op: &mut Option<BinOp>) -> bool {
        for st in body {
            match st {
                Stmt::Loop { body, .. } | Stmt::IfInBounds { body, .. } => {
                    if !walk(s, body, op) {
                        return false;
                    }
                }
                Stmt::Set { scalar, value } if *scalar == s => match reduction_form(s, value) {
                    Some((o, _)) if op.is_none_or(|p| p == o) => *op = Some(o),
                    _ => return false,
                },
                Stmt::Set { value, .. } | Stmt::Store { value, .. } => {
                    let mut reads = Vec::new();
                    expr_reads(value, &mut reads);
                    if reads.contains(&s) {
                        return false;
                    }
                }
                Stmt::ScatterAdd { row, value, .. } => {
                    let mut reads = Vec::new();
                    expr_reads(&row.value, &mut reads);
                    expr_reads(value, &mut reads);
                    if reads.contains(&s) {
                        return false;
                    }
                }
            }
        }
        true
    }
    let mut op = None;
    walk(s, body, &mut op).then_some(op).flatten()
}

fn loop_plan(l: &LoopKernel) -> Result<Shape, PtxError> {
    let (loops, inner) = match collapse(&l.body) {
        Some(c) => c,
        None => (Vec::new(), l.body.clone()),
    };
    // Block mode pays off when each parallel iteration has a long inner
    // loop, or when there is no parallel loop at all (a global reduction).
    let outer: Extents = loops.iter().copied().collect();
    let widest = inner
        .iter()
        .filter_map(|s| match s {
            Stmt::Loop { extent, .. } => Some(*extent),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let (par, total) = par_vars(&loops)?;
    if widest >= 32 || loops.is_empty() {
        if let Some(phases) = phases(&inner, &outer, l.scalars) {
            return Ok(Shape::Blocks { par, total, phases });
        }
    }
    // Without a parallel loop the whole body runs in one thread.
    let (par, total, body) = if loops.is_empty() {
        (Vec::new(), 1, l.body.clone())
    } else {
        (par, total, inner)
    };
    Ok(Shape::Threads { par, total, body })
}

/// The launch plan of kernel number `i` of `p`.
pub fn kernel_plan(p: &Program, i: usize) -> Result<KernelPlan, PtxError> {
    let k = &p.kernels[i];
    let entry = format!("k{i}_{}", sanitize(&k.name));
    let params = touched(k);
    let (grid, block, shape) = match &k.body {
        KernelBody::Contraction(c) => {
            let m = c.m() as u64;
            let n = c.n as u64;
            // One block per output tile, no grid-stride loop: the tile
            // counts must fit the grid limits (2^31 − 1 along x, 65535
            // along y).
            let (gm, gn) = (m.div_ceil(u64::from(TILE)), n.div_ceil(u64::from(TILE)));
            let gx = u32::try_from(gm.max(1))
                .ok()
                .filter(|g| *g < 1 << 31)
                .ok_or(PtxError::TooLarge)?;
            let gy = u32::try_from(gn.max(1))
                .ok()
                .filter(|g| *g <= 65535)
                .ok_or(PtxError::TooLarge)?;
            ([gx, gy, 1], [TILE, TILE, 1], Shape::Tiled(c.clone()))
        }
        KernelBody::Loop(l) => {
            let shape = loop_plan(l)?;
            let grid = match &shape {
                Shape::Threads { total, .. } => grid_for(*total, u64::from(BLOCK)),
                Shape::Blocks { total, .. } => grid_for(*total, 1),
                Shape::Tiled(_) => 1,
            };
            ([grid, 1, 1], [BLOCK, 1, 1], shape)
        }
    };
    Ok(KernelPlan {
        entry,
        kernel: k.name.clone(),
        params,
        grid,
        block,
        shape,
    })
}

/// Every kernel's plan, in program order.
pub fn program_plan(p: &Program) -> Result<Vec<KernelPlan>, PtxError> {
    (0..p.kernels.len()).map(|i| kernel_plan(p, i)).collect()
}

/// A PTX identifier from a kernel name (`conv1.pad` → `conv1_pad`).
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The digits `(m0, m1, m2)` of row `m` over `dims` (last fastest) and the
/// A offset of that row, as the tiled kernel computes it.
pub fn a_row(c: &Contraction, m: u64) -> u64 {
    let [_, d1, d2] = c.m_dims.map(|d| d as u64);
    let digits = [m / (d1 * d2), (m / d2) % d1, m % d2];
    digits
        .iter()
        .zip(c.m_strides)
        .map(|(d, s)| d * s as u64)
        .sum()
}

/// The A offset contributed by reduction index `k` (digits over `k_dims`).
pub fn a_col(c: &Contraction, k: u64) -> u64 {
    let [_, k2, k3] = c.k_dims.map(|d| d as u64);
    let (q1, q2, q3) = (k / (k2 * k3), (k / k3) % k2, k % k3);
    q1 * c.k_strides[0] as u64 + q2 * c.k_strides[1] as u64 + q3
}
