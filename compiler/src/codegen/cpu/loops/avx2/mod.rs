//! AVX2 (and AVX-512) machine code for vectorizable loop kernels,
//! assembled at run time with dynasm-rs (see `contraction::avx2` for the
//! assembler and its W^X executable buffer), the `zmm` instructions
//! encoded by `codegen::cpu::evex`.
//!
//! Cranelift has no 256-bit vectors, so its loop kernels run f32x4 lanes;
//! kernels bound by vector issue (the `exp`/`tanh`/`sigmoid` chains of
//! recurrent cells) run about twice as fast in `ymm` registers, and on
//! AVX-512 hosts a third faster again in `zmm` registers (the course LSTM
//! cell: 18 -> 13 us in isolation on a Sapphire Rapids class Xeon).
//!
//! # Widths
//!
//! At [`IsaLevel::Avx512`] (`KernelPath::Auto` on such a host) a loop
//! that vectorizes for sixteen lanes runs `zmm` steps (`asm::W::Z`), then
//! at most one `ymm` step for 8–15 leftover iterations, then the scalar
//! tail; a loop that vectorizes for eight lanes only keeps `ymm` steps.
//! At [`IsaLevel::Avx2Fma`] (`KernelPath::Avx2` included) every step is a
//! `ymm` one. Only registers 0–15 are allocated at either
//! width, so the allocation and the scalar tail are the same; the
//! constant pool entries and the frame slots are 64 bytes wide where
//! `zmm` steps read them.
//!
//! `zmm16`–`zmm31` stay unused on purpose. Commit 6ca8e54 (reverted
//! after it) gave `zmm` phases the registers 16–31 (no value lives from
//! one phase into the next, so the pool grew at a `zmm` phase's start
//! and shrank before the `ymm` and `xmm` ones, whose VEX forms never saw
//! them) and up to four interleaved `zmm` vectors a step, with the same
//! bits on every path. The course LSTM cell went 12.1 → 11.7 µs in
//! isolation (about 4 %; 11.7 µs too with two vectors a step and the 31
//! registers, so the interleaving itself gained nothing: the cell is
//! not bound by the latency of its `exp`/division chains), the GRU cell
//! 4.3 → 4.0 µs, the LSTM step's ten cells 170–190 → 160–181 µs and the
//! step no more than its noise: below the bar for carrying the code.
//!
//! AVX-512 compares write an opmask and blends read one, where the VEX
//! forms use all-ones/zero lane masks in vector registers: a `zmm`
//! compare (`vcmpps k`) keeps its mask in an opmask and gives the vector
//! register its lane mask (`vpmovm2d`) only if something other than a
//! blend reads it; `vblendmps` takes its second source where the mask is
//! set, as `vblendvps` does where the mask lane's sign bit is (a mask not
//! in an opmask is moved there with `vpmovd2m`, the sign bits). The
//! selected lanes are the same, so are the bits.
//!
//! # The class
//!
//! A kernel is emitted here when every statement sits in a loop that runs
//! vectorized: a loop whose body is `Set`/`Store` statements only and that
//! `vectorize::vectorizable` accepts for eight lanes (unit-stride or
//! loop-invariant accesses, no carried register, no overlap between
//! lanes), nested in plain counter loops. Expressions may use loads,
//! constants, scalar registers and every operation but `log`; `Iter`,
//! `Gather`, `ScatterAdd`, `IfInBounds`, loops inside a vectorized body,
//! reductions and statements outside vectorized loops make
//! [`assemble`] return `None` (the kernel then goes to Cranelift).
//!
//! # Bits
//!
//! Every lane performs the operations of the Cranelift path in the same
//! order with the same operands (`loops::expr::operands`, the `vmath`
//! polynomials and constants, no FMA), so results are bit-identical to it
//! whatever the step: a step runs `g` (at most two) interleaved `zmm` or
//! `ymm` vectors of consecutive iterations, then single vectors (a `ymm`
//! one after `zmm` ones), then the last `extent % 8` iterations one at a
//! time on lane 0 of `xmm` registers (the same instructions; loads and
//! stores move one float).
//!
//! Which NaN an add or multiply returns when both operands are NaN depends
//! on their order (x86 returns the first), and Cranelift's instruction
//! selection swaps a commutative `fadd`/`fmul` whose left operand is a
//! load it folds into the memory operand: a load used once, transitively
//! (its value flows through single-use operations into a store), with no
//! other load between it and the operation. `expr` swaps in the same
//! cases, so NaN payloads agree too on every kernel tested (the course
//! CNN, LSTM and GRU training steps, `tests/loops_avx2.rs`). The rule
//! mirrors Cranelift 0.135's lowering; a register's value is treated as
//! used more than once (Cranelift also reads its last lane after the
//! loop).
//!
//! # Code shape
//!
//! `extern "sysv64" fn(bufs, begin, end)`, as the Cranelift function: a
//! body that is one loop runs that loop over `begin..end` (the runtime's
//! thread split). Loop counters and one row pointer per distinct access
//! row live in general registers; a scalar register stays in vector
//! registers from its `Set` to its last read while enough others remain
//! free for the body's hungriest statement, else goes to its frame slot
//! (one vector per vector of a step); constants live in a pool after the
//! code. Running out of vector registers retries with every scalar
//! register in the frame, then with one vector a step; running out with
//! neither (or of general registers) gives `None`.
//!
//! Only kernels that gain are taken: those with a vectorized loop of at
//! least 16 iterations evaluating `exp`, `tanh` or `sigmoid` (bound by
//! vector issue: the LSTM cell runs in half the time), or whose outermost
//! loop is itself vectorized over at least 64 iterations (long
//! elementwise kernels, such as the optimizer updates). Short loops of
//! plain arithmetic nested in counter loops (im2col copies, the GRU
//! gradient cells) ran slower than Cranelift's, which unrolls them and
//! hoists their address arithmetic, so they stay there. With `zmm`
//! steps, a nested vectorized loop of at least 128 iterations (eight
//! vectors or more) is taken too: the LSTM gate-gradient kernel (32 rows
//! of 128) runs in 2.6 µs instead of Cranelift's 3.4 µs alone, and the
//! course LSTM step's ten of them in 34–41 µs instead of 51; no kernel of
//! the course CNN step moved by more than its noise.
//!
//! * `asm` — registers, the constant pool, width-generic instructions;
//! * `lower` — loops, row pointers, statements;
//! * `expr` — expressions;
//! * `math` — `exp`, `tanh`, `sigmoid`;
//! * `need` — the registers an expression needs.

// `dynasm!` converts every dynamic register expression with `.into()`,
// which is the identity for the `u8` register numbers used here.
#![allow(clippy::useless_conversion)]

mod asm;
mod expr;
mod lower;
mod math;
mod need;

use dynasmrt::{dynasm, AssemblyOffset, DynasmApi, DynasmLabelApi, ExecutableBuffer};

use super::analysis::Plan;
use crate::codegen::cpu::contraction::IsaLevel;
use crate::codegen::cpu::frame::{emit_restore, emit_save};
use crate::kernel::ir::{LoopKernel, Stmt};
use asm::Fail;
use lower::{Emitter, Range};

/// The native function: `fn(bufs, begin, end)`.
pub(super) type NativeFn = unsafe extern "sysv64" fn(*const *mut f32, i64, i64);

/// A kernel's native code: read + execute only once assembled.
pub(super) struct NativeLoop {
    code: ExecutableBuffer,
    entry: AssemblyOffset,
    /// `Avx512` where vectorized loops run `zmm` steps.
    isa: IsaLevel,
}

impl NativeLoop {
    pub(super) fn func(&self) -> NativeFn {
        let ptr = self.code.ptr(self.entry);
        // SAFETY: the entry was assembled as a complete sysv64 function with
        // this signature; the buffer lives as long as `self`.
        unsafe { std::mem::transmute::<*const u8, NativeFn>(ptr) }
    }

    /// The level the code needs.
    pub(super) fn isa(&self) -> IsaLevel {
        self.isa
    }

    /// The machine code (with the constant pool after it).
    pub(super) fn code(&self) -> &[u8] {
        &self.code
    }
}

/// The most vectors one step runs.
const MAX_GROUP: usize = 2;

/// Native code for `k`, if it is in the class (see the module docs), with
/// `zmm` steps at [`IsaLevel::Avx512`]. The caller must have run
/// `analysis::analyze` (which produced `plan`): the code performs the
/// accesses of the kernel unchecked.
pub(super) fn assemble(k: &LoopKernel, plan: &Plan, isa: IsaLevel) -> Option<NativeLoop> {
    // Out of registers: scalar registers to the frame, then one vector a
    // step.
    for (g, homes) in [(MAX_GROUP, true), (MAX_GROUP, false), (1, true), (1, false)] {
        match emit(k, plan, g, homes, isa) {
            Ok(code) => return Some(code),
            Err(Fail::Registers) => {}
            Err(Fail::Unsupported) => return None,
        }
    }
    None
}

fn emit(
    k: &LoopKernel,
    plan: &Plan,
    max_group: usize,
    homes: bool,
    isa: IsaLevel,
) -> Result<NativeLoop, Fail> {
    let zmm = isa == IsaLevel::Avx512;
    let mut e = Emitter::new(k.vars, k.scalars, max_group, zmm)?;
    e.use_homes = homes;
    let frame = e.frame(k.scalars);
    let entry = e.a.ops.offset();
    let pool = e.a.pool;
    emit_save(&mut e.a.ops);
    // A 64-byte aligned frame: a slot's 32-byte stores and loads then
    // never straddle cache lines (which defeats store-to-load forwarding).
    dynasm!(e.a.ops
        ; .arch x64
        ; mov rax, rsp
        ; sub rsp, frame
        ; and rsp, -64
        ; mov [rsp], rsi
        ; mov [rsp + 8], rax
        ; lea rbx, [=>pool]
    );
    match (plan.outer, k.body.as_slice()) {
        (Some(_), [s @ Stmt::Loop { .. }]) => e.stmt(s, k.scalars, Range::Call)?,
        _ => {
            for s in &k.body {
                let Stmt::Loop { extent, .. } = s else {
                    return Err(Fail::Unsupported);
                };
                e.stmt(s, k.scalars, Range::Const(*extent))?;
            }
        }
    }
    if !e.worth {
        return Err(Fail::Unsupported);
    }
    dynasm!(e.a.ops ; .arch x64 ; mov rsp, [rsp + 8]);
    emit_restore(&mut e.a.ops);
    e.a.emit_pool();
    let code = e.a.ops.finalize().map_err(|_| Fail::Unsupported)?;
    Ok(NativeLoop { code, entry, isa })
}
