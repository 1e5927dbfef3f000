//! netc-compiler owns everything between the AST and machine code: the
//! dataflow graph, shape inference and checking, the training-section
//! checker, the optimizer, autodiff, lowering and code generation, and
//! the driver that runs them in order ([`pipeline`]).
//!
//! It must not know about files, threads or devices: inputs are ASTs and
//! graphs, outputs are graphs, text and diagnostics. Reading files and
//! running kernels belong to `netc-runtime` and the CLI.

mod args;
pub mod autodiff;
pub mod bound;
pub mod build;
pub mod check;
pub mod codegen;
pub mod graph;
pub mod graph_text;
pub mod infer;
pub mod kernel;
pub mod op;
pub mod ops;
pub mod opt;
pub mod pipeline;
pub mod shape;
pub mod summary;
pub mod train;

pub use check::{check, Checked};
pub use graph::{Graph, Node, NodeId};
pub use shape::Shape;
