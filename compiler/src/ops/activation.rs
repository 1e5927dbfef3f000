//! Activation layers (`relu`, `leaky_relu`, `sigmoid`, `tanh`, `softmax`)
//! and the fused elementwise maps the optimizer makes from chains of them.

use super::{operand, Backward, Call, GradError, Inferred, LayerKind, ShapeError, Src, KERNEL};
use crate::graph::NodeId;
use crate::op::{Activation, GradOp, Op};
use crate::shape::Shape;

/// `leaky_relu`'s arguments.
pub(super) const LEAKY_RELU_ARGS: &[&str] = &["alpha"];

pub(super) fn expand(c: &mut Call, kind: LayerKind, x: &Src) -> NodeId {
    let act = match kind {
        LayerKind::Relu => Activation::Relu,
        LayerKind::Sigmoid => Activation::Sigmoid,
        LayerKind::Tanh => Activation::Tanh,
        LayerKind::Softmax => Activation::Softmax,
        _ => Activation::LeakyRelu(c.a.number("alpha", Some(0.3), (0.0, 1e6), c.diags) as f32),
    };
    c.b.unary(Op::Activation(act), c.name, c.span, x)
}

/// An activation keeps its input's shape. A map's operands are the
/// output's shape or a per-channel vector `[C]`.
pub(super) fn infer(op: &Op, ins: &[Option<&Shape>]) -> Result<Inferred, ShapeError> {
    let x = operand(ins, 0)?;
    if let Op::Map { expr } = op {
        let c = *x.0.last().ok_or(ShapeError::Internal)?;
        let fits = ins.iter().all(|s| s.is_some_and(|s| s == x || s.0 == [c]));
        if !fits || expr.arity() > ins.len() {
            return Err(ShapeError::Internal);
        }
    }
    Ok(Inferred {
        out: x.clone(),
        params: vec![],
        warnings: vec![],
    })
}

/// Softmax reads its input twice (maximum, then exponentials) and writes
/// three times (exponentials, sum, quotient); the others are one pass.
pub(super) fn cost(op: &Op, read: f64, write: f64) -> f64 {
    match op {
        Op::Activation(Activation::Softmax) => 2.0 * read + 3.0 * write + KERNEL,
        _ => read + write + KERNEL,
    }
}

/// The derivative is written in terms of the activation's output.
pub(super) fn backward(op: &Op, b: &mut Backward) -> Result<(), GradError> {
    let Op::Activation(a) = *op else {
        unreachable!("activation::backward on {}", op.name())
    };
    let (y, dy) = (b.id, b.dy);
    b.give(0, GradOp::ActGrad(a), &[y, dy])
}
