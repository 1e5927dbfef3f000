//! The graph's text form (pinned by snapshot tests) and its Graphviz form.

use crate::graph::{Graph, NodeId};
use crate::op::Op;
use std::collections::HashMap;
use std::fmt::Write;

fn shape_text(g: &Graph, batched: &[bool], id: NodeId) -> String {
    let n = g.node(id);
    match &n.shape {
        None => "?".to_string(),
        // Parameters, and weights computed from them, have no batch axis.
        Some(s) if !batched.get(id.index()).copied().unwrap_or(true) => s.plain(),
        Some(s) => crate::masking::shape_text(s, crate::masking::unfixed_steps(g)[id.index()]),
    }
}

/// One line per node in topological order:
/// `%3 = conv2d(%0, %1, %2) {filters: 32, ...} : [N, 26, 26, 32]  # conv1`.
pub fn graph_text(g: &Graph) -> String {
    let order = g
        .topo_order()
        .unwrap_or_else(|| g.g.node_indices().collect());
    let num: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let batched = crate::infer::batched(g);
    let mut out = format!("graph {} {{\n", g.name);
    for id in &order {
        let n = g.node(*id);
        let operands: Vec<String> = g
            .inputs_of(*id)
            .iter()
            .map(|i| format!("%{}", num[i]))
            .collect();
        let head = match &n.op {
            Op::Input { .. } => format!("input \"{}\"{}", n.name, n.op.attrs()),
            Op::Param { .. } => format!("param \"{}\"{}", n.name, n.op.attrs()),
            op => format!("{}({}){}", op.name(), operands.join(", "), op.attrs()),
        };
        let comment = match &n.op {
            Op::Input { .. } | Op::Param { .. } => String::new(),
            _ => format!("  # {}", n.name),
        };
        let _ = writeln!(
            out,
            "  %{} = {head} : {}{comment}",
            num[id],
            shape_text(g, &batched, *id)
        );
    }
    for (name, id) in &g.outputs {
        let _ = writeln!(out, "  output \"{name}\" = %{}", num[id]);
    }
    out.push_str("}\n");
    out
}

/// Graphviz `digraph`; parameters are drawn as small boxes.
pub fn graph_dot(g: &Graph) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n  rankdir=TB;\n  node [fontname=\"Helvetica\"];\n",
        g.name
    );
    let batched = crate::infer::batched(g);
    for id in g.g.node_indices() {
        let n = g.node(id);
        let (shape, label) = match &n.op {
            Op::Param { .. } => (
                "box",
                format!("{}\\n{}", n.name, shape_text(g, &batched, id)),
            ),
            Op::Input { .. } => (
                "invhouse",
                format!("{}\\n{}", n.name, shape_text(g, &batched, id)),
            ),
            op => (
                "ellipse",
                format!(
                    "{} ({})\\n{}",
                    n.name,
                    op.name(),
                    shape_text(g, &batched, id)
                ),
            ),
        };
        let style = if matches!(n.op, Op::Param { .. }) {
            ", style=filled, fillcolor=\"#eeeeee\", fontsize=10"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  n{} [shape={shape}, label=\"{label}\"{style}];",
            id.index()
        );
    }
    for e in g.g.edge_indices() {
        if let Some((a, b)) = g.g.edge_endpoints(e) {
            let _ = writeln!(out, "  n{} -> n{};", a.index(), b.index());
        }
    }
    for (name, id) in &g.outputs {
        let _ = writeln!(
            out,
            "  out_{name} [shape=house, label=\"{name}\"];\n  n{} -> out_{name};",
            id.index()
        );
    }
    out.push_str("}\n");
    out
}
