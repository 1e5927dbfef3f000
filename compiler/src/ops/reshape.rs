//! Layout ops: `flatten` and `reshape` (layers, aliases at run time),
//! `repeat` (a vector copied at every step of a new time axis, Keras's
//! `RepeatVector`: how a sequence-to-sequence decoder reads one encoding
//! at each output step), and the ops unrolling makes: a time step of a sequence (`time_slice`), a
//! slice of the last axis (`slice`) and stacking steps back (`stack`).

use super::{operand, Backward, Call, GradError, Inferred, LayerKind, ShapeError, Src};
use crate::graph::NodeId;
use crate::op::{GradOp, Op};
use crate::shape::{Shape, MAX_DIM};
use netc_lang::ast::ValueKind;
use netc_lang::Diagnostic;

/// `reshape`'s arguments.
pub(super) const RESHAPE_ARGS: &[&str] = &["shape"];

/// `repeat`'s arguments.
pub(super) const REPEAT_ARGS: &[&str] = &["times"];

pub(super) fn expand(c: &mut Call, kind: LayerKind, x: &Src) -> NodeId {
    let op = match kind {
        LayerKind::Reshape => Op::Reshape {
            dims: reshape_dims(c),
        },
        LayerKind::Repeat => Op::Repeat {
            times: c.a.count("times", None, 1, c.diags),
        },
        _ => Op::Flatten,
    };
    c.b.unary(op, c.name, c.span, x)
}

fn reshape_dims(c: &mut Call) -> Vec<Option<usize>> {
    let Some(v) = c.a.raw("shape") else {
        c.a.count("shape", None, 1, c.diags); // reports the missing argument
        return vec![];
    };
    let ValueKind::List(items) = &v.kind else {
        c.a.reject(
            "shape",
            "a list of dimensions such as [7, 7, 64]",
            v,
            c.diags,
        );
        return vec![];
    };
    let mut dims = Vec::new();
    for it in items {
        match it.kind {
            ValueKind::Int(-1) if !dims.contains(&None) => dims.push(None),
            ValueKind::Int(i) if i >= 1 && i <= MAX_DIM as i64 => dims.push(Some(i as usize)),
            ValueKind::Int(i) if i > MAX_DIM as i64 => {
                let why = format!("{i} is larger than the limit {MAX_DIM} (2^24)");
                c.a.bad_value("shape", why, it, c.diags);
                return vec![];
            }
            _ => {
                c.a.reject("shape", "positive dimensions (at most one -1)", it, c.diags);
                return vec![];
            }
        }
    }
    if dims.is_empty() {
        c.diags.push(
            Diagnostic::error("E0105", "`reshape` needs at least one dimension", c.span)
                .with_label("empty shape"),
        );
        c.a.failed = true;
    }
    dims
}

pub(super) fn infer(op: &Op, ins: &[Option<&Shape>]) -> Result<Inferred, ShapeError> {
    let x = operand(ins, 0)?;
    let out = match op {
        Op::Flatten => Shape(vec![x.numel()]),
        Op::Reshape { dims } => reshape(dims, x)?,
        Op::TimeSlice { step } => {
            if x.rank() != 2 || *step >= x.0[0] {
                return Err(ShapeError::Internal);
            }
            Shape(vec![x.0[1]])
        }
        Op::Slice { start, len } => {
            let last = *x.0.last().ok_or(ShapeError::Internal)?;
            if *len == 0 || start + len > last {
                return Err(ShapeError::Internal);
            }
            let mut out = x.0.clone();
            *out.last_mut().ok_or(ShapeError::Internal)? = *len;
            Shape(out)
        }
        Op::Stack => {
            if x.rank() != 1 || !ins.iter().all(|s| s.is_some_and(|s| s == x)) {
                return Err(ShapeError::Internal);
            }
            Shape(vec![ins.len(), x.0[0]])
        }
        Op::Repeat { times } => {
            if x.rank() != 1 {
                return Err(ShapeError::Rank {
                    want: "a vector [N, F]",
                    hint: "help: `repeat` copies a vector at every step; `flatten` first, or \
                           take the last step of a sequence (`return_sequences: false`)"
                        .to_string(),
                });
            }
            Shape(vec![*times, x.0[0]])
        }
        _ => unreachable!("reshape::infer on {}", op.name()),
    };
    Ok(Inferred {
        out,
        params: vec![],
        warnings: vec![],
    })
}

/// The element counts must agree; a `-1` takes what is left.
fn reshape(dims: &[Option<usize>], x: &Shape) -> Result<Shape, ShapeError> {
    // Up to 64 dims of 2^24 each: the product can pass 2^64.
    let exact = dims
        .iter()
        .flatten()
        .try_fold(1usize, |a, d| a.checked_mul(*d));
    let known = exact.unwrap_or(usize::MAX);
    let ok = if dims.contains(&None) {
        known > 0 && x.numel().is_multiple_of(known)
    } else {
        known == x.numel()
    };
    if !ok {
        return Err(ShapeError::Reshape {
            dims: dims.to_vec(),
            known: exact,
        });
    }
    Ok(Shape(
        dims.iter()
            .map(|d| d.unwrap_or(x.numel() / known.max(1)))
            .collect(),
    ))
}

/// Layout ops move gradients back unchanged: a reshape to the input's
/// shape, a time step into its sequence (gathered by autodiff), a stack
/// split into its steps, a slice padded back with zeros. A repeat's is
/// the sum of its steps' gradients (every step read the same vector).
pub(super) fn backward(op: &Op, b: &mut Backward) -> Result<(), GradError> {
    let (ins, dy) = (b.ins.clone(), b.dy);
    match *op {
        Op::Flatten | Op::Reshape { .. } => {
            if b.needed[0] {
                let s = b.shape(ins[0])?;
                let reshape = Op::Reshape {
                    dims: s.0.iter().map(|d| Some(*d)).collect(),
                };
                b.give_op(0, reshape, &[dy])?;
            }
        }
        Op::TimeSlice { step } => {
            if b.needed[0] {
                b.time_slices.push((ins[0], step, dy));
            }
        }
        Op::Stack => {
            for i in 0..ins.len() {
                b.give_op(i, Op::TimeSlice { step: i }, &[dy])?;
            }
        }
        Op::Slice { start, len } => {
            let total = b.shape(ins[0])?.0.last().copied().unwrap_or(1);
            b.give(0, GradOp::SliceGrad { start, len, total }, &[dy])?;
        }
        Op::Repeat { times } => {
            if b.needed[0] {
                let x = b.shape(ins[0])?;
                let name = b.graph.node(ins[0]).name.clone();
                let steps: Vec<NodeId> = (0..times)
                    .map(|step| {
                        b.add(
                            Op::TimeSlice { step },
                            format!("grad:{name}.step{step}"),
                            x.clone(),
                            &[dy],
                        )
                    })
                    .collect();
                match steps[..] {
                    [one] => b.pass(0, one),
                    _ => b.give_op(0, Op::Add, &steps)?,
                }
            }
        }
        _ => unreachable!("reshape::backward on {}", op.name()),
    }
    Ok(())
}
