//! The TF32 tensor-core instruction the register-tiled kernel uses under
//! [`Precision::Tf32`](super::precision::Precision::Tf32):
//! `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32`, a warp-collective
//! `D[16×8] = A[16×8]·B[8×8] + C[16×8]`, and where each lane's fragment
//! registers sit in those matrices (PTX ISA, "Matrix Fragments for
//! mma.m16n8k8", `.tf32` A and B, `.f32` C/D). With `g = lane / 4` and
//! `q = lane % 4`:
//! - A (row-major 16×8), registers a0..a3: row `g` for a0, a2 and `g + 8`
//!   for a1, a3; column `q` for a0, a1 and `q + 4` for a2, a3.
//! - B (column-major 8×8), registers b0, b1: row `q` for b0, `q + 4` for
//!   b1; column `g`.
//! - C and D (16×8), registers c0..c3: row `g` for c0, c1 and `g + 8` for
//!   c2, c3; column `2q + (i & 1)` for ci.
//!
//! Each position is the lane's part plus the register's part, so the PTX
//! computes a lane's base address once and reaches every register's
//! element by an immediate offset.
//!
//! The register-tiled block's eight warps split its 64×64 tile as 2 along
//! M by 4 along N, [`WARP_M`]×[`WARP_N`] each: 2×2 `m16n8` tiles, so a
//! lane holds 16 accumulators, as a thread of the f32 kernel does.

/// Output rows per warp.
pub const WARP_M: u32 = 32;
/// Output columns per warp.
pub const WARP_N: u32 = 16;
/// `m16n8` tiles per warp along M.
pub const TILES_M: u32 = WARP_M / 16;
/// `m16n8` tiles per warp along N.
pub const TILES_N: u32 = WARP_N / 8;
/// Reduction depth of one instruction.
pub const MMA_K: u32 = 8;
/// The instruction.
pub const MMA: &str = "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32";

/// (row, k) in A of lane `lane`'s register `a_r`.
pub fn a_elem(lane: u32, r: u32) -> (u32, u32) {
    (lane / 4 + 8 * (r & 1), lane % 4 + 4 * (r >> 1))
}

/// (k, column) in B of lane `lane`'s register `b_r`.
pub fn b_elem(lane: u32, r: u32) -> (u32, u32) {
    (lane % 4 + 4 * r, lane / 4)
}

/// (row, column) in C and D of lane `lane`'s register `c_r`.
pub fn c_elem(lane: u32, r: u32) -> (u32, u32) {
    (lane / 4 + 8 * (r >> 1), 2 * (lane % 4) + (r & 1))
}

/// Warp `w`'s first row and column in its block's 64×64 tile.
pub fn warp_origin(w: u32) -> (u32, u32) {
    ((w % 2) * WARP_M, (w / 2) * WARP_N)
}

/// A lane's 16 outputs as a 4×4 product of row and column offsets from
/// `c_elem(lane, 0)` within its warp's tile: rows `+0, +8` of the first
/// `m16` tile and of the second, columns `+0, +1` of the first `n8` tile
/// and of the second.
pub const ROW_OFFSETS: [u32; 4] = [0, 8, 16, 24];
/// See [`ROW_OFFSETS`].
pub const COL_OFFSETS: [u32; 4] = [0, 1, 8, 9];

/// Which accumulator (tile `(mi, nj)` at `4·(mi·TILES_N + nj)`, then its
/// `c` register) holds output (`ROW_OFFSETS[i]`, `COL_OFFSETS[j]`).
pub fn acc_index(i: usize, j: usize) -> usize {
    let (mi, nj) = (i / 2, j / 2);
    let r = 2 * (i % 2) + j % 2;
    4 * (mi * TILES_N as usize + nj) + r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_are_a_lane_part_plus_a_register_part_and_cover_each_matrix() {
        let mut seen_a = [[0; 8]; 16];
        let mut seen_b = [[0; 8]; 8];
        let mut seen_c = [[0; 8]; 16];
        for lane in 0..32 {
            for r in 0..4 {
                let (row, k) = a_elem(lane, r);
                let ((r0, k0), (dr, dk)) = (a_elem(lane, 0), a_elem(0, r));
                assert_eq!((row, k), (r0 + dr, k0 + dk));
                seen_a[row as usize][k as usize] += 1;
                let (row, col) = c_elem(lane, r);
                let ((r0, c0), (dr, dc)) = (c_elem(lane, 0), c_elem(0, r));
                assert_eq!((row, col), (r0 + dr, c0 + dc));
                seen_c[row as usize][col as usize] += 1;
            }
            for r in 0..2 {
                let (k, col) = b_elem(lane, r);
                let ((k0, c0), (dk, dc)) = (b_elem(lane, 0), b_elem(0, r));
                assert_eq!((k, col), (k0 + dk, c0 + dc));
                seen_b[k as usize][col as usize] += 1;
            }
        }
        // Every element of A, B and C is held by exactly one lane.
        assert!(seen_a.iter().flatten().all(|n| *n == 1));
        assert!(seen_b.iter().flatten().all(|n| *n == 1));
        assert!(seen_c.iter().flatten().all(|n| *n == 1));
        // The accumulator map is a bijection onto the 16 registers, and
        // each output is where `c_elem` says it is.
        let mut used = [false; 16];
        for (i, ro) in ROW_OFFSETS.iter().enumerate() {
            for (j, co) in COL_OFFSETS.iter().enumerate() {
                let a = acc_index(i, j);
                assert!(!used[a]);
                used[a] = true;
                let (mi, nj, r) = (a / 4 / 2, a / 4 % 2, a % 4);
                let (row, col) = c_elem(0, r as u32);
                assert_eq!((16 * mi as u32 + row, 8 * nj as u32 + col), (*ro, *co));
            }
        }
    }
}
