//! Analysis: checks a [`ContractionSpec`] and normalizes it into a
//! [`Plan`] (merged row dimensions, outer reduction levels and one
//! evenly strided inner run, panel geometry), chooses between the native
//! and the Cranelift kernels, and splits the work over threads.

use std::ops::Range;

use super::blocking::KBlocking;
#[cfg(target_arch = "x86_64")]
use super::{avx2, native};
use super::{
    invalid, overflow, BLayout, CodegenError, ContractionSpec, Epilogue, IsaLevel, LoopOrder,
};

impl ContractionSpec {
    /// Checks the spec and derives everything code generation needs,
    /// choosing the native kernels where the spec's
    /// [`KernelPath`](super::KernelPath) allows.
    pub(super) fn plan(&self) -> Result<Plan, CodegenError> {
        let cranelift = self.plan_tiled(self.tuning.mr, self.tuning.nr_vecs)?;
        match self.tuning.kernels.native_level() {
            Some(level) => Ok(self.plan_native(level).unwrap_or(cranelift)),
            None => Ok(cranelift),
        }
    }

    /// The plan for the native kernels of the highest level up to `level`
    /// that can compute this spec, if any.
    #[cfg(target_arch = "x86_64")]
    fn plan_native(&self, level: IsaLevel) -> Option<Plan> {
        let mut plan = self.plan_tiled(avx2::MR, avx2::NR / 4).ok()?;
        let spec = plan.asm_spec();
        let isa = [IsaLevel::Avx512, IsaLevel::Avx2Fma]
            .into_iter()
            .find(|&isa| isa <= level && native::supports(&spec, isa))?;
        plan.native = Some(isa);
        Some(plan)
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn plan_native(&self, _level: IsaLevel) -> Option<Plan> {
        None
    }

    /// The plan for register tiles of `mr` rows by `nr_vecs` `f32x4`
    /// vectors (Cranelift's kernels; the native ones use the same plan with
    /// their tile).
    fn plan_tiled(&self, mr: usize, nr_vecs: usize) -> Result<Plan, CodegenError> {
        let t = &self.tuning;
        if !(1..=16).contains(&t.mr)
            || !(1..=4).contains(&t.nr_vecs)
            || !(1..=16).contains(&t.k_unroll)
        {
            return Err(invalid(format!(
                "tuning out of range: mr={} (1..=16), nr_vecs={} (1..=4), k_unroll={} (1..=16)",
                t.mr, t.nr_vecs, t.k_unroll
            )));
        }
        let k = self.k().ok_or_else(overflow)?;
        // A stored B row holds N columns, or K reduction steps transposed.
        let b_row = if self.b_transposed { k } else { self.n };
        if self.ldb < b_row || self.ldc < self.n {
            return Err(invalid(format!(
                "ldb={} must be at least {b_row} and ldc={} at least n={}",
                self.ldb, self.ldc, self.n
            )));
        }
        if self.b_transposed && t.b_layout == BLayout::RowMajor {
            return Err(invalid("a transposed B is read through its packing"));
        }
        if let Epilogue::LeakyRelu(alpha) = self.epilogue {
            if !alpha.is_finite() {
                return Err(invalid(format!("leaky_relu alpha {alpha} is not finite")));
            }
        }
        let m = self.m().ok_or_else(overflow)?;
        let lens = self.operand_lens()?;
        // Every byte offset the kernel forms must be a valid `i64`, and the
        // largest one is below 4 * max(len).
        let limit = (i64::MAX / 8) as usize;
        let nr = 4 * nr_vecs;
        let panels = self.n.div_ceil(nr);
        let packed = panels
            .checked_mul(nr)
            .and_then(|x| x.checked_mul(k))
            .ok_or_else(overflow)?;
        if lens.a > limit || lens.b > limit || lens.c > limit || packed > limit {
            return Err(overflow());
        }
        let bytes = |x: usize| (x as i64) * 4;
        if t.b_layout == BLayout::RowMajor && !self.n.is_multiple_of(nr) {
            return Err(invalid(format!(
                "row-major B needs N ({}) to be a multiple of NR ({nr})",
                self.n
            )));
        }
        if t.b_layout == BLayout::RowMajor
            && bytes(self.ldb).saturating_mul(t.k_unroll as i64) > i32::MAX as i64
        {
            // Unrolled steps address B with i32 immediates.
            return Err(overflow());
        }
        let (b_panel_bytes, b_step_bytes) = match t.b_layout {
            BLayout::Packed => (bytes(packed / panels.max(1)), bytes(nr)),
            BLayout::RowMajor => (bytes(nr), bytes(self.ldb)),
        };

        // Merge row dimensions that are affine in each other (dense layers
        // collapse to one), innermost first.
        let mut m_dims: Vec<(usize, i64)> = Vec::new();
        for l in (0..3).rev() {
            let (e, s) = (self.m_dims[l], bytes(self.m_strides[l]));
            if e == 1 {
                continue;
            }
            match m_dims.last_mut() {
                Some(last) if s == last.1 * last.0 as i64 => last.0 *= e,
                _ => m_dims.push((e, s)),
            }
        }
        if m_dims.is_empty() {
            m_dims.push((1, 0));
        }

        // Fold reduction dimensions into the inner run while they continue
        // it (NHWC: `kw` and `c` always do). The run steps through A by
        // `k_strides[2]`: 1, or the row length of a transposed A.
        // (A run of one step has no stride: keep it from the byte maths.)
        let a_step = if self.k_dims[2] > 1 {
            self.k_strides[2]
        } else {
            1
        };
        let mut k_inner = self.k_dims[2];
        let mut k_outer: Vec<(usize, i64)> = Vec::new();
        for l in (0..2).rev() {
            let (e, s) = (self.k_dims[l], self.k_strides[l]);
            if e == 1 {
                continue;
            }
            if k_outer.is_empty() && Some(s) == k_inner.checked_mul(a_step) {
                k_inner *= e;
            } else {
                k_outer.push((e, bytes(s)));
            }
        }
        k_outer.reverse();
        let a_step_bytes = bytes(a_step);
        let unroll = t.k_unroll.min(k_inner);
        if a_step_bytes.saturating_mul(unroll as i64) > i32::MAX as i64 {
            // Unrolled steps address A with i32 immediates.
            return Err(overflow());
        }

        Ok(Plan {
            m,
            m_dims,
            n: self.n,
            k,
            k_outer,
            k_inner,
            a_step_bytes,
            ldc_bytes: bytes(self.ldc),
            mr,
            nrv: nr_vecs,
            nr,
            unroll,
            panels,
            full_panels: self.n / nr,
            tail_cols: self.n % nr,
            bias: self.bias,
            accumulate: self.accumulate,
            epilogue: self.epilogue,
            order: match t.order {
                LoopOrder::Auto if packed * 4 <= ROW_OUTER_MAX_B_BYTES => LoopOrder::RowOuter,
                LoopOrder::Auto => LoopOrder::PanelOuter,
                o => o,
            },
            broadcast_per_fma: t.broadcast_per_fma,
            b_layout: t.b_layout,
            b_transposed: self.b_transposed,
            b_panel_bytes,
            b_step_bytes,
            native: None,
        })
    }
}

/// A validated, normalized spec.
#[derive(Clone, Debug)]
pub(super) struct Plan {
    pub(super) m: usize,
    /// `(extent, A stride in bytes)`, innermost first; never empty.
    pub(super) m_dims: Vec<(usize, i64)>,
    pub(super) n: usize,
    pub(super) k: usize,
    /// Non-contiguous reduction loops `(extent, A stride in bytes)`,
    /// outermost first.
    pub(super) k_outer: Vec<(usize, i64)>,
    /// Length of the innermost reduction run.
    pub(super) k_inner: usize,
    /// Bytes between two A elements of the inner run: 4, or a transposed
    /// A's row length.
    pub(super) a_step_bytes: i64,
    pub(super) ldc_bytes: i64,
    pub(super) mr: usize,
    pub(super) nrv: usize,
    pub(super) nr: usize,
    pub(super) unroll: usize,
    pub(super) panels: usize,
    pub(super) full_panels: usize,
    pub(super) tail_cols: usize,
    pub(super) bias: bool,
    pub(super) accumulate: bool,
    pub(super) epilogue: Epilogue,
    pub(super) order: LoopOrder,
    pub(super) broadcast_per_fma: bool,
    pub(super) b_layout: BLayout,
    /// B is stored `[N, ldb]` and transposed by the packing.
    pub(super) b_transposed: bool,
    /// Byte distance between the starts of two neighbouring B panels.
    pub(super) b_panel_bytes: i64,
    /// Byte distance between two reduction steps within a B panel.
    pub(super) b_step_bytes: i64,
    /// The native kernels' instruction set, or `None` for Cranelift.
    pub(super) native: Option<IsaLevel>,
}

impl Plan {
    pub(super) fn panel_len(&self) -> usize {
        self.k * self.nr
    }

    /// The plan with the reduction cut to `k` steps, for packing one
    /// reduction block of B.
    // Only the native (x86-64) kernels call it.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn with_k(&self, k: usize) -> Plan {
        Plan { k, ..self.clone() }
    }

    pub(super) fn m_tiles(&self) -> usize {
        self.m.div_ceil(self.mr)
    }

    /// What the native kernels are specialized on.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn asm_spec(&self) -> avx2::AsmSpec {
        avx2::AsmSpec {
            k_outer: self.k_outer.clone(),
            k_inner: self.k_inner,
            a_step: self.a_step_bytes,
            unroll: self.unroll,
            b_step: self.b_step_bytes,
            b_panel: self.b_panel_bytes,
            b_in_place: self.b_layout == BLayout::RowMajor,
            bias: self.bias,
            epilogue: self.epilogue,
            accumulate: self.accumulate,
            blocking: self.k_blocking(),
        }
    }

    /// Where the kernels flush their accumulators (the same on both paths).
    pub(super) fn k_blocking(&self) -> KBlocking {
        KBlocking::for_reduction(&self.k_outer, self.k_inner)
    }
}

/// Largest packed B (bytes) for which `LoopOrder::Auto` picks `RowOuter`:
/// B is re-streamed from L2 for every row tile, so it must stay resident
/// (L2 is 1-2 MiB on current x86 cores).
pub(super) const ROW_OUTER_MAX_B_BYTES: usize = 512 * 1024;

/// Splits rows (in whole tiles) or panels across threads, whichever divides
/// more evenly; on a near tie, the split that makes the threads share the
/// smaller operand (A when splitting panels, B when splitting rows), so each
/// thread streams only its part of the larger one.
pub(super) fn split_work(p: &Plan, threads: usize) -> Vec<(Range<usize>, Range<usize>)> {
    let threads = threads.max(1);
    let balance = |units: usize| {
        let t = threads.min(units);
        units as f64 / (threads * units.div_ceil(t)) as f64
    };
    let chunks = |units: usize| -> Vec<Range<usize>> {
        let t = threads.min(units);
        (0..t).map(|i| units * i / t..units * (i + 1) / t).collect()
    };
    let tiles = p.m_tiles();
    let (rows, cols) = (balance(tiles), balance(p.panels));
    let split_rows = if (rows - cols).abs() < 0.05 {
        // A holds about m*k elements, packed B panels*nr*k.
        p.m >= p.panels * p.nr
    } else {
        rows > cols
    };
    if split_rows {
        chunks(tiles)
            .into_iter()
            .map(|r| (r.start * p.mr..(r.end * p.mr).min(p.m), 0..p.panels))
            .collect()
    } else {
        chunks(p.panels).into_iter().map(|r| (0..p.m, r)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::cpu::contraction::{Conv2dGeometry, KernelPath};

    /// Every (row, panel) cell is covered by exactly one work item, and row
    /// ranges start on tile boundaries (the kernel's tail logic assumes it).
    #[test]
    fn split_work_partitions_rows_and_panels() {
        for (m, n) in [(1, 1), (7, 5), (64, 1024), (3136, 64), (9, 300), (100, 4)] {
            // Native tiles (6 x 16) where the host has them, and Cranelift's.
            for (threads, kernels) in
                (1..=5).flat_map(|t| [(t, KernelPath::Auto), (t, KernelPath::Cranelift)])
            {
                let mut spec = ContractionSpec::dense(m, 3, n);
                spec.tuning.kernels = kernels;
                let plan = spec.plan().expect("plan");
                let mut cover = vec![0u8; plan.m * plan.panels];
                let work = split_work(&plan, threads);
                assert!(!work.is_empty() && work.len() <= threads);
                for (rows, panels) in work {
                    assert_eq!(rows.start % plan.mr, 0);
                    for r in rows {
                        for p in panels.clone() {
                            cover[r * plan.panels + p] += 1;
                        }
                    }
                }
                assert!(
                    cover.iter().all(|&c| c == 1),
                    "m={m} n={n} threads={threads} {kernels:?}"
                );
            }
        }
    }

    /// A transposed A (`xᵀ`: rows 1 apart, steps a row of x apart) is one
    /// strided inner run the kernels read in place, on both paths.
    #[test]
    fn a_transposed_a_is_one_strided_run() {
        for kernels in [KernelPath::Auto, KernelPath::Cranelift] {
            let mut spec = ContractionSpec::dense(11, 5, 3);
            spec.m_strides = [0, 0, 1];
            spec.k_strides = [0, 0, 13];
            spec.tuning.kernels = kernels;
            let plan = spec.plan().expect("plan");
            assert_eq!(plan.m_dims, vec![(11, 4)]);
            assert_eq!((plan.k_inner, plan.a_step_bytes), (5, 13 * 4));
            assert!(plan.k_outer.is_empty());
        }
        let plain = ContractionSpec::dense(11, 5, 3).plan().expect("plan");
        assert_eq!(plain.a_step_bytes, 4);
    }

    #[test]
    fn reduction_dims_fold_into_contiguous_runs() {
        let conv = ContractionSpec::conv2d_nhwc(&Conv2dGeometry {
            batch: 2,
            in_h: 10,
            in_w: 10,
            in_c: 3,
            kernel_h: 3,
            kernel_w: 3,
            out_c: 4,
            stride_h: 1,
            stride_w: 2,
        })
        .expect("conv");
        let plan = conv.plan().expect("plan");
        // kw x c is one contiguous run of 9; kh stays a loop with stride Wp*C.
        assert_eq!(plan.k_inner, 9);
        assert_eq!(plan.k_outer, vec![(3, 30 * 4)]);
        // Rows: ow (stride S*C), oh, batch; none merge.
        assert_eq!(plan.m_dims, vec![(4, 6 * 4), (8, 30 * 4), (2, 300 * 4)]);
        let dense = ContractionSpec::dense(5, 7, 3).plan().expect("plan");
        assert_eq!((dense.k_inner, dense.k_outer.len()), (7, 0));
        assert_eq!(dense.m_dims, vec![(5, 28)]);
    }
}
