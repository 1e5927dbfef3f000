//! A lowered program on the GPU: one PTX module, one device buffer per
//! program buffer (allocated once), kernels launched in order on one
//! stream with the geometry of their launch plans.

use super::{CudaError, Gpu};
use crate::tensor::Tensor;
use crate::weights::Weights;
use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use netc_compiler::codegen::ptx::{program_ptx, KernelPlan};
use netc_compiler::kernel::Program;
use std::time::{Duration, Instant};

/// A program loaded on a GPU with its device memory.
pub struct CudaExecutable {
    gpu: Gpu,
    program: Program,
    plans: Vec<KernelPlan>,
    functions: Vec<CudaFunction>,
    buffers: Vec<CudaSlice<f32>>,
    /// Time spent in each kernel (synchronized after each launch) since
    /// timing was switched on with [`Self::time_kernels`].
    pub timings: Vec<Duration>,
    timing: bool,
}

impl CudaExecutable {
    /// Generates and loads the PTX of `program` and allocates every buffer
    /// (zeroed) on `gpu`.
    pub fn compile(gpu: &Gpu, program: Program) -> Result<Self, CudaError> {
        let module = program_ptx(&program).map_err(|e| CudaError::Codegen(e.to_string()))?;
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
        let buffers = program
            .buffers
            .iter()
            // Zero-length buffers still get one element so every kernel
            // parameter is a valid pointer.
            .map(|b| gpu.stream.alloc_zeros::<f32>(b.len.max(1)))
            .collect::<Result<Vec<_>, _>>()?;
        let n = program.kernels.len();
        Ok(CudaExecutable {
            gpu: gpu.clone(),
            program,
            plans: module.plans,
            functions,
            buffers,
            timings: vec![Duration::ZERO; n],
            timing: false,
        })
    }

    /// The program being run.
    pub fn program(&self) -> &Program {
        &self.program
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

    /// Overwrites buffer `b` with `data` (host → device).
    pub fn write_buffer(&mut self, b: usize, data: &[f32]) -> Result<(), CudaError> {
        let len = self.program.buffers.get(b).map_or(0, |x| x.len);
        if data.len() != len || len == 0 {
            return Err(CudaError::Input(format!(
                "buffer {b} holds {len} values; {} given",
                data.len()
            )));
        }
        self.gpu.stream.memcpy_htod(data, &mut self.buffers[b])?;
        Ok(())
    }

    /// Reads buffer `b` back (device → host), after all queued work.
    pub fn read_buffer(&self, b: usize) -> Result<Vec<f32>, CudaError> {
        let len = self
            .program
            .buffers
            .get(b)
            .map(|x| x.len)
            .ok_or_else(|| CudaError::Input(format!("no buffer {b}")))?;
        let mut out = vec![0f32; self.buffers[b].len()];
        self.gpu.stream.memcpy_dtoh(&self.buffers[b], &mut out)?;
        self.gpu.stream.synchronize()?;
        out.truncate(len);
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

    /// Queues every kernel on the stream (returns before they finish unless
    /// kernels are timed; reads synchronize).
    pub fn run(&mut self) -> Result<(), CudaError> {
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

    fn launch(&mut self, i: usize) -> Result<(), CudaError> {
        let plan = &self.plans[i];
        let cfg = LaunchConfig {
            grid_dim: (plan.grid[0], plan.grid[1], plan.grid[2]),
            block_dim: (plan.block[0], plan.block[1], plan.block[2]),
            // Tiles and reduction arrays are static `.shared` arrays.
            shared_mem_bytes: 0,
        };
        let mut args = self.gpu.stream.launch_builder(&self.functions[i]);
        for b in &plan.params {
            args.arg(&self.buffers[*b]);
        }
        // SAFETY: the entry takes exactly `plan.params.len()` `.u64`
        // pointers, in this order, and every buffer has the length the
        // kernel was generated for (the launch-geometry interpreter checks
        // each access of this geometry against those lengths).
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
