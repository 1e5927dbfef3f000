//! `embedding`: token ids `[T]` → rows of a learned table `[T, dim]`
//! (Keras's `Embedding`). The ids come from a token input (`input words:
//! tokens[T]`), stored as f32 values in an ordinary input buffer (exact
//! for ids below 2^24, which `vocab` may not exceed). The padding id (0
//! unless `padding:` says otherwise or `none`) reads as a zero vector and
//! its row's gradient is zero; its row is also zero at initialization and
//! so stays zero under every optimizer.

use super::{operand, Backward, Call, GradError, Inferred, ShapeError, Src};
use crate::graph::NodeId;
use crate::op::{GradOp, Op, ParamRole};
use crate::shape::Shape;
use netc_lang::ast::ValueKind;

/// Arguments in positional order.
pub(super) const ARGS: &[&str] = &["vocab", "dim", "padding"];

pub(super) fn expand(c: &mut Call, x: &Src) -> NodeId {
    let vocab = c.a.count("vocab", None, 1, c.diags);
    let dim = c.a.count("dim", None, 1, c.diags);
    let padding = padding_arg(c, vocab);
    let op = Op::Embedding {
        vocab,
        dim,
        padding,
    };
    let (name, span) = (c.name, c.span);
    let n = c.b.unary(op, name, span, x);
    c.b.param(name, "weight", ParamRole::Weight, n, 1);
    n
}

/// `padding:` is an id in `0..vocab` (default 0) or `none`.
fn padding_arg(c: &mut Call, vocab: usize) -> Option<usize> {
    let Some(v) = c.a.raw("padding") else {
        return Some(0);
    };
    match v.kind {
        ValueKind::Ident(ref s) if s == "none" => None,
        ValueKind::Int(i) if i >= 0 && (i as u64) < vocab as u64 => Some(i as usize),
        ValueKind::Int(i) => {
            let why = if i < 0 {
                format!("{i} is negative; ids are 0..{vocab}")
            } else {
                format!("{i} is not an id of the vocabulary 0..{vocab}")
            };
            c.a.bad_value("padding", why, v, c.diags);
            None
        }
        _ => {
            c.a.reject("padding", "an id (an integer) or `none`", v, c.diags);
            None
        }
    }
}

/// Output `[T, dim]` from ids `[T]`; weight `[vocab, dim]`.
pub(super) fn infer(op: &Op, ins: &[Option<&Shape>]) -> Result<Inferred, ShapeError> {
    let Op::Embedding { vocab, dim, .. } = op else {
        unreachable!("embedding::infer on {}", op.name())
    };
    let x = operand(ins, 0)?;
    if x.rank() != 1 {
        return Err(ShapeError::Rank {
            want: "[N, T] (token ids)",
            hint: "help: an embedding looks up one sequence of ids per example: declare them as `tokens[T]`, with one axis".to_string(),
        });
    }
    Ok(Inferred {
        out: Shape(vec![x.0[0], *dim]),
        params: vec![vec![*vocab, *dim]],
        warnings: vec![],
    })
}

/// Reads the ids and the rows they pick (not the whole table), writes the
/// output.
pub(super) fn cost(ins: &[Option<&Shape>], write: f64) -> f64 {
    let ids = ins
        .first()
        .copied()
        .flatten()
        .map_or(0.0, |s| s.numel() as f64);
    ids + 2.0 * write + super::KERNEL
}

/// The table's gradient: `dy` added into the rows the ids pick. Token ids
/// have no gradient.
pub(super) fn backward(op: &Op, b: &mut Backward) -> Result<(), GradError> {
    let Op::Embedding { vocab, padding, .. } = *op else {
        unreachable!("embedding::backward on {}", op.name())
    };
    let (ids, dy) = (b.ins[0], b.dy);
    b.give(1, GradOp::EmbeddingDw { vocab, padding }, &[ids, dy])
}

/// A table `[vocab, dim]`: each row is one id's vector; `(vocab, dim)`.
/// The runtime initializes embeddings uniformly on ±0.05 (Keras's
/// default), not from the fans.
pub(super) fn fans(shape: &[usize]) -> Option<(usize, usize)> {
    match *shape {
        [vocab, dim] => Some((vocab, dim)),
        _ => None,
    }
}
