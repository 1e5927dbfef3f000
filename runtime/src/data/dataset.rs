//! An in-memory data set: examples stacked along the first axis of one
//! tensor and one label per example, with the operations the training loop
//! needs — validation split, per-epoch shuffling, batching, one-hot targets
//! and reshaping the examples to the model's input shape.

use crate::tensor::{element_count, Tensor};

use super::error::DataError;
use super::shuffle;

/// The largest class count [`infer_classes`] accepts (a bigger "class index"
/// is far more likely a regression target than a label).
pub const MAX_INFERRED_CLASSES: usize = 65_536;

/// Examples and their labels.
///
/// `x` has shape `[N, ...features]`: example `i` is the `i`-th block of
/// [`example_len`](Dataset::example_len) values. `y` holds one value per
/// example: the class index (as `f32`) for classification, or the target
/// value for regression. `classes` is the number of classes when the labels
/// are class indices (`0..classes`); a regression loss ignores it.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Examples, `[N, ...features]`.
    pub x: Tensor,
    /// One label per example.
    pub y: Vec<f32>,
    /// Number of classes when `y` holds class indices.
    pub classes: Option<usize>,
}

impl Dataset {
    /// A data set from stacked examples and their labels; checks that `x`
    /// has one example per label and, when `classes` is given, that every
    /// label is a class index in `0..classes`.
    pub fn new(x: Tensor, y: Vec<f32>, classes: Option<usize>) -> Result<Dataset, DataError> {
        let d = Dataset { x, y, classes };
        d.validate()?;
        Ok(d)
    }

    /// Checks the invariants [`Dataset::new`] establishes (the fields are
    /// public, so a caller that edits them can check again).
    pub fn validate(&self) -> Result<(), DataError> {
        let Some(&n) = self.x.shape.first() else {
            return Err(DataError::shape(
                "the examples tensor is a scalar; it needs a leading example axis [N, ...]",
            ));
        };
        match element_count(&self.x.shape) {
            Some(c) if c == self.x.data.len() => {}
            _ => {
                return Err(DataError::shape(format!(
                    "the examples tensor has shape {:?} but {} values",
                    self.x.shape,
                    self.x.data.len()
                )))
            }
        }
        if n != self.y.len() {
            return Err(DataError::mismatch(format!(
                "{n} examples but {} labels",
                self.y.len()
            )));
        }
        if let Some((i, l)) = self.y.iter().enumerate().find(|(_, l)| !l.is_finite()) {
            return Err(DataError::invalid(format!(
                "label {l} of example {i} is not a finite number"
            )));
        }
        if let Some(k) = self.classes {
            if k == 0 {
                return Err(DataError::invalid(
                    "a classification data set needs at least one class",
                ));
            }
            if let Some((i, &l)) = self.y.iter().enumerate().find(|(_, &l)| !is_class(l, k)) {
                return Err(DataError::invalid(format!(
                    "label {l} of example {i} is not a class index in 0..{k}"
                )));
            }
        }
        Ok(())
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// The shape of one example (`x`'s shape without the leading axis).
    pub fn example_shape(&self) -> &[usize] {
        self.x.shape.get(1..).unwrap_or(&[])
    }

    /// The number of values in one example.
    pub fn example_len(&self) -> usize {
        element_count(self.example_shape()).unwrap_or(0)
    }

    /// How many examples each class has (`None` for regression data).
    pub fn class_counts(&self) -> Option<Vec<usize>> {
        let k = self.classes?;
        let mut counts = vec![0usize; k];
        for &l in &self.y {
            if is_class(l, k) {
                counts[l as usize] += 1;
            }
        }
        Some(counts)
    }

    /// The examples at `indices`, in that order (repeats allowed).
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset, DataError> {
        let (x, y) = self.gather(indices)?;
        Ok(Dataset {
            x,
            y,
            classes: self.classes,
        })
    }

    /// Splits off a validation set: `round(len × val_fraction)` examples
    /// chosen by a permutation seeded with `seed` go to the second data set,
    /// the rest to the first; both keep the original order of their
    /// examples. The same seed always gives the same split. `val_fraction`
    /// must lie in `[0, 1)` and leave at least one training example.
    pub fn split(&self, val_fraction: f64, seed: u64) -> Result<(Dataset, Dataset), DataError> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(DataError::invalid(format!(
                "validation fraction {val_fraction} is not in [0, 1)"
            )));
        }
        let n = self.len();
        let n_val = ((n as f64) * val_fraction).round() as usize;
        if n_val >= n && n > 0 {
            return Err(DataError::invalid(format!(
                "a validation fraction of {val_fraction} leaves no training examples out of {n}"
            )));
        }
        let perm = shuffle::shuffled_indices(n, seed);
        let mut val = perm[..n_val].to_vec();
        let mut train = perm[n_val..].to_vec();
        val.sort_unstable();
        train.sort_unstable();
        Ok((self.subset(&train)?, self.subset(&val)?))
    }

    /// A permutation of `0..len` for one epoch, determined by `epoch_seed`
    /// (e.g. `seed + epoch`); iterate it in chunks and pass each chunk to
    /// [`Dataset::batch`].
    pub fn shuffled_indices(&self, epoch_seed: u64) -> Vec<usize> {
        shuffle::shuffled_indices(self.len(), epoch_seed)
    }

    /// Gathers the examples at `indices` into a batch: `x` of shape
    /// `[B, ...example_shape]` and the labels as `y` of shape `[B]`. Use
    /// [`one_hot`] or [`targets_for`] to shape the labels for a loss.
    pub fn batch(&self, indices: &[usize]) -> Result<(Tensor, Tensor), DataError> {
        let (x, y) = self.gather(indices)?;
        let y = Tensor {
            shape: vec![y.len()],
            data: y,
        };
        Ok((x, y))
    }

    fn gather(&self, indices: &[usize]) -> Result<(Tensor, Vec<f32>), DataError> {
        self.validate()?;
        let n = self.len();
        let e = self.example_len();
        let mut xs = Vec::with_capacity(indices.len().saturating_mul(e));
        let mut ys = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= n {
                return Err(DataError::invalid(format!(
                    "example index {i} is out of range for a data set of {n} examples"
                )));
            }
            xs.extend_from_slice(&self.x.data[i * e..(i + 1) * e]);
            ys.push(self.y[i]);
        }
        let mut shape = self.x.shape.clone();
        shape[0] = indices.len();
        Ok((Tensor { shape, data: xs }, ys))
    }

    /// The same data with each example reshaped to `input_shape` (the
    /// model's per-example input shape, batch excluded), e.g. IDX images
    /// `[N, 28, 28]` to `[N, 28, 28, 1]` or UCR series `[N, 24]` to
    /// `[N, 24, 1]`. Any shape with the same number of values per example
    /// is accepted (row-major order is kept); otherwise the error names both
    /// shapes.
    pub fn fit_to(&self, input_shape: &[usize]) -> Result<Dataset, DataError> {
        self.validate()?;
        let have = self.example_shape();
        let have_len = self.example_len();
        let want_len = element_count(input_shape);
        if want_len != Some(have_len) {
            let want = match want_len {
                Some(w) => format!("{w} values"),
                None => "too many values".to_string(),
            };
            return Err(DataError::shape(format!(
                "the data's examples have shape {have:?} ({have_len} values) but the model's \
                 input has shape {input_shape:?} ({want}); the two must hold the same number \
                 of values per example"
            )));
        }
        let mut shape = Vec::with_capacity(input_shape.len() + 1);
        shape.push(self.len());
        shape.extend_from_slice(input_shape);
        Ok(Dataset {
            x: Tensor {
                shape,
                data: self.x.data.clone(),
            },
            y: self.y.clone(),
            classes: self.classes,
        })
    }
}

fn is_class(l: f32, k: usize) -> bool {
    l.is_finite() && l >= 0.0 && l.fract() == 0.0 && (l as f64) < k as f64
}

/// One-hot rows for class indices: shape `[y.len(), classes]`, row `i`
/// holding 1 at column `y[i]`. Every label must be a class index in
/// `0..classes`.
pub fn one_hot(y: &[f32], classes: usize) -> Result<Tensor, DataError> {
    if classes == 0 {
        return Err(DataError::invalid(
            "one-hot encoding needs at least one class",
        ));
    }
    let len = y
        .len()
        .checked_mul(classes)
        .ok_or_else(|| DataError::invalid("the one-hot matrix is too large"))?;
    let mut data = vec![0.0f32; len];
    for (i, &l) in y.iter().enumerate() {
        if !is_class(l, classes) {
            return Err(DataError::invalid(format!(
                "label {l} of example {i} is not a class index in 0..{classes}"
            )));
        }
        data[i * classes + l as usize] = 1.0;
    }
    Ok(Tensor {
        shape: vec![y.len(), classes],
        data,
    })
}

/// Labels shaped for a model whose per-example output shape is
/// `output_shape`: one value per example (sigmoid + binary cross-entropy,
/// or a regression output) gives `[B, ...output_shape]` holding the labels
/// as they are; `k > 1` outputs with `classes == Some(k)` give one-hot rows
/// `[B, ...output_shape]`. Anything else is an error naming both sides.
pub fn targets_for(
    y: &[f32],
    classes: Option<usize>,
    output_shape: &[usize],
) -> Result<Tensor, DataError> {
    let k = element_count(output_shape)
        .ok_or_else(|| DataError::shape(format!("output shape {output_shape:?} is too large")))?;
    let mut shape = Vec::with_capacity(output_shape.len() + 1);
    shape.push(y.len());
    shape.extend_from_slice(output_shape);
    if k == 1 {
        if let Some(c) = classes {
            if c > 2 {
                return Err(DataError::shape(format!(
                    "the model outputs one value per example (shape {output_shape:?}) but the \
                     data has {c} classes; use a {c}-way output with softmax"
                )));
            }
        }
        return Ok(Tensor {
            shape,
            data: y.to_vec(),
        });
    }
    match classes {
        Some(c) if c == k => {
            let t = one_hot(y, c)?;
            Ok(Tensor {
                shape,
                data: t.data,
            })
        }
        Some(c) => Err(DataError::shape(format!(
            "the model outputs {k} values per example (shape {output_shape:?}) but the data \
             has {c} classes"
        ))),
        None => Err(DataError::shape(format!(
            "the model outputs {k} values per example (shape {output_shape:?}) but the data \
             has one target value per example"
        ))),
    }
}

/// `Some(max + 1)` when every label is a non-negative integer below
/// [`MAX_INFERRED_CLASSES`] (class indices), `None` otherwise (regression
/// targets, or no labels).
pub fn infer_classes(y: &[f32]) -> Option<usize> {
    let mut max = None::<f32>;
    for &l in y {
        if !is_class(l, MAX_INFERRED_CLASSES) {
            return None;
        }
        max = Some(max.map_or(l, |m: f32| m.max(l)));
    }
    max.map(|m| m as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        let x = Tensor::new(vec![n, 2], (0..2 * n).map(|v| v as f32).collect()).unwrap();
        let y = (0..n).map(|i| (i % 3) as f32).collect();
        Dataset::new(x, y, Some(3)).unwrap()
    }

    #[test]
    fn batch_gathers_rows() {
        let d = toy(5);
        let (x, y) = d.batch(&[4, 0, 4]).unwrap();
        assert_eq!(x.shape, vec![3, 2]);
        assert_eq!(x.data, vec![8.0, 9.0, 0.0, 1.0, 8.0, 9.0]);
        assert_eq!(y.shape, vec![3]);
        assert_eq!(y.data, vec![1.0, 0.0, 1.0]);
        assert!(d.batch(&[5]).is_err());
        let (x, y) = d.batch(&[]).unwrap();
        assert_eq!((x.shape, y.shape), (vec![0, 2], vec![0]));
    }

    #[test]
    fn split_partitions() {
        let d = toy(10);
        let (t, v) = d.split(0.3, 1).unwrap();
        assert_eq!((t.len(), v.len()), (7, 3));
        let mut all: Vec<f32> = t.x.data.iter().chain(&v.x.data).copied().collect();
        all.sort_by(f32::total_cmp);
        assert_eq!(all, d.x.data);
        assert!(d.split(1.0, 1).is_err());
        assert!(d.split(-0.1, 1).is_err());
        assert!(d.split(f64::NAN, 1).is_err());
        assert!(d.split(0.96, 1).is_err());
        let (t, v) = d.split(0.0, 1).unwrap();
        assert_eq!((t.len(), v.len()), (10, 0));
    }

    #[test]
    fn new_checks_labels() {
        let x = Tensor::new(vec![2, 1], vec![0.0, 1.0]).unwrap();
        assert!(Dataset::new(x.clone(), vec![0.0], None).is_err());
        assert!(Dataset::new(x.clone(), vec![0.0, 2.0], Some(2)).is_err());
        assert!(Dataset::new(x.clone(), vec![0.0, 0.5], Some(2)).is_err());
        assert!(Dataset::new(x, vec![0.5, -3.0], None).is_ok());
        assert!(Dataset::new(Tensor::scalar(1.0), vec![], None).is_err());
    }

    #[test]
    fn targets() {
        let y = [1.0, 0.0];
        let t = targets_for(&y, Some(2), &[1]).unwrap();
        assert_eq!((t.shape, t.data), (vec![2, 1], vec![1.0, 0.0]));
        let t = targets_for(&y, Some(2), &[2]).unwrap();
        assert_eq!((t.shape, t.data), (vec![2, 2], vec![0.0, 1.0, 1.0, 0.0]));
        assert!(targets_for(&y, Some(3), &[2]).is_err());
        assert!(targets_for(&y, None, &[2]).is_err());
        assert!(targets_for(&[0.0, 5.0], Some(10), &[1]).is_err());
    }

    #[test]
    fn inferred_classes() {
        assert_eq!(infer_classes(&[0.0, 2.0, 1.0]), Some(3));
        assert_eq!(infer_classes(&[0.0, 0.5]), None);
        assert_eq!(infer_classes(&[-1.0]), None);
        assert_eq!(infer_classes(&[1e9]), None);
        assert_eq!(infer_classes(&[]), None);
    }
}
