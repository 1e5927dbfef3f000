//! AVX-512 micro-kernels: the `zmm` counterparts of the `avx2` kernels,
//! behind the same calling convention, driver, packing and plan.
//!
//! On a core with two 512-bit FMA units (Sapphire Rapids class) twelve
//! independent `zmm` FMA chains reach about twice the `ymm` throughput
//! (225 against 120 GFLOP/s per core on the development machine), so the
//! `ymm` kernels, however well scheduled, stop at half the machine.
//!
//! # Encoding
//!
//! dynasm-rs 5.1 cannot encode EVEX, so the vector instructions are
//! hand-encoded by `codegen::cpu::evex` (each form tested byte for byte
//! against GNU `as`) and appended to the same `dynasmrt` assembler, which
//! still emits the general-purpose code, the labels and the shared frame
//! (`emit_save` / `emit_restore`), and whose buffer stays W^X. The
//! frame's `vzeroupper` clears the upper halves of `zmm0`–`zmm15`; the
//! registers from `zmm16` on have no SSE counterpart, so they leave no
//! state that could slow down SSE code in the caller.
//!
//! # Tile
//!
//! A `zmm` register holds one 16-column row of a packed panel, so the
//! packing (16-column panels), `MR = 6` and the driver's tiles are
//! unchanged; instead a tile spans **neighbouring panels**: two (a
//! `6 x 32` tile in 12 accumulators, the agreed design), or four where a
//! call covers that many (`6 x 64` in 24 accumulators), an odd last one
//! alone (`6 x 16`). Panel `j`'s B is read from
//! `[b + j * b_panel + k * b_step]`, its C columns and bias `64 * j`
//! bytes on. A call's `panels` argument keeps its meaning (a count of
//! 16-column panels): the kernel consumes them four, then two at a time,
//! then the last one. Per reduction step a tile of `w` panels issues `w`
//! B loads, 6 broadcasts (`vbroadcastss zmm, m32`, a load-port-only µop)
//! and `6w` FMAs: the pair is the `ymm` tile's 12 chains, each twice as
//! wide.
//!
//! Measured on the development machine (one thread, `gemm_speed`, best
//! of repeated calls on a shared, noisy machine): with the pair tile
//! alone the kernels reached about 0.75–0.8 of the 512-bit ceiling where
//! the `ymm` ones reach 0.95 of the 256-bit one. The same kernel with
//! its loads removed (wrong results; an experiment) reached the ceiling,
//! with either the B loads or the broadcasts removed about 0.9 of it, so
//! the gap is in the loads per FMA; the four-panel tile (10 loads per 24
//! FMAs instead of 8 per 12) gained 5–7 % on the row-outer cases (conv
//! 3 x 3 64 -> 64 179–185 to 192–193 GFLOP/s, LSTM gates 174–184 to
//! 191–197, fc1 weight gradient 152–158 to 162–166). The embedded
//! broadcast `vfmadd231ps zmm, zmm, m32{1to16}` (one load per FMA) was
//! slower (conv 135 against 162 GFLOP/s); prefetching B ahead, one
//! broadcast register per row, or all broadcasts of a step before its
//! FMAs changed nothing beyond noise.
//!
//! The driver hands these kernels groups of full panels wherever it walks
//! panels one at a time for the `ymm` ones (panel-outer sweeps and
//! per-panel packing, the reduction-block-outer nest: up to four);
//! row-outer calls pass all of a row tile's full panels, which the kernel
//! takes four at a time. A partial last panel keeps its scratch tile.
//!
//! Registers: accumulator of row `i`, panel `j` is `zmm(4i + j)`
//! (`zmm0`–`zmm23`), B rows `zmm24`–`zmm27`, broadcasts `zmm28`–`zmm29`
//! (alternating by row); the epilogue reuses `zmm24`–`zmm29` and `k1`.
//! General-purpose registers, the stack frame and the reduction loop nest
//! (`avx2::emit_level`, through [`TileBody`]) are the `ymm` kernels'.
//!
//! # Bit identity
//!
//! Every output element sees the same operations in the same order as on
//! the `ymm` (and Cranelift) kernels: one fused multiply-add per reduction
//! step in `k` order, flushed into the stack tile at the same block
//! boundaries (`blocking`) as `total = acc + total`, then `0 + total`,
//! `+ bias`, the activation and `+ C`. Only the vector width differs, and
//! a lane of a 512-bit FMA rounds exactly like a lane of a 256-bit one.
//! Leaky ReLU multiplies by alpha under an opmask of the lanes whose sign
//! bit is set (`vpcmpgtd` against zero), the lanes the `ymm` kernels'
//! `vblendvps` picks. The tests compare the paths bit for bit.
//!
//! The block kernels (one reduction block of a tile whose running totals
//! live in C, for the driver's reduction-block-outer nest) come for one
//! panel, a pair and four panels, with the `ymm` block kernels' additions
//! in the same order; the driver hands them groups of panels.

// `dynasm!` converts every dynamic register expression with `.into()`,
// which is the identity for the `u8` register numbers used here.
#![allow(clippy::useless_conversion)]

use dynasmrt::{dynasm, x64::Assembler, AssemblyOffset, DynasmApi, DynasmLabelApi};

use super::avx2::{
    emit_block_kernel_of, emit_level, emit_tiles_begin, emit_tiles_end, AsmSpec, BlockTile,
    TileBody, MR, NR, RK, ROWS,
};
use super::Epilogue;
use crate::codegen::cpu::evex::{
    vaddps, vbroadcastss, vfmadd231ps, vmaxps, vmovups_load, vmovups_store, vmulps_masked,
    vpbroadcastd_gpr, vpcmpgtd, vpxord, Rm,
};

const RAX: u8 = 0;
const RDX: u8 = 2;
const RSP: u8 = 4;
const RSI: u8 = 6;
const R8: u8 = 8;
/// The C row pointer of the block kernels, once the reduction offset
/// (`RK`) is no longer needed.
const R14: u8 = 14;
/// B rows of the tile's panels.
const ZB: [u8; WIDEST] = [24, 25, 26, 27];
/// Broadcast A elements.
const ZA: [u8; 2] = [28, 29];
/// Most panels one tile spans.
pub(super) const WIDEST: usize = 4;
/// Bytes of one `zmm` register: one 16-column row of a panel.
const ROW_BYTES: i32 = (NR * 4) as i32;
/// Bytes of the stack tile of running totals: room for the widest tile.
const TOTALS_BYTES: i32 = (MR * WIDEST * NR * 4) as i32;

/// Whether the `zmm` kernels can address `spec` (beyond what the `ymm`
/// ones need, see `avx2::supports`): panel `j`'s B at
/// `j * b_panel + k * b_step` and the step to the next group fit `i32`
/// displacements.
pub(super) fn supports(spec: &AsmSpec) -> bool {
    let fits = |x: i64| i32::try_from(x).is_ok();
    let u = spec.unroll.max(1) as i64;
    let w = WIDEST as i64;
    fits(
        spec.b_panel
            .saturating_mul(w - 1)
            .saturating_add(spec.b_step.saturating_mul(u + 1)),
    ) && fits(
        spec.b_panel
            .saturating_mul(w)
            .saturating_sub(spec.b_step.saturating_mul(spec.k_total() as i64)),
    )
}

/// One tile: `mr` rows of `panels` neighbouring panels (1, 2 or
/// [`WIDEST`]), each panel's B `b_second` bytes after the one before.
struct Zmm {
    mr: usize,
    panels: usize,
    b_second: i32,
}

impl Zmm {
    /// The accumulator of row `i`, panel `j`.
    fn acc(i: usize, j: usize) -> u8 {
        (WIDEST * i + j) as u8
    }

    /// Every accumulator of the tile.
    fn accs(&self) -> impl Iterator<Item = u8> + '_ {
        (0..self.mr).flat_map(move |i| (0..self.panels).map(move |j| Zmm::acc(i, j)))
    }

    /// The accumulator's slot in the stack tile.
    fn total(acc: u8) -> Rm {
        Rm::at(RSP, ROW_BYTES * acc as i32)
    }
}

impl TileBody for Zmm {
    fn steps(&self, ops: &mut Assembler, spec: &AsmSpec, count: usize) {
        for s in 0..count {
            let boff = (s as i64 * spec.b_step) as i32;
            for (j, &zb) in ZB.iter().enumerate().take(self.panels) {
                vmovups_load(ops, zb, Rm::at(RSI, boff + j as i32 * self.b_second));
            }
            for (i, &row) in ROWS.iter().enumerate().take(self.mr) {
                let za = ZA[i % 2];
                let a = Rm::at_index(row, RK, (spec.a_step * s as i64) as i32);
                vbroadcastss(ops, za, a);
                for (j, &zb) in ZB.iter().enumerate().take(self.panels) {
                    vfmadd231ps(ops, Zmm::acc(i, j), zb, Rm::Reg(za));
                }
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

    fn flush(&self, ops: &mut Assembler) {
        for acc in self.accs() {
            vaddps(ops, acc, acc, Zmm::total(acc));
            vmovups_store(ops, Zmm::total(acc), acc);
            vpxord(ops, acc, acc, acc);
        }
    }
}

impl BlockTile for Zmm {
    fn rows(&self) -> usize {
        self.mr
    }

    fn zero_accs(&self, ops: &mut Assembler) {
        for acc in self.accs() {
            vpxord(ops, acc, acc, acc);
        }
    }

    fn zero_spare(&self, ops: &mut Assembler) -> u8 {
        let zero = ZA[0];
        vpxord(ops, zero, zero, zero);
        zero
    }

    fn add_zero(&self, ops: &mut Assembler, zero: u8) {
        for acc in self.accs() {
            vaddps(ops, acc, acc, Rm::Reg(zero));
        }
    }

    fn add_c_row(&self, ops: &mut Assembler, i: usize) {
        for j in 0..self.panels {
            let acc = Zmm::acc(i, j);
            vaddps(ops, acc, acc, Rm::at(R14, ROW_BYTES * j as i32));
        }
    }

    fn store_c_row(&self, ops: &mut Assembler, i: usize) {
        for j in 0..self.panels {
            vmovups_store(ops, Rm::at(R14, ROW_BYTES * j as i32), Zmm::acc(i, j));
        }
    }

    fn zero_plus(&self, ops: &mut Assembler, zero: u8) {
        for acc in self.accs() {
            vaddps(ops, acc, zero, Rm::Reg(acc));
        }
    }

    fn epilogue(&self, ops: &mut Assembler, spec: &AsmSpec) {
        emit_epilogue(ops, spec, self);
    }
}

/// The kernel for `mr`-row tiles: the same arguments, stack frame and
/// walk over row tiles as `avx2::emit_kernel`, with the panels taken
/// [`WIDEST`] at a time, then in pairs, an odd last one alone.
pub(super) fn emit_kernel(ops: &mut Assembler, spec: &AsmSpec, mr: usize) -> AssemblyOffset {
    let start = ops.offset();
    let (tile_top, frame) = emit_tiles_begin(ops, spec, mr, TOTALS_BYTES);
    let flushes = spec.blocking.flushes();
    let panels_done = ops.new_dynamic_label();
    let b_second = spec.b_panel as i32;
    for w in [WIDEST, 2] {
        let (top, narrower) = (ops.new_dynamic_label(), ops.new_dynamic_label());
        dynasm!(ops
            ; .arch x64
            ; =>top
            ; cmp QWORD [rsp + frame + 8], w as i32
            ; jb =>narrower
        );
        let tile = Zmm {
            mr,
            panels: w,
            b_second,
        };
        emit_tile(ops, spec, &tile, flushes);
        // The next group: B from its start (the reduction advanced it by
        // `K * b_step`), `16 * w` columns on in C and the bias.
        let b_fix = (w as i64 * spec.b_panel - spec.k_total() as i64 * spec.b_step) as i32;
        let cols = w as i32 * ROW_BYTES;
        dynasm!(ops
            ; .arch x64
            ; add rsi, b_fix
            ; add r8, cols
            ; mov rdx, QWORD [rsp + frame]
            ; add rdx, cols
            ; mov QWORD [rsp + frame], rdx
            ; sub QWORD [rsp + frame + 8], w as i32
            ; jz =>panels_done
            ; jmp =>top
            ; =>narrower
        );
    }
    let single = Zmm {
        mr,
        panels: 1,
        b_second,
    };
    emit_tile(ops, spec, &single, flushes);
    dynasm!(ops
        ; .arch x64
        ; =>panels_done
        ; add rsp, frame + 16
    );
    emit_tiles_end(ops, mr, tile_top);
    start
}

/// One reduction block of `steps` steps for an `mr`-row tile of `panels`
/// panels whose running totals live in C: `avx2::emit_block_kernel` (the
/// same additions in the same order) on the `zmm` tile. The driver's
/// reduction-block-outer nest finds the second panel's block `b_panel`
/// on in a row-major B read in place, else right after the first's in
/// its packing of the block.
pub(super) fn emit_block_kernel(
    ops: &mut Assembler,
    spec: &AsmSpec,
    mr: usize,
    steps: usize,
    panels: usize,
) -> AssemblyOffset {
    let b_second = if spec.b_in_place {
        spec.b_panel
    } else {
        steps as i64 * spec.b_step
    };
    let tile = Zmm {
        mr,
        panels,
        b_second: b_second as i32,
    };
    emit_block_kernel_of(ops, spec, &tile, steps)
}

/// One tile at C `rdx`, B `rsi`, bias `r8`: the whole reduction, then the
/// epilogue (which leaves `rdx` `mr` rows on).
fn emit_tile(ops: &mut Assembler, spec: &AsmSpec, tile: &Zmm, flushes: bool) {
    // Fetch the C tile for writing while the reduction runs (see `avx2`):
    // a row of `w` panels is `64 * w` bytes, on `w` or `w + 1` lines.
    dynasm!(ops ; .arch x64 ; mov rax, rdx);
    let row = tile.panels as i32 * ROW_BYTES;
    for _ in 0..tile.mr {
        for j in 0..tile.panels as i32 {
            dynasm!(ops ; .arch x64 ; prefetchw [rax + j * ROW_BYTES]);
        }
        dynasm!(ops
            ; .arch x64
            ; prefetchw [rax + row - 1]
            ; add rax, rcx
        );
    }
    for acc in tile.accs() {
        vpxord(ops, acc, acc, acc);
    }
    if flushes {
        // The running totals start at zero (the accumulators just are).
        for acc in tile.accs() {
            vmovups_store(ops, Zmm::total(acc), acc);
        }
    }
    dynasm!(ops ; .arch x64 ; xor Rq(RK), Rq(RK));
    emit_level(ops, spec, tile, 0);
    if flushes {
        // Every block was flushed, so the accumulators are zero: the sum
        // is `0 + total`, exactly the total.
        for acc in tile.accs() {
            vaddps(ops, acc, acc, Zmm::total(acc));
        }
    }
    emit_epilogue(ops, spec, tile);
}

/// Bias, activation, `C +=` and the store of the tile, in the `ymm`
/// kernels' order.
fn emit_epilogue(ops: &mut Assembler, spec: &AsmSpec, tile: &Zmm) {
    if spec.bias {
        for (j, &zb) in ZB.iter().enumerate().take(tile.panels) {
            vmovups_load(ops, zb, Rm::at(R8, ROW_BYTES * j as i32));
        }
        for i in 0..tile.mr {
            for (j, &zb) in ZB.iter().enumerate().take(tile.panels) {
                let acc = Zmm::acc(i, j);
                vaddps(ops, acc, acc, Rm::Reg(zb));
            }
        }
    }
    match spec.epilogue {
        Epilogue::None | Epilogue::Sigmoid | Epilogue::Tanh => {}
        Epilogue::Relu => {
            // `vmaxps x, x, 0` returns its second operand when x is NaN,
            // like the interpreter's `f32::max(x, 0.0)`.
            vpxord(ops, ZA[1], ZA[1], ZA[1]);
            for acc in tile.accs() {
                vmaxps(ops, acc, acc, Rm::Reg(ZA[1]));
            }
        }
        Epilogue::LeakyRelu(alpha) => {
            // `alpha * x` in the lanes whose sign bit is set (`0 > x` as
            // integers), the lanes the `ymm` kernels' blend picks: `-0`
            // becomes `-0`, `+0` stays, a NaN stays a NaN.
            dynasm!(ops ; .arch x64 ; mov eax, alpha.to_bits() as i32);
            vpbroadcastd_gpr(ops, ZA[0], RAX);
            vpxord(ops, ZA[1], ZA[1], ZA[1]);
            for acc in tile.accs() {
                vpcmpgtd(ops, 1, ZA[1], acc);
                vmulps_masked(ops, acc, 1, acc, Rm::Reg(ZA[0]));
            }
        }
    }
    for i in 0..tile.mr {
        for j in 0..tile.panels {
            let acc = Zmm::acc(i, j);
            let c = Rm::at(RDX, ROW_BYTES * j as i32);
            if spec.accumulate {
                vaddps(ops, acc, acc, c);
            }
            vmovups_store(ops, c, acc);
        }
        dynasm!(ops ; .arch x64 ; add rdx, rcx);
    }
}
