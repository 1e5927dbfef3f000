//! The frame every run-time assembled AVX2 kernel (contractions in
//! `contraction::avx2`, loops in `loops::avx2`) opens and closes with:
//! saving and restoring the System V callee-saved registers they use.

use dynasmrt::{dynasm, x64::Assembler};

/// Saves the callee-saved registers the kernels use (System V: rbx, rbp,
/// r12–r15).
pub(crate) fn emit_save(ops: &mut Assembler) {
    dynasm!(ops
        ; .arch x64
        ; push rbx
        ; push r12
        ; push r13
        ; push r14
        ; push r15
        ; push rbp
    );
}

/// Restores what [`emit_save`] saved and returns, leaving no dirty upper
/// halves behind for SSE code in the caller.
pub(crate) fn emit_restore(ops: &mut Assembler) {
    dynasm!(ops
        ; .arch x64
        ; vzeroupper
        ; pop rbp
        ; pop r15
        ; pop r14
        ; pop r13
        ; pop r12
        ; pop rbx
        ; ret
    );
}
