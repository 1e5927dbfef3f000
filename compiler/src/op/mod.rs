//! Tensor operations: the node kinds of the dataflow graph.

mod grad;

pub use grad::{padding_text, CellWrt, GradOp, Loss};

use std::fmt;

/// Elementwise (or, for softmax, last-axis) activation functions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `x` if positive, else `alpha * x`.
    LeakyRelu(f32),
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
    /// Normalized exponentials over the last axis.
    Softmax,
}

impl Activation {
    /// The layer name that produces this activation.
    pub fn name(&self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::LeakyRelu(_) => "leaky_relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Softmax => "softmax",
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Activation::LeakyRelu(a) => write!(f, "leaky_relu {{alpha: {a}}}"),
            other => f.write_str(other.name()),
        }
    }
}

/// Spatial padding of a convolution or pooling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// No padding.
    Valid,
    /// Output size `ceil(W / S)`; the padding is computed per axis
    /// (the extra pixel, if any, goes after, as in TensorFlow).
    Same,
    /// Explicit zero padding `[ph, pw]` on both sides.
    Explicit(usize, usize),
}

impl fmt::Display for Padding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Padding::Valid => f.write_str("valid"),
            Padding::Same => f.write_str("same"),
            Padding::Explicit(h, w) => write!(f, "[{h}, {w}]"),
        }
    }
}

/// The axes a window op (convolution, pooling) slides over. The 1-D
/// layers are the 2-D ops on a height-1 image: a sequence `[T, F]` is read
/// as `[1, T, F]` (netc's images are channels-last), with window `[1, k]`,
/// stride `[1, s]` and padding `[0, p]`, so both backends, the gradients
/// and the optimizer's rules serve both. Only shape checking, the
/// diagnostics and the names tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spatial {
    /// A sequence `[T, F]` (`conv1d`, `maxpool1d`, …).
    Seq,
    /// An image `[H, W, C]` (`conv2d`, `maxpool2d`, …).
    Image,
}

/// Max or average pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// Maximum over the window.
    Max,
    /// Mean over the window (padding excluded from the count).
    Avg,
}

/// The recurrent cell kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellKind {
    /// `h = tanh(x W + h U + b)`.
    Rnn,
    /// Hochreiter/Keras LSTM, gates ordered i, f, c, o.
    Lstm,
    /// Keras GRU (`reset_after`), gates ordered z, r, h.
    Gru,
}

impl CellKind {
    /// Gate count: the multiple of `units` in the weight matrices.
    pub fn gates(self) -> usize {
        match self {
            CellKind::Rnn => 1,
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }

    /// Values per example of the state a cell carries between steps: `h`
    /// (`units`), or `h ++ c` (`2·units`) for an LSTM.
    pub fn state_len(self, units: usize) -> usize {
        match self {
            CellKind::Lstm => 2 * units,
            CellKind::Rnn | CellKind::Gru => units,
        }
    }

    /// The layer name.
    pub fn name(self) -> &'static str {
        match self {
            CellKind::Rnn => "rnn",
            CellKind::Lstm => "lstm",
            CellKind::Gru => "gru",
        }
    }
}

/// How the two directions of a bidirectional layer are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeMode {
    /// Concatenate on the feature axis.
    Concat,
    /// Elementwise sum.
    Sum,
    /// Elementwise product.
    Mul,
    /// Elementwise mean.
    Ave,
}

impl MergeMode {
    /// The keyword in the language.
    pub fn name(self) -> &'static str {
        match self {
            MergeMode::Concat => "concat",
            MergeMode::Sum => "sum",
            MergeMode::Mul => "mul",
            MergeMode::Ave => "ave",
        }
    }
}

/// What a parameter is for; decides initialization and trainability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamRole {
    /// A weight matrix or filter bank.
    Weight,
    /// An additive bias.
    Bias,
    /// Batchnorm scale.
    Gamma,
    /// Batchnorm shift.
    Beta,
    /// Batchnorm running mean (updated by training, not by gradients).
    MovingMean,
    /// Batchnorm running variance.
    MovingVar,
}

impl ParamRole {
    /// Whether gradients update this parameter (before freezing).
    pub fn trainable(self) -> bool {
        !matches!(self, ParamRole::MovingMean | ParamRole::MovingVar)
    }
}

/// A node's operation. Inputs are the node's incoming edges, ordered by slot.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A model input (no inputs).
    Input {
        /// Declared `tokens[...]`: the input holds token ids (as f32
        /// values), which only an `embedding` layer may read.
        tokens: bool,
        /// Declared with `*` as its first axis: a sequence of any length.
        /// Before `masking::instantiate` its shape holds a placeholder
        /// length; after, the length of the batch, and the per-step mask
        /// is a second input named `<input>.mask`.
        variable: bool,
    },
    /// A learned or running parameter (no inputs). Its shape is set by
    /// shape inference from the consuming layer.
    Param {
        /// What the parameter is for.
        role: ParamRole,
    },
    /// Cross-correlation. Inputs: x `[H, W, C]`, weight `[KH, KW, C, F]`,
    /// optional bias `[F]`; as `conv1d`, x `[T, C]` and weight `[K, C, F]`
    /// (the same numbers as `[1, K, C, F]`).
    Conv2d {
        /// An image or, for `conv1d`, a sequence.
        spatial: Spatial,
        /// Output channels.
        filters: usize,
        /// Window `[kh, kw]`.
        kernel: (usize, usize),
        /// Step `[sh, sw]`.
        stride: (usize, usize),
        /// Zero padding.
        padding: Padding,
        /// Elementwise activation fused into the kernel's epilogue (set by
        /// the optimizer; never softmax).
        activation: Option<Activation>,
    },
    /// Max or average pooling over `[H, W]`. Input x `[H, W, C]` (or, for
    /// the 1-D layers, `[T, C]`).
    Pool2d {
        /// An image or a sequence.
        spatial: Spatial,
        /// Max or average.
        kind: PoolKind,
        /// Window `[h, w]`.
        size: (usize, usize),
        /// Step `[sh, sw]`.
        stride: (usize, usize),
        /// Zero padding (ignored by max).
        padding: Padding,
    },
    /// Max or average over the whole of `[H, W]`: `[H, W, C]` → `[C]`
    /// (or over `T`: `[T, C]` → `[C]`).
    GlobalPool2d {
        /// An image or a sequence.
        spatial: Spatial,
        /// Max or average.
        kind: PoolKind,
    },
    /// Embedding lookup: token ids `[T]` → rows of the table `[T, dim]`.
    /// Inputs: ids (a token input), weight `[vocab, dim]`.
    Embedding {
        /// Rows of the table (ids are `0..vocab`).
        vocab: usize,
        /// Columns of the table.
        dim: usize,
        /// The id whose row is zero at initialization and never trained.
        padding: Option<usize>,
    },
    /// Collapse all per-example axes into one.
    Flatten,
    /// Reinterpret the per-example axes; `None` is the inferred `-1` axis.
    Reshape {
        /// Target dims as written.
        dims: Vec<Option<usize>>,
    },
    /// `x · weight + bias` on the last axis. Inputs: x, weight `[F, U]`, optional bias `[U]`.
    Dense {
        /// Output features.
        units: usize,
        /// Elementwise activation fused into the kernel's epilogue (set by
        /// the optimizer; never softmax).
        activation: Option<Activation>,
    },
    /// Inverted dropout in training; identity at inference.
    Dropout {
        /// Fraction of units zeroed.
        rate: f32,
    },
    /// Batch normalization over the last axis.
    /// Inputs: x, gamma, beta, moving_mean, moving_var.
    BatchNorm {
        /// Added to the variance.
        epsilon: f32,
        /// Running-statistics decay.
        momentum: f32,
    },
    /// An activation function.
    Activation(Activation),
    /// One recurrent layer over a sequence `[T, F]`.
    /// Inputs: x, weight, recurrent_weight, optional bias (and
    /// recurrent_bias for GRU), then the initial state if `initial_state`.
    Recurrent {
        /// rnn / lstm / gru.
        cell: CellKind,
        /// Hidden size.
        units: usize,
        /// Output `[T, U]` rather than the last step `[U]`.
        return_sequences: bool,
        /// Run from the last step to the first; sequence outputs are
        /// returned in the original time order.
        reverse: bool,
        /// Whether biases are present.
        bias: bool,
        /// Output the final state (`[U]`, or `h ++ c` `[2U]` for an LSTM)
        /// instead of the last `h`: what a decoder's `initial_state` reads.
        return_state: bool,
        /// The state before the first step is an operand (of the
        /// state's shape) instead of zeros.
        initial_state: bool,
        /// The last operand is the sequence's mask `[T]` (1 at real steps,
        /// 0 at padding): padded steps keep the state and output zeros.
        masked: bool,
    },
    /// Elementwise sum of all inputs (same shapes).
    Add,
    /// Elementwise product of all inputs.
    Mul,
    /// Elementwise mean of all inputs.
    Average,
    /// Concatenation on a per-example axis (negative counts from the end).
    Concat {
        /// Axis, batch excluded.
        axis: i64,
    },
    /// One elementwise kernel over its inputs (made by the optimizer from
    /// chains of elementwise ops). Input 0 gives the output shape; every
    /// other input has that shape or is a per-channel vector `[C]` (C the
    /// last axis), broadcast over the rest.
    Map {
        /// The value of each output element in terms of the inputs'.
        expr: MapExpr,
    },
    /// Time step `step` of a sequence: `[T, F] → [F]` (made by unrolling).
    TimeSlice {
        /// The time index.
        step: usize,
    },
    /// One step of a recurrent cell (made by unrolling a recurrent layer).
    /// Inputs: the step's input projection `x_t·W + b` `[G·U]`, the
    /// recurrent weight `[U, G·U]`, the recurrent bias `[G·U]` if
    /// `recurrent_bias`, and the previous state if `has_state` (else the
    /// state is zero). The state is `h` `[U]`, or `h ++ c` `[2U]` for an LSTM.
    Cell {
        /// rnn / lstm / gru.
        cell: CellKind,
        /// Hidden size.
        units: usize,
        /// Whether a previous state is an input (false on the first step).
        has_state: bool,
        /// Whether a recurrent bias is an input (GRU).
        recurrent_bias: bool,
    },
    /// `x[..., start .. start + len]` on the last axis.
    Slice {
        /// First element taken.
        start: usize,
        /// Elements taken.
        len: usize,
    },
    /// Stacks `T` tensors of shape `[F]` into `[T, F]` (input `i` is step `i`).
    Stack,
    /// Masking one time step (made by unrolling a masked recurrent
    /// layer). Inputs: the mask `[T]`, the new value `[S]`, and the
    /// previous value `[S]` if `has_prev`; the output is the new value
    /// where `mask[step]` is 1, else the previous value (or zero).
    MaskStep {
        /// The time index read from the mask.
        step: usize,
        /// Whether a previous value is an input (else padding gives zero).
        has_prev: bool,
    },
    /// Max or average over the real steps of a masked sequence: `[T, C]`
    /// and its mask `[T]` → `[C]` (what `global_maxpool1d` /
    /// `global_avgpool1d` become on a variable-length sequence). A
    /// sequence with no real step gives zeros.
    MaskedPool {
        /// Max or average.
        kind: PoolKind,
    },
    /// `[F]` → `[times, F]`: the input copied at every step (Keras's
    /// `RepeatVector`; the `repeat` layer).
    Repeat {
        /// Copies (the output's time steps).
        times: usize,
    },
    /// An op added by autodiff: a loss, a gradient, or a training-only
    /// form (see [`GradOp`]). Its shape is set when it is
    /// created.
    Grad(GradOp),
}

/// A unary function in a [`MapExpr`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MapUnary {
    /// An elementwise activation (never softmax).
    Act(Activation),
    /// Square root.
    Sqrt,
}

/// A binary function in a [`MapExpr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapBinary {
    /// `a + b`.
    Add,
    /// `a − b`.
    Sub,
    /// `a · b`.
    Mul,
    /// `a / b`.
    Div,
}

/// The scalar expression of an [`Op::Map`] over its inputs' elements.
#[derive(Clone, Debug, PartialEq)]
pub enum MapExpr {
    /// The element of input `i` (`$i`).
    Input(usize),
    /// A constant.
    Const(f32),
    /// `f(e)`.
    Unary(MapUnary, Box<MapExpr>),
    /// `a op b`.
    Binary(MapBinary, Box<MapExpr>, Box<MapExpr>),
}

impl MapExpr {
    /// `f(self)`.
    pub fn unary(self, f: MapUnary) -> MapExpr {
        MapExpr::Unary(f, Box::new(self))
    }

    /// `self op other`.
    pub fn binary(self, op: MapBinary, other: MapExpr) -> MapExpr {
        MapExpr::Binary(op, Box::new(self), Box::new(other))
    }

    /// The largest input index used, plus one.
    pub fn arity(&self) -> usize {
        match self {
            MapExpr::Input(i) => i + 1,
            MapExpr::Const(_) => 0,
            MapExpr::Unary(_, e) => e.arity(),
            MapExpr::Binary(_, a, b) => a.arity().max(b.arity()),
        }
    }

    /// Replaces every `$i` by `f(i)`.
    pub fn substitute(&self, f: &impl Fn(usize) -> MapExpr) -> MapExpr {
        match self {
            MapExpr::Input(i) => f(*i),
            MapExpr::Const(c) => MapExpr::Const(*c),
            MapExpr::Unary(u, e) => MapExpr::Unary(*u, Box::new(e.substitute(f))),
            MapExpr::Binary(op, a, b) => {
                MapExpr::Binary(*op, Box::new(a.substitute(f)), Box::new(b.substitute(f)))
            }
        }
    }

    /// Number of operations (for costs and tests).
    pub fn ops(&self) -> usize {
        match self {
            MapExpr::Input(_) | MapExpr::Const(_) => 0,
            MapExpr::Unary(_, e) => 1 + e.ops(),
            MapExpr::Binary(_, a, b) => 1 + a.ops() + b.ops(),
        }
    }
}

impl fmt::Display for MapExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapExpr::Input(i) => write!(f, "${i}"),
            MapExpr::Const(c) => write!(f, "{c}"),
            MapExpr::Unary(MapUnary::Act(Activation::LeakyRelu(a)), e) => {
                write!(f, "leaky_relu[{a}]({e})")
            }
            MapExpr::Unary(MapUnary::Act(a), e) => write!(f, "{}({e})", a.name()),
            MapExpr::Unary(MapUnary::Sqrt, e) => write!(f, "sqrt({e})"),
            MapExpr::Binary(op, a, b) => {
                let s = match op {
                    MapBinary::Add => "+",
                    MapBinary::Sub => "-",
                    MapBinary::Mul => "*",
                    MapBinary::Div => "/",
                };
                write!(f, "({a} {s} {b})")
            }
        }
    }
}

/// `, activation: relu` (or nothing) in a fused op's attributes.
fn act_attr(a: &Option<Activation>) -> String {
    match a {
        None => String::new(),
        Some(Activation::LeakyRelu(alpha)) => format!(", activation: leaky_relu[{alpha}]"),
        Some(a) => format!(", activation: {}", a.name()),
    }
}

/// A window, stride or padding pair as written: `[h, w]` for an image,
/// the length axis's `w` alone for a sequence (its height is always 1).
fn window_attr(spatial: Spatial, (h, w): (usize, usize)) -> String {
    match spatial {
        Spatial::Image => format!("[{h}, {w}]"),
        Spatial::Seq => w.to_string(),
    }
}

/// A padding as written for `spatial` (see [`window_attr`]).
fn padding_attr(spatial: Spatial, padding: Padding) -> String {
    match (spatial, padding) {
        (Spatial::Seq, Padding::Explicit(_, p)) => p.to_string(),
        (_, p) => p.to_string(),
    }
}

impl Op {
    /// The operation's name in the graph text form and the summary.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::Conv2d {
                spatial: Spatial::Image,
                ..
            } => "conv2d",
            Op::Conv2d {
                spatial: Spatial::Seq,
                ..
            } => "conv1d",
            Op::Pool2d { spatial, kind, .. } => match (spatial, kind) {
                (Spatial::Image, PoolKind::Max) => "maxpool2d",
                (Spatial::Image, PoolKind::Avg) => "avgpool2d",
                (Spatial::Seq, PoolKind::Max) => "maxpool1d",
                (Spatial::Seq, PoolKind::Avg) => "avgpool1d",
            },
            Op::GlobalPool2d { spatial, kind } => match (spatial, kind) {
                (Spatial::Image, PoolKind::Max) => "global_maxpool2d",
                (Spatial::Image, PoolKind::Avg) => "global_avgpool2d",
                (Spatial::Seq, PoolKind::Max) => "global_maxpool1d",
                (Spatial::Seq, PoolKind::Avg) => "global_avgpool1d",
            },
            Op::Embedding { .. } => "embedding",
            Op::Flatten => "flatten",
            Op::Reshape { .. } => "reshape",
            Op::Dense { .. } => "dense",
            Op::Dropout { .. } => "dropout",
            Op::BatchNorm { .. } => "batchnorm",
            Op::Activation(a) => a.name(),
            Op::Recurrent { cell, .. } => cell.name(),
            Op::Add => "add",
            Op::Mul => "mul",
            Op::Average => "average",
            Op::Concat { .. } => "concat",
            Op::Map { .. } => "map",
            Op::TimeSlice { .. } => "time_slice",
            Op::Cell { cell, .. } => match cell {
                CellKind::Rnn => "rnn_cell",
                CellKind::Lstm => "lstm_cell",
                CellKind::Gru => "gru_cell",
            },
            Op::Slice { .. } => "slice",
            Op::Stack => "stack",
            Op::MaskStep { .. } => "mask_step",
            Op::MaskedPool {
                kind: PoolKind::Max,
            } => "masked_maxpool",
            Op::MaskedPool {
                kind: PoolKind::Avg,
            } => "masked_avgpool",
            Op::Repeat { .. } => "repeat",
            Op::Grad(g) => g.name(),
        }
    }

    /// Attributes in the graph text form, e.g. `{kernel: [3, 3], stride: [1, 1]}`;
    /// empty when the op has none.
    pub fn attrs(&self) -> String {
        let body = match self {
            Op::Param { role } => format!("role: {role:?}").to_lowercase(),
            Op::Input { tokens, variable } => {
                let mut a = Vec::new();
                if *tokens {
                    a.push("tokens: true");
                }
                if *variable {
                    a.push("variable: true");
                }
                a.join(", ")
            }
            Op::Grad(g) => g.to_string(),
            Op::Conv2d {
                spatial,
                filters,
                kernel,
                stride,
                padding,
                activation,
            } => format!(
                "filters: {filters}, kernel: {}, stride: {}, padding: {}{}",
                window_attr(*spatial, *kernel),
                window_attr(*spatial, *stride),
                padding_attr(*spatial, *padding),
                act_attr(activation)
            ),
            Op::Pool2d {
                spatial,
                size,
                stride,
                padding,
                ..
            } => format!(
                "size: {}, stride: {}, padding: {}",
                window_attr(*spatial, *size),
                window_attr(*spatial, *stride),
                padding_attr(*spatial, *padding)
            ),
            Op::Reshape { dims } => format!(
                "dims: [{}]",
                dims.iter()
                    .map(|d| d.map_or("-1".to_string(), |d| d.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Op::Dense { units, activation } => format!("units: {units}{}", act_attr(activation)),
            Op::Dropout { rate } => format!("rate: {rate}"),
            Op::Embedding {
                vocab,
                dim,
                padding,
            } => format!(
                "vocab: {vocab}, dim: {dim}, padding: {}",
                padding_text(*padding)
            ),
            Op::BatchNorm { epsilon, momentum } => {
                format!("epsilon: {epsilon}, momentum: {momentum}")
            }
            Op::Activation(Activation::LeakyRelu(a)) => format!("alpha: {a}"),
            Op::Recurrent {
                units,
                return_sequences,
                reverse,
                bias,
                return_state,
                initial_state,
                masked,
                ..
            } => format!(
                "units: {units}, return_sequences: {return_sequences}, reverse: {reverse}, bias: {bias}{}{}{}",
                // Printed only when set, so older models' graph texts stay as they were.
                if *return_state { ", return_state: true" } else { "" },
                if *initial_state { ", initial_state: true" } else { "" },
                if *masked { ", masked: true" } else { "" }
            ),
            Op::Concat { axis } => format!("axis: {axis}"),
            Op::Map { expr } => format!("expr: {expr}"),
            Op::TimeSlice { step } => format!("step: {step}"),
            Op::Cell {
                units,
                has_state,
                recurrent_bias,
                ..
            } => format!(
                "units: {units}, has_state: {has_state}, recurrent_bias: {recurrent_bias}"
            ),
            Op::Slice { start, len } => format!("start: {start}, len: {len}"),
            Op::Repeat { times } => format!("times: {times}"),
            Op::MaskStep { step, has_prev } => format!("step: {step}, has_prev: {has_prev}"),
            _ => String::new(),
        };
        if body.is_empty() {
            body
        } else {
            format!(" {{{body}}}")
        }
    }
}
