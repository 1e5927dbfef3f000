//! `conv2d`: cross-correlation of an image `[H, W, C]` with `filters`
//! windows `[KH, KW, C]`, output `[H', W', filters]` by the
//! `(W − F + 2P)/S + 1` rule on each axis. `conv1d` is the same op on a
//! sequence `[T, C]` read as the image `[1, T, C]` (window `[1, K]`):
//! output `[T', filters]`, weight `[K, C, filters]` (Keras's `Conv1D`
//! layout, the same numbers as `[1, K, C, filters]`).

use super::{
    as_image, from_image, operand, padding_arg, weighted, window2d, window_arg, Call, Inferred,
    ShapeError, Src,
};
use super::{numel, KERNEL};
use super::{Backward, GradError};
use crate::graph::NodeId;
use crate::op::{GradOp, Op, Padding, Spatial};
use crate::shape::Shape;

/// Arguments in positional order.
pub(super) const ARGS: &[&str] = &[
    "filters",
    "kernel",
    "stride",
    "padding",
    "bias",
    "activation",
];

pub(super) fn expand(c: &mut Call, spatial: Spatial, x: &Src) -> NodeId {
    let filters = c.a.count("filters", None, 1, c.diags);
    let kernel = window_arg(c, spatial, "kernel", None);
    let stride = window_arg(c, spatial, "stride", Some((1, 1)));
    let padding = padding_arg(c, spatial);
    let op = Op::Conv2d {
        spatial,
        filters,
        kernel,
        stride,
        padding,
        activation: None,
    };
    weighted(c, op, x)
}

/// Output `[H', W', F]`; weight `[KH, KW, C, F]`, bias `[F]` (as
/// `conv1d`: `[T', F]`, weight `[K, C, F]`).
pub(super) fn infer(op: &Op, ins: &[Option<&Shape>]) -> Result<Inferred, ShapeError> {
    let Op::Conv2d {
        spatial,
        filters,
        kernel,
        stride,
        padding,
        ..
    } = op
    else {
        unreachable!("conv::infer on {}", op.name())
    };
    let x = as_image(*spatial, operand(ins, 0)?)?;
    let (out, fails) = window2d(*spatial, &x, *kernel, *stride, *padding);
    if !fails.is_empty() {
        return Err(ShapeError::Window { fails });
    }
    let weight = match spatial {
        Spatial::Image => vec![kernel.0, kernel.1, x.0[2], *filters],
        Spatial::Seq => vec![kernel.1, x.0[2], *filters],
    };
    Ok(Inferred {
        out: from_image(*spatial, [out[0], out[1], *filters]),
        params: vec![weight, vec![*filters]],
        warnings: vec![],
    })
}

/// One kernel, plus zeroing and filling a padded copy of the input when
/// there is padding.
pub(super) fn cost(op: &Op, ins: &[Option<&Shape>], read: f64, write: f64) -> f64 {
    let Op::Conv2d { padding, .. } = op else {
        unreachable!("conv::cost on {}", op.name())
    };
    let pad = match padding {
        Padding::Valid | Padding::Explicit(0, 0) => 0.0,
        _ => 3.0 * numel(ins.first().copied().flatten()) + 2.0 * KERNEL,
    };
    read + write + pad + KERNEL
}

/// The input gradient is a transposed convolution of `dy` with the
/// weights, the weight gradient a correlation of the input with `dy`.
pub(super) fn backward(op: &Op, b: &mut Backward) -> Result<(), GradError> {
    let Op::Conv2d {
        kernel,
        stride,
        padding,
        ..
    } = *op
    else {
        unreachable!("conv::backward on {}", op.name())
    };
    let (x, w, dy) = (b.ins[0], b.ins[1], b.dy);
    b.give(
        0,
        GradOp::ConvDx {
            kernel,
            stride,
            padding,
        },
        &[dy, w],
    )?;
    b.give(
        1,
        GradOp::ConvDw {
            kernel,
            stride,
            padding,
        },
        &[x, dy],
    )?;
    if b.ins.len() > 2 {
        b.give(2, GradOp::BiasGrad, &[dy])?;
    }
    Ok(())
}

/// A filter bank `[KH, KW, C, F]` (or `[K, C, F]`): each output sums
/// `KH·KW·C` inputs, each input reaches `KH·KW·F` outputs (Keras's
/// convention).
pub(super) fn fans(shape: &[usize]) -> Option<(usize, usize)> {
    match *shape {
        [kh, kw, c, f] => Some((kh * kw * c, kh * kw * f)),
        [k, c, f] => Some((k * c, k * f)),
        _ => None,
    }
}
