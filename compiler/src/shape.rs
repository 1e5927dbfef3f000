//! Per-example tensor shapes and the size arithmetic of windows
//! (convolution and pooling), with the explanations diagnostics print.

use std::fmt;

/// The largest size accepted for one dimension or count written in a
/// program (units, filters, kernel, input dims): 2^24.
pub const MAX_DIM: usize = 1 << 24;

/// The largest number of elements one tensor may hold (per example for
/// activations): 2^36, far beyond any real model, small enough that sizes
/// times a batch never overflow.
pub const MAX_ELEMENTS: usize = 1 << 36;

/// The most time steps a recurrent layer may run: each step becomes its
/// own kernels (and, after unrolling, its own graph nodes).
pub const MAX_STEPS: usize = 4096;

/// Per-example dimensions (the batch axis is implicit and symbolic).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    /// Number of per-example elements.
    pub fn numel(&self) -> usize {
        // Saturates: shape inference rejects anything over MAX_ELEMENTS, so
        // a saturated count never reaches lowering.
        self.0.iter().fold(1usize, |a, d| a.saturating_mul(*d))
    }

    /// Number of axes (batch excluded).
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The dims as a plain list `[a, b]` (parameters have no batch axis).
    pub fn plain(&self) -> String {
        format!(
            "[{}]",
            self.0
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Activations print with the symbolic batch first: `[N, 28, 28, 1]`.
impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[N")?;
        for d in &self.0 {
            write!(f, ", {d}")?;
        }
        write!(f, "]")
    }
}

/// Why a window does not fit an axis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WindowError {
    /// `F > W + 2P`.
    TooLarge {
        /// The arithmetic, e.g. `(5 − 7 + 2·0)/1 + 1 = -1`.
        arithmetic: String,
    },
    /// `(W − F + 2P) mod S ≠ 0`: the last positions are not covered.
    StrideDoesNotDivide {
        /// The arithmetic, e.g. `(28 − 5 + 2·0)/2 + 1 = 12.5`.
        arithmetic: String,
        /// The size a floor would give.
        floor: usize,
    },
}

/// Output size of a window of size `f`, stride `s`, padding `p` on each side
/// over an axis of size `w`: `floor((W − F + 2P)/S) + 1`, exact division
/// required. Errors carry the arithmetic with the actual numbers.
pub fn window_out(w: usize, f: usize, s: usize, p: usize) -> Result<usize, WindowError> {
    let padded = w + 2 * p;
    let arithmetic = |res: String| format!("({w} − {f} + 2·{p})/{s} + 1 = {res}");
    if f > padded {
        let num = padded as i64 - f as i64;
        return Err(WindowError::TooLarge {
            arithmetic: arithmetic(format!("{}", num / s as i64 + 1)),
        });
    }
    let num = padded - f;
    if !num.is_multiple_of(s) {
        let exact = num as f64 / s as f64 + 1.0;
        return Err(WindowError::StrideDoesNotDivide {
            arithmetic: arithmetic(format!("{exact:.2}")),
            floor: num / s + 1,
        });
    }
    Ok(num / s + 1)
}

/// `same` padding: output `ceil(W/S)`, total padding
/// `max((out − 1)·S + F − W, 0)` split with the extra pixel after.
/// Returns (output size, padding before, padding after).
pub fn same_out(w: usize, f: usize, s: usize) -> (usize, usize, usize) {
    let out = w.div_ceil(s);
    let total = ((out - 1) * s + f).saturating_sub(w);
    (out, total / 2, total - total / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_arithmetic_matches_the_notes() {
        assert_eq!(window_out(32, 5, 1, 0), Ok(28));
        assert_eq!(window_out(5, 3, 2, 1), Ok(3));
        assert_eq!(window_out(227, 11, 4, 0), Ok(55));
        assert_eq!(window_out(55, 3, 2, 0), Ok(27));
        assert_eq!(window_out(27, 3, 2, 0), Ok(13));
        assert_eq!(window_out(13, 3, 2, 0), Ok(6));
        assert!(matches!(
            window_out(3, 5, 1, 0),
            Err(WindowError::TooLarge { .. })
        ));
        match window_out(28, 5, 2, 0) {
            Err(WindowError::StrideDoesNotDivide { arithmetic, floor }) => {
                assert_eq!(arithmetic, "(28 − 5 + 2·0)/2 + 1 = 12.50");
                assert_eq!(floor, 12);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn same_padding_is_ceil() {
        assert_eq!(same_out(224, 3, 1), (224, 1, 1));
        assert_eq!(same_out(7, 2, 2), (4, 0, 1));
        assert_eq!(same_out(5, 1, 1), (5, 0, 0));
    }
}
