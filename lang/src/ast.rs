//! The abstract syntax tree of a `.net` file. Every node keeps its span.

use crate::span::Span;

/// A name as written, with where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    /// The identifier text.
    pub name: String,
    /// Where it appears.
    pub span: Span,
}

/// A whole `.net` file: models and training sections, in source order.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct File {
    /// `model NAME { ... }` blocks.
    pub models: Vec<Model>,
    /// `train NAME { ... }` blocks.
    pub trains: Vec<Train>,
}

/// `model NAME { statements }`.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// The model's name.
    pub name: Ident,
    /// Statements in source order.
    pub statements: Vec<Statement>,
    /// The whole block.
    pub span: Span,
}

/// One statement inside a model.
#[derive(Clone, Debug, PartialEq)]
pub enum Statement {
    /// `input NAME: [d1, d2, ...]` — a per-example shape; batch is implicit.
    /// `input NAME: tokens[T]` declares token ids (integers, fed to an
    /// `embedding` layer).
    Input {
        /// The input's name (a binding).
        name: Ident,
        /// Written `tokens[...]`: the input holds token ids.
        tokens: bool,
        /// The dimension list as written (checked by the compiler).
        shape: Value,
        /// The whole statement.
        span: Span,
    },
    /// `output a, b` — the model's results, in order.
    Output {
        /// Names of bindings that are outputs.
        names: Vec<Ident>,
        /// The whole statement.
        span: Span,
    },
    /// `NAME = pipeline`.
    Bind {
        /// The new binding.
        name: Ident,
        /// Its definition.
        pipeline: Pipeline,
        /// The whole statement.
        span: Span,
    },
    /// A bare pipeline; its last stage may name a new binding (`... -> probs`).
    Pipeline(Pipeline),
}

/// `stage -> stage -> ...`: each stage consumes the previous one's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    /// At least one stage.
    pub stages: Vec<Stage>,
    /// The whole pipeline.
    pub span: Span,
}

/// One pipeline stage: a layer call `conv2d(filters: 32, kernel: 3) as c1`,
/// a bare name (`relu`, or a binding such as `image` or `probs`).
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    /// The layer or binding name.
    pub name: Ident,
    /// `Some` when written with parentheses, even if empty.
    pub args: Option<Vec<Arg>>,
    /// `as NAME`: the layer's name, used for its parameters (`NAME.weight`).
    pub alias: Option<Ident>,
    /// The whole stage.
    pub span: Span,
}

/// A positional (`32`) or named (`filters: 32`) argument.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// `Some` for a named argument.
    pub name: Option<Ident>,
    /// The argument's value.
    pub value: Value,
    /// The whole argument.
    pub span: Span,
}

/// A literal or a call-like value.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// What was written.
    pub kind: ValueKind,
    /// Where.
    pub span: Span,
}

/// The kinds of values the language has.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueKind {
    /// `32`, `-1`.
    Int(i64),
    /// `0.001`, `1e-3`.
    Float(f64),
    /// `true` / `false`.
    Bool(bool),
    /// `"data/mnist"` (no escapes; the quotes are not part of the text).
    Str(String),
    /// `same`, `accuracy`, or a binding name in a merge layer's arguments.
    Ident(String),
    /// `[28, 28, 1]`.
    List(Vec<Value>),
    /// `*`: any length, as the time axis of a variable-length input
    /// (`input x: [*, 12]`).
    Any,
    /// `adam(lr: 0.001)`.
    Call {
        /// The callee.
        name: Ident,
        /// Its arguments.
        args: Vec<Arg>,
    },
}

impl ValueKind {
    /// A short description of the kind, for "expected X, found Y" messages.
    pub fn describe(&self) -> &'static str {
        match self {
            ValueKind::Int(_) => "an integer",
            ValueKind::Float(_) => "a number",
            ValueKind::Bool(_) => "a boolean",
            ValueKind::Str(_) => "a string",
            ValueKind::Ident(_) => "a name",
            ValueKind::List(_) => "a list",
            ValueKind::Any => "`*`",
            ValueKind::Call { .. } => "a call",
        }
    }
}

/// `train MODEL { key: value ... }`.
#[derive(Clone, Debug, PartialEq)]
pub struct Train {
    /// The model this section trains.
    pub model: Ident,
    /// Settings in source order.
    pub settings: Vec<Setting>,
    /// The whole block.
    pub span: Span,
}

/// `key: value` inside a training section.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    /// The setting's name.
    pub key: Ident,
    /// Its value.
    pub value: Value,
    /// The whole setting.
    pub span: Span,
}
