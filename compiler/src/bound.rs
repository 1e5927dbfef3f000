//! Numeric ranges for arguments and settings, shared by the layer-argument
//! binder (`args`) and the training-section checker (`train`).

/// The values a numeric hyper-parameter admits: a finite number in an
/// interval whose ends may be open. NaN and the infinities are never
/// admitted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bound {
    /// Lower end.
    pub min: f64,
    /// Whether `min` itself is excluded.
    pub min_open: bool,
    /// Upper end (`f64::INFINITY` for none).
    pub max: f64,
    /// Whether `max` itself is excluded.
    pub max_open: bool,
    /// Why the range is what it is, for the message.
    pub why: &'static str,
}

impl Bound {
    /// Whether `x` lies in the range.
    pub fn admits(&self, x: f64) -> bool {
        x.is_finite()
            && if self.min_open {
                x > self.min
            } else {
                x >= self.min
            }
            && if self.max_open {
                x < self.max
            } else {
                x <= self.max
            }
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = if self.min_open { '(' } else { '[' };
        if self.max.is_infinite() {
            write!(f, "{open}{}, ∞)", self.min)
        } else {
            let close = if self.max_open { ')' } else { ']' };
            write!(f, "{open}{}, {}{close}", self.min, self.max)
        }
    }
}
