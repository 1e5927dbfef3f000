//! The rewrite rules. Each has a name (what `--explain` counts) and only
//! adds a cheaper form of a class: fused kernels, folded weights, fewer
//! aliases. There are no associativity or commutativity rules.
//!
//! | rule | rewrite |
//! |---|---|
//! | `conv2d-relu` (and `-leaky_relu`, `-sigmoid`, `-tanh`) | `act(conv2d(x, w, b))` → conv2d with the activation as its epilogue |
//! | `dense-relu` (and the others) | likewise for dense |
//! | `relu-pool_grad` | a relu's gradient of a pooling gradient over the relu's output → the pooling gradient with the relu's mask (training graphs) |
//! | `elementwise-chain` | an elementwise op of an elementwise op → one map kernel (the backward ops `act_grad` of sigmoid/tanh, `mul_grad` and `scale` count as elementwise) |
//! | `conv2d-batchnorm-fold`, `dense-batchnorm-fold` | inference batchnorm folded into the weights and bias |
//! | `dropout-inference` | inference dropout → its input |
//! | `flatten-flatten`, `flatten-reshape`, `reshape-flatten`, `reshape-reshape` | a pair of aliases → one, or none when the shape comes back |
//! | `reshape-noop`, `flatten-noop` | an alias to the same shape → its input |
//! | `bptt-unroll-rnn`, `-lstm`, `-gru` | see [`super::unroll`] |
//!
//! Fusions only take an intermediate that nothing else uses (all parents
//! of its class lie in the consumer's class); otherwise the fused kernel
//! would recompute what another consumer still needs computed.

use super::cost::op_cost;
use super::lang::{
    add_entry, ent_of, is_none, Entry, Rule, TensorAnalysis, TensorGraph, TensorLang,
};
use crate::op::GradOp;
use crate::op::{Activation, MapBinary, MapExpr, MapUnary, Op};
use crate::shape::Shape;
use egg::{
    Applier, ENodeOrVar, Id, Language, Pattern, PatternAst, Rewrite, SearchMatches, Searcher,
    Subst, Symbol, Var,
};

/// Whether every parent of class `inner` lies in class `outer`: the value
/// is used only there, so fusing it into `outer` leaves nothing behind.
pub fn single_use(eg: &TensorGraph, inner: Id, outer: Id) -> bool {
    let outer = eg.find(outer);
    let inner = eg.find(inner);
    inner != outer && eg[inner].parents().all(|p| eg.find(p) == outer)
}

/// The class of pattern `ast` instantiated with `subst`, if present.
fn lookup(eg: &TensorGraph, ast: &PatternAst<TensorLang>, subst: &Subst) -> Option<Id> {
    let mut ids: Vec<Id> = Vec::new();
    for n in ast.as_ref() {
        let id = match n {
            ENodeOrVar::Var(v) => *subst.get(*v)?,
            ENodeOrVar::ENode(e) => {
                let e = e.clone().map_children(|c| ids[usize::from(c)]);
                eg.lookup(e)?
            }
        };
        ids.push(id);
    }
    ids.last().copied()
}

fn pattern(s: &str) -> Pattern<TensorLang> {
    s.parse()
        .unwrap_or_else(|e| panic!("rule pattern `{s}` does not parse: {e}"))
}

fn var(s: &str) -> Var {
    s.parse()
        .unwrap_or_else(|e| panic!("bad variable `{s}`: {e:?}"))
}

/// A rewrite whose left side's sub-pattern `inner` must be single-use.
struct SingleUse {
    inner: Pattern<TensorLang>,
    rhs: Pattern<TensorLang>,
}

impl Applier<TensorLang, TensorAnalysis> for SingleUse {
    fn apply_one(
        &self,
        eg: &mut TensorGraph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<TensorLang>>,
        rule: Symbol,
    ) -> Vec<Id> {
        match lookup(eg, &self.inner.ast, subst) {
            Some(inner) if single_use(eg, inner, eclass) => {
                self.rhs.apply_one(eg, eclass, subst, None, rule)
            }
            _ => vec![],
        }
    }

    fn vars(&self) -> Vec<Var> {
        self.rhs.vars()
    }
}

fn rule(
    name: &str,
    lhs: &str,
    applier: impl Applier<TensorLang, TensorAnalysis> + Send + Sync + 'static,
) -> Rule {
    Rewrite::new(name, pattern(lhs), applier)
        .unwrap_or_else(|e| panic!("rule `{name}` is malformed: {e}"))
}

/// Activation fusion: `act(op(x, w, b))` → `op_act(x, w, b)` for conv2d
/// and dense and the four elementwise activations.
fn activation_rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for op in ["conv2d", "dense"] {
        for act in ["relu", "leaky_relu", "sigmoid", "tanh"] {
            let inner = format!("({op} ?c ?x ?w ?b)");
            out.push(rule(
                &format!("{op}-{act}"),
                &format!("({act} ?r {inner})"),
                SingleUse {
                    inner: pattern(&inner),
                    rhs: pattern(&format!("({op}_act ?c ?x ?w ?b ?r)")),
                },
            ));
        }
    }
    out
}

/// Unions the matched class with `to`; the class ids that changed.
fn union(eg: &mut TensorGraph, eclass: Id, to: Id) -> Vec<Id> {
    if eg.union(eclass, to) {
        vec![eclass]
    } else {
        vec![]
    }
}

/// `(outer ?a (inner ?b ?x))` for aliases: one alias straight from `?x`,
/// or `?x` itself when the shape comes back.
struct AliasPair {
    outer: &'static str,
}

impl Applier<TensorLang, TensorAnalysis> for AliasPair {
    fn apply_one(
        &self,
        eg: &mut TensorGraph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<TensorLang>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let (Some(a), Some(x)) = (subst.get(var("?a")), subst.get(var("?x"))) else {
            return vec![];
        };
        let (a, x) = (*a, *x);
        if eg[x].data.is_some() && eg[x].data == eg[eclass].data {
            return union(eg, eclass, x);
        }
        let node = match self.outer {
            "flatten" => TensorLang::Flatten([a, x]),
            _ => TensorLang::Reshape([a, x]),
        };
        let id = eg.add(node);
        union(eg, eclass, id)
    }
}

/// `(op ?a ?x)` → `?x` when the shapes agree.
struct Noop;

impl Applier<TensorLang, TensorAnalysis> for Noop {
    fn apply_one(
        &self,
        eg: &mut TensorGraph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<TensorLang>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        match subst.get(var("?x")) {
            Some(x) if eg[*x].data.is_some() && eg[*x].data == eg[eclass].data => {
                union(eg, eclass, *x)
            }
            _ => vec![],
        }
    }
}

fn alias_rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for inner in ["flatten", "reshape"] {
        for outer in ["flatten", "reshape"] {
            out.push(rule(
                &format!("{inner}-{outer}"),
                &format!("({outer} ?a ({inner} ?b ?x))"),
                AliasPair { outer },
            ));
        }
    }
    out.push(rule("reshape-noop", "(reshape ?a ?x)", Noop));
    out.push(rule("flatten-noop", "(flatten ?a ?x)", Noop));
    out
}

/// `(x − μ)·(γ / √(σ² + ε)) + β` over inputs `[x, γ, β, μ, σ²]`, in the
/// order the batchnorm kernel computes it.
pub fn batchnorm_expr(eps: f32) -> MapExpr {
    MapExpr::Input(0)
        .binary(MapBinary::Sub, MapExpr::Input(3))
        .binary(MapBinary::Mul, inv_std(1, 4, eps))
        .binary(MapBinary::Add, MapExpr::Input(2))
}

/// `$g / √($v + ε)`.
fn inv_std(g: usize, v: usize, eps: f32) -> MapExpr {
    MapExpr::Input(g).binary(
        MapBinary::Div,
        MapExpr::Input(v)
            .binary(MapBinary::Add, MapExpr::Const(eps))
            .unary(MapUnary::Sqrt),
    )
}

/// An elementwise e-node as an expression over its operands.
fn elementwise(eg: &TensorGraph, node: &TensorLang) -> Option<(MapExpr, Vec<Id>)> {
    use TensorLang as L;
    let entry_op = |id: Id| ent_of(eg, id).map(|k| eg.analysis.entry(k).op.clone());
    let fold = |ch: &[Id], op: MapBinary| -> (MapExpr, Vec<Id>) {
        let e = (1..ch.len() - 1).fold(MapExpr::Input(0), |e, i| e.binary(op, MapExpr::Input(i)));
        (e, ch[1..].to_vec())
    };
    match node {
        L::Relu([e, x]) | L::LeakyRelu([e, x]) | L::Sigmoid([e, x]) | L::Tanh([e, x]) => {
            match entry_op(*e)? {
                Op::Activation(a) if a != Activation::Softmax => {
                    Some((MapExpr::Input(0).unary(MapUnary::Act(a)), vec![*x]))
                }
                _ => None,
            }
        }
        L::Add(ch) if ch.len() >= 3 => Some(fold(ch, MapBinary::Add)),
        L::Mul(ch) if ch.len() >= 3 => Some(fold(ch, MapBinary::Mul)),
        L::Average(ch) if ch.len() >= 3 => {
            let (e, ops) = fold(ch, MapBinary::Add);
            let n = ops.len() as f32;
            Some((e.binary(MapBinary::Div, MapExpr::Const(n)), ops))
        }
        L::Map(ch) => match entry_op(ch[0])? {
            Op::Map { expr } => Some((expr, ch[1..].to_vec())),
            _ => None,
        },
        // The elementwise backward ops, in the order their kernels compute
        // them (so a fused chain rounds the same way).
        L::Grad(ch) if ch.len() >= 2 => {
            let (y, dy) = (MapExpr::Input(0), MapExpr::Input(1));
            let one = || MapExpr::Const(1.0);
            match entry_op(ch[0])? {
                // dy·y·(1 − y)
                Op::Grad(GradOp::ActGrad(Activation::Sigmoid)) if ch.len() == 3 => Some((
                    dy.binary(MapBinary::Mul, y.clone())
                        .binary(MapBinary::Mul, one().binary(MapBinary::Sub, y)),
                    ch[1..].to_vec(),
                )),
                // dy·(1 − y·y)
                Op::Grad(GradOp::ActGrad(Activation::Tanh)) if ch.len() == 3 => Some((
                    dy.binary(
                        MapBinary::Mul,
                        one().binary(MapBinary::Sub, y.clone().binary(MapBinary::Mul, y)),
                    ),
                    ch[1..].to_vec(),
                )),
                Op::Grad(GradOp::MulGrad) if ch.len() >= 3 => Some(fold(ch, MapBinary::Mul)),
                Op::Grad(GradOp::Scale(k)) => Some((
                    MapExpr::Input(0).binary(MapBinary::Mul, MapExpr::Const(k)),
                    vec![ch[1]],
                )),
                _ => None,
            }
        }
        L::BatchNorm([e, x, g, b, m, v]) if eg.analysis.inference => match entry_op(*e)? {
            Op::BatchNorm { epsilon, .. } => {
                Some((batchnorm_expr(epsilon), vec![*x, *g, *b, *m, *v]))
            }
            _ => None,
        },
        _ => None,
    }
}

/// One candidate fusion: the map's expression, operands and the entry
/// whose name it takes.
struct Fusion {
    expr: MapExpr,
    operands: Vec<Id>,
    entry: Id,
}

/// Most operations one fused map may hold. A longer elementwise chain
/// becomes several maps: this bounds the kernel's size and the depth of
/// the expression that printing, code generation and dropping walk
/// recursively, so a chain of any length cannot exhaust the stack.
pub const MAX_MAP_OPS: usize = 64;

/// Every way of fusing an elementwise node of class `eclass` with an
/// elementwise node computing one of its full-shape, single-use operands.
///
/// Of the maps an operand's class already holds only the largest that
/// still fits under [`MAX_MAP_OPS`] is extended: fusing with every one of
/// them would give class `k` of a chain a map for each of its `k`
/// suffixes, quadratic work and memory in the chain's length.
fn fusions(eg: &TensorGraph, eclass: Id) -> Vec<Fusion> {
    let eclass = eg.find(eclass);
    let shape = &eg[eclass].data;
    let mut out = Vec::new();
    if shape.is_none() {
        return out;
    }
    for outer in &eg[eclass].nodes {
        let Some((e_expr, e_ops)) = elementwise(eg, outer) else {
            continue;
        };
        for (j, c) in e_ops.iter().enumerate() {
            let c = eg.find(*c);
            if eg[c].data != *shape || !single_use(eg, c, eclass) {
                continue;
            }
            let fits = |f: &MapExpr| e_expr.ops() + f.ops() <= MAX_MAP_OPS;
            let mut inners: Vec<(MapExpr, Vec<Id>)> = Vec::new();
            let mut largest_map: Option<(MapExpr, Vec<Id>)> = None;
            for inner in &eg[c].nodes {
                let Some((f_expr, f_ops)) = elementwise(eg, inner) else {
                    continue;
                };
                if !fits(&f_expr) || f_ops.iter().any(|o| eg.find(*o) == eclass) {
                    continue;
                }
                if matches!(inner, TensorLang::Map(_)) {
                    if largest_map
                        .as_ref()
                        .is_none_or(|(m, _)| f_expr.ops() > m.ops())
                    {
                        largest_map = Some((f_expr, f_ops));
                    }
                } else {
                    inners.push((f_expr, f_ops));
                }
            }
            inners.extend(largest_map);
            for (f_expr, f_ops) in inners {
                // Operands: E's before j, F's, E's after j; duplicates shared.
                let mut operands: Vec<Id> = Vec::new();
                let slot = |id: Id, operands: &mut Vec<Id>| -> usize {
                    let id = eg.find(id);
                    match operands.iter().position(|o| *o == id) {
                        Some(p) => p,
                        None => {
                            operands.push(id);
                            operands.len() - 1
                        }
                    }
                };
                let before: Vec<usize> =
                    e_ops[..j].iter().map(|o| slot(*o, &mut operands)).collect();
                let f_slots: Vec<usize> = f_ops.iter().map(|o| slot(*o, &mut operands)).collect();
                let after: Vec<usize> = e_ops[j + 1..]
                    .iter()
                    .map(|o| slot(*o, &mut operands))
                    .collect();
                // The map's first operand must have the output's shape.
                if eg[operands[0]].data != *shape {
                    continue;
                }
                let f_sub = f_expr.substitute(&|i| MapExpr::Input(f_slots[i]));
                let expr = e_expr.substitute(&|i| {
                    if i < j {
                        MapExpr::Input(before[i])
                    } else if i == j {
                        f_sub.clone()
                    } else {
                        MapExpr::Input(after[i - j - 1])
                    }
                });
                out.push(Fusion {
                    expr,
                    operands,
                    entry: outer.children()[0],
                });
            }
        }
    }
    out
}

/// Finds classes with a fusable elementwise chain.
struct ChainSearcher;

impl Searcher<TensorLang, TensorAnalysis> for ChainSearcher {
    fn search_eclass_with_limit(
        &self,
        eg: &TensorGraph,
        eclass: Id,
        _limit: usize,
    ) -> Option<SearchMatches<'_, TensorLang>> {
        (!fusions(eg, eclass).is_empty()).then(|| SearchMatches {
            eclass,
            substs: vec![Subst::with_capacity(0)],
            ast: None,
        })
    }

    fn vars(&self) -> Vec<Var> {
        vec![]
    }
}

/// Adds the fused maps found by [`ChainSearcher`].
struct ChainApplier;

impl Applier<TensorLang, TensorAnalysis> for ChainApplier {
    fn apply_one(
        &self,
        eg: &mut TensorGraph,
        eclass: Id,
        _subst: &Subst,
        _ast: Option<&PatternAst<TensorLang>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let mut changed = vec![];
        for f in fusions(eg, eclass) {
            let Some(k) = ent_of(eg, f.entry) else {
                continue;
            };
            let base = eg.analysis.entry(k).clone();
            let e = add_entry(
                eg,
                Entry {
                    op: Op::Map { expr: f.expr },
                    shape: None,
                    ..base
                },
            );
            let mut ch = vec![e];
            ch.extend(f.operands);
            let id = eg.add(TensorLang::Map(ch.into()));
            changed.extend(union(eg, eclass, id));
        }
        changed
    }
}

/// Inference batchnorm of a conv2d or dense output folded into its
/// weights: `w' = w·γ/√(σ²+ε)` per output channel and
/// `b' = (b − μ)·γ/√(σ²+ε) + β`, computed by two small map kernels over
/// the parameters (the weights file stays the original one).
struct BatchNormFold {
    inner: Pattern<TensorLang>,
    dense: bool,
}

impl Applier<TensorLang, TensorAnalysis> for BatchNormFold {
    fn apply_one(
        &self,
        eg: &mut TensorGraph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<TensorLang>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let get = |v: &str| subst.get(var(v)).copied();
        let (Some(n), Some(c), Some(x), Some(w), Some(b), Some(g), Some(be), Some(m), Some(v)) = (
            get("?n"),
            get("?c"),
            get("?x"),
            get("?w"),
            get("?b"),
            get("?g"),
            get("?be"),
            get("?m"),
            get("?v"),
        ) else {
            return vec![];
        };
        match lookup(eg, &self.inner.ast, subst) {
            Some(inner) if single_use(eg, inner, eclass) => {}
            _ => return vec![],
        }
        let (Some(nk), Some(ck)) = (ent_of(eg, n), ent_of(eg, c)) else {
            return vec![];
        };
        let Op::BatchNorm { epsilon, .. } = eg.analysis.entry(nk).op else {
            return vec![];
        };
        let conv = eg.analysis.entry(ck).clone();
        let has_bias = !is_none(eg, b);
        // Fold only where it is cheaper: two parameter maps against one
        // pass over the activations.
        let shape = |id: Id| eg[id].data.clone();
        let (Some(ws), Some(cs), Some(out)) = (shape(w), shape(g), shape(eclass)) else {
            return vec![];
        };
        let map = |k: usize| Op::Map {
            expr: MapExpr::Input(0).binary(MapBinary::Mul, MapExpr::Const(k as f32)),
        };
        let bias_ins: Vec<Option<&Shape>> = vec![Some(&cs); 4 + usize::from(has_bias)];
        let after = op_cost(&map(0), &[Some(&ws), Some(&cs), Some(&cs)], Some(&ws))
            + op_cost(&map(0), &bias_ins, Some(&cs))
            + if has_bias { 0.0 } else { cs.numel() as f64 };
        let before = op_cost(
            &Op::BatchNorm {
                epsilon,
                momentum: 0.0,
            },
            &[Some(&out), Some(&cs), Some(&cs), Some(&cs), Some(&cs)],
            Some(&out),
        );
        if after >= before {
            return vec![];
        }
        let named = |suffix: &str, expr: MapExpr| Entry {
            op: Op::Map { expr },
            name: format!("{}.{suffix}", conv.name),
            layer: conv.layer.clone(),
            span: conv.span,
            shape: None,
        };
        let we = add_entry(
            eg,
            named(
                "fold_weight",
                MapExpr::Input(0).binary(MapBinary::Mul, inv_std(1, 2, epsilon)),
            ),
        );
        let w2 = eg.add(TensorLang::Map(vec![we, w, g, v].into()));
        let b2 = if has_bias {
            let be2 = add_entry(eg, named("fold_bias", batchnorm_expr(epsilon)));
            eg.add(TensorLang::Map(vec![be2, b, g, be, m, v].into()))
        } else {
            // (0 − μ)·γ/√(σ²+ε) + β over [γ, β, μ, σ²].
            let expr = MapExpr::Const(0.0)
                .binary(MapBinary::Sub, MapExpr::Input(2))
                .binary(MapBinary::Mul, inv_std(0, 3, epsilon))
                .binary(MapBinary::Add, MapExpr::Input(1));
            let be2 = add_entry(eg, named("fold_bias", expr));
            eg.add(TensorLang::Map(vec![be2, g, be, m, v].into()))
        };
        let node = if self.dense {
            TensorLang::Dense([c, x, w2, b2])
        } else {
            TensorLang::Conv2d([c, x, w2, b2])
        };
        let id = eg.add(node);
        union(eg, eclass, id)
    }
}

fn inference_rules() -> Vec<Rule> {
    let mut out = vec![rule("dropout-inference", "(dropout ?a ?x)", Noop)];
    for (op, dense) in [("conv2d", false), ("dense", true)] {
        let inner = format!("({op} ?c ?x ?w ?b)");
        out.push(rule(
            &format!("{op}-batchnorm-fold"),
            &format!("(batchnorm ?n {inner} ?g ?be ?m ?v)"),
            BatchNormFold {
                inner: pattern(&inner),
                dense,
            },
        ));
    }
    out.push(
        Rewrite::new("elementwise-chain", ChainSearcher, ChainApplier)
            .unwrap_or_else(|e| panic!("elementwise-chain: {e}")),
    );
    out
}

/// `act_grad(relu)(y, pool_grad(x, dy))` with `x = y` → `pool_grad` with
/// the relu mask: the scatter writes the masked gradient directly instead
/// of writing it, reading it back and writing it again (the course CNN's
/// conv → relu → max-pool backward passes over the conv output's size
/// three fewer times).
struct ReluPoolGrad {
    /// The pooling gradient inside the match, `(grad ?p ?x ?dy)`.
    inner: Pattern<TensorLang>,
}

impl Applier<TensorLang, TensorAnalysis> for ReluPoolGrad {
    fn apply_one(
        &self,
        eg: &mut TensorGraph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<TensorLang>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let get = |v: &str| subst.get(var(v)).map(|id| eg.find(*id));
        let (Some(r), Some(y), Some(p), Some(x), Some(dy)) =
            (get("?r"), get("?y"), get("?p"), get("?x"), get("?dy"))
        else {
            return vec![];
        };
        if x != y {
            return vec![];
        }
        let (Some(rk), Some(pk)) = (ent_of(eg, r), ent_of(eg, p)) else {
            return vec![];
        };
        if eg.analysis.entry(rk).op != Op::Grad(GradOp::ActGrad(Activation::Relu)) {
            return vec![];
        }
        let pool = eg.analysis.entry(pk).clone();
        let Op::Grad(GradOp::PoolGrad {
            kind,
            size,
            stride,
            padding,
            relu_mask: false,
        }) = pool.op
        else {
            return vec![];
        };
        match lookup(eg, &self.inner.ast, subst) {
            Some(inner) if single_use(eg, inner, eclass) => {}
            _ => return vec![],
        }
        let e = add_entry(
            eg,
            Entry {
                op: Op::Grad(GradOp::PoolGrad {
                    kind,
                    size,
                    stride,
                    padding,
                    relu_mask: true,
                }),
                ..pool
            },
        );
        let id = eg.add(TensorLang::Grad(vec![e, x, dy].into()));
        union(eg, eclass, id)
    }
}

/// The rules to run: the inference-only ones when `inference`, the
/// fusions when `fusion`; alias cleanup always. (BPTT unrolling, also
/// always on, is [`super::unroll::rules`].)
pub fn rules(inference: bool, fusion: bool) -> Vec<Rule> {
    let mut out = if fusion { activation_rules() } else { vec![] };
    out.extend(alias_rules());
    if inference {
        out.extend(inference_rules());
    } else if fusion {
        out.push(rule(
            "relu-pool_grad",
            "(grad ?r ?y (grad ?p ?x ?dy))",
            ReluPoolGrad {
                inner: pattern("(grad ?p ?x ?dy)"),
            },
        ));
        out.push(
            Rewrite::new("elementwise-chain", ChainSearcher, ChainApplier)
                .unwrap_or_else(|e| panic!("elementwise-chain: {e}")),
        );
    }
    out
}
