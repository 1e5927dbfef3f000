//! A whole program as one PTX module: the header, then one `.entry` per
//! kernel in program order (entry `k<i>_<name>`).

use super::launch::{program_plan, program_plan_with, KernelPlan, Shape};
use super::loops::{blocks_entry, threads_entry};
use super::precision::{Precision, PtxOptions};
use super::register_tiled::register_tiled_entry;
use super::tiled::tiled_entry;
use super::PtxError;
use crate::kernel::ir::*;
use std::fmt::Write;

/// PTX ISA 7.8 is the oldest version that can also be assembled for
/// sm_90 (Hopper needs 7.8; sm_80 needs 7.0), and every ptxas 12.x and
/// every driver since CUDA 11.8 reads it. The module targets sm_80 — the
/// oldest GPU netc supports — and the driver compiles it for newer ones.
pub const PTX_VERSION: &str = "7.8";
/// The compute capability the PTX is written for.
pub const PTX_TARGET: &str = "sm_80";

/// A program compiled to PTX: the module text and the launch plan of each
/// kernel (entry names, parameters and geometry the runtime needs).
#[derive(Clone, Debug)]
pub struct PtxModule {
    /// The module's text.
    pub text: String,
    /// One plan per kernel, in program order.
    pub plans: Vec<KernelPlan>,
}

/// Generates the PTX module of `p` (f32 arithmetic).
pub fn program_ptx(p: &Program) -> Result<PtxModule, PtxError> {
    plans_ptx(p, program_plan(p)?)
}

/// Generates the PTX module of `p` under `opts` (e.g. with TF32
/// tensor-core contractions).
pub fn program_ptx_with(p: &Program, opts: &PtxOptions) -> Result<PtxModule, PtxError> {
    plans_ptx(p, program_plan_with(p, opts)?)
}

/// The PTX module of `p` with the given launch plans (one per kernel, as
/// [`program_plan`] makes them or, in tests, with a kernel's plan
/// replaced, see [`register_tiled_plan`](super::launch::register_tiled_plan)).
pub fn plans_ptx(p: &Program, plans: Vec<KernelPlan>) -> Result<PtxModule, PtxError> {
    let mut text = String::new();
    let _ = writeln!(text, "// netc: program {} (batch {})", p.name, p.batch);
    let _ = writeln!(
        text,
        ".version {PTX_VERSION}\n.target {PTX_TARGET}\n.address_size 64\n"
    );
    for (k, plan) in p.kernels.iter().zip(&plans) {
        let _ = writeln!(
            text,
            "// launch {}: grid ({}, {}, {}), block ({}, {}, {}), {}",
            plan.entry,
            plan.grid[0],
            plan.grid[1],
            plan.grid[2],
            plan.block[0],
            plan.block[1],
            plan.block[2],
            describe(&plan.shape)
        );
        match (&k.body, &plan.shape) {
            (KernelBody::Contraction(c), Shape::Tiled(_)) => tiled_entry(&mut text, plan, c),
            (KernelBody::Contraction(c), Shape::RegisterTiled(_, precision)) => {
                register_tiled_entry(&mut text, plan, c, *precision)
            }
            (KernelBody::Loop(l), Shape::Threads { par, total, body }) => {
                threads_entry(&mut text, plan, l, par, *total, body)
            }
            (
                _,
                Shape::Blocks {
                    par,
                    total,
                    phases,
                    vars,
                    scalars,
                },
            ) => blocks_entry(&mut text, plan, *vars, *scalars, (par, *total), phases),
            (KernelBody::Contraction(_), Shape::Threads { .. }) => {
                return Err(PtxError::PlanMismatch(k.name.clone()))
            }
            (KernelBody::Loop(_), Shape::Tiled(_) | Shape::RegisterTiled(..)) => {
                return Err(PtxError::PlanMismatch(k.name.clone()))
            }
        }
    }
    Ok(PtxModule { text, plans })
}

fn describe(s: &Shape) -> String {
    match s {
        Shape::Threads { par, total, .. } => {
            format!(
                "one thread per iteration of {} loop(s), {total} in all",
                par.len()
            )
        }
        Shape::Blocks {
            par, total, phases, ..
        } => format!(
            "one block per iteration of {} loop(s), {total} in all, {} phase(s)",
            par.len(),
            phases.len()
        ),
        Shape::Tiled(c) => format!("tiled {}x{}x{} product", c.m(), c.n, c.k()),
        Shape::RegisterTiled(c, Precision::F32) => format!(
            "register-tiled {}x{}x{} product (64x64 per block, 4x4 per thread, cp.async)",
            c.m(),
            c.n,
            c.k()
        ),
        Shape::RegisterTiled(c, Precision::Tf32) => format!(
            "register-tiled {}x{}x{} product (64x64 per block, 32x16 per warp, TF32 mma.sync, cp.async)",
            c.m(),
            c.n,
            c.k()
        ),
    }
}
