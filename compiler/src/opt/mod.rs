//! The optimizer: equality saturation with egg. A checked graph becomes
//! an e-graph ([`convert`]), the rules ([`rules`], [`unroll`]) add cheaper
//! equivalent forms under explicit runner limits, and the cheapest form
//! under the memory-traffic cost model ([`cost`]) is extracted back into a
//! graph with the same inputs, outputs and parameter names, so weights
//! files stay valid. [`explain`] renders what happened.
//!
//! `optimize` is pure and never fails: if anything about the result is
//! inconsistent it returns the input graph and says why in the report.
//!
//! Its work is bounded whatever the model's size: the runner limits are
//! checked between single rule applications (not only between
//! iterations), and a graph of more than [`REGION_NODES`] layers is
//! optimized in consecutive regions of that many layers, each under the
//! time left; a region past the limits keeps its unoptimized form and
//! the report says so.

pub mod convert;
pub mod cost;
pub mod explain;
pub mod extract;
pub mod lang;
pub mod rules;
pub mod unroll;

use crate::graph::{Graph, Node, NodeId};
use crate::op::Op;
use egg::{EGraph, Rewrite, RewriteScheduler, Runner, SearchMatches, StopReason};
use lang::{TensorAnalysis, TensorLang};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Most layers (graph nodes other than inputs and parameters) optimized
/// together. Extraction's cost grows with the square of a region's depth,
/// so a longer model is split into regions of this many layers in
/// topological order; nothing fuses across a region's border. Every
/// example model fits in one region (the largest, the bidirectional LSTM
/// tagger's training graph, has 892 layers).
pub const REGION_NODES: usize = 1000;

/// Runner limits and which rules may fire.
#[derive(Clone, Debug, PartialEq)]
pub struct OptOptions {
    /// Most saturation iterations.
    pub iter_limit: usize,
    /// Most e-nodes.
    pub node_limit: usize,
    /// Most time spent saturating.
    pub time_limit: Duration,
    /// Inference-only rules (dropout removal, batchnorm folding).
    pub inference: bool,
    /// Fusion rules (activation epilogues, elementwise chains into maps).
    /// Off in the pass before autodiff, which has gradient rules for the
    /// plain ops and the unrolled cells but not for fused kernels.
    pub fusion: bool,
}

impl Default for OptOptions {
    /// 30 iterations, 100 000 e-nodes, one second; inference rules on.
    fn default() -> Self {
        OptOptions {
            iter_limit: 30,
            node_limit: 100_000,
            time_limit: Duration::from_secs(1),
            inference: true,
            fusion: true,
        }
    }
}

impl OptOptions {
    /// The pass before autodiff: BPTT unrolling and alias cleanup only
    /// (no inference rewrites, no fusion), default limits.
    pub fn before_autodiff() -> Self {
        OptOptions {
            inference: false,
            fusion: false,
            ..OptOptions::default()
        }
    }
}

/// What the optimizer did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OptReport {
    /// The limits it ran under.
    pub options: OptOptions,
    /// Why saturation stopped (`saturated`, `iteration limit 30`, ...).
    pub stop_reason: String,
    /// Iterations run.
    pub iterations: usize,
    /// E-nodes and e-classes at the end.
    pub egraph_nodes: usize,
    /// E-classes at the end.
    pub egraph_classes: usize,
    /// Graph nodes before and after.
    pub nodes_before: usize,
    /// Graph nodes after.
    pub nodes_after: usize,
    /// Graph cost (memory traffic, [`cost::graph_cost`]) before.
    pub cost_before: f64,
    /// Graph cost after.
    pub cost_after: f64,
    /// How often each rule fired (added something new), in rule order;
    /// rules that never fired are listed with 0.
    pub fired: Vec<(String, usize)>,
    /// Time spent in total.
    pub time: Duration,
    /// Why the input graph was returned unchanged, if it was.
    pub fallback: Option<String>,
    /// Regions of a large graph left unoptimized, and why (the rest of
    /// the graph was optimized).
    pub warnings: Vec<String>,
}

impl OptReport {
    /// How often rule `name` fired.
    pub fn count(&self, name: &str) -> usize {
        self.fired
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, c)| *c)
    }
}

/// Optimizes a checked graph (every node shaped). Pure: `g` is not
/// changed; the result has `g`'s inputs, outputs and parameter names.
pub fn optimize(g: &Graph, opts: &OptOptions) -> (Graph, OptReport) {
    let layers =
        g.g.node_indices()
            .filter(|&n| !matches!(g.node(n).op, Op::Input { .. } | Op::Param { .. }))
            .count();
    if layers <= REGION_NODES {
        optimize_whole(g, opts)
    } else {
        optimize_regions(g, opts)
    }
}

/// Runs every rule, checking the runner's node and time limits before
/// each search and between single applications, so that one rule with
/// many matches cannot run far past them inside an iteration (egg checks
/// only after a rule's whole batch).
struct Budget {
    node_limit: usize,
    deadline: Instant,
}

impl Budget {
    fn spent(&self, eg: &EGraph<TensorLang, TensorAnalysis>) -> bool {
        eg.total_size() > self.node_limit || Instant::now() > self.deadline
    }
}

impl RewriteScheduler<TensorLang, TensorAnalysis> for Budget {
    fn search_rewrite<'a>(
        &mut self,
        _iteration: usize,
        egraph: &EGraph<TensorLang, TensorAnalysis>,
        rewrite: &'a Rewrite<TensorLang, TensorAnalysis>,
    ) -> Vec<SearchMatches<'a, TensorLang>> {
        if self.spent(egraph) {
            return vec![];
        }
        rewrite.search(egraph)
    }

    fn apply_rewrite(
        &mut self,
        _iteration: usize,
        egraph: &mut EGraph<TensorLang, TensorAnalysis>,
        rewrite: &Rewrite<TensorLang, TensorAnalysis>,
        matches: Vec<SearchMatches<TensorLang>>,
    ) -> usize {
        let mut applied = 0;
        for m in &matches {
            if self.spent(egraph) {
                break;
            }
            applied += rewrite.apply(egraph, std::slice::from_ref(m)).len();
        }
        applied
    }
}

/// The report of `g` before any rewrite.
fn report_before(g: &Graph, opts: &OptOptions) -> OptReport {
    OptReport {
        options: opts.clone(),
        nodes_before: g.g.node_count(),
        cost_before: cost::graph_cost(g),
        ..OptReport::default()
    }
}

/// `g` as it was, with `report` saying why the optimizer was not applied.
fn unchanged(g: &Graph, mut report: OptReport, why: String, start: Instant) -> (Graph, OptReport) {
    report.fallback = Some(why);
    report.nodes_after = report.nodes_before;
    report.cost_after = report.cost_before;
    report.time = start.elapsed();
    (g.clone(), report)
}

fn optimize_whole(g: &Graph, opts: &OptOptions) -> (Graph, OptReport) {
    let start = Instant::now();
    let mut report = report_before(g, opts);
    let fail = |report: OptReport, why: String| unchanged(g, report, why, start);
    let (eg, class) = match convert::to_egraph(g, opts.inference) {
        Ok(x) => x,
        Err(e) => return fail(report, e),
    };
    let mut rules = rules::rules(opts.inference, opts.fusion);
    rules.extend(unroll::rules());
    let runner = Runner::default()
        .with_egraph(eg)
        .with_iter_limit(opts.iter_limit)
        .with_node_limit(opts.node_limit)
        .with_time_limit(opts.time_limit)
        .with_scheduler(Budget {
            node_limit: opts.node_limit,
            deadline: start + opts.time_limit,
        })
        .run(&rules);
    report.stop_reason = match &runner.stop_reason {
        Some(StopReason::Saturated) => "saturated".into(),
        Some(StopReason::IterationLimit(n)) => format!("iteration limit ({n})"),
        Some(StopReason::NodeLimit(n)) => format!("e-node limit ({n})"),
        Some(StopReason::TimeLimit(t)) => format!("time limit ({t:.3} s)"),
        Some(StopReason::Other(s)) => s.clone(),
        None => "not run".into(),
    };
    report.iterations = runner.iterations.len();
    report.egraph_nodes = runner.egraph.total_number_of_nodes();
    report.egraph_classes = runner.egraph.number_of_classes();
    let mut fired: HashMap<String, usize> = HashMap::new();
    for it in &runner.iterations {
        for (name, n) in &it.applied {
            *fired.entry(name.to_string()).or_default() += n;
        }
    }
    report.fired = rules
        .iter()
        .map(|r| {
            (
                r.name.to_string(),
                fired.get(r.name.as_str()).copied().unwrap_or(0),
            )
        })
        .collect();
    let mut out = match convert::extract(g, &runner.egraph, &class) {
        Ok(o) => o,
        Err(e) => return fail(report, e),
    };
    if let Err(e) = check_result(g, &mut out) {
        return fail(report, e);
    }
    report.nodes_after = out.g.node_count();
    report.cost_after = cost::graph_cost(&out);
    report.time = start.elapsed();
    (out, report)
}

/// [`optimize_whole`] over consecutive regions of at most
/// [`REGION_NODES`] layers. Each region becomes a graph of its own: the
/// values it reads from earlier regions are inputs, the values read after
/// it (or by the model's outputs) are outputs, and the parameters it uses
/// come along by name. The optimized regions are joined again, so the
/// result has `g`'s interface; a region that does not optimize (or for
/// which no time is left) is kept as it was.
fn optimize_regions(g: &Graph, opts: &OptOptions) -> (Graph, OptReport) {
    let start = Instant::now();
    let mut report = report_before(g, opts);
    let fail = |report: OptReport, why: String| unchanged(g, report, why, start);
    let Some(order) = g.topo_order() else {
        return fail(report, "the graph has a cycle".into());
    };
    let is_source = |n: NodeId| matches!(g.node(n).op, Op::Input { .. } | Op::Param { .. });
    let layers: Vec<NodeId> = order.into_iter().filter(|&n| !is_source(n)).collect();
    let regions: Vec<&[NodeId]> = layers.chunks(REGION_NODES).collect();
    let mut out = Graph::new(g.name.clone());
    // Where each node of `g` that later regions read lives in `out`.
    let mut placed: HashMap<NodeId, NodeId> = HashMap::new();
    for &i in &g.inputs {
        let nid = out.add(g.node(i).clone());
        out.inputs.push(nid);
        placed.insert(i, nid);
    }
    let model_outputs: HashSet<NodeId> = g.outputs.iter().map(|(_, o)| *o).collect();
    let mut fired: Vec<(String, usize)> = Vec::new();
    let mut stops: Vec<String> = Vec::new();
    let mut skipped = 0usize;
    for (r, region) in regions.iter().enumerate() {
        let (sub, origin) = region_graph(g, region, &model_outputs);
        let left = opts.time_limit.saturating_sub(start.elapsed());
        let (o, rr) = if left.is_zero() {
            skipped += 1;
            (sub.clone(), None)
        } else {
            let (o, rr) = optimize_whole(
                &sub,
                &OptOptions {
                    time_limit: left,
                    ..opts.clone()
                },
            );
            (o, Some(rr))
        };
        if let Some(rr) = rr {
            report.iterations += rr.iterations;
            report.egraph_nodes = report.egraph_nodes.max(rr.egraph_nodes);
            report.egraph_classes = report.egraph_classes.max(rr.egraph_classes);
            if !stops.contains(&rr.stop_reason) {
                stops.push(rr.stop_reason.clone());
            }
            for (name, n) in &rr.fired {
                match fired.iter_mut().find(|(f, _)| f == name) {
                    Some(f) => f.1 += n,
                    None => fired.push((name.clone(), *n)),
                }
            }
            if let Some(why) = rr.fallback {
                report.warnings.push(format!(
                    "region {} of {} (layers {}..{}) left unoptimized: {why}",
                    r + 1,
                    regions.len(),
                    r * REGION_NODES + 1,
                    r * REGION_NODES + region.len()
                ));
            }
        }
        if let Err(e) = join(g, &o, &origin, &mut out, &mut placed) {
            return fail(report, e);
        }
    }
    if skipped > 0 {
        report.warnings.push(format!(
            "time limit ({:.1} s) reached: the last {skipped} of {} regions left unoptimized",
            opts.time_limit.as_secs_f64(),
            regions.len()
        ));
    }
    for (name, o) in &g.outputs {
        match placed.get(o) {
            Some(&nid) => out.outputs.push((name.clone(), nid)),
            None => return fail(report, format!("output `{name}` was lost")),
        }
    }
    report.stop_reason = format!(
        "{} ({} regions of at most {REGION_NODES} layers)",
        stops.join(", "),
        regions.len()
    );
    report.fired = fired;
    if let Err(e) = check_result(g, &mut out) {
        return fail(report, e);
    }
    report.nodes_after = out.g.node_count();
    report.cost_after = cost::graph_cost(&out);
    report.time = start.elapsed();
    (out, report)
}

/// The graph of one region, and the node of `g` each of its inputs and
/// outputs stands for (by the region's node name).
fn region_graph(
    g: &Graph,
    region: &[NodeId],
    model_outputs: &HashSet<NodeId>,
) -> (Graph, HashMap<String, NodeId>) {
    let inside: HashSet<NodeId> = region.iter().copied().collect();
    let mut sub = Graph::new(g.name.clone());
    let mut local: HashMap<NodeId, NodeId> = HashMap::new();
    let mut origin: HashMap<String, NodeId> = HashMap::new();
    for &id in region {
        // Topological order: a layer of the region is added before any
        // user of it, so it is never mistaken for an outside value.
        let to = sub.add(g.node(id).clone());
        local.insert(id, to);
        for (slot, i) in slots(g, id) {
            let from = match local.get(&i) {
                Some(&l) => l,
                None => {
                    let n = g.node(i);
                    let param = matches!(n.op, Op::Param { .. });
                    let node = if param {
                        n.clone()
                    } else {
                        // A value from an earlier region (or a model input):
                        // an input here, named uniquely so the join finds it.
                        Node {
                            // A token input stays one, for its embedding.
                            op: match n.op {
                                Op::Input { tokens, variable } => Op::Input { tokens, variable },
                                _ => Op::Input {
                                    tokens: false,
                                    variable: false,
                                },
                            },
                            name: format!("{}#{}", n.name, i.index()),
                            ..n.clone()
                        }
                    };
                    origin.insert(node.name.clone(), i);
                    let l = sub.add(node);
                    if !param {
                        sub.inputs.push(l);
                    }
                    local.insert(i, l);
                    l
                }
            };
            sub.connect(from, to, slot);
        }
        let read_later =
            model_outputs.contains(&id) || g.users_of(id).iter().any(|u| !inside.contains(u));
        if read_later {
            let name = format!("#{}", id.index());
            origin.insert(name.clone(), id);
            sub.outputs.push((name, local[&id]));
        }
    }
    (sub, origin)
}

/// The inputs of `id` with the slots their edges carry, by slot.
fn slots(g: &Graph, id: NodeId) -> Vec<(usize, NodeId)> {
    use petgraph::visit::EdgeRef;
    let mut v: Vec<(usize, NodeId)> =
        g.g.edges_directed(id, petgraph::Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
    v.sort();
    v
}

/// Adds optimized region `o` to `out`: its inputs are the nodes already
/// placed for what they stand for, its parameters are shared by name, and
/// what it outputs is recorded in `placed`.
fn join(
    g: &Graph,
    o: &Graph,
    origin: &HashMap<String, NodeId>,
    out: &mut Graph,
    placed: &mut HashMap<NodeId, NodeId>,
) -> Result<(), String> {
    let order = o.topo_order().ok_or("a region's result has a cycle")?;
    let mut here: HashMap<NodeId, NodeId> = HashMap::new();
    for id in order {
        let n = o.node(id);
        let nid = match n.op {
            Op::Input { .. } => {
                let src = origin
                    .get(&n.name)
                    .ok_or_else(|| format!("a region reads an unknown value `{}`", n.name))?;
                *placed
                    .get(src)
                    .ok_or_else(|| format!("a region reads `{}` before it exists", n.name))?
            }
            Op::Param { .. } => {
                let src = origin
                    .get(&n.name)
                    .copied()
                    .ok_or_else(|| format!("a region uses an unknown parameter `{}`", n.name))?;
                *placed
                    .entry(src)
                    .or_insert_with(|| out.add(g.node(src).clone()))
            }
            _ => {
                let nid = out.add(n.clone());
                for (slot, i) in slots(o, id) {
                    out.connect(here[&i], nid, slot);
                }
                nid
            }
        };
        here.insert(id, nid);
    }
    for (name, oid) in &o.outputs {
        let src = origin
            .get(name)
            .ok_or_else(|| format!("a region has an unknown output `{name}`"))?;
        placed.insert(*src, here[oid]);
    }
    Ok(())
}

/// Re-infers the result's shapes and checks it kept the interface.
fn check_result(g: &Graph, out: &mut Graph) -> Result<(), String> {
    let diags = crate::infer::infer_shapes(out, &Default::default());
    if let Some(d) = diags.iter().find(|d| d.is_error()) {
        return Err(format!(
            "shape inference failed on the result: {}",
            d.message
        ));
    }
    let names = |g: &Graph, pick: &dyn Fn(&Op) -> bool| {
        let mut v: Vec<(String, Option<Vec<usize>>)> =
            g.g.node_indices()
                .filter(|n| pick(&g.node(*n).op))
                .map(|n| (g.node(n).name.clone(), g.node(n).shape.clone().map(|s| s.0)))
                .collect();
        v.sort();
        v
    };
    let is_param = |op: &Op| matches!(op, Op::Param { .. });
    if names(g, &is_param) != names(out, &is_param) {
        return Err("the result's parameters differ from the model's".into());
    }
    let outs = |g: &Graph| -> Vec<(String, Option<Vec<usize>>)> {
        g.outputs
            .iter()
            .map(|(n, id)| (n.clone(), g.node(*id).shape.clone().map(|s| s.0)))
            .collect()
    };
    if outs(g) != outs(out) {
        return Err("the result's outputs differ from the model's".into());
    }
    if out.topo_order().is_none() {
        return Err("the result has a cycle".into());
    }
    if out.g.node_indices().any(|n| out.node(n).shape.is_none()) {
        return Err("the result has an unshaped node".into());
    }
    Ok(())
}
