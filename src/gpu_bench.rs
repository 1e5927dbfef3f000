//! `netc bench --device cuda`: times the forward pass of the generated PTX
//! on GPU 0, whole runs and then kernel by kernel.

use netc_compiler::codegen::ptx::PtxOptions;
use netc_compiler::kernel::{ir::Program, KernelBody};
use netc_compiler::Graph;
use netc_runtime::cuda::{self, CudaError, CudaExecutable, Footprint};
use netc_runtime::init_weights;
use std::time::Instant;

/// Benchmarks `program` (`model` compiled, its PTX generated under `ptx`)
/// for `iters` runs. `relower(b)`
/// is the same program at batch `b`, to name the largest batch that fits
/// when `program` does not.
pub fn bench_cuda(
    model: &Graph,
    program: Program,
    iters: usize,
    ptx: &PtxOptions,
    seed: u64,
    relower: &dyn Fn(usize) -> Option<Program>,
) -> Result<String, String> {
    let batch = program.batch;
    let gpu = cuda::open().map_err(|e| e.to_string())?;
    let w = init_weights(model, seed).map_err(|e| e.to_string())?;
    let inputs = crate::running::bench_inputs(&program)?;
    let compile_start = Instant::now();
    let mut exe = CudaExecutable::compile_with(&gpu, program, ptx).map_err(|e| match e {
        CudaError::OutOfMemory(s) => CudaError::OutOfMemory(
            s.with_largest_batch(|b| relower(b).map(|p| Footprint::of(&p).total())),
        )
        .to_string(),
        e => e.to_string(),
    })?;
    let compile_ms = compile_start.elapsed().as_secs_f64() * 1e3;
    exe.set_weights(&w).map_err(|e| e.to_string())?;
    for (n, t) in &inputs {
        exe.set_input(n, t).map_err(|e| e.to_string())?;
    }
    let err = |e: netc_runtime::cuda::CudaError| e.to_string();
    // Warm-up (the driver finishes compiling the PTX on first launch; the
    // second run captures the step as a CUDA graph, which the timed runs
    // replay).
    for _ in 0..2 {
        exe.run().map_err(err)?;
    }
    exe.synchronize().map_err(err)?;
    let start = Instant::now();
    for _ in 0..iters {
        exe.run().map_err(err)?;
    }
    exe.synchronize().map_err(err)?;
    let per_run = start.elapsed().as_secs_f64() / iters as f64;
    // Per kernel: synchronized after each launch, so includes launch cost.
    exe.time_kernels(true);
    for _ in 0..iters {
        exe.run().map_err(err)?;
    }
    let mut out = format!(
        "model `{}` on {} (--device cuda), batch {batch}, {iters} runs\n\
         module load {compile_ms:.1} ms; forward {:.3} ms per run ({:.0} examples/s)\n\n",
        model.name,
        cuda::device_name(&gpu),
        per_run * 1e3,
        batch as f64 / per_run
    );
    out.push_str(&format!(
        "{:<32} {:>10} {:>10}\n",
        "kernel", "ms/run", "GFLOP/s"
    ));
    for (k, t) in exe.program().kernels.iter().zip(&exe.timings) {
        let ms = t.as_secs_f64() * 1e3 / iters as f64;
        let gflops = match &k.body {
            KernelBody::Contraction(c) => format!("{:.1}", c.flops() / (ms * 1e6).max(1e-12)),
            KernelBody::Loop(_) => "-".into(),
        };
        out.push_str(&format!("{:<32} {ms:>10.4} {gflops:>10}\n", k.name));
    }
    Ok(out)
}
