//! The Rust loop nest around the native micro-kernels: splits rows and
//! panels over threads (the same split as the Cranelift kernels), walks the
//! tiles in the plan's loop order, resolves each tile's A row pointers and
//! calls the micro-kernel once per tile.
//!
//! A call per tile costs a few nanoseconds against the microseconds a tile
//! takes (`2 * 6 * 16 * K` flops), and keeps the row decomposition, edge
//! handling and threading in checked Rust rather than in assembly.
//!
//! Packing inside the nest (`BSource::PerPanel`, see [`packs_per_panel`]):
//! a transposed B is packed one panel at a time just before its sweep of
//! row tiles; a long row-major B (one panel over the L2 share) runs the
//! reduction-block-outer nest of `Ctx::run_blocked`, whose block kernels
//! keep the running totals in C (bit-identical to the whole-K kernels:
//! same blocks, same additions in the same order).
//!
//! The AVX-512 kernels (`avx512`) compute two neighbouring panels per
//! tile: where the nest walks panels one at a time (panel-outer sweeps,
//! per-panel packing, the reduction-block-outer nest) it hands them groups
//! of full panels instead (up to four; see [`Ctx::panel_group`]), and the
//! per-panel packing packs a whole group into its buffer at once. Calls
//! over several panels (row-outer sweeps) pass the count as before; the
//! kernel takes them four, then two at a time.
//!
//! Edge tiles: rows past a multiple of 6 use the kernel for that height;
//! columns past a multiple of 16 (the last panel, whose packed B is zero
//! padded) go through a 6 x 16 scratch tile, so the kernel never reads or
//! writes past C or the bias: the driver copies the valid columns in (for
//! `C +=`) and out.

use std::cell::RefCell;
use std::ops::Range;

use super::avx2::{block_steps, tiles_arg, BlockSteps, MR, NR};
use super::avx512::WIDEST;
use super::native::AsmKernels;
use super::pack::{pack_panels, ALIGN_SLACK};
use super::{split_work, BLayout, CodegenError, LoopOrder, Plan, SendPtr};
use crate::codegen::cpu::parallel::parallel_for;

/// Where the micro-kernels find B.
#[derive(Clone, Copy)]
pub(super) enum BSource<'a> {
    /// Already laid out as the kernels read it: packed panels, or a
    /// row-major B read in place.
    Ready(&'a [f32]),
    /// The caller's unpacked B (`[K, ldb]`, or `[N, ldb]` transposed):
    /// each thread packs one panel at a time into its own buffer, just
    /// before the row tiles that use it (see [`packs_per_panel`]).
    PerPanel { b: &'a [f32], ldb: usize },
}

/// Whether a run that was handed an unpacked B packs it inside the loop
/// nest, panel by panel or reduction block by block ([`blocks_outer`]),
/// rather than all at once before it.
///
/// With the panel-outer order every panel is used by one sweep of row
/// tiles and then never again, so packing it right before that sweep
/// into a small per-thread buffer keeps the packed copy in L1/L2 (a 16
/// column panel is `64 * K` bytes: 8 KiB at K = 128, 346 KiB at K = 5408),
/// where a whole packing (2.8 MB for the course CNN's fc1 weight) is
/// written out to L3 and read back. Applies when the threads split the
/// panels (each packs only its own) rather than the rows (each would pack
/// every panel).
pub(super) fn packs_per_panel(p: &Plan, threads: usize) -> bool {
    p.b_layout == BLayout::Packed
        && p.order == LoopOrder::PanelOuter
        && (p.b_transposed || blocks_outer(p).is_some())
        && split_work(p, threads)
            .iter()
            .all(|(rows, _)| *rows == (0..p.m))
}

/// The reduction blocks, if a run that packs B itself walks them
/// outermost ([`Ctx::run_blocked`]): where the kernels have block kernels,
/// there is no partial panel (whose scratch tile could not carry the
/// totals) and one panel would not fit the L2 share.
///
/// A transposed B is packed panel by panel: a panel's 16 stored rows are
/// contiguous, so that packing reads sequentially. A row-major B is
/// packed a block of a group of panels at a time, reading whole rows of
/// the group; one panel at a time would read a single cache line per row
/// (one per 4 KiB page at `ldb = 1024`), out of the prefetchers' reach,
/// so a row-major B whose panels fit the L2 share keeps the whole packing.
fn blocks_outer(p: &Plan) -> Option<BlockSteps> {
    let long = p.panel_len() * 4 > L2_SHARE_BYTES;
    if long && p.tail_cols == 0 {
        block_steps(&p.asm_spec())
    } else {
        None
    }
}

/// The reduction blocks, if a run over a row-major B read in place
/// walks them outermost ([`Ctx::run_blocked`]): where there are several
/// row tiles, each of which would otherwise stream a long panel of B
/// (over the L2 share) from memory again. Block by block, a panel's block
/// (`len` rows of one 64-byte line) is read from memory by the first row
/// tile and from L1 by the others, so B is streamed once.
///
/// The course CNN's conv1 weight gradient (9 × 43,264 × 32, B = the
/// 5.5 MB conv-output gradient) runs a 6-row and a 3-row tile per panel:
/// the whole-K nest read B twice over.
fn blocks_in_place(p: &Plan) -> Option<BlockSteps> {
    let long = p.panel_len() * 4 > L2_SHARE_BYTES;
    if p.b_layout == BLayout::RowMajor && p.m_tiles() > 1 && long && p.tail_cols == 0 {
        block_steps(&p.asm_spec())
    } else {
        None
    }
}

thread_local! {
    /// The calling thread's panel buffer for [`BSource::PerPanel`], kept
    /// between calls so it is not faulted in again on every run.
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Most row tiles one micro-kernel call computes (`runs_of_full_tiles`).
const TILE_RUN: usize = 16;

/// L2 bytes the reduction-block-outer loop nest gives each of its three
/// working sets: one reduction block of a group of panels of B, the C (the
/// running totals) of a chunk of rows and that chunk's A block (a quarter
/// of a 512 KiB L2 each, leaving room for what streams through).
const L2_SHARE_BYTES: usize = 128 * 1024;

/// Walks the row decomposition of the plan one row at a time, tracking the
/// A byte offset without divisions.
struct RowCursor<'p> {
    dims: &'p [(usize, i64)],
    digits: [usize; 3],
    off: i64,
}

impl<'p> RowCursor<'p> {
    fn new(p: &'p Plan, m: usize) -> Self {
        let dims = &p.m_dims[..];
        let mut digits = [0; 3];
        let mut off = 0;
        let mut t = m;
        for (l, &(extent, stride)) in dims.iter().enumerate() {
            let d = if l + 1 < dims.len() { t % extent } else { t };
            t /= extent.max(1);
            digits[l] = d;
            off += d as i64 * stride;
        }
        RowCursor { dims, digits, off }
    }

    fn advance(&mut self) {
        for (l, &(extent, stride)) in self.dims.iter().enumerate() {
            self.digits[l] += 1;
            self.off += stride;
            if l + 1 == self.dims.len() || self.digits[l] < extent {
                return;
            }
            // Wrap this digit and carry into the next dimension.
            self.digits[l] = 0;
            self.off -= stride * extent as i64;
        }
    }
}

/// Runs the contraction on `threads` threads; operands are already checked
/// against the plan (see `CompiledContraction::launch`).
pub(super) fn launch(
    p: &Plan,
    k: &AsmKernels,
    a: &[f32],
    b: BSource<'_>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    threads: usize,
) -> Result<(), CodegenError> {
    debug_assert_eq!((p.mr, p.nr), (MR, NR));
    // The last panel's bias, zero padded to a whole tile.
    let mut bias_tail = [0.0f32; NR];
    if let Some(b) = bias {
        if p.tail_cols > 0 {
            let n0 = p.full_panels * NR;
            bias_tail[..p.tail_cols].copy_from_slice(&b[n0..p.n]);
        }
    }
    let ctx = Ctx {
        p,
        k,
        a: SendPtr(a.as_ptr() as *mut f32),
        b: match b {
            BSource::Ready(packed) => SendPtr(packed.as_ptr() as *mut f32),
            BSource::PerPanel { .. } => SendPtr(std::ptr::null_mut()),
        },
        unpacked: match b {
            BSource::Ready(_) => None,
            BSource::PerPanel { b, ldb } => Some((b, ldb)),
        },
        bias: SendPtr(bias.map_or(std::ptr::null(), |b| b.as_ptr()) as *mut f32),
        bias_tail: SendPtr(bias_tail.as_ptr() as *mut f32),
        c: SendPtr(c.as_mut_ptr()),
    };
    let work = split_work(p, threads);
    if work.len() <= 1 {
        ctx.run(0..p.m, 0..p.panels);
        return Ok(());
    }
    parallel_for(work.len(), &|t| {
        ctx.run(work[t].0.clone(), work[t].1.clone())
    })
    .map_err(CodegenError::Thread)
}

struct Ctx<'a> {
    p: &'a Plan,
    k: &'a AsmKernels,
    a: SendPtr,
    b: SendPtr,
    /// B still to be packed, panel by panel, with its `ldb`.
    unpacked: Option<(&'a [f32], usize)>,
    bias: SendPtr,
    bias_tail: SendPtr,
    c: SendPtr,
}

impl Ctx<'_> {
    /// Calls `f(m0, h, row pointers)` for every tile of `rows` (which
    /// start on a tile boundary), the pointers advanced by `k_bytes`.
    fn tiles(
        &self,
        rows: Range<usize>,
        k_bytes: isize,
        f: &mut dyn FnMut(usize, usize, &[*const f32; MR]),
    ) {
        let mut cur = RowCursor::new(self.p, rows.start);
        let mut m0 = rows.start;
        while m0 < rows.end {
            let h = MR.min(rows.end - m0);
            let mut ptrs = [std::ptr::null(); MR];
            for ptr in ptrs.iter_mut().take(h) {
                // In bounds: `lens.a` covers every row's reduction span.
                *ptr = self
                    .a
                    .get()
                    .cast_const()
                    .wrapping_byte_offset(cur.off as isize + k_bytes);
                cur.advance();
            }
            f(m0, h, &ptrs);
            m0 += h;
        }
    }

    /// Every tile of `rows` x `panels` (rows start on a tile boundary).
    fn run(&self, rows: Range<usize>, panels: Range<usize>) {
        let p = self.p;
        let blocked = match self.unpacked {
            Some(_) => blocks_outer(p),
            None => blocks_in_place(p),
        };
        if let Some(steps) = blocked {
            self.run_blocked(rows, panels, steps);
            return;
        }
        let tiles =
            |f: &mut dyn FnMut(usize, usize, &[*const f32; MR])| self.tiles(rows.clone(), 0, f);
        let panel_b = |panel: usize| {
            self.b
                .get()
                .cast_const()
                .wrapping_byte_offset(panel as isize * p.b_panel_bytes as isize)
        };
        if let Some((b, ldb)) = self.unpacked {
            // Panel-outer by construction (`packs_per_panel`); a group of
            // panels at a time for the kernels that compute several.
            let len = p.panel_len();
            let most = if self.k.pairs() { WIDEST } else { 1 };
            PANEL.with(|buf| {
                let mut buf = buf.borrow_mut();
                if buf.len() < most * len + ALIGN_SLACK {
                    buf.resize(most * len + ALIGN_SLACK, 0.0);
                }
                let skew = buf.as_ptr().align_offset(64).min(ALIGN_SLACK);
                let mut panel = panels.start;
                while panel < panels.end {
                    let group = self.panel_group(panel, panels.end);
                    let dst = &mut buf[skew..skew + group.len() * len];
                    pack_panels(p, b, ldb, panel, dst);
                    self.sweep(rows.clone(), group.clone(), dst.as_ptr());
                    panel = group.end;
                }
            });
            return;
        }
        match p.order {
            LoopOrder::RowOuter if panels.end <= p.full_panels && !panels.is_empty() => {
                self.runs_of_full_tiles(rows, panels.clone(), panel_b(panels.start));
            }
            LoopOrder::RowOuter => {
                let full = panels.start..panels.end.min(p.full_panels);
                tiles(&mut |m0, h, ptrs| {
                    if !full.is_empty() {
                        self.full_tiles(m0, h, ptrs, full.clone(), panel_b(full.start));
                    }
                    for panel in full.end.max(panels.start)..panels.end {
                        self.tile(m0, h, ptrs, panel, panel_b(panel));
                    }
                })
            }
            LoopOrder::PanelOuter | LoopOrder::Auto => {
                let mut panel = panels.start;
                while panel < panels.end {
                    let group = self.panel_group(panel, panels.end);
                    self.sweep(rows.clone(), group.clone(), panel_b(panel));
                    panel = group.end;
                }
            }
        }
    }

    /// The panels a panel-outer sweep starting at `panel` (of those up to
    /// `end`) covers: for the AVX-512 kernels up to [`WIDEST`] full panels
    /// (their widest tile) while the group's B fits twice the L2 share,
    /// else a pair (dense 1024 x 1024, batch 64, one thread: 160 to 174
    /// GFLOP/s with groups of four); the one panel for the AVX2 kernels
    /// or a partial last panel.
    fn panel_group(&self, panel: usize, end: usize) -> Range<usize> {
        let full = end.min(self.p.full_panels);
        if !self.k.pairs() || panel + 2 > full {
            return panel..panel + 1;
        }
        let most = if self.p.panel_len() * 4 * WIDEST <= 2 * L2_SHARE_BYTES {
            WIDEST
        } else {
            2
        };
        panel..panel + most.min(full - panel)
    }

    /// Every row tile of `rows` over `group` (one panel, or several full
    /// ones from [`Self::panel_group`]), whose B starts at `b`.
    fn sweep(&self, rows: Range<usize>, group: Range<usize>, b: *const f32) {
        if group.len() > 1 {
            self.runs_of_full_tiles(rows, group, b);
            return;
        }
        let panel = group.start;
        self.tiles(rows, 0, &mut |m0, h, ptrs| self.tile(m0, h, ptrs, panel, b));
    }

    /// The reduction-block-outer loop nest: for each group of panels whose
    /// reduction block of B fits in L2, for each chunk of rows whose C and
    /// A block do too, for each reduction block (`K_BLOCK` steps or fewer),
    /// for each panel of the group, every row tile of the chunk. A panel's
    /// block (at most 16 KiB) stays in L1 across the row tiles, the
    /// chunk's A block and C in L2 across the panels; C holds the running
    /// totals between blocks. An unpacked B is packed one block of the
    /// group at a time.
    fn run_blocked(&self, rows: Range<usize>, panels: Range<usize>, steps: BlockSteps) {
        let p = self.p;
        let ldc = p.ldc_bytes as isize;
        // Panels per group: one reduction block of the group's B fits the
        // L2 budget; rows per chunk: the chunk's C and A block do too.
        let group = (L2_SHARE_BYTES / (steps.len * NR * 4)).max(1);
        let run_chunk = |chunk_rows: Range<usize>, panels: Range<usize>, buf: &mut [f32]| {
            for blk in 0..steps.count() {
                let (k0, len) = steps.block(blk);
                let pass = steps.pass(blk);
                if let Some((b, ldb)) = self.unpacked {
                    let sub = p.with_k(len);
                    let b = if p.b_transposed {
                        &b[k0..]
                    } else {
                        &b[k0 * ldb..]
                    };
                    pack_panels(
                        &sub,
                        b,
                        ldb,
                        panels.start,
                        &mut buf[..panels.len() * len * NR],
                    );
                }
                let panel_b = |panel: usize| -> *const f32 {
                    match self.unpacked {
                        Some(_) => buf[(panel - panels.start) * len * NR..].as_ptr(),
                        None => self.b.get().cast_const().wrapping_byte_offset(
                            panel as isize * p.b_panel_bytes as isize
                                + (k0 as i64 * p.b_step_bytes) as isize,
                        ),
                    }
                };
                let k_bytes = (k0 as i64 * p.a_step_bytes) as isize;
                let mut panel = panels.start;
                while panel < panels.end {
                    // Groups of panels for the kernels that compute them
                    // (every panel here is full; four, then a pair, then
                    // one); the next panel's block lies where the block
                    // kernels expect it (`b_in_place`).
                    let left = panels.end - panel;
                    let group = if !self.k.pairs() {
                        1
                    } else if left >= WIDEST {
                        WIDEST
                    } else {
                        left.min(2)
                    };
                    let b = panel_b(panel);
                    let bias = self.bias.get().cast_const().wrapping_add(panel * NR);
                    self.tiles(chunk_rows.clone(), k_bytes, &mut |m0, h, ptrs| {
                        let kernel = self.k.block_kernel(h, len, group);
                        let c = self
                            .c
                            .get()
                            .wrapping_byte_offset(m0 as isize * ldc)
                            .wrapping_add(panel * NR);
                        // SAFETY: the rows are `h` valid A row pointers
                        // advanced to step `k0`, whose `len` steps lie in
                        // A (`lens.a` covers every row's span); B holds
                        // the `group` panels' `len` steps from `k0` (the
                        // checked B, or this block's packing in `buf`);
                        // the tile's `h` rows of `16 * group` columns lie
                        // within C (no partial panel; `lens.c`), which this
                        // thread alone writes; the bias, when compiled in,
                        // holds `n` values.
                        unsafe { kernel(ptrs.as_ptr(), b, c, ldc, bias, pass) };
                    });
                    panel += group;
                }
            }
        };
        let each = |buf: &mut [f32]| {
            for g in panels.clone().step_by(group) {
                let gp = g..(g + group).min(panels.end);
                let max_rows = (L2_SHARE_BYTES / (gp.len() * NR * 4))
                    .min(L2_SHARE_BYTES / (steps.len * 4))
                    .max(MR);
                // Equal chunks of whole tiles (a short last chunk would run
                // short tiles and pack its blocks for few rows).
                let n = rows.len().div_ceil(max_rows);
                let chunk = rows.len().div_ceil(n).div_ceil(MR) * MR;
                for m in (rows.start..rows.end).step_by(chunk) {
                    run_chunk(m..(m + chunk).min(rows.end), gp.clone(), buf);
                }
            }
        };
        if self.unpacked.is_some() {
            let len = group.min(panels.len()) * steps.len * NR;
            PANEL.with(|buf| {
                let mut buf = buf.borrow_mut();
                if buf.len() < len + ALIGN_SLACK {
                    buf.resize(len + ALIGN_SLACK, 0.0);
                }
                let skew = buf.as_ptr().align_offset(64).min(ALIGN_SLACK);
                each(&mut buf[skew..skew + len]);
            });
        } else {
            each(&mut []);
        }
    }

    /// Row-outer over full panels only: the full-height row tiles of
    /// `rows` in runs of up to [`TILE_RUN`], one micro-kernel call per run
    /// (a short reduction, such as conv1's K = 9, otherwise pays a call,
    /// prologue and epilogue per tile), then the short last tile.
    fn runs_of_full_tiles(&self, rows: Range<usize>, panels: Range<usize>, b: *const f32) {
        let p = self.p;
        let ldc = p.ldc_bytes as isize;
        let mut run = [std::ptr::null::<f32>(); MR * TILE_RUN];
        let mut count = 0;
        let mut first = rows.start;
        let flush = |first: usize, count: usize, run: &[*const f32]| {
            if count == 0 {
                return;
            }
            let c = self
                .c
                .get()
                .wrapping_byte_offset(first as isize * ldc)
                .wrapping_add(panels.start * NR);
            let bias = self.bias.get().cast_const().wrapping_add(panels.start * NR);
            // SAFETY: as in `full_tiles` for each of the `count` tiles,
            // whose `MR` row pointers lie one after the other in `run`
            // and whose C rows follow each other (`MR` rows apart).
            unsafe {
                self.k.kernel(MR)(
                    run.as_ptr(),
                    b,
                    c,
                    ldc,
                    bias,
                    tiles_arg(panels.len(), count),
                )
            };
        };
        self.tiles(rows, 0, &mut |m0, h, ptrs| {
            if h < MR {
                flush(first, count, &run);
                count = 0;
                self.full_tiles(m0, h, ptrs, panels.clone(), b);
                return;
            }
            if count == 0 {
                first = m0;
            }
            run[count * MR..(count + 1) * MR].copy_from_slice(ptrs);
            count += 1;
            if count == TILE_RUN {
                flush(first, count, &run);
                count = 0;
            }
        });
        flush(first, count, &run);
    }

    /// The `h x 16` tiles at rows `m0..m0 + h` of the full panels
    /// `panels` (not empty), the first of whose B starts at `b`: one call.
    fn full_tiles(
        &self,
        m0: usize,
        h: usize,
        rows: &[*const f32; MR],
        panels: Range<usize>,
        b: *const f32,
    ) {
        let p = self.p;
        debug_assert!(!panels.is_empty() && panels.end <= p.full_panels);
        let ldc = p.ldc_bytes as isize;
        let c = self
            .c
            .get()
            .wrapping_byte_offset(m0 as isize * ldc)
            .wrapping_add(panels.start * NR);
        let bias = self.bias.get().cast_const().wrapping_add(panels.start * NR);
        // SAFETY: as in `tile` for each of the panels, which are all full
        // and lie side by side in B (`b_panel_bytes` apart), C and the
        // bias (16 columns apart).
        unsafe { self.k.kernel(h)(rows.as_ptr(), b, c, ldc, bias, panels.len()) };
    }

    /// One `h x 16` tile at rows `m0..m0 + h` of panel `panel`, whose B
    /// starts at `b`.
    fn tile(&self, m0: usize, h: usize, rows: &[*const f32; MR], panel: usize, b: *const f32) {
        let p = self.p;
        let kernel = self.k.kernel(h);
        let ldc = p.ldc_bytes as isize;
        let c = self
            .c
            .get()
            .wrapping_byte_offset(m0 as isize * ldc)
            .wrapping_add(panel * NR);
        if panel < p.full_panels {
            let bias = self.bias.get().cast_const().wrapping_add(panel * NR);
            // SAFETY: the rows are `h` valid A row pointers whose reduction
            // spans lie in A (checked against `lens.a`), B holds the panel's
            // `K` steps (checked layout), and the tile's `h` rows of 16
            // columns lie within C (this panel is full; `lens.c`). The bias,
            // when compiled in, holds `n` values (checked).
            unsafe { kernel(rows.as_ptr(), b, c, ldc, bias, 1) };
            return;
        }
        // The last, partial panel: compute into scratch, copy the valid
        // columns out (and in first, for `C +=`).
        let cols = p.tail_cols;
        let mut scratch = [0.0f32; MR * NR];
        if p.accumulate {
            for (r, dst) in scratch.chunks_exact_mut(NR).take(h).enumerate() {
                // SAFETY: row `m0 + r`, columns `panel*16 .. n` of C.
                let src =
                    unsafe { std::slice::from_raw_parts(c.byte_offset(r as isize * ldc), cols) };
                dst[..cols].copy_from_slice(src);
            }
        }
        // SAFETY: as above, with C replaced by the scratch tile (rows 64
        // bytes apart) and the bias by its zero-padded copy.
        unsafe {
            kernel(
                rows.as_ptr(),
                b,
                scratch.as_mut_ptr(),
                (NR * 4) as isize,
                self.bias_tail.get().cast_const(),
                1,
            )
        };
        for (r, src) in scratch.chunks_exact(NR).take(h).enumerate() {
            // SAFETY: row `m0 + r`, columns `panel*16 .. n` of C, which this
            // thread alone writes.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(c.byte_offset(r as isize * ldc), cols) };
            dst.copy_from_slice(&src[..cols]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::cpu::contraction::{ContractionSpec, Conv2dGeometry};

    /// The carry-based cursor visits the same A offsets as decomposing each
    /// row index from scratch, from any starting row.
    #[test]
    fn row_cursor_matches_direct_decomposition() {
        let spec = ContractionSpec::conv2d_nhwc(&Conv2dGeometry {
            batch: 3,
            in_h: 9,
            in_w: 8,
            in_c: 5,
            kernel_h: 3,
            kernel_w: 2,
            out_c: 4,
            stride_h: 2,
            stride_w: 3,
        })
        .expect("conv");
        let plan = spec.plan().expect("plan");
        let direct = |m: usize| RowCursor::new(&plan, m).off;
        for start in [0, 1, 5, 6, 11] {
            let mut cur = RowCursor::new(&plan, start);
            for m in start..plan.m {
                assert_eq!(cur.off, direct(m), "row {m} from {start}");
                cur.advance();
            }
        }
        // Row m = (n, oh, ow) reads from n*Hp*Wp*C + oh*S*Wp*C + ow*S*C.
        let (oh, ow) = (4, 3);
        let m = (2 * oh + 1) * ow + 2;
        let bytes = 4 * (2 * 9 * 8 * 5 + 2 * 8 * 5 + 2 * 3 * 5) as i64;
        assert_eq!(direct(m), bytes);
    }
}
