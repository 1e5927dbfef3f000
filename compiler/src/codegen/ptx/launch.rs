//! The GPU launch plan of one kernel: how its iterations map onto a grid
//! of thread blocks. The PTX printer and the launch-geometry interpreter
//! both consume this plan, so the interpreter runs exactly the thread
//! decomposition, index arithmetic and barrier phases the PTX encodes:
//! loop variables are the digits of a thread's first number ([`digits`])
//! advanced by carrying ([`advance`]), in 32 bits where [`fits_32`] says
//! the kernel's sizes allow it.

use super::parallel::{
    defines_before_use, disjoint, expr_reads, reduction_form, scalars_read, scalars_set, Extents,
};
use super::precision::{Precision, PtxOptions};
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
        /// Loop variables the phases use (the kernel's, or those of the
        /// loop form of a contraction, see the `dot_blocks` module).
        vars: usize,
        /// Scalar registers the phases use: the kernel's, plus any the
        /// planner introduced (see the `accumulate` module).
        scalars: usize,
    },
    /// A shared-memory tiled matrix product: block `(bx, by)` computes
    /// the `TILE × TILE` output tile at rows `bx·TILE..`, columns
    /// `by·TILE..`; thread `(tx, ty)` owns row `bx·TILE + ty`, column
    /// `by·TILE + tx`. Each step of the reduction loop stages an A tile
    /// (`As[ty][tx] = A(row, k0 + tx)`) and a B tile
    /// (`Bs[ty][tx] = B(k0 + ty, col)`) in shared memory between barriers.
    Tiled(Contraction),
    /// A register-tiled product with its reduction staged through
    /// double-buffered shared memory by `cp.async` (see the
    /// `register_tiled` module): block `(bx, by)` of 256 threads computes
    /// the 64×64 output tile at rows `bx·64..`, columns `by·64..`, each
    /// thread a 4×4 sub-tile (with FMAs), or each warp a 32×16 one (with
    /// TF32 `mma.sync`, see [`Precision`]). Chosen by
    /// [`prefers_register_tiles`].
    RegisterTiled(Contraction, Precision),
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
    /// Whether the kernel's index arithmetic is 32-bit (see [`fits_32`]);
    /// otherwise it is 64-bit.
    pub index32: bool,
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

/// The loops `body` sits in, outermost first, as statements.
fn wrap(loops: &[(Var, usize)], body: Vec<Stmt>) -> Vec<Stmt> {
    loops.iter().rev().fold(body, |body, (var, extent)| {
        vec![Stmt::Loop {
            var: *var,
            extent: *extent,
            body,
        }]
    })
}

/// Block mode over `loops` with `inner` split into phases, when the inner
/// loops are long enough to share (or there is no parallel loop at all: a
/// global reduction) and the phases are safe.
fn blocks_plan(
    loops: &Loops,
    inner: &[Stmt],
    (vars, scalars): (usize, usize),
) -> Result<Option<Shape>, PtxError> {
    let outer: Extents = loops.iter().copied().collect();
    let widest = inner
        .iter()
        .filter_map(|s| match s {
            Stmt::Loop { extent, .. } => Some(*extent),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    if widest < 32 && !loops.is_empty() {
        return Ok(None);
    }
    let (par, total) = par_vars(loops)?;
    Ok(phases(inner, &outer, scalars).map(|phases| Shape::Blocks {
        par,
        total,
        phases,
        vars,
        scalars,
    }))
}

fn loop_plan(l: &LoopKernel) -> Result<Shape, PtxError> {
    let (loops, inner) = match collapse(&l.body) {
        Some(c) => c,
        None => (Vec::new(), l.body.clone()),
    };
    // A sum accumulated in memory row by row: with one register per
    // column, the columns join the parallel loops.
    if let Some(re) = super::accumulate::columns_outer(&inner, l.scalars) {
        if let Some((more, inner)) = collapse(&wrap(&loops, re)) {
            if more.len() > loops.len() {
                if let Some(shape) = blocks_plan(&more, &inner, (l.vars, l.scalars + 1))? {
                    return Ok(shape);
                }
            }
        }
    }
    // Block mode pays off when each parallel iteration has a long inner
    // loop, or when there is no parallel loop at all (a global reduction).
    if let Some(shape) = blocks_plan(&loops, &inner, (l.vars, l.scalars))? {
        return Ok(shape);
    }
    let (par, total) = par_vars(&loops)?;
    // Without a parallel loop the whole body runs in one thread.
    let (par, total, body) = if loops.is_empty() {
        (Vec::new(), 1, l.body.clone())
    } else {
        (par, total, inner)
    };
    Ok(Shape::Threads { par, total, body })
}

/// Fewest blocks that keep every SM of an H100 (132) busy.
pub const MIN_BLOCKS: u64 = 132;

/// Whether contraction `c` runs better as one block per output element
/// (its loop form, `dot_blocks`): its tiles would not fill the GPU, its
/// outputs would, its reduction is long enough to share among a block's
/// threads, and it is one contiguous run (a single `K` digit: the loop
/// form splits only its outermost reduction loop over threads).
pub fn prefers_blocks(c: &Contraction) -> bool {
    let tiles = (c.m() as u64).div_ceil(u64::from(TILE)) * (c.n as u64).div_ceil(u64::from(TILE));
    let outputs = c.m() as u64 * c.n as u64;
    let digits = c.k_dims.iter().filter(|d| **d > 1).count();
    tiles < MIN_BLOCKS && outputs >= MIN_BLOCKS && c.k() >= 64 && digits <= 1
}

/// Whether contraction `c` runs as a register-tiled product
/// ([`Shape::RegisterTiled`]): its index arithmetic is 32-bit (`index32`,
/// see [`fits_32`]; with room for a whole tile past each size) and its
/// 64×64 tiles alone fill an H100 ([`MIN_BLOCKS`]). Smaller products keep
/// the 16×16 tile, which launches 16 times as many blocks.
pub fn prefers_register_tiles(c: &Contraction, index32: bool) -> bool {
    let (gm, gn) = super::register_tile::tiles(c);
    index32 && register_tiles_fit(c) && gm * gn >= MIN_BLOCKS
}

/// Whether the register-tiled kernel's 32-bit indices stay below
/// [`INDEX32_LIMIT`] a whole tile past each size (as [`fits_32`] checks
/// for the 16×16 tile), and its tile columns fit the grid's y limit.
fn register_tiles_fit(c: &Contraction) -> bool {
    use super::register_tile::{tiles, BK, BM, BN};
    let room = BM.max(BN).max(BK) as usize;
    let small = |n: usize| ((n + room) as i128) < INDEX32_LIMIT;
    small(c.m()) && small(c.n) && small(c.k()) && tiles(c).1 <= 65535
}

/// The plan of contraction kernel `i` of `p` as a register-tiled product
/// whether or not [`kernel_plan`] would choose it (so tests can run the
/// kernel on small products); `None` for a loop kernel or one whose
/// indices do not fit 32 bits with a tile to spare.
pub fn register_tiled_plan(p: &Program, i: usize, precision: Precision) -> Option<KernelPlan> {
    let k = &p.kernels[i];
    let KernelBody::Contraction(c) = &k.body else {
        return None;
    };
    let params = touched(k);
    if !fits_32(p, k, &params) || !register_tiles_fit(c) {
        return None;
    }
    let (gm, gn) = super::register_tile::tiles(c);
    Some(KernelPlan {
        entry: format!("k{i}_{}", sanitize(&k.name)),
        kernel: k.name.clone(),
        params,
        grid: [
            u32::try_from(gm.max(1)).ok()?,
            u32::try_from(gn.max(1)).ok()?,
            1,
        ],
        block: [super::register_tile::THREADS, 1, 1],
        shape: Shape::RegisterTiled(c.clone(), precision),
        index32: true,
    })
}

/// The launch plan of kernel number `i` of `p` with the default options
/// (f32 arithmetic).
pub fn kernel_plan(p: &Program, i: usize) -> Result<KernelPlan, PtxError> {
    kernel_plan_with(p, i, &PtxOptions::default())
}

/// The launch plan of kernel number `i` of `p` under `opts`.
pub fn kernel_plan_with(p: &Program, i: usize, opts: &PtxOptions) -> Result<KernelPlan, PtxError> {
    let k = &p.kernels[i];
    let entry = format!("k{i}_{}", sanitize(&k.name));
    let params = touched(k);
    if let KernelBody::Contraction(c) = &k.body {
        if !prefers_blocks(c) && prefers_register_tiles(c, fits_32(p, k, &params)) {
            if let Some(plan) = register_tiled_plan(p, i, opts.precision) {
                return Ok(plan);
            }
        }
    }
    let (grid, block, shape) = match &k.body {
        KernelBody::Contraction(c) if prefers_blocks(c) => {
            let shape = loop_plan(&super::dot_blocks::as_loops(c))?;
            let Shape::Blocks { total, .. } = &shape else {
                return Err(PtxError::PlanMismatch(k.name.clone()));
            };
            ([grid_for(*total, 1), 1, 1], [BLOCK, 1, 1], shape)
        }
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
                Shape::Tiled(_) | Shape::RegisterTiled(..) => 1,
            };
            ([grid, 1, 1], [BLOCK, 1, 1], shape)
        }
    };
    let index32 = fits_32(p, k, &params);
    Ok(KernelPlan {
        entry,
        kernel: k.name.clone(),
        params,
        grid,
        block,
        shape,
        index32,
    })
}

/// Every kernel's plan, in program order, with the default options.
pub fn program_plan(p: &Program) -> Result<Vec<KernelPlan>, PtxError> {
    program_plan_with(p, &PtxOptions::default())
}

/// Every kernel's plan, in program order, under `opts`.
pub fn program_plan_with(p: &Program, opts: &PtxOptions) -> Result<Vec<KernelPlan>, PtxError> {
    (0..p.kernels.len())
        .map(|i| kernel_plan_with(p, i, opts))
        .collect()
}

/// A PTX identifier from a kernel name (`conv1.pad` → `conv1_pad`).
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Largest magnitude a 32-bit index value may take. Values stay below
/// 2^31 so that signed and unsigned 32-bit views agree for every
/// non-negative index, one unsigned compare checks `0 <= i < bound`, and
/// a grid-stride counter (`t += nctaid·ntid`, at most `MAX_GRID·BLOCK` =
/// 2^28) cannot wrap before it is compared with its bound.
pub const INDEX32_LIMIT: i128 = (1 << 31) - (1 << 28) - 1;

/// Whether kernel `k` of `p` can do all its index arithmetic in 32 bits:
/// every buffer it touches has fewer than 2^31 elements, every loop
/// extent and contraction size is below [`INDEX32_LIMIT`], and every
/// affine index (plus a gathered row's offset) takes values in
/// `±INDEX32_LIMIT` over its variables' ranges. Intermediate results of
/// an index may wrap: 32-bit `mad.lo` is exact modulo 2^32, so the final
/// value is right whenever it is in range.
pub fn fits_32(p: &Program, k: &Kernel, params: &[BufId]) -> bool {
    let lim = INDEX32_LIMIT;
    let small = |n: usize| (n as i128) < lim;
    if !params.iter().all(|b| small(p.buffers[*b].len)) {
        return false;
    }
    match &k.body {
        KernelBody::Contraction(c) => {
            small(c.m() + TILE as usize)
                && small(c.n + TILE as usize)
                && small(c.k() + TILE as usize)
                && c.m_dims.iter().chain(&c.k_dims).all(|d| small(*d))
        }
        KernelBody::Loop(l) => {
            let mut ext = vec![0usize; l.vars];
            fn extents(body: &[Stmt], ext: &mut [usize]) {
                for s in body {
                    match s {
                        Stmt::Loop { var, extent, body } => {
                            ext[*var] = ext[*var].max(*extent);
                            extents(body, ext);
                        }
                        Stmt::IfInBounds { body, .. } => extents(body, ext),
                        _ => {}
                    }
                }
            }
            extents(&l.body, &mut ext);
            // Extents and their sum bound every product of them (the
            // collapsed total) only loosely; check the product too.
            let total: i128 = ext.iter().map(|e| (*e).max(1) as i128).product();
            ext.iter().all(|e| small(*e + BLOCK as usize))
                && total < lim
                && indices_fit(&l.body, &ext)
        }
    }
}

/// The range `[lo, hi]` of `ix` over variables `0..ext[v]`.
fn index_range(ix: &Index, ext: &[usize]) -> (i128, i128) {
    let (mut lo, mut hi) = (ix.offset as i128, ix.offset as i128);
    for (v, c) in &ix.terms {
        // Each coefficient is a 32-bit immediate of a `mad.lo.s32`.
        if (*c as i128).abs() >= INDEX32_LIMIT {
            return (i128::MIN, i128::MAX);
        }
        let top = (*c as i128) * (ext[*v].max(1) as i128 - 1);
        lo += top.min(0);
        hi += top.max(0);
    }
    (lo, hi)
}

fn indices_fit(body: &[Stmt], ext: &[usize]) -> bool {
    let ok = |ix: &Index, extra: i128| {
        let (lo, hi) = index_range(ix, ext);
        lo > -INDEX32_LIMIT && hi + extra < INDEX32_LIMIT
    };
    let row_extra = |r: &Row| (r.rows as i128) * (r.stride.max(1) as i128);
    fn expr_ok(e: &Expr, f: &dyn Fn(&Index, i128) -> bool, rx: &dyn Fn(&Row) -> i128) -> bool {
        match e {
            Expr::Const(_) | Expr::Get(_) | Expr::Iter(_) => true,
            Expr::Load(_, ix) => f(ix, 0),
            Expr::Gather { row, index, .. } => f(index, rx(row)) && expr_ok(&row.value, f, rx),
            Expr::Un(_, x) => expr_ok(x, f, rx),
            Expr::Bin(_, a, b) => expr_ok(a, f, rx) && expr_ok(b, f, rx),
            Expr::Select(a, _, b, t, e) => [a, b, t, e].iter().all(|x| expr_ok(x, f, rx)),
        }
    }
    body.iter().all(|s| match s {
        Stmt::Loop { body, .. } => indices_fit(body, ext),
        Stmt::Store { index, value, .. } => ok(index, 0) && expr_ok(value, &ok, &row_extra),
        Stmt::ScatterAdd {
            row, index, value, ..
        } => {
            ok(index, row_extra(row))
                && expr_ok(&row.value, &ok, &row_extra)
                && expr_ok(value, &ok, &row_extra)
        }
        Stmt::Set { value, .. } => expr_ok(value, &ok, &row_extra),
        Stmt::IfInBounds { conds, body } => {
            conds
                .iter()
                .all(|(ix, bound)| ok(ix, 0) && (*bound as i128) < INDEX32_LIMIT)
                && indices_fit(body, ext)
        }
    })
}

/// The digits of `x` over `extents` (outermost first, last fastest):
/// digit `i` is `(x / Π extents[i+1..]) % extents[i]`, except that the
/// outermost is not reduced. The kernels decompose a thread's first
/// number (and its stride) this way once, before any loop.
pub fn digits(extents: &[u64], x: u64) -> Vec<u64> {
    let mut out = vec![0; extents.len()];
    let mut q = x;
    for i in (0..extents.len()).rev() {
        if i == 0 {
            out[i] = q;
        } else {
            out[i] = q % extents[i];
            q /= extents[i];
        }
    }
    out
}

/// Adds the number with digits `step` to the one with digits `d` (both as
/// [`digits`] gives them) by carrying, without dividing: each digit below
/// its extent plus a step digit below it plus a carry needs at most one
/// subtraction. This is how a grid-stride loop advances its thread's loop
/// variables, and how a contraction advances its reduction index by a
/// tile; the PTX does the same steps with compares and predicated
/// subtractions.
pub fn advance(extents: &[u64], d: &mut [u64], step: &[u64]) {
    for i in (0..d.len()).rev() {
        d[i] += step[i];
        if i > 0 && d[i] >= extents[i] {
            d[i] -= extents[i];
            d[i - 1] += 1;
        }
    }
}

/// `(m, s)` such that `n / d == mul.hi.u32(n, m) >> s` for every
/// `0 <= n < 2^31`, for `d >= 2` not a power of two (Granlund and
/// Montgomery's round-up method with `N = 31`): with `l = ⌈log2 d⌉`,
/// `m = ⌈2^(31+l) / d⌉` (below 2^32) and `s = l − 1`.
pub fn magic(d: u32) -> (u32, u32) {
    assert!(d >= 3 && !d.is_power_of_two() && d < 1 << 31, "magic({d})");
    let l = 32 - (d - 1).leading_zeros();
    let m = (1u128 << (31 + l)).div_ceil(u128::from(d));
    (u32::try_from(m).expect("magic number below 2^32"), l - 1)
}

/// [`magic`] for 64-bit indices: `(m, s)` such that
/// `n / d == mul.hi.u64(n, m) >> s` for every `0 <= n < 2^63` (`N = 63`),
/// for `d >= 3` not a power of two. A 64-bit multiply-high is a few
/// 32-bit multiplies in SASS; `div.u64` is a ~65-instruction call.
pub fn magic64(d: u64) -> (u64, u32) {
    assert!(
        d >= 3 && !d.is_power_of_two() && d < 1 << 63,
        "magic64({d})"
    );
    let l = 64 - (d - 1).leading_zeros();
    let m = (1u128 << (63 + l)).div_ceil(u128::from(d));
    (u64::try_from(m).expect("magic number below 2^64"), l - 1)
}

/// `n / d` as the PTX computes it for a 64-bit index (`n < 2^63`).
pub fn div64(n: u64, d: u64) -> u64 {
    if d.is_power_of_two() {
        n >> d.trailing_zeros()
    } else {
        let (m, s) = magic64(d);
        ((u128::from(n) * u128::from(m)) >> 64) as u64 >> s
    }
}

/// `n / d` as the PTX computes it for a 32-bit index (`n < 2^31`).
pub fn div32(n: u32, d: u32) -> u32 {
    if d.is_power_of_two() {
        n >> d.trailing_zeros()
    } else {
        let (m, s) = magic(d);
        ((u64::from(n) * u64::from(m)) >> 32) as u32 >> s
    }
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
    q1 * c.k_strides[0] as u64 + q2 * c.k_strides[1] as u64 + q3 * c.k_strides[2] as u64
}

/// The reduction-index extents `k_dims` of a contraction as `u64`s.
pub fn k_extents(c: &Contraction) -> [u64; 3] {
    c.k_dims.map(|d| d as u64)
}

/// The A offset of reduction digits `d` (as [`digits`] over
/// [`k_extents`] gives them).
pub fn a_col_of(c: &Contraction, d: &[u64]) -> u64 {
    d[0] * c.k_strides[0] as u64 + d[1] * c.k_strides[1] as u64 + d[2] * c.k_strides[2] as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_division_is_exact_below_2_to_the_31() {
        let mut ds: Vec<u32> = (3u32..2000).filter(|d| !d.is_power_of_two()).collect();
        ds.extend([
            5408,
            21632,
            173056,
            1 << 20 | 1,
            (1 << 30) + 1,
            (1 << 31) - 1,
        ]);
        for d in ds {
            let top = (1u32 << 31) - 1;
            let mut ns = vec![0, 1, d - 1, d, d + 1, top, top - 1];
            for q in [1u32, 2, 3, 7, 1000, top / d] {
                if let Some(n) = q.checked_mul(d) {
                    ns.extend([n.saturating_sub(1), n, n + 1]);
                }
            }
            let mut x = u64::from(d).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for _ in 0..200 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ns.push((x % (1 << 31)) as u32);
            }
            for n in ns.into_iter().filter(|n| *n <= top) {
                assert_eq!(div32(n, d), n / d, "{n} / {d}");
            }
        }
    }

    #[test]
    fn magic_division_is_exact_below_2_to_the_63() {
        let top = (1u64 << 63) - 1;
        let mut ds: Vec<u64> = (3u64..500).filter(|d| !d.is_power_of_two()).collect();
        ds.extend([
            5408,
            21632,
            173056,
            (1 << 31) + 1,
            (1 << 40) - 3,
            (1 << 62) + 1,
            top,
        ]);
        for d in ds {
            let mut ns = vec![0, 1, d - 1, d, d + 1, top, top - 1];
            for q in [1u64, 2, 3, 7, 1000, 1 << 33, top / d] {
                if let Some(n) = q.checked_mul(d) {
                    ns.extend([n.saturating_sub(1), n, n + 1]);
                }
            }
            let mut x = d.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            for _ in 0..200 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ns.push(x >> 1);
            }
            for n in ns.into_iter().filter(|n| *n <= top) {
                assert_eq!(div64(n, d), n / d, "{n} / {d}");
            }
        }
    }

    #[test]
    fn stepping_digits_matches_dividing() {
        for extents in [
            vec![7u64, 3, 5],
            vec![1, 9],
            vec![4, 1, 1],
            vec![2, 1, 3],
            vec![100],
        ] {
            let total: u64 = extents.iter().product();
            for start in [0u64, 1, 5, 17] {
                for step in [1u64, 3, 16, 29, 256, 1000] {
                    let s = digits(&extents, step);
                    let mut d = digits(&extents, start);
                    let mut t = start;
                    while t < 3 * total {
                        assert_eq!(d, digits(&extents, t), "{extents:?} {start} {step}");
                        t += step;
                        advance(&extents, &mut d, &s);
                    }
                }
            }
        }
    }
}
