//! Seeded, platform-independent shuffling: a SplitMix64 stream driving a
//! Fisher–Yates shuffle with unbiased bounded draws. The same seed gives the
//! same permutation on every machine and every version of netc (no external
//! RNG crate whose stream could change under us).

/// A SplitMix64 generator (Steele, Lea & Flood 2014).
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..bound` (Lemire's method with rejection, so
    /// unbiased); 0 when `bound` is 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(bound);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

/// A permutation of `0..n` determined by `seed` (Fisher–Yates).
pub fn shuffled_indices(n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    shuffle(&mut idx, seed);
    idx
}

/// Shuffles `items` in place, determined by `seed` (Fisher–Yates).
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    // Mix the seed once so that seeds 0, 1, 2, ... give unrelated streams.
    let mut rng = SplitMix64::new(seed ^ 0x6E65_7463_6461_7461); // "netcdata"
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // First outputs of SplitMix64 seeded with 0 (reference implementation).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn permutation_is_complete_and_seeded() {
        let a = shuffled_indices(100, 7);
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_eq!(a, shuffled_indices(100, 7));
        assert_ne!(a, shuffled_indices(100, 8));
        assert!(shuffled_indices(0, 1).is_empty());
        assert_eq!(shuffled_indices(1, 1), vec![0]);
    }

    #[test]
    fn below_stays_in_range() {
        let mut r = SplitMix64::new(3);
        for b in 1..50u64 {
            for _ in 0..20 {
                assert!(r.below(b) < b);
            }
        }
        assert_eq!(r.below(0), 0);
    }
}
