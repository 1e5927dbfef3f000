//! The op registry: what each op *means*, one file per family.
//!
//! A family file owns, for its layers and ops: the layer names and their
//! arguments with defaults (how one layer call expands into graph nodes),
//! the one shape rule (used by shape checking, which turns its
//! [`ShapeError`] into a diagnostic, and by the optimizer for the nodes it
//! creates), the e-graph cost, its weights' initializer fans, and the
//! gradient rule (which nodes autodiff
//! adds for the op's operands, through [`Backward`]). This module holds the dispatch: an
//! exhaustive `match` on [`Op`] or [`LayerKind`] per concern, so a new
//! variant without an arm is a compile error, not a silent default.
//!
//! Invariants: the registry knows ops, shapes and the graph; it must not
//! know about passes (no `opt`, `autodiff` or `kernel` imports) — passes
//! call it.

mod activation;
mod conv;
mod dense;
mod embedding;
mod merge;
mod norm;
mod pool;
mod recurrent;
mod reshape;

use crate::args::Args;
use crate::graph::{Graph, Node, NodeId};
use crate::op::{GradOp, Op, ParamRole, Spatial};
use crate::shape::{Shape, WindowError};
use netc_lang::ast::Arg;
use netc_lang::{Diagnostic, Span};
use thiserror::Error;

/// Every layer of the language. The names users write are [`LayerKind::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// `conv2d`.
    Conv2d,
    /// `maxpool2d`.
    MaxPool2d,
    /// `avgpool2d`.
    AvgPool2d,
    /// `global_maxpool2d`.
    GlobalMaxPool2d,
    /// `global_avgpool2d`.
    GlobalAvgPool2d,
    /// `conv1d`.
    Conv1d,
    /// `maxpool1d`.
    MaxPool1d,
    /// `avgpool1d`.
    AvgPool1d,
    /// `global_maxpool1d`.
    GlobalMaxPool1d,
    /// `global_avgpool1d`.
    GlobalAvgPool1d,
    /// `flatten`.
    Flatten,
    /// `reshape`.
    Reshape,
    /// `repeat`.
    Repeat,
    /// `dense`.
    Dense,
    /// `dropout`.
    Dropout,
    /// `batchnorm`.
    BatchNorm,
    /// `relu`.
    Relu,
    /// `leaky_relu`.
    LeakyRelu,
    /// `sigmoid`.
    Sigmoid,
    /// `tanh`.
    Tanh,
    /// `softmax`.
    Softmax,
    /// `rnn`.
    Rnn,
    /// `lstm`.
    Lstm,
    /// `gru`.
    Gru,
    /// `add`.
    Add,
    /// `concat`.
    Concat,
    /// `embedding`.
    Embedding,
}

impl LayerKind {
    /// Every layer, in the order the language reference lists them.
    pub const ALL: &'static [LayerKind] = &[
        LayerKind::Conv2d,
        LayerKind::MaxPool2d,
        LayerKind::AvgPool2d,
        LayerKind::GlobalMaxPool2d,
        LayerKind::GlobalAvgPool2d,
        LayerKind::Conv1d,
        LayerKind::MaxPool1d,
        LayerKind::AvgPool1d,
        LayerKind::GlobalMaxPool1d,
        LayerKind::GlobalAvgPool1d,
        LayerKind::Flatten,
        LayerKind::Reshape,
        LayerKind::Repeat,
        LayerKind::Dense,
        LayerKind::Dropout,
        LayerKind::BatchNorm,
        LayerKind::Relu,
        LayerKind::LeakyRelu,
        LayerKind::Sigmoid,
        LayerKind::Tanh,
        LayerKind::Softmax,
        LayerKind::Rnn,
        LayerKind::Lstm,
        LayerKind::Gru,
        LayerKind::Add,
        LayerKind::Concat,
        LayerKind::Embedding,
    ];

    /// The name users write.
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Conv2d => "conv2d",
            LayerKind::MaxPool2d => "maxpool2d",
            LayerKind::AvgPool2d => "avgpool2d",
            LayerKind::GlobalMaxPool2d => "global_maxpool2d",
            LayerKind::GlobalAvgPool2d => "global_avgpool2d",
            LayerKind::Conv1d => "conv1d",
            LayerKind::MaxPool1d => "maxpool1d",
            LayerKind::AvgPool1d => "avgpool1d",
            LayerKind::GlobalMaxPool1d => "global_maxpool1d",
            LayerKind::GlobalAvgPool1d => "global_avgpool1d",
            LayerKind::Flatten => "flatten",
            LayerKind::Reshape => "reshape",
            LayerKind::Repeat => "repeat",
            LayerKind::Dense => "dense",
            LayerKind::Dropout => "dropout",
            LayerKind::BatchNorm => "batchnorm",
            LayerKind::Relu => "relu",
            LayerKind::LeakyRelu => "leaky_relu",
            LayerKind::Sigmoid => "sigmoid",
            LayerKind::Tanh => "tanh",
            LayerKind::Softmax => "softmax",
            LayerKind::Rnn => "rnn",
            LayerKind::Lstm => "lstm",
            LayerKind::Gru => "gru",
            LayerKind::Add => "add",
            LayerKind::Concat => "concat",
            LayerKind::Embedding => "embedding",
        }
    }

    /// The layer called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<LayerKind> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// The layer's arguments in positional order.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            LayerKind::Conv2d | LayerKind::Conv1d => conv::ARGS,
            LayerKind::MaxPool2d
            | LayerKind::AvgPool2d
            | LayerKind::MaxPool1d
            | LayerKind::AvgPool1d => pool::ARGS,
            LayerKind::GlobalMaxPool2d
            | LayerKind::GlobalAvgPool2d
            | LayerKind::GlobalMaxPool1d
            | LayerKind::GlobalAvgPool1d => &[],
            LayerKind::Flatten => &[],
            LayerKind::Reshape => reshape::RESHAPE_ARGS,
            LayerKind::Repeat => reshape::REPEAT_ARGS,
            LayerKind::Dense => dense::ARGS,
            LayerKind::Dropout => norm::DROPOUT_ARGS,
            LayerKind::BatchNorm => norm::BATCHNORM_ARGS,
            LayerKind::Relu | LayerKind::Sigmoid | LayerKind::Tanh | LayerKind::Softmax => &[],
            LayerKind::LeakyRelu => activation::LEAKY_RELU_ARGS,
            LayerKind::Rnn | LayerKind::Lstm | LayerKind::Gru => recurrent::ARGS,
            LayerKind::Add => &[],
            LayerKind::Concat => merge::CONCAT_ARGS,
            LayerKind::Embedding => embedding::ARGS,
        }
    }

    /// Whether a window layer reads sequences (the 1-D layers) or images.
    fn spatial(self) -> Spatial {
        match self {
            LayerKind::Conv1d
            | LayerKind::MaxPool1d
            | LayerKind::AvgPool1d
            | LayerKind::GlobalMaxPool1d
            | LayerKind::GlobalAvgPool1d => Spatial::Seq,
            _ => Spatial::Image,
        }
    }

    /// Whether the layer combines several tensors: positional names in
    /// its call are operands, not arguments.
    pub fn is_merge(self) -> bool {
        matches!(self, LayerKind::Add | LayerKind::Concat)
    }
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

/// One layer call being expanded: the builder, the bound arguments and
/// where the diagnostics go.
pub(crate) struct Call<'b, 'a> {
    b: &'b mut Builder,
    a: Args<'a>,
    name: &'b str,
    span: Span,
    diags: &'b mut Vec<Diagnostic>,
}

/// Expands one layer call into nodes. `piped` is the pipeline's value, if
/// any; merge layers also take the tensors named in the call. Returns the
/// output node.
pub(crate) fn expand(
    b: &mut Builder,
    kind: LayerKind,
    name: &str,
    span: Span,
    args: &[Arg],
    piped: Option<Src>,
    diags: &mut Vec<Diagnostic>,
) -> NodeId {
    let a = Args::bind(kind.name(), span, kind.args(), kind.is_merge(), args, diags);
    let mut c = Call {
        b,
        a,
        name,
        span,
        diags,
    };
    let out = if kind.is_merge() {
        merge::expand(&mut c, kind, piped)
    } else {
        let x = match piped {
            Some(x) => x,
            None => {
                c.diags.push(
                    Diagnostic::error("E0114", format!("`{}` has no input", kind.name()), span)
                        .with_label("nothing flows into this layer")
                        .with_note(format!(
                            "help: feed it a tensor: `x -> {}(...)`",
                            kind.name()
                        )),
                );
                c.a.failed = true;
                // Keep going with a dangling node so its arguments are still checked.
                let n = c.b.node(
                    Op::Input {
                        tokens: false,
                        variable: false,
                    },
                    name,
                    span,
                );
                c.b.poisoned.push(n);
                Src::Node(n)
            }
        };
        match kind {
            LayerKind::Conv2d | LayerKind::Conv1d => conv::expand(&mut c, kind.spatial(), &x),
            LayerKind::Dense => dense::expand(&mut c, &x),
            LayerKind::MaxPool2d
            | LayerKind::AvgPool2d
            | LayerKind::GlobalMaxPool2d
            | LayerKind::GlobalAvgPool2d
            | LayerKind::MaxPool1d
            | LayerKind::AvgPool1d
            | LayerKind::GlobalMaxPool1d
            | LayerKind::GlobalAvgPool1d => pool::expand(&mut c, kind, kind.spatial(), &x),
            LayerKind::Flatten | LayerKind::Reshape | LayerKind::Repeat => {
                reshape::expand(&mut c, kind, &x)
            }
            LayerKind::Dropout | LayerKind::BatchNorm => norm::expand(&mut c, kind, &x),
            LayerKind::Relu
            | LayerKind::LeakyRelu
            | LayerKind::Sigmoid
            | LayerKind::Tanh
            | LayerKind::Softmax => activation::expand(&mut c, kind, &x),
            LayerKind::Rnn | LayerKind::Lstm | LayerKind::Gru => {
                recurrent::expand(&mut c, kind, &x)
            }
            LayerKind::Embedding => embedding::expand(&mut c, &x),
            LayerKind::Add | LayerKind::Concat => unreachable!("merge layers are expanded above"),
        }
    };
    if c.a.failed {
        c.b.poisoned.push(out);
    }
    out
}

/// What a shape rule found: the output shape, the shapes of the op's
/// parameters (input slots 1, 2, … in order) and warnings.
#[derive(Clone, Debug, PartialEq)]
pub struct Inferred {
    /// The output shape (batch axis excluded).
    pub out: Shape,
    /// Shapes for parameter slots 1, 2, …; slots the op lacks are ignored.
    pub params: Vec<Vec<usize>>,
    /// Problems that do not stop checking (a window that drops positions).
    pub warnings: Vec<ShapeError>,
}

impl Inferred {
    fn plain(out: Shape) -> Self {
        Inferred {
            out,
            params: vec![],
            warnings: vec![],
        }
    }
}

/// Why operands do not fit an op. Shape checking renders each with the
/// arithmetic and the source span; the optimizer only needs to know that
/// the rule failed.
#[derive(Clone, Debug, PartialEq)]
pub enum ShapeError {
    /// An operand's shape is not known (downstream of another error).
    Unknown,
    /// The input has the wrong rank; `want` is written like `[N, H, W, C]`.
    Rank {
        /// The shape the op expects.
        want: &'static str,
        /// A `help:` note, or empty.
        hint: String,
    },
    /// Window arithmetic failed on some axes (as an error, or for pooling
    /// a stride that does not divide, as a warning).
    Window {
        /// Each failing axis (`height`, `width`) with its arithmetic.
        fails: Vec<(&'static str, WindowError)>,
    },
    /// Explicit pooling padding of at least the window size.
    PoolPadding {
        /// The names of the window's two axes.
        axes: [&'static str; 2],
        /// The window.
        size: (usize, usize),
        /// The padding.
        padding: (usize, usize),
    },
    /// A reshape whose element counts differ.
    Reshape {
        /// Target dims as written (`None` is `-1`).
        dims: Vec<Option<usize>>,
        /// The product of the known target dims (`None` past 2^64).
        known: Option<usize>,
    },
    /// A sequence longer than netc unrolls.
    TooManySteps {
        /// The sequence length.
        steps: usize,
    },
    /// A recurrent layer's `initial_state` (operand `index`) is not a
    /// state of its size `[want]`.
    InitialState {
        /// The slot of the state operand.
        index: usize,
        /// Values per example the layer's state has.
        want: usize,
    },
    /// Operand `index` differs in shape from operand 0.
    Unequal {
        /// The slot of the differing operand.
        index: usize,
    },
    /// A concatenation axis outside the operands' rank.
    ConcatAxis {
        /// The axis as written.
        axis: i64,
    },
    /// Operand `index` differs from operand 0 off the concatenation axis.
    ConcatMismatch {
        /// The slot of the differing operand.
        index: usize,
        /// The axis as written.
        axis: i64,
    },
    /// The operands of an op only netc creates (a cell step, a fused map)
    /// do not fit: a netc bug.
    Internal,
}

/// The operand in slot `i`, or [`ShapeError::Unknown`].
fn operand<'s>(ins: &[Option<&'s Shape>], i: usize) -> Result<&'s Shape, ShapeError> {
    ins.get(i).copied().flatten().ok_or(ShapeError::Unknown)
}

/// The one shape rule of `op` applied to operands of shapes `ins` (slot
/// order, parameters included; `None` where not known yet — parameters
/// get their shapes from the rule).
pub fn infer(op: &Op, ins: &[Option<&Shape>]) -> Result<Inferred, ShapeError> {
    match op {
        Op::Input { .. } | Op::Param { .. } | Op::Grad(_) => {
            Ok(Inferred::plain(operand(ins, 0)?.clone()))
        }
        Op::Conv2d { .. } => conv::infer(op, ins),
        Op::Pool2d { .. } | Op::GlobalPool2d { .. } | Op::MaskedPool { .. } => pool::infer(op, ins),
        Op::Embedding { .. } => embedding::infer(op, ins),
        Op::Flatten
        | Op::Reshape { .. }
        | Op::TimeSlice { .. }
        | Op::Slice { .. }
        | Op::Stack
        | Op::Repeat { .. } => reshape::infer(op, ins),
        Op::Dense { .. } => dense::infer(op, ins),
        Op::Dropout { .. } | Op::BatchNorm { .. } => norm::infer(op, ins),
        Op::Activation(_) | Op::Map { .. } => activation::infer(op, ins),
        Op::Recurrent { .. } | Op::Cell { .. } | Op::MaskStep { .. } => recurrent::infer(op, ins),
        Op::Add | Op::Mul | Op::Average | Op::Concat { .. } => merge::infer(op, ins),
    }
}

/// The output shape of `op` on operands of shapes `ins`, or `None` when
/// they do not fit: [`infer`] without the details, for the optimizer.
pub fn op_shape(op: &Op, ins: &[Option<&Shape>]) -> Option<Shape> {
    infer(op, ins).ok().map(|r| r.out)
}

/// Fixed cost of launching one kernel, in element-equivalents.
pub const KERNEL: f64 = 64.0;

/// Cost of an alias (no kernel, no traffic).
pub const ALIAS: f64 = 1.0;

fn numel(s: Option<&Shape>) -> f64 {
    s.map_or(0.0, |s| s.numel() as f64)
}

/// The memory-traffic cost of one node computing `op` from operands of
/// shapes `ins` (slot order) into `out`: the elements it reads and writes
/// plus [`KERNEL`] per kernel; aliases cost [`ALIAS`].
pub fn cost(op: &Op, ins: &[Option<&Shape>], out: Option<&Shape>) -> f64 {
    let read: f64 = ins.iter().map(|s| numel(*s)).sum();
    let write = numel(out);
    match op {
        Op::Input { .. } | Op::Param { .. } => 0.0,
        Op::Conv2d { .. } => conv::cost(op, ins, read, write),
        Op::Flatten | Op::Reshape { .. } | Op::TimeSlice { .. } | Op::Slice { .. } => ALIAS,
        Op::Dropout { .. } => ALIAS,
        Op::Activation(_) => activation::cost(op, read, write),
        Op::Concat { .. } => merge::cost(op, ins, read, write),
        Op::Recurrent { .. } | Op::Cell { .. } => recurrent::cost(op, ins, out),
        Op::Embedding { .. } => embedding::cost(ins, write),
        // One kernel reading every operand and writing the result.
        Op::Dense { .. }
        | Op::Pool2d { .. }
        | Op::GlobalPool2d { .. }
        | Op::MaskedPool { .. }
        | Op::MaskStep { .. }
        | Op::BatchNorm { .. }
        | Op::Add
        | Op::Mul
        | Op::Average
        | Op::Map { .. }
        | Op::Stack
        | Op::Repeat { .. }
        | Op::Grad(_) => read + write + KERNEL,
    }
}

/// `(fan_in, fan_out)` of a weight of shape `shape` feeding `op`, for
/// Glorot and He initialization; `None` when the op has no such weight.
pub fn fans(op: &Op, shape: &[usize]) -> Option<(usize, usize)> {
    match op {
        Op::Conv2d { .. } => conv::fans(shape),
        Op::Dense { .. } | Op::Recurrent { .. } => dense::fans(shape),
        Op::Embedding { .. } => embedding::fans(shape),
        Op::Input { .. }
        | Op::Param { .. }
        | Op::Pool2d { .. }
        | Op::GlobalPool2d { .. }
        | Op::Flatten
        | Op::Reshape { .. }
        | Op::Dropout { .. }
        | Op::BatchNorm { .. }
        | Op::Activation(_)
        | Op::Add
        | Op::Mul
        | Op::Average
        | Op::Concat { .. }
        | Op::Map { .. }
        | Op::TimeSlice { .. }
        | Op::Slice { .. }
        | Op::Stack
        | Op::Repeat { .. }
        | Op::Cell { .. }
        | Op::MaskStep { .. }
        | Op::MaskedPool { .. }
        | Op::Grad(_) => None,
    }
}

/// `p.0` for axis 0 (height), `p.1` for axis 1 (width).
fn pick(p: (usize, usize), ax: usize) -> usize {
    if ax == 0 {
        p.0
    } else {
        p.1
    }
}

/// The image a window op reads: `x` itself for an image `[H, W, C]`, the
/// height-1 image `[1, T, F]` for a sequence `[T, F]`; a rank error
/// worded for the layer's kind otherwise.
fn as_image(spatial: Spatial, x: &Shape) -> Result<Shape, ShapeError> {
    match (spatial, x.rank()) {
        (Spatial::Image, 3) => Ok(x.clone()),
        (Spatial::Seq, 2) => Ok(Shape(vec![1, x.0[0], x.0[1]])),
        (Spatial::Image, _) => Err(ShapeError::Rank {
            want: "[N, H, W, C]",
            hint: image_hint(x),
        }),
        (Spatial::Seq, _) => Err(ShapeError::Rank {
            want: "[N, T, F]",
            hint: seq_hint(x),
        }),
    }
}

/// A window op's output from its image form `[H', W', C']`: a sequence
/// drops the height, which is 1.
fn from_image(spatial: Spatial, [h, w, c]: [usize; 3]) -> Shape {
    match spatial {
        Spatial::Image => Shape(vec![h, w, c]),
        Spatial::Seq => Shape(vec![w, c]),
    }
}

/// The names diagnostics give the two window axes of `spatial`'s image
/// form (a sequence's height is 1 and never fails).
fn axis_names(spatial: Spatial) -> [&'static str; 2] {
    match spatial {
        Spatial::Image => ["height", "width"],
        Spatial::Seq => ["height", "length"],
    }
}

/// Output height and width of a `size` window with `stride` and `padding`
/// over the image `x` `[H, W, C]`, with the axes whose arithmetic fails
/// (named for `spatial`). A stride that does not divide yields the
/// rounded-down size (pooling accepts it with a warning; convolution
/// rejects it).
fn window2d(
    spatial: Spatial,
    x: &Shape,
    size: (usize, usize),
    stride: (usize, usize),
    padding: crate::op::Padding,
) -> ([usize; 2], Vec<(&'static str, WindowError)>) {
    use crate::op::Padding;
    use crate::shape::{same_out, window_out};
    let mut out = [0usize; 2];
    let mut fails = Vec::new();
    for (ax, axis) in axis_names(spatial).into_iter().enumerate() {
        let (w, f, s) = (x.0[ax], pick(size, ax), pick(stride, ax));
        let r = match padding {
            Padding::Same => Ok(same_out(w, f, s).0),
            Padding::Valid => window_out(w, f, s, 0),
            Padding::Explicit(ph, pw) => window_out(w, f, s, pick((ph, pw), ax)),
        };
        match r {
            Ok(o) => out[ax] = o,
            Err(e) => {
                if let WindowError::StrideDoesNotDivide { floor, .. } = e {
                    out[ax] = floor;
                }
                fails.push((axis, e));
            }
        }
    }
    (out, fails)
}

/// `help:` for a layer that wants an image but got `x`.
fn image_hint(x: &Shape) -> String {
    match x.rank() {
        1 => format!(
            "help: images are [H, W, C]; to treat {} features as an image, `reshape` first",
            x.0[0]
        ),
        2 => "help: images are [H, W, C] (channels last); a sequence [T, F] takes the 1-D layers (conv1d, maxpool1d, …)".to_string(),
        _ => "help: images are [H, W, C] (channels last)".to_string(),
    }
}

/// `help:` for a 1-D layer that wants a sequence but got `x`.
fn seq_hint(x: &Shape) -> String {
    match x.rank() {
        1 => format!(
            "help: sequences are [T, F] (steps × features); to read {n} values as {n} steps of one feature, `reshape([{n}, 1])` first",
            n = x.0[0]
        ),
        3 => "help: sequences are [T, F] (steps × features); an image [H, W, C] takes the 2-D layers (conv2d, maxpool2d, …)".to_string(),
        _ => "help: sequences are [T, F] (steps × features)".to_string(),
    }
}

/// `26·26·4 = 2704` (or just `784` for one axis).
pub(crate) fn product(x: &Shape) -> String {
    if x.rank() == 1 {
        return x.numel().to_string();
    }
    let factors: Vec<String> = x.0.iter().map(|d| d.to_string()).collect();
    format!("{} = {}", factors.join("·"), x.numel())
}

/// The `activation:` argument of conv2d and dense.
fn activation_arg(c: &mut Call) -> Option<crate::op::Activation> {
    use crate::op::Activation;
    const ACTIVATIONS: &[&str] = &["none", "relu", "leaky_relu", "sigmoid", "tanh", "softmax"];
    match c.a.choice("activation", ACTIVATIONS, "none", c.diags) {
        "relu" => Some(Activation::Relu),
        "leaky_relu" => Some(Activation::LeakyRelu(0.3)),
        "sigmoid" => Some(Activation::Sigmoid),
        "tanh" => Some(Activation::Tanh),
        "softmax" => Some(Activation::Softmax),
        _ => None,
    }
}

/// A weighted layer node (conv2d, dense) with its `weight`, optional
/// `bias` and optional activation layer after it; returns the output.
fn weighted(c: &mut Call, op: Op, x: &Src) -> NodeId {
    let bias = c.a.flag("bias", true, c.diags);
    let act = activation_arg(c);
    let (name, span) = (c.name, c.span);
    let n = c.b.unary(op, name, span, x);
    c.b.param(name, "weight", ParamRole::Weight, n, 1);
    if bias {
        c.b.param(name, "bias", ParamRole::Bias, n, 2);
    }
    match act {
        Some(act) => c.b.unary(
            Op::Activation(act),
            &format!("{name}_{}", act.name()),
            span,
            &Src::Node(n),
        ),
        None => n,
    }
}

/// A window argument (`kernel`, `size`, `stride`): an integer or `[h, w]`
/// for an image; for a sequence an integer `k`, read as the window `[1, k]`.
fn window_arg(
    c: &mut Call,
    spatial: Spatial,
    name: &str,
    default: Option<(usize, usize)>,
) -> (usize, usize) {
    match spatial {
        Spatial::Image => c.a.pair(name, default, 1, c.diags),
        Spatial::Seq => (1, c.a.count(name, default.map(|d| d.1), 1, c.diags)),
    }
}

/// The `padding:` argument of window layers: `valid`, `same`, or zeros on
/// both sides (an integer or `[h, w]` for an image; an integer `p`, read
/// as `[0, p]`, for a sequence).
fn padding_arg(c: &mut Call, spatial: Spatial) -> crate::op::Padding {
    use crate::op::Padding;
    use netc_lang::ast::ValueKind;
    let Some(v) = c.a.raw("padding") else {
        return Padding::Valid;
    };
    match (&v.kind, spatial) {
        (ValueKind::Ident(s), _) if s == "valid" => Padding::Valid,
        (ValueKind::Ident(s), _) if s == "same" => Padding::Same,
        (ValueKind::Int(_) | ValueKind::List(_), Spatial::Image) => {
            let (h, w) = c.a.pair("padding", Some((0, 0)), 0, c.diags);
            Padding::Explicit(h, w)
        }
        (ValueKind::Int(_), Spatial::Seq) => {
            Padding::Explicit(0, c.a.count("padding", Some(0), 0, c.diags))
        }
        (_, Spatial::Image) => {
            c.a.reject(
                "padding",
                "`valid`, `same`, an integer or [h, w]",
                v,
                c.diags,
            );
            Padding::Valid
        }
        (_, Spatial::Seq) => {
            c.a.reject("padding", "`valid`, `same` or an integer", v, c.diags);
            Padding::Valid
        }
    }
}

/// Why a gradient rule failed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GradError {
    /// A node has no inferred shape.
    #[error("node `{0}` has no shape; check the model first")]
    NoShape(String),
    /// An op without a gradient rule.
    #[error("training through `{0}` ({1}) is not supported yet")]
    Unsupported(String, &'static str),
    /// A whole recurrent layer: it must be unrolled over time first, so
    /// that its gradient is BPTT over cell steps.
    #[error("`{0}` ({1}) must be unrolled over time before it can be differentiated")]
    NotUnrolled(String, &'static str),
}

/// One node being differentiated: what a gradient rule sees of autodiff,
/// and where it leaves the gradients of the node's operands.
pub struct Backward<'t> {
    /// The training graph under construction.
    pub graph: &'t mut Graph,
    /// The node being differentiated (a copy: rules add nodes).
    pub node: Node,
    /// Its id.
    pub id: NodeId,
    /// Its operands in slot order.
    pub ins: Vec<NodeId>,
    /// Which operands lead to a trainable parameter: only they get gradients.
    pub needed: Vec<bool>,
    /// The gradient of the node's output.
    pub dy: NodeId,
    /// Gradient contributions `(operand, gradient)`; autodiff sums an
    /// operand's contributions.
    pub contributions: Vec<(NodeId, NodeId)>,
    /// Gradients of time slices `(sequence, step, gradient)`: autodiff
    /// gathers a sequence's steps into one stack once all are in.
    pub time_slices: Vec<(NodeId, usize, NodeId)>,
}

impl Backward<'_> {
    /// The shape of node `n`.
    pub fn shape(&self, n: NodeId) -> Result<Shape, GradError> {
        let node = self.graph.node(n);
        node.shape
            .clone()
            .ok_or_else(|| GradError::NoShape(node.name.clone()))
    }

    /// Adds a node of the differentiated node's layer computing `op` from `ins`.
    pub fn add(&mut self, op: Op, name: String, shape: Shape, ins: &[NodeId]) -> NodeId {
        let n = self.graph.add(Node {
            op,
            name,
            layer: self.node.layer.clone(),
            span: self.node.span,
            shape: Some(shape),
        });
        for (i, x) in ins.iter().enumerate() {
            self.graph.connect(*x, n, i);
        }
        n
    }

    /// The gradient of operand `i` is `op` applied to `inputs` (when the
    /// operand needs one).
    pub fn give(&mut self, i: usize, op: GradOp, inputs: &[NodeId]) -> Result<(), GradError> {
        self.give_op(i, Op::Grad(op), inputs)
    }

    /// [`Backward::give`] for a forward op.
    pub fn give_op(&mut self, i: usize, op: Op, inputs: &[NodeId]) -> Result<(), GradError> {
        if !self.needed[i] {
            return Ok(());
        }
        let x = self.ins[i];
        let s = self.shape(x)?;
        let name = format!("grad:{}", self.graph.node(x).name);
        let n = self.add(op, name, s, inputs);
        self.contributions.push((x, n));
        Ok(())
    }

    /// Operand `i`'s gradient is `grad` itself (when it needs one).
    pub fn pass(&mut self, i: usize, grad: NodeId) {
        if self.needed[i] {
            self.contributions.push((self.ins[i], grad));
        }
    }

    fn unsupported(&self) -> GradError {
        GradError::Unsupported(self.node.name.clone(), self.node.op.name())
    }
}

/// The gradient rule of the node `b` differentiates (its op is `b.node.op`).
pub fn backward(b: &mut Backward) -> Result<(), GradError> {
    let op = b.node.op.clone();
    match &op {
        Op::Conv2d { .. } => conv::backward(&op, b),
        Op::Dense { .. } => dense::backward(b),
        Op::Embedding { .. } => embedding::backward(&op, b),
        Op::Pool2d { .. } | Op::GlobalPool2d { .. } | Op::MaskedPool { .. } => {
            pool::backward(&op, b)
        }
        Op::Flatten
        | Op::Reshape { .. }
        | Op::TimeSlice { .. }
        | Op::Stack
        | Op::Slice { .. }
        | Op::Repeat { .. } => reshape::backward(&op, b),
        Op::BatchNorm { .. } | Op::Grad(GradOp::DropoutMask { .. }) => norm::backward(&op, b),
        Op::Activation(_) => activation::backward(&op, b),
        Op::Add | Op::Mul | Op::Average | Op::Concat { .. } => merge::backward(&op, b),
        Op::Recurrent { .. } | Op::Cell { .. } | Op::MaskStep { .. } => recurrent::backward(&op, b),
        // Dropout has become `dropout_mask` in the training graph; inputs,
        // parameters, fused maps and other autodiff ops are not
        // differentiated.
        Op::Input { .. } | Op::Param { .. } | Op::Dropout { .. } | Op::Map { .. } | Op::Grad(_) => {
            Err(b.unsupported())
        }
    }
}
