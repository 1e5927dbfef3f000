//! The CUDA device: netc's own PTX (from `codegen::ptx`) loaded and
//! launched through cudarc's driver API.
//!
//! cudarc loads `libcuda` at run time, so netc builds and runs without a
//! CUDA toolkit; on a machine without a driver, [`open`] returns
//! [`CudaError::NoDriver`] instead of letting cudarc panic (its context
//! constructor panics when the library is missing).
//!
//! Device memory follows the CPU's memory plan: one arena for every
//! temporary plus an allocation per parameter, state and input
//! (`exec`); [`footprint`] computes its size without a GPU and checks it
//! against the free memory before anything is allocated.
//!
//! A training step is kept lean (`exec`): inputs go up from pinned host
//! buffers by asynchronous copies, dropout masks are generated on the
//! device (`netc_compiler::dropout`), the per-step results come back
//! asynchronously and are read once per progress update, the kernels of a
//! step replay as one CUDA graph, and each module is JIT-compiled once
//! ([`jit`]). `NETC_CUDA_CHECKED=1` turns on the checked mode
//! ([`Gpu::checked`]).

mod exec;
pub mod footprint;
pub mod jit;

pub use exec::{free_bytes, CudaExecutable};
pub use footprint::{DeviceShortfall, FittingBatch, Footprint};

use cudarc::driver::{CudaContext, CudaStream};
use std::sync::Arc;
use thiserror::Error;

/// Why the GPU could not be used.
#[derive(Debug, Error)]
pub enum CudaError {
    /// No `libcuda` on this machine.
    #[error("--device cuda: no CUDA driver found (libcuda could not be loaded); use --device cpu")]
    NoDriver,
    /// The driver is there but no usable GPU (or the driver failed).
    #[error("--device cuda: cannot open GPU 0: {0}")]
    NoDevice(String),
    /// The driver rejected the generated PTX, or a kernel is missing.
    #[error("--device cuda: cannot load the generated PTX: {0}")]
    Module(String),
    /// Generating PTX failed.
    #[error("--device cuda: {0}")]
    Codegen(String),
    /// A driver call (allocation, copy, launch) failed.
    #[error("--device cuda: {0}")]
    Driver(String),
    /// A kernel failed while running (found by the checked mode's
    /// synchronization after its launch, see [`Gpu::checked`]).
    #[error(
        "--device cuda: kernel `{kernel}` (launch {index} of {count} of {model}) failed: {error}"
    )]
    KernelFailed {
        /// The kernel's name in the IR (or the mask entry's).
        kernel: String,
        /// Its position in the step (1-based).
        index: usize,
        /// Launches in the step.
        count: usize,
        /// "model `m`".
        model: String,
        /// The driver's error.
        error: String,
    },
    /// The program's memory (its footprint by the memory plan) exceeds
    /// what the device has free; nothing was allocated.
    #[error("--device cuda: {0}")]
    OutOfMemory(#[from] DeviceShortfall),
    /// A tensor did not fit the program.
    #[error("{0}")]
    Input(String),
}

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        CudaError::Driver(e.to_string())
    }
}

/// The environment variable that turns on the checked mode
/// ([`Gpu::checked`]) when set to `1`.
pub const CHECKED_ENV: &str = "NETC_CUDA_CHECKED";

/// An open GPU: its context and the stream netc launches on.
#[derive(Clone, Debug)]
pub struct Gpu {
    /// The device's context.
    pub ctx: Arc<CudaContext>,
    /// The stream every copy and launch goes to, in order.
    pub stream: Arc<CudaStream>,
    /// Checked mode (`NETC_CUDA_CHECKED=1`): synchronize after every
    /// launch so a failing kernel is reported by name
    /// ([`CudaError::KernelFailed`]) instead of at the next read; steps
    /// are not captured as graphs. Slow; for finding a faulting kernel.
    pub checked: bool,
    /// Modules loaded so far, by PTX text: a program compiled again (the
    /// same model, batch and options) reuses its module instead of being
    /// JIT-compiled again.
    pub modules: jit::ModuleCache,
}

/// Whether the environment asks for the checked mode (`NETC_CUDA_CHECKED`
/// is `1`, `true` or `yes`).
pub fn checked_from_env() -> bool {
    checked_value(std::env::var(CHECKED_ENV).ok().as_deref())
}

/// [`checked_from_env`] for a value of the variable.
pub fn checked_value(v: Option<&str>) -> bool {
    matches!(
        v.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("1" | "true" | "yes")
    )
}

/// Opens GPU 0, checking for the driver library first.
pub fn open() -> Result<Gpu, CudaError> {
    // SAFETY: only tries to dlopen libcuda by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::NoDriver);
    }
    let ctx = CudaContext::new(0).map_err(|e| CudaError::NoDevice(e.to_string()))?;
    // netc issues everything on one stream, in order, so cudarc's per-slice
    // events (for ordering between streams) are not needed; and they must
    // be off for stream capture, which fails when a captured launch waits
    // on an event recorded outside the capture.
    // SAFETY: every allocation, copy and launch below goes to `stream`.
    unsafe { ctx.disable_event_tracking() };
    // Not the legacy default stream: a CUDA graph cannot be captured on it.
    let stream = ctx
        .new_stream()
        .map_err(|e| CudaError::NoDevice(e.to_string()))?;
    Ok(Gpu {
        ctx,
        stream,
        checked: checked_from_env(),
        modules: jit::ModuleCache::default(),
    })
}

/// The device's name, for reports.
pub fn device_name(gpu: &Gpu) -> String {
    gpu.ctx.name().unwrap_or_else(|_| "unknown GPU".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_mode_values() {
        assert!(checked_value(Some("1")));
        assert!(checked_value(Some(" TRUE ")));
        assert!(checked_value(Some("yes")));
        assert!(!checked_value(Some("0")));
        assert!(!checked_value(Some("")));
        assert!(!checked_value(None));
    }

    #[test]
    fn a_failing_kernel_is_named() {
        let e = CudaError::KernelFailed {
            kernel: "conv1_grad".into(),
            index: 3,
            count: 29,
            model: "model `cnn`".into(),
            error: "CUDA_ERROR_ILLEGAL_ADDRESS".into(),
        };
        assert_eq!(
            e.to_string(),
            "--device cuda: kernel `conv1_grad` (launch 3 of 29 of model `cnn`) failed: CUDA_ERROR_ILLEGAL_ADDRESS"
        );
    }
}
