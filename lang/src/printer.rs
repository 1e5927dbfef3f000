//! The AST's text form: canonical `.net` source. Parsing the printed text
//! gives back the same AST (spans aside), which the property tests check.

use crate::ast::*;
use std::fmt::Write;

/// Prints a file in canonical layout: one statement per line, pipelines
/// broken before each `->` after the first stage, two-space indentation.
pub fn print_file(file: &File) -> String {
    let mut out = String::new();
    for m in &file.models {
        let _ = writeln!(out, "model {} {{", m.name.name);
        for s in &m.statements {
            out.push_str("  ");
            out.push_str(&print_statement(s));
            out.push('\n');
        }
        out.push_str("}\n");
    }
    for t in &file.trains {
        let _ = writeln!(out, "train {} {{", t.model.name);
        for s in &t.settings {
            let _ = writeln!(out, "  {}: {}", s.key.name, print_value(&s.value));
        }
        out.push_str("}\n");
    }
    out
}

/// One statement on one line.
pub fn print_statement(s: &Statement) -> String {
    match s {
        Statement::Input {
            name,
            tokens,
            shape,
            ..
        } => {
            let kind = if *tokens { "tokens" } else { "" };
            format!("input {}: {kind}{}", name.name, print_value(shape))
        }
        Statement::Output { names, .. } => format!(
            "output {}",
            names
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Statement::Bind { name, pipeline, .. } => {
            format!("{} = {}", name.name, print_pipeline(pipeline))
        }
        Statement::Pipeline(p) => print_pipeline(p),
    }
}

/// `a -> b(1) -> c`.
pub fn print_pipeline(p: &Pipeline) -> String {
    p.stages
        .iter()
        .map(print_stage)
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// `conv2d(filters: 32) as c1`.
pub fn print_stage(s: &Stage) -> String {
    let mut out = s.name.name.clone();
    if let Some(args) = &s.args {
        out.push_str(&print_args(args));
    }
    if let Some(a) = &s.alias {
        let _ = write!(out, " as {}", a.name);
    }
    out
}

fn print_args(args: &[Arg]) -> String {
    let parts: Vec<String> = args
        .iter()
        .map(|a| match &a.name {
            Some(n) => format!("{}: {}", n.name, print_value(&a.value)),
            None => print_value(&a.value),
        })
        .collect();
    format!("({})", parts.join(", "))
}

/// A value as it would be written.
pub fn print_value(v: &Value) -> String {
    match &v.kind {
        ValueKind::Int(i) => i.to_string(),
        ValueKind::Float(f) => {
            // `{:?}` keeps a decimal point or exponent, so it re-parses as a float.
            format!("{f:?}")
        }
        ValueKind::Bool(b) => b.to_string(),
        ValueKind::Str(s) => format!("\"{s}\""),
        ValueKind::Ident(s) => s.clone(),
        ValueKind::Any => "*".to_string(),
        ValueKind::List(items) => format!(
            "[{}]",
            items.iter().map(print_value).collect::<Vec<_>>().join(", ")
        ),
        ValueKind::Call { name, args } => format!("{}{}", name.name, print_args(args)),
    }
}
