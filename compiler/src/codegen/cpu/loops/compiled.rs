//! [`CompiledLoop`]: a loop kernel checked, emitted and compiled into its
//! own JIT module, which it owns together with the CLIF text (and, on
//! request, the disassembly) of the generated function.

use std::fmt;

use cranelift_jit::JITModule;
use cranelift_module::Module;

use super::analysis::analyze;
use super::emit::{build, new_module};
use super::vectorize::interleaves;
use super::{compile_error, CodegenError};
use crate::codegen::cpu::jit::OptLevel;
use crate::kernel::ir::LoopKernel;

/// The level [`CompiledLoop::compile`] uses.
pub const DEFAULT_OPT_LEVEL: OptLevel = OptLevel::Speed;

pub(super) type KernelFn = unsafe extern "C" fn(*const *mut f32, i64, i64);

/// A loop kernel compiled to native code.
///
/// Owns the JIT module that holds the machine code; the code is freed on
/// drop.
pub struct CompiledLoop {
    module: Option<JITModule>,
    pub(super) func: KernelFn,
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
    /// of the program.
    ///
    /// Fails with [`CodegenError::OutOfBounds`] unless every load and store
    /// is proven in bounds for every iteration, so running the result with
    /// buffers of these lengths never touches memory outside them.
    pub fn compile(k: &LoopKernel, buffer_lens: &[usize]) -> Result<Self, CodegenError> {
        Self::compile_with_opt_level(k, buffer_lens, DEFAULT_OPT_LEVEL)
    }

    /// [`compile`](Self::compile) with an explicit Cranelift optimization
    /// level (for measurements).
    pub fn compile_with_opt_level(
        k: &LoopKernel,
        buffer_lens: &[usize],
        opt: OptLevel,
    ) -> Result<Self, CodegenError> {
        Self::compile_inner(k, buffer_lens, opt, false)
    }

    fn compile_inner(
        k: &LoopKernel,
        buffer_lens: &[usize],
        opt: OptLevel,
        want_disasm: bool,
    ) -> Result<Self, CodegenError> {
        let plan = analyze(k, buffer_lens)?;
        let mut module = new_module(effective_opt_level(k, opt))?;
        let (func, clif, id) = match build(k, &plan, &mut module) {
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
            func,
            outer: plan.outer.map(|(_, extent)| extent),
            parallel: plan.parallel,
            buffer_count: buffer_lens.len(),
            touched_lens: plan
                .used
                .iter()
                .enumerate()
                .filter(|(_, &used)| used)
                .map(|(i, _)| (i, buffer_lens[i]))
                .collect(),
            clif,
            disasm,
        })
    }

    /// Cranelift IR text of the generated function, before optimization.
    pub fn clif(&self) -> &str {
        &self.clif
    }
}

/// The optimization level a kernel is compiled at: `opt`, except that a
/// kernel with interleaved vector steps (see `vectorize::lane_group`) skips
/// Cranelift's e-graph pass at [`OptLevel::Speed`]. That pass re-emits
/// every pure instruction where its first use is, which turns the
/// interleaved chains back into one chain after another (and hoists every
/// constant out of the loop, where they spill); the emitter already
/// produces the schedule wanted.
fn effective_opt_level(k: &LoopKernel, opt: OptLevel) -> OptLevel {
    if opt == OptLevel::Speed && interleaves(&k.body, k.scalars) {
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
    CompiledLoop::compile_inner(k, buffer_lens, opt, true)
        .map(|mut c| std::mem::take(&mut c.disasm))
}

/// Cranelift IR text of the function generated for `k`, before
/// optimization. Performs the same checks as [`CompiledLoop::compile`].
pub fn compile_clif_text(k: &LoopKernel, buffer_lens: &[usize]) -> Result<String, CodegenError> {
    let plan = analyze(k, buffer_lens)?;
    let mut module = new_module(DEFAULT_OPT_LEVEL)?;
    let text = build(k, &plan, &mut module).map(|(_, clif, _)| clif);
    // SAFETY: nothing was compiled into the module.
    unsafe { module.free_memory() };
    text
}
