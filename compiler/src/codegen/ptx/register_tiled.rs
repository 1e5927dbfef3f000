//! PTX entries of large contractions: register-tiled matrix products with
//! the reduction staged through double-buffered shared memory by
//! `cp.async` (see [`Shape::RegisterTiled`](super::launch::Shape::RegisterTiled)).
//!
//! A block of [`THREADS`] threads computes a [`BM`]×[`BN`] output tile;
//! thread `t` (`tx = t % 16`, `ty = t / 16`) owns the 4×4 outputs at rows
//! `4·ty..4·ty+4` and columns `4·tx..4·tx+4` of it, in 16 registers. The
//! reduction runs in slices of [`BK`]: per slice a thread reads 4 A values
//! and 4 B values from shared memory per reduction step (two
//! `ld.shared.v4.f32`) for 16 FMAs, so the inner loop is mostly FFMA (the
//! 16×16 one-output-per-thread tile of the `tiled` module does two shared
//! loads per FMA).
//!
//! Why these sizes: 64×64 outputs and 256 threads is the largest tile for
//! which the netc examples' big products (convolutions at training batch
//! sizes) still give ≥ 132 blocks — one per H100 SM; 4×4 per thread keeps
//! ~60 registers (no spills, 4 blocks per SM); a 16-deep slice gives each
//! thread 4 A and 4 B elements to stage per slice and 256 FMAs between
//! barriers. Contractions with fewer 64×64 tiles than 132 keep the 16×16
//! kernel (or `dot_blocks`), which launches 16 times more blocks.
//!
//! Staging, slice `s + 1` while slice `s` is multiplied:
//! - A(m, k) goes to `As[k][m]` (transposed, rows padded to [`A_LD`] so the
//!   four `A` values a thread needs are one aligned `v4` load): thread `t`
//!   copies rows `ty + 16·i` (`i < 4`) of reduction index `k0 + tx`, 4
//!   bytes each (A's reduction digits need not be contiguous).
//! - B(k, n) goes to `Bs[k][n]`: thread `t` copies row `k0 + ty`, columns
//!   `4·tx..4·tx+4`, as one 16-byte `cp.async` when B's rows are 16-byte
//!   aligned ([`vector_b`]), else as four 4-byte copies.
//! - Elements outside the product (rows ≥ M, columns ≥ N, k ≥ K) are
//!   stored as zeros with `st.shared` instead of copied.
//!
//! The pipeline per slice: stage the next slice into the other buffer,
//! `cp.async.commit_group`, `cp.async.wait_group 1` (this thread's copies
//! of the current slice have landed), `bar.sync` (everyone's have),
//! multiply, `bar.sync` (nobody still reads the buffer the next slice is
//! staged into). The geometry interpreter runs this same schedule with a
//! shared-memory race detector that knows copies land only at the wait.
//!
//! Under [`Precision::Tf32`] the staging and the epilogue are the same,
//! but each slice is multiplied by the tensor cores: the block's 8 warps
//! each own a 32×16 part of the tile and per 8 reduction indices load
//! their `mma.sync` fragments (see the `mma` module) from the same shared
//! slices with scalar `ld.shared.f32`, round them with
//! `cvt.rna.tf32.f32`, and issue 4 `m16n8k8` instructions. This is a
//! first version: 12 scalar loads and 12 conversions feed 4 `mma.sync`
//! (the SASS loop is ~6 % HMMA, see `tests/ptx.rs`), and the fragment
//! loads meet 2-way (A) and 4-way (B) bank conflicts in the slice layout
//! chosen for the f32 kernel's `v4` loads; `ldmatrix`, a swizzled layout
//! or larger warp tiles would raise the tensor cores' share.
//!
//! Index arithmetic is 32-bit only (the planner picks this kernel only
//! where [`fits_32`](super::launch::fits_32) holds); the A offsets of a
//! thread's four staging rows are computed once, and the reduction digits
//! of `k0 + tx` are stepped by a slice with adds and carries, as in the
//! `tiled` module.

use super::asm::{f32_hex, param_list, Asm};
use super::launch::{digits, k_extents, KernelPlan};
use super::mma;
use super::precision::Precision;
use super::tiled::{digits_offset, epilogue};
use crate::kernel::ir::*;
use std::fmt::Write;

pub use super::register_tile::{tiles, BK, BM, BN, RM, RN, THREADS};

/// Row length (floats) of the transposed A slice `As[k][m]`: padded by 4
/// so that the 16 reduction indices a warp stores land in 8 banks rather
/// than one, and rows stay 16-byte aligned for `v4` loads.
pub const A_LD: u32 = BM + 4;
/// Floats of one A slice buffer.
pub const A_SLICE: u32 = BK * A_LD;
/// Floats of one B slice buffer.
pub const B_SLICE: u32 = BK * BN;

/// Whether B's rows can be copied 16 bytes at a time: every group of four
/// columns a thread copies starts at a 16-byte aligned address and lies
/// wholly inside or wholly outside `0..N`. Every buffer starts 256-byte
/// aligned (its own `cuMemAlloc`, or an arena offset that is a multiple of
/// [`ARENA_ALIGN`](crate::kernel::plan::ARENA_ALIGN) elements), so B's
/// element offset, row stride and N being multiples of 4 suffices.
pub fn vector_b(c: &Contraction) -> bool {
    !c.b_transposed && c.n.is_multiple_of(4) && c.ldb.is_multiple_of(4) && c.b.1.is_multiple_of(4)
}

/// Names of the two double-buffered shared arrays of an entry.
pub(crate) fn shared_names(entry: &str) -> (String, String) {
    (format!("{entry}_As"), format!("{entry}_Bs"))
}

/// Where a thread's 16 outputs are: `row0 + rows[i]`, `col0 + cols[j]`
/// of the block's tile, in accumulator `acc(i, j)`.
struct Owned {
    row0: String,
    col0: String,
    rows: [u32; 4],
    cols: [u32; 4],
    acc: fn(usize, usize) -> usize,
}

/// Emits the entry of a register-tiled contraction (32-bit indices).
pub(crate) fn register_tiled_entry(
    out: &mut String,
    plan: &KernelPlan,
    c: &Contraction,
    precision: Precision,
) {
    let (at, bt) = shared_names(&plan.entry);
    let _ = writeln!(out, ".shared .align 16 .f32 {at}[{}];", 2 * A_SLICE);
    let _ = writeln!(out, ".shared .align 16 .f32 {bt}[{}];\n", 2 * B_SLICE);
    let _ = writeln!(out, "// kernel {}", plan.kernel);
    let _ = writeln!(
        out,
        ".visible .entry {}(\n{}\n)\n.maxntid {THREADS}, 1, 1\n{{",
        plan.entry,
        param_list(&plan.entry, plan.params.len())
    );
    let mut a = Asm::new(true);
    a.load_params(&plan.entry, &plan.params);
    let (m_total, n_total, k_total) = (c.m() as u64, c.n as u64, c.k() as u64);
    let vec_b = vector_b(c);

    let (t, bx, by, tx, ty) = (a.r(), a.r(), a.r(), a.r(), a.r());
    a.ins(format!("mov.u32 {t}, %tid.x"));
    a.ins(format!("mov.u32 {bx}, %ctaid.x"));
    a.ins(format!("mov.u32 {by}, %ctaid.y"));
    a.ins(format!("and.b32 {tx}, {t}, 15"));
    a.ins(format!("shr.u32 {ty}, {t}, 4"));
    let (m0, n0) = (a.r(), a.r());
    a.ins(format!("mul.lo.u32 {m0}, {bx}, {BM}"));
    a.ins(format!("mul.lo.u32 {n0}, {by}, {BN}"));
    let zero = a.f();
    a.ins(format!("mov.f32 {zero}, {}", f32_hex(0.0)));

    // Staging of A: rows m0 + ty + 16·i, reduction index k0 + tx.
    let mut a_rows = Vec::new();
    for i in 0..RM {
        let (mi, ok, row) = (a.r(), a.p(), a.r());
        a.ins(format!("add.s32 {mi}, {m0}, {ty}"));
        if i > 0 {
            a.ins(format!("add.s32 {mi}, {mi}, {}", 16 * i));
        }
        a.ins(format!("setp.lt.u32 {ok}, {mi}, {m_total}"));
        digits_offset(&mut a, &row, &mi, c.m_dims, c.m_strides);
        a.ins(format!("add.s32 {row}, {row}, {}", c.a.1));
        a_rows.push((ok, row));
    }
    // k3's stride is 1, or a transposed A's row length.
    let ks = c.k_strides;
    let acol = a.r();
    let kd = digits_offset(&mut a, &acol, &tx, c.k_dims, ks);
    let kext = k_extents(c);
    let kstep_digits = digits(&kext, u64::from(BK));
    let kstep: Vec<String> = kstep_digits.iter().map(u64::to_string).collect();
    let kstrides = ks.map(|s| s as i64);
    let kstep_offset: i64 = kstep_digits
        .iter()
        .zip(kstrides)
        .map(|(d, s)| *d as i64 * s)
        .sum();
    // Staging of B: row k0 + ty, columns n0 + 4·tx + j.
    let bcol = a.r();
    a.ins(format!("mad.lo.u32 {bcol}, {tx}, 4, {n0}"));
    let b_ok: Vec<String> = (0..if vec_b { 1 } else { RN })
        .map(|j| {
            let (cj, p) = (a.r(), a.p());
            a.ins(format!("add.s32 {cj}, {bcol}, {j}"));
            a.ins(format!("setp.lt.u32 {p}, {cj}, {n_total}"));
            p
        })
        .collect();
    let bix = a.r();
    // B[k][n] at k·sk + n·sn: `(ldb, 1)`, or `(1, ldb)` transposed.
    let (sk, sn) = c.b_strides();
    if c.b_transposed {
        a.ins(format!("mad.lo.s32 {bix}, {bcol}, {sn}, {ty}"));
    } else {
        a.ins(format!("mad.lo.s32 {bix}, {ty}, {sk}, {bcol}"));
    }
    a.ins(format!("add.s32 {bix}, {bix}, {}", c.b.1));

    // Shared addresses. Staging slots: As[tx][ty + 16·i], Bs[ty][4·tx..];
    // compute reads As[k][4·ty..], Bs[k][4·tx..].
    let (as_base, bs_base) = (a.rd(), a.rd());
    a.ins(format!("mov.u64 {as_base}, {at}"));
    a.ins(format!("mov.u64 {bs_base}, {bt}"));
    let (a_dst, b_dst, a_src, b_src) = (a.rd(), a.rd(), a.rd(), a.rd());
    let tmp = a.r();
    a.ins(format!("mad.lo.u32 {tmp}, {tx}, {A_LD}, {ty}"));
    a.ins(format!("mul.wide.u32 {a_dst}, {tmp}, 4"));
    a.ins(format!("add.s64 {a_dst}, {a_dst}, {as_base}"));
    let tmp = a.r();
    a.ins(format!("mad.lo.u32 {tmp}, {ty}, {BN}, {bcol}"));
    a.ins(format!("sub.u32 {tmp}, {tmp}, {n0}"));
    a.ins(format!("mul.wide.u32 {b_dst}, {tmp}, 4"));
    a.ins(format!("add.s64 {b_dst}, {b_dst}, {bs_base}"));
    // Compute-side bases (bytes into a buffer) and the owned outputs
    // (block-relative rows and columns).
    let owned = match precision {
        Precision::F32 => {
            a.ins(format!("mul.wide.u32 {a_src}, {ty}, {}", RM * 4));
            a.ins(format!("mul.wide.u32 {b_src}, {tx}, {}", RN * 4));
            let (row0, col0) = (a.r(), a.r());
            a.ins(format!("mul.lo.u32 {row0}, {ty}, {RM}"));
            a.ins(format!("mul.lo.u32 {col0}, {tx}, {RN}"));
            Owned {
                row0,
                col0,
                rows: [0, 1, 2, 3],
                cols: [0, 1, 2, 3],
                acc: |i, j| i * RN as usize + j,
            }
        }
        Precision::Tf32 => {
            // Warp w = t / 32 at (32·(w % 2), 16·(w / 2)); lane l with
            // g = l / 4, q = l % 4: its A fragments start at As[q][wm + g],
            // its B fragments at Bs[q][wn + g], its outputs at
            // (wm + g, wn + 2q).
            let (w, lane, g, q, wm, wn) = (a.r(), a.r(), a.r(), a.r(), a.r(), a.r());
            a.ins(format!("shr.u32 {w}, {t}, 5"));
            a.ins(format!("and.b32 {lane}, {t}, 31"));
            a.ins(format!("shr.u32 {g}, {lane}, 2"));
            a.ins(format!("and.b32 {q}, {lane}, 3"));
            a.ins(format!("and.b32 {wm}, {w}, 1"));
            a.ins(format!("mul.lo.u32 {wm}, {wm}, {}", mma::WARP_M));
            a.ins(format!("shr.u32 {wn}, {w}, 1"));
            a.ins(format!("mul.lo.u32 {wn}, {wn}, {}", mma::WARP_N));
            let (ra, rb) = (a.r(), a.r());
            a.ins(format!("add.s32 {ra}, {wm}, {g}"));
            a.ins(format!("mad.lo.u32 {ra}, {q}, {A_LD}, {ra}"));
            a.ins(format!("mul.wide.u32 {a_src}, {ra}, 4"));
            a.ins(format!("add.s32 {rb}, {wn}, {g}"));
            a.ins(format!("mad.lo.u32 {rb}, {q}, {BN}, {rb}"));
            a.ins(format!("mul.wide.u32 {b_src}, {rb}, 4"));
            let (row0, col0) = (a.r(), a.r());
            a.ins(format!("add.s32 {row0}, {wm}, {g}"));
            a.ins(format!("mad.lo.u32 {col0}, {q}, 2, {wn}"));
            Owned {
                row0,
                col0,
                rows: mma::ROW_OFFSETS,
                cols: mma::COL_OFFSETS,
                acc: mma::acc_index,
            }
        }
    };
    a.ins(format!("add.s64 {a_src}, {a_src}, {as_base}"));
    a.ins(format!("add.s64 {b_src}, {b_src}, {bs_base}"));
    // Byte offset of the buffer being staged (0 or one slice); the other
    // buffer is the one multiplied. Toggled by `xor` after each slice.
    let (a_bytes, b_bytes) = (A_SLICE * 4, B_SLICE * 4);
    let (aoff, boff) = (a.rd(), a.rd());
    a.ins(format!("mov.u64 {aoff}, 0"));
    a.ins(format!("mov.u64 {boff}, 0"));
    // The reduction index of the slice being staged.
    let kload = a.r();
    a.ins(format!("mov.u32 {kload}, 0"));

    let stage = |a: &mut Asm| {
        let (ad, bd) = (a.rd(), a.rd());
        a.ins(format!("add.s64 {ad}, {a_dst}, {aoff}"));
        a.ins(format!("add.s64 {bd}, {b_dst}, {boff}"));
        let (ka, pk) = (a.r(), a.p());
        a.ins(format!("add.s32 {ka}, {kload}, {tx}"));
        a.ins(format!("setp.lt.u32 {pk}, {ka}, {k_total}"));
        for (i, (ok, row)) in a_rows.iter().enumerate() {
            let (p, ix) = (a.p(), a.r());
            a.ins(format!("and.pred {p}, {pk}, {ok}"));
            a.ins(format!("add.s32 {ix}, {row}, {acol}"));
            let addr = a.address(c.a.0, &ix);
            let slot = format!("[{ad}+{}]", 16 * 4 * i);
            a.ins(format!(
                "@{p} cp.async.ca.shared.global {slot}, [{addr}], 4"
            ));
            a.ins(format!("@!{p} st.shared.f32 {slot}, {zero}"));
        }
        let (kb, pb) = (a.r(), a.p());
        a.ins(format!("add.s32 {kb}, {kload}, {ty}"));
        a.ins(format!("setp.lt.u32 {pb}, {kb}, {k_total}"));
        let addr = a.address(c.b.0, &bix);
        if vec_b {
            let p = a.p();
            a.ins(format!("and.pred {p}, {pb}, {}", b_ok[0]));
            a.ins(format!(
                "@{p} cp.async.ca.shared.global [{bd}], [{addr}], 16"
            ));
            a.ins(format!(
                "@!{p} st.shared.v4.f32 [{bd}], {{{zero}, {zero}, {zero}, {zero}}}"
            ));
        } else {
            for (j, ok) in b_ok.iter().enumerate() {
                let p = a.p();
                a.ins(format!("and.pred {p}, {pb}, {ok}"));
                let (d, s) = (
                    format!("[{bd}+{}]", 4 * j),
                    format!("[{addr}+{}]", 4 * j * sn),
                );
                a.ins(format!("@{p} cp.async.ca.shared.global {d}, {s}, 4"));
                a.ins(format!("@!{p} st.shared.f32 {d}, {zero}"));
            }
        }
        a.ins("cp.async.commit_group");
        // The next slice's indices, by adding and carrying.
        a.ins(format!("add.s32 {kload}, {kload}, {BK}"));
        if kstep_offset != 0 {
            a.ins(format!("add.s32 {acol}, {acol}, {kstep_offset}"));
        }
        a.advance(&kd, &kext, &kstep, Some((&acol, &kstrides)));
        a.ins(format!(
            "add.s32 {bix}, {bix}, {}",
            u64::from(BK) * sk as u64
        ));
        a.ins(format!("xor.b64 {aoff}, {aoff}, {a_bytes}"));
        a.ins(format!("xor.b64 {boff}, {boff}, {b_bytes}"));
    };

    let acc: Vec<String> = (0..RM * RN).map(|_| a.f()).collect();
    for r in &acc {
        a.ins(format!("mov.f32 {r}, {}", f32_hex(0.0)));
    }
    // Prologue: slice 0 into buffer 0.
    stage(&mut a);
    let k0 = a.r();
    a.counted_loop_no_unroll(&k0, "0", &BK.to_string(), k_total, |a| {
        // After `stage` toggled the offsets, `aoff` is the buffer the next
        // slice goes to and the other one holds this slice.
        let (ac, bc) = (a.rd(), a.rd());
        a.ins(format!("xor.b64 {ac}, {aoff}, {a_bytes}"));
        a.ins(format!("add.s64 {ac}, {ac}, {a_src}"));
        a.ins(format!("xor.b64 {bc}, {boff}, {b_bytes}"));
        a.ins(format!("add.s64 {bc}, {bc}, {b_src}"));
        stage(a);
        a.ins("cp.async.wait_group 1");
        a.ins("bar.sync 0");
        match precision {
            Precision::F32 => multiply_f32(a, &acc, &ac, &bc),
            Precision::Tf32 => multiply_tf32(a, &acc, &ac, &bc),
        }
        a.ins("bar.sync 0");
    });
    // No copy may be in flight when the block exits.
    a.ins("cp.async.wait_group 0");

    // Epilogue: bias, activation, accumulate, store, per owned output.
    let ccol = a.r();
    a.ins(format!("add.s32 {ccol}, {}, {n0}", owned.col0));
    let mut cols = Vec::new();
    for j in owned.cols {
        let (cj, ok) = (a.r(), a.p());
        a.ins(format!("add.s32 {cj}, {ccol}, {j}"));
        a.ins(format!("setp.lt.u32 {ok}, {cj}, {n_total}"));
        let bias = c.bias.map(|(buf, off)| {
            let (b, ix, skip) = (a.f(), a.r(), a.label("bias"));
            a.ins(format!("mov.f32 {b}, {}", f32_hex(0.0)));
            a.ins(format!("@!{ok} bra {skip}"));
            a.ins(format!("add.s32 {ix}, {cj}, {off}"));
            let addr = a.address(buf, &ix);
            a.ins(format!("ld.global.f32 {b}, [{addr}]"));
            a.ins(format!("{skip}:"));
            b
        });
        cols.push((j, ok, bias));
    }
    let row0 = a.r();
    a.ins(format!("add.s32 {row0}, {}, {m0}", owned.row0));
    for (i, di) in owned.rows.iter().enumerate() {
        let (row, rok, cix) = (a.r(), a.p(), a.r());
        a.ins(format!("add.s32 {row}, {row0}, {di}"));
        a.ins(format!("setp.lt.u32 {rok}, {row}, {m_total}"));
        a.ins(format!("mad.lo.s32 {cix}, {row}, {}, {ccol}", c.ldc));
        a.ins(format!("add.s32 {cix}, {cix}, {}", c.c.1));
        let base = a.address(c.c.0, &cix);
        for (j, (dj, cok, bias)) in cols.iter().enumerate() {
            let (ok, skip) = (a.p(), a.label("store"));
            a.ins(format!("and.pred {ok}, {rok}, {cok}"));
            a.ins(format!("@!{ok} bra {skip}"));
            let mut v = acc[(owned.acc)(i, j)].clone();
            if let Some(b) = bias {
                let s = a.f();
                a.ins(format!("add.rn.f32 {s}, {v}, {b}"));
                v = s;
            }
            v = epilogue(&mut a, c.epilogue, &v);
            let at = format!("[{base}+{}]", 4 * dj);
            if c.accumulate {
                let (old, s) = (a.f(), a.f());
                a.ins(format!("ld.global.f32 {old}, {at}"));
                a.ins(format!("add.rn.f32 {s}, {old}, {v}"));
                v = s;
            }
            a.ins(format!("st.global.f32 {at}, {v}"));
            a.ins(format!("{skip}:"));
        }
    }
    a.ins("ret");
    out.push_str(&a.finish());
    out.push_str("}\n\n");
}

/// One slice's multiply-adds with FMAs: per reduction index, a thread's
/// 4 A values and 4 B values (two `v4` loads at `ac`, `bc`) into its 4×4
/// accumulators.
fn multiply_f32(a: &mut Asm, acc: &[String], ac: &str, bc: &str) {
    for k in 0..BK {
        let x: Vec<String> = (0..RM).map(|_| a.f()).collect();
        let y: Vec<String> = (0..RN).map(|_| a.f()).collect();
        a.ins(format!(
            "ld.shared.v4.f32 {{{}}}, [{ac}+{}]",
            x.join(", "),
            k * A_LD * 4
        ));
        a.ins(format!(
            "ld.shared.v4.f32 {{{}}}, [{bc}+{}]",
            y.join(", "),
            k * BN * 4
        ));
        for i in 0..RM as usize {
            for j in 0..RN as usize {
                let r = &acc[i * RN as usize + j];
                a.ins(format!("fma.rn.f32 {r}, {}, {}, {r}", x[i], y[j]));
            }
        }
    }
}

/// One slice's products with TF32 `mma.sync`: per 8 reduction indices, a
/// lane's A fragments of its warp's two `m16` tiles and B fragments of
/// its two `n8` tiles, loaded from `ac`, `bc` (the lane's base, see the
/// `mma` module) and rounded to TF32, then 4 warp-collective products
/// into its 16 accumulators (tile `(mi, nj)` at `4·(2·mi + nj)`).
fn multiply_tf32(a: &mut Asm, acc: &[String], ac: &str, bc: &str) {
    let tf32 = |a: &mut Asm, at: String| {
        let (x, r) = (a.f(), a.r());
        a.ins(format!("ld.shared.f32 {x}, {at}"));
        a.ins(format!("cvt.rna.tf32.f32 {r}, {x}"));
        r
    };
    for kk in 0..BK / mma::MMA_K {
        let frag_a: Vec<Vec<String>> = (0..mma::TILES_M)
            .map(|mi| {
                (0..4)
                    .map(|r| {
                        let (row, k) = mma::a_elem(0, r);
                        let off = (kk * mma::MMA_K + k) * A_LD + 16 * mi + row;
                        tf32(a, format!("[{ac}+{}]", 4 * off))
                    })
                    .collect()
            })
            .collect();
        let frag_b: Vec<Vec<String>> = (0..mma::TILES_N)
            .map(|nj| {
                (0..2)
                    .map(|r| {
                        let (k, col) = mma::b_elem(0, r);
                        let off = (kk * mma::MMA_K + k) * BN + 8 * nj + col;
                        tf32(a, format!("[{bc}+{}]", 4 * off))
                    })
                    .collect()
            })
            .collect();
        for (mi, fa) in frag_a.iter().enumerate() {
            for (nj, fb) in frag_b.iter().enumerate() {
                let d = &acc[4 * (mi * mma::TILES_N as usize + nj)..][..4].join(", ");
                a.ins(format!(
                    "{} {{{d}}}, {{{}}}, {{{}}}, {{{d}}}",
                    mma::MMA,
                    fa.join(", "),
                    fb.join(", ")
                ));
            }
        }
    }
}
