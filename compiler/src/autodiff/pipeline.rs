//! The training graph from a checked forward graph: the optimizer in
//! training mode first (backpropagation-through-time unrolling and alias
//! cleanup; no fusion, no inference rewrites), then [`differentiate`],
//! then the optimizer again over the whole training graph (autodiff's ops
//! opaque; fusion on; no inference rewrites), so the training graph goes
//! through the same rules and codegen as a forward graph.
//!
//! Recurrent layers are always unrolled, even at `-O0`: autodiff has
//! gradient rules for the unrolled cells, not for whole layers, so without
//! unrolling a recurrent model could not be trained at all. `-O0` skips
//! everything else.

use super::{differentiate, AutodiffError, TrainingGraph};
use crate::graph::{Graph, NodeId};
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
    let tg = differentiate(&forward, loss, one_hot, frozen)?;
    if !optimize_graph {
        return Ok(tg);
    }
    Ok(optimize_training(tg).0)
}

/// Runs the optimizer over a training graph (fusion on, inference
/// rewrites off) and finds the trainer's nodes again in the result. On
/// any problem the input is returned unchanged and the report says why.
pub fn optimize_training(tg: TrainingGraph) -> (TrainingGraph, OptReport) {
    let mut g = tg.graph.clone();
    // The prediction is read by the trainer: keep it an output while optimizing.
    g.outputs.push((PREDICTION.into(), tg.prediction));
    let opts = OptOptions {
        inference: false,
        ..OptOptions::default()
    };
    let (mut out, mut report) = optimize(&g, &opts);
    if report.fallback.is_some() {
        return (tg, report);
    }
    match relocate(&tg, &mut out) {
        Some(found) => (found, report),
        None => {
            report.fallback = Some("a node the trainer reads was lost by the optimizer".into());
            (tg, report)
        }
    }
}

const PREDICTION: &str = "prediction";

/// `tg`'s nodes in `out`, the optimized form of `tg.graph` plus the
/// prediction output: outputs by name, inputs and parameters by name.
fn relocate(tg: &TrainingGraph, out: &mut Graph) -> Option<TrainingGraph> {
    let pos = out.outputs.iter().position(|(n, _)| n == PREDICTION)?;
    let prediction = out.outputs.remove(pos).1;
    let output = |out: &Graph, name: &str| {
        out.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
    };
    let leaf = |out: &Graph, name: &str| -> Option<NodeId> {
        out.g.node_indices().find(|n| {
            let node = out.node(*n);
            node.name == name && matches!(node.op, Op::Input | Op::Param { .. })
        })
    };
    let name_of = |id: NodeId| tg.graph.node(id).name.clone();
    let loss = output(out, &name_of(tg.loss)).or_else(|| output(out, "loss"))?;
    let target = leaf(out, &name_of(tg.target))?;
    let mut grads = Vec::new();
    for (name, _, _) in &tg.grads {
        grads.push((
            name.clone(),
            leaf(out, name)?,
            output(out, &format!("grad:{name}"))?,
        ));
    }
    let mut masks = Vec::new();
    for (m, rate) in &tg.masks {
        masks.push((leaf(out, &name_of(*m))?, *rate));
    }
    Some(TrainingGraph {
        graph: out.clone(),
        prediction,
        target,
        loss,
        grads,
        masks,
    })
}
