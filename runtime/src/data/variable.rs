//! Data for a variable-length model (`input x: [*, F]`, `tokens[*]`).
//!
//! Each example is laid out with its real steps first and padding after
//! (zeros; token id 0, `<pad>`), its length kept, and the whole data set
//! (training and test together) as long as its longest example: the
//! length the model is instantiated with (`masking::instantiate`). A batch's
//! mask ([`Dataset::masks`]) is 1 at each example's real steps and 0
//! after; the compiled model skips the padding, so the results do not
//! depend on how much of it there is.
//!
//! Training pads each batch only to its own longest member, rounded up to
//! a multiple of ⌈T/8⌉ ([`padded_length`]), so at most eight step
//! programs are compiled per run; with `bucket: true` batches are made of
//! examples of similar lengths ([`Dataset::bucketed`]), which leaves little
//! padding to compute.
//!
//! Per-step targets that follow the input's time axis (a tagger, a
//! language model) are cut to the same length; the cut positions are
//! padding (label −1) by construction.

use super::dataset::{Dataset, PAD_LABEL};
use super::error::DataError;
use super::text::PAD_ID;
use crate::tensor::Tensor;

impl Dataset {
    /// The same data with each example's real steps first and padding
    /// after, and its length in `lengths`. Token ids (`tokens`): the real
    /// steps are the ids that are not `<pad>`, in order, wherever the
    /// loader put the padding. Numbers: the last `lengths[i]` steps (as
    /// the `.ts` loader pads), or every step when no lengths are kept.
    pub fn pad_at_end(mut self, tokens: bool) -> Result<Dataset, DataError> {
        self.validate()?;
        if self.padded_at_end {
            return Ok(self);
        }
        let Some(&stored) = self
            .x
            .shape
            .get(1)
            .filter(|_| !tokens || self.x.shape.len() == 2)
        else {
            return Err(DataError::shape(format!(
                "a variable-length input reads sequences, [N, T{}]; the data has shape {:?}",
                if tokens { "" } else { ", F" },
                self.x.shape
            )));
        };
        let per_step = self.x.shape[2..].iter().product::<usize>().max(1);
        let e = stored * per_step;
        let mut lengths = Vec::with_capacity(self.len());
        let mut data = Vec::with_capacity(self.x.data.len());
        for (i, example) in self
            .x
            .data
            .chunks_exact(e.max(1))
            .take(self.len())
            .enumerate()
        {
            let pad = if tokens { PAD_ID as f32 } else { 0.0 };
            let real: Vec<f32> = if tokens {
                example.iter().copied().filter(|&v| v != pad).collect()
            } else {
                let l = self.lengths.as_ref().map_or(stored, |l| l[i]);
                example[(stored - l) * per_step..].to_vec()
            };
            lengths.push(real.len() / per_step);
            data.extend_from_slice(&real);
            data.resize(data.len() + (e - real.len()), pad);
        }
        self.x =
            Tensor::new(self.x.shape.clone(), data).map_err(|e| DataError::shape(e.to_string()))?;
        self.lengths = Some(lengths);
        self.padded_at_end = true;
        Ok(self)
    }

    /// The longest example's number of real steps (after
    /// [`Dataset::pad_at_end`]).
    pub fn longest(&self) -> usize {
        match &self.lengths {
            Some(l) => l.iter().copied().max().unwrap_or(0),
            None => self.x.shape.get(1).copied().unwrap_or(0),
        }
    }

    /// The same data `steps` long: padding cut or added at the end of
    /// `x` (and of per-step targets when `targets_follow`, whose added
    /// positions are padding, −1). Every example must fit.
    pub fn with_steps(mut self, steps: usize, targets_follow: bool) -> Result<Dataset, DataError> {
        let stored = self.x.shape.get(1).copied().unwrap_or(0);
        if let Some((i, l)) = self
            .lengths
            .iter()
            .flatten()
            .enumerate()
            .find(|(_, &l)| l > steps)
        {
            return Err(self.at_row(
                i,
                format!("the sequence has {l} steps, more than the {steps} it is given"),
            ));
        }
        let resize = |v: &[f32], n: usize, old: usize, new: usize, fill: f32| -> Vec<f32> {
            let mut out = Vec::with_capacity(n * new);
            for ex in v.chunks_exact(old.max(1)).take(n) {
                out.extend(ex.iter().copied().take(new));
                out.resize(out.len() + new.saturating_sub(old), fill);
            }
            out
        };
        let n = self.len();
        let per_step = self.x.shape[2..].iter().product::<usize>().max(1);
        let pad = if self.text.is_some() {
            PAD_ID as f32
        } else {
            0.0
        };
        let data = resize(&self.x.data, n, stored * per_step, steps * per_step, pad);
        let mut shape = self.x.shape.clone();
        shape[1] = steps;
        self.x = Tensor::new(shape, data).map_err(|e| DataError::shape(e.to_string()))?;
        if targets_follow && self.target_shape.first() == Some(&stored) {
            let per = self.target_shape[1..].iter().product::<usize>().max(1);
            self.y = resize(&self.y, n, stored * per, steps * per, PAD_LABEL);
            self.target_shape[0] = steps;
        }
        Ok(self)
    }

    /// The masks of the examples `indices`, `[indices.len(), T]`: 1 at
    /// each one's real steps, 0 at its padding.
    pub fn masks(&self, indices: &[usize]) -> Vec<f32> {
        let steps = self.x.shape.get(1).copied().unwrap_or(0);
        self.masks_at(indices, steps)
    }

    /// [`Dataset::masks`] for a batch `steps` long.
    fn masks_at(&self, indices: &[usize], steps: usize) -> Vec<f32> {
        let stored = self.x.shape.get(1).copied().unwrap_or(0);
        let lengths = indices
            .iter()
            .map(|&i| self.lengths.as_ref().map_or(stored, |l| l[i]));
        length_masks(lengths, steps)
    }
}

/// Masks `[n, steps]` of sequences of the given lengths: 1 at each one's
/// first `length` steps, 0 after.
pub fn length_masks(lengths: impl Iterator<Item = usize>, steps: usize) -> Vec<f32> {
    lengths
        .flat_map(|l| (0..steps).map(move |t| if t < l { 1.0 } else { 0.0 }))
        .collect()
}

/// The length a batch whose longest member has `longest` real steps is
/// padded to, in data `steps` long: rounded up to a multiple of
/// ⌈steps/8⌉ (so a run compiles at most eight lengths), at most `steps`.
pub fn padded_length(longest: usize, steps: usize) -> usize {
    let granule = steps.div_ceil(8).max(1);
    longest
        .max(1)
        .div_ceil(granule)
        .saturating_mul(granule)
        .min(steps)
}

impl Dataset {
    /// `order` regrouped so that each run of `batch` examples has similar
    /// lengths: windows of eight batches are sorted by length and cut into
    /// batches, and the batches are shuffled (by `seed`). A trailing
    /// partial batch stays last. Without lengths, `order` itself.
    pub fn bucketed(&self, order: Vec<usize>, batch: usize, seed: u64) -> Vec<usize> {
        let Some(lengths) = &self.lengths else {
            return order;
        };
        let batch = batch.max(1);
        let whole = order.len() / batch * batch;
        let (head, tail) = order.split_at(whole);
        let mut batches: Vec<Vec<usize>> = Vec::with_capacity(whole / batch);
        for window in head.chunks(8 * batch) {
            let mut w = window.to_vec();
            w.sort_by_key(|&i| lengths[i]);
            batches.extend(w.chunks(batch).map(<[usize]>::to_vec));
        }
        super::shuffle::shuffle(&mut batches, seed);
        let mut out: Vec<usize> = batches.into_iter().flatten().collect();
        out.extend_from_slice(tail);
        out
    }

    /// The examples `indices` as a batch `steps` long (padding cut from
    /// `x`, and from per-step targets when `targets_follow`): the
    /// [`padded_length`] of their longest member, for instance.
    pub fn batch_steps(
        &self,
        indices: &[usize],
        steps: usize,
        targets_follow: bool,
    ) -> Result<(Tensor, Tensor, Vec<f32>), DataError> {
        let (x, y) = self.batch(indices)?;
        let stored = self.x.shape.get(1).copied().unwrap_or(0);
        if steps == stored {
            return Ok((x, y, self.masks_at(indices, steps)));
        }
        if steps > stored {
            return Err(DataError::shape(format!(
                "a batch of {steps} steps from data {stored} long"
            )));
        }
        let n = indices.len();
        let cut = |v: &[f32], old: usize, new: usize| -> Vec<f32> {
            v.chunks_exact(old.max(1))
                .take(n)
                .flat_map(|e| e[..new].iter().copied())
                .collect()
        };
        let per_step = self.x.shape[2..].iter().product::<usize>().max(1);
        let mut xs = x.shape.clone();
        xs[1] = steps;
        let x = Tensor::new(xs, cut(&x.data, stored * per_step, steps * per_step))
            .map_err(|e| DataError::shape(e.to_string()))?;
        let y = if targets_follow && y.shape.get(1) == Some(&stored) {
            let per = y.shape[2..].iter().product::<usize>().max(1);
            let mut ys = y.shape.clone();
            ys[1] = steps;
            Tensor::new(ys, cut(&y.data, stored * per, steps * per))
                .map_err(|e| DataError::shape(e.to_string()))?
        } else {
            y
        };
        Ok((x, y, self.masks_at(indices, steps)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(x: Vec<f32>, shape: Vec<usize>, lengths: Option<Vec<usize>>) -> Dataset {
        let n = shape[0];
        let mut d = Dataset::new(Tensor::new(shape, x).unwrap(), vec![0.0; n], None).unwrap();
        d.lengths = lengths;
        d
    }

    #[test]
    fn series_padded_at_the_start_move_to_the_front() {
        // Two series of 2 features, stored 3 steps long; true lengths 2, 3.
        let d = numbers(
            vec![0., 0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10.],
            vec![2, 3, 2],
            Some(vec![2, 3]),
        )
        .pad_at_end(false)
        .unwrap();
        assert_eq!(
            d.x.data,
            vec![1., 2., 3., 4., 0., 0., 5., 6., 7., 8., 9., 10.]
        );
        assert_eq!(d.lengths, Some(vec![2, 3]));
        assert_eq!(d.masks(&[0, 1]), vec![1., 1., 0., 1., 1., 1.]);
        let d = d.with_steps(5, false).unwrap();
        assert_eq!(d.x.shape, vec![2, 5, 2]);
        assert_eq!(d.masks(&[0]), vec![1., 1., 0., 0., 0.]);
        assert!(d.with_steps(2, false).is_err());
    }

    #[test]
    fn token_ids_keep_their_order_and_lose_the_pad_ids() {
        let d = numbers(vec![0., 0., 5., 6., 7., 0., 8., 0.], vec![2, 4], None)
            .pad_at_end(true)
            .unwrap();
        assert_eq!(d.x.data, vec![5., 6., 0., 0., 7., 8., 0., 0.]);
        assert_eq!(d.lengths, Some(vec![2, 2]));
        assert_eq!(d.longest(), 2);
    }

    #[test]
    fn batches_are_padded_to_their_longest_member_rounded() {
        assert_eq!(padded_length(7, 29), 8);
        assert_eq!(padded_length(21, 29), 24);
        assert_eq!(padded_length(29, 29), 29);
        assert_eq!(padded_length(0, 29), 4);
        assert_eq!(padded_length(3, 5), 3);
        // Two series, lengths 1 and 2 of 3 stored steps; one feature.
        let d = numbers(vec![1., 0., 0., 2., 3., 0.], vec![2, 3], Some(vec![1, 2]));
        let d = Dataset {
            padded_at_end: true,
            ..d
        };
        let (x, _, m) = d.batch_steps(&[0], 1, false).unwrap();
        assert_eq!((x.shape, x.data, m), (vec![1, 1], vec![1.], vec![1.]));
        let (x, _, m) = d.batch_steps(&[1, 0], 2, false).unwrap();
        assert_eq!((x.data, m), (vec![2., 3., 1., 0.], vec![1., 1., 1., 0.]));
    }

    #[test]
    fn buckets_group_similar_lengths() {
        let lengths: Vec<usize> = (0..64).map(|i| (i * 37) % 29 + 1).collect();
        let d = numbers(vec![0.; 64 * 29], vec![64, 29], Some(lengths.clone()));
        let order: Vec<usize> = (0..64).collect();
        let b = d.bucketed(order.clone(), 4, 9);
        let mut sorted = b.clone();
        sorted.sort();
        assert_eq!(sorted, order, "a permutation");
        // Within each window of 8 batches the spread of a batch is small.
        let spread: usize = b
            .chunks(4)
            .map(|c| {
                let l: Vec<usize> = c.iter().map(|&i| lengths[i]).collect();
                l.iter().max().unwrap() - l.iter().min().unwrap()
            })
            .sum();
        let unbucketed: usize = order
            .chunks(4)
            .map(|c| {
                let l: Vec<usize> = c.iter().map(|&i| lengths[i]).collect();
                l.iter().max().unwrap() - l.iter().min().unwrap()
            })
            .sum();
        assert!(spread * 3 < unbucketed, "{spread} vs {unbucketed}");
    }

    #[test]
    fn per_step_targets_are_cut_with_the_steps() {
        let mut d = numbers(vec![3., 4., 0., 0.], vec![1, 4], None);
        d.y = vec![1., 2., PAD_LABEL, PAD_LABEL];
        d.target_shape = vec![4];
        let d = d.pad_at_end(true).unwrap().with_steps(2, true).unwrap();
        assert_eq!(d.x.data, vec![3., 4.]);
        assert_eq!(d.y, vec![1., 2.]);
        assert_eq!(d.target_shape, vec![2]);
    }
}
