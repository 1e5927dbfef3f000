//! Reverse-mode automatic differentiation as a graph → graph transform.
//!
//! [`differentiate`] takes a forward graph and a loss and returns a
//! training graph: the forward ops (dropout and batchnorm switched to their
//! training forms), a per-example loss node, for every trainable parameter
//! a node computing the gradient of the batch-mean loss, and for every
//! batchnorm running statistic its next value (outputs `running:<param>`). The training graph is an
//! ordinary [`Graph`]; it is printed, optimized and lowered like any other.

use crate::graph::{Graph, Node, NodeId};
use crate::op::{Activation, GradOp, Op};
use crate::ops::{self, Backward, GradError};
use crate::shape::Shape;
use crate::train::{Loss, TargetEncoding};
use std::collections::{HashMap, HashSet};
use thiserror::Error;

/// Why a graph could not be differentiated.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AutodiffError {
    /// Training needs exactly one output to apply the loss to.
    #[error("model `{0}` has {1} outputs; training needs exactly one")]
    Outputs(String, usize),
    /// A node has no inferred shape.
    #[error("node `{0}` has no shape; check the model first")]
    NoShape(String),
    /// A gradient rule failed (no rule for the op, a layer not unrolled).
    #[error(transparent)]
    Rule(#[from] GradError),
    /// The graph has a cycle.
    #[error("the graph has a cycle")]
    Cycle,
}

/// A training graph and the nodes the trainer reads and feeds.
#[derive(Clone, Debug)]
pub struct TrainingGraph {
    /// Forward, loss and backward nodes.
    pub graph: Graph,
    /// The model's prediction.
    pub prediction: NodeId,
    /// The target input (class indices for cross-entropy with integer labels).
    pub target: NodeId,
    /// The per-example loss `[1]`.
    pub loss: NodeId,
    /// `(parameter name, parameter node, gradient node)` of every trainable parameter.
    pub grads: Vec<(String, NodeId, NodeId)>,
    /// Dropout mask inputs the trainer fills each step, with their drop rate.
    pub masks: Vec<(NodeId, f32)>,
}

/// Differentiates `g` for `loss`, with cross-entropy targets encoded as
/// `targets`. `frozen` holds nodes of `g` whose layer is frozen (see
/// `train::Objective::frozen_nodes`): their parameters get no gradient and
/// a frozen batchnorm keeps its running statistics.
pub fn differentiate(
    g: &Graph,
    loss: Loss,
    targets: TargetEncoding,
    frozen: &HashSet<NodeId>,
) -> Result<TrainingGraph, AutodiffError> {
    let mut t = g.clone();
    let &[(_, pred)] = t.outputs.as_slice() else {
        return Err(AutodiffError::Outputs(g.name.clone(), g.outputs.len()));
    };
    let order = t.topo_order().ok_or(AutodiffError::Cycle)?;
    let shape = |t: &Graph, n: NodeId| {
        t.node(n)
            .shape
            .clone()
            .ok_or_else(|| AutodiffError::NoShape(t.node(n).name.clone()))
    };

    // Dropout becomes x · mask / (1 − rate) with a mask input per layer.
    let mut masks = Vec::new();
    for &id in &order {
        if let Op::Dropout { rate } = t.node(id).op {
            let s = shape(&t, id)?;
            let name = format!("{}.mask", t.node(id).name);
            let span = t.node(id).span;
            let m = t.add(Node {
                op: Op::Input {
                    tokens: false,
                    variable: false,
                },
                name: name.clone(),
                layer: name,
                span,
                shape: Some(s),
            });
            t.connect(m, id, 1);
            t.g[id].op = Op::Grad(GradOp::DropoutMask { rate });
            masks.push((m, rate));
        }
    }

    // Batchnorm (of layers not frozen) normalizes with the batch's own
    // statistics; the running ones are updated from them and stored back
    // by the trainer (outputs `running:<param>`).
    let mut running = Vec::new();
    for &id in &order {
        let Op::BatchNorm { momentum, .. } = t.node(id).op else {
            continue;
        };
        if frozen.contains(&id) {
            continue;
        }
        let ins = t.inputs_of(id);
        let &[x, _, _, mm, mv] = ins.as_slice() else {
            continue;
        };
        let node = t.node(id).clone();
        let c = shape(&t, mm)?;
        let add = |t: &mut Graph, op: GradOp, name: String, ins: &[NodeId]| {
            let n = t.add(Node {
                op: Op::Grad(op),
                name,
                layer: node.layer.clone(),
                span: node.span,
                shape: Some(c.clone()),
            });
            for (i, x) in ins.iter().enumerate() {
                t.connect(*x, n, i);
            }
            n
        };
        let mean = add(
            &mut t,
            GradOp::BatchMean,
            format!("{}.batch_mean", node.name),
            &[x],
        );
        let var = add(
            &mut t,
            GradOp::BatchVar,
            format!("{}.batch_var", node.name),
            &[x, mean],
        );
        for (stat, batch) in [(mm, mean), (mv, var)] {
            if let Some(e) = t.g.find_edge(stat, id) {
                t.g.remove_edge(e);
            }
            let name = t.node(stat).name.clone();
            let next = add(
                &mut t,
                GradOp::MovingAverage { momentum },
                format!("running:{name}"),
                &[stat, batch],
            );
            running.push((format!("running:{name}"), next));
        }
        t.connect(mean, id, 3);
        t.connect(var, id, 4);
    }

    // The target and the loss.
    let ps = shape(&t, pred)?;
    let target_shape = if loss == Loss::CrossEntropy && targets == TargetEncoding::ClassIndices {
        Shape(if ps.rank() > 1 {
            ps.0[..ps.rank() - 1].to_vec()
        } else {
            vec![1]
        })
    } else {
        ps.clone()
    };
    let span = t.node(pred).span;
    let mk =
        |t: &mut Graph, op: GradOp, name: String, layer: &str, shape: Shape, ins: &[NodeId]| {
            let n = t.add(Node {
                op: Op::Grad(op),
                name,
                layer: layer.to_string(),
                span,
                shape: Some(shape),
            });
            for (i, x) in ins.iter().enumerate() {
                t.connect(*x, n, i);
            }
            n
        };
    let target = t.add(Node {
        op: Op::Input {
            tokens: false,
            variable: false,
        },
        name: "target".into(),
        layer: "target".into(),
        span,
        shape: Some(target_shape),
    });
    let loss_node = mk(
        &mut t,
        GradOp::Loss(loss),
        "loss".into(),
        "loss",
        Shape(vec![1]),
        &[pred, target],
    );

    // Which nodes lead to a trainable parameter (only they need gradients).
    let trainable = |t: &Graph, n: NodeId| match t.node(n).op {
        Op::Param { role } => role.trainable() && !frozen.contains(&n),
        _ => false,
    };
    let mut needs: HashSet<NodeId> = HashSet::new();
    for &id in &order {
        if trainable(&t, id) || t.inputs_of(id).iter().any(|i| needs.contains(i)) {
            needs.insert(id);
        }
    }

    // Seed: the loss gradient, fused through a final softmax or sigmoid.
    let mut contrib: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    let through = match (&t.node(pred).op, loss) {
        (Op::Activation(Activation::Softmax), Loss::CrossEntropy) => Some(Activation::Softmax),
        (Op::Activation(Activation::Sigmoid), Loss::BinaryCrossEntropy) => {
            Some(Activation::Sigmoid)
        }
        _ => None,
    };
    let (seed_of, seed_shape) = match through {
        Some(_) => {
            let logits = t.inputs_of(pred)[0];
            (logits, shape(&t, logits)?)
        }
        None => (pred, ps),
    };
    let seed_name = format!("grad:{}", t.node(seed_of).name);
    let seed = mk(
        &mut t,
        GradOp::LossGrad { loss, through },
        seed_name,
        "loss",
        seed_shape,
        &[pred, target],
    );
    contrib.entry(seed_of).or_default().push(seed);

    // Gradients of time slices, kept as (step, dy) until all of a
    // sequence's steps are in: a full set becomes one stack.
    let mut scatter: HashMap<NodeId, Vec<(usize, NodeId)>> = HashMap::new();
    let mut grads = Vec::new();
    for &id in order.iter().rev() {
        if let Some(steps) = scatter.remove(&id) {
            let parts = gather_steps(&mut t, id, steps)?;
            contrib.entry(id).or_default().extend(parts);
        }
        let Some(parts) = contrib.remove(&id) else {
            continue;
        };
        if !needs.contains(&id) {
            continue;
        }
        let node = t.node(id).clone();
        let dy = if parts.len() == 1 {
            parts[0]
        } else {
            let n = t.add(Node {
                op: Op::Add,
                name: format!("grad:{}", node.name),
                layer: node.layer.clone(),
                span: node.span,
                shape: node.shape.clone(),
            });
            for (i, p) in parts.iter().enumerate() {
                t.connect(*p, n, i);
            }
            n
        };
        if let Op::Param { .. } = node.op {
            if trainable(&t, id) {
                grads.push((node.name.clone(), id, dy));
            }
            continue;
        }
        let ins = t.inputs_of(id);
        let needed: Vec<bool> = ins.iter().map(|i| needs.contains(i)).collect();
        let mut b = Backward {
            graph: &mut t,
            node,
            id,
            ins,
            needed,
            dy,
            contributions: vec![],
            time_slices: vec![],
        };
        ops::backward(&mut b)?;
        for (x, n) in b.contributions {
            contrib.entry(x).or_default().push(n);
        }
        for (seq, step, dy) in b.time_slices {
            scatter.entry(seq).or_default().push((step, dy));
        }
    }
    grads.sort_by(|a, b| a.0.cmp(&b.0));
    t.outputs = vec![("loss".into(), loss_node)];
    t.outputs
        .extend(grads.iter().map(|(n, _, gr)| (format!("grad:{n}"), *gr)));
    t.outputs.extend(running);
    Ok(TrainingGraph {
        graph: t,
        prediction: pred,
        target,
        loss: loss_node,
        grads,
        masks,
    })
}

/// The gradient of a sequence from its time slices' gradients: one stack
/// when every step is there once, else one scatter per step (summed by
/// the caller).
fn gather_steps(
    t: &mut Graph,
    seq: NodeId,
    mut steps: Vec<(usize, NodeId)>,
) -> Result<Vec<NodeId>, AutodiffError> {
    let node = t.node(seq).clone();
    let s = node
        .shape
        .clone()
        .ok_or_else(|| AutodiffError::NoShape(node.name.clone()))?;
    let len = s.0.first().copied().unwrap_or(0);
    steps.sort_by_key(|(step, _)| *step);
    let complete = steps.len() == len && steps.iter().enumerate().all(|(i, (st, _))| i == *st);
    let mut add = |op: Op, ins: &[NodeId]| {
        let n = t.add(Node {
            op,
            name: format!("grad:{}", node.name),
            layer: node.layer.clone(),
            span: node.span,
            shape: Some(s.clone()),
        });
        for (i, x) in ins.iter().enumerate() {
            t.connect(*x, n, i);
        }
        n
    };
    if complete {
        let dys: Vec<NodeId> = steps.iter().map(|(_, d)| *d).collect();
        return Ok(vec![add(Op::Stack, &dys)]);
    }
    Ok(steps
        .iter()
        .map(|(step, dy)| {
            add(
                Op::Grad(GradOp::TimeScatter {
                    step: *step,
                    steps: len,
                }),
                &[*dy],
            )
        })
        .collect())
}
