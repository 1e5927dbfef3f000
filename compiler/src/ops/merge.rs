//! Layers that combine tensors: `add` (and the `mul` and `average` that
//! bidirectional merges make) over equal shapes, and `concat` on one axis.

use super::{operand, Backward, Call, GradError, Inferred, LayerKind, ShapeError, Src, KERNEL};
use crate::graph::NodeId;
use crate::op::{GradOp, Op};
use crate::shape::Shape;
use netc_lang::ast::ValueKind;
use netc_lang::Diagnostic;

/// `concat`'s arguments (operands are positional names).
pub(super) const CONCAT_ARGS: &[&str] = &["axis"];

/// `piped` and the tensors named in the call are the operands.
pub(super) fn expand(c: &mut Call, kind: LayerKind, piped: Option<Src>) -> NodeId {
    let mut operands: Vec<Src> = piped.into_iter().collect();
    operands.extend(c.a.tensors.iter().map(|(t, s)| Src::Ref(t.to_string(), *s)));
    let op = match kind {
        LayerKind::Add => Op::Add,
        _ => Op::Concat {
            axis: c.a.raw("axis").map_or(-1, |v| match v.kind {
                ValueKind::Int(i) => i,
                _ => {
                    c.a.reject("axis", "an integer", v, c.diags);
                    -1
                }
            }),
        },
    };
    let name = kind.name();
    if operands.len() < 2 {
        c.diags.push(
            Diagnostic::error(
                "E0119",
                format!(
                    "`{name}` needs at least two tensors, found {}",
                    operands.len()
                ),
                c.span,
            )
            .with_label("too few inputs")
            .with_note(format!(
                "help: pipe one in and name the other: `x -> {name}(y)`"
            )),
        );
        c.a.failed = true;
    }
    let n = c.b.node(op, c.name, c.span);
    for (i, o) in operands.iter().enumerate() {
        c.b.feed(o, n, i);
    }
    n
}

pub(super) fn infer(op: &Op, ins: &[Option<&Shape>]) -> Result<Inferred, ShapeError> {
    let x = operand(ins, 0)?;
    let out = match op {
        Op::Concat { axis } => concat(*axis, x, ins)?,
        _ => {
            for i in 1..ins.len() {
                if operand(ins, i)? != x {
                    return Err(ShapeError::Unequal { index: i });
                }
            }
            x.clone()
        }
    };
    Ok(Inferred {
        out,
        params: vec![],
        warnings: vec![],
    })
}

fn concat(axis: i64, x: &Shape, ins: &[Option<&Shape>]) -> Result<Shape, ShapeError> {
    let rank = x.rank() as i64;
    let ax = if axis < 0 { axis + rank } else { axis };
    if ax < 0 || ax >= rank {
        return Err(ShapeError::ConcatAxis { axis });
    }
    let ax = ax as usize;
    let mut out = x.0.clone();
    for i in 1..ins.len() {
        let s = operand(ins, i)?;
        let same_rest = s.rank() == x.rank()
            && s.0
                .iter()
                .zip(&x.0)
                .enumerate()
                .all(|(k, (a, b))| k == ax || a == b);
        if !same_rest {
            return Err(ShapeError::ConcatMismatch { index: i, axis });
        }
        out[ax] += s.0[ax];
    }
    Ok(Shape(out))
}

/// One copy kernel per operand.
pub(super) fn cost(_op: &Op, ins: &[Option<&Shape>], read: f64, write: f64) -> f64 {
    read + write + KERNEL * ins.len() as f64
}

/// A sum passes `dy` to every operand; a mean scales it; a product
/// multiplies it by the other operands; a concatenation slices it.
pub(super) fn backward(op: &Op, b: &mut Backward) -> Result<(), GradError> {
    let (ins, dy) = (b.ins.clone(), b.dy);
    match *op {
        Op::Add => {
            for i in 0..ins.len() {
                b.pass(i, dy);
            }
        }
        Op::Average => {
            let k = ins.len() as f32;
            for i in 0..ins.len() {
                b.give(i, GradOp::Scale(1.0 / k), &[dy])?;
            }
        }
        Op::Mul => {
            for i in 0..ins.len() {
                let mut operands = vec![dy];
                operands.extend(
                    ins.iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, x)| *x),
                );
                b.give(i, GradOp::MulGrad, &operands)?;
            }
        }
        Op::Concat { axis } => {
            let rank = b.shape(b.id)?.rank() as i64;
            let ax = (if axis < 0 { axis + rank } else { axis }) as usize;
            let mut start = 0;
            for (i, x) in ins.iter().enumerate() {
                let len = b.shape(*x)?.0[ax];
                b.give(
                    i,
                    GradOp::Slice {
                        axis: ax,
                        start,
                        len,
                    },
                    &[dy],
                )?;
                start += len;
            }
        }
        _ => unreachable!("merge::backward on {}", op.name()),
    }
    Ok(())
}
