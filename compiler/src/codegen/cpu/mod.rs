//! CPU code generation through Cranelift.
//!
//! Loop kernels ([`loops`]) are compiled to one native function each, which
//! takes the program's buffer table and a range of outermost-loop iterations
//! so the runtime can split the work across threads.

pub mod loops;
