//! B packing: the zero-padded `NR`-column panels both kernel generators
//! stream (16 columns for the native kernels, `4 * nr_vecs` for Cranelift's),
//! from a row-major B or from a transposed one (`Wᵀ` of an input gradient:
//! the packing is the transpose, so no transpose kernel runs before it),
//! and the A packing of a small transposed A ([`TransposedA`]).

use super::plan::Plan;
use super::ContractionSpec;

/// B repacked into the zero-padded column panels a kernel streams; pack once
/// and reuse it when B is a weight that does not change between calls.
///
/// The panels start on a 64-byte line (`skew` floats into `data`, which
/// holds `ALIGN_SLACK` (16) floats more than the panels): a `zmm` row of a
/// panel is then one line, where from a 16-byte aligned allocation every
/// one straddled two (measured with the AVX-512 kernels, one thread: the
/// conv 3 x 3 64 -> 64 of `examples/gemm_speed.rs` 162 to 180 GFLOP/s).
#[derive(Clone, Debug)]
pub struct PackedB {
    pub(super) data: Vec<f32>,
    pub(super) skew: usize,
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) nr: usize,
}

/// Floats of slack that let the panels start on a 64-byte line.
pub(super) const ALIGN_SLACK: usize = 16;

impl PackedB {
    /// The packed elements, panel by panel.
    pub fn as_slice(&self) -> &[f32] {
        let len = self.data.len().saturating_sub(ALIGN_SLACK);
        &self.data[self.skew..self.skew + len]
    }

    /// Sizes the buffer for `len` packed floats (keeping the allocation
    /// where it is large enough) and returns them, starting on a line.
    pub(super) fn resize_aligned(&mut self, len: usize) -> &mut [f32] {
        self.data.resize(len + ALIGN_SLACK, 0.0);
        // A `Vec<f32>` that moves on a clone is still correct, only
        // perhaps no longer aligned.
        self.skew = self.data.as_ptr().align_offset(64).min(ALIGN_SLACK);
        &mut self.data[self.skew..self.skew + len]
    }
}

/// Packs the panels `first..` that `dst` holds: for every panel, `NR`
/// floats per reduction step, zero-filling columns past `N`.
///
/// Works in blocks of `PACK_ROWS` rows of B: within a block every panel
/// receives whole cache lines (`PACK_ROWS * NR` floats), and the block's rows
/// are read left to right as a few sequential streams.  Walking a whole panel
/// at a time reads B with a stride of `ldb`, and scattering one row over all
/// panels writes with a stride of `K * NR`; for power-of-two layer widths
/// both map every access to the same L1 set.
pub(super) fn pack_panels(p: &Plan, b: &[f32], ldb: usize, first: usize, dst: &mut [f32]) {
    let pack = match (p.nr, p.b_transposed) {
        (4, false) => pack_panels_nr::<4>,
        (8, false) => pack_panels_nr::<8>,
        (12, false) => pack_panels_nr::<12>,
        (_, false) => pack_panels_nr::<16>,
        (4, true) => pack_transposed_nr::<4>,
        (8, true) => pack_transposed_nr::<8>,
        (12, true) => pack_transposed_nr::<12>,
        (_, true) => pack_transposed_16,
    };
    pack(p, b, ldb, first, dst);
}

const PACK_ROWS: usize = 8;

/// `pack_panels` with `NR` known, so each copy is a fixed-size move rather
/// than a `memcpy` call.
fn pack_panels_nr<const NR: usize>(p: &Plan, b: &[f32], ldb: usize, first: usize, dst: &mut [f32]) {
    let panel_len = p.k * NR;
    for k0 in (0..p.k).step_by(PACK_ROWS) {
        let k1 = (k0 + PACK_ROWS).min(p.k);
        for (i, panel) in dst.chunks_exact_mut(panel_len).enumerate() {
            let n0 = (first + i) * NR;
            let cols = NR.min(p.n - n0);
            for k in k0..k1 {
                let d = &mut panel[k * NR..(k + 1) * NR];
                let src = &b[k * ldb + n0..];
                if cols == NR {
                    d.copy_from_slice(&src[..NR]);
                } else {
                    d[..cols].copy_from_slice(&src[..cols]);
                    d[cols..].fill(0.0);
                }
            }
        }
    }
}

/// Reduction steps per block of a transposed packing.
const PACK_STEPS: usize = 16;

/// `pack_panels` from a transposed B (`B[k, n] = b[n * ldb + k]`): panel
/// column `j` is stored row `n0 + j`, contiguous in `k`. Works in blocks of
/// `PACK_STEPS` steps: a block reads `NR` stored rows a cache line each and
/// writes `PACK_STEPS` whole panel rows, all in L1, and the next block
/// continues the same `NR` sequential streams.
fn pack_transposed_nr<const NR: usize>(
    p: &Plan,
    b: &[f32],
    ldb: usize,
    first: usize,
    dst: &mut [f32],
) {
    let panel_len = p.k * NR;
    for (i, panel) in dst.chunks_exact_mut(panel_len).enumerate() {
        let n0 = (first + i) * NR;
        let cols = NR.min(p.n - n0);
        for k0 in (0..p.k).step_by(PACK_STEPS) {
            let steps = PACK_STEPS.min(p.k - k0);
            let block = &mut panel[k0 * NR..(k0 + steps) * NR];
            for j in 0..cols {
                let src = &b[(n0 + j) * ldb + k0..][..steps];
                for (d, &x) in block.chunks_exact_mut(NR).zip(src) {
                    d[j] = x;
                }
            }
            if cols < NR {
                for d in block.chunks_exact_mut(NR) {
                    d[cols..].fill(0.0);
                }
            }
        }
    }
}

/// [`pack_transposed_nr`] for the native kernels' 16-column panels: full
/// panels are transposed 8 x 8 floats at a time in AVX registers (eight
/// loads, 24 shuffles, eight stores) instead of one scalar move per float
/// (the course CNN's `dy · Wᵀ` packs 692,224 floats per call); the last,
/// partial panel and a reduction tail shorter than 8 take the scalar path.
fn pack_transposed_16(p: &Plan, b: &[f32], ldb: usize, first: usize, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        const NR: usize = 16;
        let panel_len = p.k * NR;
        let k8 = p.k - p.k % 8;
        for (i, panel) in dst.chunks_exact_mut(panel_len).enumerate() {
            let n0 = (first + i) * NR;
            if p.n - n0 < NR {
                pack_transposed_nr::<16>(p, b, ldb, first + i, panel);
                continue;
            }
            // Every row read below, `n0 + j` for j < 16, holds K floats
            // from `(n0 + j) * ldb` (`lens.b` was checked by the caller).
            assert!((n0 + NR - 1) * ldb + p.k <= b.len());
            for half in 0..2 {
                let rows = &b[(n0 + 8 * half) * ldb..];
                for k0 in (0..k8).step_by(8) {
                    // SAFETY: AVX was detected; rows `0..8` of `rows` hold
                    // `k0 + 8 <= K` floats each at stride `ldb` (asserted
                    // above), and the panel holds steps `k0..k0 + 8`.
                    unsafe {
                        transpose8x8(
                            rows.as_ptr().add(k0),
                            ldb,
                            panel.as_mut_ptr().add(k0 * NR + 8 * half),
                            NR,
                        )
                    };
                }
            }
            for k in k8..p.k {
                for j in 0..NR {
                    panel[k * NR + j] = b[(n0 + j) * ldb + k];
                }
            }
        }
        return;
    }
    pack_transposed_nr::<16>(p, b, ldb, first, dst)
}

/// A read transposed (`A[i, r] = a[r * lda + i]`, as in `Hᵀ · dZ`), which
/// the native kernels read from a row-major copy instead: walking the
/// stored rows one reduction step at a time touches a new cache line per
/// step, `lda * 4` bytes apart, and at power-of-two strides those lines
/// share a few L1 sets, so every row tile streams A from L2 again. The
/// copy is one pass, and every panel's sweep then reads A sequentially.
///
/// Measured on one thread (Xeon, AVX2 kernels), the course LSTM's merged
/// recurrent-weight gradient (M = 128, K = 288, N = 512, lda = 256):
/// 368 → 336 µs before the copy's cost, which the 8 × 8 transposes keep
/// to a few µs. A large A (the CNN's `xᵀ · dy`, M = 5408, K = 64, 1.4 MB)
/// would pay a pass over memory for a few percent, so it is read in place
/// ([`TransposedA::worth_packing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TransposedA {
    pub m: usize,
    pub k: usize,
    pub lda: usize,
}

/// Largest A (bytes) worth copying: it and its copy stay in L2.
const PACK_A_MAX_BYTES: usize = 256 * 1024;
/// Fewest panels for which a copy pays: each panel walks all of A again.
const PACK_A_MIN_PANELS: usize = 4;

impl TransposedA {
    /// The transposed A of `spec`, if it has exactly one row level of
    /// stride 1 and one reduction level of a longer stride, and is small
    /// enough and read often enough for a copy to pay.
    pub fn worth_packing(spec: &ContractionSpec) -> Option<TransposedA> {
        let ([1, 1, m], [_, _, 1], [1, 1, k], [_, _, lda]) =
            (spec.m_dims, spec.m_strides, spec.k_dims, spec.k_strides)
        else {
            return None;
        };
        let small = m.checked_mul(k)?.checked_mul(4)? <= PACK_A_MAX_BYTES;
        let reused = spec.n >= PACK_A_MIN_PANELS * 16;
        (lda >= m && m > 1 && k > 1 && small && reused).then_some(TransposedA { m, k, lda })
    }

    /// The same contraction reading the row-major copy: `[M, K]`, dense.
    pub fn packed_spec(&self, spec: &ContractionSpec) -> ContractionSpec {
        ContractionSpec {
            m_strides: [0, 0, self.k],
            k_strides: [0, 0, 1],
            ..spec.clone()
        }
    }

    /// Writes the row-major copy of `a` into `dst` (`M * K` floats).
    // Only the native (x86-64) kernels call it.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn pack(&self, a: &[f32], dst: &mut [f32]) {
        let TransposedA { m, k, lda } = *self;
        assert!(dst.len() >= m * k && (k - 1) * lda + m <= a.len());
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx") {
            let (m8, k8) = (m - m % 8, k - k % 8);
            for i0 in (0..m8).step_by(8) {
                for r0 in (0..k8).step_by(8) {
                    // SAFETY: AVX was detected; the 8 stored rows r0..r0+8
                    // hold columns i0..i0+8 (asserted above), and dst rows
                    // i0..i0+8 hold steps r0..r0+8.
                    unsafe {
                        transpose8x8(
                            a.as_ptr().add(r0 * lda + i0),
                            lda,
                            dst.as_mut_ptr().add(i0 * k + r0),
                            k,
                        )
                    };
                }
            }
            for r in 0..k {
                let cols = if r < k8 { m8..m } else { 0..m };
                for i in cols {
                    dst[i * k + r] = a[r * lda + i];
                }
            }
            return;
        }
        for r in 0..k {
            for i in 0..m {
                dst[i * k + r] = a[r * lda + i];
            }
        }
    }
}

/// `dst[c * dld + r] = src[r * sld + c]` for `r, c < 8`.
///
/// # Safety
/// AVX must be available; `src` must be readable for 8 floats at each of
/// its 8 rows and `dst` writable for 8 floats at each of its 8 rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose8x8(src: *const f32, sld: usize, dst: *mut f32, dld: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees the 8 x 8 reads and writes.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * sld)));
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let c = [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ];
        for (i, v) in c.into_iter().enumerate() {
            _mm256_storeu_ps(dst.add(i * dld), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::cpu::contraction::{ContractionSpec, KernelPath};

    /// The vector transposes give exactly the scalar packing, for full and
    /// partial panels and reduction lengths that are not a multiple of 8.
    #[test]
    fn transposed_packing_matches_the_scalar_one() {
        for (k, n, ldb) in [
            (128, 48, 128),
            (13, 37, 20),
            (8, 16, 9),
            (5, 17, 5),
            (64, 33, 70),
        ] {
            let mut spec = ContractionSpec::dense(3, k, n);
            (spec.ldb, spec.b_transposed) = (ldb, true);
            spec.tuning.kernels = KernelPath::Cranelift;
            spec.tuning.nr_vecs = 4;
            let plan = spec.plan().expect("plan");
            assert_eq!(plan.nr, 16);
            let b: Vec<f32> = (0..spec.operand_lens().expect("lens").b)
                .map(|i| i as f32)
                .collect();
            let len = plan.panels * plan.panel_len();
            let (mut fast, mut slow) = (vec![-1.0; len], vec![-2.0; len]);
            pack_transposed_16(&plan, &b, ldb, 0, &mut fast);
            pack_transposed_nr::<16>(&plan, &b, ldb, 0, &mut slow);
            assert_eq!(fast, slow, "k={k} n={n} ldb={ldb}");
            // From a later first panel, as the per-panel packing calls it.
            let len = plan.panel_len();
            for panel in 1..plan.panels {
                let mut one = vec![0.0; len];
                pack_transposed_16(&plan, &b, ldb, panel, &mut one);
                assert_eq!(one, slow[panel * len..(panel + 1) * len]);
            }
        }
    }

    /// The copy of a transposed A is its row-major form, with and without
    /// whole 8 x 8 blocks.
    #[test]
    fn a_transposed_copy_is_row_major() {
        for (m, k, lda) in [(128, 288, 256), (13, 9, 20), (8, 8, 8), (17, 3, 17)] {
            let t = TransposedA { m, k, lda };
            let a: Vec<f32> = (0..(k - 1) * lda + m).map(|i| i as f32).collect();
            let mut dst = vec![-1.0; m * k];
            t.pack(&a, &mut dst);
            for i in 0..m {
                for r in 0..k {
                    assert_eq!(dst[i * k + r], a[r * lda + i], "m={m} k={k} ({i}, {r})");
                }
            }
        }
    }
}
