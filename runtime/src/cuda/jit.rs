//! Loading netc's PTX: the driver JIT-compiles a module when it is loaded
//! (seconds for a training step's hundreds of kernels), so each module is
//! loaded once per GPU ([`ModuleCache`]), with a line on stderr saying what
//! is being compiled and one saying how long it took; a module the driver
//! rejects is reported with the JIT compiler's error log.
//!
//! cudarc's safe `load_module` calls `cuModuleLoadData`, which returns
//! only an error code. The log needs `cuModuleLoadDataEx` with the
//! `CU_JIT_ERROR_LOG_BUFFER` / `CU_JIT_INFO_LOG_BUFFER` options, through
//! cudarc's `sys` layer; since a module made that way cannot be handed to
//! cudarc's safe types, the log is fetched by loading the rejected text
//! again after the failure — a second JIT run only on the error path.

use super::{CudaError, Gpu};
use cudarc::driver::sys;
use cudarc::driver::CudaModule;
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Modules loaded on one GPU, by their PTX text.
#[derive(Clone, Default)]
pub struct ModuleCache(Arc<Mutex<HashMap<String, Arc<CudaModule>>>>);

impl std::fmt::Debug for ModuleCache {
    // The keys are whole modules' text: only their number is worth showing.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |m| m.len());
        write!(f, "ModuleCache({n} modules)")
    }
}

/// Bytes of each JIT log buffer (the driver truncates longer logs).
const LOG_BYTES: usize = 64 << 10;

/// The module of `text` (`what` describes it: "model `m`, 29 kernels"),
/// JIT-compiled on first use with a progress message on stderr.
pub fn load(gpu: &Gpu, text: &str, what: &str) -> Result<Arc<CudaModule>, CudaError> {
    let cache = gpu.modules.0.lock().map_err(|_| poisoned())?;
    if let Some(m) = cache.get(text) {
        return Ok(m.clone());
    }
    drop(cache);
    eprintln!("{}", compiling_message(what, text.len()));
    let started = Instant::now();
    let loaded = gpu
        .ctx
        .load_module(Ptx::from_src(text))
        .map_err(|e| CudaError::Module(rejected_message(what, &e.to_string(), &jit_log(text))))?;
    eprintln!("{}", compiled_message(started.elapsed().as_secs_f64()));
    gpu.modules
        .0
        .lock()
        .map_err(|_| poisoned())?
        .insert(text.to_string(), loaded.clone());
    Ok(loaded)
}

fn poisoned() -> CudaError {
    CudaError::Driver("the module cache's lock was poisoned by a panic".into())
}

/// "netc: JIT-compiling model `m` (29 kernels, 1.2 MB of PTX) for the GPU…"
pub fn compiling_message(what: &str, ptx_bytes: usize) -> String {
    format!(
        "netc: JIT-compiling {what} ({} of PTX) for the GPU…",
        crate::memory::bytes(ptx_bytes as u64)
    )
}

/// "netc: compiled in 7.3 s"
pub fn compiled_message(seconds: f64) -> String {
    format!("netc: compiled in {seconds:.1} s")
}

/// The error of a rejected module: the driver's code, then the JIT log
/// (or a note that it was empty).
pub fn rejected_message(what: &str, error: &str, log: &JitLog) -> String {
    let mut m = format!("{what}: {error}");
    match (log.error.trim(), log.info.trim()) {
        ("", "") => m.push_str("\n(the JIT compiler left no log)"),
        (e, i) => {
            if !e.is_empty() {
                m.push_str("\nJIT error log:\n");
                m.push_str(e);
            }
            if !i.is_empty() {
                m.push_str("\nJIT info log:\n");
                m.push_str(i);
            }
        }
    }
    m
}

/// What the JIT compiler wrote while loading a module.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JitLog {
    /// `CU_JIT_ERROR_LOG_BUFFER`.
    pub error: String,
    /// `CU_JIT_INFO_LOG_BUFFER`.
    pub info: String,
}

/// The text of a log buffer the driver filled: up to its first NUL (the
/// driver terminates the log) or `written` bytes, whichever is first.
pub fn log_text(buf: &[u8], written: usize) -> String {
    let buf = &buf[..written.min(buf.len())];
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Loads `text` with `cuModuleLoadDataEx` and its log options to collect
/// the JIT compiler's logs (unloading the module if it loads after all).
fn jit_log(text: &str) -> JitLog {
    let Ok(src) = CString::new(text) else {
        return JitLog {
            error: "the PTX text contains a NUL byte".into(),
            info: String::new(),
        };
    };
    let mut error = vec![0u8; LOG_BYTES];
    let mut info = vec![0u8; LOG_BYTES];
    let mut options = [
        sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
        sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
        sys::CUjit_option::CU_JIT_INFO_LOG_BUFFER,
        sys::CUjit_option::CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
    ];
    // Sizes are passed (and returned: bytes written) as pointer-sized
    // integers in the value array, as the driver API specifies.
    let mut values: [*mut c_void; 4] = [
        error.as_mut_ptr().cast(),
        LOG_BYTES as *mut c_void,
        info.as_mut_ptr().cast(),
        LOG_BYTES as *mut c_void,
    ];
    let mut module: sys::CUmodule = std::ptr::null_mut();
    // SAFETY: `src` is NUL-terminated PTX; the option and value arrays have
    // 4 entries each; the log buffers outlive the call and are as large as
    // the sizes given. The context is current (the failed load just ran on
    // this thread).
    let r = unsafe {
        sys::cuModuleLoadDataEx(
            &mut module,
            src.as_ptr().cast(),
            options.len() as u32,
            options.as_mut_ptr(),
            values.as_mut_ptr(),
        )
    };
    if r == sys::cudaError_enum::CUDA_SUCCESS && !module.is_null() {
        // SAFETY: loaded just above and used by nothing else.
        unsafe { sys::cuModuleUnload(module) };
    }
    JitLog {
        error: log_text(&error, values[1] as usize),
        info: log_text(&info, values[3] as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_text_stops_at_the_nul_or_the_count() {
        assert_eq!(log_text(b"ptxas fatal\0garbage", 64), "ptxas fatal");
        assert_eq!(log_text(b"abcdef", 3), "abc");
        assert_eq!(log_text(b"", 10), "");
    }

    #[test]
    fn messages() {
        assert_eq!(
            compiling_message("model `cnn` (29 kernels)", 2048),
            "netc: JIT-compiling model `cnn` (29 kernels) (2.0 KiB of PTX) for the GPU…"
        );
        assert_eq!(compiled_message(7.26), "netc: compiled in 7.3 s");
        let log = JitLog {
            error: "ptxas application ptx input, line 9; error   : Unknown symbol 'x'\n".into(),
            info: String::new(),
        };
        assert_eq!(
            rejected_message("model `m`", "CUDA_ERROR_INVALID_PTX", &log),
            "model `m`: CUDA_ERROR_INVALID_PTX\nJIT error log:\nptxas application ptx input, line 9; error   : Unknown symbol 'x'"
        );
        assert!(rejected_message("model `m`", "E", &JitLog::default()).ends_with("left no log)"));
    }
}
