//! The single-step form of a sequence model, for generation: the model at
//! one time step, with each recurrent layer's state as an input and its
//! next state as an output, so a caller runs a prompt and then its own
//! samples token by token and carries the state between calls — the
//! prefix is never run again.
//!
//! A recurrent layer `r` over `[T, F]` becomes
//!
//! ```text
//! xw  = dense(x, W, b)               # [1, G·U]  (`r.input`)
//! s'  = cell(time_slice_0(xw), U, b_r, s)       # s: input `r.state`
//! out = stack(h')  or  h'            # h' = s' (or its first U for an LSTM)
//! ```
//!
//! with output `r.state` = `s'`. Every other layer must act on each time
//! step alone (dense and activations on the last axis, elementwise merges,
//! inference dropout, batchnorm with running statistics, an embedding):
//! at one step a layer that mixes steps would compute something other
//! than the trained model did, so it is an error naming the layer.
//! A layer that returns only its last step (`return_sequences: false`)
//! gives the output after the current step, which is what generation
//! reads (with `return_state: true`, the state after it). A layer that
//! starts from another layer's final state (`initial_state`) needs that
//! layer's whole input first: an error.
//!
//! Pure: graph in, graph out. The result goes through the pipeline like
//! any model graph (it has no recurrent layers left to unroll).

use crate::graph::{Graph, Node, NodeId};
use crate::infer::infer_shapes;
use crate::op::{CellKind, Op};
use crate::shape::Shape;
use std::collections::{HashMap, HashSet};

/// The single-step graph and its state bindings.
#[derive(Clone, Debug)]
pub struct StepGraph {
    /// The model at one time step: input 0 is the step's input (`[1, …]`,
    /// the sequence input's shape with `T = 1`), then one state input per
    /// recurrent layer; output 0 is the model's output, then one state
    /// output per recurrent layer.
    pub graph: Graph,
    /// The recurrent states, in the order of the extra inputs and outputs.
    pub states: Vec<StepState>,
}

/// One recurrent layer's state in a [`StepGraph`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepState {
    /// The layer.
    pub layer: String,
    /// The name of both the state input and the next-state output.
    pub name: String,
    /// Values per example: `U`, or `2U` for an LSTM (`h ++ c`).
    pub len: usize,
}

/// Why a model has no single-step form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Generation needs one sequence input.
    #[error("generation needs a model with one sequence input; `{model}` has {inputs}")]
    Inputs {
        /// The model.
        model: String,
        /// How many inputs it has.
        inputs: usize,
    },
    /// The input is not a sequence (or has no shape).
    #[error("the input `{input}` is not a sequence ([T] tokens or [T, F]); it has shape {shape}")]
    NotSequence {
        /// The input.
        input: String,
        /// Its shape.
        shape: String,
    },
    /// A layer runs backwards in time.
    #[error(
        "`{layer}` runs backwards in time (a reversed or bidirectional layer): it needs the \
         whole sequence, so the model cannot generate token by token"
    )]
    Reversed {
        /// The layer.
        layer: String,
    },
    /// A layer starts from another layer's final state: it needs that
    /// layer's whole sequence first (a sequence-to-sequence decoder).
    #[error(
        "`{layer}` starts from the final state of another layer (`initial_state`): it needs a \
         whole input sequence first, so the model cannot generate token by token"
    )]
    InitialState {
        /// The layer.
        layer: String,
    },
    /// A layer mixes time steps.
    #[error(
        "`{layer}` ({op}) mixes time steps: at one step it would compute something other than \
         the trained model did; generation needs layers that act on each step alone \
         (embedding, recurrent, dense, activations, elementwise merges, dropout, batchnorm)"
    )]
    MixesSteps {
        /// The layer.
        layer: String,
        /// Its op.
        op: String,
    },
    /// Shape inference failed on the single-step graph.
    #[error("the single-step model does not check: {0}")]
    Shape(String),
}

/// The single-step form of `g` (see the module docs).
pub fn step_graph(g: &Graph) -> Result<StepGraph, StepError> {
    let [x] = g.inputs[..] else {
        return Err(StepError::Inputs {
            model: g.name.clone(),
            inputs: g.inputs.len(),
        });
    };
    let xn = g.node(x);
    let step_shape = match &xn.shape {
        Some(s) if s.rank() >= 1 => {
            let mut d = s.0.clone();
            d[0] = 1;
            Shape(d)
        }
        s => {
            return Err(StepError::NotSequence {
                input: xn.name.clone(),
                shape: s.as_ref().map_or("none".into(), |s| format!("{:?}", s.0)),
            })
        }
    };
    let order = g
        .topo_order()
        .ok_or_else(|| StepError::Shape("the graph has a cycle".into()))?;
    let mut out = Graph::new(g.name.clone());
    let mut made: HashMap<NodeId, NodeId> = HashMap::new();
    let mut states = Vec::new();
    let mut state_nodes = Vec::new();
    for id in order {
        let n = g.node(id);
        let ins: Vec<NodeId> = g.inputs_of(id).iter().map(|i| made[i]).collect();
        let copy = |out: &mut Graph, op: Op, shape: Option<Shape>| {
            let nid = out.add(Node {
                op,
                shape,
                ..n.clone()
            });
            for (slot, i) in ins.iter().enumerate() {
                out.connect(*i, nid, slot);
            }
            nid
        };
        let nid = match &n.op {
            // One step a call: an input of any length is a plain input here.
            Op::Input { tokens, .. } => copy(
                &mut out,
                Op::Input {
                    tokens: *tokens,
                    variable: false,
                },
                Some(step_shape.clone()),
            ),
            Op::Param { .. } => copy(&mut out, n.op.clone(), n.shape.clone()),
            Op::Recurrent { reverse: true, .. } => {
                return Err(StepError::Reversed {
                    layer: n.layer.clone(),
                })
            }
            Op::Recurrent {
                initial_state: true,
                ..
            } => {
                return Err(StepError::InitialState {
                    layer: n.layer.clone(),
                })
            }
            Op::Recurrent {
                cell,
                units,
                return_sequences,
                bias,
                return_state,
                ..
            } => {
                let (s, state) = recurrent_step(&mut out, n, &ins, *cell, *units, *bias);
                states.push(s);
                state_nodes.push(state);
                let h = if *cell == CellKind::Lstm && !*return_state {
                    let h = derived(
                        &mut out,
                        n,
                        format!("{}.h", n.name),
                        Op::Slice {
                            start: 0,
                            len: *units,
                        },
                    );
                    out.connect(state, h, 0);
                    h
                } else {
                    state
                };
                if *return_sequences {
                    let st = derived(&mut out, n, n.name.clone(), Op::Stack);
                    out.connect(h, st, 0);
                    st
                } else {
                    h
                }
            }
            op if per_step(g, id, op) => copy(&mut out, op.clone(), None),
            op => {
                return Err(StepError::MixesSteps {
                    layer: n.layer.clone(),
                    op: op.name().to_string(),
                })
            }
        };
        made.insert(id, nid);
    }
    out.inputs = g.inputs.iter().map(|i| made[i]).collect();
    out.outputs = g
        .outputs
        .iter()
        .map(|(name, id)| (name.clone(), made[id]))
        .collect();
    for (s, node) in states.iter().zip(&state_nodes) {
        out.outputs.push((s.name.clone(), *node));
    }
    // State inputs follow the sequence input, in layer order.
    let mut state_inputs: Vec<NodeId> = out
        .g
        .node_indices()
        .filter(|&i| matches!(out.node(i).op, Op::Input { .. }) && !out.inputs.contains(&i))
        .collect();
    state_inputs.sort_by_key(|&i| states.iter().position(|s| s.name == out.node(i).name));
    out.inputs.extend(state_inputs);
    let diags = infer_shapes(&mut out, &HashSet::new());
    if let Some(d) = diags
        .iter()
        .find(|d| d.severity == netc_lang::Severity::Error)
    {
        return Err(StepError::Shape(d.message.clone()));
    }
    if let Some(i) = out.g.node_indices().find(|&i| out.node(i).shape.is_none()) {
        return Err(StepError::Shape(format!(
            "`{}` has no shape at one step",
            out.node(i).name
        )));
    }
    Ok(StepGraph { graph: out, states })
}

/// A node made for layer node `n`, with its layer and span.
fn derived(out: &mut Graph, n: &Node, name: String, op: Op) -> NodeId {
    out.add(Node {
        op,
        name,
        layer: n.layer.clone(),
        span: n.span,
        shape: None,
    })
}

/// Adds the input projection, the state input and the cell for recurrent
/// layer `n` (operands `ins`: x, weight, recurrent weight, then the bias
/// and a GRU's recurrent bias when present). Returns the state binding and
/// the cell (the next state).
fn recurrent_step(
    out: &mut Graph,
    n: &Node,
    ins: &[NodeId],
    cell: CellKind,
    units: usize,
    bias: bool,
) -> (StepState, NodeId) {
    let gu = cell.gates() * units;
    let proj = derived(
        out,
        n,
        format!("{}.input", n.name),
        Op::Dense {
            units: gu,
            activation: None,
        },
    );
    out.connect(ins[0], proj, 0);
    out.connect(ins[1], proj, 1);
    if bias {
        out.connect(ins[3], proj, 2);
    }
    let xt = derived(out, n, format!("{}.x0", n.name), Op::TimeSlice { step: 0 });
    out.connect(proj, xt, 0);
    let len = cell.state_len(units);
    let name = format!("{}.state", n.name);
    let state_in = out.add(Node {
        op: Op::Input {
            tokens: false,
            variable: false,
        },
        name: name.clone(),
        layer: n.layer.clone(),
        span: n.span,
        shape: Some(Shape(vec![len])),
    });
    let recurrent_bias = bias && cell == CellKind::Gru;
    let c = derived(
        out,
        n,
        format!("{}.t0", n.name),
        Op::Cell {
            cell,
            units,
            has_state: true,
            recurrent_bias,
        },
    );
    out.connect(xt, c, 0);
    out.connect(ins[2], c, 1);
    let mut slot = 2;
    if recurrent_bias {
        out.connect(ins[4], c, slot);
        slot += 1;
    }
    out.connect(state_in, c, slot);
    (
        StepState {
            layer: n.layer.clone(),
            name,
            len,
        },
        c,
    )
}

/// Whether `op` (node `id` of `g`) acts on each time step alone.
fn per_step(g: &Graph, id: NodeId, op: &Op) -> bool {
    match op {
        Op::Dense { .. }
        | Op::Embedding { .. }
        | Op::Activation(_)
        | Op::Dropout { .. }
        | Op::BatchNorm { .. }
        | Op::Add
        | Op::Mul
        | Op::Average
        | Op::Map { .. }
        | Op::Slice { .. } => true,
        // Only on the last (feature) axis.
        Op::Concat { axis } => {
            let rank = g.node(id).shape.as_ref().map_or(0, |s| s.rank()) as i64;
            *axis == -1 || *axis == rank - 1
        }
        _ => false,
    }
}
