//! How many registers an expression needs (roughly, per vector of a step):
//! `expr` evaluates the hungrier operand first, `lower` keeps scalar
//! registers in vector registers only while enough stay free.

use crate::kernel::ir::{Expr, UnOp};

/// Registers an expression needs (roughly, per vector), to evaluate the
/// hungrier operand first (Sethi–Ullman); the order of two independent
/// operands changes no result.
pub(super) fn need(e: &Expr) -> usize {
    match e {
        Expr::Const(_) | Expr::Get(_) | Expr::Iter(_) | Expr::Gather { .. } => 0,
        Expr::Load(..) => 1,
        Expr::Un(op, x) => need(x).max(match op {
            UnOp::Exp => 5,
            UnOp::Sigmoid => 6,
            UnOp::Tanh => 7,
            _ => 1,
        }),
        Expr::Bin(_, a, b) => {
            let (na, nb) = (need(a), need(b));
            if na == nb {
                na + 1
            } else {
                na.max(nb)
            }
        }
        Expr::Select(a, _, b, t, f) => need(a).max(need(b)).max(need(t)).max(need(f)) + 2,
    }
}
