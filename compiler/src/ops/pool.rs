//! `maxpool2d` and `avgpool2d`: the maximum or mean of each window of an
//! image `[H, W, C]`, per channel; `global_maxpool2d` and
//! `global_avgpool2d`: the same over the whole image, `[H, W, C]` → `[C]`
//! (one window of size `[H, W]`, which is how they are lowered and
//! differentiated). The 1-D layers (`maxpool1d`, `avgpool1d`,
//! `global_maxpool1d`, `global_avgpool1d`) are the same ops on a sequence
//! `[T, C]` read as the image `[1, T, C]`. On a variable-length sequence
//! the global 1-D poolings become `Op::MaskedPool` (`masking::instantiate`),
//! which reads the sequence's mask and skips padded steps.

use super::{
    as_image, axis_names, from_image, operand, padding_arg, window2d, window_arg, Call, Inferred,
    LayerKind, ShapeError, Src,
};
use super::{Backward, GradError};
use crate::graph::NodeId;
use crate::op::{GradOp, Op, Padding, PoolKind, Spatial};
use crate::shape::{Shape, WindowError};

/// Arguments in positional order.
pub(super) const ARGS: &[&str] = &["size", "stride", "padding"];

pub(super) fn expand(c: &mut Call, kind: LayerKind, spatial: Spatial, x: &Src) -> NodeId {
    let global = match kind {
        LayerKind::GlobalMaxPool2d | LayerKind::GlobalMaxPool1d => Some(PoolKind::Max),
        LayerKind::GlobalAvgPool2d | LayerKind::GlobalAvgPool1d => Some(PoolKind::Avg),
        _ => None,
    };
    if let Some(kind) = global {
        return c
            .b
            .unary(Op::GlobalPool2d { spatial, kind }, c.name, c.span, x);
    }
    let size = window_arg(c, spatial, "size", Some((2, 2)));
    let stride = window_arg(c, spatial, "stride", Some(size));
    let padding = padding_arg(c, spatial);
    let kind = if matches!(kind, LayerKind::MaxPool2d | LayerKind::MaxPool1d) {
        PoolKind::Max
    } else {
        PoolKind::Avg
    };
    let op = Op::Pool2d {
        spatial,
        kind,
        size,
        stride,
        padding,
    };
    c.b.unary(op, c.name, c.span, x)
}

/// Output `[H', W', C]`. A stride that does not divide drops the last
/// positions with a warning (Keras does the same silently). Explicit
/// padding of at least the window is rejected: the first window would
/// hold padding only, whose maximum is −inf and whose mean is 0/0.
pub(super) fn infer(op: &Op, ins: &[Option<&Shape>]) -> Result<Inferred, ShapeError> {
    if let Op::MaskedPool { .. } = op {
        let x = operand(ins, 0)?;
        let mask = operand(ins, 1)?;
        if x.rank() != 2 || mask.0 != [x.0[0]] {
            return Err(ShapeError::Internal);
        }
        return Ok(Inferred::plain(Shape(vec![x.0[1]])));
    }
    if let Op::GlobalPool2d { spatial, .. } = *op {
        let x = as_image(spatial, operand(ins, 0)?)?;
        return Ok(Inferred {
            out: Shape(vec![x.0[2]]),
            params: vec![],
            warnings: vec![],
        });
    }
    let Op::Pool2d {
        spatial,
        size,
        stride,
        padding,
        ..
    } = op
    else {
        unreachable!("pool::infer on {}", op.name())
    };
    let x = as_image(*spatial, operand(ins, 0)?)?;
    if let Padding::Explicit(ph, pw) = *padding {
        if ph >= size.0 || pw >= size.1 {
            return Err(ShapeError::PoolPadding {
                axes: axis_names(*spatial),
                size: *size,
                padding: (ph, pw),
            });
        }
    }
    let (out, fails) = window2d(*spatial, &x, *size, *stride, *padding);
    let (warn, errors): (Vec<_>, Vec<_>) = fails
        .into_iter()
        .partition(|(_, e)| matches!(e, WindowError::StrideDoesNotDivide { .. }));
    if !errors.is_empty() {
        return Err(ShapeError::Window { fails: errors });
    }
    let warnings = if warn.is_empty() {
        vec![]
    } else {
        vec![ShapeError::Window { fails: warn }]
    };
    Ok(Inferred {
        out: from_image(*spatial, [out[0], out[1], x.0[2]]),
        params: vec![],
        warnings,
    })
}

/// `dy` routed back to each window's maximum, or spread over its
/// positions for the average.
pub(super) fn backward(op: &Op, b: &mut Backward) -> Result<(), GradError> {
    if let Op::MaskedPool { kind } = *op {
        let (x, mask, dy) = (b.ins[0], b.ins[1], b.dy);
        return b.give(0, GradOp::MaskedPoolGrad { kind }, &[x, mask, dy]);
    }
    if let Op::GlobalPool2d { spatial, kind } = *op {
        // The gradient of one [H, W] window: `dy` seen as [1, 1, C] (an
        // alias) and routed back like any pooling's.
        let x = b.ins[0];
        let s = as_image(spatial, &b.shape(x)?).map_err(|_| b.unsupported())?;
        let (h, w, c) = (s.0[0], s.0[1], s.0[2]);
        let name = format!("{}.dy", b.node.name);
        let dy = b.add(
            Op::Reshape {
                dims: vec![Some(1), Some(1), Some(c)],
            },
            name,
            Shape(vec![1, 1, c]),
            &[b.dy],
        );
        return b.give(
            0,
            GradOp::PoolGrad {
                kind,
                size: (h, w),
                stride: (h, w),
                padding: Padding::Valid,
                relu_mask: false,
            },
            &[x, dy],
        );
    }
    let Op::Pool2d {
        kind,
        size,
        stride,
        padding,
        ..
    } = *op
    else {
        unreachable!("pool::backward on {}", op.name())
    };
    let (x, dy) = (b.ins[0], b.dy);
    b.give(
        0,
        GradOp::PoolGrad {
            kind,
            size,
            stride,
            padding,
            relu_mask: false,
        },
        &[x, dy],
    )
}
