//! The operations autodiff adds to a graph: losses, their gradients, and
//! the backward form of each forward op. Like every op they are nodes of
//! the dataflow graph, lowered to kernels by `kernel::lower_grad`.

use crate::op::{Activation, Padding, PoolKind};
use crate::train::Loss;
use std::fmt;

/// A backward (or training-only) operation.
#[derive(Clone, Debug, PartialEq)]
pub enum GradOp {
    /// Per-example loss `[1]`. Inputs: prediction, target.
    Loss(Loss),
    /// `∂(mean loss)/∂x` where `x` is the prediction, or the logits of a
    /// final softmax/sigmoid when `through` names it (the fused, stable
    /// form). Inputs: prediction, target. Shape of the prediction.
    LossGrad {
        /// The loss.
        loss: Loss,
        /// The activation the gradient passes through, if fused.
        through: Option<Activation>,
    },
    /// `dx` of an activation from its output `y` and `dy`. Inputs: y, dy.
    ActGrad(Activation),
    /// `dx = dy · Wᵀ`. Inputs: dy `[.., U]`, W `[F, U]`.
    DenseDx,
    /// `dW = xᵀ · dy`. Inputs: x `[.., F]`, dy `[.., U]`.
    DenseDw,
    /// Sum of `dy` over every axis but the last (and the batch). Input: dy.
    BiasGrad,
    /// `dx` of a convolution. Inputs: dy, W.
    ConvDx {
        /// Window.
        kernel: (usize, usize),
        /// Step.
        stride: (usize, usize),
        /// Padding of the forward op.
        padding: Padding,
    },
    /// `dW` of a convolution. Inputs: x, dy.
    ConvDw {
        /// Window.
        kernel: (usize, usize),
        /// Step.
        stride: (usize, usize),
        /// Padding of the forward op.
        padding: Padding,
    },
    /// `dx` of pooling. Inputs: x, dy.
    PoolGrad {
        /// Max or average.
        kind: PoolKind,
        /// Window.
        size: (usize, usize),
        /// Step.
        stride: (usize, usize),
        /// Padding of the forward op.
        padding: Padding,
    },
    /// Training-time dropout `x · mask / (1 − rate)`. Inputs: x, mask.
    /// (The backward pass is the same op applied to `dy`.)
    DropoutMask {
        /// Drop probability.
        rate: f32,
    },
    /// `dy` times the product of the other factors of a `mul`. Inputs: dy, others.
    MulGrad,
    /// `dy · factor`. Input: dy.
    Scale(f32),
    /// The part of `dy` that came from concat input: axis (batch excluded),
    /// first index and length. Input: dy.
    Slice {
        /// Axis, batch excluded, non-negative.
        axis: usize,
        /// First index on the axis.
        start: usize,
        /// Length on the axis.
        len: usize,
    },
}

impl GradOp {
    /// The op's name in the graph text form.
    pub fn name(&self) -> &'static str {
        match self {
            GradOp::Loss(_) => "loss",
            GradOp::LossGrad { .. } => "loss_grad",
            GradOp::ActGrad(_) => "act_grad",
            GradOp::DenseDx => "dense_dx",
            GradOp::DenseDw => "dense_dw",
            GradOp::BiasGrad => "bias_grad",
            GradOp::ConvDx { .. } => "conv2d_dx",
            GradOp::ConvDw { .. } => "conv2d_dw",
            GradOp::PoolGrad { .. } => "pool_grad",
            GradOp::DropoutMask { .. } => "dropout_mask",
            GradOp::MulGrad => "mul_grad",
            GradOp::Scale(_) => "scale",
            GradOp::Slice { .. } => "slice",
        }
    }
}

impl fmt::Display for GradOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pair = |(a, b): (usize, usize)| format!("[{a}, {b}]");
        match self {
            GradOp::Loss(l) => write!(f, "loss: {l:?}"),
            GradOp::LossGrad { loss, through } => match through {
                Some(a) => write!(f, "loss: {loss:?}, through: {}", a.name()),
                None => write!(f, "loss: {loss:?}"),
            },
            GradOp::ActGrad(a) => write!(f, "act: {a}"),
            GradOp::ConvDx {
                kernel,
                stride,
                padding,
            }
            | GradOp::ConvDw {
                kernel,
                stride,
                padding,
            } => {
                write!(
                    f,
                    "kernel: {}, stride: {}, padding: {padding}",
                    pair(*kernel),
                    pair(*stride)
                )
            }
            GradOp::PoolGrad {
                kind,
                size,
                stride,
                padding,
            } => write!(
                f,
                "kind: {}, size: {}, stride: {}, padding: {padding}",
                if *kind == PoolKind::Max { "max" } else { "avg" },
                pair(*size),
                pair(*stride)
            ),
            GradOp::DropoutMask { rate } => write!(f, "rate: {rate}"),
            GradOp::Scale(s) => write!(f, "factor: {s}"),
            GradOp::Slice { axis, start, len } => {
                write!(f, "axis: {axis}, start: {start}, len: {len}")
            }
            _ => Ok(()),
        }
    }
}
