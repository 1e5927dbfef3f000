//! `netc compile --explain`: the optimizer's report as text.

use super::OptReport;
use std::fmt::Write;

/// The report of optimizing model `model`: limits, why saturation
/// stopped, e-graph size, graph nodes and cost before and after, and how
/// often each rule fired (rules that never fired last, without counts
/// when `all` is false).
pub fn explain(model: &str, r: &OptReport, all: bool) -> String {
    let o = &r.options;
    let mut s = format!("optimizer report for model `{model}`\n");
    let _ = writeln!(
        s,
        "  runner limits: {} iterations, {} e-nodes, {:.1} s; {} rules",
        o.iter_limit,
        o.node_limit,
        o.time_limit.as_secs_f64(),
        if o.inference {
            "inference"
        } else {
            "training (no dropout removal or batchnorm folding)"
        }
    );
    let _ = writeln!(
        s,
        "  stopped: {} after {} iteration{}",
        r.stop_reason,
        r.iterations,
        if r.iterations == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        s,
        "  e-graph: {} e-nodes in {} e-classes",
        r.egraph_nodes, r.egraph_classes
    );
    let _ = writeln!(s, "  graph nodes: {} -> {}", r.nodes_before, r.nodes_after);
    let change = if r.cost_before > 0.0 {
        (r.cost_after - r.cost_before) / r.cost_before * 100.0
    } else {
        0.0
    };
    let _ = writeln!(
        s,
        "  cost (memory-traffic model, elements per example): {:.0} -> {:.0} ({change:+.1}%)",
        r.cost_before, r.cost_after
    );
    if let Some(f) = &r.fallback {
        let _ = writeln!(s, "  NOT APPLIED: {f}; the unoptimized graph is used");
    }
    for w in &r.warnings {
        let _ = writeln!(s, "  warning: {w}");
    }
    let fired: Vec<&(String, usize)> = r.fired.iter().filter(|(_, n)| *n > 0).collect();
    if fired.is_empty() {
        s.push_str("  rules fired: none\n");
    } else {
        s.push_str("  rules fired:\n");
        let w = fired.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        for (name, n) in fired {
            let _ = writeln!(s, "    {name:<w$}  {n}");
        }
    }
    if all {
        let idle: Vec<&str> = r
            .fired
            .iter()
            .filter(|(_, n)| *n == 0)
            .map(|(n, _)| n.as_str())
            .collect();
        if !idle.is_empty() {
            let _ = writeln!(s, "  rules not fired: {}", idle.join(", "));
        }
    }
    s
}
