//! The kernel IR: a program of kernels over flat f32 buffers, lowered from
//! a graph for one concrete batch size. Loop kernels are small loop nests
//! with affine indexing; contraction kernels are strided matrix products
//! with a fused epilogue, which the backends compile to tiled code.

pub mod interp;
pub mod ir;
pub mod lower;
pub mod optim;
pub mod parse;
pub mod plan;
pub mod print;
pub mod training;

pub use ir::*;
