//! The register-tiled contraction kernel's block geometry: what the launch
//! planner needs to choose it and size its grid, apart from the emitter
//! (`register_tiled`), which itself depends on the planner's index
//! helpers; keeping these here keeps the two modules out of a cycle.

use crate::kernel::ir::Contraction;

/// Output rows per block.
pub const BM: u32 = 64;
/// Output columns per block.
pub const BN: u32 = 64;
/// Reduction indices per shared-memory slice.
pub const BK: u32 = 16;
/// Threads per block (one-dimensional).
pub const THREADS: u32 = 256;
/// Outputs per thread along M and along N.
pub const RM: u32 = 4;
/// See [`RM`].
pub const RN: u32 = 4;

/// Output tiles of `c` in this kernel: (along M, along N).
pub fn tiles(c: &Contraction) -> (u64, u64) {
    (
        (c.m() as u64).div_ceil(u64::from(BM)),
        (c.n as u64).div_ceil(u64::from(BN)),
    )
}
