//! `dense`: `x · weight + bias` on the last axis of `[F]` or, per time
//! step, of `[T, F]`.

use super::{operand, product, weighted, Backward, Call, GradError, Inferred, ShapeError, Src};
use crate::graph::NodeId;
use crate::op::{GradOp, Op};
use crate::shape::Shape;

/// Arguments in positional order.
pub(super) const ARGS: &[&str] = &["units", "bias", "activation"];

pub(super) fn expand(c: &mut Call, x: &Src) -> NodeId {
    let op = Op::Dense {
        units: c.a.count("units", None, 1, c.diags),
        activation: None,
    };
    weighted(c, op, x)
}

/// Output: the input with its last axis `units`; weight `[F, U]`, bias `[U]`.
pub(super) fn infer(op: &Op, ins: &[Option<&Shape>]) -> Result<Inferred, ShapeError> {
    let Op::Dense { units, .. } = op else {
        unreachable!("dense::infer on {}", op.name())
    };
    let x = operand(ins, 0)?;
    if x.rank() == 0 || x.rank() > 2 {
        let hint = if x.rank() > 2 {
            format!("help: insert `flatten` before it: {} features", product(x))
        } else {
            String::new()
        };
        return Err(ShapeError::Rank {
            want: "[N, F] or [N, T, F]",
            hint,
        });
    }
    let f = *x.0.last().unwrap_or(&0);
    let mut out = x.0.clone();
    if let Some(l) = out.last_mut() {
        *l = *units;
    }
    Ok(Inferred {
        out: Shape(out),
        params: vec![vec![f, *units], vec![*units]],
        warnings: vec![],
    })
}

/// `dx = dy · Wᵀ`, `dW = xᵀ · dy`, `db = Σ dy`.
pub(super) fn backward(b: &mut Backward) -> Result<(), GradError> {
    let (x, w, dy) = (b.ins[0], b.ins[1], b.dy);
    b.give(0, GradOp::DenseDx, &[dy, w])?;
    b.give(1, GradOp::DenseDw, &[x, dy])?;
    if b.ins.len() > 2 {
        b.give(2, GradOp::BiasGrad, &[dy])?;
    }
    Ok(())
}

/// A matrix `[rows, cols]` (dense and recurrent weights): `(rows, cols)`.
pub(super) fn fans(shape: &[usize]) -> Option<(usize, usize)> {
    match *shape {
        [rows, cols] => Some((rows, cols)),
        _ => None,
    }
}
