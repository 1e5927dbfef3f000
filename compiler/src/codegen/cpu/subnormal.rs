//! Subnormal floats flushed to zero while kernels run, as XLA and
//! TensorFlow run their CPU kernels.
//!
//! An operation whose input or result is subnormal (below 1.18e-38 in
//! magnitude) takes a microcode assist on x86 cores: about a hundred cycles
//! instead of one. Training makes such values as it converges (Adam's
//! second moment of a gradient that has almost vanished, the tails of a
//! softmax), and the course CNN's third epoch ran 20 % slower than its
//! first for that alone. With the flush, such inputs read as zero (x86
//! DAZ) and such results are zero (FTZ; aarch64 FZ does both): a change of
//! at most 1.18e-38 in any value, and no change to the others.
//!
//! The mode is the thread's (MXCSR, FPCR), so [`FlushSubnormals`] sets it
//! for the duration of a run and restores the caller's afterwards, and the
//! worker pool ([`super::parallel`]) runs each job's pieces in the mode of
//! the thread that started the job. Kernels called directly (tests,
//! benches) run in whatever mode their thread has, so the code
//! generators' bit-identity checks compare like with like; the kernel-IR
//! interpreter keeps subnormals.

/// The calling thread's floating-point control word (x86 MXCSR, aarch64
/// FPCR; 0 elsewhere).
pub fn mode() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: stores the 4-byte MXCSR into `csr`.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags))
        };
        u64::from(csr)
    }
    #[cfg(target_arch = "aarch64")]
    {
        let fpcr: u64;
        // SAFETY: reads FPCR, which every EL0 thread may.
        unsafe { std::arch::asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack)) };
        fpcr
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        0
    }
}

/// Sets the calling thread's floating-point control word (a value [`mode`]
/// returned, possibly with flush bits added).
pub fn set_mode(m: u64) {
    #[cfg(target_arch = "x86_64")]
    {
        let csr = m as u32;
        // SAFETY: loads MXCSR from `csr`; every value `mode` returns, with
        // FTZ/DAZ set or not, is valid (no reserved bits).
        unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags)) };
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: writes FPCR with a value read from it, FZ set or not.
    unsafe {
        std::arch::asm!("msr fpcr, {}", in(reg) m, options(nomem, nostack))
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = m;
}

/// `m` with subnormal inputs and results flushed to zero.
pub fn flushing(m: u64) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // FTZ (bit 15) and DAZ (bit 6).
        m | 0x8040
    }
    #[cfg(target_arch = "aarch64")]
    {
        // FZ (bit 24).
        m | (1 << 24)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        m
    }
}

/// Flushes subnormals on this thread until dropped, then restores the
/// mode it found.
#[must_use = "the mode is restored when the guard is dropped"]
pub struct FlushSubnormals {
    saved: u64,
}

impl FlushSubnormals {
    /// Starts flushing on the calling thread.
    pub fn begin() -> Self {
        let saved = mode();
        set_mode(flushing(saved));
        FlushSubnormals { saved }
    }
}

impl Drop for FlushSubnormals {
    fn drop(&mut self) {
        set_mode(self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_flushes_and_restores() {
        let tiny = std::hint::black_box(1.0e-30f32);
        let before = flushing(mode()) != mode();
        let kept = std::hint::black_box(tiny * 1.0e-10);
        assert!(kept > 0.0 && !kept.is_normal());
        {
            let _flush = FlushSubnormals::begin();
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
            assert_eq!(
                std::hint::black_box(tiny) * std::hint::black_box(1.0e-10),
                0.0
            );
        }
        // The flush bits are as found (x86's sticky exception flags, in
        // the same word, may have changed).
        assert_eq!(flushing(mode()) != mode(), before);
        assert_eq!(
            std::hint::black_box(tiny) * std::hint::black_box(1.0e-10),
            kept
        );
    }
}
