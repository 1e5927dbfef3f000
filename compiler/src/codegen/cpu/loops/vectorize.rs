//! Which loops of a loop kernel may run four iterations at a time in f32x4
//! lanes.
//!
//! A vectorized loop runs each statement of its body for four consecutive
//! iterations before the next statement, instead of the whole body per
//! iteration. That is the same computation when
//!
//! * every access of the body moves by one element per iteration (a
//!   vector load/store of four neighbours) or not at all (a broadcast
//!   load), and no guard depends on the loop variable;
//! * no scalar register carries a value from one iteration to the next;
//! * memory written in the body is never touched by two of four
//!   neighbouring iterations: all accesses of a written buffer share one
//!   index up to a constant offset, and two offsets differ by 0 or at
//!   least 4 (iterations further apart run in separate groups, in order).
//!
//! Loops whose body holds a data-dependent row access (`Expr::Gather`,
//! `Stmt::ScatterAdd`), at any depth, are never vectorized.
//!
//! Loops nested inside the vectorized one run as before, for all lanes at
//! once; this covers pooling windows and gradient scatters, whose window
//! loops sit inside the loop over channels.
//!
//! A step may run several f32x4 vectors ([`lane_group`]): that is the same
//! loop vectorized with more lanes, under the same conditions for the
//! wider span.

use super::unroll;
use crate::kernel::ir::{Expr, Index, Stmt, UnOp, Var};

/// Number of f32 lanes in a vector.
pub(super) const LANES: usize = 4;

/// The most f32x4 vectors one step of a vectorized loop runs.
pub(super) const MAX_GROUP: usize = 4;

/// How many f32x4 vectors of consecutive iterations one step of `for var
/// in 0..extent { body }` runs (their operations interleaved), or `None`
/// if the loop does not vectorize. A step of `g` vectors is the loop
/// vectorized with `4g` lanes, so it must pass the same checks for that
/// width; loops that only pass them for four lanes run one vector a step.
/// `max_group` ([`MAX_GROUP`] but in tests) bounds `g`.
pub(super) fn lane_group(
    var: Var,
    extent: usize,
    body: &[Stmt],
    scalars: usize,
    max_group: usize,
) -> Option<usize> {
    // Window loops (unrolled inside the step) multiply the values a step
    // keeps live; four vectors of them spill (the max-pool gradient ran
    // slower than with one), two do not.
    let mut g = if body.iter().any(has_window_loop) {
        WINDOW_GROUP.min(max_group)
    } else {
        max_group
    };
    while g >= 1 {
        if vectorizable(var, extent, body, scalars, g * LANES) {
            return Some(g);
        }
        g /= 2;
    }
    None
}

/// The most vectors a step runs when its body holds a window loop.
const WINDOW_GROUP: usize = 2;

/// Whether `s` is or holds a loop short enough to be unrolled.
fn has_window_loop(s: &Stmt) -> bool {
    match s {
        Stmt::Loop { extent, body, .. } => {
            unroll::unrolls(*extent, body) || body.iter().any(has_window_loop)
        }
        Stmt::IfInBounds { body, .. } => body.iter().any(has_window_loop),
        Stmt::Store { .. } | Stmt::Set { .. } | Stmt::ScatterAdd { .. } => false,
    }
}

/// Whether `for var in 0..extent { body }` may run `lanes` iterations at a
/// time (see the module docs). `scalars` is the kernel's register count.
pub(super) fn vectorizable(
    var: Var,
    extent: usize,
    body: &[Stmt],
    scalars: usize,
    lanes: usize,
) -> bool {
    if extent < lanes {
        return false;
    }
    let mut assigned = vec![false; scalars];
    if !body.iter().all(|s| no_carried_scalars(s, &mut assigned)) {
        return false;
    }
    let mut w = Walk {
        lanes: lanes as i64,
        var,
        inner: Vec::new(),
        accesses: Vec::new(),
        ok: true,
    };
    w.stmts(body);
    w.ok && w.written_buffers_are_lane_private()
}

/// Whether the code of `body` holds a vectorized loop that runs more than
/// one vector a step (the loops `emit` vectorizes: the outermost ones
/// that [`lane_group`] accepts) and evaluates `exp`, `tanh` or `sigmoid`
/// there: long dependency chains whose interleaving matters. `scalars` is
/// the kernel's register count, `max_group` as for [`lane_group`].
pub(super) fn interleaves(body: &[Stmt], scalars: usize, max_group: usize) -> bool {
    body.iter().any(|s| match s {
        Stmt::Loop { var, extent, body } => {
            *extent > 0
                && match lane_group(*var, *extent, body, scalars, max_group) {
                    Some(g) => g > 1 && body.iter().any(stmt_has_chains),
                    None => interleaves(body, scalars, max_group),
                }
        }
        Stmt::IfInBounds { body, .. } => interleaves(body, scalars, max_group),
        Stmt::Store { .. } | Stmt::Set { .. } | Stmt::ScatterAdd { .. } => false,
    })
}

/// Whether `s` evaluates `exp`, `tanh` or `sigmoid`.
fn stmt_has_chains(s: &Stmt) -> bool {
    match s {
        Stmt::Loop { body, .. } | Stmt::IfInBounds { body, .. } => body.iter().any(stmt_has_chains),
        Stmt::Store { value, .. } | Stmt::Set { value, .. } => expr_has_chains(value),
        Stmt::ScatterAdd { row, value, .. } => {
            expr_has_chains(&row.value) || expr_has_chains(value)
        }
    }
}

fn expr_has_chains(e: &Expr) -> bool {
    match e {
        Expr::Const(_) | Expr::Load(..) | Expr::Iter(_) | Expr::Get(_) => false,
        Expr::Gather { row, .. } => expr_has_chains(&row.value),
        Expr::Un(op, x) => {
            matches!(op, UnOp::Exp | UnOp::Tanh | UnOp::Sigmoid) || expr_has_chains(x)
        }
        Expr::Bin(_, a, b) => expr_has_chains(a) || expr_has_chains(b),
        Expr::Select(a, _, b, t, f) => [a, b, t, f].iter().any(|x| expr_has_chains(x)),
    }
}

// Lives here, beside `vectorizable`, which needs it too; `analysis` uses it
// to decide whether the outer loop's iterations may run on different
// threads.
/// Whether every scalar read in `s` (run once more after earlier
/// iterations) was set earlier in the same run of `s`. `assigned` tracks
/// registers definitely set so far.
pub(super) fn no_carried_scalars(s: &Stmt, assigned: &mut Vec<bool>) -> bool {
    match s {
        Stmt::Loop { extent, body, .. } => {
            let mut inner = assigned.clone();
            if !body.iter().all(|s| no_carried_scalars(s, &mut inner)) {
                return false;
            }
            if *extent > 0 {
                *assigned = inner;
            }
            true
        }
        Stmt::Store { value, .. } => reads_assigned(value, assigned),
        Stmt::ScatterAdd { row, value, .. } => {
            reads_assigned(&row.value, assigned) && reads_assigned(value, assigned)
        }
        Stmt::Set { scalar, value } => {
            let ok = reads_assigned(value, assigned);
            assigned[*scalar] = true;
            ok
        }
        Stmt::IfInBounds { body, .. } => {
            let mut inner = assigned.clone();
            body.iter().all(|s| no_carried_scalars(s, &mut inner))
        }
    }
}

fn reads_assigned(e: &Expr, assigned: &[bool]) -> bool {
    match e {
        Expr::Const(_) | Expr::Load(..) | Expr::Iter(_) => true,
        Expr::Get(s) => assigned[*s],
        Expr::Gather { row, .. } => reads_assigned(&row.value, assigned),
        Expr::Un(_, x) => reads_assigned(x, assigned),
        Expr::Bin(_, a, b) => reads_assigned(a, assigned) && reads_assigned(b, assigned),
        Expr::Select(a, _, b, t, f) => [a, b, t, f].iter().all(|x| reads_assigned(x, assigned)),
    }
}

struct Access {
    buf: usize,
    store: bool,
    /// Coefficients by variable (merged, zeros dropped, sorted), without `var`.
    rest: Vec<(Var, i64)>,
    offset: i64,
    /// Coefficient of the vectorized variable (0 or 1).
    lane: i64,
}

struct Walk {
    /// Iterations run at once.
    lanes: i64,
    var: Var,
    /// Variables of loops nested inside the vectorized one.
    inner: Vec<Var>,
    accesses: Vec<Access>,
    ok: bool,
}

fn merged(idx: &Index) -> Vec<(Var, i64)> {
    let mut terms: Vec<(Var, i64)> = Vec::new();
    for &(v, c) in &idx.terms {
        match terms.iter_mut().find(|(w, _)| *w == v) {
            Some((_, d)) => *d = d.wrapping_add(c),
            None => terms.push((v, c)),
        }
    }
    terms.retain(|(_, c)| *c != 0);
    terms.sort_unstable();
    terms
}

impl Walk {
    fn stmts(&mut self, body: &[Stmt]) {
        body.iter().for_each(|s| self.stmt(s));
    }

    fn stmt(&mut self, s: &Stmt) {
        match s {
            Stmt::Loop { var, body, .. } => {
                self.inner.push(*var);
                self.stmts(body);
            }
            Stmt::Store { buf, index, value } => {
                self.expr(value);
                self.access(*buf, index, true);
            }
            Stmt::Set { value, .. } => self.expr(value),
            // Data-dependent rows run one iteration at a time: lanes could
            // hit the same row, and each needs its own range check.
            Stmt::ScatterAdd { .. } => self.ok = false,
            Stmt::IfInBounds { conds, body } => {
                if conds
                    .iter()
                    .any(|(i, _)| merged(i).iter().any(|t| t.0 == self.var))
                {
                    self.ok = false;
                }
                self.stmts(body);
            }
        }
    }

    fn expr(&mut self, e: &Expr) {
        match e {
            Expr::Const(_) | Expr::Get(_) | Expr::Iter(_) => {}
            Expr::Load(buf, idx) => self.access(*buf, idx, false),
            Expr::Gather { .. } => self.ok = false,
            Expr::Un(_, x) => self.expr(x),
            Expr::Bin(_, a, b) => {
                self.expr(a);
                self.expr(b);
            }
            Expr::Select(a, _, b, t, f) => [a, b, t, f].iter().for_each(|x| self.expr(x)),
        }
    }

    fn access(&mut self, buf: usize, idx: &Index, store: bool) {
        let mut rest = merged(idx);
        let lane = match rest.iter().position(|t| t.0 == self.var) {
            Some(p) => rest.remove(p).1,
            None => 0,
        };
        if !(lane == 1 || (lane == 0 && !store)) {
            self.ok = false;
        }
        self.accesses.push(Access {
            buf,
            store,
            rest,
            offset: idx.offset,
            lane,
        });
    }

    /// Whether no two lanes touch the same element of a written buffer.
    /// Lane `l` of inner-loop iteration `A` addresses `base + inner(A) +
    /// offset + l`; two lanes collide when the difference of two
    /// `inner(·) + offset` terms lies in `1..=3` in magnitude. That cannot
    /// happen when every inner-loop coefficient and every offset difference
    /// is a multiple of the lane count, or, without inner loops, when the
    /// offsets differ by 0 or at least a vector. (The same lane revisiting an
    /// element in a later inner iteration is the scalar program's order.)
    fn written_buffers_are_lane_private(&self) -> bool {
        let lanes = self.lanes;
        let written = self.accesses.iter().filter(|a| a.store).map(|a| a.buf);
        written.into_iter().all(|buf| {
            let accs: Vec<&Access> = self.accesses.iter().filter(|a| a.buf == buf).collect();
            let first = accs[0];
            let inner: Vec<i64> = first
                .rest
                .iter()
                .filter(|(v, _)| self.inner.contains(v))
                .map(|(_, c)| *c)
                .collect();
            let apart = |d: i64| {
                if inner.is_empty() {
                    d == 0 || d.abs() >= lanes
                } else {
                    d % lanes == 0
                }
            };
            inner.iter().all(|c| c % lanes == 0)
                && accs.iter().all(|a| a.lane == 1 && a.rest == first.rest)
                && accs
                    .iter()
                    .all(|a| accs.iter().all(|b| apart(a.offset.wrapping_sub(b.offset))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::ir::BinOp;

    fn lp(var: usize, extent: usize, body: Vec<Stmt>) -> Stmt {
        Stmt::Loop { var, extent, body }
    }

    fn store(buf: usize, index: Index, value: Expr) -> Stmt {
        Stmt::Store { buf, index, value }
    }

    #[test]
    fn elementwise_and_broadcasts_vectorize() {
        // out[8j + i] = tanh(a[8j + i]) * b[j]
        let body = vec![store(
            2,
            Index::new([(0, 8), (1, 1)], 0),
            Expr::load(0, Index::new([(0, 8), (1, 1)], 0))
                .un(UnOp::Tanh)
                .bin(BinOp::Mul, Expr::load(1, Index::var(0, 1))),
        )];
        assert!(vectorizable(1, 8, &body, 0, LANES));
        assert!(
            !vectorizable(1, 3, &body, 0, LANES),
            "shorter than a vector"
        );
        // Iterating the outer variable moves by 8: not unit stride.
        assert!(!vectorizable(0, 8, &body, 0, LANES));
    }

    #[test]
    fn neighbouring_dependences_do_not_vectorize() {
        // x[i + 1] = x[i]: iteration i + 1 reads what i wrote.
        let shift = vec![store(
            0,
            Index::var(0, 1).shift(1),
            Expr::load(0, Index::var(0, 1)),
        )];
        assert!(!vectorizable(0, 16, &shift, 0, LANES));
        // x[i] = x[i] + x[i + 128] over i < 128: far apart, fine.
        let far = vec![store(
            0,
            Index::var(0, 1),
            Expr::load(0, Index::var(0, 1)) + Expr::load(0, Index::var(0, 1).shift(128)),
        )];
        assert!(vectorizable(0, 128, &far, 0, LANES));
        // A store that does not move with i is a reduction.
        let sum = vec![store(
            1,
            Index::constant(0),
            Expr::load(1, Index::constant(0)) + Expr::load(0, Index::var(0, 1)),
        )];
        assert!(!vectorizable(0, 16, &sum, 0, LANES));
    }

    #[test]
    fn carried_registers_and_lane_guards_do_not_vectorize() {
        // s0 = s0 + a[i] carries s0 across iterations.
        let carried = vec![Stmt::Set {
            scalar: 0,
            value: Expr::Get(0) + Expr::load(0, Index::var(0, 1)),
        }];
        assert!(!vectorizable(0, 16, &carried, 1, LANES));
        // A window loop inside the channel loop, guarded by window indices.
        let pool = vec![
            Stmt::Set {
                scalar: 0,
                value: Expr::Const(f32::NEG_INFINITY),
            },
            lp(
                1,
                3,
                vec![Stmt::IfInBounds {
                    conds: vec![(Index::var(1, 1).shift(-1), 5)],
                    body: vec![Stmt::Set {
                        scalar: 0,
                        value: Expr::Get(0)
                            .bin(BinOp::Max, Expr::load(0, Index::new([(1, 8), (0, 1)], -8))),
                    }],
                }],
            ),
            store(1, Index::var(0, 1), Expr::Get(0)),
        ];
        assert!(vectorizable(0, 8, &pool, 1, LANES));
        let lane_guard = vec![Stmt::IfInBounds {
            conds: vec![(Index::var(0, 1).shift(-1), 8)],
            body: vec![store(1, Index::var(0, 1), Expr::Const(1.0))],
        }];
        assert!(!vectorizable(0, 8, &lane_guard, 0, LANES));
    }

    /// The max-pool gradient: per channel `i`, a 2×2 window loop (`j`, `k`)
    /// stores into the window's elements, 32 channels apart.
    fn scatter(coef_j: i64, coef_k: i64, offsets: [i64; 2]) -> Vec<Stmt> {
        let at = |off| Index::new([(1, coef_j), (2, coef_k), (0, 1)], off);
        vec![lp(
            1,
            2,
            vec![lp(
                2,
                2,
                vec![
                    store(1, at(offsets[0]), Expr::load(0, at(0))),
                    store(1, at(offsets[1]), Expr::Const(0.0)),
                ],
            )],
        )]
    }

    #[test]
    fn scatters_inside_window_loops_vectorize_when_lanes_stay_apart() {
        assert!(vectorizable(0, 32, &scatter(832, 32, [0, 0]), 0, LANES));
        assert!(vectorizable(0, 32, &scatter(832, 32, [0, 64]), 0, LANES));
        // Inner iterations one element apart: lane 1 of j = 0 is lane 0 of j = 1.
        assert!(!vectorizable(0, 32, &scatter(1, 32, [0, 0]), 0, LANES));
        assert!(!vectorizable(0, 32, &scatter(6, 32, [0, 0]), 0, LANES));
        // Offsets 2 apart, with inner steps of 4: lanes of j and j + 1 meet.
        assert!(!vectorizable(0, 32, &scatter(832, 4, [0, 2]), 0, LANES));
    }

    #[test]
    fn steps_take_as_many_vectors_as_the_lanes_stay_apart() {
        // x[i] = x[i] + x[i + d]: one step of g vectors must not read what
        // it writes, so d bounds the step (and the extent does).
        let body = |d| {
            vec![store(
                0,
                Index::var(0, 1),
                Expr::load(0, Index::var(0, 1)) + Expr::load(0, Index::var(0, 1).shift(d)),
            )]
        };
        assert_eq!(
            lane_group(0, 128, &body(128), 0, MAX_GROUP),
            Some(MAX_GROUP)
        );
        assert_eq!(lane_group(0, 128, &body(8), 0, MAX_GROUP), Some(2));
        assert_eq!(lane_group(0, 128, &body(4), 0, MAX_GROUP), Some(1));
        assert_eq!(lane_group(0, 8, &body(128), 0, MAX_GROUP), Some(2));
        assert_eq!(lane_group(0, 128, &body(1), 0, MAX_GROUP), None);
        // Window loops 32 channels apart would allow 32 lanes; a step with
        // window loops runs at most two vectors.
        assert_eq!(
            lane_group(0, 32, &scatter(832, 32, [0, 0]), 0, MAX_GROUP),
            Some(WINDOW_GROUP)
        );
        assert_eq!(
            lane_group(0, 32, &scatter(832, 4, [0, 0]), 0, MAX_GROUP),
            Some(1)
        );
        // A long inner loop (a column sum) is no window.
        let column_sum = vec![lp(
            1,
            320,
            vec![store(
                1,
                Index::var(0, 1),
                Expr::load(1, Index::var(0, 1)) + Expr::load(0, Index::new([(1, 512), (0, 1)], 0)),
            )],
        )];
        assert_eq!(
            lane_group(0, 512, &column_sum, 0, MAX_GROUP),
            Some(MAX_GROUP)
        );
        // Only kernels with such steps over exp/tanh/sigmoid skip the
        // e-graph pass.
        let tanh = |d| {
            vec![store(
                0,
                Index::var(0, 1),
                Expr::load(0, Index::var(0, 1).shift(d)).un(UnOp::Tanh),
            )]
        };
        assert!(!interleaves(&tanh(128), 0, MAX_GROUP));
        assert!(interleaves(&[lp(0, 128, tanh(128))], 0, MAX_GROUP));
        assert!(interleaves(
            &[lp(1, 2, vec![lp(0, 128, tanh(128))])],
            0,
            MAX_GROUP
        ));
        assert!(!interleaves(&[lp(0, 128, tanh(4))], 0, MAX_GROUP));
        assert!(!interleaves(&[lp(0, 128, body(128))], 0, MAX_GROUP));
    }
}
