//! A Keras-style `model.summary()` table: one row per layer node with its
//! output shape and parameter count, then trainable / frozen totals.

use crate::graph::Graph;
use crate::op::Op;
use crate::train::is_frozen;
use std::fmt::Write;

/// Parameter totals of a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamCounts {
    /// All parameters.
    pub total: usize,
    /// Updated by training.
    pub trainable: usize,
    /// Trainable by kind but frozen by the training section.
    pub frozen: usize,
    /// Never trained by gradients (batchnorm running statistics).
    pub non_trainable: usize,
}

/// Counts parameters; `frozen` lists frozen layer names.
pub fn param_counts(g: &Graph, frozen: &[String]) -> ParamCounts {
    let mut c = ParamCounts::default();
    for id in g.g.node_indices() {
        let n = g.node(id);
        if let Op::Param { role } = n.op {
            let k = n.shape.as_ref().map_or(0, |s| s.numel());
            c.total = c.total.saturating_add(k);
            if !role.trainable() {
                c.non_trainable = c.non_trainable.saturating_add(k);
            } else if is_frozen(&n.layer, frozen) {
                c.frozen = c.frozen.saturating_add(k);
            } else {
                c.trainable = c.trainable.saturating_add(k);
            }
        }
    }
    c
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes(n: usize) -> String {
    let b = n as f64 * 4.0;
    if b >= 1024.0 * 1024.0 {
        format!("{:.2} MB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.2} KB", b / 1024.0)
    }
}

/// The summary table.
pub fn summary(g: &Graph, frozen: &[String]) -> String {
    let mut rows: Vec<[String; 4]> = Vec::new();
    let unfixed = crate::masking::unfixed_steps(g);
    for id in g.layer_order() {
        let n = g.node(id);
        let params: usize = g
            .params_of(id)
            .iter()
            .map(|p| g.node(*p).shape.as_ref().map_or(0, |s| s.numel()))
            .sum();
        let shape = n.shape.as_ref().map_or("?".to_string(), |s| {
            crate::masking::shape_text(s, unfixed[id.index()])
        });
        let from: Vec<String> = g
            .inputs_of(id)
            .into_iter()
            .filter(|i| !matches!(g.node(*i).op, Op::Param { .. }))
            .map(|i| g.node(i).name.clone())
            .collect();
        let mut kind = n.op.name().to_string();
        // A token input holds ids, not values: say so where the shape
        // alone ([N, T]) would read like a float series.
        if matches!(n.op, Op::Input { tokens: true, .. }) {
            kind.push_str(", tokens");
        }
        if is_frozen(&n.layer, frozen) && params > 0 {
            kind.push_str(", frozen");
        }
        rows.push([
            format!("{} ({kind})", n.name),
            shape,
            thousands(params),
            from.join(", "),
        ]);
    }
    let head = ["Layer (type)", "Output shape", "Param #", "Connected to"];
    let mut w = head.map(|h| h.chars().count());
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let total_w = w.iter().sum::<usize>() + 3 * 3;
    let line = |c: char| c.to_string().repeat(total_w) + "\n";
    let row = |r: &[String; 4]| {
        format!(
            "{:<w0$}   {:<w1$}   {:>w2$}   {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        )
        .trim_end()
        .to_string()
            + "\n"
    };
    let mut out = format!("Model: \"{}\"\n", g.name);
    out += &line('─');
    out += &row(&head.map(String::from));
    out += &line('═');
    for r in &rows {
        out += &row(r);
    }
    out += &line('─');
    let c = param_counts(g, frozen);
    let _ = writeln!(
        out,
        "Total params: {} ({})",
        thousands(c.total),
        bytes(c.total)
    );
    let _ = writeln!(
        out,
        "Trainable params: {} ({})",
        thousands(c.trainable),
        bytes(c.trainable)
    );
    let _ = writeln!(
        out,
        "Frozen params: {} ({})",
        thousands(c.frozen),
        bytes(c.frozen)
    );
    let _ = writeln!(
        out,
        "Non-trainable params: {} ({})",
        thousands(c.non_trainable),
        bytes(c.non_trainable)
    );
    out
}
