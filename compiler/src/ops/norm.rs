//! `batchnorm` (normalization over the last axis with learned scale and
//! shift and running statistics) and `dropout` (inverted dropout in
//! training, identity at inference).

use super::{operand, Backward, Call, GradError, Inferred, LayerKind, ShapeError, Src};
use crate::graph::NodeId;
use crate::op::{GradOp, Op, ParamRole};
use crate::shape::Shape;

/// `dropout`'s arguments.
pub(super) const DROPOUT_ARGS: &[&str] = &["rate"];
/// `batchnorm`'s arguments in positional order.
pub(super) const BATCHNORM_ARGS: &[&str] = &["epsilon", "momentum"];

pub(super) fn expand(c: &mut Call, kind: LayerKind, x: &Src) -> NodeId {
    let (name, span) = (c.name, c.span);
    if kind == LayerKind::Dropout {
        let rate = c.a.number("rate", None, (0.0, 0.999_999), c.diags) as f32;
        return c.b.unary(Op::Dropout { rate }, name, span, x);
    }
    let epsilon = c.a.number("epsilon", Some(1e-3), (0.0, 1.0), c.diags) as f32;
    let momentum = c.a.number("momentum", Some(0.99), (0.0, 1.0), c.diags) as f32;
    let n =
        c.b.unary(Op::BatchNorm { epsilon, momentum }, name, span, x);
    c.b.param(name, "gamma", ParamRole::Gamma, n, 1);
    c.b.param(name, "beta", ParamRole::Beta, n, 2);
    c.b.param(name, "moving_mean", ParamRole::MovingMean, n, 3);
    c.b.param(name, "moving_var", ParamRole::MovingVar, n, 4);
    n
}

/// The input's shape; batchnorm's four parameters are `[C]`, C the last axis.
pub(super) fn infer(op: &Op, ins: &[Option<&Shape>]) -> Result<Inferred, ShapeError> {
    let x = operand(ins, 0)?;
    let params = match op {
        Op::BatchNorm { .. } => vec![vec![*x.0.last().unwrap_or(&0)]; 4],
        _ => vec![],
    };
    Ok(Inferred {
        out: x.clone(),
        params,
        warnings: vec![],
    })
}

/// Dropout's gradient is `dy` through the same mask; batchnorm's input
/// gradient accounts for the batch statistics when it normalized with them.
pub(super) fn backward(op: &Op, b: &mut Backward) -> Result<(), GradError> {
    let (ins, dy) = (b.ins.clone(), b.dy);
    match *op {
        Op::Grad(GradOp::DropoutMask { rate }) => {
            b.give(0, GradOp::DropoutMask { rate }, &[dy, ins[1]])
        }
        Op::BatchNorm { epsilon, .. } => {
            let batch_stats = matches!(b.graph.node(ins[3]).op, Op::Grad(GradOp::BatchMean));
            b.give(
                0,
                GradOp::BatchNormDx {
                    epsilon,
                    batch_stats,
                },
                &[ins[0], ins[1], ins[3], ins[4], dy],
            )?;
            b.give(
                1,
                GradOp::BatchNormDgamma { epsilon },
                &[ins[0], ins[3], ins[4], dy],
            )?;
            b.give(2, GradOp::BiasGrad, &[dy])
        }
        _ => unreachable!("norm::backward on {}", op.name()),
    }
}
