//! Variable-length sequences and their masks.
//!
//! An input declared `[*, F]` (or `tokens[*]`) is a sequence of any
//! length. The checked graph holds it with a placeholder length
//! ([`PLACEHOLDER_STEPS`]); which values carry its time axis is
//! worked out here ([`sequence_sources`]), and a layer that would need a
//! fixed length on such a value is a diagnostic at its span ([`check`]).
//!
//! Before a variable-length model is lowered, [`instantiate`] fixes the
//! length for the data at hand (the longest sequence, padded to by the
//! runtime) and makes each sequence's mask explicit: a second input
//! `<input>.mask` `[T]`, 1 at a sequence's own steps and 0 at padding,
//! read by the layers that mix time steps:
//!
//! - `rnn` / `lstm` / `gru` keep their state through padded steps and
//!   output zeros there (Keras's masking); with the padding at the end,
//!   the last state is the one after the sequence's own last step, and a
//!   reverse (bidirectional) layer starts at that step: each sequence is
//!   reversed within its own length. (`crate::opt::unroll` does this.)
//! - `global_maxpool1d` / `global_avgpool1d` become `Op::MaskedPool`,
//!   which reads only real steps.
//! - Per-step layers (`dense`, activations, `dropout`, `embedding`, merges
//!   on the feature axis, recurrent layers returning sequences) pass the
//!   mask on; per-step targets at padding are `-1` and not scored (the
//!   runtime writes them).
//!
//! So a sequence's outputs and gradients are the same alone and inside a
//! padded batch. The module knows the graph and its ops only.

use crate::graph::{Graph, Node, NodeId};
use crate::infer::infer_shapes;
use crate::op::{Op, Spatial};
use crate::shape::{Shape, MAX_STEPS};
use netc_lang::Diagnostic;
use std::collections::HashSet;
use thiserror::Error;

/// The length a `*` axis has in the checked graph: shape rules run on it,
/// and the layers that could depend on the length are rejected by
/// [`check`], so no rule's result depends on its value.
pub const PLACEHOLDER_STEPS: usize = 1;

/// Whether the graph has a variable-length input.
pub fn is_variable(graph: &Graph) -> bool {
    graph
        .inputs
        .iter()
        .any(|i| matches!(graph.node(*i).op, Op::Input { variable: true, .. }))
}

/// How an op treats the time axis of a variable-length operand.
enum Time {
    /// Per step: the output has the operand's time axis (and mask).
    Keeps,
    /// Reads the mask and removes the time axis.
    Consumes,
    /// Would depend on the length or on padded values.
    NeedsFixed,
}

fn time_rule(op: &Op) -> Time {
    match op {
        Op::Dense { .. }
        | Op::Activation(_)
        | Op::Dropout { .. }
        | Op::Embedding { .. }
        | Op::Map { .. }
        | Op::Add
        | Op::Mul
        | Op::Average
        | Op::MaskStep { .. } => Time::Keeps,
        Op::Concat { axis } if *axis != 0 => Time::Keeps,
        Op::Recurrent {
            return_sequences: true,
            ..
        } => Time::Keeps,
        Op::Recurrent { .. }
        | Op::GlobalPool2d {
            spatial: Spatial::Seq,
            ..
        }
        | Op::MaskedPool { .. } => Time::Consumes,
        _ => Time::NeedsFixed,
    }
}

/// For each node (by index), the variable-length input whose time axis
/// (axis 0) and mask the node's value carries, if any.
pub fn sequence_sources(graph: &Graph) -> Vec<Option<NodeId>> {
    sources_and_problems(graph).0
}

/// For each node (by index), whether its first axis is a time axis of
/// any length not fixed yet (the graph is not [`instantiate`]d): the
/// summary and the graph text print it as `*`.
pub fn unfixed_steps(graph: &Graph) -> Vec<bool> {
    let instantiated = graph.inputs.iter().any(|i| {
        let n = &graph.node(*i).name;
        graph
            .inputs
            .iter()
            .any(|j| mask_name(&graph.node(*j).name) == *n)
    });
    sequence_sources(graph)
        .into_iter()
        .map(|s| s.is_some() && !instantiated)
        .collect()
}

/// A shape as printed where its first axis may be of any length:
/// `[N, *, 12]` when `unfixed`.
pub fn shape_text(shape: &Shape, unfixed: bool) -> String {
    if !unfixed || shape.0.is_empty() {
        return shape.to_string();
    }
    let rest: String = shape.0[1..].iter().map(|d| format!(", {d}")).collect();
    format!("[N, *{rest}]")
}

/// E0213 for each layer that needs a fixed length but reads a
/// variable-length sequence, E0214 where sequences of independent lengths
/// meet; and those nodes, which shape inference must skip (their rules
/// would judge the placeholder length). Needs no shapes: it runs before
/// inference.
pub fn check(graph: &Graph) -> (Vec<Diagnostic>, HashSet<NodeId>) {
    let (_, diags, blocked) = propagate(graph);
    (diags, blocked)
}

fn sources_and_problems(graph: &Graph) -> (Vec<Option<NodeId>>, Vec<Diagnostic>) {
    let (src, diags, _) = propagate(graph);
    (src, diags)
}

type Propagated = (Vec<Option<NodeId>>, Vec<Diagnostic>, HashSet<NodeId>);

fn propagate(graph: &Graph) -> Propagated {
    let mut src: Vec<Option<NodeId>> = vec![None; graph.g.node_count()];
    let mut diags = Vec::new();
    let mut blocked = HashSet::new();
    let Some(order) = graph.topo_order() else {
        return (src, diags, blocked);
    };
    let mut reported = HashSet::new();
    for id in order {
        let node = graph.node(id);
        if let Op::Input { variable: true, .. } = node.op {
            src[id.index()] = Some(id);
            continue;
        }
        // The sequence operand(s); an initial state is not one.
        let mut seqs: Vec<NodeId> = Vec::new();
        for i in graph.inputs_of(id) {
            if let Some(s) = src[i.index()] {
                if !seqs.contains(&s) {
                    seqs.push(s);
                }
            }
        }
        let Some(&first) = seqs.first() else {
            continue;
        };
        if seqs.len() > 1 {
            let (a, b) = (graph.node(seqs[0]), graph.node(seqs[1]));
            diags.push(
                Diagnostic::error(
                    "E0214",
                    format!(
                        "`{}` ({}) combines sequences of independent lengths, `{}` and `{}`",
                        node.layer,
                        node.op.name(),
                        a.name,
                        b.name
                    ),
                    node.span,
                )
                .with_label("the lengths may differ")
                .with_secondary(a.span, format!("`{}` has any length", a.name))
                .with_secondary(b.span, format!("`{}` has its own", b.name))
                .with_note("help: only steps of one sequence line up; combine them after each is reduced (e.g. by a recurrent layer's last state)"),
            );
            blocked.insert(id);
            continue;
        }
        match time_rule(&node.op) {
            Time::Keeps => src[id.index()] = Some(first),
            Time::Consumes => {}
            Time::NeedsFixed => {
                blocked.insert(id);
                // One diagnostic per layer (a layer may be several nodes).
                if reported.insert(node.layer.clone()) {
                    diags.push(needs_fixed(graph, node, first));
                }
            }
        }
    }
    (src, diags, blocked)
}

fn needs_fixed(graph: &Graph, node: &Node, input: NodeId) -> Diagnostic {
    let x = graph.node(input);
    let why = match node.op {
        Op::Flatten | Op::Reshape { .. } => "its output size would depend on the length",
        Op::BatchNorm { .. } => "its batch statistics would include the padding",
        Op::Conv2d { .. } | Op::Pool2d { .. } => "its windows would read the padding",
        _ => "it does not skip padded steps",
    };
    Diagnostic::error(
        "E0213",
        format!(
            "`{}` ({}) needs a fixed-length sequence, but `{}` has any length",
            node.layer,
            node.op.name(),
            x.name
        ),
        node.span,
    )
    .with_label(format!("needs a fixed length: {why}"))
    .with_secondary(x.span, format!("`{}` is declared with `*` steps", x.name))
    .with_note(
        "help: give the input a length (`[T, F]`, `tokens[T]`: longer examples are cut, shorter ones padded), \
         or reduce the sequence first (a recurrent layer without `return_sequences`, `global_maxpool1d`)",
    )
}

/// Why a graph could not be given a length.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InstantiateError {
    /// The length is 0 or above the limit.
    #[error("a sequence length of {0} steps is outside 1..={MAX_STEPS}")]
    Steps(usize),
    /// The graph does not check at that length (a netc bug: the check
    /// rejects every layer whose shape depends on it).
    #[error("the model does not check with {steps} steps: {message}")]
    Shapes {
        /// The length tried.
        steps: usize,
        /// The first problem.
        message: String,
    },
}

/// The mask input's name for a variable-length input `name`.
pub fn mask_name(name: &str) -> String {
    format!("{name}.mask")
}

/// `graph` with every variable-length input `steps` long and its mask an
/// explicit input (after the model's own inputs, named by [`mask_name`]),
/// read by the recurrent layers (`masked: true`, the mask their last
/// operand) and global poolings (`Op::MaskedPool`) over it. A graph
/// without variable-length inputs comes back unchanged. Pure.
pub fn instantiate(graph: &Graph, steps: usize) -> Result<Graph, InstantiateError> {
    if !is_variable(graph) {
        return Ok(graph.clone());
    }
    if steps == 0 || steps > MAX_STEPS {
        return Err(InstantiateError::Steps(steps));
    }
    let sources = sequence_sources(graph);
    let mut g = graph.clone();
    let mut masks = Vec::new();
    for &i in &graph.inputs {
        if let Op::Input { variable: true, .. } = graph.node(i).op {
            let node = g.node(i).clone();
            let mut shape = node.shape.clone().unwrap_or(Shape(vec![steps]));
            shape.0[0] = steps;
            g.g[i].shape = Some(shape);
            let m = g.add(Node {
                op: Op::Input {
                    tokens: false,
                    variable: false,
                },
                name: mask_name(&node.name),
                layer: node.layer.clone(),
                span: node.span,
                shape: Some(Shape(vec![steps])),
            });
            masks.push((i, m));
        }
    }
    let mask_of = |s: NodeId| masks.iter().find(|(i, _)| *i == s).map(|(_, m)| *m);
    for id in graph.g.node_indices() {
        // The sequence operand is slot 0 of both kinds of reader.
        let Some(seq) = graph.inputs_of(id).first().and_then(|x| sources[x.index()]) else {
            continue;
        };
        let Some(m) = mask_of(seq) else {
            continue;
        };
        let slots = graph.inputs_of(id).len();
        match &mut g.g[id].op {
            Op::Recurrent { masked, .. } => {
                *masked = true;
                g.connect(m, id, slots);
            }
            Op::GlobalPool2d {
                spatial: Spatial::Seq,
                kind,
            } => {
                let kind = *kind;
                g.g[id].op = Op::MaskedPool { kind };
                g.connect(m, id, 1);
            }
            _ => {}
        }
    }
    g.inputs.extend(masks.iter().map(|(_, m)| *m));
    // Every computed shape is inferred again at the new length.
    for id in g.g.node_indices() {
        if !matches!(g.node(id).op, Op::Input { .. } | Op::Param { .. }) {
            g.g[id].shape = None;
        }
    }
    let diags = infer_shapes(&mut g, &HashSet::new());
    if let Some(d) = diags.iter().find(|d| d.is_error()) {
        return Err(InstantiateError::Shapes {
            steps,
            message: d.message.clone(),
        });
    }
    Ok(g)
}
