//! [`CompiledLoop`]: a loop kernel checked, then assembled as native code
//! (see `avx2`) or emitted and compiled into its own JIT module, which it
//! owns together with the CLIF text (and, on request, the disassembly) of
//! the Cranelift function.

use std::fmt;

use cranelift_jit::JITModule;
use cranelift_module::Module;

use super::analysis::analyze;
#[cfg(target_arch = "x86_64")]
use super::avx2::{self, NativeLoop};
use super::emit::{build, new_module};
use super::vectorize::{interleaves, MAX_GROUP};
use super::{compile_error, CodegenError};
use crate::codegen::cpu::contraction::{IsaLevel, KernelPath};
use crate::codegen::cpu::jit::OptLevel;
use crate::kernel::ir::LoopKernel;

/// The level [`CompiledLoop::compile`] uses.
pub const DEFAULT_OPT_LEVEL: OptLevel = OptLevel::Speed;

pub(super) type KernelFn = unsafe extern "C" fn(*const *mut f32, i64, i64);

/// The function a [`CompiledLoop`] calls.
#[derive(Clone, Copy)]
pub(super) enum Entry {
    Cranelift(KernelFn),
    #[cfg(target_arch = "x86_64")]
    Native(avx2::NativeFn),
}

/// A loop kernel compiled to native code.
///
/// Owns the JIT module or the executable buffer that holds the machine
/// code; the code is freed on drop.
pub struct CompiledLoop {
    module: Option<JITModule>,
    /// The native code, when the kernel runs on that path.
    #[cfg(target_arch = "x86_64")]
    native: Option<NativeLoop>,
    pub(super) func: Entry,
    /// Extent of the outermost loop when the body is a single loop.
    pub(super) outer: Option<usize>,
    /// Whether the outermost loop's iterations provably touch disjoint
    /// memory and carry no scalar state.
    pub(super) parallel: bool,
    /// How many buffer pointers a call passes.
    pub(super) buffer_count: usize,
    /// `(buffer, length)` of each buffer the kernel touches. Only these:
    /// a program of n kernels over n buffers would otherwise hold n²
    /// lengths (gigabytes for a 30,000-layer model).
    pub(super) touched_lens: Vec<(usize, usize)>,
    clif: String,
    /// Machine-code disassembly, when requested at compile time.
    disasm: String,
}

// SAFETY: after `finalize_definitions` the module is only touched by `Drop`
// (which has exclusive access); the machine code is immutable and the
// function has no shared state, so any thread may call it.
unsafe impl Send for CompiledLoop {}
// SAFETY: see above; `&CompiledLoop` exposes the code pointer and plain data.
unsafe impl Sync for CompiledLoop {}

impl fmt::Debug for CompiledLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledLoop")
            .field("outer", &self.outer)
            .field("parallel", &self.parallel)
            .field("buffer_count", &self.buffer_count)
            .field("touched_lens", &self.touched_lens)
            .field("native_isa", &self.native_isa())
            .finish_non_exhaustive()
    }
}

impl Drop for CompiledLoop {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: the only pointer into the module's code is `self.func`,
            // which dies with `self`.
            unsafe { module.free_memory() };
        }
    }
}

impl CompiledLoop {
    /// Compiles `k`. `buffer_lens[i]` is the length (in f32) of buffer `i`
    /// of the program. Runs native code (`zmm` steps on AVX-512 hosts,
    /// else `ymm` ones) where the host has AVX2 + FMA and the kernel is one
    /// the native emitter handles ([`KernelPath::Auto`]), else the
    /// Cranelift function; all give the same bits.
    ///
    /// Fails with [`CodegenError::OutOfBounds`] unless every load and store
    /// is proven in bounds for every iteration, so running the result with
    /// buffers of these lengths never touches memory outside them.
    pub fn compile(k: &LoopKernel, buffer_lens: &[usize]) -> Result<Self, CodegenError> {
        Self::compile_with(k, buffer_lens, KernelPath::Auto)
    }

    /// [`compile`](Self::compile) on the chosen path:
    /// [`KernelPath::Cranelift`] always compiles the Cranelift function.
    pub fn compile_with(
        k: &LoopKernel,
        buffer_lens: &[usize],
        path: KernelPath,
    ) -> Result<Self, CodegenError> {
        Self::compile_inner(k, buffer_lens, DEFAULT_OPT_LEVEL, false, MAX_GROUP, path)
    }

    /// The Cranelift function at an explicit optimization level (for
    /// measurements; never the AVX2 path).
    pub fn compile_with_opt_level(
        k: &LoopKernel,
        buffer_lens: &[usize],
        opt: OptLevel,
    ) -> Result<Self, CodegenError> {
        Self::compile_inner(k, buffer_lens, opt, false, MAX_GROUP, KernelPath::Cranelift)
    }

    /// The ISA of the native code this kernel runs, or `None` on the
    /// Cranelift path.
    pub fn native_isa(&self) -> Option<IsaLevel> {
        #[cfg(target_arch = "x86_64")]
        if let Some(n) = &self.native {
            return Some(n.isa());
        }
        None
    }

    /// The native machine code (constant pool included) on that path; feed
    /// it to a disassembler (`objdump -D -b binary -mi386:x86-64`).
    pub fn native_code(&self) -> Option<&[u8]> {
        #[cfg(target_arch = "x86_64")]
        if let Some(n) = &self.native {
            return Some(n.code());
        }
        None
    }

    fn compile_inner(
        k: &LoopKernel,
        buffer_lens: &[usize],
        opt: OptLevel,
        want_disasm: bool,
        max_group: usize,
        path: KernelPath,
    ) -> Result<Self, CodegenError> {
        // The bounds proof comes first: nothing is emitted, on either
        // path, for a kernel it rejects.
        let plan = analyze(k, buffer_lens)?;
        #[cfg(target_arch = "x86_64")]
        // One emitter serves both native levels: `zmm` steps at
        // `Avx512`, `ymm` ones at `Avx2Fma`. The `zmm` steps move masks
        // between opmasks and vectors with AVX-512DQ instructions, which
        // every AVX-512 core since Skylake-SP has (Xeon Phi has not).
        if let Some(level) = path.native_level() {
            let isa = if std::arch::is_x86_feature_detected!("avx512dq") {
                level
            } else {
                level.min(IsaLevel::Avx2Fma)
            };
            if let Some(native) = avx2::assemble(k, &plan, isa) {
                return Ok(CompiledLoop {
                    module: None,
                    func: Entry::Native(native.func()),
                    native: Some(native),
                    outer: plan.outer.map(|(_, extent)| extent),
                    parallel: plan.parallel,
                    buffer_count: buffer_lens.len(),
                    touched_lens: touched(&plan.used, buffer_lens),
                    clif: compile_clif_text(k, buffer_lens)?,
                    disasm: String::new(),
                });
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = path;
        let mut module = new_module(effective_opt_level(k, opt, max_group))?;
        let (func, clif, id) = match build(k, &plan, &mut module, max_group) {
            Ok(built) => built,
            Err(e) => {
                // SAFETY: nothing was compiled into the module.
                unsafe { module.free_memory() };
                return Err(e);
            }
        };
        let mut ctx = module.make_context();
        ctx.func = func;
        ctx.set_disasm(want_disasm);
        let result = module
            .define_function(id, &mut ctx)
            .map_err(|e| match &e {
                cranelift_module::ModuleError::Compilation(
                    cranelift_codegen::CodegenError::Verifier(errors),
                ) => compile_error(format!("verifier errors:\n{errors}\n{clif}")),
                other => compile_error(other.to_string()),
            })
            .and_then(|()| {
                module
                    .finalize_definitions()
                    .map_err(|e| compile_error(e.to_string()))
            });
        if let Err(e) = result {
            // SAFETY: no pointer into the module has been handed out.
            unsafe { module.free_memory() };
            return Err(e);
        }
        let disasm = ctx
            .compiled_code()
            .and_then(|c| c.vcode.clone())
            .unwrap_or_default();
        let ptr = module.get_finalized_function(id);
        // SAFETY: the function was built with exactly this signature and the
        // default (C) calling convention of the host.
        let func = unsafe { std::mem::transmute::<*const u8, KernelFn>(ptr) };
        Ok(CompiledLoop {
            module: Some(module),
            #[cfg(target_arch = "x86_64")]
            native: None,
            func: Entry::Cranelift(func),
            outer: plan.outer.map(|(_, extent)| extent),
            parallel: plan.parallel,
            buffer_count: buffer_lens.len(),
            touched_lens: touched(&plan.used, buffer_lens),
            clif,
            disasm,
        })
    }

    /// Cranelift IR text of the Cranelift function for this kernel, before
    /// optimization (also on the AVX2 path, where it describes what the
    /// native code computes).
    pub fn clif(&self) -> &str {
        &self.clif
    }
}

/// `(buffer, length)` of each used buffer.
fn touched(used: &[bool], buffer_lens: &[usize]) -> Vec<(usize, usize)> {
    used.iter()
        .enumerate()
        .filter(|(_, &used)| used)
        .map(|(i, _)| (i, buffer_lens[i]))
        .collect()
}

/// The optimization level a kernel is compiled at: `opt`, except that a
/// kernel whose interleaved vector steps evaluate `exp`, `tanh` or
/// `sigmoid` (see `vectorize::interleaves`) skips Cranelift's e-graph pass
/// at [`OptLevel::Speed`]. That pass re-emits every pure instruction where
/// its first use is, which turns the interleaved polynomial chains back
/// into one chain after another (and hoists every constant out of the
/// loop, where they spill); the emitter already produces the schedule
/// wanted. Other kernels keep the pass: without its loop-invariant code
/// motion and value numbering, the address arithmetic of deep loop nests
/// (pooling windows, im2col copies) costs several times more.
fn effective_opt_level(k: &LoopKernel, opt: OptLevel, max_group: usize) -> OptLevel {
    if opt == OptLevel::Speed && interleaves(&k.body, k.scalars, max_group) {
        OptLevel::None
    } else {
        opt
    }
}

/// Disassembly of the machine code generated for `k` (Cranelift's VCode
/// listing), for inspecting code quality.
pub fn disassembly(
    k: &LoopKernel,
    buffer_lens: &[usize],
    opt: OptLevel,
) -> Result<String, CodegenError> {
    CompiledLoop::compile_inner(k, buffer_lens, opt, true, MAX_GROUP, KernelPath::Cranelift)
        .map(|mut c| std::mem::take(&mut c.disasm))
}

/// Cranelift IR text of the function generated for `k`, before
/// optimization. Performs the same checks as [`CompiledLoop::compile`].
pub fn compile_clif_text(k: &LoopKernel, buffer_lens: &[usize]) -> Result<String, CodegenError> {
    let plan = analyze(k, buffer_lens)?;
    let mut module = new_module(DEFAULT_OPT_LEVEL)?;
    let text = build(k, &plan, &mut module, MAX_GROUP).map(|(_, clif, _)| clif);
    // SAFETY: nothing was compiled into the module.
    unsafe { module.free_memory() };
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::cpu::loops::EDGE_INPUTS;
    use crate::kernel::parse::parse_program;
    use crate::kernel::KernelBody;

    /// Loops vectorized in steps of 1, 2 and 4 f32x4 vectors, with
    /// extents that leave wide-step remainders, lone vectors and scalar
    /// tails, over every kind of expression the lanes evaluate.
    const PROGRAM: &str = "program steps (batch 1) {
  %0 = temp \"x\" [1003]
  %1 = temp \"y\" [1003]
  %2 = temp \"a\" [1003]
  %3 = temp \"b\" [1003]
  %4 = temp \"c\" [1003]
  %5 = temp \"d\" [1003]
  %6 = temp \"e\" [1003]

  kernel flat (loop) {
    for i0 in 0..1003 {
      %2[i0] = (exp(%0[i0]) + sigmoid(%1[i0]))
      %3[i0] = (tanh(%0[i0]) * max(relu(%1[i0]), %0[i0]))
      %4[i0] = select(%0[i0] > %1[i0], sqrt(%0[i0]), min(%1[i0], -0.5))
      %5[i0] = ((%0[i0] / %1[i0]) - float(i0))
    }
  }
  kernel rows (loop) {
    for i0 in 0..17 {
      for i1 in 0..59 {
        s0 = tanh((%0[59*i0 + i1] * 3.0))
        s1 = sigmoid((%1[59*i0 + i1] - 1.0))
        %6[59*i0 + i1] = ((s0 * s1) + exp(min(%0[59*i0 + i1], float(i1))))
      }
      %2[i0] = s1
    }
  }
  kernel last_lanes (loop) {
    for i0 in 0..9 {
      for i1 in 0..32 {
        s0 = sigmoid(%0[32*i0 + i1])
      }
      for i1 in 0..40 {
        s1 = tanh(%1[40*i0 + i1])
      }
      %4[2*i0] = s0
      %4[2*i0 + 1] = s1
    }
  }
  kernel windows (loop) {
    for i0 in 0..3 {
      for i1 in 0..45 {
        s0 = -inf
        for i2 in 0..3 {
          if 0 <= i0 + i2 - 1 < 3 {
            s0 = max(s0, sigmoid(%0[135*i2 + 45*i0 + i1 - 45]))
          }
        }
        %3[45*i0 + i1] = s0
      }
    }
  }
}
";

    fn inputs(len: usize, seed: u32) -> Vec<f32> {
        let specials = EDGE_INPUTS;
        (0..len)
            .map(|i| match specials.get((i * 7 + seed as usize) % 97) {
                Some(&s) => s,
                None => {
                    let h = (i as u32 ^ seed).wrapping_mul(0x9E37_79B1);
                    (h >> 8) as f32 / (1 << 24) as f32 * 240.0 - 120.0
                }
            })
            .collect()
    }

    /// Steps of several interleaved vectors give every lane the bits that
    /// one vector a step gives, at both optimization levels, also when
    /// threads split the outer loop (so steps start at other iterations).
    #[test]
    fn interleaved_steps_give_the_same_bits_as_single_vectors() {
        let program = parse_program(PROGRAM).expect("parses");
        let lens: Vec<usize> = program.buffers.iter().map(|b| b.len).collect();
        for kernel in &program.kernels {
            let KernelBody::Loop(k) = &kernel.body else {
                continue;
            };
            // Each kernel has interleaved steps (and skips the e-graph pass).
            assert!(
                interleaves(&k.body, k.scalars, MAX_GROUP),
                "{}",
                kernel.name
            );
            let run = |opt, max_group, threads| {
                let c = CompiledLoop::compile_inner(
                    k,
                    &lens,
                    opt,
                    false,
                    max_group,
                    KernelPath::Cranelift,
                )
                .expect("compiles");
                let mut data: Vec<Vec<f32>> = lens
                    .iter()
                    .enumerate()
                    .map(|(b, &n)| inputs(n, b as u32))
                    .collect();
                let mut bufs: Vec<&mut [f32]> = data.iter_mut().map(|v| &mut v[..]).collect();
                c.run(&mut bufs, threads).expect("runs");
                data.iter()
                    .map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>())
                    .collect::<Vec<_>>()
            };
            for opt in [OptLevel::None, OptLevel::Speed] {
                let one = run(opt, 1, 1);
                for (g, threads) in [(2, 1), (MAX_GROUP, 1), (MAX_GROUP, 3)] {
                    assert!(
                        run(opt, g, threads) == one,
                        "{} at {opt:?} with {g} vectors a step on {threads} threads",
                        kernel.name
                    );
                }
            }
        }
    }
}
