//! The arithmetic precision of GPU contractions: plain f32 (the default,
//! what the CPU backend computes) or the opt-in TF32 tensor-core path.
//!
//! TF32 keeps f32's 8-bit exponent and a 10-bit mantissa. The TF32 path
//! rounds both operands of every product to TF32 (`cvt.rna.tf32.f32`:
//! round to nearest, ties away from zero) and accumulates the products in
//! f32 with `mma.sync` (see the `register_tiled` module); the result
//! differs from the f32 product by about 2^-11 of the sum of |a·b|, not
//! by f32 rounding, so it is never the default.

/// How contractions multiply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Every product and sum in f32 (`fma.rn.f32`), as on the CPU.
    #[default]
    F32,
    /// Operands rounded to TF32, products accumulated in f32 by the
    /// tensor cores (`mma.sync ... .tf32`); only register-tiled
    /// contractions use it, the others stay f32.
    Tf32,
}

/// Options of PTX generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PtxOptions {
    /// The precision of register-tiled contractions.
    pub precision: Precision,
}

/// `x` rounded to TF32 as `cvt.rna.tf32.f32` does: the mantissa cut to
/// its top 10 bits, rounding to nearest with ties away from zero (adding
/// half of the dropped unit to the magnitude bits does exactly that, a
/// carry into the exponent included). NaNs and infinities pass
/// unchanged.
pub fn tf32(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    f32::from_bits((x.to_bits() + 0x1000) & !0x1fff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf32_rounds_to_ten_mantissa_bits_ties_away() {
        // 1 + 2^-10 is representable; 1 + 2^-11 is a tie, rounded away
        // from zero to 1 + 2^-10 (and −(1 + 2^-11) to −(1 + 2^-10));
        // just below the tie rounds down.
        let ulp = 2f32.powi(-10);
        assert_eq!(tf32(1.0 + ulp), 1.0 + ulp);
        assert_eq!(tf32(1.0 + ulp / 2.0), 1.0 + ulp);
        assert_eq!(tf32(-(1.0 + ulp / 2.0)), -(1.0 + ulp));
        assert_eq!(tf32(1.0 + ulp / 2.0 - 2f32.powi(-23)), 1.0);
        // The largest mantissa rounds up into the next binade.
        assert_eq!(tf32(2.0 - 2f32.powi(-23)), 2.0);
        assert_eq!(tf32(f32::INFINITY), f32::INFINITY);
        assert!(tf32(f32::NAN).is_nan());
    }
}
