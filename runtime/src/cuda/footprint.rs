//! What a program needs on the GPU, computed without one: the memory
//! plan's arena (the same plan the CPU executor uses) plus the buffers that
//! live outside it (parameters, optimizer state, inputs), and the check of
//! that sum against the memory the device reports free.
//!
//! Everything here is pure arithmetic on the kernel-IR [`Program`] and its
//! [`MemoryPlan`]; the executor (`cuda::exec`) only adds the
//! `cuMemGetInfo` call, so the sizes and the shortfall error are tested on
//! machines without a GPU.

use crate::memory::bytes;
use netc_compiler::kernel::plan::{plan, MemoryPlan};
use netc_compiler::kernel::training::TrainingProgram;
use netc_compiler::kernel::{BufKind, Program};
use netc_compiler::train::Loss;
use std::fmt;
use thiserror::Error;

/// The device memory of one program, by part, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// The batch the program was lowered for.
    pub batch: usize,
    /// The arena of temporaries (one allocation, laid out by the plan).
    pub arena: u64,
    /// Parameters.
    pub params: u64,
    /// Optimizer state (moments), zero for a forward program.
    pub state: u64,
    /// Inputs (data, targets, masks, hyper-parameters).
    pub inputs: u64,
    /// Device memory a training step uses beside its program: the dropout
    /// masks' keys (8 bytes per mask, see `CudaExecutable::dropout_masks`).
    pub keys: u64,
    /// The per-row classification scores of a cross-entropy training step
    /// (one f32 per label, see `CudaExecutable::score_later`).
    pub scores: u64,
}

impl Footprint {
    /// The footprint of `p` under its memory plan ([`plan`]).
    pub fn of(p: &Program) -> Self {
        Self::planned(p, &plan(p))
    }

    /// The footprint of `p` under memory plan `m`.
    pub fn planned(p: &Program, m: &MemoryPlan) -> Self {
        let mut f = Footprint {
            batch: p.batch,
            arena: f32_bytes(m.arena_len),
            ..Footprint::default()
        };
        for b in &p.buffers {
            let n = f32_bytes(b.len);
            match b.kind {
                BufKind::Temp => {}
                BufKind::Param(_) => f.params = f.params.saturating_add(n),
                BufKind::State(_) => f.state = f.state.saturating_add(n),
                BufKind::Input(_) => f.inputs = f.inputs.saturating_add(n),
            }
        }
        f
    }

    /// The footprint of a training step under `loss`: its program's
    /// ([`Self::of`]), the keys of its dropout masks and, for
    /// cross-entropy, the per-row scores (one per label).
    pub fn training(tp: &TrainingProgram, loss: Loss) -> Self {
        let labels = tp
            .program
            .inputs
            .iter()
            .find(|i| i.name == "target")
            .map_or(0, |i| tp.program.buffers[i.buf].len);
        Footprint {
            keys: dropout_key_bytes(tp.masks.len()),
            scores: if loss == Loss::CrossEntropy {
                f32_bytes(labels)
            } else {
                0
            },
            ..Self::of(&tp.program)
        }
    }

    /// Bytes in all.
    pub fn total(&self) -> u64 {
        self.arena
            .saturating_add(self.params)
            .saturating_add(self.state)
            .saturating_add(self.inputs)
            .saturating_add(self.keys)
            .saturating_add(self.scores)
    }
}

/// Device bytes of the keys of `masks` dropout masks (one `u64` each).
pub fn dropout_key_bytes(masks: usize) -> u64 {
    8 * masks as u64
}

impl fmt::Display for Footprint {
    /// `1.2 GiB (arena 1.0 GiB, parameters 84.5 MiB, optimizer state
    /// 169.0 MiB, inputs 196.0 KiB)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (arena {}, parameters {}, optimizer state {}, inputs {}",
            bytes(self.total()),
            bytes(self.arena),
            bytes(self.params),
            bytes(self.state),
            bytes(self.inputs)
        )?;
        if self.keys > 0 {
            write!(f, ", dropout keys {}", bytes(self.keys))?;
        }
        if self.scores > 0 {
            write!(f, ", scores {}", bytes(self.scores))?;
        }
        write!(f, ")")?;
        Ok(())
    }
}

fn f32_bytes(n: usize) -> u64 {
    crate::memory::f32_bytes(n)
}

/// What the GPU executor allocated before the arena: one zeroed
/// allocation per buffer (of at least one element). Kept for comparison.
pub fn per_buffer_bytes(p: &Program) -> u64 {
    p.buffers
        .iter()
        .map(|b| f32_bytes(b.len.max(1)))
        .fold(0, u64::saturating_add)
}

/// The largest batch that fits, as far as it was worked out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FittingBatch {
    /// Not searched (the executor sees only the program, not the model it
    /// was lowered from).
    Unknown,
    /// Not even batch 1 fits.
    None,
    /// This batch fits and the next larger one does not.
    Largest(usize),
}

impl fmt::Display for FittingBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FittingBatch::Unknown => Ok(()),
            FittingBatch::None => write!(f, "; not even batch 1 fits"),
            FittingBatch::Largest(b) => write!(f, "; the largest batch that fits is {b}"),
        }
    }
}

/// A program that does not fit in the GPU's free memory.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error(
    "{what} at batch {batch} needs {} of GPU memory ({needed} bytes: {footprint}), but only {} ({available} bytes) is free{fitting}",
    bytes(*needed),
    bytes(*available),
    batch = footprint.batch
)]
pub struct DeviceShortfall {
    /// What needs the memory: "the training step of model `m`".
    pub what: String,
    /// Bytes needed ([`Footprint::total`]).
    pub needed: u64,
    /// Bytes free on the device (`cuMemGetInfo`).
    pub available: u64,
    /// The parts of `needed`.
    pub footprint: Footprint,
    /// The largest batch that would fit.
    pub fitting: FittingBatch,
}

impl DeviceShortfall {
    /// The same shortfall with the largest batch that fits, searched with
    /// `needed(b)`, the footprint of the same program lowered at batch `b`
    /// (see [`largest_batch`]).
    pub fn with_largest_batch(mut self, needed: impl FnMut(usize) -> Option<u64>) -> Self {
        self.fitting = largest_batch(self.footprint.batch, self.available, needed);
        self
    }
}

/// Checks `footprint` against `available` bytes (what `cuMemGetInfo`
/// reports free), before anything is allocated.
pub fn check_fits(
    what: &str,
    footprint: &Footprint,
    available: u64,
) -> Result<(), DeviceShortfall> {
    let needed = footprint.total();
    if needed <= available {
        return Ok(());
    }
    Err(DeviceShortfall {
        what: what.to_string(),
        needed,
        available,
        footprint: *footprint,
        fitting: FittingBatch::Unknown,
    })
}

/// The largest batch below `batch` (which does not fit) whose footprint,
/// `needed(b)` bytes, fits in `available` bytes: a binary search that
/// keeps a batch that fits below one that does not, so the answer `b`
/// fits and `b + 1` does not (`needed` returns `None` where the model
/// cannot be lowered at a batch; that batch counts as not fitting).
/// Re-plans at each probed batch (about log2(batch) of them) rather than
/// extrapolating: the first-fit plan is not linear in the batch.
pub fn largest_batch(
    batch: usize,
    available: u64,
    mut needed: impl FnMut(usize) -> Option<u64>,
) -> FittingBatch {
    let mut fits = |b: usize| needed(b).is_some_and(|n| n <= available);
    if batch <= 1 || !fits(1) {
        return FittingBatch::None;
    }
    let (mut lo, mut hi) = (1, batch);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    FittingBatch::Largest(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(arena: u64) -> Footprint {
        Footprint {
            batch: 8,
            arena,
            params: 1000,
            state: 2000,
            inputs: 24,
            keys: 0,
            scores: 0,
        }
    }

    #[test]
    fn dropout_keys_count_and_show_only_when_there_are_masks() {
        let f = Footprint {
            keys: dropout_key_bytes(2),
            ..fp(0)
        };
        assert_eq!(f.total(), fp(0).total() + 16);
        assert!(
            f.to_string().ends_with(", inputs 24 B, dropout keys 16 B)"),
            "{f}"
        );
        assert!(fp(0).to_string().ends_with(", inputs 24 B)"), "{}", fp(0));
    }

    #[test]
    fn a_shortfall_names_every_number() {
        let f = fp(3 << 30);
        assert_eq!(f.total(), (3 << 30) + 3024);
        assert!(check_fits("x", &f, f.total()).is_ok());
        let mut e = check_fits("the training step of model `m`", &f, 2 << 30).unwrap_err();
        assert_eq!(e.needed, (3 << 30) + 3024);
        assert_eq!(e.available, 2 << 30);
        e.fitting = FittingBatch::Largest(5);
        assert_eq!(
            e.to_string(),
            "the training step of model `m` at batch 8 needs 3.0 GiB of GPU memory \
             (3221228496 bytes: 3.0 GiB (arena 3.0 GiB, parameters 1000 B, optimizer state \
             2.0 KiB, inputs 24 B)), but only 2.0 GiB (2147483648 bytes) is free; the \
             largest batch that fits is 5"
        );
    }

    #[test]
    fn the_search_returns_a_batch_that_fits_below_one_that_does_not() {
        // 100 fixed + 7 per example, 1000 available: 128 fits, 129 does not.
        let linear = |b: usize| Some(100 + 7 * b as u64);
        assert_eq!(
            largest_batch(4096, 1000, linear),
            FittingBatch::Largest(128)
        );
        assert_eq!(largest_batch(129, 1000, linear), FittingBatch::Largest(128));
        assert_eq!(largest_batch(2, 1000, linear), FittingBatch::Largest(1));
        assert_eq!(largest_batch(4096, 100, linear), FittingBatch::None);
        assert_eq!(largest_batch(1, 1000, linear), FittingBatch::None);
        // Batches that cannot be lowered count as not fitting.
        let odd = |b: usize| (b % 2 == 0).then_some(b as u64);
        assert_eq!(largest_batch(64, 1000, odd), FittingBatch::None);
    }
}
