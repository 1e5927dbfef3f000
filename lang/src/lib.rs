//! netc-lang owns the `.net` language: its pest grammar, the AST with source
//! spans, syntax diagnostics and the AST pretty printer.
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
