//! The front half of the compiler in one call: AST → graphs with shapes,
//! plus checked training sections, plus every diagnostic found.

use crate::build::build;
use crate::graph::Graph;
use crate::infer::infer_shapes;
use crate::op::Op;
use crate::train::{check_train, TrainConfig};
use netc_lang::ast::File;
use netc_lang::Diagnostic;
use std::collections::HashMap;

/// Everything known about a file after checking.
#[derive(Debug, Default)]
pub struct Checked {
    /// One graph per model, in source order.
    pub graphs: Vec<Graph>,
    /// One config per training section, in source order.
    pub trains: Vec<TrainConfig>,
    /// Errors and warnings, sorted by position.
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.is_error())
    }

    /// The graph of model `name`.
    pub fn graph(&self, name: &str) -> Option<&Graph> {
        self.graphs.iter().find(|g| g.name == name)
    }

    /// The training section for model `name`.
    pub fn train_for(&self, name: &str) -> Option<&TrainConfig> {
        self.trains.iter().find(|t| t.model == name)
    }
}

/// Builds and shape-checks every model, and checks every training section.
pub fn check(file: &File) -> Checked {
    let mut diags = Vec::new();
    let mut graphs = Vec::new();
    let mut seen = HashMap::new();
    if file.models.is_empty() {
        diags.push(
            Diagnostic::error(
                "E0113",
                "the file defines no model",
                netc_lang::Span::new(0, 0),
            )
            .with_label("expected `model NAME { ... }`"),
        );
    }
    for m in &file.models {
        if let Some(prev) = seen.insert(m.name.name.clone(), m.name.span) {
            diags.push(
                Diagnostic::error(
                    "E0111",
                    format!("model `{}` is defined twice", m.name.name),
                    m.name.span,
                )
                .with_label("redefined here")
                .with_secondary(prev, "first defined here"),
            );
        }
        let mut built = build(m, &mut diags);
        // Layers that need a fixed length are reported on a variable-length
        // sequence and not shape-checked at its placeholder length.
        let (masking, blocked) = crate::masking::check(&built.graph);
        diags.extend(masking);
        built.poisoned.extend(blocked);
        diags.extend(infer_shapes(&mut built.graph, &built.poisoned));
        graphs.push(built.graph);
    }
    let mut trains = Vec::new();
    for t in &file.trains {
        let g = graphs.iter().find(|g| g.name == t.model.name);
        let layers: Option<Vec<String>> = g.map(|g| {
            g.g.node_indices()
                .filter(|n| !matches!(g.node(*n).op, Op::Param { .. } | Op::Input { .. }))
                .map(|n| g.node(n).layer.clone())
                .collect()
        });
        if g.is_none() {
            let names: Vec<&str> = graphs.iter().map(|g| g.name.as_str()).collect();
            let mut d = Diagnostic::error(
                "E0303",
                format!("`train {}` names no model in this file", t.model.name),
                t.model.span,
            )
            .with_label("unknown model");
            if let Some(m) = netc_lang::did_you_mean(&t.model.name, names) {
                d = d.with_note(format!("help: did you mean `{m}`?"));
            }
            diags.push(d);
        }
        trains.push(check_train(t, layers.as_deref(), &mut diags));
    }
    diags.sort_by_key(|d| (d.span().start, d.severity));
    Checked {
        graphs,
        trains,
        diagnostics: diags,
    }
}
