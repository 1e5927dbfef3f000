//! Diagnostics: what every stage of netc reports about a user's file.
//!
//! A diagnostic is data (severity, code, message, labelled spans, notes);
//! rendering it with source excerpts is the CLI's job.

use crate::span::{SourceFile, Span};
use std::fmt;

/// How bad a diagnostic is. Only errors make `netc check` fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The program is accepted but probably not what the user meant.
    Warning,
    /// The program is rejected.
    Error,
}

/// A span with a message under it.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    /// Where.
    pub span: Span,
    /// What to say there (may be empty).
    pub message: String,
    /// The primary label is the one the location `file:line:col` points at.
    pub primary: bool,
}

/// One reported problem.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// A stable code such as `E0201`, documented in `docs/language.md`.
    pub code: &'static str,
    /// One line saying what is wrong.
    pub message: String,
    /// Labelled spans; the first primary one is the diagnostic's location.
    pub labels: Vec<Label>,
    /// Extra lines: the arithmetic that failed, hints, "did you mean".
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// An error with a primary label.
    pub fn error(code: &'static str, message: impl Into<String>, span: Span) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            labels: vec![Label {
                span,
                message: String::new(),
                primary: true,
            }],
            notes: Vec::new(),
        }
    }

    /// A warning with a primary label.
    pub fn warning(code: &'static str, message: impl Into<String>, span: Span) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message, span)
        }
    }

    /// Sets the text under the primary label.
    pub fn with_label(mut self, message: impl Into<String>) -> Self {
        if let Some(l) = self.labels.iter_mut().find(|l| l.primary) {
            l.message = message.into();
        }
        self
    }

    /// Adds a secondary label.
    pub fn with_secondary(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
            primary: false,
        });
        self
    }

    /// Adds a note line.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// The primary span (or an empty span at 0 when there is none).
    pub fn span(&self) -> Span {
        self.labels
            .iter()
            .find(|l| l.primary)
            .or(self.labels.first())
            .map_or(Span::default(), |l| l.span)
    }

    /// Whether this is an error (as opposed to a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// A plain one-screen rendering without source excerpts:
    /// `file:line:col: error[E0201]: message` then the labels and notes.
    pub fn render_plain(&self, file: &SourceFile) -> String {
        let mut out = format!(
            "{}: {}[{}]: {}\n",
            file.location(self.span().start),
            self.severity,
            self.code,
            self.message
        );
        for l in &self.labels {
            if !l.message.is_empty() {
                out.push_str(&format!(
                    "  {}: {}\n",
                    file.location(l.span.start),
                    l.message
                ));
            }
        }
        for n in &self.notes {
            out.push_str(&format!("  = {n}\n"));
        }
        out
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// A list of diagnostics that failed a stage; at least one is an error.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{} error(s)", .0.iter().filter(|d| d.is_error()).count())]
pub struct Diagnostics(pub Vec<Diagnostic>);

/// Closest candidate to `name` by edit distance, for "did you mean" notes.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        // A one-letter name is "close" to every other one-letter name.
        .filter(|(d, c)| *d <= (c.len().max(name.len()) / 3).max(1) && *d < c.len().min(name.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let layers = ["conv2d", "dense", "relu", "maxpool2d"];
        assert_eq!(did_you_mean("conv2", layers), Some("conv2d"));
        assert_eq!(did_you_mean("dnese", layers), Some("dense"));
        assert_eq!(did_you_mean("transformer", layers), None);
    }
}
