//! The optimizer: equality saturation with egg. A checked graph becomes
//! an e-graph ([`convert`]), the rules ([`rules`], [`unroll`]) add cheaper
//! equivalent forms under explicit runner limits, and the cheapest form
//! under the memory-traffic cost model ([`cost`]) is extracted back into a
//! graph with the same inputs, outputs and parameter names, so weights
//! files stay valid. [`explain`] renders what happened.
//!
//! `optimize` is pure and never fails: if anything about the result is
//! inconsistent it returns the input graph and says why in the report.

pub mod convert;
pub mod cost;
pub mod explain;
pub mod extract;
pub mod lang;
pub mod rules;
pub mod unroll;

use crate::graph::Graph;
use crate::op::Op;
use egg::{Runner, SimpleScheduler, StopReason};
use std::collections::HashMap;
use std::time::{Duration, Instant};

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
    let start = Instant::now();
    let mut report = OptReport {
        options: opts.clone(),
        nodes_before: g.g.node_count(),
        cost_before: cost::graph_cost(g),
        ..OptReport::default()
    };
    let fail = |mut report: OptReport, why: String| {
        report.fallback = Some(why);
        report.nodes_after = report.nodes_before;
        report.cost_after = report.cost_before;
        report.time = start.elapsed();
        (g.clone(), report)
    };
    let (eg, class) = match convert::to_egraph(g, opts.inference) {
        Ok(x) => x,
        Err(e) => return fail(report, e),
    };
    let rules = rules::rules(opts.inference, opts.fusion);
    let runner = Runner::default()
        .with_egraph(eg)
        .with_iter_limit(opts.iter_limit)
        .with_node_limit(opts.node_limit)
        .with_time_limit(opts.time_limit)
        .with_scheduler(SimpleScheduler)
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
