//! The training graph from a checked forward graph: the optimizer in
//! training mode first (backpropagation-through-time unrolling and alias
//! cleanup; no fusion, no inference rewrites), then [`differentiate`].
//!
//! Recurrent layers are always unrolled, even at `-O0`: autodiff has
//! gradient rules for the unrolled cells, not for whole layers, so without
//! unrolling a recurrent model could not be trained at all. `-O0` skips
//! everything else.

use super::{differentiate, AutodiffError, TrainingGraph};
use crate::graph::Graph;
use crate::op::Op;
use crate::opt::{optimize, OptOptions, OptReport};
use crate::train::Loss;

/// The forward graph autodiff runs over: `g` with its recurrent layers
/// unrolled (and, when `optimize`, the other training-safe rewrites).
/// The report is `None` when the optimizer did not run.
pub fn training_forward(
    g: &Graph,
    optimize_graph: bool,
) -> Result<(Graph, Option<OptReport>), AutodiffError> {
    let recurrent = |g: &Graph| {
        g.g.node_indices()
            .find(|n| matches!(g.node(*n).op, Op::Recurrent { .. }))
    };
    if !optimize_graph && recurrent(g).is_none() {
        return Ok((g.clone(), None));
    }
    let (out, report) = optimize(g, &OptOptions::before_autodiff());
    if let Some(n) = recurrent(&out) {
        let why = report.fallback.clone().unwrap_or_else(|| {
            format!(
                "`{}` was not unrolled (stopped by {})",
                out.node(n).name,
                report.stop_reason
            )
        });
        return Err(AutodiffError::Unroll(why));
    }
    Ok((out, Some(report)))
}

/// [`training_forward`] then [`differentiate`]: the training graph of `g`.
pub fn training_graph(
    g: &Graph,
    loss: Loss,
    one_hot: bool,
    frozen: &[String],
    optimize_graph: bool,
) -> Result<TrainingGraph, AutodiffError> {
    let (forward, _) = training_forward(g, optimize_graph)?;
    differentiate(&forward, loss, one_hot, frozen)
}
