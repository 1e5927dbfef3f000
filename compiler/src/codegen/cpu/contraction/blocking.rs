//! Blocked reduction: where the kernels add their register accumulators
//! into a per-tile running total, so that no output sums more than
//! [`K_BLOCK`] products in one floating-point chain.
//!
//! A single chain of K additions carries a rounding error that grows with
//! K: VGG-16's first dense layer sums 25,088 products per output, and its
//! outputs were measured 3.2e-5 (relative) away from a float64 evaluation,
//! where onnxruntime's blocked sums are within 6.9e-6. Summing blocks of at
//! most 256 products and then the blocks' partial sums makes the chain
//! about `256 + K / 256` long instead of `K` (MLAS blocks K by 256 for the
//! same reason), at the cost of a few vector adds per tile per block.
//!
//! Both kernel paths (the AVX2 micro-kernels and Cranelift's) flush at the
//! same points and add in the same order, so they still agree bit for bit.
//! The rule only depends on the plan's reduction loop nest, so it is
//! decided once here.

/// Most products summed in one register chain before it is flushed.
pub(super) const K_BLOCK: usize = 256;

/// Fewest products per flush: flushing after a level whose iterations are
/// shorter would cost more than it saves (a flush is three vector ops per
/// accumulator), so such reductions stay one chain.
const MIN_BLOCK: usize = 32;

/// Where a contraction's kernels flush their accumulators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KBlocking {
    /// One chain over the whole reduction (K ≤ [`K_BLOCK`], or no level
    /// gives blocks of a useful size).
    Chain,
    /// After every iteration of outer reduction level `level` (outermost
    /// first), whose body is at most [`K_BLOCK`] steps.
    AfterLevel(usize),
    /// The contiguous inner run is longer than [`K_BLOCK`]: it is summed in
    /// `full` runs of `len` steps and then one of `rest` (possibly none),
    /// flushing after each.
    InnerRuns {
        len: usize,
        full: usize,
        rest: usize,
    },
}

impl KBlocking {
    /// The blocking for a reduction of outer levels `k_outer` (`(extent,
    /// stride)`, outermost first) around a contiguous run of `k_inner`.
    pub(crate) fn for_reduction(k_outer: &[(usize, i64)], k_inner: usize) -> KBlocking {
        // Steps in one iteration of level `l`'s body; the whole reduction
        // for l = 0 .. first level.
        let body = |l: usize| {
            k_outer[l + 1..]
                .iter()
                .fold(k_inner, |acc, &(e, _)| acc.saturating_mul(e))
        };
        let total = k_outer
            .iter()
            .fold(k_inner, |acc, &(e, _)| acc.saturating_mul(e));
        if total <= K_BLOCK {
            return KBlocking::Chain;
        }
        if let Some(level) = (0..k_outer.len()).find(|&l| body(l) <= K_BLOCK) {
            return if body(level) >= MIN_BLOCK {
                KBlocking::AfterLevel(level)
            } else {
                KBlocking::Chain
            };
        }
        // Even the inner run is longer than a block: split it evenly.
        let runs = k_inner.div_ceil(K_BLOCK);
        let len = k_inner.div_ceil(runs);
        KBlocking::InnerRuns {
            len,
            full: k_inner / len,
            rest: k_inner % len,
        }
    }

    /// Whether the kernels keep a running total besides the accumulators.
    pub(crate) fn flushes(self) -> bool {
        self != KBlocking::Chain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_reductions_stay_one_chain() {
        assert_eq!(KBlocking::for_reduction(&[], 256), KBlocking::Chain);
        assert_eq!(KBlocking::for_reduction(&[(3, 120)], 9), KBlocking::Chain);
        // 200 iterations of 2 steps: blocks that short are not worth it.
        assert_eq!(KBlocking::for_reduction(&[(200, 8)], 2), KBlocking::Chain);
    }

    #[test]
    fn outer_levels_flush_at_the_outermost_level_that_fits() {
        // Conv 3x3 over 32 channels: kh outside a run of kw x c = 96.
        assert_eq!(
            KBlocking::for_reduction(&[(3, 4096)], 96),
            KBlocking::AfterLevel(0)
        );
        // 5 x 5 x 64: the kh level's body is 320, the kw level's 64.
        assert_eq!(
            KBlocking::for_reduction(&[(5, 40_000), (5, 1024)], 64),
            KBlocking::AfterLevel(1)
        );
        // 3 x 3 x 64: the kh level's body is 3 x 64 = 192.
        assert_eq!(
            KBlocking::for_reduction(&[(3, 40_000), (3, 8000)], 64),
            KBlocking::AfterLevel(0)
        );
    }

    #[test]
    fn long_runs_split_evenly() {
        // VGG-16 fc1: 25,088 = 98 x 256.
        assert_eq!(
            KBlocking::for_reduction(&[], 25_088),
            KBlocking::InnerRuns {
                len: 256,
                full: 98,
                rest: 0
            }
        );
        assert_eq!(
            KBlocking::for_reduction(&[(3, 99_999)], 514),
            KBlocking::InnerRuns {
                len: 172,
                full: 2,
                rest: 170
            }
        );
        assert!(KBlocking::for_reduction(&[], 257).flushes());
    }
}
