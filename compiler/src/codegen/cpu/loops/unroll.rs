//! Which loops are emitted unrolled: a loop with a constant, tiny trip
//! count and a small body (a pooling window, the scalar tail of a
//! vectorized loop, a vectorized loop of a few steps) becomes
//! straight-line code, its variable a constant in
//! each copy. That removes the loop's counter and branch, and turns the
//! variable's index terms into constant address offsets, which matters
//! most where the body runs for every element of a large tensor (a 2×2
//! pooling window per output vector).

use crate::kernel::ir::Stmt;

/// The longest loop that is unrolled.
const MAX_TRIPS: usize = 4;

/// The most statements an unrolled loop may expand to (nested loops
/// counted with their trip counts), so code size stays bounded.
const MAX_STATEMENTS: usize = 32;

/// The most vector steps of a vectorized loop that are unrolled (32
/// channels, say, in f32x4 lanes).
const MAX_LANE_STEPS: usize = 8;

/// Whether `for _ in 0..trips { body }` is emitted unrolled.
pub(super) fn unrolls(trips: usize, body: &[Stmt]) -> bool {
    trips <= MAX_TRIPS && trips.saturating_mul(size(body)) <= MAX_STATEMENTS
}

/// Whether a vectorized loop of `steps` vector steps is emitted unrolled:
/// its body runs for every step of an enclosing loop (a bias gradient's
/// accumulation over rows), where a counter per four elements costs as
/// much as the work.
pub(super) fn unrolls_lanes(steps: usize, body: &[Stmt]) -> bool {
    steps <= MAX_LANE_STEPS && steps.saturating_mul(size(body)) <= MAX_STATEMENTS
}

/// Statements `body` runs, nested loops counted with their trip counts.
fn size(body: &[Stmt]) -> usize {
    body.iter()
        .map(|s| match s {
            Stmt::Loop { extent, body, .. } => extent.saturating_mul(size(body)),
            Stmt::IfInBounds { body, .. } => size(body).saturating_add(1),
            Stmt::Store { .. } | Stmt::ScatterAdd { .. } | Stmt::Set { .. } => 1,
        })
        .fold(0, usize::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::ir::{Expr, Index};

    fn set() -> Stmt {
        Stmt::Set {
            scalar: 0,
            value: Expr::Const(1.0),
        }
    }

    #[test]
    fn small_windows_unroll_and_long_loops_do_not() {
        // A 2x2 window of two statements: 2 * (2 * 2) = 8 statements.
        let inner = Stmt::Loop {
            var: 1,
            extent: 2,
            body: vec![set(), set()],
        };
        assert!(unrolls(2, std::slice::from_ref(&inner)));
        // Five trips: too long, whatever the body.
        assert!(!unrolls(5, &[set()]));
        // Four trips of a 16-trip loop: 64 statements, too many.
        let long = Stmt::Loop {
            var: 1,
            extent: 16,
            body: vec![Stmt::Store {
                buf: 0,
                index: Index::var(1, 1),
                value: Expr::Const(0.0),
            }],
        };
        assert!(!unrolls(4, std::slice::from_ref(&long)));
        // Eight vector steps of one store unroll; of the 16-trip loop not.
        assert!(unrolls_lanes(8, &[set()]));
        assert!(!unrolls_lanes(8, &[long]));
        assert!(!unrolls_lanes(9, &[set()]));
    }
}
