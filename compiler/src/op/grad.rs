//! The operations autodiff adds to a graph: losses, their gradients, and
//! the backward form of each forward op. Like every op they are nodes of
//! the dataflow graph, lowered to kernels by `kernel::lower` (each in its
//! op family's file; the losses in `loss`). They live beside
//! [`Op`](super::Op) because they are part of the IR that every pass reads.
//! `autodiff` adds them, through the registry's gradient rules
//! (`ops::backward`); the optimizer only rewrites existing ones (its
//! `relu-pool_grad` rule merges a relu gradient into a pooling gradient).

use super::{Activation, CellKind, Padding, PoolKind};
use std::fmt;

/// Loss functions (the training section's `loss:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Mean squared error.
    Mse,
    /// Binary cross-entropy on sigmoid outputs.
    BinaryCrossEntropy,
    /// Categorical cross-entropy on softmax outputs (integer or one-hot labels).
    CrossEntropy,
}

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
    /// The gradient of an embedding table `[vocab, dim]`: row `r` is the
    /// sum of `dy` over the positions whose id is `r`, and the padding
    /// row is zero. Inputs: ids `[T]`, dy `[T, dim]`.
    EmbeddingDw {
        /// Rows of the table.
        vocab: usize,
        /// The id whose row is never trained.
        padding: Option<usize>,
    },
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
        /// Also the gradient of a relu whose output `x` is: zero where
        /// `x ≤ 0` (the optimizer's `relu-pool_grad` fusion; autodiff
        /// itself emits `false`).
        relu_mask: bool,
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
    /// One gradient of an unrolled recurrent cell step (see
    /// [`CellWrt`]). Its inputs are enough to recompute the gates; the
    /// lowering reads the activations its forward step saved when that
    /// step is in the same program. Inputs: the cell's own
    /// operands (x_t, U, recurrent bias if any, previous state if any),
    /// then `d(new state)`, then for [`CellWrt::State`] `dz_rec · Uᵀ` `[U]`.
    CellGrad {
        /// rnn / lstm / gru.
        cell: CellKind,
        /// Hidden size.
        units: usize,
        /// Whether the forward cell had a previous state.
        has_state: bool,
        /// Whether the forward cell had a recurrent bias.
        recurrent_bias: bool,
        /// Which gradient.
        wrt: CellWrt,
    },
    /// `dx` of a time slice: `dy` `[F]` placed at step `step` of a
    /// `[steps, F]` zero tensor. Input: dy.
    TimeScatter {
        /// The time index.
        step: usize,
        /// Sequence length.
        steps: usize,
    },
    /// `dx` of a last-axis slice: `dy` `[.., len]` placed at `start` of a
    /// `[.., total]` zero tensor. Input: dy.
    SliceGrad {
        /// First element the slice took.
        start: usize,
        /// Elements it took.
        len: usize,
        /// Length of the sliced axis.
        total: usize,
    },
    /// The gradient of a [`MaskStep`](super::Op::MaskStep)'s previous
    /// value: `dy` where `mask[step]` is 0, else zero. Inputs: mask, dy.
    MaskStepPrev {
        /// The time index read from the mask.
        step: usize,
    },
    /// `dx` of a [`MaskedPool`](super::Op::MaskedPool): `dy` onto the
    /// first maximum among the real steps, or an equal share onto every
    /// real step. Inputs: x, mask, dy.
    MaskedPoolGrad {
        /// Max or average.
        kind: PoolKind,
    },
    /// Per-channel mean of `x` over the batch and every axis but the last
    /// (batchnorm's batch statistic). Input: x. Shape `[C]`.
    BatchMean,
    /// Per-channel biased variance of `x` around `mean` over the same
    /// rows. Inputs: x, mean. Shape `[C]`.
    BatchVar,
    /// `dx` of batchnorm. With `batch_stats` the mean and variance are the
    /// batch's own and the gradient flows through them too; without, they
    /// are the running statistics (constants). Inputs: x, gamma, mean,
    /// var, dy.
    BatchNormDx {
        /// Added to the variance.
        epsilon: f32,
        /// Whether mean and var are the batch statistics of `x`.
        batch_stats: bool,
    },
    /// `dγ = Σ dy ∘ (x − mean)/√(var + ε)` per channel. Inputs: x, mean,
    /// var, dy. Shape `[C]`.
    BatchNormDgamma {
        /// Added to the variance.
        epsilon: f32,
    },
    /// A running statistic's next value `m·moving + (1 − m)·batch` (as
    /// Keras). Inputs: moving, batch. The trainer stores it back.
    MovingAverage {
        /// The decay `m`.
        momentum: f32,
    },
}

/// Which gradient of a cell step a [`GradOp::CellGrad`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellWrt {
    /// `∂L/∂(x_t·W + b)` `[G·U]`: the pre-activation gradient of every gate.
    Input,
    /// `∂L/∂(h_{t−1}·U + b_r)` `[G·U]`; equal to [`CellWrt::Input`] except
    /// for the GRU candidate block, which the reset gate multiplies.
    Recurrent,
    /// `∂L/∂state_{t−1}`: `dz_rec·Uᵀ` plus the direct paths (`f ∘ dc` into
    /// an LSTM's `c`, `z ∘ dh` in a GRU).
    State,
}

impl CellWrt {
    fn name(self) -> &'static str {
        match self {
            CellWrt::Input => "input",
            CellWrt::Recurrent => "recurrent",
            CellWrt::State => "state",
        }
    }
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
            GradOp::EmbeddingDw { .. } => "embedding_dw",
            GradOp::ConvDx { .. } => "conv2d_dx",
            GradOp::ConvDw { .. } => "conv2d_dw",
            GradOp::PoolGrad { .. } => "pool_grad",
            GradOp::DropoutMask { .. } => "dropout_mask",
            GradOp::MulGrad => "mul_grad",
            GradOp::Scale(_) => "scale",
            GradOp::Slice { .. } => "slice",
            GradOp::CellGrad { .. } => "cell_grad",
            GradOp::TimeScatter { .. } => "time_scatter",
            GradOp::SliceGrad { .. } => "slice_grad",
            GradOp::MaskStepPrev { .. } => "mask_step_prev",
            GradOp::MaskedPoolGrad { .. } => "masked_pool_grad",
            GradOp::BatchMean => "batch_mean",
            GradOp::BatchVar => "batch_var",
            GradOp::BatchNormDx { .. } => "batchnorm_dx",
            GradOp::BatchNormDgamma { .. } => "batchnorm_dgamma",
            GradOp::MovingAverage { .. } => "moving_average",
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
                relu_mask,
            } => write!(
                f,
                "kind: {}, size: {}, stride: {}, padding: {padding}{}",
                if *kind == PoolKind::Max { "max" } else { "avg" },
                pair(*size),
                pair(*stride),
                if *relu_mask { ", relu_mask" } else { "" }
            ),
            GradOp::DropoutMask { rate } => write!(f, "rate: {rate}"),
            GradOp::EmbeddingDw { vocab, padding } => {
                write!(f, "vocab: {vocab}, padding: {}", padding_text(*padding))
            }
            GradOp::Scale(s) => write!(f, "factor: {s}"),
            GradOp::Slice { axis, start, len } => {
                write!(f, "axis: {axis}, start: {start}, len: {len}")
            }
            GradOp::CellGrad {
                cell,
                units,
                has_state,
                recurrent_bias,
                wrt,
            } => write!(
                f,
                "cell: {}, units: {units}, has_state: {has_state}, recurrent_bias: {recurrent_bias}, wrt: {}",
                cell.name(),
                wrt.name()
            ),
            GradOp::TimeScatter { step, steps } => write!(f, "step: {step}, steps: {steps}"),
            GradOp::SliceGrad { start, len, total } => {
                write!(f, "start: {start}, len: {len}, total: {total}")
            }
            GradOp::BatchNormDx {
                epsilon,
                batch_stats,
            } => write!(f, "epsilon: {epsilon}, batch_stats: {batch_stats}"),
            GradOp::BatchNormDgamma { epsilon } => write!(f, "epsilon: {epsilon}"),
            GradOp::MaskStepPrev { step } => write!(f, "step: {step}"),
            GradOp::MaskedPoolGrad { kind } => {
                write!(f, "kind: {}", if *kind == PoolKind::Max { "max" } else { "avg" })
            }
            GradOp::MovingAverage { momentum } => write!(f, "momentum: {momentum}"),
            _ => Ok(()),
        }
    }
}

/// An embedding's padding id as written in attributes: the id or `none`.
pub fn padding_text(p: Option<usize>) -> String {
    p.map_or("none".to_string(), |p| p.to_string())
}
