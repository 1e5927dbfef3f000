//! Renders netc diagnostics the way rustc does: `error[E0201]: message`,
//! then `┌─ file.net:line:col` and the source excerpt with labels.

use codespan_reporting::diagnostic::{
    Diagnostic as CsDiagnostic, Label as CsLabel, Severity as CsSeverity,
};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, termcolor};
use netc_lang::diagnostic::{escape_controls, Printable};
use netc_lang::{Diagnostic, Severity, SourceFile};
use std::io::IsTerminal;

/// Renders diagnostics to stderr, coloured when stderr is a terminal.
pub fn render_to_stderr(file: &SourceFile, diags: &[Diagnostic]) {
    let choice = if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        termcolor::ColorChoice::Auto
    } else {
        termcolor::ColorChoice::Never
    };
    let stream = termcolor::StandardStream::stderr(choice);
    let mut lock = stream.lock();
    emit(&mut lock, file, diags);
}

fn emit(w: &mut dyn termcolor::WriteColor, file: &SourceFile, diags: &[Diagnostic]) {
    // Hostile or broken files hold NUL, ESC or bidi overrides: show them
    // as visible stand-ins rather than send them to the terminal.
    let shown = Printable::new(&file.text);
    let file = &SourceFile::new(escape_controls(&file.name), shown.text.as_str());
    let diags: Vec<Diagnostic> = diags.iter().map(|d| shown.diagnostic(d)).collect();
    let files = SimpleFile::new(file.name.as_str(), file.text.as_str());
    let config = term::Config::default();
    for d in &diags {
        let cs = CsDiagnostic::new(match d.severity {
            Severity::Error => CsSeverity::Error,
            Severity::Warning => CsSeverity::Warning,
        })
        .with_code(d.code)
        .with_message(&d.message)
        .with_labels(
            d.labels
                .iter()
                .map(|l| {
                    let end = l.span.end.min(file.text.len());
                    let start = l.span.start.min(end);
                    let label = if l.primary {
                        CsLabel::primary((), start..end)
                    } else {
                        CsLabel::secondary((), start..end)
                    };
                    label.with_message(&l.message)
                })
                .collect(),
        )
        .with_notes(d.notes.clone());
        if term::emit(w, &config, &files, &cs).is_err() {
            // The excerpt could not be drawn (e.g. a span off a char
            // boundary): fall back to the plain form rather than lose it.
            let _ = w.write_all(d.render_plain(file).as_bytes());
        }
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    let summary = match (errors, warnings) {
        (0, 0) => return,
        (0, w) => format!("warning: {w} warning{} emitted\n", plural(w)),
        (e, 0) => format!(
            "error: could not compile `{}` due to {e} error{}\n",
            file.name,
            plural(e)
        ),
        (e, w) => format!(
            "error: could not compile `{}` due to {e} error{}; {w} warning{} emitted\n",
            file.name,
            plural(e),
            plural(w)
        ),
    };
    let _ = w.write_all(summary.as_bytes());
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
