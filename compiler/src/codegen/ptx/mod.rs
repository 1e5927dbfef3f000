//! PTX code generation for NVIDIA GPUs (sm_80 and newer) from the same
//! kernel IR the CPU backend compiles.
//!
//! Each kernel first gets a launch plan ([`launch`]): loop kernels run one
//! thread per iteration of their provably independent loops, or one block
//! per iteration with block reductions through shared memory; contractions
//! run as register-tiled products with `cp.async` double-buffered shared
//! slices ([`register_tiled`]) where their 64×64 tiles fill the GPU, else
//! as 16×16 shared-memory tiled products ([`tiled`]) or one block per
//! output ([`dot_blocks`]). The PTX printer ([`module`], with
//! [`loops`], [`tiled`] and [`register_tiled`]) and the launch-geometry interpreter
//! ([`geometry`]) both read that plan, so the interpreter checks on the CPU
//! the very thread decomposition the PTX encodes.
//!
//! Index arithmetic is 32-bit wherever a kernel's sizes fit (see the `asm`
//! module and [`launch::fits_32`]): loop variables come from a thread's number by
//! one division per variable outside every loop (a multiply-high by a
//! magic number, or a shift), and loops step them by adding and carrying,
//! so no kernel executes a 64-bit division (a ~65-instruction call in
//! SASS) or any division in a loop.

mod accumulate;
mod asm;
pub mod dot_blocks;
pub mod dropout;
pub mod geometry;
pub mod launch;
pub mod loops;
pub mod mma;
pub mod module;
mod parallel;
pub mod precision;
pub mod register_tile;
pub mod register_tiled;
pub mod score;
pub mod tiled;
pub mod work;

pub use launch::{program_plan, program_plan_with, KernelPlan, Phase, Shape};
pub use module::{plans_ptx, program_ptx, program_ptx_with, PtxModule, PTX_TARGET, PTX_VERSION};
pub use precision::{Precision, PtxOptions};
pub use work::{kernel_work, Work};

/// Why a program could not be compiled to PTX.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PtxError {
    /// An iteration space or grid exceeds what one launch can address.
    #[error("a kernel's iteration space is too large for one GPU launch")]
    TooLarge,
    /// A launch plan of the wrong kind for its kernel (a netc bug).
    #[error("kernel `{0}`: its launch plan does not fit the kernel (a netc bug)")]
    PlanMismatch(String),
}
