//! netc-lang owns the `.net` language: its pest grammar, the AST with source
//! spans, the parser (any input gives an AST or diagnostics, never a
//! panic), the canonical pretty printer, and the [`Diagnostic`] type every
//! stage of netc reports with (rendering it is the CLI's job).
//!
//! It knows nothing about layers' meaning, shapes, graphs or files on disk:
//! those belong to `netc-compiler` and the CLI.

pub mod ast;
pub mod diagnostic;
pub mod parse;
pub mod printer;
pub mod span;

pub use diagnostic::{did_you_mean, Diagnostic, Diagnostics, Label, Severity};
pub use parse::{decode, parse};
pub use span::{SourceFile, Span};
