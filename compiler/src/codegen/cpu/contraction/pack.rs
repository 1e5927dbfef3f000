//! B packing: the zero-padded `NR`-column panels both kernel generators
//! stream (16 columns for the native kernels, `4 * nr_vecs` for Cranelift's),
//! from a row-major B or from a transposed one (`Wᵀ` of an input gradient:
//! the packing is the transpose, so no transpose kernel runs before it).

use super::plan::Plan;

/// B repacked into the zero-padded column panels a kernel streams; pack once
/// and reuse it when B is a weight that does not change between calls.
#[derive(Clone, Debug)]
pub struct PackedB {
    pub(super) data: Vec<f32>,
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) nr: usize,
}

impl PackedB {
    /// The packed elements, panel by panel.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
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
        (_, true) => pack_transposed_nr::<16>,
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
