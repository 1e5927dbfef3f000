//! How a launch spreads its work: blocks, threads, and the longest
//! sequence of loop iterations one thread runs. Computed from the
//! [`KernelPlan`] alone — the same decomposition the PTX printer encodes
//! and the geometry interpreter runs — so it costs nothing even for
//! programs far too large to interpret (VGG-16's training step), and the
//! parallelism tests can bound every kernel of every example.

use super::launch::{KernelPlan, Phase, Shape, BLOCK, TILE};
use crate::kernel::ir::Stmt;

/// The figures of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Work {
    /// Thread blocks launched.
    pub blocks: u64,
    /// Threads per block.
    pub threads_per_block: u64,
    /// Loop trips the busiest thread runs one after another: each step of
    /// its grid-, block- or split-stride loop and each iteration of every
    /// loop inside (guards taken as passing). A tiled product's K loop
    /// counts one trip per tile step (its TILE multiply-adds are
    /// unrolled), a register-tiled one a trip per K slice. The geometry
    /// interpreter measures the same count
    /// ([`super::geometry::run_program_measured`]).
    pub serial: u64,
    /// Loop trips of all threads together (the work to spread).
    pub total: u64,
}

/// Loop trips `body` runs in one thread: each iteration of each loop,
/// nested ones included (guards taken as passing).
fn iterations(body: &[Stmt]) -> u64 {
    body.iter()
        .map(|s| match s {
            Stmt::Loop { extent, body, .. } => *extent as u64 * (1 + iterations(body)),
            Stmt::IfInBounds { body, .. } => iterations(body),
            _ => 0,
        })
        .sum()
}

/// The [`Work`] of one launch plan.
pub fn kernel_work(plan: &KernelPlan) -> Work {
    let blocks = plan.grid.iter().map(|g| u64::from(*g)).product::<u64>();
    let threads_per_block = plan.block.iter().map(|b| u64::from(*b)).product::<u64>();
    let (serial, total) = match &plan.shape {
        Shape::Threads { total, body, .. } => {
            let strides = total.div_ceil(blocks * threads_per_block);
            let each = 1 + iterations(body);
            (strides * each, total * each)
        }
        Shape::Blocks { total, phases, .. } => {
            let strides = total.div_ceil(blocks);
            let (mut per_thread, mut per_block) = (1u64, 1u64);
            for ph in phases {
                match ph {
                    Phase::Uniform(s) | Phase::Single(s) => {
                        per_thread += iterations(s);
                        per_block += iterations(s);
                    }
                    Phase::Split { extent, body, .. } => {
                        let each = 1 + iterations(body);
                        per_thread += (*extent as u64).div_ceil(u64::from(BLOCK)) * each;
                        per_block += *extent as u64 * each;
                    }
                }
            }
            (strides * per_thread, total * per_block)
        }
        Shape::RegisterTiled(c, _) => {
            let k = c.k() as u64;
            // One trip of the K loop stages the next slice and runs the
            // current one's BK steps of 16 multiply-adds unrolled.
            (
                k.div_ceil(u64::from(super::register_tile::BK)),
                c.m() as u64 * c.n as u64 * k,
            )
        }
        Shape::Tiled(c) => {
            let k = c.k() as u64;
            // One trip of the K loop stages a tile and runs its TILE
            // multiply-adds unrolled.
            (k.div_ceil(u64::from(TILE)), c.m() as u64 * c.n as u64 * k)
        }
    };
    Work {
        blocks,
        threads_per_block,
        serial,
        total,
    }
}
