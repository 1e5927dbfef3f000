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

/// Whether `c` must not reach a terminal as it is: control characters
/// (NUL, ESC with its colour and cursor sequences) other than line ends
/// and tabs, and the bidirectional overrides that make text display in
/// another order than it parses. A carriage return is judged by context.
fn unprintable(c: char) -> bool {
    (c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every unprintable character written as a Rust escape
/// (`\0`, `\u{1b}`), for messages that quote user text.
pub fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if unprintable(c) || c == '\r' {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// A source text made safe to show in an excerpt: each unprintable
/// character becomes a visible stand-in (NUL → `␀`, ESC → `␛`, others
/// `�`), so the excerpt keeps one column per character while its bytes can
/// no longer drive the terminal. Stand-ins are longer in UTF-8 than what
/// they replace, so spans into the original text go through [`Self::offset`].
#[derive(Clone, Debug)]
pub struct Printable {
    /// The text with stand-ins.
    pub text: String,
    /// (offset in the original text just past a replaced character, bytes
    /// added by all replacements up to and including it), ascending.
    shifts: Vec<(usize, usize)>,
}

impl Printable {
    /// The printable form of `text`.
    pub fn new(text: &str) -> Printable {
        let mut out = String::with_capacity(text.len());
        let mut shifts = Vec::new();
        let mut added = 0;
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            // CR before LF is a Windows line end; alone it rewinds the line.
            let lone_cr = c == '\r' && chars.peek().is_none_or(|(_, n)| *n != '\n');
            if !unprintable(c) && !lone_cr {
                out.push(c);
                continue;
            }
            let stand_in = match c as u32 {
                n @ 0..=0x1f => char::from_u32(0x2400 + n).unwrap_or('\u{fffd}'),
                0x7f => '\u{2421}',
                _ => '\u{fffd}',
            };
            out.push(stand_in);
            added += stand_in.len_utf8() - c.len_utf8();
            shifts.push((i + c.len_utf8(), added));
        }
        Printable { text: out, shifts }
    }

    /// Whether anything was replaced.
    pub fn changed(&self) -> bool {
        !self.shifts.is_empty()
    }

    /// Where byte `offset` of the original text lies in [`Self::text`].
    pub fn offset(&self, offset: usize) -> usize {
        let before = self.shifts.partition_point(|(end, _)| *end <= offset);
        offset + before.checked_sub(1).map_or(0, |i| self.shifts[i].1)
    }

    /// `d` with its spans moved into [`Self::text`] and its message,
    /// labels and notes escaped with [`escape_controls`].
    pub fn diagnostic(&self, d: &Diagnostic) -> Diagnostic {
        Diagnostic {
            severity: d.severity,
            code: d.code,
            message: escape_controls(&d.message),
            labels: d
                .labels
                .iter()
                .map(|l| Label {
                    span: Span::new(self.offset(l.span.start), self.offset(l.span.end)),
                    message: escape_controls(&l.message),
                    primary: l.primary,
                })
                .collect(),
            notes: d.notes.iter().map(|n| escape_controls(n)).collect(),
        }
    }
}

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
    fn control_characters_are_escaped_and_spans_follow() {
        assert_eq!(escape_controls("a\0b\u{1b}[31m"), "a\\0b\\u{1b}[31m");
        assert_eq!(escape_controls("tab\tline\n"), "tab\tline\n");
        let p = Printable::new("x\0y\r\nz\u{202e}w\rv");
        assert_eq!(p.text, "x\u{2400}y\r\nz\u{fffd}w\u{240d}v");
        assert!(p.changed());
        // `y` moves by the stand-in's two extra bytes; the bidi override
        // (3 bytes) has a 3-byte stand-in; the lone CR adds two more.
        assert_eq!(p.offset(0), 0);
        assert_eq!(p.offset(2), 4);
        assert_eq!(p.offset(6), 8);
        assert_eq!(p.offset(9), 11);
        assert_eq!(p.offset(10), 12);
        assert_eq!(p.offset(11), 15);
        assert!(!Printable::new("model m {}\r\n").changed());
    }

    #[test]
    fn suggests_close_names_only() {
        let layers = ["conv2d", "dense", "relu", "maxpool2d"];
        assert_eq!(did_you_mean("conv2", layers), Some("conv2d"));
        assert_eq!(did_you_mean("dnese", layers), Some("dense"));
        assert_eq!(did_you_mean("transformer", layers), None);
    }
}
