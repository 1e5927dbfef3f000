//! netc-runtime owns everything that touches memory, files, threads and
//! devices at run time: host tensors ([`Tensor`]), `.npy` arrays
//! ([`npy`]), model weights as safetensors files ([`Weights`]) and their
//! deterministic initialization ([`init_weights`]), the CPU executor
//! ([`exec`]: compiled kernels, one arena laid out by the memory plan, any
//! number of threads), the CUDA executor ([`cuda`]: the generated PTX
//! launched through cudarc), one [`Engine`] over both, data loaders
//! ([`data`]), the training loop with evaluation and prediction
//! ([`train`]), atomic checkpoints with exact resumption
//! ([`checkpoint`]), and ONNX export of a model with its weights
//! ([`onnx`]).
//!
//! It consumes the compiler's [`Graph`](netc_compiler::Graph) — node names,
//! ops and inferred shapes — and must not know about the language's syntax:
//! it never sees source text, the AST or the parser. Every function that
//! reads user data returns a `Result` whose error is one line naming the file
//! and the problem; none panics on bad input.

mod bind;
pub mod checkpoint;
pub mod cuda;
pub mod data;
pub mod engine;
pub mod exec;
pub mod fault;
pub mod fsutil;
pub mod generate;
pub mod init;
pub mod memory;
pub mod npy;
pub mod onnx;
pub mod plot;
pub mod tensor;
pub mod train;
pub mod weights;

pub use data::{load as load_data, DataError, Dataset};
pub use engine::{Device, Engine, Target};
pub use exec::{ExecError, Executable};
pub use init::{init_plan, init_weights, Init, InitError};
pub use memory::MemoryError;
pub use npy::{
    decode_npy, encode_npy, read_npy, read_npy_with_dtype, write_npy, NpyDtype, NpyError,
    NpyErrorKind,
};
pub use tensor::{Tensor, TensorError};
pub use weights::{expected_params, Weights, WeightsError};
