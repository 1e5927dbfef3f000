//! The launch-geometry model of a register-tiled product
//! ([`Shape::RegisterTiled`](crate::codegen::ptx::launch::Shape::RegisterTiled)):
//! every thread's staging of the double-buffered shared slices, its
//! `cp.async` copies, commits and waits, the barriers, and its 4×4
//! multiply-adds, in the order the PTX runs them.
//!
//! Under [`Precision::Tf32`] each warp's lanes load their `mma.sync`
//! fragments from the shared slices (each load checked by the race
//! detector as that lane's), rounded to TF32 ([`tf32`]); the
//! warp-collective product then assembles the 16×8 A, 8×8 B and 16×8 C
//! tiles from the lanes' fragments by the ISA's layout (see the `mma`
//! module) and computes, per output, `c + Σ_k a_k·b_k` in f32 with k
//! ascending, one rounding per addition. Each product of two TF32 values
//! is exact in f32 (11 × 11 significand bits), so only the order and
//! rounding of the additions differ from the hardware, whose internal
//! accumulation is not specified: results agree with it to within a few
//! f32 roundings of the partial sums, far inside the TF32 tolerance.
//!
//! Shared memory gets its own race detector, which knows that a copy is
//! in flight from its issue until the issuing thread's
//! `cp.async.wait_group` retires its group: reading an element with a
//! copy in flight (even one's own), or writing one another thread read or
//! wrote since the last barrier, is a [`GeometryError::Race`]. Global
//! reads and the epilogue's stores go through the kernel-wide detector of
//! the parent module.

use super::{store_output, GeometryError, Mem, Who};
use crate::codegen::ptx::launch::{a_col_of, a_row, advance, digits, k_extents, KernelPlan};
use crate::codegen::ptx::mma;
use crate::codegen::ptx::precision::{tf32, Precision};
use crate::codegen::ptx::register_tiled::{
    shared_names, A_LD, A_SLICE, BK, BM, BN, B_SLICE, RM, RN, THREADS,
};
use crate::kernel::ir::*;
use std::collections::VecDeque;

/// The wait and barrier discipline of the pipeline. The kernel's is
/// [`KERNEL`]; tests weaken it to see the race detector object.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Discipline {
    /// `cp.async.wait_group N` before multiplying a slice: the copies of
    /// all but the newest `N` committed groups have landed.
    pub(crate) wait_group: usize,
    /// Whether a barrier follows the wait (before any thread reads the
    /// slice the others copied).
    pub(crate) barrier_before_multiply: bool,
    /// Whether a barrier follows the multiply (before the next slice is
    /// staged into the buffer just read).
    pub(crate) barrier_after_multiply: bool,
}

/// The discipline the PTX follows.
pub(crate) const KERNEL: Discipline = Discipline {
    wait_group: 1,
    barrier_before_multiply: true,
    barrier_after_multiply: true,
};

/// One shared element: its value, the last thread to write it (and the
/// barrier epoch it did so in), the last to read it, and the thread whose
/// copy to it is in flight.
#[derive(Clone, Copy, Default)]
struct Slot {
    value: f32,
    writer: Option<(u64, u64)>,
    reader: Option<(u64, u64)>,
    pending: Option<u64>,
}

/// A block's shared array.
struct Shared {
    name: String,
    slots: Vec<Slot>,
}

/// Which shared array an element is in.
#[derive(Clone, Copy)]
enum Array {
    A,
    B,
}

/// A copy in flight: destination element and the value read at issue.
type Copy = (Array, usize, f32);

struct Block<'k> {
    kernel: &'k str,
    /// Global number of the block's thread 0.
    first: u64,
    arrays: [Shared; 2],
    epoch: u64,
}

impl Block<'_> {
    fn race(&self, arr: Array, index: usize, a: u64, b: u64) -> GeometryError {
        GeometryError::Race {
            kernel: self.kernel.to_string(),
            buf: self.arrays[arr as usize].name.clone(),
            index,
            first: self.first + a,
            second: self.first + b,
        }
    }

    /// Checks a write (a store or the issue of a copy) by thread `t`.
    fn check_write(&self, arr: Array, i: usize, t: u64) -> Result<(), GeometryError> {
        let s = &self.arrays[arr as usize].slots[i];
        if let Some(p) = s.pending {
            return Err(self.race(arr, i, p, t));
        }
        let now = self.epoch;
        if let Some((o, _)) = [s.writer, s.reader]
            .into_iter()
            .flatten()
            .find(|(o, e)| *o != t && *e == now)
        {
            return Err(self.race(arr, i, o, t));
        }
        Ok(())
    }

    fn store(&mut self, arr: Array, i: usize, v: f32, t: u64) -> Result<(), GeometryError> {
        self.check_write(arr, i, t)?;
        let now = self.epoch;
        let s = &mut self.arrays[arr as usize].slots[i];
        s.value = v;
        s.writer = Some((t, now));
        Ok(())
    }

    fn issue(&mut self, arr: Array, i: usize, t: u64) -> Result<(), GeometryError> {
        self.check_write(arr, i, t)?;
        self.arrays[arr as usize].slots[i].pending = Some(t);
        Ok(())
    }

    /// A copy lands: visible to its thread now, to others after a barrier.
    fn land(&mut self, (arr, i, v): Copy, t: u64) {
        let now = self.epoch;
        let s = &mut self.arrays[arr as usize].slots[i];
        s.value = v;
        s.pending = None;
        s.writer = Some((t, now));
    }

    fn load(&mut self, arr: Array, i: usize, t: u64) -> Result<f32, GeometryError> {
        let now = self.epoch;
        let s = self.arrays[arr as usize].slots[i];
        if let Some(p) = s.pending {
            return Err(self.race(arr, i, p, t));
        }
        if let Some((w, _)) = s.writer.filter(|(w, e)| *w != t && *e == now) {
            return Err(self.race(arr, i, w, t));
        }
        self.arrays[arr as usize].slots[i].reader = Some((t, now));
        Ok(s.value)
    }
}

/// One thread's pipeline state.
#[derive(Clone)]
struct Thread {
    /// Reduction digits of its A staging index `k0 + tx`.
    kd: Vec<u64>,
    /// Committed groups not yet retired, oldest first, and the group
    /// being filled.
    groups: VecDeque<Vec<Copy>>,
    open: Vec<Copy>,
    acc: [f32; (RM * RN) as usize],
}

/// Runs a register-tiled product in `precision` under `d`; returns the
/// K-loop trips of one thread.
pub(crate) fn run(
    m: &mut Mem,
    plan: &KernelPlan,
    c: &Contraction,
    precision: Precision,
    d: Discipline,
) -> Result<u64, GeometryError> {
    let (mt, nt, kt) = (c.m() as u64, c.n as u64, c.k() as u64);
    let per_block = u64::from(THREADS);
    let kext = k_extents(c);
    let kstep = digits(&kext, u64::from(BK));
    let (an, bn) = shared_names(&plan.entry);
    let mut trips = 0;
    let (gx, gy) = (u64::from(plan.grid[0]), u64::from(plan.grid[1]));
    for by in 0..gy {
        for bx in 0..gx {
            let first = (by * gx + bx) * per_block;
            let mut b = Block {
                kernel: m.kernel,
                first,
                arrays: [
                    Shared {
                        name: an.clone(),
                        slots: vec![Slot::default(); 2 * A_SLICE as usize],
                    },
                    Shared {
                        name: bn.clone(),
                        slots: vec![Slot::default(); 2 * B_SLICE as usize],
                    },
                ],
                epoch: 0,
            };
            let (m0, n0) = (bx * u64::from(BM), by * u64::from(BN));
            let mut th: Vec<Thread> = (0..per_block)
                .map(|t| Thread {
                    kd: digits(&kext, t % 16),
                    groups: VecDeque::new(),
                    open: Vec::new(),
                    acc: [0.0; (RM * RN) as usize],
                })
                .collect();
            let who = |t: u64, epoch: u64| Who {
                thread: first + t,
                per_block,
                epoch,
            };
            // Stages the slice at `k0` into buffer `buf` and commits.
            let stage = |m: &mut Mem,
                         b: &mut Block,
                         th: &mut [Thread],
                         k0: u64,
                         buf: usize|
             -> Result<(), GeometryError> {
                for (t, s) in th.iter_mut().enumerate() {
                    let t = t as u64;
                    let (tx, ty) = (t % 16, t / 16);
                    let w = who(t, b.epoch);
                    for i in 0..u64::from(RM) {
                        let ml = ty + 16 * i;
                        let slot = buf * A_SLICE as usize + (tx * u64::from(A_LD) + ml) as usize;
                        let (row, k) = (m0 + ml, k0 + tx);
                        if row < mt && k < kt {
                            let ix = c.a.1 as u64 + a_row(c, row) + a_col_of(c, &s.kd);
                            let v = m.read(c.a.0, ix as i64, &w)?;
                            b.issue(Array::A, slot, t)?;
                            s.open.push((Array::A, slot, v));
                        } else {
                            b.store(Array::A, slot, 0.0, t)?;
                        }
                    }
                    for j in 0..4 {
                        let nl = 4 * tx + j;
                        let slot = buf * B_SLICE as usize + (ty * u64::from(BN) + nl) as usize;
                        let (k, col) = (k0 + ty, n0 + nl);
                        if k < kt && col < nt {
                            let (sk, sn) = c.b_strides();
                            let ix = c.b.1 as u64 + k * sk as u64 + col * sn as u64;
                            let v = m.read(c.b.0, ix as i64, &w)?;
                            b.issue(Array::B, slot, t)?;
                            s.open.push((Array::B, slot, v));
                        } else {
                            b.store(Array::B, slot, 0.0, t)?;
                        }
                    }
                    let group = std::mem::take(&mut s.open);
                    s.groups.push_back(group);
                    advance(&kext, &mut s.kd, &kstep);
                }
                Ok(())
            };
            let wait = |b: &mut Block, th: &mut [Thread], n: usize| {
                for (t, s) in th.iter_mut().enumerate() {
                    while s.groups.len() > n {
                        for cp in s.groups.pop_front().unwrap_or_default() {
                            b.land(cp, t as u64);
                        }
                    }
                }
            };
            stage(m, &mut b, &mut th, 0, 0)?;
            let (mut k0, mut slice) = (0u64, 0usize);
            trips = 0;
            while k0 < kt {
                trips += 1;
                stage(m, &mut b, &mut th, k0 + u64::from(BK), (slice + 1) % 2)?;
                wait(&mut b, &mut th, d.wait_group);
                if d.barrier_before_multiply {
                    b.epoch += 1;
                }
                let cur = slice % 2;
                match precision {
                    Precision::F32 => multiply_f32(&mut b, &mut th, cur)?,
                    Precision::Tf32 => multiply_tf32(&mut b, &mut th, cur)?,
                }
                if d.barrier_after_multiply {
                    b.epoch += 1;
                }
                k0 += u64::from(BK);
                slice += 1;
            }
            wait(&mut b, &mut th, 0);
            for (t, s) in th.iter().enumerate() {
                let t = t as u64;
                let w = who(t, b.epoch);
                let (row0, col0, rows, cols, acc) = owned(t as u32, precision);
                for (i, di) in rows.iter().enumerate() {
                    for (j, dj) in cols.iter().enumerate() {
                        let row = m0 + u64::from(row0 + di);
                        let col = n0 + u64::from(col0 + dj);
                        if row >= mt || col >= nt {
                            continue;
                        }
                        store_output(m, c, (row, col), s.acc[acc(i, j)], &w)?;
                    }
                }
            }
        }
    }
    Ok(trips)
}

/// Where thread `t`'s outputs are in its block's tile: rows `row0 +
/// rows[i]`, columns `col0 + cols[j]`, in accumulator `acc(i, j)` (as the
/// PTX's epilogue has them).
type Owned = (u32, u32, [u32; 4], [u32; 4], fn(usize, usize) -> usize);

fn owned(t: u32, precision: Precision) -> Owned {
    match precision {
        Precision::F32 => (
            RM * (t / 16),
            RN * (t % 16),
            [0, 1, 2, 3],
            [0, 1, 2, 3],
            |i, j| i * RN as usize + j,
        ),
        Precision::Tf32 => {
            let (wm, wn) = mma::warp_origin(t / 32);
            let (r, c) = mma::c_elem(t % 32, 0);
            (
                wm + r,
                wn + c,
                mma::ROW_OFFSETS,
                mma::COL_OFFSETS,
                mma::acc_index,
            )
        }
    }
}

/// Every thread's 4×4 multiply-adds of slice buffer `cur`, as the FMA
/// kernel runs them.
fn multiply_f32(b: &mut Block, th: &mut [Thread], cur: usize) -> Result<(), GeometryError> {
    for (t, s) in th.iter_mut().enumerate() {
        let t = t as u64;
        let (tx, ty) = (t % 16, t / 16);
        for k in 0..u64::from(BK) {
            let mut x = [0f32; RM as usize];
            let mut y = [0f32; RN as usize];
            for (i, x) in x.iter_mut().enumerate() {
                let at = k * u64::from(A_LD) + u64::from(RM) * ty + i as u64;
                *x = b.load(Array::A, cur * A_SLICE as usize + at as usize, t)?;
            }
            for (j, y) in y.iter_mut().enumerate() {
                let at = k * u64::from(BN) + u64::from(RN) * tx + j as u64;
                *y = b.load(Array::B, cur * B_SLICE as usize + at as usize, t)?;
            }
            for (i, x) in x.iter().enumerate() {
                for (j, y) in y.iter().enumerate() {
                    let a = &mut s.acc[i * RN as usize + j];
                    *a = x.mul_add(*y, *a);
                }
            }
        }
    }
    Ok(())
}

/// Every warp's TF32 `mma.sync` products of slice buffer `cur`: per 8
/// reduction indices, each lane loads and rounds its fragments, then the
/// warp's 2×2 `m16n8k8` products run on the tiles they assemble.
fn multiply_tf32(b: &mut Block, th: &mut [Thread], cur: usize) -> Result<(), GeometryError> {
    let (tm, tn) = (mma::TILES_M as usize, mma::TILES_N as usize);
    for (w, warp) in th.chunks_mut(32).enumerate() {
        let (wm, wn) = mma::warp_origin(w as u32);
        for kk in 0..BK / mma::MMA_K {
            let k0 = kk * mma::MMA_K;
            // Per tile: A[16][8], B[8][8] as the lanes hold them.
            let mut at = vec![[[0f32; 8]; 16]; tm];
            let mut bt = vec![[[0f32; 8]; 8]; tn];
            for lane in 0..32u32 {
                let t = u64::from(32 * w as u32 + lane);
                for (mi, at) in at.iter_mut().enumerate() {
                    for r in 0..4 {
                        let (row, k) = mma::a_elem(lane, r);
                        let i = (k0 + k) * A_LD + wm + 16 * mi as u32 + row;
                        let v = b.load(Array::A, cur * A_SLICE as usize + i as usize, t)?;
                        at[row as usize][k as usize] = tf32(v);
                    }
                }
                for (nj, bt) in bt.iter_mut().enumerate() {
                    for r in 0..2 {
                        let (k, col) = mma::b_elem(lane, r);
                        let i = (k0 + k) * BN + wn + 8 * nj as u32 + col;
                        let v = b.load(Array::B, cur * B_SLICE as usize + i as usize, t)?;
                        bt[k as usize][col as usize] = tf32(v);
                    }
                }
            }
            for (lane, s) in warp.iter_mut().enumerate() {
                for (mi, at) in at.iter().enumerate() {
                    for (nj, bt) in bt.iter().enumerate() {
                        for r in 0..4 {
                            let (row, col) = mma::c_elem(lane as u32, r);
                            let d = &mut s.acc[4 * (mi * tn + nj) + r as usize];
                            for k in 0..mma::MMA_K as usize {
                                // Exact product, one rounding per sum.
                                *d += at[row as usize][k] * bt[k][col as usize];
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::ptx::launch::register_tiled_plan;

    /// `C[M, N] (+)= ε(A[M, K]·B[K, N] + bias)` with A's rows split into
    /// digits `(2, 3, m/6)` and its reduction into `(k1, k2, k3)`, so the
    /// staging's index stepping carries.
    fn product(m: usize, n: usize, k_dims: [usize; 3], accumulate: bool) -> Program {
        let k: usize = k_dims.iter().product();
        let m_dims = [2, 3, m / 6];
        let buf = |name: &str, len| Buffer {
            name: name.into(),
            len,
            kind: BufKind::Temp,
        };
        let c = Contraction {
            m_dims,
            m_strides: [3 * (m / 6) * k, (m / 6) * k, k],
            n,
            k_dims,
            k_strides: [k_dims[1] * k_dims[2], k_dims[2], 1],
            a: (0, 1),
            b: (1, 0),
            ldb: n,
            b_transposed: false,
            c: (2, 0),
            ldc: n,
            bias: Some((3, 0)),
            epilogue: Epilogue::LeakyRelu(0.1),
            accumulate,
        };
        Program {
            name: "t".into(),
            batch: 1,
            buffers: vec![
                buf("a", m * k + 1),
                buf("b", k * n),
                buf("c", m * n),
                buf("bias", n),
            ],
            kernels: vec![Kernel {
                name: "k".into(),
                body: KernelBody::Contraction(c),
            }],
            inputs: vec![],
            params: vec![],
            outputs: vec![],
        }
    }

    fn buffers(p: &Program) -> Vec<Vec<f32>> {
        p.buffers
            .iter()
            .enumerate()
            .map(|(b, buf)| {
                (0..buf.len)
                    .map(|i| (((i * 7 + b * 13) % 23) as f32 - 11.0) / 8.0)
                    .collect()
            })
            .collect()
    }

    fn run_with(p: &Program, d: Discipline) -> Result<Vec<Vec<f32>>, GeometryError> {
        run_in(p, buffers(p), Precision::F32, d)
    }

    /// Runs `p`'s kernel on `bufs` in `precision` under `d`.
    fn run_in(
        p: &Program,
        mut bufs: Vec<Vec<f32>>,
        precision: Precision,
        d: Discipline,
    ) -> Result<Vec<Vec<f32>>, GeometryError> {
        let plan = register_tiled_plan(p, 0, precision).unwrap();
        let KernelBody::Contraction(c) = &p.kernels[0].body else {
            unreachable!()
        };
        let mut shadow: Vec<Option<super::super::Shadow>> = (0..bufs.len()).map(|_| None).collect();
        shadow[2] = Some(super::super::Shadow {
            writer: vec![None; bufs[2].len()],
            reader: vec![None; bufs[2].len()],
        });
        let mut m = Mem {
            p,
            kernel: "k",
            bufs: &mut bufs,
            shadow,
        };
        run(&mut m, &plan, c, precision, d)?;
        Ok(bufs)
    }

    /// `p`'s kernel through the model gives the interpreter's C.
    fn matches_the_reference(p: &Program, label: &str) {
        let got = run_with(p, KERNEL).unwrap();
        let mut want = buffers(p);
        crate::kernel::interp::run_program(p, &mut want).unwrap();
        for (i, (g, w)) in got[2].iter().zip(&want[2]).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                "{label} c[{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn ragged_products_match_the_reference() {
        // Edges in every direction: 2 × 2 blocks, the last partial; N not
        // a multiple of 4 (scalar B copies) and a multiple (16-byte ones);
        // K of 3 slices with a partial last one, digits that carry.
        for (n, accumulate) in [(70, false), (68, true)] {
            let p = product(78, n, [3, 5, 3], accumulate);
            matches_the_reference(&p, &format!("n={n}"));
        }
    }

    /// The products the training step's gradients lower to: `dy·Wᵀ`
    /// (B transposed: scalar copies down B's stored rows) and `xᵀ·dy` (A
    /// transposed: k3 steps a stored row of A), and both at once.
    #[test]
    fn transposed_operands_match_the_reference() {
        let (m, n, k) = (78, 68, 45);
        for (a_t, b_t) in [(true, false), (false, true), (true, true)] {
            let mut p = product(m, n, [1, 1, k], false);
            let KernelBody::Contraction(c) = &mut p.kernels[0].body else {
                unreachable!()
            };
            if a_t {
                // A stored [K, M + 2]: row m of the product is column m.
                c.m_dims = [1, 1, m];
                c.m_strides = [0, 0, 1];
                c.k_strides = [0, 0, m + 2];
                p.buffers[0].len = k * (m + 2);
            }
            if b_t {
                // B stored [N, K + 3].
                c.b_transposed = true;
                c.ldb = k + 3;
                p.buffers[1].len = n * (k + 3);
            }
            let KernelBody::Contraction(c) = &p.kernels[0].body else {
                unreachable!()
            };
            assert_eq!(
                super::super::super::register_tiled::vector_b(c),
                !b_t && n % 4 == 0
            );
            matches_the_reference(&p, &format!("a_t={a_t} b_t={b_t}"));
        }
    }

    #[test]
    fn the_planner_picks_register_tiles_where_they_fill_an_h100() {
        use crate::codegen::ptx::launch::{kernel_plan, Shape};
        // 12 × 11 = 132 tiles of 64×64: register-tiled, and the planned
        // run matches the reference; 12 × 10 = 120: the 16×16 kernel.
        let p = product(768, 704, [1, 2, 4], true);
        let plan = kernel_plan(&p, 0).unwrap();
        assert!(matches!(
            plan.shape,
            Shape::RegisterTiled(_, Precision::F32)
        ));
        assert_eq!((plan.grid, plan.block), ([12, 11, 1], [256, 1, 1]));
        let mut got = buffers(&p);
        let mut want = got.clone();
        let measured = super::super::run_program_measured(&p, &mut got).unwrap();
        assert_eq!(measured[0].serial, 1);
        crate::kernel::interp::run_program(&p, &mut want).unwrap();
        for (i, (g, w)) in got[2].iter().zip(&want[2]).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                "c[{i}]: {g} vs {w}"
            );
        }
        let p = product(768, 640, [1, 2, 4], true);
        let plan = kernel_plan(&p, 0).unwrap();
        assert!(matches!(plan.shape, Shape::Tiled(_)), "{:?}", plan.shape);
    }

    #[test]
    fn the_race_detector_sees_a_missing_wait_or_barrier() {
        let p = product(78, 70, [3, 5, 3], false);
        for d in [
            // Multiplying a slice whose copies may still be in flight.
            Discipline {
                wait_group: 2,
                ..KERNEL
            },
            // Reading what other threads copied without a barrier.
            Discipline {
                barrier_before_multiply: false,
                ..KERNEL
            },
            // Staging the next slice over the one others still read.
            Discipline {
                barrier_after_multiply: false,
                ..KERNEL
            },
        ] {
            let err = run_with(&p, d).unwrap_err();
            assert!(
                matches!(&err, GeometryError::Race { buf, .. } if buf.starts_with("k0_k_")),
                "{d:?}: {err}"
            );
        }
    }

    /// The f64 reference of `p`'s kernel on `bufs` with every operand
    /// first mapped by `round`: per output, the result and Σ|a·b| (the
    /// scale of the product's rounding error).
    fn reference(p: &Program, bufs: &[Vec<f32>], round: fn(f32) -> f32) -> Vec<(f64, f64)> {
        use crate::codegen::ptx::launch::{a_col, a_row};
        let KernelBody::Contraction(c) = &p.kernels[0].body else {
            unreachable!()
        };
        let mut out = Vec::new();
        for row in 0..c.m() as u64 {
            for col in 0..c.n as u64 {
                let (mut sum, mut abs) = (0f64, 0f64);
                for k in 0..c.k() as u64 {
                    let x =
                        round(bufs[c.a.0][(c.a.1 as u64 + a_row(c, row) + a_col(c, k)) as usize]);
                    let (sk, sn) = c.b_strides();
                    let y = round(
                        bufs[c.b.0][(c.b.1 as u64 + k * sk as u64 + col * sn as u64) as usize],
                    );
                    sum += f64::from(x) * f64::from(y);
                    abs += (f64::from(x) * f64::from(y)).abs();
                }
                if let Some((b, off)) = c.bias {
                    sum += f64::from(bufs[b][off + col as usize]);
                }
                if let Epilogue::LeakyRelu(alpha) = c.epilogue {
                    sum = if sum > 0.0 {
                        sum
                    } else {
                        f64::from(alpha) * sum
                    };
                }
                let ix = c.c.1 + row as usize * c.ldc + col as usize;
                if c.accumulate {
                    sum += f64::from(bufs[c.c.0][ix]);
                }
                out.push((sum, abs));
            }
        }
        out
    }

    /// Inputs whose low mantissa bits are set (a TF32 rounding changes
    /// almost every one of them by up to 2^-11 relative): the usual
    /// pattern times (1 + j·2^-14) for a varying j.
    fn fine_buffers(p: &Program) -> Vec<Vec<f32>> {
        let mut bufs = buffers(p);
        for (b, buf) in bufs.iter_mut().enumerate() {
            for (i, x) in buf.iter_mut().enumerate() {
                *x *= 1.0 + ((i * 5 + b * 3) % 7 + 1) as f32 * 2f32.powi(-14);
            }
        }
        bufs
    }

    /// Issue 16, item 4: the TF32 path matches the f64 reference within a
    /// TF32 tolerance on ragged products (edges in M, N and K, carrying
    /// digits, bias, leaky relu, accumulation). The bound: each operand
    /// rounded to 10 mantissa bits is off by at most 2^-11 relative, so
    /// each product by ~2^-10, and the sum by 2^-10·Σ|a·b| plus f32
    /// roundings of the ≤ 45-term sum (~45·2^-24·Σ|a·b|); 2^-9·Σ|a·b|
    /// leaves twice that, and 1e-5·(1 + |c|) covers the f32 bias and
    /// accumulate additions.
    #[test]
    fn the_tf32_path_matches_the_reference_within_tf32_rounding() {
        for (n, accumulate) in [(70, false), (68, true)] {
            let p = product(78, n, [3, 5, 3], accumulate);
            let bufs = fine_buffers(&p);
            let got = run_in(&p, bufs.clone(), Precision::Tf32, KERNEL).unwrap();
            let want = reference(&p, &bufs, |x| x);
            let mut worst = 0f64;
            for (i, (g, (w, abs))) in got[2].iter().zip(&want).enumerate() {
                let err = (f64::from(*g) - w).abs();
                let tol = 2f64.powi(-9) * abs + 1e-5 * (1.0 + w.abs());
                assert!(
                    err <= tol,
                    "n {n}: c[{i}]: TF32 {g} vs f64 {w} (Σ|ab| {abs})"
                );
                worst = worst.max(err / abs.max(1e-30));
            }
            // The rounding is not vacuous: some output is off by more
            // than f32 arithmetic could make it.
            assert!(worst > 1e-5, "n {n}: worst relative error {worst:e}");
        }
    }

    /// The geometry interpreter really rounds under TF32 and only then:
    /// on inputs with low mantissa bits set, the TF32 kernel agrees with
    /// the reference of TF32-rounded operands to f32 accuracy (1e-5 of
    /// Σ|a·b|) and most outputs are outside that accuracy of the exact
    /// reference; the f32 kernel is the other way round.
    #[test]
    fn tf32_rounding_is_modelled_and_only_when_asked_for() {
        let p = product(78, 70, [3, 5, 3], true);
        let bufs = fine_buffers(&p);
        let exact = reference(&p, &bufs, |x| x);
        let rounded = reference(&p, &bufs, tf32);
        let close = |got: &[f32], want: &[(f64, f64)]| {
            got.iter()
                .zip(want)
                .filter(|(g, (w, abs))| {
                    (f64::from(**g) - w).abs() <= 1e-5 * abs + 1e-6 * (1.0 + w.abs())
                })
                .count()
        };
        let outputs = exact.len();
        let t = run_in(&p, bufs.clone(), Precision::Tf32, KERNEL).unwrap();
        let f = run_in(&p, bufs, Precision::F32, KERNEL).unwrap();
        assert_eq!(close(&t[2], &rounded), outputs);
        assert_eq!(close(&f[2], &exact), outputs);
        let (t_exact, f_rounded) = (close(&t[2], &exact), close(&f[2], &rounded));
        assert!(
            t_exact < outputs / 4,
            "TF32 close to exact: {t_exact} of {outputs}"
        );
        assert!(
            f_rounded < outputs / 4,
            "f32 close to TF32: {f_rounded} of {outputs}"
        );
    }

    #[test]
    fn the_race_detector_also_watches_the_tf32_fragment_loads() {
        let p = product(78, 70, [3, 5, 3], false);
        let d = Discipline {
            barrier_before_multiply: false,
            ..KERNEL
        };
        let err = run_in(&p, buffers(&p), Precision::Tf32, d).unwrap_err();
        assert!(
            matches!(&err, GeometryError::Race { buf, .. } if buf.starts_with("k0_k_")),
            "{err}"
        );
    }
}
