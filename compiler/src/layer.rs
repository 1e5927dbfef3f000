//! The layers of the language: their arguments, and how one layer call
//! expands into graph nodes (a layer op plus its parameter nodes; a
//! bidirectional or stacked recurrent layer into several).

use crate::args::Args;
use crate::graph::{Graph, Node, NodeId};
use crate::op::{Activation, CellKind, MergeMode, Op, Padding, ParamRole, PoolKind};
use netc_lang::ast::{Arg, ValueKind};
use netc_lang::{Diagnostic, Span};

/// Every layer name the language knows, with its arguments in positional order.
pub const LAYERS: &[(&str, &[&str])] = &[
    (
        "conv2d",
        &[
            "filters",
            "kernel",
            "stride",
            "padding",
            "bias",
            "activation",
        ],
    ),
    ("maxpool2d", &["size", "stride", "padding"]),
    ("avgpool2d", &["size", "stride", "padding"]),
    ("flatten", &[]),
    ("reshape", &["shape"]),
    ("dense", &["units", "bias", "activation"]),
    ("dropout", &["rate"]),
    ("batchnorm", &["epsilon", "momentum"]),
    ("relu", &[]),
    ("leaky_relu", &["alpha"]),
    ("sigmoid", &[]),
    ("tanh", &[]),
    ("softmax", &[]),
    ("rnn", RECURRENT_ARGS),
    ("lstm", RECURRENT_ARGS),
    ("gru", RECURRENT_ARGS),
    ("add", &[]),
    ("concat", &["axis"]),
];

const RECURRENT_ARGS: &[&str] = &[
    "units",
    "return_sequences",
    "bidirectional",
    "merge",
    "layers",
    "bias",
];

const ACTIVATIONS: &[&str] = &["none", "relu", "leaky_relu", "sigmoid", "tanh", "softmax"];

/// Whether `name` is a layer.
pub fn is_layer(name: &str) -> bool {
    LAYERS.iter().any(|(n, _)| *n == name)
}

/// Whether the layer combines several tensors (`add`, `concat`).
pub fn is_merge(name: &str) -> bool {
    matches!(name, "add" | "concat")
}

/// Where a layer's operand comes from: a node, or a binding resolved later.
#[derive(Clone, Debug)]
pub(crate) enum Src {
    Node(NodeId),
    Ref(String, Span),
}

/// Graph under construction plus references still to resolve.
pub(crate) struct Builder {
    pub graph: Graph,
    /// (consumer, slot, binding name, where it was referenced).
    pub pending: Vec<(NodeId, usize, String, Span)>,
    /// Nodes whose layer had argument errors: shape inference skips them.
    pub poisoned: Vec<NodeId>,
}

impl Builder {
    pub fn feed(&mut self, src: &Src, to: NodeId, slot: usize) {
        match src {
            Src::Node(n) => self.graph.connect(*n, to, slot),
            Src::Ref(name, span) => self.pending.push((to, slot, name.clone(), *span)),
        }
    }

    fn node(&mut self, op: Op, name: &str, span: Span) -> NodeId {
        self.graph.add(Node {
            op,
            name: name.to_string(),
            layer: name.to_string(),
            span,
            shape: None,
        })
    }

    fn param(&mut self, layer: &str, param: &str, role: ParamRole, to: NodeId, slot: usize) {
        let span = self.graph.node(to).span;
        let p = self.graph.add(Node {
            op: Op::Param { role },
            name: format!("{layer}.{param}"),
            layer: layer.to_string(),
            span,
            shape: None,
        });
        self.graph.connect(p, to, slot);
    }

    /// A unary layer node fed by `x`.
    fn unary(&mut self, op: Op, name: &str, span: Span, x: &Src) -> NodeId {
        let n = self.node(op, name, span);
        self.feed(x, n, 0);
        n
    }
}

/// Expands one layer call into nodes. `operands` are the pipeline's value
/// (if any) followed by tensors named in the call. Returns the output node.
#[allow(clippy::too_many_arguments)]
pub(crate) fn expand(
    b: &mut Builder,
    kind: &str,
    name: &str,
    span: Span,
    args: &[Arg],
    piped: Option<Src>,
    diags: &mut Vec<Diagnostic>,
) -> NodeId {
    let params = LAYERS
        .iter()
        .find(|(n, _)| *n == kind)
        .map_or(&[][..], |(_, p)| *p);
    let mut a = Args::bind(kind, span, params, is_merge(kind), args, diags);
    let out = if is_merge(kind) {
        let mut operands: Vec<Src> = piped.into_iter().collect();
        operands.extend(a.tensors.iter().map(|(t, s)| Src::Ref(t.to_string(), *s)));
        let op = match kind {
            "add" => Op::Add,
            _ => Op::Concat {
                axis: a.raw("axis").map_or(-1, |v| match v.kind {
                    ValueKind::Int(i) => i,
                    _ => {
                        a.reject("axis", "an integer", v, diags);
                        -1
                    }
                }),
            },
        };
        if operands.len() < 2 {
            diags.push(
                Diagnostic::error(
                    "E0119",
                    format!(
                        "`{kind}` needs at least two tensors, found {}",
                        operands.len()
                    ),
                    span,
                )
                .with_label("too few inputs")
                .with_note(format!(
                    "help: pipe one in and name the other: `x -> {kind}(y)`"
                )),
            );
            a.failed = true;
        }
        let n = b.node(op, name, span);
        for (i, o) in operands.iter().enumerate() {
            b.feed(o, n, i);
        }
        n
    } else {
        let x = match piped {
            Some(x) => x,
            None => {
                diags.push(
                    Diagnostic::error("E0114", format!("`{kind}` has no input"), span)
                        .with_label("nothing flows into this layer")
                        .with_note(format!("help: feed it a tensor: `x -> {kind}(...)`")),
                );
                a.failed = true;
                // Keep going with a dangling node so its arguments are still checked.
                let n = b.node(Op::Input, name, span);
                b.poisoned.push(n);
                Src::Node(n)
            }
        };
        expand_unary(b, &mut a, kind, name, span, &x, diags)
    };
    if a.failed {
        b.poisoned.push(out);
    }
    out
}

fn padding(a: &mut Args, diags: &mut Vec<Diagnostic>) -> Padding {
    let Some(v) = a.raw("padding") else {
        return Padding::Valid;
    };
    match &v.kind {
        ValueKind::Ident(s) if s == "valid" => Padding::Valid,
        ValueKind::Ident(s) if s == "same" => Padding::Same,
        ValueKind::Int(_) | ValueKind::List(_) => {
            let (h, w) = a.pair("padding", Some((0, 0)), 0, diags);
            Padding::Explicit(h, w)
        }
        _ => {
            a.reject("padding", "`valid`, `same`, an integer or [h, w]", v, diags);
            Padding::Valid
        }
    }
}

fn activation_arg(a: &mut Args, diags: &mut Vec<Diagnostic>) -> Option<Activation> {
    match a.choice("activation", ACTIVATIONS, "none", diags) {
        "relu" => Some(Activation::Relu),
        "leaky_relu" => Some(Activation::LeakyRelu(0.3)),
        "sigmoid" => Some(Activation::Sigmoid),
        "tanh" => Some(Activation::Tanh),
        "softmax" => Some(Activation::Softmax),
        _ => None,
    }
}

fn expand_unary(
    b: &mut Builder,
    a: &mut Args,
    kind: &str,
    name: &str,
    span: Span,
    x: &Src,
    diags: &mut Vec<Diagnostic>,
) -> NodeId {
    match kind {
        "conv2d" | "dense" => {
            let op = if kind == "conv2d" {
                let filters = a.count("filters", None, 1, diags);
                let kernel = a.pair("kernel", None, 1, diags);
                let stride = a.pair("stride", Some((1, 1)), 1, diags);
                let padding = padding(a, diags);
                Op::Conv2d {
                    filters,
                    kernel,
                    stride,
                    padding,
                    activation: None,
                }
            } else {
                Op::Dense {
                    units: a.count("units", None, 1, diags),
                    activation: None,
                }
            };
            let bias = a.flag("bias", true, diags);
            let act = activation_arg(a, diags);
            let n = b.unary(op, name, span, x);
            b.param(name, "weight", ParamRole::Weight, n, 1);
            if bias {
                b.param(name, "bias", ParamRole::Bias, n, 2);
            }
            match act {
                Some(act) => b.unary(
                    Op::Activation(act),
                    &format!("{name}_{}", act.name()),
                    span,
                    &Src::Node(n),
                ),
                None => n,
            }
        }
        "maxpool2d" | "avgpool2d" => {
            let size = a.pair("size", Some((2, 2)), 1, diags);
            let stride = a.pair("stride", Some(size), 1, diags);
            let padding = padding(a, diags);
            let kind = if kind == "maxpool2d" {
                PoolKind::Max
            } else {
                PoolKind::Avg
            };
            b.unary(
                Op::Pool2d {
                    kind,
                    size,
                    stride,
                    padding,
                },
                name,
                span,
                x,
            )
        }
        "flatten" => b.unary(Op::Flatten, name, span, x),
        "reshape" => {
            let dims = reshape_dims(a, span, diags);
            b.unary(Op::Reshape { dims }, name, span, x)
        }
        "dropout" => {
            let rate = a.number("rate", None, (0.0, 0.999_999), diags) as f32;
            b.unary(Op::Dropout { rate }, name, span, x)
        }
        "batchnorm" => {
            let epsilon = a.number("epsilon", Some(1e-3), (0.0, 1.0), diags) as f32;
            let momentum = a.number("momentum", Some(0.99), (0.0, 1.0), diags) as f32;
            let n = b.unary(Op::BatchNorm { epsilon, momentum }, name, span, x);
            b.param(name, "gamma", ParamRole::Gamma, n, 1);
            b.param(name, "beta", ParamRole::Beta, n, 2);
            b.param(name, "moving_mean", ParamRole::MovingMean, n, 3);
            b.param(name, "moving_var", ParamRole::MovingVar, n, 4);
            n
        }
        "relu" => b.unary(Op::Activation(Activation::Relu), name, span, x),
        "sigmoid" => b.unary(Op::Activation(Activation::Sigmoid), name, span, x),
        "tanh" => b.unary(Op::Activation(Activation::Tanh), name, span, x),
        "softmax" => b.unary(Op::Activation(Activation::Softmax), name, span, x),
        "leaky_relu" => {
            let alpha = a.number("alpha", Some(0.3), (0.0, 1e6), diags) as f32;
            b.unary(Op::Activation(Activation::LeakyRelu(alpha)), name, span, x)
        }
        "rnn" | "lstm" | "gru" => {
            let cell = match kind {
                "rnn" => CellKind::Rnn,
                "lstm" => CellKind::Lstm,
                _ => CellKind::Gru,
            };
            recurrent(b, a, cell, name, span, x, diags)
        }
        // `expand` only calls this with names from LAYERS.
        _ => b.unary(Op::Flatten, name, span, x),
    }
}

fn reshape_dims(a: &mut Args, span: Span, diags: &mut Vec<Diagnostic>) -> Vec<Option<usize>> {
    let Some(v) = a.raw("shape") else {
        a.count("shape", None, 1, diags); // reports the missing argument
        return vec![];
    };
    let ValueKind::List(items) = &v.kind else {
        a.reject("shape", "a list of dimensions such as [7, 7, 64]", v, diags);
        return vec![];
    };
    let mut dims = Vec::new();
    for it in items {
        match it.kind {
            ValueKind::Int(-1) if !dims.contains(&None) => dims.push(None),
            ValueKind::Int(i) if i >= 1 && i <= crate::shape::MAX_DIM as i64 => {
                dims.push(Some(i as usize))
            }
            ValueKind::Int(i) if i > crate::shape::MAX_DIM as i64 => {
                let why = format!(
                    "{i} is larger than the limit {} (2^24)",
                    crate::shape::MAX_DIM
                );
                a.bad_value("shape", why, it, diags);
                return vec![];
            }
            _ => {
                a.reject("shape", "positive dimensions (at most one -1)", it, diags);
                return vec![];
            }
        }
    }
    if dims.is_empty() {
        diags.push(
            Diagnostic::error("E0105", "`reshape` needs at least one dimension", span)
                .with_label("empty shape"),
        );
        a.failed = true;
    }
    dims
}

fn recurrent(
    b: &mut Builder,
    a: &mut Args,
    cell: CellKind,
    name: &str,
    span: Span,
    x: &Src,
    diags: &mut Vec<Diagnostic>,
) -> NodeId {
    let units = a.count("units", None, 1, diags);
    let return_sequences = a.flag("return_sequences", false, diags);
    let bidirectional = a.flag("bidirectional", false, diags);
    let merge = match a.choice("merge", &["concat", "sum", "mul", "ave"], "concat", diags) {
        "sum" => MergeMode::Sum,
        "mul" => MergeMode::Mul,
        "ave" => MergeMode::Ave,
        _ => MergeMode::Concat,
    };
    let layers = a.count("layers", Some(1), 1, diags).min(64);
    let bias = a.flag("bias", true, diags);
    let mut cur = x.clone();
    let mut out = None;
    for l in 0..layers {
        let lname = if layers > 1 {
            format!("{name}.{l}")
        } else {
            name.to_string()
        };
        let rs = l + 1 < layers || return_sequences;
        let one = |b: &mut Builder, nname: &str, reverse: bool| {
            let n = b.unary(
                Op::Recurrent {
                    cell,
                    units,
                    return_sequences: rs,
                    reverse,
                    bias,
                },
                nname,
                span,
                &cur,
            );
            b.param(nname, "weight", ParamRole::Weight, n, 1);
            b.param(nname, "recurrent_weight", ParamRole::Weight, n, 2);
            if bias {
                b.param(nname, "bias", ParamRole::Bias, n, 3);
                if cell == CellKind::Gru {
                    b.param(nname, "recurrent_bias", ParamRole::Bias, n, 4);
                }
            }
            n
        };
        let n = if bidirectional {
            let f = one(b, &format!("{lname}.forward"), false);
            let r = one(b, &format!("{lname}.backward"), true);
            let op = match merge {
                MergeMode::Concat => Op::Concat { axis: -1 },
                MergeMode::Sum => Op::Add,
                MergeMode::Mul => Op::Mul,
                MergeMode::Ave => Op::Average,
            };
            let m = b.node(op, &lname, span);
            b.graph.connect(f, m, 0);
            b.graph.connect(r, m, 1);
            m
        } else {
            one(b, &lname, false)
        };
        cur = Src::Node(n);
        out = Some(n);
    }
    out.unwrap_or_else(|| b.node(Op::Flatten, name, span))
}
