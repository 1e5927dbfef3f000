//! Code generation from the kernel IR: native code through Cranelift
//! ([`cpu`]) and PTX text for NVIDIA GPUs ([`ptx`]).

pub mod cpu;
pub mod ptx;
