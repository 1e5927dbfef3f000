//! AVX2 + FMA micro-kernels, assembled at run time as x86-64 machine code.
//!
//! Cranelift (0.135) has no 256-bit vector types, so its kernels top out at
//! the `xmm` FMA ceiling, half of what an AVX2 core issues. These kernels
//! compute one `mr x 16` tile of C in `2 * mr` `ymm` accumulators (`mr <= 6`:
//! 12 accumulators, two B registers and two broadcast registers fill the
//! 16 `ymm` registers), specialized per contraction: the reduction loop
//! nest (the non-contiguous outer levels of an implicit-GEMM convolution
//! and the inner run, unrolled, whose A step is 4 bytes or, for a
//! transposed A, a stored row), the B step (packed 16-column
//! panels or a row-major B read in place), bias, ReLU / leaky ReLU, and
//! `C +=`.
//!
//! On an AVX-512 host `avx512` assembles `zmm` kernels in their place
//! (a 6 x 32 tile over two neighbouring panels) behind the same calling
//! convention; they share this file's spec, frame, constants and
//! reduction loop nest ([`emit_level`] over a [`TileBody`]), so both
//! widths flush and add in the same order. [`KernelPath::Avx2`] keeps
//! these kernels on such a host.
//!
//! [`KernelPath::Avx2`]: super::KernelPath::Avx2
//!
//! # Assembler
//!
//! [dynasm-rs](https://crates.io/crates/dynasm) (`dynasm` + `dynasmrt`):
//! the instructions are checked and encoded by a proc macro when netc is
//! built, only register numbers and displacements are patched in at run
//! time, so assembling a kernel takes microseconds and pulls in no
//! encoder tables; dynamic registers (`Ry(n)`, `Rq(n)`) let one loop emit
//! every tile height. Its `ExecutableBuffer` is W^X: the code is written
//! into a read-write mapping that is then remapped read + execute, never
//! both at once. (iced-x86's code assembler would also do, but is a far
//! larger dependency to build on every CI run.)
//!
//! # Calling convention
//!
//! `extern "sysv64" fn(rows, b, c, ldc_bytes, bias, panels)`:
//! - `rows`: `mr` pointers to the first A element of each tile row (the
//!   driver resolves the row decomposition, so any row strides work);
//! - `b`: the first reduction step of the tile's B panel;
//! - `c`: the tile's top-left element, rows `ldc_bytes` apart;
//! - `bias`: 16 bias values of the panel (ignored without a bias);
//! - `panels` (at least 1): how many neighbouring panels to compute, one
//!   tile after the other, so a row-outer sweep over a short reduction (a
//!   weight gradient's K = batch) costs one call, one prologue and one
//!   load of the row pointers per row tile rather than per panel. Its
//!   high 32 bits count further row tiles (their row pointers next in
//!   `rows`, their C `mr` rows on), each over the same panels: one call
//!   per run of full tiles.
//!
//! The kernel reads exactly 16 columns of B and bias per panel and writes
//! 16 columns of C: the driver hands edge panels a scratch tile (see
//! `driver`).
//!
//! A reduction longer than a block (see `blocking`) keeps the tile's
//! running totals in a `mr x 16` tile on the kernel's own stack frame: the
//! accumulators are added into it and cleared at every block boundary, and
//! it is added back before the epilogue.
//!
//! Block kernels ([`BlockKernel`]) compute one reduction block of a tile
//! and keep the running totals in C instead (the driver's
//! reduction-block-outer nest): the first block stores `acc + 0`, later
//! ones `acc + C`, and the last adds `0 + total` and runs the epilogue:
//! the additions of the stack-tile flushes, in the same order.
//!
//! The only software prefetch is of each C tile, for writing, as its
//! reduction starts: the B panel and the A rows are read sequentially,
//! which the hardware prefetchers follow, but a C that is written once
//! and is not in cache (the fc1 input and weight gradients of a training
//! step, 1.4 and 2.8 MB) stalled the stores of short reductions on their
//! read-for-ownership misses (course CNN step, one thread: `dy · Wᵀ`
//! 1.43 to 1.19 ms, `xᵀ · dy` 1.39 to 1.29 ms, medians of 12 runs; warm
//! operands in `examples/gemm_speed.rs` are unchanged within noise).

// `dynasm!` converts every dynamic register expression with `.into()`,
// which is the identity for the `u8` register numbers used here.
#![allow(clippy::useless_conversion)]

use dynasmrt::{dynasm, x64::Assembler, AssemblyOffset, DynamicLabel, DynasmApi, DynasmLabelApi};

use super::blocking::KBlocking;
use super::Epilogue;
use crate::codegen::cpu::frame::{emit_restore, emit_save};

/// Columns per tile: two `ymm` vectors of 8 floats.
pub(super) const NR: usize = 16;
/// Rows per full tile.
pub(super) const MR: usize = 6;

/// What one kernel family is specialized on (all byte offsets).
#[derive(Clone, Debug)]
pub(super) struct AsmSpec {
    /// Non-contiguous reduction levels `(extent, A stride)`, outermost first.
    pub k_outer: Vec<(usize, i64)>,
    /// Length of the inner reduction run.
    pub k_inner: usize,
    /// Bytes between two A elements of the inner run (4, or a transposed
    /// A's row length).
    pub a_step: i64,
    /// Unroll factor of the inner run.
    pub unroll: usize,
    /// Bytes between two reduction steps of B (64 packed, `4 * ldb` in place).
    pub b_step: i64,
    /// Bytes between the starts of two neighbouring B panels.
    pub b_panel: i64,
    /// B is a row-major B read in place (else packed panels): where the
    /// driver's reduction-block-outer nest finds the next panel's block
    /// (`b_panel` on, or right after this panel's block in its packing).
    pub b_in_place: bool,
    pub bias: bool,
    pub epilogue: Epilogue,
    pub accumulate: bool,
    /// Where the accumulators are flushed into the tile's running total.
    pub blocking: KBlocking,
}

/// `fn(rows, b, c, ldc_bytes, bias, panels)`: the tile of each of
/// `panels >= 1` neighbouring panels, left to right. The high 32 bits of
/// `panels` count further tiles below the first (`mr` rows on in C, their
/// `mr` row pointers next in `rows`), each over the same panels: one call
/// for a run of row tiles (see [`tiles_arg`]).
pub(super) type MicroKernel =
    unsafe extern "sysv64" fn(*const *const f32, *const f32, *mut f32, isize, *const f32, usize);

/// The last argument of a [`MicroKernel`] call computing `tiles >= 1`
/// consecutive row tiles across `panels` panels.
pub(super) fn tiles_arg(panels: usize, tiles: usize) -> usize {
    debug_assert!((1..1 << 32).contains(&panels) && (1..1 << 32).contains(&tiles));
    panels | ((tiles - 1) << 32)
}

impl AsmSpec {
    /// Reduction steps in all (every step advances B once).
    pub(super) fn k_total(&self) -> usize {
        self.k_outer
            .iter()
            .fold(self.k_inner, |acc, &(e, _)| acc.saturating_mul(e))
    }
}

/// `fn(rows, b, c, ldc_bytes, bias, pass)`: one reduction block of a tile
/// whose running totals live in C (see [`BlockSteps`]).
pub(super) type BlockKernel = unsafe extern "sysv64" fn(
    *const *const f32,
    *const f32,
    *mut f32,
    isize,
    *const f32,
    BlockPass,
);

/// Which block of a blocked reduction a [`BlockKernel`] call computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(super) enum BlockPass {
    /// The first: C = acc + 0.
    First = 0,
    /// A middle one: C = acc + C.
    Middle = 1,
    /// The last: acc + C, then `0 + total`, bias, activation, store.
    Last = 2,
}

/// The blocks of a reduction computed by [`BlockKernel`]s: `full` blocks
/// of `len` steps, then one of `rest` (possibly none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BlockSteps {
    pub len: usize,
    pub full: usize,
    pub rest: usize,
}

impl BlockSteps {
    /// Number of blocks (at least two).
    pub fn count(&self) -> usize {
        self.full + usize::from(self.rest > 0)
    }

    /// The first step and length of block `i`.
    pub fn block(&self, i: usize) -> (usize, usize) {
        let len = if i < self.full { self.len } else { self.rest };
        (i * self.len, len)
    }

    /// Which pass block `i` is.
    pub fn pass(&self, i: usize) -> BlockPass {
        if i == 0 {
            BlockPass::First
        } else if i + 1 == self.count() {
            BlockPass::Last
        } else {
            BlockPass::Middle
        }
    }
}

/// Whether the `ymm` kernels can compute `spec`: the epilogue is one the
/// kernels fuse (sigmoid and tanh stay on Cranelift, whose polynomial
/// `exp` they would have to duplicate) and every constant fits an `i32`
/// immediate.
pub(super) fn supports(spec: &AsmSpec) -> bool {
    let fits = |x: i64| i32::try_from(x).is_ok();
    let fused = matches!(
        spec.epilogue,
        Epilogue::None | Epilogue::Relu | Epilogue::LeakyRelu(_)
    );
    let u = spec.unroll.max(1) as i64;
    fused
        && spec.k_inner >= 1
        && spec.k_outer.len() <= 2
        && fits(spec.b_step.saturating_mul(u + 1))
        && fits(
            spec.b_panel
                .saturating_sub(spec.b_step.saturating_mul(spec.k_total() as i64)),
        )
        && fits(spec.a_step.saturating_mul(spec.k_inner as i64))
        && fits(spec.a_step.saturating_mul(u))
        && spec
            .k_outer
            .iter()
            .all(|&(e, s)| fits(e as i64) && fits(s) && fits(s.saturating_mul(e as i64)))
}

// Register assignment (x86-64 numbers). Arguments: rdi rows, rsi B, rdx C,
// rcx ldc, r8 bias.
const RDI: u8 = 7;
const RSI: u8 = 6;
pub(super) const RAX: u8 = 0;
/// A row pointers (rbx and r12-r13 are callee-saved and pushed).
pub(super) const ROWS: [u8; MR] = [9, 10, 11, 3, 12, 13];
/// Reduction byte offset into every A row.
pub(super) const RK: u8 = 14;
/// Counters of the outer reduction levels (rdi is free once the row
/// pointers are loaded).
pub(super) const LEVEL_COUNTERS: [u8; 2] = [RDI, 15];
/// Counter of the blocked inner runs (callee-saved, pushed).
pub(super) const RUNS: u8 = 5;
/// Bytes of the stack tile holding the running totals (`mr x 16` floats).
const TOTALS_BYTES: i32 = (MR * NR * 4) as i32;
/// `ymm` registers after the accumulators: B vectors and broadcasts.
const YB: [u8; 2] = [12, 13];
const YA: [u8; 2] = [14, 15];

/// The blocks a contraction's block kernels compute: those of a blocked
/// contiguous reduction (no outer levels) storing `C = ...`, whose C can
/// hold the running totals between blocks.
pub(super) fn block_steps(spec: &AsmSpec) -> Option<BlockSteps> {
    match spec.blocking {
        KBlocking::InnerRuns { len, full, rest } if spec.k_outer.is_empty() && !spec.accumulate => {
            Some(BlockSteps { len, full, rest })
        }
        _ => None,
    }
}

/// One block of `steps` reduction steps for an `mr`-row tile, its running
/// totals kept in the C tile: the same additions, in the same order, as
/// [`emit_flush`] into the stack tile and the final `0 + total` of
/// [`emit_kernel`], so the results are bit-identical to the whole-K
/// kernel's (and the Cranelift path's).
pub(super) fn emit_block_kernel(
    ops: &mut Assembler,
    spec: &AsmSpec,
    mr: usize,
    steps: usize,
) -> AssemblyOffset {
    emit_block_kernel_of(ops, spec, &Ymm { mr }, steps)
}

/// A register tile's part of a block kernel ([`emit_block_kernel_of`]):
/// what differs between the `ymm` and `zmm` tiles.
pub(super) trait BlockTile: TileBody {
    /// Rows of the tile.
    fn rows(&self) -> usize;
    /// Clears every accumulator.
    fn zero_accs(&self, ops: &mut Assembler);
    /// Clears a spare register and returns it.
    fn zero_spare(&self, ops: &mut Assembler) -> u8;
    /// `acc = acc + zero` for every accumulator (the first block's flush
    /// into a zeroed total).
    fn add_zero(&self, ops: &mut Assembler, zero: u8);
    /// `acc = acc + C` for row `i`'s accumulators, C row at `r14`.
    fn add_c_row(&self, ops: &mut Assembler, i: usize);
    /// Stores row `i`'s accumulators at `r14`.
    fn store_c_row(&self, ops: &mut Assembler, i: usize);
    /// `acc = zero + acc` for every accumulator (the whole-K kernel's
    /// `0 + total`).
    fn zero_plus(&self, ops: &mut Assembler, zero: u8);
    /// Bias, activation, `C +=` and the store at `rdx`.
    fn epilogue(&self, ops: &mut Assembler, spec: &AsmSpec);
}

/// [`emit_block_kernel`] for any register tile: the pass logic (first,
/// middle, last block; see [`BlockPass`]) is the same for every width.
pub(super) fn emit_block_kernel_of(
    ops: &mut Assembler,
    spec: &AsmSpec,
    tile: &impl BlockTile,
    steps: usize,
) -> AssemblyOffset {
    let start = ops.offset();
    emit_save(ops);
    dynasm!(ops
        ; .arch x64
        // The pass (a `BlockPass`); r9 is about to hold a row pointer.
        ; mov rbp, r9
    );
    for (i, &r) in ROWS.iter().enumerate().take(tile.rows()) {
        dynasm!(ops ; .arch x64 ; mov Rq(r), QWORD [rdi + 8 * i as i32]);
    }
    tile.zero_accs(ops);
    dynasm!(ops ; .arch x64 ; xor Rq(RK), Rq(RK));
    emit_run(ops, spec, tile, steps);
    let (not_first, store, last, done) = (
        ops.new_dynamic_label(),
        ops.new_dynamic_label(),
        ops.new_dynamic_label(),
        ops.new_dynamic_label(),
    );
    let zero = tile.zero_spare(ops);
    dynasm!(ops
        ; .arch x64
        ; test rbp, rbp
        ; jnz =>not_first
    );
    // First block: total = acc + 0, as the flush into the zeroed stack tile.
    tile.add_zero(ops, zero);
    dynasm!(ops
        ; .arch x64
        ; jmp =>store
        ; =>not_first
        ; mov r14, rdx
    );
    // total = acc + total.
    for i in 0..tile.rows() {
        tile.add_c_row(ops, i);
        dynasm!(ops ; .arch x64 ; add r14, rcx);
    }
    dynasm!(ops
        ; .arch x64
        ; cmp rbp, BlockPass::Last as i32
        ; je =>last
        ; =>store
        ; mov r14, rdx
    );
    for i in 0..tile.rows() {
        tile.store_c_row(ops, i);
        dynasm!(ops ; .arch x64 ; add r14, rcx);
    }
    dynasm!(ops
        ; .arch x64
        ; jmp =>done
        ; =>last
    );
    // `0 + total` (the whole-K kernel adds the total into its flushed,
    // zero accumulators), then the epilogue.
    tile.zero_plus(ops, zero);
    tile.epilogue(ops, spec);
    dynasm!(ops
        ; .arch x64
        ; =>done
    );
    emit_restore(ops);
    start
}

pub(super) fn emit_kernel(ops: &mut Assembler, spec: &AsmSpec, mr: usize) -> AssemblyOffset {
    let start = ops.offset();
    let (tile_top, frame) = emit_tiles_begin(ops, spec, mr, TOTALS_BYTES);
    let flushes = spec.blocking.flushes();
    let top = ops.new_dynamic_label();
    dynasm!(ops ; .arch x64 ; =>top);
    // Fetch the C tile for writing while the reduction runs: C that is
    // written once (a weight gradient) otherwise stalls the stores on
    // read-for-ownership misses. (A row's 16 floats may straddle two lines.)
    dynasm!(ops ; .arch x64 ; mov rax, rdx);
    for _ in 0..mr {
        dynasm!(ops
            ; .arch x64
            ; prefetchw [rax]
            ; prefetchw [rax + 63]
            ; add rax, rcx
        );
    }
    for acc in 0..2 * mr as u8 {
        dynasm!(ops ; .arch x64 ; vxorps Ry(acc), Ry(acc), Ry(acc));
    }
    if flushes {
        // The running totals start at zero (the accumulators just are).
        for acc in 0..2 * mr as u8 {
            dynasm!(ops ; .arch x64 ; vmovups [rsp + 32 * acc as i32], Ry(acc));
        }
    }
    dynasm!(ops ; .arch x64 ; xor Rq(RK), Rq(RK));
    emit_level(ops, spec, &Ymm { mr }, 0);
    if flushes {
        // Every block was flushed, so the accumulators are zero: the sum
        // is `0 + total`, exactly the total, as on the Cranelift path.
        for acc in 0..2 * mr as u8 {
            dynasm!(ops ; .arch x64 ; vaddps Ry(acc), Ry(acc), [rsp + 32 * acc as i32]);
        }
    }
    emit_epilogue(ops, spec, mr);
    // The next panel: B from its start (the reduction advanced it by
    // `K * b_step`), 16 columns on in C and the bias.
    let b_fix = (spec.b_panel - spec.k_total() as i64 * spec.b_step) as i32;
    dynasm!(ops
        ; .arch x64
        ; add rsi, b_fix
        ; add r8, (NR * 4) as i32
        ; mov rdx, QWORD [rsp + frame]
        ; add rdx, (NR * 4) as i32
        ; mov QWORD [rsp + frame], rdx
        ; sub QWORD [rsp + frame + 8], 1
        ; jnz =>top
        ; add rsp, frame + 16
    );
    emit_tiles_end(ops, mr, tile_top);
    start
}

/// The start of a whole-K kernel (`MicroKernel`, both widths): saves the
/// registers, keeps what every further row tile starts from on the stack,
/// opens the per-tile loop (its label is returned), pushes the panels
/// left and the current panel's C, reserves `totals_bytes` for the stack
/// tile of running totals if the reduction is blocked (the returned frame
/// size), and loads the tile's row pointers.
pub(super) fn emit_tiles_begin(
    ops: &mut Assembler,
    spec: &AsmSpec,
    mr: usize,
    totals_bytes: i32,
) -> (DynamicLabel, i32) {
    emit_save(ops);
    // The tiles after the first (the high half of the panel argument,
    // see `MicroKernel`): what each starts from, on the stack.
    dynasm!(ops
        ; .arch x64
        ; mov rax, r9
        ; shr rax, 32
        ; mov r9d, r9d
        ; push rax
        ; push rdi
        ; push rsi
        ; push r8
        ; push r9
        ; push rdx
    );
    let tile_top = ops.new_dynamic_label();
    dynasm!(ops
        ; .arch x64
        ; =>tile_top
        ; mov rdi, QWORD [rsp + 32]
        // The panels left, then the current panel's C, on the stack.
        ; push r9
        ; push rdx
    );
    let frame = if spec.blocking.flushes() {
        dynasm!(ops ; .arch x64 ; sub rsp, totals_bytes);
        totals_bytes
    } else {
        0
    };
    for (i, &r) in ROWS.iter().enumerate().take(mr) {
        dynasm!(ops ; .arch x64 ; mov Rq(r), QWORD [rdi + 8 * i as i32]);
    }
    (tile_top, frame)
}

/// The end of a whole-K kernel, after its panel loop has popped its
/// frame: the next row tile (`mr` rows and row pointers on, every panel
/// again) or the return.
pub(super) fn emit_tiles_end(ops: &mut Assembler, mr: usize, tile_top: DynamicLabel) {
    let done = ops.new_dynamic_label();
    dynasm!(ops
        ; .arch x64
        ; sub QWORD [rsp + 40], 1
        ; jb =>done
        ; add QWORD [rsp + 32], (8 * mr) as i32
        ; mov rdx, QWORD [rsp]
    );
    for _ in 0..mr {
        dynasm!(ops ; .arch x64 ; add rdx, rcx);
    }
    dynasm!(ops
        ; .arch x64
        ; mov QWORD [rsp], rdx
        ; mov r9, QWORD [rsp + 8]
        ; mov r8, QWORD [rsp + 16]
        ; mov rsi, QWORD [rsp + 24]
        ; jmp =>tile_top
        ; =>done
        ; add rsp, 48
    );
    emit_restore(ops);
}

/// Bytes by which a whole level (or the inner run) advances the A offset.
fn level_span(spec: &AsmSpec, level: usize) -> i64 {
    match spec.k_outer.get(level) {
        Some(&(e, s)) => e as i64 * s,
        None => spec.a_step * spec.k_inner as i64,
    }
}

/// What the reduction loop nest ([`emit_level`]) emits at its leaves: a
/// tile's reduction steps and its flushes into the stack tile. The `ymm`
/// tile here, the `zmm` ones in `avx512`; the loop nest, and so the order
/// of every addition, is shared.
pub(super) trait TileBody {
    /// `count` reduction steps at the current offsets, then advances them.
    fn steps(&self, ops: &mut Assembler, spec: &AsmSpec, count: usize);
    /// Adds the accumulators into the running totals on the stack and
    /// clears them (`total = acc + total`, the order the Cranelift path
    /// uses).
    fn flush(&self, ops: &mut Assembler);
}

/// The `mr x 16` `ymm` tile.
struct Ymm {
    mr: usize,
}

impl TileBody for Ymm {
    fn steps(&self, ops: &mut Assembler, spec: &AsmSpec, count: usize) {
        emit_steps(ops, spec, self.mr, count);
    }

    fn flush(&self, ops: &mut Assembler) {
        emit_flush(ops, self.mr);
    }
}

impl BlockTile for Ymm {
    fn rows(&self) -> usize {
        self.mr
    }

    fn zero_accs(&self, ops: &mut Assembler) {
        for acc in 0..2 * self.mr as u8 {
            dynasm!(ops ; .arch x64 ; vxorps Ry(acc), Ry(acc), Ry(acc));
        }
    }

    fn zero_spare(&self, ops: &mut Assembler) -> u8 {
        let zero = YA[0];
        dynasm!(ops ; .arch x64 ; vxorps Ry(zero), Ry(zero), Ry(zero));
        zero
    }

    fn add_zero(&self, ops: &mut Assembler, zero: u8) {
        for acc in 0..2 * self.mr as u8 {
            dynasm!(ops ; .arch x64 ; vaddps Ry(acc), Ry(acc), Ry(zero));
        }
    }

    fn add_c_row(&self, ops: &mut Assembler, i: usize) {
        let (a0, a1) = (2 * i as u8, 2 * i as u8 + 1);
        dynasm!(ops
            ; .arch x64
            ; vaddps Ry(a0), Ry(a0), [r14]
            ; vaddps Ry(a1), Ry(a1), [r14 + 32]
        );
    }

    fn store_c_row(&self, ops: &mut Assembler, i: usize) {
        let (a0, a1) = (2 * i as u8, 2 * i as u8 + 1);
        dynasm!(ops
            ; .arch x64
            ; vmovups [r14], Ry(a0)
            ; vmovups [r14 + 32], Ry(a1)
        );
    }

    fn zero_plus(&self, ops: &mut Assembler, zero: u8) {
        for acc in 0..2 * self.mr as u8 {
            dynasm!(ops ; .arch x64 ; vaddps Ry(acc), Ry(zero), Ry(acc));
        }
    }

    fn epilogue(&self, ops: &mut Assembler, spec: &AsmSpec) {
        emit_epilogue(ops, spec, self.mr);
    }
}

/// Reduction level `level` of the outer loops, or the inner run past them.
pub(super) fn emit_level(ops: &mut Assembler, spec: &AsmSpec, tile: &impl TileBody, level: usize) {
    let Some(&(extent, stride)) = spec.k_outer.get(level) else {
        emit_inner(ops, spec, tile);
        return;
    };
    emit_repeat(ops, LEVEL_COUNTERS[level], extent, |ops| {
        emit_level(ops, spec, tile, level + 1);
        if spec.blocking == KBlocking::AfterLevel(level) {
            tile.flush(ops);
        }
        // The level below moved the offset by its span; step to this
        // level's next position instead.
        let fix = stride - level_span(spec, level + 1);
        if fix != 0 {
            dynasm!(ops ; .arch x64 ; add Rq(RK), fix as i32);
        }
    });
}

/// `body` `count` times: inline once, or as a loop counting `counter` down.
pub(super) fn emit_repeat(
    ops: &mut Assembler,
    counter: u8,
    count: usize,
    body: impl FnOnce(&mut Assembler),
) {
    match count {
        0 => {}
        1 => body(ops),
        _ => {
            let top = ops.new_dynamic_label();
            dynasm!(ops
                ; .arch x64
                ; mov Rq(counter), count as i32
                ; =>top
            );
            body(ops);
            dynasm!(ops
                ; .arch x64
                ; sub Rq(counter), 1
                ; jnz =>top
            );
        }
    }
}

/// The contiguous run: `k_inner` steps, in blocked runs if it is long.
fn emit_inner(ops: &mut Assembler, spec: &AsmSpec, tile: &impl TileBody) {
    let KBlocking::InnerRuns { len, full, rest } = spec.blocking else {
        emit_run(ops, spec, tile, spec.k_inner);
        return;
    };
    emit_repeat(ops, RUNS, full, |ops| {
        emit_run(ops, spec, tile, len);
        tile.flush(ops);
    });
    if rest > 0 {
        emit_run(ops, spec, tile, rest);
        tile.flush(ops);
    }
}

/// [`TileBody::flush`] of the `ymm` tile.
fn emit_flush(ops: &mut Assembler, mr: usize) {
    for acc in 0..2 * mr as u8 {
        dynasm!(ops
            ; .arch x64
            ; vaddps Ry(acc), Ry(acc), [rsp + 32 * acc as i32]
            ; vmovups [rsp + 32 * acc as i32], Ry(acc)
            ; vxorps Ry(acc), Ry(acc), Ry(acc)
        );
    }
}

/// `steps` contiguous reduction steps, `unroll` per loop iteration.
pub(super) fn emit_run(ops: &mut Assembler, spec: &AsmSpec, tile: &impl TileBody, steps: usize) {
    let u = spec.unroll.clamp(1, steps);
    let iters = steps / u;
    let rem = steps % u;
    emit_repeat(ops, RAX, iters, |ops| tile.steps(ops, spec, u));
    if rem > 0 {
        tile.steps(ops, spec, rem);
    }
}

/// [`TileBody::steps`] of the `ymm` tile.
fn emit_steps(ops: &mut Assembler, spec: &AsmSpec, mr: usize, count: usize) {
    for s in 0..count {
        let boff = (s as i64 * spec.b_step) as i32;
        dynasm!(ops
            ; .arch x64
            ; vmovups Ry(YB[0]), [Rq(RSI) + boff]
            ; vmovups Ry(YB[1]), [Rq(RSI) + boff + 32]
        );
        for (i, &row) in ROWS.iter().enumerate().take(mr) {
            // Alternate broadcast registers so consecutive rows do not wait
            // on one register name (renaming would hide it, but this keeps
            // the dependency chains obviously independent).
            let ya = YA[i % 2];
            let (acc0, acc1) = (2 * i as u8, 2 * i as u8 + 1);
            broadcast_ymm(ops, ya, row, RK, (spec.a_step * s as i64) as i32);
            dynasm!(ops
                ; .arch x64
                ; vfmadd231ps Ry(acc0), Ry(YB[0]), Ry(ya)
                ; vfmadd231ps Ry(acc1), Ry(YB[1]), Ry(ya)
            );
        }
    }
    let a_adv = (spec.a_step * count as i64) as i32;
    let b_adv = (count as i64 * spec.b_step) as i32;
    dynasm!(ops
        ; .arch x64
        ; add Rq(RK), a_adv
        ; add Rq(RSI), b_adv
    );
}

/// `vbroadcastss ymm(dst), dword [base + index + disp]`, encoded by hand:
/// dynasm-rs 5.1's table has no `AUTO_VEXL` on the memory form of
/// `vbroadcastss`, so it emits VEX.L = 0 (an xmm broadcast) even for a
/// `ymm` destination.
fn broadcast_ymm(ops: &mut Assembler, dst: u8, base: u8, index: u8, disp: i32) {
    // `rsp` cannot be an index; `rbp` / `r13` as a base need a
    // displacement, which the disp32 form always has.
    debug_assert!(index != 4 && dst < 16 && base < 16 && index < 16);
    let inv = |r: u8| (!(r >> 3) & 1) << 7;
    ops.extend([
        0xC4,
        // R X B (inverted), opcode map 0F38.
        inv(dst) | (inv(index) >> 1) | (inv(base) >> 2) | 0x02,
        // W0, vvvv = 1111 (unused), L = 1, pp = 66.
        0x7D,
        0x18,
        // mod = 10 (disp32), reg = dst, rm = 100 (SIB follows).
        0x80 | ((dst & 7) << 3) | 0x04,
        // scale 1, index, base.
        ((index & 7) << 3) | (base & 7),
    ]);
    ops.extend(disp.to_le_bytes());
}

/// Bias, activation, `C +=` and the store of the tile.
fn emit_epilogue(ops: &mut Assembler, spec: &AsmSpec, mr: usize) {
    let accs = |i: usize| (2 * i as u8, 2 * i as u8 + 1);
    if spec.bias {
        dynasm!(ops
            ; .arch x64
            ; vmovups Ry(YB[0]), [r8]
            ; vmovups Ry(YB[1]), [r8 + 32]
        );
        for i in 0..mr {
            let (a0, a1) = accs(i);
            dynasm!(ops
                ; .arch x64
                ; vaddps Ry(a0), Ry(a0), Ry(YB[0])
                ; vaddps Ry(a1), Ry(a1), Ry(YB[1])
            );
        }
    }
    match spec.epilogue {
        Epilogue::None | Epilogue::Sigmoid | Epilogue::Tanh => {}
        Epilogue::Relu => {
            // `vmaxps x, x, 0` returns its second operand when x is NaN,
            // like the interpreter's `f32::max(x, 0.0)`.
            dynasm!(ops ; .arch x64 ; vxorps Ry(YA[1]), Ry(YA[1]), Ry(YA[1]));
            for acc in 0..2 * mr as u8 {
                dynasm!(ops ; .arch x64 ; vmaxps Ry(acc), Ry(acc), Ry(YA[1]));
            }
        }
        Epilogue::LeakyRelu(alpha) => {
            // `x > 0 ? x : alpha * x` as a blend on x's sign bit: `-0`
            // becomes `alpha * -0 = -0` and `+0` stays, as with the
            // comparison; a NaN stays a NaN either way.
            dynasm!(ops
                ; .arch x64
                ; mov eax, alpha.to_bits() as i32
                ; vmovd Rx(YA[0]), eax
                ; vbroadcastss Ry(YA[0]), Rx(YA[0])
            );
            for acc in 0..2 * mr as u8 {
                dynasm!(ops
                    ; .arch x64
                    ; vmulps Ry(YB[0]), Ry(acc), Ry(YA[0])
                    // Where the mask (x) has its sign bit set, take alpha * x.
                    ; vblendvps Ry(acc), Ry(acc), Ry(YB[0]), Ry(acc)
                );
            }
        }
    }
    for i in 0..mr {
        let (a0, a1) = accs(i);
        if spec.accumulate {
            dynasm!(ops
                ; .arch x64
                ; vaddps Ry(a0), Ry(a0), [rdx]
                ; vaddps Ry(a1), Ry(a1), [rdx + 32]
            );
        }
        dynasm!(ops
            ; .arch x64
            ; vmovups [rdx], Ry(a0)
            ; vmovups [rdx + 32], Ry(a1)
            ; add rdx, rcx
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-encoded broadcast is the 256-bit form (VEX.L = 1) with the
    /// REX-extended registers in the right fields.
    #[test]
    fn broadcast_encodes_the_ymm_form() {
        let mut ops = Assembler::new().expect("assembler");
        broadcast_ymm(&mut ops, 14, 9, RK, 0);
        broadcast_ymm(&mut ops, 15, 3, RK, 4);
        broadcast_ymm(&mut ops, 2, 13, RK, -8);
        let code = ops.finalize().expect("finalize");
        #[rustfmt::skip]
        let want: [u8; 30] = [
            // vbroadcastss ymm14, [r9 + r14 + 0]
            0xC4, 0x02, 0x7D, 0x18, 0xB4, 0x31, 0, 0, 0, 0,
            // vbroadcastss ymm15, [rbx + r14 + 4]
            0xC4, 0x22, 0x7D, 0x18, 0xBC, 0x33, 4, 0, 0, 0,
            // vbroadcastss ymm2, [r13 + r14 - 8]
            0xC4, 0x82, 0x7D, 0x18, 0x94, 0x35, 0xF8, 0xFF, 0xFF, 0xFF,
        ];
        assert_eq!(&code[..], &want[..]);
    }
}
