//! `conv2d`: cross-correlation of an image `[H, W, C]` with `filters`
//! windows `[KH, KW, C]`, output `[H', W', filters]` by the
//! `(W − F + 2P)/S + 1` rule on each axis.

use super::{
    image_hint, operand, padding_arg, weighted, window2d, Call, Inferred, ShapeError, Src,
};
use super::{numel, KERNEL};
use super::{Backward, GradError};
use crate::graph::NodeId;
use crate::op::{GradOp, Op, Padding};
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

pub(super) fn expand(c: &mut Call, x: &Src) -> NodeId {
    let filters = c.a.count("filters", None, 1, c.diags);
    let kernel = c.a.pair("kernel", None, 1, c.diags);
    let stride = c.a.pair("stride", Some((1, 1)), 1, c.diags);
    let padding = padding_arg(c);
    let op = Op::Conv2d {
        filters,
        kernel,
        stride,
        padding,
        activation: None,
    };
    weighted(c, op, x)
}

/// Output `[H', W', F]`; weight `[KH, KW, C, F]`, bias `[F]`.
pub(super) fn infer(op: &Op, ins: &[Option<&Shape>]) -> Result<Inferred, ShapeError> {
    let Op::Conv2d {
        filters,
        kernel,
        stride,
        padding,
        ..
    } = op
    else {
        unreachable!("conv::infer on {}", op.name())
    };
    let x = operand(ins, 0)?;
    if x.rank() != 3 {
        return Err(ShapeError::Rank {
            want: "[N, H, W, C]",
            hint: image_hint(x),
        });
    }
    let (out, fails) = window2d(x, *kernel, *stride, *padding);
    if !fails.is_empty() {
        return Err(ShapeError::Window { fails });
    }
    Ok(Inferred {
        out: Shape(vec![out[0], out[1], *filters]),
        params: vec![vec![kernel.0, kernel.1, x.0[2], *filters], vec![*filters]],
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

/// A filter bank `[KH, KW, C, F]`: each output sums `KH·KW·C` inputs, each
/// input reaches `KH·KW·F` outputs (Keras's convention).
pub(super) fn fans(shape: &[usize]) -> Option<(usize, usize)> {
    match *shape {
        [kh, kw, c, f] => Some((kh * kw * c, kh * kw * f)),
        _ => None,
    }
}
