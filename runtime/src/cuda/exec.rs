//! A lowered program on the GPU: one PTX module, its kernels launched in
//! order on one stream with the geometry of their launch plans, and its
//! memory laid out by the same memory plan as the CPU executor's
//! (`netc_compiler::kernel::plan`):
//!
//! - every temporary is a range of **one arena**, a single device
//!   allocation of `arena_len` floats; each temporary starts at a multiple
//!   of `ARENA_ALIGN` floats (256 bytes), and temporaries whose live ranges
//!   do not overlap share memory. A kernel gets `base + 4·offset`.
//! - parameters, optimizer state and inputs (the buffers outside the
//!   arena, as on the CPU) have an allocation each, so two programs of one
//!   model can exchange them without a copy ([`CudaExecutable::swap_buffer`]).
//!
//! Before allocating, [`CudaExecutable::compile`] compares the program's
//! [`Footprint`] with what `cuMemGetInfo` reports free and fails with
//! [`CudaError::OutOfMemory`] (needed, free, by part) instead of the
//! driver's bare `CUDA_ERROR_OUT_OF_MEMORY`. The arena can be given back
//! between runs ([`CudaExecutable::release_arena`]) and is allocated again,
//! after the same check, by the next run: how evaluation during training
//! avoids holding an arena beside the training step's.

use super::footprint::{check_fits, Footprint};
use super::{CudaError, Gpu};
use crate::memory::bytes;
use crate::tensor::Tensor;
use crate::weights::Weights;
use cudarc::driver::{CudaFunction, CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use netc_compiler::codegen::ptx::{program_ptx_with, KernelPlan, PtxOptions};
use netc_compiler::kernel::plan::{plan, MemoryPlan};
use netc_compiler::kernel::Program;
use std::time::{Duration, Instant};

/// A program loaded on a GPU with its device memory.
pub struct CudaExecutable {
    gpu: Gpu,
    program: Program,
    plan: MemoryPlan,
    plans: Vec<KernelPlan>,
    functions: Vec<CudaFunction>,
    /// The allocation of each buffer outside the arena (`None` for
    /// temporaries).
    own: Vec<Option<CudaSlice<f32>>>,
    /// The temporaries; `None` once given back, until the next run.
    arena: Option<CudaSlice<f32>>,
    /// Time spent in each kernel (synchronized after each launch) since
    /// timing was switched on with [`Self::time_kernels`].
    pub timings: Vec<Duration>,
    timing: bool,
}

/// Bytes free on the device (`cuMemGetInfo`).
pub fn free_bytes(gpu: &Gpu) -> Result<u64, CudaError> {
    gpu.ctx.bind_to_thread()?;
    let (free, _total) = gpu.ctx.mem_get_info()?;
    Ok(free as u64)
}

/// A zeroed allocation of `n` floats (at least one, so every kernel
/// parameter is a valid pointer), the driver's refusal naming the size.
fn alloc(gpu: &Gpu, n: usize, what: &str) -> Result<CudaSlice<f32>, CudaError> {
    let n = n.max(1);
    gpu.stream.alloc_zeros::<f32>(n).map_err(|e| {
        CudaError::Driver(format!(
            "allocating {} for {what}: {e}",
            bytes(crate::memory::f32_bytes(n))
        ))
    })
}

impl CudaExecutable {
    /// Plans the memory of `program`, checks it against the free device
    /// memory, generates and loads its PTX, and allocates its buffers
    /// (zeroed): one allocation per parameter, state and input, and the
    /// arena.
    pub fn compile(gpu: &Gpu, program: Program) -> Result<Self, CudaError> {
        Self::compile_with(gpu, program, &PtxOptions::default())
    }

    /// [`compile`](Self::compile) with the PTX generated under `ptx`
    /// (e.g. TF32 contractions).
    pub fn compile_with(gpu: &Gpu, program: Program, ptx: &PtxOptions) -> Result<Self, CudaError> {
        let plan = plan(&program);
        let footprint = Footprint::planned(&program, &plan);
        check_fits(&describe(&program), &footprint, free_bytes(gpu)?)?;
        let module =
            program_ptx_with(&program, ptx).map_err(|e| CudaError::Codegen(e.to_string()))?;
        let loaded = gpu
            .ctx
            .load_module(Ptx::from_src(module.text))
            .map_err(|e| CudaError::Module(e.to_string()))?;
        let functions = module
            .plans
            .iter()
            .map(|p| {
                loaded
                    .load_function(&p.entry)
                    .map_err(|e| CudaError::Module(format!("{}: {e}", p.entry)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let own = program
            .buffers
            .iter()
            .zip(&plan.offsets)
            .map(|(b, off)| match off {
                Some(_) => Ok(None),
                None => alloc(gpu, b.len, &format!("buffer `{}`", b.name)).map(Some),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let arena = alloc(gpu, plan.arena_len, &arena_what(&program))?;
        let n = program.kernels.len();
        Ok(CudaExecutable {
            gpu: gpu.clone(),
            program,
            plan,
            plans: module.plans,
            functions,
            own,
            arena: Some(arena),
            timings: vec![Duration::ZERO; n],
            timing: false,
        })
    }

    /// The program being run.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The memory plan (the CPU executor's, see the module docs).
    pub fn plan(&self) -> &MemoryPlan {
        &self.plan
    }

    /// Synchronize after every kernel and accumulate [`Self::timings`].
    pub fn time_kernels(&mut self, on: bool) {
        self.timing = on;
        self.timings.iter_mut().for_each(|t| *t = Duration::ZERO);
    }

    /// Copies all parameters from `weights`, which must match exactly.
    pub fn set_weights(&mut self, weights: &Weights) -> Result<(), CudaError> {
        let bufs = crate::bind::weight_buffers(&self.program, weights)
            .map_err(|e| CudaError::Input(e.to_string()))?;
        for (buf, t) in bufs {
            self.write_buffer(buf, &t.data)?;
        }
        Ok(())
    }

    /// Sets input `name` (shape must be `[batch, ...]` as lowered).
    pub fn set_input(&mut self, name: &str, t: &Tensor) -> Result<(), CudaError> {
        let buf = crate::bind::input_buffer(&self.program, name, t).map_err(CudaError::Input)?;
        self.write_buffer(buf, &t.data)
    }

    /// Overwrites buffer `b` (a parameter, optimizer state or input; not a
    /// temporary) with `data` (host → device).
    pub fn write_buffer(&mut self, b: usize, data: &[f32]) -> Result<(), CudaError> {
        let len = self.program.buffers.get(b).map_or(0, |x| x.len);
        match self.own.get_mut(b) {
            Some(Some(dst)) if data.len() == len && len > 0 => {
                self.gpu
                    .stream
                    .memcpy_htod(data, &mut dst.slice_mut(..len))?;
                Ok(())
            }
            _ => Err(CudaError::Input(format!(
                "buffer {b} holds {len} values; {} given",
                data.len()
            ))),
        }
    }

    /// Exchanges the allocation of buffer `b` with buffer `ob` of `other`
    /// (both outside the arena, of one length; `other` on the same GPU):
    /// how two programs of one model hand their parameters and optimizer
    /// state over without a copy.
    pub fn swap_buffer(
        &mut self,
        b: usize,
        other: &mut CudaExecutable,
        ob: usize,
    ) -> Result<(), CudaError> {
        match (
            self.plan.own_len(&self.program, b),
            other.plan.own_len(&other.program, ob),
        ) {
            (Some(x), Some(y)) if x == y => {
                std::mem::swap(&mut self.own[b], &mut other.own[ob]);
                Ok(())
            }
            (x, y) => Err(CudaError::Input(format!(
                "cannot exchange buffers of {x:?} and {y:?} values"
            ))),
        }
    }

    /// Buffer `b` on the device: its range of the arena or its own
    /// allocation.
    fn view(&self, b: usize) -> Result<CudaView<'_, f32>, CudaError> {
        let len = self
            .program
            .buffers
            .get(b)
            .map(|x| x.len)
            .ok_or_else(|| CudaError::Input(format!("no buffer {b}")))?;
        match (self.plan.offsets[b], &self.own[b]) {
            (Some(off), _) => {
                let arena = self.arena.as_ref().ok_or_else(|| {
                    CudaError::Input(format!(
                        "buffer `{}` is a temporary and the arena was given back",
                        self.program.buffers[b].name
                    ))
                })?;
                Ok(arena.slice(off..off + len))
            }
            (None, Some(own)) => Ok(own.slice(..len)),
            (None, None) => Err(CudaError::Input(format!("no allocation for buffer {b}"))),
        }
    }

    /// Reads buffer `b` back (device → host), after all queued work.
    pub fn read_buffer(&self, b: usize) -> Result<Vec<f32>, CudaError> {
        let view = self.view(b)?;
        let mut out = vec![0f32; view.len()];
        if !out.is_empty() {
            self.gpu.stream.memcpy_dtoh(&view, &mut out)?;
        }
        self.gpu.stream.synchronize()?;
        Ok(out)
    }

    /// Output `i` as a tensor.
    pub fn output(&self, i: usize) -> Result<Tensor, CudaError> {
        let o = self
            .program
            .outputs
            .get(i)
            .ok_or_else(|| CudaError::Input(format!("no output {i}")))?;
        let data = self.read_buffer(o.buf)?;
        Tensor::new(o.shape.clone(), data).map_err(|e| CudaError::Input(e.to_string()))
    }

    /// Gives the arena back to the driver (after all queued work); the
    /// temporaries, outputs included, are gone until the next
    /// [`Self::run`], which allocates it again.
    pub fn release_arena(&mut self) -> Result<(), CudaError> {
        if self.arena.is_some() {
            self.gpu.stream.synchronize()?;
            self.arena = None;
        }
        Ok(())
    }

    /// Allocates the arena if it was given back, after checking it fits.
    fn ensure_arena(&mut self) -> Result<(), CudaError> {
        if self.arena.is_none() {
            let footprint = Footprint {
                batch: self.program.batch,
                arena: crate::memory::f32_bytes(self.plan.arena_len),
                ..Footprint::default()
            };
            let what = format!("the arena of {}", describe(&self.program));
            check_fits(&what, &footprint, free_bytes(&self.gpu)?)?;
            self.arena = Some(alloc(
                &self.gpu,
                self.plan.arena_len,
                &arena_what(&self.program),
            )?);
        }
        Ok(())
    }

    /// Queues every kernel on the stream (returns before they finish unless
    /// kernels are timed; reads synchronize).
    pub fn run(&mut self) -> Result<(), CudaError> {
        self.ensure_arena()?;
        for i in 0..self.functions.len() {
            let start = Instant::now();
            self.launch(i)?;
            if self.timing {
                self.gpu.stream.synchronize()?;
                self.timings[i] += start.elapsed();
            }
        }
        Ok(())
    }

    fn launch(&self, i: usize) -> Result<(), CudaError> {
        let plan = &self.plans[i];
        let cfg = LaunchConfig {
            grid_dim: (plan.grid[0], plan.grid[1], plan.grid[2]),
            block_dim: (plan.block[0], plan.block[1], plan.block[2]),
            // Tiles and reduction arrays are static `.shared` arrays.
            shared_mem_bytes: 0,
        };
        let views = plan
            .params
            .iter()
            .map(|b| self.view(*b))
            .collect::<Result<Vec<_>, _>>()?;
        let mut args = self.gpu.stream.launch_builder(&self.functions[i]);
        for v in &views {
            args.arg(v);
        }
        // SAFETY: the entry takes exactly `plan.params.len()` `.u64`
        // pointers, in this order; each points at a range of exactly the
        // length the kernel was generated for (the launch-geometry
        // interpreter checks each access of this geometry against those
        // lengths), and the memory plan keeps the ranges of buffers that
        // are live together disjoint.
        unsafe { args.launch(cfg) }
            .map_err(|e| CudaError::Driver(format!("launching kernel `{}`: {e}", plan.kernel)))?;
        Ok(())
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.gpu.stream.synchronize()?;
        Ok(())
    }
}

/// "model `m`", for messages.
fn describe(p: &Program) -> String {
    format!("model `{}`", p.name)
}

fn arena_what(p: &Program) -> String {
    format!("the temporaries of model `{}`", p.name)
}
