//! Sequences of different lengths brought to the model's length.
//!
//! A loader that reads series of different lengths (a `.ts` file with
//! `@equalLength false`) stores them padded to the longest with zeros **at
//! the start** and keeps each one's true length ([`Dataset::lengths`]).
//! [`Dataset::pad_steps`] then pads them to the model input's `T` steps the
//! same way. Zeros go first, as netc's text classification pads: without
//! masking, a recurrent layer's last step — what a many-to-one classifier
//! reads — then follows the real data instead of a run of zeros. A series
//! longer than `T` is an error naming its file and line: cutting it would
//! drop data silently, so the model must be made long enough.

use crate::tensor::Tensor;

use super::dataset::Dataset;
use super::error::DataError;

impl Dataset {
    /// The same data with every example `steps` time steps long, the time
    /// steps being `x`'s axis 1 (`[N, L]` or `[N, L, features...]`): zeros
    /// are added at the start, or leading padding removed, so each
    /// example's real steps (its last [`lengths`](Dataset::lengths)`[i]`,
    /// or all `L` when no lengths are kept) end at the last step. Sets
    /// `lengths` when it changes the length.
    ///
    /// An example with more than `steps` real steps is an error naming its
    /// file and line (or row), and the longest example's length.
    pub fn pad_steps(mut self, steps: usize) -> Result<Dataset, DataError> {
        self.validate()?;
        let Some(&stored) = self.x.shape.get(1) else {
            return Err(DataError::shape(
                "the examples have no time axis to pad (shape [N]); they need shape [N, T, ...]",
            ));
        };
        if steps == stored {
            return Ok(self);
        }
        let lengths = self
            .lengths
            .take()
            .unwrap_or_else(|| vec![stored; self.len()]);
        let longest = lengths.iter().copied().max().unwrap_or(0);
        if let Some((i, &l)) = lengths.iter().enumerate().find(|(_, &l)| l > steps) {
            return Err(self.at_row(
                i,
                format!(
                    "the series has {l} time steps but the model's input has {steps}; netc pads \
                     shorter series with zeros at the start but does not cut longer ones: give \
                     the input at least {longest} steps, the longest series here"
                ),
            ));
        }
        // Values per time step (features; 1 for a univariate series).
        let per_step = self.x.shape[2..].iter().product::<usize>();
        let (old, new) = (stored * per_step, steps * per_step);
        let mut data = Vec::with_capacity(self.len() * new);
        for example in self.x.data.chunks_exact(old.max(1)).take(self.len()) {
            if new >= old {
                data.resize(data.len() + (new - old), 0.0);
                data.extend_from_slice(example);
            } else {
                // Only padding goes: every length is at most `steps`.
                data.extend_from_slice(&example[old - new..]);
            }
        }
        let mut shape = self.x.shape.clone();
        shape[1] = steps;
        self.x = Tensor::new(shape, data).map_err(|e| DataError::shape(e.to_string()))?;
        self.lengths = Some(lengths);
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Two univariate series stored as 3 steps: true lengths 2 and 3.
    fn ragged() -> Dataset {
        let x = Tensor::new(vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let mut d = Dataset::new(x, vec![0.0, 1.0], Some(2))
            .unwrap()
            .located(Path::new("f.ts"), Some(vec![7, 8]));
        d.lengths = Some(vec![2, 3]);
        d
    }

    #[test]
    fn pads_at_the_start_and_drops_only_padding() {
        let d = ragged().pad_steps(5).unwrap();
        assert_eq!(d.x.shape, vec![2, 5]);
        assert_eq!(
            d.x.data,
            vec![0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 3.0, 4.0, 5.0]
        );
        assert_eq!(d.lengths, Some(vec![2, 3]));
        let d = ragged().pad_steps(3).unwrap();
        assert_eq!(d, ragged());
    }

    #[test]
    fn features_move_with_their_step() {
        let x = Tensor::new(vec![1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let d = Dataset::new(x, vec![0.0], Some(1)).unwrap();
        let d = d.pad_steps(3).unwrap();
        assert_eq!(d.x.shape, vec![1, 3, 2]);
        assert_eq!(d.x.data, vec![0.0, 0.0, 1.0, 2.0, 3.0, 4.0]);
        // Padding added here: the true length is now worth keeping.
        assert_eq!(d.lengths, Some(vec![2]));
    }

    #[test]
    fn a_longer_series_is_an_error_naming_its_line() {
        let e = ragged().pad_steps(2).unwrap_err().to_string();
        assert_eq!(
            e,
            "f.ts: line 8: the series has 3 time steps but the model's input has 2; netc pads \
             shorter series with zeros at the start but does not cut longer ones: give the \
             input at least 3 steps, the longest series here"
        );
    }
}
