//! A data set from two `.npy` arrays: examples `x` `[N, ...]` and labels
//! `y` `[N]` (or `[N, 1]`, or one-hot rows `[N, k]`).

use std::path::Path;

use crate::npy::read_npy_with_dtype;

use super::dataset::{infer_classes, Dataset};
use super::error::DataError;

/// Loads `x.npy` and `y.npy` as a data set. Labels that are all
/// non-negative integers are class indices (`classes = max + 1`); one-hot
/// rows `[N, k]` become class indices with `classes = k`; other labels are
/// regression targets.
pub fn load_npy_pair(x: impl AsRef<Path>, y: impl AsRef<Path>) -> Result<Dataset, DataError> {
    let (xp, yp) = (x.as_ref(), y.as_ref());
    let (x, _) = read_npy_with_dtype(xp)?;
    let (y, _) = read_npy_with_dtype(yp)?;
    if x.shape.is_empty() {
        return Err(DataError::shape(
            "the array is a scalar; it needs a leading example axis [N, ...]",
        )
        .at(xp));
    }
    let n = x.shape[0];
    let (labels, classes) = match y.shape.as_slice() {
        [_] | [_, 1] => (y.data, None),
        [m, k] => {
            let rows: Option<Vec<f32>> = y
                .data
                .chunks_exact((*k).max(1))
                .map(|row| {
                    let ones = row.iter().filter(|&&v| v == 1.0).count();
                    let zeros = row.iter().filter(|&&v| v == 0.0).count();
                    (ones == 1 && ones + zeros == row.len())
                        .then(|| row.iter().position(|&v| v == 1.0).unwrap_or(0) as f32)
                })
                .collect();
            match rows {
                Some(r) if *k > 0 && r.len() == *m => (r, Some(*k)),
                _ => {
                    return Err(DataError::shape(format!(
                        "labels of shape {:?} are neither one value per example nor one-hot rows",
                        y.shape
                    ))
                    .at(yp))
                }
            }
        }
        s => {
            return Err(DataError::shape(format!(
                "labels must have shape [N], [N, 1] or one-hot [N, k]; this array has {s:?}"
            ))
            .at(yp))
        }
    };
    if labels.len() != n {
        return Err(DataError::mismatch(format!(
            "{} labels but {} holds {n} examples",
            labels.len(),
            xp.display()
        ))
        .at(yp));
    }
    let classes = classes.or_else(|| infer_classes(&labels));
    Dataset::new(x, labels, classes).map_err(|e| e.at(yp))
}
