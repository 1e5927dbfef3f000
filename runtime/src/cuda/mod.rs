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

mod exec;
pub mod footprint;

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

/// An open GPU: its context and the stream netc launches on.
#[derive(Clone, Debug)]
pub struct Gpu {
    /// The device's context.
    pub ctx: Arc<CudaContext>,
    /// The stream every copy and launch goes to, in order.
    pub stream: Arc<CudaStream>,
}

/// Opens GPU 0, checking for the driver library first.
pub fn open() -> Result<Gpu, CudaError> {
    // SAFETY: only tries to dlopen libcuda by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::NoDriver);
    }
    let ctx = CudaContext::new(0).map_err(|e| CudaError::NoDevice(e.to_string()))?;
    let stream = ctx.default_stream();
    Ok(Gpu { ctx, stream })
}

/// The device's name, for reports.
pub fn device_name(gpu: &Gpu) -> String {
    gpu.ctx.name().unwrap_or_else(|_| "unknown GPU".into())
}
