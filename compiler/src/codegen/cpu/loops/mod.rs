//! Native code generation for loop kernels: Cranelift for every kernel,
//! AVX2 / AVX-512 machine code for the vectorizable ones it gains on.
//!
//! A [`LoopKernel`] becomes one native function
//!
//! ```text
//! extern "C" fn(bufs: *const *mut f32, begin: i64, end: i64)
//! ```
//!
//! that reads the base pointer of every buffer it uses from `bufs` once at
//! entry. When the kernel body is a single loop, that outermost loop runs
//! over `begin..end` only, so the runtime can hand disjoint ranges to
//! different threads; otherwise `begin` and `end` are ignored.
//!
//! # Memory safety
//!
//! Generated loads and stores are unchecked (on both paths), so
//! [`CompiledLoop::compile`] first *proves* that every access is in bounds
//! for every iteration: each affine index is bounded by interval arithmetic over the loop extents,
//! refined inside `IfInBounds` guards by rewriting the index as a
//! combination of the guarded indices (whose ranges the guard establishes)
//! plus a remainder. A data-dependent row (`Expr::Gather`,
//! `Stmt::ScatterAdd`) is checked in the generated code (an id outside
//! `0..rows` reads 0 or writes nothing, and the address uses row 0), and
//! the proof covers the affine part for every row in range. A kernel whose
//! bound cannot be proven is rejected with [`CodegenError::OutOfBounds`].
//! The same machinery decides whether the outermost loop may be split
//! across threads: every buffer written inside it must be accessed in
//! per-iteration bands that cannot overlap (or, for a buffer written
//! through data-dependent rows, in per-iteration residues modulo the row
//! stride that cannot coincide), and no scalar register may carry a value
//! from one iteration to the next.
//!
//! # Vectorization
//!
//! A loop that runs over consecutive elements (see `vectorize` for
//! the exact conditions: unit-stride or loop-invariant accesses, no
//! register carried between iterations, no overlap between neighbouring
//! iterations' writes) runs four iterations per step in f32x4 lanes, with
//! a scalar loop for the last `extent % 4` iterations. This covers
//! elementwise kernels, the gate kernels of recurrent cells, softmax rows
//! and pooling windows (the window loops nest inside the channel loop).
//!
//! Where the lanes stay independent over a wider span, a step runs up to
//! `vectorize::MAX_GROUP` (four) f32x4 vectors of consecutive iterations (two
//! with window loops in the body), each operation emitted for all of them
//! before the next, so their dependency chains overlap in the core (an
//! `exp` is a chain of some 25 dependent operations); the vectors left
//! over run one at a time. Such a step is the loop vectorized with `4g`
//! lanes, checked as such, and every lane performs the same operations as
//! with one vector a step. Kernels whose interleaved steps evaluate
//! `exp`, `tanh` or `sigmoid` skip Cranelift's e-graph pass, which would
//! re-serialize the chains (see `compiled`).
//!
//! # AVX2 and AVX-512
//!
//! Cranelift has no 256-bit vectors. On hosts with AVX2 + FMA
//! ([`IsaLevel::detect`](crate::codegen::cpu::IsaLevel::detect)) and
//! under [`KernelPath::Auto`](crate::codegen::cpu::KernelPath::Auto) or
//! [`KernelPath::Avx2`](crate::codegen::cpu::KernelPath::Avx2),
//! [`CompiledLoop::compile_with`] first asks `avx2` for native code: a
//! kernel whose statements all sit in loops that vectorize for eight
//! lanes (plain `Set`/`Store` bodies nested in counter loops), taken when
//! it gains (a loop of 16+ iterations evaluating `exp`, `tanh` or
//! `sigmoid`, or an outermost vectorized loop of 64+). A step runs up to
//! two `ymm` vectors, then single vectors, then the scalar tail on lane 0
//! of `xmm` registers; on AVX-512 hosts (F + DQ) under `Auto`, loops that
//! vectorize for sixteen lanes run `zmm` steps first, then at most one
//! `ymm` step (`Avx2` keeps the `ymm` code there, for comparison). Every
//! lane performs the same operations as here, so the bits are the same
//! (see `avx2` for the details, NaN payloads included). Any other kernel,
//! and every kernel under
//! [`KernelPath::Cranelift`](crate::codegen::cpu::KernelPath::Cranelift),
//! is compiled by Cranelift. The bounds proof runs first on both paths.
//!
//! # Unrolling
//!
//! A loop of at most four iterations with a small body (a pooling window,
//! a vectorized loop's scalar tail), and a vectorized loop of at most
//! eight steps, are emitted as straight-line code with the variable a
//! constant in each copy (see `unroll`); a guard its variables' ranges
//! prove always true emits no test.
//!
//! # Scalar semantics
//!
//! `max`/`min` follow `f32::max`/`f32::min` (a NaN operand yields the other
//! operand), `relu(x)` is `0 < x ? x : 0` (one `maxss`), `log` calls the
//! same libm routine as `f32::ln`, and `exp`, `tanh` and `sigmoid(x) =
//! 1/(1+e^-x)` are inline polynomials (see `super::vmath`; within a few
//! ulp of libm, `sigmoid` never NaN for non-NaN `x`). Every other
//! operation is evaluated like the interpreter does (same order, no fused
//! multiply-add), so results equal `kernel::interp` up to those few ulp,
//! NaN payloads and the sign of zero when `max`/`min` compare `+0` with
//! `-0`. Scalar and vector paths compute the same function, so the result
//! does not depend on how the iterations were split between threads.
//! Scalar registers start at `0.0`.
//!
//! # Layout
//!
//! * `analysis` — the bounds proof and the parallel-safety check
//!   ([`CompiledLoop::compile`] runs it first; nothing is emitted for a
//!   kernel it rejects);
//! * `vectorize` — which loops run in f32x4 lanes;
//! * `emit` — the Cranelift function: entry, loops, statements, addresses;
//! * `unroll` — which tiny constant loops become straight-line code;
//! * `expr` — scalar and f32x4 expressions inside it;
//! * `avx2` — the `ymm` / `zmm` code of the kernels it handles (x86-64 only):
//!   `asm` registers, constant pool and instructions, `lower` loops and
//!   statements, `expr` expressions, `math` `exp`/`tanh`/`sigmoid`, `need`
//!   register estimates;
//! * `compiled` — [`CompiledLoop`]: choosing the path, compiling into a JIT
//!   module or a native buffer, owning the code, the CLIF text and
//!   disassembly;
//! * `run` — calling the code: argument checks and the split of the
//!   outermost loop across threads.

mod analysis;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod compiled;
mod emit;
mod expr;
mod run;
mod unroll;
mod vectorize;

pub use compiled::{compile_clif_text, disassembly, CompiledLoop, DEFAULT_OPT_LEVEL};

use super::CodegenError;

/// Inputs that reach every branch of the loop kernels' inline math:
/// signed zeros, infinities, NaNs of both signs, `exp`'s overflow and
/// underflow thresholds (±88.72, ±103.97) and their neighbours, the edges
/// of `tanh`'s polynomial ranges (±0.625, ±9), subnormals and the largest
/// finite values. Tests and `examples/loop_speed --check` compare code
/// paths over them bit for bit.
pub const EDGE_INPUTS: &[f32] = &[
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    -0.5,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
    -f32::NAN,
    88.72283,
    -88.72283,
    88.7,
    -88.7,
    103.97208,
    -103.97208,
    9.0,
    -9.0,
    0.625,
    -0.625,
    1e-45,
    -1e-45,
    1e-30,
    3e38,
    -3e38,
    f32::MAX,
    f32::MIN,
    f32::MIN_POSITIVE,
];

/// Name of the generated function, in its module and in errors.
const KERNEL_SYMBOL: &str = "netc_loop_kernel";

fn compile_error(message: String) -> CodegenError {
    CodegenError::Compile {
        function: KERNEL_SYMBOL.to_string(),
        message,
    }
}
