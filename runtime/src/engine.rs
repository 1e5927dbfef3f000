//! The device a program runs on, chosen at run time (`--device cpu|cuda`):
//! one interface over the Cranelift executor and the CUDA executor, so the
//! training loop and the CLI do not care which one they drive.

use crate::cuda::{self, CudaExecutable, Gpu};
use crate::exec::{ExecError, Executable};
use crate::tensor::Tensor;
use crate::weights::Weights;
use netc_compiler::codegen::cpu::KernelPath;
use netc_compiler::codegen::ptx::PtxOptions;
use netc_compiler::kernel::Program;
use std::borrow::Cow;

/// Which device to run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// Cranelift-compiled kernels on the host's cores.
    #[default]
    Cpu,
    /// Generated PTX on CUDA GPU 0.
    Cuda,
}

/// An opened device, ready to compile programs for.
#[derive(Clone, Debug)]
pub enum Target {
    /// The CPU with this many worker threads, and which code generator
    /// builds its contraction kernels.
    Cpu(usize, KernelPath),
    /// An open GPU, and the options its PTX is generated with (e.g.
    /// TF32 contractions).
    Cuda(Gpu, PtxOptions),
}

impl Target {
    /// Opens `device` (for CUDA: checks for the driver, creates the
    /// context; fails with one clear line when there is none).
    pub fn open(device: Device, threads: usize) -> Result<Self, ExecError> {
        Ok(match device {
            Device::Cpu => Target::Cpu(threads.max(1), KernelPath::Auto),
            Device::Cuda => Target::Cuda(cuda::open()?, PtxOptions::default()),
        })
    }

    /// This target with CPU contractions built by `kernels` (a GPU target
    /// is unchanged).
    pub fn with_kernels(self, kernels: KernelPath) -> Self {
        match self {
            Target::Cpu(threads, _) => Target::Cpu(threads, kernels),
            other => other,
        }
    }

    /// This target with its PTX generated under `ptx` (a CPU target is
    /// unchanged: the options concern only the GPU's code).
    pub fn with_ptx(self, ptx: PtxOptions) -> Self {
        match self {
            Target::Cuda(gpu, _) => Target::Cuda(gpu, ptx),
            other => other,
        }
    }
}

/// A compiled program on some device.
pub enum Engine {
    /// On the CPU.
    Cpu(Box<Executable>),
    /// On a GPU.
    Cuda(Box<CudaExecutable>),
}

impl Engine {
    /// Compiles `program` for `target` and allocates its memory.
    pub fn compile(program: Program, target: &Target) -> Result<Self, ExecError> {
        Ok(match target {
            Target::Cpu(threads, kernels) => Engine::Cpu(Box::new(Executable::compile_with(
                program, *threads, *kernels,
            )?)),
            Target::Cuda(gpu, ptx) => {
                Engine::Cuda(Box::new(CudaExecutable::compile_with(gpu, program, ptx)?))
            }
        })
    }

    /// The program being run.
    pub fn program(&self) -> &Program {
        match self {
            Engine::Cpu(e) => e.program(),
            Engine::Cuda(e) => e.program(),
        }
    }

    /// Copies all parameters from `weights`, which must match exactly.
    pub fn set_weights(&mut self, weights: &Weights) -> Result<(), ExecError> {
        match self {
            Engine::Cpu(e) => e.set_weights(weights),
            Engine::Cuda(e) => Ok(e.set_weights(weights)?),
        }
    }

    /// Sets input `name`.
    pub fn set_input(&mut self, name: &str, t: &Tensor) -> Result<(), ExecError> {
        match self {
            Engine::Cpu(e) => e.set_input(name, t),
            Engine::Cuda(e) => Ok(e.set_input(name, t)?),
        }
    }

    /// Overwrites buffer `b` (a parameter or optimizer state).
    pub fn write_buffer(&mut self, b: usize, data: &[f32]) -> Result<(), ExecError> {
        match self {
            Engine::Cpu(e) => e.write_buffer(b, data),
            Engine::Cuda(e) => Ok(e.write_buffer(b, data)?),
        }
    }

    /// Moves buffer `ob` of `other` into buffer `b` of this engine (a
    /// parameter or optimizer state of the same model compiled at another
    /// size): an exchange of storage (host memory on the CPU, device
    /// allocations on a GPU); a copy between devices.
    pub fn take_buffer(
        &mut self,
        b: usize,
        other: &mut Engine,
        ob: usize,
    ) -> Result<(), ExecError> {
        match (self, other) {
            (Engine::Cpu(e), Engine::Cpu(o)) => e.swap_buffer(b, o, ob),
            (Engine::Cuda(e), Engine::Cuda(o)) => Ok(e.swap_buffer(b, o, ob)?),
            (me, other) => {
                let data = other.read(ob)?.into_owned();
                me.write_buffer(b, &data)
            }
        }
    }

    /// Fills the dropout mask inputs `masks` (`(input name, drop rate)`)
    /// for training step `step` of a run seeded `seed`: mask `m` is
    /// `netc_compiler::dropout::fill_mask(seed, step, m, rate)` on either
    /// device (on the CPU computed here into the input; on a GPU by a
    /// generated kernel, with nothing copied up but one key per mask).
    pub fn dropout_masks(
        &mut self,
        masks: &[(String, f32)],
        seed: u64,
        step: u64,
    ) -> Result<(), ExecError> {
        let bufs = masks
            .iter()
            .map(|(name, rate)| {
                self.program()
                    .inputs
                    .iter()
                    .find(|i| &i.name == name)
                    .map(|i| (i.buf, *rate))
                    .ok_or_else(|| ExecError::Input(format!("no dropout mask input `{name}`")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        match self {
            Engine::Cpu(e) => {
                for (m, (b, rate)) in bufs.into_iter().enumerate() {
                    let out = e.own_buffer_mut(b).ok_or_else(|| {
                        ExecError::Input(format!("dropout mask buffer {b} is a temporary"))
                    })?;
                    netc_compiler::dropout::fill_mask(seed, step, m as u32, rate, out);
                }
                Ok(())
            }
            Engine::Cuda(e) => Ok(e.dropout_masks(&bufs, seed, step)?),
        }
    }

    /// Whether reads are worth deferring: on a GPU each read is a
    /// synchronization, so the trainer queues a step's results with
    /// [`Self::read_later`] and takes them once per progress update.
    pub fn defers_reads(&self) -> bool {
        matches!(self, Engine::Cuda(_))
    }

    /// Queues a copy of buffer `b` (after the work queued so far) for
    /// [`Self::take_reads`], on an engine that [`defers_reads`](Self::defers_reads)
    /// (the CPU's buffers are read in place with [`Self::read`]).
    pub fn read_later(&mut self, b: usize) -> Result<(), ExecError> {
        match self {
            Engine::Cpu(_) => Err(not_deferred()),
            Engine::Cuda(e) => Ok(e.read_later(b)?),
        }
    }

    /// Queues the per-row classification scores of buffer `pred` (rows of
    /// `classes`) against the labels in buffer `target` (1 correct, 0
    /// wrong, -1 padding; `codegen::ptx::score`), computed on the device,
    /// for [`Self::take_reads`]; only on an engine that
    /// [`defers_reads`](Self::defers_reads).
    pub fn score_later(
        &mut self,
        pred: usize,
        target: usize,
        classes: usize,
    ) -> Result<(), ExecError> {
        match self {
            Engine::Cpu(_) => Err(not_deferred()),
            Engine::Cuda(e) => Ok(e.score_later(pred, target, classes)?),
        }
    }

    /// Every buffer queued by [`Self::read_later`] since the last call, in
    /// order (the GPU is waited for once).
    pub fn take_reads(&mut self) -> Result<Vec<Vec<f32>>, ExecError> {
        match self {
            Engine::Cpu(_) => Err(not_deferred()),
            Engine::Cuda(e) => Ok(e.take_reads()?),
        }
    }

    /// Gives the temporaries' memory back until the next [`Self::run`]
    /// (outputs included: read them first). On a GPU the arena is freed
    /// and allocated again by the next run, so programs that take turns
    /// (a training step and its evaluation, the step programs of several
    /// sequence lengths) hold one arena at a time; on the CPU, where host
    /// memory is plentiful and the arena is reused, nothing happens.
    pub fn release_temporaries(&mut self) -> Result<(), ExecError> {
        match self {
            Engine::Cpu(_) => Ok(()),
            Engine::Cuda(e) => Ok(e.release_arena()?),
        }
    }

    /// Runs every kernel.
    pub fn run(&mut self) -> Result<(), ExecError> {
        match self {
            Engine::Cpu(e) => e.run(),
            Engine::Cuda(e) => Ok(e.run()?),
        }
    }

    /// The contents of buffer `b` (copied back from a GPU).
    pub fn read(&self, b: usize) -> Result<Cow<'_, [f32]>, ExecError> {
        match self {
            Engine::Cpu(e) => Ok(Cow::Borrowed(e.buffer(b))),
            Engine::Cuda(e) => Ok(Cow::Owned(e.read_buffer(b)?)),
        }
    }

    /// Output `i` as a tensor.
    pub fn output(&self, i: usize) -> Result<Tensor, ExecError> {
        match self {
            Engine::Cpu(e) => e
                .output(i)
                .ok_or_else(|| ExecError::Input(format!("no output {i}"))),
            Engine::Cuda(e) => Ok(e.output(i)?),
        }
    }
}

fn not_deferred() -> ExecError {
    ExecError::Input("the CPU engine's buffers are read in place, not queued".into())
}
