//! AST → dataflow graph: layer naming, name resolution (bindings may be
//! used before they are defined), cycle and unused-binding detection.

use crate::graph::{Graph, Node, NodeId};
use crate::op::Op;
use crate::ops::{expand, Builder, LayerKind, Src};
use crate::shape::Shape;
use netc_lang::ast::{Model, Pipeline, Statement, ValueKind};
use netc_lang::{did_you_mean, Diagnostic, Span};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A built graph, and which nodes had argument errors (shape inference
/// skips them so one mistake is reported once).
pub struct Built {
    /// The graph.
    pub graph: Graph,
    /// Nodes whose layer call was malformed.
    pub poisoned: HashSet<NodeId>,
}

/// Builds the graph of `model`, appending problems to `diags`.
pub fn build(model: &Model, diags: &mut Vec<Diagnostic>) -> Built {
    let mut cx = Cx {
        b: Builder {
            graph: Graph::new(&model.name.name),
            pending: Vec::new(),
            poisoned: Vec::new(),
        },
        defs: BTreeMap::new(),
        layer_names: HashMap::new(),
        counters: HashMap::new(),
        reserved: HashSet::new(),
        tensor_names: HashSet::new(),
        diags,
    };
    // Explicit layer names are reserved first so automatic names avoid them.
    // Tensor names are collected too, so a misplaced use of one reads as
    // "a tensor, not a layer" even before its definition.
    for s in &model.statements {
        match s {
            Statement::Input { name, .. } | Statement::Bind { name, .. } => {
                cx.tensor_names.insert(name.name.clone());
            }
            Statement::Pipeline(p) if p.stages.len() > 1 => {
                if let Some(last) = p.stages.last() {
                    cx.tensor_names.insert(last.name.name.clone());
                }
            }
            _ => {}
        }
        if let Statement::Bind { pipeline, .. } | Statement::Pipeline(pipeline) = s {
            for st in &pipeline.stages {
                if let Some(a) = &st.alias {
                    cx.reserved.insert(a.name.clone());
                }
            }
        }
    }
    let mut outputs = Vec::new();
    let mut dangling = Vec::new();
    for s in &model.statements {
        match s {
            Statement::Input {
                name,
                tokens,
                shape,
                span,
            } => {
                let variable = first_axis_any(shape);
                let dims = input_dims(shape, *tokens, cx.diags);
                let n = cx.b.graph.add(Node {
                    op: Op::Input {
                        tokens: *tokens,
                        variable,
                    },
                    name: name.name.clone(),
                    layer: name.name.clone(),
                    span: *span,
                    shape: dims.map(Shape),
                });
                if cx.b.graph.node(n).shape.is_none() {
                    cx.b.poisoned.push(n);
                }
                cx.b.graph.inputs.push(n);
                cx.define(&name.name, name.span, Src::Node(n));
            }
            Statement::Output { names, .. } => outputs.extend(names.iter().cloned()),
            Statement::Bind { name, pipeline, .. } => {
                if let Some(src) = cx.pipeline(pipeline, false) {
                    cx.define(&name.name, name.span, src);
                }
            }
            Statement::Pipeline(p) => {
                if let Some(src) = cx.pipeline(p, true) {
                    dangling.push((src, p.span));
                }
            }
        }
    }
    cx.resolve(outputs, dangling, &model.name.name, model.name.span);
    let Cx { b, .. } = cx;
    Built {
        graph: b.graph,
        poisoned: b.poisoned.into_iter().collect(),
    }
}

struct Def {
    src: Src,
    span: Span,
    used: bool,
}

struct Cx<'d> {
    b: Builder,
    defs: BTreeMap<String, Def>,
    layer_names: HashMap<String, Span>,
    counters: HashMap<String, usize>,
    reserved: HashSet<String>,
    tensor_names: HashSet<String>,
    diags: &'d mut Vec<Diagnostic>,
}

/// Whether an input's first dimension is written `*` (a sequence of any
/// length).
fn first_axis_any(shape: &netc_lang::ast::Value) -> bool {
    matches!(&shape.kind, ValueKind::List(items)
        if items.first().is_some_and(|v| v.kind == ValueKind::Any))
}

/// The dimensions of an input declaration. A `*` time axis (allowed first,
/// in a sequence `[*, F]` or token input `tokens[*]`) is checked with the
/// placeholder length [`crate::masking::PLACEHOLDER_STEPS`]; the real one
/// comes from the data (`masking::instantiate`).
fn input_dims(
    shape: &netc_lang::ast::Value,
    tokens: bool,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<usize>> {
    let ValueKind::List(items) = &shape.kind else {
        return None;
    };
    let sequence_rank = if tokens { 1 } else { 2 };
    if let Some((i, it)) = items
        .iter()
        .enumerate()
        .find(|(_, v)| v.kind == ValueKind::Any)
    {
        if i > 0 || items.len() != sequence_rank {
            let want = if tokens { "`tokens[*]`" } else { "`[*, F]`" };
            diags.push(
                Diagnostic::error(
                    "E0120",
                    "only the time axis of a sequence input can have any length",
                    it.span,
                )
                .with_label("`*` is not allowed here")
                .with_note(format!(
                    "help: a sequence of any length is written {want}: `*` time steps{}",
                    if tokens { "" } else { " of F features" }
                )),
            );
            return None;
        }
    }
    if items.is_empty() {
        diags.push(
            Diagnostic::error("E0120", "an input needs at least one dimension", shape.span)
                .with_label("empty shape")
                .with_note("help: images are [H, W, C], sequences [T, F], vectors [F]"),
        );
        return None;
    }
    let mut dims = Vec::new();
    for it in items {
        match it.kind {
            ValueKind::Any => dims.push(crate::masking::PLACEHOLDER_STEPS),
            ValueKind::Int(i) if i >= 1 && i <= crate::shape::MAX_DIM as i64 => {
                dims.push(i as usize)
            }
            ValueKind::Int(i) if i > crate::shape::MAX_DIM as i64 => {
                diags.push(
                    Diagnostic::error(
                        "E0120",
                        format!(
                            "input dimension {i} is larger than the limit {} (2^24)",
                            crate::shape::MAX_DIM
                        ),
                        it.span,
                    )
                    .with_label("dimension too large")
                    .with_note(format!(
                        "netc limits each dimension to 2^24 = {} and each tensor to 2^36 = {} elements",
                        crate::shape::MAX_DIM,
                        crate::shape::MAX_ELEMENTS
                    )),
                );
                return None;
            }
            _ => {
                diags.push(
                    Diagnostic::error(
                        "E0120",
                        "input dimensions must be positive integers",
                        it.span,
                    )
                    .with_label(format!("found {}", netc_lang::printer::print_value(it)))
                    .with_note("the batch axis is implicit: write only per-example dimensions"),
                );
                return None;
            }
        }
    }
    Some(dims)
}

impl Cx<'_> {
    fn define(&mut self, name: &str, span: Span, src: Src) {
        if LayerKind::from_name(name).is_some() {
            self.diags.push(
                Diagnostic::error(
                    "E0117",
                    format!("`{name}` is a layer and cannot name a tensor"),
                    span,
                )
                .with_label("reserved layer name"),
            );
        }
        if let Some(prev) = self.defs.get(name) {
            self.diags.push(
                Diagnostic::error("E0111", format!("`{name}` is defined twice"), span)
                    .with_label("redefined here")
                    .with_secondary(prev.span, "first defined here"),
            );
            return;
        }
        self.defs.insert(
            name.to_string(),
            Def {
                src,
                span,
                used: false,
            },
        );
    }

    fn layer_name(&mut self, kind: &str, alias: Option<&netc_lang::ast::Ident>) -> String {
        if let Some(a) = alias {
            if let Some(prev) = self.layer_names.get(&a.name) {
                self.diags.push(
                    Diagnostic::error(
                        "E0111",
                        format!("layer name `{}` is used twice", a.name),
                        a.span,
                    )
                    .with_label("second layer with this name")
                    .with_secondary(*prev, "first used here"),
                );
            } else {
                self.layer_names.insert(a.name.clone(), a.span);
            }
            return a.name.clone();
        }
        loop {
            let c = self.counters.entry(kind.to_string()).or_insert(0);
            *c += 1;
            let name = format!("{kind}_{c}");
            if !self.reserved.contains(&name) {
                return name;
            }
        }
    }

    /// Builds a pipeline; returns its value. `bare` pipelines may end in a
    /// new binding name.
    fn pipeline(&mut self, p: &Pipeline, bare: bool) -> Option<Src> {
        let mut cur: Option<Src> = None;
        let last = p.stages.len().saturating_sub(1);
        for (i, st) in p.stages.iter().enumerate() {
            let name = &st.name.name;
            let kind = LayerKind::from_name(name);
            if st.args.is_some() || kind.is_some() {
                let Some(kind) = kind else {
                    let mut d =
                        Diagnostic::error("E0101", format!("unknown layer `{name}`"), st.name.span)
                            .with_label("not a layer");
                    if let Some(s) = did_you_mean(name, LayerKind::ALL.iter().map(|k| k.name())) {
                        d = d.with_note(format!("help: did you mean `{s}`?"));
                    }
                    self.diags.push(d);
                    cur = Some(self.placeholder(cur.take(), st.span));
                    continue;
                };
                let lname = self.layer_name(name, st.alias.as_ref());
                let args = st.args.as_deref().unwrap_or(&[]);
                let n = expand(
                    &mut self.b,
                    kind,
                    &lname,
                    st.span,
                    args,
                    cur.take(),
                    self.diags,
                );
                cur = Some(Src::Node(n));
                continue;
            }
            if let Some(a) = &st.alias {
                self.diags.push(
                    Diagnostic::error(
                        "E0115",
                        format!("`as` names a layer, but `{name}` is a tensor"),
                        a.span,
                    )
                    .with_label("`as` here"),
                );
            }
            if i == 0 {
                cur = Some(Src::Ref(name.clone(), st.name.span));
            } else if i == last && bare {
                self.define(name, st.name.span, cur.take()?);
                return None;
            } else if self.is_binding_somewhere(name) {
                let mut d = Diagnostic::error(
                    "E0115",
                    format!("`{name}` is a tensor, not a layer"),
                    st.name.span,
                )
                .with_label("a tensor in the middle of a pipeline");
                d = if i == last {
                    d.with_note(format!(
                        "help: `x = ... -> {name}` both binds and names the result; write `... -> {name}` without `x =`"
                    ))
                } else {
                    d.with_note(format!(
                        "help: to combine tensors use `add({name})` or `concat({name})`"
                    ))
                };
                self.diags.push(d);
                cur = Some(self.placeholder(cur.take(), st.span));
            } else {
                let mut d =
                    Diagnostic::error("E0101", format!("unknown layer `{name}`"), st.name.span)
                        .with_label("not a layer");
                if let Some(s) = did_you_mean(name, LayerKind::ALL.iter().map(|k| k.name())) {
                    d = d.with_note(format!("help: did you mean `{s}`?"));
                }
                self.diags.push(d);
                cur = Some(self.placeholder(cur.take(), st.span));
            }
        }
        cur
    }

    /// Stands in for a stage that could not be built, so the rest of the
    /// pipeline is still resolved (its bindings defined, its references
    /// used) and nothing downstream reports a follow-on error.
    fn placeholder(&mut self, input: Option<Src>, span: Span) -> Src {
        let n = self.b.graph.add(Node {
            op: Op::Input {
                tokens: false,
                variable: false,
            },
            name: "<error>".into(),
            layer: "<error>".into(),
            span,
            shape: None,
        });
        if let Some(x) = input {
            self.b.feed(&x, n, 0);
        }
        self.b.poisoned.push(n);
        Src::Node(n)
    }

    fn is_binding_somewhere(&self, name: &str) -> bool {
        self.tensor_names.contains(name)
    }

    /// Follows binding-to-binding aliases to a node.
    fn lookup(&mut self, name: &str, at: Span) -> Option<NodeId> {
        let mut seen = HashSet::new();
        let mut cur = name.to_string();
        loop {
            let Some(def) = self.defs.get_mut(&cur) else {
                let mut d = Diagnostic::error("E0110", format!("`{cur}` is not defined"), at)
                    .with_label("undefined name");
                if let Some(s) = did_you_mean(&cur, self.defs.keys().map(String::as_str)) {
                    d = d.with_note(format!("help: did you mean `{s}`?"));
                }
                self.diags.push(d);
                return None;
            };
            def.used = true;
            match &def.src {
                Src::Node(n) => return Some(*n),
                Src::Ref(next, _) => {
                    if !seen.insert(cur.clone()) {
                        self.diags.push(
                            Diagnostic::error(
                                "E0112",
                                format!("`{name}` is defined in terms of itself"),
                                at,
                            )
                            .with_label("cyclic definition"),
                        );
                        return None;
                    }
                    cur = next.clone();
                }
            }
        }
    }

    fn resolve(
        &mut self,
        outputs: Vec<netc_lang::ast::Ident>,
        dangling: Vec<(Src, Span)>,
        model: &str,
        model_span: Span,
    ) {
        let pending = std::mem::take(&mut self.b.pending);
        for (to, slot, name, span) in pending {
            if let Some(n) = self.lookup(&name, span) {
                self.b.graph.connect(n, to, slot);
            } else {
                self.b.poisoned.push(to);
            }
        }
        if outputs.is_empty() {
            self.diags.push(
                Diagnostic::error("E0113", format!("model `{model}` declares no output"), model_span)
                    .with_label("no `output` statement")
                    .with_note("help: end a pipeline with a name and declare it: `... -> probs` then `output probs`"),
            );
        }
        for o in outputs {
            if let Some(n) = self.lookup(&o.name, o.span) {
                self.b.graph.outputs.push((o.name.clone(), n));
            }
        }
        if self.b.graph.inputs.is_empty() {
            self.diags.push(
                Diagnostic::error(
                    "E0113",
                    format!("model `{model}` declares no input"),
                    model_span,
                )
                .with_label("no `input` statement")
                .with_note("help: declare one, e.g. `input image: [28, 28, 1]`"),
            );
        }
        for (src, span) in dangling {
            if let Src::Node(_) = src {
                self.diags.push(
                    Diagnostic::warning("W0118", "the result of this pipeline is never used", span)
                        .with_label("result dropped")
                        .with_note(
                            "help: end it with a name (`... -> out`) and use or output that name",
                        ),
                );
            }
        }
        for (name, def) in &self.defs {
            if !def.used {
                self.diags.push(
                    Diagnostic::warning("W0116", format!("`{name}` is never used"), def.span)
                        .with_label("unused tensor")
                        .with_note(format!(
                            "help: use it in a pipeline or declare `output {name}`"
                        )),
                );
            }
        }
        self.report_cycles();
    }

    fn report_cycles(&mut self) {
        let g = &self.b.graph.g;
        // Kosaraju's walk is iterative; petgraph's Tarjan recurses once per
        // node of a path and overflows the stack on a long pipeline.
        for scc in petgraph::algo::kosaraju_scc(g) {
            let is_cycle = scc.len() > 1 || g.contains_edge(scc[0], scc[0]);
            if !is_cycle {
                continue;
            }
            let mut nodes = scc.clone();
            nodes.sort();
            let names: Vec<&str> = nodes.iter().map(|n| g[*n].name.as_str()).collect();
            let first = &g[nodes[0]];
            let mut d = Diagnostic::error(
                "E0112",
                format!(
                    "cycle in the dataflow graph: {} → {}",
                    names.join(" → "),
                    names[0]
                ),
                first.span,
            )
            .with_label("this layer depends on its own output");
            for n in nodes.iter().skip(1) {
                d = d.with_secondary(g[*n].span, "part of the cycle");
            }
            self.diags.push(d);
        }
    }
}
