//! CPU code generation: Cranelift for every kernel, and on x86-64 hosts
//! with AVX2 + FMA run-time assembled (dynasm) 256-bit kernels where they
//! pay (`KernelPath::Auto`; `KernelPath::Cranelift` forces Cranelift).
//!
//! Loop kernels ([`loops`]) are compiled to one native function each, which
//! takes the program's buffer table and a range of outermost-loop iterations
//! so the runtime can split the work across threads.
//!
//! The hot contraction kernels (dense layers and NHWC convolutions lowered to
//! an implicit GEMM) are generated here, together with an FMA-throughput probe
//! that the benchmarks use as the denominator of every efficiency ratio.
//! `frame` holds the prologue and epilogue both kinds of AVX2 kernel share.

pub mod ceiling;
pub mod contraction;
#[cfg(target_arch = "x86_64")]
mod evex;
#[cfg(target_arch = "x86_64")]
mod frame;
pub mod jit;
pub mod loops;
pub mod parallel;
pub mod subnormal;
mod vmath;

pub use ceiling::{
    measure_fma256_ceiling_gflops, measure_fma512_ceiling_gflops, measure_fma_ceiling_gflops,
    measure_triad_gbps, Ceilings,
};
pub use contraction::{
    clif_text, BLayout, CompiledContraction, ContractionSpec, Conv2dGeometry, Epilogue, IsaLevel,
    KernelPath, LoopOrder, OperandLens, PackedB, Tuning,
};
pub use jit::OptLevel;

use crate::kernel::ir::BufId;

/// Errors from checking, generating, compiling or running CPU kernels
/// (loop kernels and contractions alike).
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// The host CPU cannot be targeted by Cranelift.
    #[error("unsupported host CPU: {0}")]
    UnsupportedHost(String),
    /// A loop kernel refers to a buffer the program does not have.
    #[error("kernel refers to buffer {buf}, but the program has only {count} buffers")]
    UnknownBuffer {
        /// The buffer id used.
        buf: BufId,
        /// Number of buffers in the program.
        count: usize,
    },
    /// A loop variable id is not below `LoopKernel::vars`.
    #[error("kernel refers to loop variable v{var}, but declares only {declared}")]
    UnknownVar {
        /// The variable used.
        var: usize,
        /// `LoopKernel::vars`.
        declared: usize,
    },
    /// A scalar register id is not below `LoopKernel::scalars`.
    #[error("kernel refers to scalar register s{scalar}, but declares only {declared}")]
    UnknownScalar {
        /// The register used.
        scalar: usize,
        /// `LoopKernel::scalars`.
        declared: usize,
    },
    /// An index uses a loop variable outside the loop that binds it.
    #[error("loop variable v{var} is used outside the loops that bind it")]
    UnboundVar {
        /// The variable.
        var: usize,
    },
    /// A loop rebinds a variable of an enclosing loop.
    #[error("loop variable v{var} is bound again by a loop nested inside its own loop")]
    ReboundVar {
        /// The variable.
        var: usize,
    },
    /// A loop kernel's access may fall outside its buffer.
    #[error(
        "{access} of buffer {buf} may be out of bounds: index `{index}` ranges over \
         [{min}, {max}], but the buffer has {len} elements"
    )]
    OutOfBounds {
        /// `"load"` or `"store"`.
        access: &'static str,
        /// The buffer.
        buf: BufId,
        /// The index, as text.
        index: String,
        /// Smallest value the index may take.
        min: i128,
        /// Largest value the index may take.
        max: i128,
        /// Length of the buffer in elements.
        len: usize,
    },
    /// An index or extent is too large for 64-bit address arithmetic.
    #[error("index `{index}` is too large for 64-bit address arithmetic")]
    IndexOverflow {
        /// The index (or loop extent), as text.
        index: String,
    },
    /// A loop kernel's `run` was given the wrong number of buffers.
    #[error("kernel was compiled for {expected} buffers, but {got} were supplied")]
    BufferCount {
        /// Buffers the kernel was compiled for.
        expected: usize,
        /// Buffers supplied.
        got: usize,
    },
    /// A loop kernel's `run` was given a buffer shorter than the one
    /// compiled for.
    #[error("buffer {buf} has {got} elements, but the kernel was compiled for {expected}")]
    LoopBufferTooSmall {
        /// The buffer.
        buf: BufId,
        /// Length the kernel was compiled for.
        expected: usize,
        /// Length supplied.
        got: usize,
    },
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
    /// A contraction operand passed at run time is too short for the
    /// compiled shape.
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
    /// Run-time assembly of a native micro-kernel failed (the assembler
    /// could not map executable memory).
    #[error("could not assemble a native kernel: {0}")]
    Assemble(String),
    /// A worker thread panicked; indicates a bug in netc.
    #[error("worker thread failed: {0}")]
    Thread(String),
}
