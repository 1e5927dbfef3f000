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
//!
//! A step is kept lean:
//!
//! - inputs (data, targets, hyper-parameters) are written into a pinned
//!   host buffer per input and copied up asynchronously on the stream, so
//!   the host goes on preparing the next step (a pageable copy is staged
//!   and synchronous inside the driver);
//! - dropout masks are generated on the device by [`Self::dropout_masks`]
//!   (only the 8-byte key of each mask goes up);
//! - results the trainer needs (losses, statistics, predictions) are
//!   copied down asynchronously into pinned buffers by
//!   [`Self::read_later`] and read, after one synchronization, by
//!   [`Self::take_reads`] once per progress update;
//! - from the second run on, the kernels are captured once as a CUDA graph
//!   and each run is one graph launch (plain launches if capture fails, in
//!   checked mode, and while kernels are timed); the graph is captured
//!   again when an allocation it uses changes (the arena given back, a
//!   buffer exchanged).

use super::footprint::{check_fits, Footprint};
use super::{CudaError, Gpu};
use crate::memory::bytes;
use crate::tensor::Tensor;
use crate::weights::Weights;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{
    CudaFunction, CudaGraph, CudaSlice, CudaView, LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use netc_compiler::codegen::ptx::dropout::{dropout_ptx, MaskEntry, MASK_BLOCK};
use netc_compiler::codegen::ptx::score::{score_ptx, SCORE_BLOCK, SCORE_ENTRY};
use netc_compiler::codegen::ptx::{program_ptx_with, KernelPlan, PtxOptions};
use netc_compiler::dropout::mask_key;
use netc_compiler::kernel::plan::{plan, MemoryPlan};
use netc_compiler::kernel::{BufKind, Program};
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
    /// A pinned host buffer per input, holding what goes up next.
    staging: Vec<Option<PinnedHostSlice<f32>>>,
    /// The step as a CUDA graph, once captured.
    graph: Option<CudaGraph>,
    /// Capture failed once: launch kernel by kernel from then on.
    graph_failed: bool,
    /// Runs so far (the first runs plainly, so a failure in it is a
    /// plain launch's).
    runs: u64,
    /// The dropout-mask kernels, built by the first [`Self::dropout_masks`].
    dropout: Option<DeviceDropout>,
    /// The score kernel, built by the first [`Self::score_later`].
    score: Option<DeviceScore>,
    /// Copies queued by [`Self::read_later`], in order, with their
    /// lengths (a buffer has at least one element).
    pending: Vec<(PinnedHostSlice<f32>, usize)>,
    /// Pinned buffers whose copies were read, for reuse.
    spare: Vec<PinnedHostSlice<f32>>,
}

/// The classification-score kernel for one shape, and its output.
struct DeviceScore {
    rows: usize,
    classes: usize,
    function: CudaFunction,
    grid: u32,
    /// One value per row (see `codegen::ptx::score`).
    out: CudaSlice<f32>,
}

/// The dropout-mask kernels of one set of masks.
struct DeviceDropout {
    /// `(buffer, rate)` of each mask, as built.
    masks: Vec<(usize, f32)>,
    entries: Vec<MaskEntry>,
    functions: Vec<CudaFunction>,
    /// One key per mask (see `netc_compiler::dropout`).
    keys: CudaSlice<u64>,
    keys_host: PinnedHostSlice<u64>,
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
        let loaded = super::jit::load(
            gpu,
            &module.text,
            &format!(
                "{} (batch {}, {} kernels)",
                describe(&program),
                program.batch,
                module.plans.len()
            ),
        )?;
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
        let staging = program.buffers.iter().map(|_| None).collect();
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
            staging,
            graph: None,
            graph_failed: false,
            runs: 0,
            dropout: None,
            score: None,
            pending: Vec::new(),
            spare: Vec::new(),
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
    /// temporary) with `data` (host → device). An input goes through its
    /// pinned staging buffer and is copied asynchronously (the call waits
    /// only for the previous copy from that buffer); parameters, written
    /// once, are copied directly.
    pub fn write_buffer(&mut self, b: usize, data: &[f32]) -> Result<(), CudaError> {
        let len = self.program.buffers.get(b).map_or(0, |x| x.len);
        let input = self
            .program
            .buffers
            .get(b)
            .is_some_and(|x| matches!(x.kind, BufKind::Input(_)));
        match self.own.get_mut(b) {
            Some(Some(dst)) if data.len() == len && len > 0 && input => {
                let staged = match &mut self.staging[b] {
                    Some(s) => s,
                    slot => {
                        // SAFETY: the buffer is filled below before any copy
                        // reads it. Write-combined: the host only writes it.
                        let s = unsafe { self.gpu.ctx.alloc_pinned::<f32>(len) }.map_err(|e| {
                            CudaError::Driver(format!(
                                "allocating {} of pinned host memory for input `{}`: {e}",
                                bytes(crate::memory::f32_bytes(len)),
                                self.program.buffers[b].name
                            ))
                        })?;
                        slot.insert(s)
                    }
                };
                // Waits for the previous copy out of this buffer.
                staged.as_mut_slice()?.copy_from_slice(data);
                self.gpu
                    .stream
                    .memcpy_htod(&*staged, &mut dst.slice_mut(..len))?;
                Ok(())
            }
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
                // Both graphs point at the old allocations.
                self.graph = None;
                other.graph = None;
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
            // The next arena is another allocation.
            self.graph = None;
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

    /// Queues the step on the stream: every kernel, as one graph launch
    /// once the step is captured (returns before they finish unless
    /// kernels are timed or the mode is checked; reads synchronize).
    pub fn run(&mut self) -> Result<(), CudaError> {
        self.ensure_arena()?;
        let plain = self.timing || self.gpu.checked || self.graph_failed || self.runs == 0;
        self.runs += 1;
        if !plain && self.graph.is_none() {
            self.graph = self.capture();
            if self.graph.is_none() {
                self.graph_failed = true;
            }
        }
        if let (false, Some(g)) = (plain, &self.graph) {
            g.launch()
                .map_err(|e| CudaError::Driver(format!("launching the step's graph: {e}")))?;
            return Ok(());
        }
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

    /// Captures the kernels of a step as a graph; `None` (and a note on
    /// stderr) if the driver refuses, so the step runs kernel by kernel.
    fn capture(&self) -> Option<CudaGraph> {
        let stream = &self.gpu.stream;
        // Thread-local: another thread's unrelated CUDA calls do not
        // invalidate the capture.
        if let Err(e) =
            stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        {
            eprintln!("{}", capture_note(&self.program, &e.to_string()));
            return None;
        }
        let launched = (0..self.functions.len()).try_for_each(|i| self.launch(i));
        // The capture is always ended, so the stream leaves capture mode.
        let graph = stream.end_capture(CUgraphInstantiate_flags(0));
        match (launched, graph) {
            (Ok(()), Ok(Some(g))) => Some(g),
            (Err(e), _) => {
                eprintln!("{}", capture_note(&self.program, &e.to_string()));
                None
            }
            (_, Err(e)) => {
                eprintln!("{}", capture_note(&self.program, &e.to_string()));
                None
            }
            (_, Ok(None)) => {
                eprintln!("{}", capture_note(&self.program, "the capture was empty"));
                None
            }
        }
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
        self.check(&plan.kernel, i, self.functions.len())
    }

    /// In checked mode, waits for the launch just queued and names the
    /// kernel if it failed.
    fn check(&self, kernel: &str, i: usize, count: usize) -> Result<(), CudaError> {
        if !self.gpu.checked {
            return Ok(());
        }
        self.gpu
            .stream
            .synchronize()
            .map_err(|e| CudaError::KernelFailed {
                kernel: kernel.to_string(),
                index: i + 1,
                count,
                model: describe(&self.program),
                error: e.to_string(),
            })
    }

    /// Generates the dropout masks of training step `step` (counted over
    /// the whole run) on the device: mask `m` of `masks` (`(input buffer,
    /// drop rate)`) gets `netc_compiler::dropout::fill_mask(seed, step, m,
    /// rate)`, the CPU's masks. The first call JIT-compiles the mask
    /// kernels (again if `masks` changes); each later one uploads the
    /// step's keys (8 bytes per mask) and queues one launch per mask.
    pub fn dropout_masks(
        &mut self,
        masks: &[(usize, f32)],
        seed: u64,
        step: u64,
    ) -> Result<(), CudaError> {
        if masks.is_empty() {
            return Ok(());
        }
        if self.dropout.as_ref().is_none_or(|d| d.masks != masks) {
            self.dropout = Some(self.build_dropout(masks)?);
        }
        let Some(d) = self.dropout.as_mut() else {
            return Ok(());
        };
        for (m, k) in d.keys_host.as_mut_slice()?.iter_mut().enumerate() {
            *k = mask_key(seed, step, m as u32);
        }
        self.gpu.stream.memcpy_htod(&d.keys_host, &mut d.keys)?;
        let d = self.dropout.as_ref().expect("built above");
        for (i, ((b, _), (e, f))) in d
            .masks
            .iter()
            .zip(d.entries.iter().zip(&d.functions))
            .enumerate()
        {
            let out = self.view(*b)?;
            let mut args = self.gpu.stream.launch_builder(f);
            args.arg(&out);
            args.arg(&d.keys);
            let cfg = LaunchConfig {
                grid_dim: (e.grid, 1, 1),
                block_dim: (MASK_BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the entry takes two `.u64` pointers: the mask (its
            // threads write only elements below `e.len`, the buffer's
            // length, checked in `build_dropout`) and the keys (it reads
            // key `e.mask` < `keys.len()`).
            unsafe { args.launch(cfg) }.map_err(|err| {
                CudaError::Driver(format!("launching kernel `{}`: {err}", e.entry))
            })?;
            self.check(&e.entry, i, d.entries.len())?;
        }
        Ok(())
    }

    fn build_dropout(&self, masks: &[(usize, f32)]) -> Result<DeviceDropout, CudaError> {
        let lens = masks
            .iter()
            .map(|&(b, rate)| match self.program.buffers.get(b) {
                Some(x) if matches!(x.kind, BufKind::Input(_)) => Ok((x.len, rate)),
                _ => Err(CudaError::Input(format!(
                    "buffer {b} is not an input of {}: no dropout mask there",
                    describe(&self.program)
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let module = dropout_ptx(&lens).map_err(|e| CudaError::Codegen(e.to_string()))?;
        let loaded = super::jit::load(
            &self.gpu,
            &module.text,
            &format!("the dropout masks of {}", describe(&self.program)),
        )?;
        let functions = module
            .entries
            .iter()
            .map(|e| {
                loaded
                    .load_function(&e.entry)
                    .map_err(|err| CudaError::Module(format!("{}: {err}", e.entry)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = self
            .gpu
            .stream
            .alloc_zeros::<u64>(masks.len())
            .map_err(|e| CudaError::Driver(format!("allocating the dropout keys: {e}")))?;
        // SAFETY: filled before every copy (`dropout_masks`).
        let keys_host = unsafe { self.gpu.ctx.alloc_pinned::<u64>(masks.len()) }?;
        Ok(DeviceDropout {
            masks: masks.to_vec(),
            entries: module.entries,
            functions,
            keys,
            keys_host,
        })
    }

    /// Queues a copy of buffer `b` into pinned host memory, after the work
    /// queued so far, without waiting for it; [`Self::take_reads`] returns
    /// it.
    pub fn read_later(&mut self, b: usize) -> Result<(), CudaError> {
        let len = self.view(b)?.len();
        let mut dst = self.pinned_for_read(len)?;
        if len > 0 {
            let view = self.view(b)?;
            self.gpu.stream.memcpy_dtoh(&view, &mut dst)?;
        }
        self.pending.push((dst, len));
        Ok(())
    }

    /// A pinned buffer of `len` floats to copy into: a spare one of that
    /// length, or a new one.
    fn pinned_for_read(&mut self, len: usize) -> Result<PinnedHostSlice<f32>, CudaError> {
        Ok(
            match self.spare.iter().position(|s| s.len() == len.max(1)) {
                Some(i) => self.spare.swap_remove(i),
                // SAFETY: only read after the copy into it completed. Not
                // write-combined: the host reads it.
                None => unsafe { self.gpu.ctx.alloc_pinned_with_flags::<f32>(len.max(1), 0) }?,
            },
        )
    }

    /// Scores the predictions in buffer `pred` (rows of `classes` values)
    /// against the class labels in buffer `target` (one per row) on the
    /// device and queues the per-row results (1 correct, 0 wrong, -1
    /// padding; `codegen::ptx::score`) for [`Self::take_reads`]: one value
    /// per row comes back instead of the predictions. The kernel is
    /// JIT-compiled by the first call for a shape.
    pub fn score_later(
        &mut self,
        pred: usize,
        target: usize,
        classes: usize,
    ) -> Result<(), CudaError> {
        let rows = self.view(target)?.len();
        let pred_len = self.view(pred)?.len();
        if classes == 0 || pred_len != rows * classes {
            return Err(CudaError::Input(format!(
                "cannot score {pred_len} predictions in rows of {classes} against {rows} labels"
            )));
        }
        if self
            .score
            .as_ref()
            .is_none_or(|s| (s.rows, s.classes) != (rows, classes))
        {
            let module = score_ptx(rows, classes).map_err(|e| CudaError::Codegen(e.to_string()))?;
            let loaded = super::jit::load(
                &self.gpu,
                &module.text,
                &format!("the scores of {}", describe(&self.program)),
            )?;
            let function = loaded
                .load_function(SCORE_ENTRY)
                .map_err(|e| CudaError::Module(format!("{SCORE_ENTRY}: {e}")))?;
            self.score = Some(DeviceScore {
                rows,
                classes,
                function,
                grid: module.grid,
                out: alloc(&self.gpu, rows, "the per-row scores")?,
            });
        }
        let s = self.score.as_ref().expect("built above");
        let (p, t) = (self.view(pred)?, self.view(target)?);
        let mut args = self.gpu.stream.launch_builder(&s.function);
        args.arg(&p);
        args.arg(&t);
        args.arg(&s.out);
        let cfg = LaunchConfig {
            grid_dim: (s.grid, 1, 1),
            block_dim: (SCORE_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the entry takes three `.u64` pointers: `rows·classes`
        // predictions, `rows` labels and `rows` outputs (lengths checked
        // above, `out` allocated with `rows`); threads past `rows` return.
        unsafe { args.launch(cfg) }
            .map_err(|e| CudaError::Driver(format!("launching kernel `{SCORE_ENTRY}`: {e}")))?;
        self.check(SCORE_ENTRY, 0, 1)?;
        let mut dst = self.pinned_for_read(rows)?;
        let s = self.score.as_ref().expect("built above");
        self.gpu
            .stream
            .memcpy_dtoh(&s.out.slice(..rows), &mut dst)?;
        self.pending.push((dst, rows));
        Ok(())
    }

    /// The buffers queued by [`Self::read_later`] since the last call, in
    /// order, after waiting for the stream once.
    pub fn take_reads(&mut self) -> Result<Vec<Vec<f32>>, CudaError> {
        self.gpu.stream.synchronize()?;
        let mut out = Vec::with_capacity(self.pending.len());
        for (p, len) in std::mem::take(&mut self.pending) {
            out.push(p.as_slice()?[..len].to_vec());
            self.spare.push(p);
        }
        Ok(out)
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

/// The note printed when a step cannot be captured as a graph.
fn capture_note(p: &Program, why: &str) -> String {
    format!(
        "netc: {} runs kernel by kernel (CUDA graph capture failed: {why})",
        describe(p)
    )
}
