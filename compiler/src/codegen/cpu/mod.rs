//! CPU code generation through Cranelift.
//!
//! Loop kernels ([`loops`]) are compiled to one native function each, which
//! takes the program's buffer table and a range of outermost-loop iterations
//! so the runtime can split the work across threads.
//!
//! The hot contraction kernels (dense layers and NHWC convolutions lowered to
//! an implicit GEMM) are generated here, together with an FMA-throughput probe
//! that the benchmarks use as the denominator of every efficiency ratio.

pub mod ceiling;
pub mod contraction;
pub mod jit;
pub mod loops;
pub mod parallel;
mod vectorize;
mod vmath;

pub use ceiling::measure_fma_ceiling_gflops;
pub use contraction::{
    clif_text, BLayout, CompiledContraction, ContractionSpec, Conv2dGeometry, Epilogue, LoopOrder,
    OperandLens, PackedB, Tuning,
};
pub use jit::OptLevel;

/// Errors from generating, compiling or running CPU kernels.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// The host CPU cannot be targeted by Cranelift.
    #[error("unsupported host CPU: {0}")]
    UnsupportedHost(String),
    /// A Cranelift setting was rejected; this indicates a bug in netc.
    #[error("invalid Cranelift setting: {0}")]
    Setting(String),
    /// Cranelift failed to verify, compile or link the generated function.
    #[error("Cranelift failed to compile `{function}`: {message}")]
    Compile {
        /// Name of the generated function.
        function: String,
        /// Cranelift's diagnostic.
        message: String,
    },
    /// The kernel specification is inconsistent (zero extents, overflow, ...).
    #[error("invalid contraction spec: {0}")]
    InvalidSpec(String),
    /// A buffer passed at run time is too short for the compiled shape.
    #[error("buffer `{name}` has {got} elements but the kernel needs at least {needed}")]
    BufferTooSmall {
        /// Which operand (`a`, `b`, `bias`, `c`).
        name: &'static str,
        /// Elements the kernel may touch.
        needed: usize,
        /// Elements actually supplied.
        got: usize,
    },
    /// A bias was supplied to a kernel compiled without one, or vice versa.
    #[error(
        "bias mismatch: kernel compiled with bias = {compiled}, call supplied bias = {supplied}"
    )]
    BiasMismatch {
        /// Whether the kernel adds a bias.
        compiled: bool,
        /// Whether the caller passed one.
        supplied: bool,
    },
    /// A packed B operand was produced for a different kernel shape.
    #[error("packed B does not match this kernel: {0}")]
    PackedMismatch(String),
    /// A worker thread panicked; indicates a bug in netc.
    #[error("worker thread failed: {0}")]
    Thread(String),
}
