//! netc-compiler owns everything between the AST and machine code: the
//! dataflow graph ([`graph`], [`op`]) and the op registry ([`ops`]), shape
//! inference and checking, the training-section checker, the egg optimizer
//! ([`opt`]), autodiff, lowering to the kernel IR ([`kernel`]), code
//! generation (Cranelift machine code and PTX text, [`codegen`]), and the
//! driver that runs them in order ([`pipeline`]).
//!
//! It must not know about files or devices: inputs are ASTs and graphs,
//! outputs are graphs, kernel IR, compiled functions, text and
//! diagnostics. It never reads or writes a file, and never talks to a GPU
//! (PTX is only text here). The one place that runs code is
//! `codegen::cpu`: JIT-compiled kernels and the worker pool
//! (`codegen::cpu::parallel`) that splits a kernel across threads; how many
//! threads, and everything about data, weights and devices, is decided by
//! `netc-runtime` and the CLI. It never sees the CLI or the runtime.
//!
//! No module depends on itself through another
//! (`compiler/tests/module_cycles.rs`).

mod args;
pub mod autodiff;
pub mod bound;
pub mod build;
pub mod check;
pub mod codegen;
pub mod dropout;
pub mod graph;
pub mod graph_text;
pub mod infer;
pub mod kernel;
pub mod masking;
pub mod op;
pub mod ops;
pub mod opt;
pub mod pipeline;
pub mod shape;
pub mod step;
pub mod summary;
pub mod text_data;
pub mod train;

pub use check::{check, Checked};
pub use graph::{Graph, Node, NodeId};
pub use shape::Shape;
