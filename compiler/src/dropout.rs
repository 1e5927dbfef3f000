//! Dropout masks from a counter-based generator: whether element `i` of
//! mask `m` is kept at training step `s` of a run seeded `seed` is a pure
//! function of `(seed, s, m, i)`, so the CPU (this module) and the GPU (a
//! generated PTX kernel, `codegen::ptx::dropout`) produce the same masks
//! bit for bit, each element independently, in any order and any number
//! of threads.
//!
//! The generator is **SplitMix64 evaluated at a counter**: element `i`'s
//! 64 random bits are SplitMix64's output number `i` of the stream seeded
//! with the mask's key, `mix(key + (i + 1)·γ)` — SplitMix64's state only
//! ever advances by adding γ, so its `i`-th output needs no predecessor.
//! It was chosen over Philox because netc already uses SplitMix64 for
//! every other seeded choice (shuffles, augmentation, initialization
//! seeds), its output stream passes BigCrush, and its three 64-bit
//! multiplies and xor-shifts are cheap in PTX (`mul.lo.u64`) and exactly
//! reproducible on the host; Philox's 10 rounds of 32-bit multiply-high
//! buy cryptographic-strength decorrelation that a dropout mask does not
//! need. Each (step, mask) pair gets its own key by hashing the seed with
//! the step and the mask's number, so masks of different steps and layers
//! are different streams, not shifted copies of one.
//!
//! An element is dropped when the top 24 bits of its random word, read as
//! a fraction of 2^24, are below the rate: compared as integers against
//! [`drop_threshold`], so the device needs no float conversion and the
//! decision is exact.

/// SplitMix64's increment (the golden ratio in 64-bit fixed point).
pub const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
/// SplitMix64's first mixing multiplier.
pub const MIX1: u64 = 0xbf58_476d_1ce4_e5b9;
/// SplitMix64's second mixing multiplier.
pub const MIX2: u64 = 0x94d0_49bb_1331_11eb;

/// SplitMix64's finalizer: a bijective avalanche of `z`.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(MIX1);
    z = (z ^ (z >> 27)).wrapping_mul(MIX2);
    z ^ (z >> 31)
}

/// One SplitMix64 step from state `z`: the output after advancing `z` by
/// [`GAMMA`] (the hash netc uses for every seeded choice).
pub fn splitmix(z: u64) -> u64 {
    mix(z.wrapping_add(GAMMA))
}

/// The key of mask `mask` at training step `step` (counted from 0 over the
/// whole run, so a resumed run draws the same masks).
pub fn mask_key(seed: u64, step: u64, mask: u32) -> u64 {
    splitmix(splitmix(seed ^ splitmix(step)) ^ u64::from(mask))
}

/// Element `i`'s 64 random bits in the stream of `key`: SplitMix64's
/// output number `i` (counting from 0) when seeded with `key`.
pub fn bits(key: u64, i: u64) -> u64 {
    mix(key.wrapping_add(i.wrapping_add(1).wrapping_mul(GAMMA)))
}

/// How many of the 2^24 values of a 24-bit draw `d` mean "drop" at `rate`:
/// those with `d / 2^24 < rate`, i.e. `d < ⌈rate·2^24⌉` (exact: `rate·2^24`
/// only shifts the exponent). Rates outside [0, 1] clamp.
pub fn drop_threshold(rate: f32) -> u32 {
    let scaled = (f64::from(rate) * f64::from(1u32 << 24)).ceil();
    scaled.clamp(0.0, f64::from(1u32 << 24)) as u32
}

/// Whether element `i` of the stream of `key` is kept under `threshold`
/// (from [`drop_threshold`]).
pub fn keep(key: u64, i: u64, threshold: u32) -> bool {
    (bits(key, i) >> 40) as u32 >= threshold
}

/// Fills `out` with mask `mask` of step `step` at drop rate `rate`: 1.0
/// where the element is kept, 0.0 where it is dropped.
pub fn fill_mask(seed: u64, step: u64, mask: u32, rate: f32, out: &mut [f32]) {
    let key = mask_key(seed, step, mask);
    let threshold = drop_threshold(rate);
    for (i, v) in out.iter_mut().enumerate() {
        *v = if keep(key, i as u64, threshold) {
            1.0
        } else {
            0.0
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_is_splitmix64s_sequential_stream() {
        // Element i is the i-th output of the sequential generator seeded
        // with the key: the counter form computes the same stream.
        let key = mask_key(7, 3, 1);
        let mut s = key;
        for i in 0..1000 {
            s = s.wrapping_add(GAMMA);
            assert_eq!(bits(key, i), mix(s), "element {i}");
        }
    }

    #[test]
    fn thresholds_are_exact() {
        assert_eq!(drop_threshold(0.0), 0);
        assert_eq!(drop_threshold(1.0), 1 << 24);
        assert_eq!(drop_threshold(0.5), 1 << 23);
        assert_eq!(drop_threshold(-1.0), 0);
        assert_eq!(drop_threshold(2.0), 1 << 24);
        // Matches the float comparison d / 2^24 < rate for every d near
        // the boundary.
        for rate in [0.1f32, 0.25, 0.3, 0.7, 0.9999] {
            let t = drop_threshold(rate);
            for d in t.saturating_sub(3)..(t + 3).min(1 << 24) {
                let dropped = (d as f32 / (1u32 << 24) as f32) < rate;
                assert_eq!(dropped, d < t, "rate {rate}, d {d}");
            }
        }
    }

    #[test]
    fn drop_rates_are_statistically_right() {
        let n = 200_000;
        let mut m = vec![0f32; n];
        for (rate, mask) in [(0.1f32, 0u32), (0.5, 1), (0.8, 2)] {
            fill_mask(42, 17, mask, rate, &mut m);
            let dropped = m.iter().filter(|v| **v == 0.0).count() as f64;
            // Binomial standard deviation; 5 sigma.
            let sd = (n as f64 * f64::from(rate) * (1.0 - f64::from(rate))).sqrt();
            assert!(
                (dropped - n as f64 * f64::from(rate)).abs() < 5.0 * sd,
                "rate {rate}: {dropped} of {n} dropped"
            );
            assert!(m.iter().all(|v| *v == 0.0 || *v == 1.0));
        }
    }

    #[test]
    fn steps_masks_and_seeds_give_different_streams() {
        let mut a = vec![0f32; 256];
        let mut b = vec![0f32; 256];
        fill_mask(1, 0, 0, 0.5, &mut a);
        for (seed, step, mask) in [(2, 0, 0), (1, 1, 0), (1, 0, 1)] {
            fill_mask(seed, step, mask, 0.5, &mut b);
            assert_ne!(a, b, "seed {seed} step {step} mask {mask}");
        }
        fill_mask(1, 0, 0, 0.5, &mut b);
        assert_eq!(a, b);
        // Neighbouring elements are uncorrelated: a mask is not a shifted
        // copy of the next step's.
        let mut c = vec![0f32; 257];
        fill_mask(1, 1, 0, 0.5, &mut c);
        assert_ne!(a[..], c[1..]);
    }
}
