//! The optimizer's egg language: one e-node kind per tensor op. Every op
//! node's first child is an *entry* leaf `#k` naming row `k` of a side
//! table of [`Entry`]s (the op's attributes, the node's name, layer and
//! span), so a rule such as
//! `(relu ?r (conv2d ?c ?x ?w ?b)) => (conv2d_act ?c ?x ?w ?b ?r)`
//! is one line and carries the attributes along. Inputs and parameters
//! are entry leaves themselves; absent optional operands are `none`.
//!
//! The analysis keeps each e-class's per-example shape (seeded from the
//! graph's inferred shapes; new nodes get theirs from
//! [`crate::ops::op_shape`]), which the cost model and the recurrent
//! unrolling read.

use crate::op::{Activation, Op};
use crate::shape::Shape;
use egg::{define_language, Analysis, DidMerge, EGraph, Id, Language};
use netc_lang::Span;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

/// A reference to row `k` of the entry table, written `#k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ent(pub u32);

impl fmt::Display for Ent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl FromStr for Ent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.strip_prefix('#')
            .and_then(|n| n.parse().ok())
            .map(Ent)
            .ok_or_else(|| format!("not an entry: {s}"))
    }
}

define_language! {
    /// Tensor ops. Children in brackets; `e` is the node's entry.
    pub enum TensorLang {
        // An absent optional operand.
        "none" = Nothing,
        // `[e, x, w, b]`.
        "conv2d" = Conv2d([Id; 4]),
        // `[e, x, w, b, act]`: conv2d with the activation of entry `act` fused.
        "conv2d_act" = Conv2dAct([Id; 5]),
        // `[e, x, w, b]`.
        "dense" = Dense([Id; 4]),
        // `[e, x, w, b, act]`.
        "dense_act" = DenseAct([Id; 5]),
        // `[e, x]`.
        "relu" = Relu([Id; 2]),
        // `[e, x]` (alpha in the entry).
        "leaky_relu" = LeakyRelu([Id; 2]),
        // `[e, x]`.
        "sigmoid" = Sigmoid([Id; 2]),
        // `[e, x]`.
        "tanh" = Tanh([Id; 2]),
        // `[e, x]`.
        "softmax" = Softmax([Id; 2]),
        // `[e, x]`: max or average pooling.
        "pool" = Pool([Id; 2]),
        // `[e, ids, table]`.
        "embedding" = Embedding([Id; 3]),
        // `[e, x]`.
        "flatten" = Flatten([Id; 2]),
        // `[e, x]`.
        "reshape" = Reshape([Id; 2]),
        // `[e, x]`.
        "dropout" = Dropout([Id; 2]),
        // `[e, x, gamma, beta, mean, var]`.
        "batchnorm" = BatchNorm([Id; 6]),
        // `[e, xs...]`.
        "add" = Add(Box<[Id]>),
        // `[e, xs...]`.
        "mul" = Mul(Box<[Id]>),
        // `[e, xs...]`.
        "average" = Average(Box<[Id]>),
        // `[e, xs...]`.
        "concat" = Concat(Box<[Id]>),
        // `[e, xs...]`: one elementwise kernel (expression in the entry).
        "map" = Map(Box<[Id]>),
        // `[e, x, w, u, b, rb, h0, mask]`: a whole recurrent layer (`h0`
        // its initial state, `none` for zeros; `mask` the sequence's mask,
        // `none` when every step is real).
        "recurrent" = Recurrent([Id; 8]),
        // `[e, x]`.
        "time_slice" = TimeSlice([Id; 2]),
        // `[e, x_t, u, rb, state]`: one cell step.
        "cell" = Cell([Id; 5]),
        // `[e, x]`.
        "slice" = Slice([Id; 2]),
        // `[e, xs...]`.
        "stack" = Stack(Box<[Id]>),
        // `[e, x]`.
        "repeat" = Repeat([Id; 2]),
        // `[e, mask, new, prev]` (`prev` `none` for zeros).
        "mask_step" = MaskStep([Id; 4]),
        // `[e, x, mask]`.
        "masked_pool" = MaskedPool([Id; 3]),
        // `[e, xs...]`: an autodiff op (loss, gradient, training-only form),
        // opaque to the rules: its shape is in its entry. Forward rules
        // still rewrite its operands, so a training graph is optimized
        // like a forward one.
        "grad" = Grad(Box<[Id]>),
        // A table entry: an input, a parameter, or an op's attributes.
        Ent(Ent),
    }
}

/// One row of the entry table.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The op (for inputs and parameters, the tensor itself).
    pub op: Op,
    /// The graph node's name.
    pub name: String,
    /// Its layer.
    pub layer: String,
    /// Where the layer was written.
    pub span: Span,
    /// The shape of an input or parameter.
    pub shape: Option<Shape>,
}

/// The e-graph analysis: the entry table and each class's shape.
#[derive(Debug, Default)]
pub struct TensorAnalysis {
    /// The entry table (`#k` is row `k`).
    pub entries: Vec<Entry>,
    /// Entries made by rules, interned so re-applying a rule adds nothing.
    interned: HashMap<String, u32>,
    /// Recurrent entries already unrolled.
    pub unrolled: HashSet<u32>,
    /// Whether rules valid only at inference (dropout removal, batchnorm
    /// folding) may fire.
    pub inference: bool,
}

/// The optimizer's e-graph.
pub type TensorGraph = EGraph<TensorLang, TensorAnalysis>;

/// A rewrite of the optimizer.
pub type Rule = egg::Rewrite<TensorLang, TensorAnalysis>;

impl TensorAnalysis {
    /// Adds (or finds) an entry; returns its index.
    pub fn intern(&mut self, e: Entry) -> Ent {
        let key = format!("{:?}|{}|{}|{:?}", e.op, e.name, e.layer, e.shape);
        if let Some(k) = self.interned.get(&key) {
            return Ent(*k);
        }
        let k = self.entries.len() as u32;
        self.entries.push(e);
        self.interned.insert(key, k);
        Ent(k)
    }

    /// The entry `#k`.
    pub fn entry(&self, k: Ent) -> &Entry {
        &self.entries[k.0 as usize]
    }
}

/// The entry leaf in class `id`, if it has one.
pub fn ent_of(egraph: &TensorGraph, id: Id) -> Option<Ent> {
    egraph[id].nodes.iter().find_map(|n| match n {
        TensorLang::Ent(k) => Some(*k),
        _ => None,
    })
}

/// Whether class `id` is the absent operand `none`.
pub fn is_none(egraph: &TensorGraph, id: Id) -> bool {
    egraph[id]
        .nodes
        .iter()
        .any(|n| matches!(n, TensorLang::Nothing))
}

/// Adds an entry leaf for `e`.
pub fn add_entry(egraph: &mut TensorGraph, e: Entry) -> Id {
    let k = egraph.analysis.intern(e);
    egraph.add(TensorLang::Ent(k))
}

/// The activation an entry stands for (for `*_act` nodes).
pub fn activation_of(op: &Op) -> Option<Activation> {
    match op {
        Op::Activation(a) if *a != Activation::Softmax => Some(*a),
        _ => None,
    }
}

/// The graph op of an op e-node, and its operand classes in slot order
/// (entries and absent operands left out). `None` for leaves.
pub fn node_op(egraph: &TensorGraph, node: &TensorLang) -> Option<(Op, Vec<Id>)> {
    use TensorLang as L;
    let entry = |id: Id| ent_of(egraph, id).map(|k| egraph.analysis.entry(k));
    let present = |ids: &[Id]| -> Vec<Id> {
        ids.iter()
            .copied()
            .filter(|i| !is_none(egraph, *i))
            .collect()
    };
    let with_act = |base: &Op, act: Id| {
        let mut op = base.clone();
        if let Op::Conv2d { activation, .. } | Op::Dense { activation, .. } = &mut op {
            *activation = entry(act).and_then(|e| activation_of(&e.op));
        }
        op
    };
    match node {
        L::Nothing | L::Ent(_) => None,
        L::Conv2dAct([e, x, w, b, act]) | L::DenseAct([e, x, w, b, act]) => {
            Some((with_act(&entry(*e)?.op, *act), present(&[*x, *w, *b])))
        }
        other => {
            let ch = other.children();
            let op = entry(ch[0])?.op.clone();
            Some((op, present(&ch[1..])))
        }
    }
}

/// The e-node kind for a graph op (children filled by the caller: the
/// entry first, then operands, `none` for absent optional ones).
pub fn make_node(op: &Op, children: Vec<Id>) -> TensorLang {
    use TensorLang as L;
    let arr = |n: usize| -> Vec<Id> { children[..n].to_vec() };
    let a2 = || -> [Id; 2] { [children[0], children[1]] };
    match op {
        Op::Conv2d { activation, .. } | Op::Dense { activation, .. } => {
            let dense = matches!(op, Op::Dense { .. });
            match (activation, children.len()) {
                (Some(_), 5) => {
                    let c: [Id; 5] = arr(5).try_into().unwrap_or([children[0]; 5]);
                    if dense {
                        L::DenseAct(c)
                    } else {
                        L::Conv2dAct(c)
                    }
                }
                _ => {
                    let c: [Id; 4] = arr(4).try_into().unwrap_or([children[0]; 4]);
                    if dense {
                        L::Dense(c)
                    } else {
                        L::Conv2d(c)
                    }
                }
            }
        }
        Op::Activation(Activation::Relu) => L::Relu(a2()),
        Op::Activation(Activation::LeakyRelu(_)) => L::LeakyRelu(a2()),
        Op::Activation(Activation::Sigmoid) => L::Sigmoid(a2()),
        Op::Activation(Activation::Tanh) => L::Tanh(a2()),
        Op::Activation(Activation::Softmax) => L::Softmax(a2()),
        Op::Pool2d { .. } | Op::GlobalPool2d { .. } => L::Pool(a2()),
        Op::Flatten => L::Flatten(a2()),
        Op::Reshape { .. } => L::Reshape(a2()),
        Op::Dropout { .. } => L::Dropout(a2()),
        Op::BatchNorm { .. } => L::BatchNorm(arr(6).try_into().unwrap_or([children[0]; 6])),
        Op::Add => L::Add(children.into()),
        Op::Mul => L::Mul(children.into()),
        Op::Average => L::Average(children.into()),
        Op::Concat { .. } => L::Concat(children.into()),
        Op::Map { .. } => L::Map(children.into()),
        Op::Recurrent { .. } => L::Recurrent(arr(8).try_into().unwrap_or([children[0]; 8])),
        Op::MaskStep { .. } => L::MaskStep(arr(4).try_into().unwrap_or([children[0]; 4])),
        Op::MaskedPool { .. } => L::MaskedPool(arr(3).try_into().unwrap_or([children[0]; 3])),
        Op::TimeSlice { .. } => L::TimeSlice(a2()),
        Op::Cell { .. } => L::Cell(arr(5).try_into().unwrap_or([children[0]; 5])),
        Op::Slice { .. } => L::Slice(a2()),
        Op::Stack => L::Stack(children.into()),
        Op::Repeat { .. } => L::Repeat(a2()),
        Op::Grad(_) => L::Grad(children.into()),
        Op::Embedding { .. } => L::Embedding(arr(3).try_into().unwrap_or([children[0]; 3])),
        // Inputs and parameters are entry leaves.
        Op::Input { .. } | Op::Param { .. } => L::Nothing,
    }
}

impl Analysis<TensorLang> for TensorAnalysis {
    type Data = Option<Shape>;

    fn make(egraph: &mut TensorGraph, enode: &TensorLang, _id: Id) -> Option<Shape> {
        match enode {
            TensorLang::Nothing => None,
            TensorLang::Ent(k) => egraph.analysis.entry(*k).shape.clone(),
            // Autodiff ops carry their shape (the gradient of a parameter
            // is not shaped like the op's first operand).
            TensorLang::Grad(ch) => {
                ent_of(egraph, ch[0]).and_then(|k| egraph.analysis.entry(k).shape.clone())
            }
            node => {
                let (op, ins) = node_op(egraph, node)?;
                let shapes: Vec<Option<&Shape>> =
                    ins.iter().map(|i| egraph[*i].data.as_ref()).collect();
                crate::ops::op_shape(&op, &shapes)
            }
        }
    }

    fn merge(&mut self, a: &mut Option<Shape>, b: Option<Shape>) -> DidMerge {
        match (a.as_ref(), b) {
            (None, Some(b)) => {
                *a = Some(b);
                DidMerge(true, false)
            }
            (Some(x), Some(y)) => {
                debug_assert_eq!(*x, y, "merged classes of different shapes");
                DidMerge(false, false)
            }
            (Some(_), None) => DidMerge(false, true),
            (None, None) => DidMerge(false, false),
        }
    }
}
