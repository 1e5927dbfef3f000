//! Reverse-mode automatic differentiation as a graph → graph transform.
//!
//! [`differentiate`] takes a forward graph and a loss and returns a
//! training graph: the forward ops (dropout and batchnorm switched to their
//! training forms), a per-example loss node, for every trainable parameter
//! a node computing the gradient of the batch-mean loss, and for every
//! batchnorm running statistic its next value (outputs `running:<param>`). The training graph is an
//! ordinary [`Graph`]; it is printed, optimized and lowered like any other.

pub mod ops;

pub use ops::{CellWrt, GradOp};

use crate::graph::{Graph, Node, NodeId};
use crate::op::{Activation, CellKind, Op};
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
    /// An op without a gradient rule yet.
    #[error("training through `{0}` ({1}) is not supported yet")]
    Unsupported(String, &'static str),
    /// The graph has a cycle.
    #[error("the graph has a cycle")]
    Cycle,
    /// A whole recurrent layer reached autodiff: it must be unrolled over
    /// time first (`pipeline::Compilation::training_graph` does), so its
    /// gradient is BPTT over cells.
    #[error("`{0}` ({1}) must be unrolled over time before it can be differentiated")]
    NotUnrolled(String, &'static str),
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
                op: Op::Input,
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
        op: Op::Input,
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
        let mut give =
            |i: usize, op: GradOp, inputs: &[NodeId], t: &mut Graph| -> Result<(), AutodiffError> {
                if !needed[i] {
                    return Ok(());
                }
                let s = shape(t, ins[i])?;
                let name = format!("grad:{}", t.node(ins[i]).name);
                let n = mk(t, op, name, &node.layer, s, inputs);
                contrib.entry(ins[i]).or_default().push(n);
                Ok(())
            };
        match &node.op {
            Op::Dense { .. } => {
                give(0, GradOp::DenseDx, &[dy, ins[1]], &mut t)?;
                give(1, GradOp::DenseDw, &[ins[0], dy], &mut t)?;
                if ins.len() > 2 {
                    give(2, GradOp::BiasGrad, &[dy], &mut t)?;
                }
            }
            Op::Conv2d {
                kernel,
                stride,
                padding,
                ..
            } => {
                let (kernel, stride, padding) = (*kernel, *stride, *padding);
                give(
                    0,
                    GradOp::ConvDx {
                        kernel,
                        stride,
                        padding,
                    },
                    &[dy, ins[1]],
                    &mut t,
                )?;
                give(
                    1,
                    GradOp::ConvDw {
                        kernel,
                        stride,
                        padding,
                    },
                    &[ins[0], dy],
                    &mut t,
                )?;
                if ins.len() > 2 {
                    give(2, GradOp::BiasGrad, &[dy], &mut t)?;
                }
            }
            Op::Pool2d {
                kind,
                size,
                stride,
                padding,
            } => {
                give(
                    0,
                    GradOp::PoolGrad {
                        kind: *kind,
                        size: *size,
                        stride: *stride,
                        padding: *padding,
                        relu_mask: false,
                    },
                    &[ins[0], dy],
                    &mut t,
                )?;
            }
            Op::Flatten | Op::Reshape { .. } => {
                if needed[0] {
                    let s = shape(&t, ins[0])?;
                    let n = t.add(Node {
                        op: Op::Reshape {
                            dims: s.0.iter().map(|d| Some(*d)).collect(),
                        },
                        name: format!("grad:{}", t.node(ins[0]).name),
                        layer: node.layer.clone(),
                        span: node.span,
                        shape: Some(s),
                    });
                    t.connect(dy, n, 0);
                    contrib.entry(ins[0]).or_default().push(n);
                }
            }
            Op::Grad(GradOp::DropoutMask { rate }) => give(
                0,
                GradOp::DropoutMask { rate: *rate },
                &[dy, ins[1]],
                &mut t,
            )?,
            Op::Activation(a) => give(0, GradOp::ActGrad(*a), &[id, dy], &mut t)?,
            Op::Add => {
                for (i, x) in ins.iter().enumerate() {
                    if needed[i] {
                        contrib.entry(*x).or_default().push(dy);
                    }
                }
            }
            Op::Average => {
                let k = ins.len() as f32;
                for i in 0..ins.len() {
                    give(i, GradOp::Scale(1.0 / k), &[dy], &mut t)?;
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
                    give(i, GradOp::MulGrad, &operands, &mut t)?;
                }
            }
            Op::Concat { axis } => {
                let rank = shape(&t, id)?.rank() as i64;
                let ax = (if *axis < 0 { axis + rank } else { *axis }) as usize;
                let mut start = 0;
                for (i, x) in ins.iter().enumerate() {
                    let len = shape(&t, *x)?.0[ax];
                    give(
                        i,
                        GradOp::Slice {
                            axis: ax,
                            start,
                            len,
                        },
                        &[dy],
                        &mut t,
                    )?;
                    start += len;
                }
            }
            Op::BatchNorm { epsilon, .. } => {
                let epsilon = *epsilon;
                let batch_stats = matches!(t.node(ins[3]).op, Op::Grad(GradOp::BatchMean));
                give(
                    0,
                    GradOp::BatchNormDx {
                        epsilon,
                        batch_stats,
                    },
                    &[ins[0], ins[1], ins[3], ins[4], dy],
                    &mut t,
                )?;
                give(
                    1,
                    GradOp::BatchNormDgamma { epsilon },
                    &[ins[0], ins[3], ins[4], dy],
                    &mut t,
                )?;
                give(2, GradOp::BiasGrad, &[dy], &mut t)?;
            }
            Op::TimeSlice { step } => {
                if needed[0] {
                    scatter.entry(ins[0]).or_default().push((*step, dy));
                }
            }
            Op::Stack => {
                for (i, x) in ins.iter().enumerate() {
                    if needed[i] {
                        let s = shape(&t, *x)?;
                        let n = t.add(Node {
                            op: Op::TimeSlice { step: i },
                            name: format!("grad:{}", t.node(*x).name),
                            layer: node.layer.clone(),
                            span: node.span,
                            shape: Some(s),
                        });
                        t.connect(dy, n, 0);
                        contrib.entry(*x).or_default().push(n);
                    }
                }
            }
            Op::Slice { start, len } => {
                let s = shape(&t, ins[0])?;
                let total = s.0.last().copied().unwrap_or(1);
                give(
                    0,
                    GradOp::SliceGrad {
                        start: *start,
                        len: *len,
                        total,
                    },
                    &[dy],
                    &mut t,
                )?;
            }
            Op::Cell {
                cell,
                units,
                has_state,
                recurrent_bias,
            } => {
                let c = CellStep {
                    cell: *cell,
                    units: *units,
                    has_state: *has_state,
                    recurrent_bias: *recurrent_bias,
                    ins: &ins,
                    needed: &needed,
                    dy,
                };
                for (x, n) in cell_grads(&mut t, &node, &c)? {
                    contrib.entry(x).or_default().push(n);
                }
            }
            Op::Recurrent { .. } => {
                return Err(AutodiffError::NotUnrolled(
                    node.name.clone(),
                    node.op.name(),
                ))
            }
            other => return Err(AutodiffError::Unsupported(node.name.clone(), other.name())),
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

/// One unrolled cell step being differentiated.
struct CellStep<'a> {
    cell: CellKind,
    units: usize,
    has_state: bool,
    recurrent_bias: bool,
    /// The cell's operands: x_t, U, b_r if any, the previous state if any.
    ins: &'a [NodeId],
    needed: &'a [bool],
    /// `d(new state)`.
    dy: NodeId,
}

/// Backpropagation through one cell step: the gradient of its input
/// projection, of the shared recurrent weight and bias (one contribution
/// per step; the steps' contributions are summed like any shared use),
/// and of the previous state, which carries the gradient back in time.
/// Returns `(operand, gradient contribution)` pairs.
fn cell_grads(
    t: &mut Graph,
    node: &Node,
    c: &CellStep,
) -> Result<Vec<(NodeId, NodeId)>, AutodiffError> {
    let shape = |t: &Graph, n: NodeId| {
        t.node(n)
            .shape
            .clone()
            .ok_or_else(|| AutodiffError::NoShape(t.node(n).name.clone()))
    };
    let add = |t: &mut Graph, op: Op, name: String, s: Shape, ins: &[NodeId]| {
        let n = t.add(Node {
            op,
            name,
            layer: node.layer.clone(),
            span: node.span,
            shape: Some(s),
        });
        for (i, x) in ins.iter().enumerate() {
            t.connect(*x, n, i);
        }
        n
    };
    let cg = |wrt| {
        Op::Grad(GradOp::CellGrad {
            cell: c.cell,
            units: c.units,
            has_state: c.has_state,
            recurrent_bias: c.recurrent_bias,
            wrt,
        })
    };
    let ins = c.ins;
    let u_w = ins[1];
    let rb = c.recurrent_bias.then_some(2);
    let st = c.has_state.then(|| ins.len() - 1);
    let mut operands = ins.to_vec();
    operands.push(c.dy);
    let gates = shape(t, ins[0])?;
    let mut out = Vec::new();
    let dz = add(
        t,
        cg(CellWrt::Input),
        format!("grad:{}.gates", node.name),
        gates.clone(),
        &operands,
    );
    if c.needed[0] {
        out.push((ins[0], dz));
    }
    let needs_rec =
        c.needed[1] || rb.is_some_and(|i| c.needed[i]) || st.is_some_and(|i| c.needed[i]);
    if !needs_rec {
        return Ok(out);
    }
    // Only the GRU's candidate block differs between the two.
    let dz_rec = if c.cell == CellKind::Gru {
        add(
            t,
            cg(CellWrt::Recurrent),
            format!("grad:{}.recurrent", node.name),
            gates.clone(),
            &operands,
        )
    } else {
        dz
    };
    if let Some(i) = rb.filter(|i| c.needed[*i]) {
        let s = shape(t, ins[i])?;
        let n = add(
            t,
            Op::Grad(GradOp::BiasGrad),
            format!("grad:{}", t.node(ins[i]).name),
            s,
            &[dz_rec],
        );
        out.push((ins[i], n));
    }
    let Some(si) = st else {
        return Ok(out);
    };
    let state = ins[si];
    let h_shape = Shape(vec![c.units]);
    if c.needed[1] {
        // dU = h_{t−1}ᵀ · dz_rec; an LSTM's h is the first half of its state.
        let h_prev = if c.cell == CellKind::Lstm {
            add(
                t,
                Op::Slice {
                    start: 0,
                    len: c.units,
                },
                format!("{}.h_prev", node.name),
                h_shape.clone(),
                &[state],
            )
        } else {
            state
        };
        let s = shape(t, u_w)?;
        let n = add(
            t,
            Op::Grad(GradOp::DenseDw),
            format!("grad:{}", t.node(u_w).name),
            s,
            &[h_prev, dz_rec],
        );
        out.push((u_w, n));
    }
    if c.needed[si] {
        let dh = add(
            t,
            Op::Grad(GradOp::DenseDx),
            format!("grad:{}.h_prev", node.name),
            h_shape,
            &[dz_rec, u_w],
        );
        let d_state = if c.cell == CellKind::Rnn {
            dh
        } else {
            let mut o = operands.clone();
            o.push(dh);
            let s = shape(t, state)?;
            add(
                t,
                cg(CellWrt::State),
                format!("grad:{}", t.node(state).name),
                s,
                &o,
            )
        };
        out.push((state, d_state));
    }
    Ok(out)
}
