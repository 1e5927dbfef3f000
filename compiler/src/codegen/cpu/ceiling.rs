//! FMA throughput probes: the peak a 128-bit (`f32x4`) Cranelift kernel can
//! reach on this CPU, and, where the CPU has AVX2 and FMA, the 256-bit
//! (`ymm`) peak that Cranelift cannot emit but the core can do
//! ([`measure_fma256_ceiling_gflops`]), and where it has AVX-512F the
//! 512-bit (`zmm`) peak ([`measure_fma512_ceiling_gflops`]). Efficiency
//! ratios are reported against the highest ([`Ceilings::widest`]), so a
//! kernel at 0.8 of the 128-bit ceiling is seen to use about 0.4 of an
//! AVX2 core, and an AVX2 kernel on a core with two 512-bit FMA units
//! about half of it.

use std::time::Instant;

use cranelift_codegen::ir::{types, AbiParam, Function, InstBuilder, MemFlagsData, Signature};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};

use super::jit::{native_isa, JitCode, OptLevel};
use super::CodegenError;

/// Independent accumulators: FMA latency (4 cycles) times the FMA ports (2)
/// is 8 in flight; 12 leaves slack without spilling the 16 xmm registers.
const CHAINS: usize = 12;
/// FMA rounds per loop iteration, so the loop counter is noise.
const UNROLL: usize = 8;
const FLOPS_PER_ITER: f64 = (CHAINS * UNROLL * 4 * 2) as f64;

type CeilingFn = unsafe extern "C" fn(u64, *const f32, *mut f32);

/// A compiled FMA probe.
pub struct FmaCeiling {
    code: JitCode,
}

impl FmaCeiling {
    /// Compiles the probe for the host CPU.
    pub fn compile() -> Result<Self, CodegenError> {
        let isa = native_isa(OptLevel::None)?;
        let func = build(&isa);
        let code = JitCode::compile(isa, "netc_fma_ceiling", func, false)?;
        Ok(FmaCeiling { code })
    }

    /// Runs `iters` loop iterations on the calling thread; returns FLOPs done.
    pub fn run(&self, iters: u64) -> f64 {
        let inputs = [
            0.999_999_9f32,
            0.999_999_9,
            0.999_999_9,
            0.999_999_9,
            1e-7,
            1e-7,
            1e-7,
            1e-7,
        ];
        let mut out = [0f32; 4];
        // SAFETY: the function reads 8 floats from `inputs` and writes 4 to
        // `out`, both live for the call; the code lives as long as `self`.
        unsafe {
            let f: CeilingFn = std::mem::transmute(self.code.ptr());
            f(iters.max(1), inputs.as_ptr(), out.as_mut_ptr());
        }
        std::hint::black_box(out);
        iters.max(1) as f64 * FLOPS_PER_ITER
    }
}

/// Measures the 128-bit FMA throughput in GFLOP/s with `threads` threads
/// running the probe concurrently (best of several runs).
pub fn measure_fma_ceiling_gflops(threads: usize) -> Result<f64, CodegenError> {
    let probe = FmaCeiling::compile()?;
    let threads = threads.max(1);
    // Calibrate to about 50 ms per run so timer resolution and thread start
    // are negligible.
    let mut iters = 1u64 << 16;
    loop {
        let t = Instant::now();
        probe.run(iters);
        if t.elapsed().as_secs_f64() > 0.02 || iters >= 1 << 32 {
            break;
        }
        iters *= 2;
    }
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let flops: Result<f64, CodegenError> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(|| probe.run(iters))).collect();
            handles.into_iter().try_fold(0.0, |acc, h| {
                h.join()
                    .map(|f| acc + f)
                    .map_err(|_| CodegenError::Thread("FMA probe panicked".into()))
            })
        });
        let secs = t.elapsed().as_secs_f64();
        best = best.max(flops? / secs / 1e9);
    }
    Ok(best)
}

/// Both FMA ceilings of this machine on one thread count, in GFLOP/s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ceilings {
    /// What 128-bit (`f32x4`) FMAs reach: the Cranelift kernels' width.
    pub f128: f64,
    /// What 256-bit (AVX2 `ymm`) FMAs reach; `None` without AVX2 + FMA.
    pub f256: Option<f64>,
    /// What 512-bit (AVX-512 `zmm`) FMAs reach; `None` without AVX-512F.
    /// Some cores (AMD Zen 4) split a `zmm` FMA in two, so this can equal
    /// the 256-bit figure; others issue two a cycle and double it.
    pub f512: Option<f64>,
}

impl Ceilings {
    /// Measures all three with `threads` threads.
    pub fn measure(threads: usize) -> Result<Ceilings, CodegenError> {
        Ok(Ceilings {
            f128: measure_fma_ceiling_gflops(threads)?,
            f256: measure_fma256_ceiling_gflops(threads),
            f512: measure_fma512_ceiling_gflops(threads),
        })
    }

    /// The highest ceiling the machine has (the honest denominator), and
    /// its width in bits.
    pub fn widest(&self) -> (f64, u32) {
        [(self.f256, 256), (self.f512, 512)]
            .into_iter()
            .filter_map(|(g, bits)| g.map(|g| (g, bits)))
            .fold(
                (self.f128, 128),
                |best, c| if c.0 > best.0 { c } else { best },
            )
    }
}

/// Measures the 256-bit FMA throughput (12 independent `vfmadd` chains on
/// `ymm` registers) in GFLOP/s with `threads` threads; `None` where the
/// CPU lacks AVX2 or FMA (or is not x86-64).
pub fn measure_fma256_ceiling_gflops(threads: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return None;
        }
        let run = |iters: u64| -> f64 {
            // SAFETY: AVX2 and FMA were detected above.
            let r = unsafe { fma256::run(iters) };
            std::hint::black_box(r);
            iters as f64 * fma256::FLOPS_PER_ITER
        };
        Some(best_of(threads, run))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = threads;
        None
    }
}

/// Measures the 512-bit FMA throughput (12 independent `vfmadd` chains on
/// `zmm` registers) in GFLOP/s with `threads` threads; `None` where the
/// CPU lacks AVX-512F (or is not x86-64). The ceiling of the `zmm`
/// contraction kernels (`IsaLevel::Avx512`).
pub fn measure_fma512_ceiling_gflops(threads: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return None;
        }
        let run = |iters: u64| -> f64 {
            // SAFETY: AVX-512F was detected above.
            let r = unsafe { fma512::run(iters) };
            std::hint::black_box(r);
            iters as f64 * fma512::FLOPS_PER_ITER
        };
        Some(best_of(threads, run))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = threads;
        None
    }
}

/// The best GFLOP/s of five runs of `run(iters)` on `threads` threads at
/// once, `iters` calibrated to about 20 ms a run.
#[cfg(target_arch = "x86_64")]
fn best_of(threads: usize, run: impl Fn(u64) -> f64 + Sync) -> f64 {
    let mut iters = 1u64 << 12;
    loop {
        let t = Instant::now();
        run(iters);
        if t.elapsed().as_secs_f64() > 0.02 || iters >= 1 << 32 {
            break;
        }
        iters *= 2;
    }
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let flops: f64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads.max(1))
                .map(|_| s.spawn(|| run(iters)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        best = best.max(flops / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

#[cfg(target_arch = "x86_64")]
mod fma256 {
    use std::arch::x86_64::*;

    /// Independent `ymm` accumulators: as for the 128-bit probe, more than
    /// latency × ports (8) and fewer than the 16 registers.
    const CHAINS: usize = 12;
    const UNROLL: usize = 8;
    pub(super) const FLOPS_PER_ITER: f64 = (CHAINS * UNROLL * 8 * 2) as f64;

    /// `iters` rounds of `UNROLL` FMAs on each of `CHAINS` accumulators;
    /// returns their sum so nothing is dead.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run(iters: u64) -> f32 {
        let x = _mm256_set1_ps(0.999_999_9);
        let y = _mm256_set1_ps(1e-7);
        let mut acc = [_mm256_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for _ in 0..UNROLL {
                for a in acc.iter_mut() {
                    *a = _mm256_fmadd_ps(*a, x, y);
                }
            }
        }
        let mut sum = _mm256_setzero_ps();
        for a in acc {
            sum = _mm256_add_ps(sum, a);
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), sum);
        out.iter().sum()
    }
}

#[cfg(target_arch = "x86_64")]
mod fma512 {
    use std::arch::x86_64::*;

    /// As for the 256-bit probe (32 `zmm` registers leave room for more,
    /// but 12 already cover latency × ports).
    const CHAINS: usize = 12;
    const UNROLL: usize = 8;
    pub(super) const FLOPS_PER_ITER: f64 = (CHAINS * UNROLL * 16 * 2) as f64;

    /// `iters` rounds of `UNROLL` FMAs on each of `CHAINS` accumulators;
    /// returns their sum so nothing is dead.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run(iters: u64) -> f32 {
        let x = _mm512_set1_ps(0.999_999_9);
        let y = _mm512_set1_ps(1e-7);
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for _ in 0..UNROLL {
                for a in acc.iter_mut() {
                    *a = _mm512_fmadd_ps(*a, x, y);
                }
            }
        }
        let mut sum = _mm512_setzero_ps();
        for a in acc {
            sum = _mm512_add_ps(sum, a);
        }
        _mm512_reduce_add_ps(sum)
    }
}

/// `fn(iters, inputs: *const [f32; 8], out: *mut [f32; 4])`: `CHAINS`
/// accumulators each updated `acc = acc * x + y` `UNROLL` times per
/// iteration, then summed into `out` so nothing is dead.
fn build(isa: &OwnedTargetIsa) -> Function {
    let ptr = isa.pointer_type();
    let mut sig = Signature::new(isa.default_call_conv());
    sig.params.extend([
        AbiParam::new(types::I64),
        AbiParam::new(ptr),
        AbiParam::new(ptr),
    ]);
    let mut func = Function::with_name_signature(Default::default(), sig);
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut func, &mut fctx);
    let flags = MemFlagsData::new().with_notrap();

    let entry = b.create_block();
    let body = b.create_block();
    let exit = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let (iters, inp, out) = {
        let p = b.block_params(entry);
        (p[0], p[1], p[2])
    };
    let x = b.ins().load(types::F32X4, flags, inp, 0);
    let y = b.ins().load(types::F32X4, flags, inp, 16);
    let count = b.declare_var(types::I64);
    b.def_var(count, iters);
    let accs: Vec<_> = (0..CHAINS)
        .map(|_| {
            let v = b.declare_var(types::F32X4);
            b.def_var(v, y);
            v
        })
        .collect();
    b.ins().jump(body, &[]);

    b.switch_to_block(body);
    for _ in 0..UNROLL {
        for &acc in &accs {
            let a = b.use_var(acc);
            let r = b.ins().fma(a, x, y);
            b.def_var(acc, r);
        }
    }
    let c = b.use_var(count);
    let c = b.ins().iadd_imm_s(c, -1);
    b.def_var(count, c);
    b.ins().brif(c, body, &[], exit, &[]);

    b.switch_to_block(exit);
    let mut sum = b.use_var(accs[0]);
    for &acc in &accs[1..] {
        let a = b.use_var(acc);
        sum = b.ins().fadd(sum, a);
    }
    b.ins().store(flags, sum, out, 0);
    b.ins().return_(&[]);
    b.seal_all_blocks();
    b.finalize(isa.frontend_config());
    func
}

/// Elements per array of the triad: 3 × 64 MiB, far past every cache, so
/// the figure is DRAM bandwidth.
const TRIAD_LEN: usize = 1 << 24;

/// Measures memory bandwidth the way STREAM's triad does
/// (`a[i] = b[i] + s·c[i]` over arrays far larger than the caches, the
/// work split over `threads` threads, best of five passes), in GB/s
/// counting the 12 bytes each element reads and writes. The
/// memory-bound kernels of a training step (elementwise gradients,
/// pooling, bias sums, updates) are rated against it.
pub fn measure_triad_gbps(threads: usize) -> f64 {
    let threads = threads.max(1);
    let b = vec![1.0f32; TRIAD_LEN];
    let c = vec![2.0f32; TRIAD_LEN];
    let mut a = vec![0.0f32; TRIAD_LEN];
    let chunk = TRIAD_LEN.div_ceil(threads);
    let s = std::hint::black_box(3.0f32);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = std::time::Instant::now();
        std::thread::scope(|scope| {
            for ((a, b), c) in a
                .chunks_mut(chunk)
                .zip(b.chunks(chunk))
                .zip(c.chunks(chunk))
            {
                scope.spawn(move || {
                    for ((a, b), c) in a.iter_mut().zip(b).zip(c) {
                        *a = b + s * c;
                    }
                });
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
        std::hint::black_box(&a);
    }
    (3 * 4 * TRIAD_LEN) as f64 / best / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_runs_and_reports_positive_throughput() {
        let probe = FmaCeiling::compile().expect("compile probe");
        assert!(probe.run(1000) > 0.0);
        let g = measure_fma_ceiling_gflops(1).expect("measure");
        assert!(g.is_finite() && g > 0.1, "implausible ceiling {g}");
    }

    #[test]
    fn the_wide_probes_run_where_the_cpu_has_them() {
        let c = Ceilings::measure(1).expect("measure");
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            let g = c.f256.expect("a 256-bit ceiling");
            assert!(g.is_finite() && g > 0.1, "implausible ceiling {g}");
            assert!(c.widest().0 >= g);
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            let g = c.f512.expect("a 512-bit ceiling");
            assert!(g.is_finite() && g > 0.1, "implausible ceiling {g}");
            assert!(c.widest().0 >= g);
        }
        assert!(c.widest().0 >= c.f128);
        let bits = c.widest().1;
        assert!([128, 256, 512].contains(&bits));
    }

    #[test]
    fn the_512_bit_probe_runs_where_avx512_exists() {
        let g = measure_fma512_ceiling_gflops(1);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            let g = g.expect("a 512-bit ceiling");
            assert!(g.is_finite() && g > 0.1, "implausible ceiling {g}");
            return;
        }
        assert_eq!(g, None);
    }
}
