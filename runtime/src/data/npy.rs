//! A data set from two `.npy` arrays: examples `x` `[N, ...]` and labels or
//! targets `y` `[N]` (or `[N, 1]`), or `[N, ...]` for several values per
//! example (one-hot rows, multi-label or multi-output regression targets).

use std::path::Path;

use crate::npy::read_npy_with_dtype;

use super::dataset::{check_finite, infer_classes, Dataset};
use super::error::DataError;

/// Loads `x.npy` and `y.npy` as a data set. `y` keeps its shape: what its
/// values mean (class indices, one-hot rows, targets) is for the loss to
/// decide, in [`Dataset::check_targets`]. One value per example that is a
/// non-negative integer sets the `classes` hint to `max + 1`.
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
    let Some((&m, rest)) = y.shape.split_first() else {
        return Err(DataError::shape(
            "the labels are a scalar; they need a leading example axis [N] or [N, ...]",
        )
        .at(yp));
    };
    if m != n {
        return Err(DataError::mismatch(format!(
            "{m} labels but {} holds {n} examples",
            xp.display()
        ))
        .at(yp));
    }
    let target_shape = if rest == [1] {
        Vec::new()
    } else {
        rest.to_vec()
    };
    let classes = if target_shape.is_empty() {
        infer_classes(&y.data)
    } else {
        None
    };
    // The examples first, so that a non-finite value is reported at x's
    // file; whatever `with_targets` still finds is about the labels.
    check_finite(&x).map_err(|e| e.at(xp))?;
    Dataset::with_targets(x, y.data, target_shape, classes)
        .map(|d| d.located(yp, None))
        .map_err(|e| e.at(yp))
}
