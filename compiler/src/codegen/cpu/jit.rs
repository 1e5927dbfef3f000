//! Cranelift JIT plumbing shared by all CPU kernels: building the native ISA
//! with the flags the kernels rely on, and owning finalized machine code.

use cranelift_codegen::ir::{Function, UserFuncName};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};

use super::CodegenError;

/// Cranelift optimization level for generated kernels (loop kernels and
/// contractions).
///
/// The contraction kernels are already hand-scheduled (register tiles, unrolled loops),
/// so the mid-end mostly matters for register allocation side effects; it is
/// a tuning knob, measured per kernel rather than assumed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OptLevel {
    /// `opt_level=none`: no e-graph rewriting.
    #[default]
    None,
    /// `opt_level=speed`: e-graph rewriting, GVN and loop-invariant code
    /// motion.
    Speed,
}

impl OptLevel {
    fn as_setting(self) -> &'static str {
        match self {
            OptLevel::None => "none",
            OptLevel::Speed => "speed",
        }
    }
}

/// Builds an ISA for the host CPU with native feature detection, which is
/// what turns `fma.f32x4` into `vfmadd` (the generic x86-64 baseline would
/// lower it to four `fmaf` libcalls).
pub(crate) fn native_isa(opt: OptLevel) -> Result<OwnedTargetIsa, CodegenError> {
    let mut flags = settings::builder();
    let set = |flags: &mut settings::Builder, name: &str, value: &str| {
        flags
            .set(name, value)
            .map_err(|e| CodegenError::Setting(format!("{name}={value}: {e}")))
    };
    set(&mut flags, "opt_level", opt.as_setting())?;
    // The JIT places code anywhere in the address space, so calls to libcalls
    // must use absolute addresses.
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", "false")?;
    let isa_builder =
        cranelift_native::builder().map_err(|m| CodegenError::UnsupportedHost(m.to_string()))?;
    let isa = isa_builder
        .finish(settings::Flags::new(flags))
        .map_err(|e| CodegenError::Setting(e.to_string()))?;
    // Kernels compute addresses and buffer tables in 64-bit integers.
    if isa.pointer_type() != cranelift_codegen::ir::types::I64 {
        return Err(CodegenError::UnsupportedHost(format!(
            "{} has {}-bit pointers; netc needs 64",
            isa.triple(),
            isa.pointer_bits()
        )));
    }
    Ok(isa)
}

/// Whether the ISA has a given boolean ISA flag (e.g. `has_fma`) enabled.
pub(crate) fn isa_flag(isa: &OwnedTargetIsa, name: &str) -> bool {
    isa.isa_flags()
        .iter()
        .any(|v| v.name == name && v.as_bool() == Some(true))
}

/// Fallback for `fma` on hosts without the FMA extension, where Cranelift
/// lowers every lane to a call of this symbol.
extern "C" fn netc_fmaf(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

/// Finalized machine code for one function, together with the module that
/// owns its memory.
///
/// The module is kept only so the code pages can be released on drop; no
/// method hands out a reference to it, which is what makes sharing the
/// function pointer across threads sound.
pub(crate) struct JitCode {
    module: Option<JITModule>,
    ptr: *const u8,
    disasm: Option<String>,
}

// SAFETY: after `finalize_definitions` the module is never touched again
// except by `Drop` (which has exclusive access), and the code it owns is
// immutable, position-fixed machine code that any thread may execute.
unsafe impl Send for JitCode {}
// SAFETY: see above; `&JitCode` exposes only the code pointer and a string.
unsafe impl Sync for JitCode {}

impl JitCode {
    /// Compiles and links `func` (whose signature must use the ISA's default
    /// calling convention) into fresh executable memory.
    pub(crate) fn compile(
        isa: OwnedTargetIsa,
        name: &str,
        func: Function,
        want_disasm: bool,
    ) -> Result<Self, CodegenError> {
        let err = |message: String| CodegenError::Compile {
            function: name.to_string(),
            message,
        };
        let mut builder = JITBuilder::with_isa(isa, default_libcall_names());
        builder.symbol("fmaf", netc_fmaf as *const u8);
        let mut module = JITModule::new(builder);
        let id = module
            .declare_function(name, Linkage::Export, &func.signature)
            .map_err(|e| err(e.to_string()))?;
        let mut ctx = module.make_context();
        ctx.func = func;
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        ctx.set_disasm(want_disasm);
        if let Err(e) = module.define_function(id, &mut ctx) {
            let message = match &e {
                cranelift_module::ModuleError::Compilation(
                    cranelift_codegen::CodegenError::Verifier(errors),
                ) => format!("verifier errors:\n{errors}\n{}", ctx.func.display()),
                other => other.to_string(),
            };
            // SAFETY: nothing from this module has been handed out yet.
            unsafe { module.free_memory() };
            return Err(err(message));
        }
        let disasm = ctx.compiled_code().and_then(|c| c.vcode.clone());
        if let Err(e) = module.finalize_definitions() {
            // SAFETY: as above, no pointer escaped.
            unsafe { module.free_memory() };
            return Err(err(e.to_string()));
        }
        let ptr = module.get_finalized_function(id);
        Ok(JitCode {
            module: Some(module),
            ptr,
            disasm,
        })
    }

    /// Entry point of the compiled function; valid while `self` lives.
    pub(crate) fn ptr(&self) -> *const u8 {
        self.ptr
    }

    /// Cranelift's VCode disassembly, if requested at compile time.
    pub(crate) fn disasm(&self) -> Option<&str> {
        self.disasm.as_deref()
    }
}

impl Drop for JitCode {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: the pointer into this module is owned by `self`, which
            // is being dropped, so no caller can still use it.
            unsafe { module.free_memory() };
        }
    }
}
