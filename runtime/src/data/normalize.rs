//! Input normalization: a constant scale (`1/255` for 8-bit images) and the
//! z-score `(x − mean) / std`, whose statistics are computed on the training
//! set only and then applied unchanged to the validation and test sets (and
//! saved with a model, so inference sees the same transform).

use serde_json::json;

use crate::tensor::Tensor;

use super::dataset::Dataset;
use super::error::DataError;

/// Standard deviations below this are treated as 1 (a constant feature is
/// only centred, never divided by ~0).
pub const MIN_STD: f32 = 1e-7;

impl Dataset {
    /// Multiplies every input value by `factor` (e.g. `1.0 / 255.0` to map
    /// 8-bit pixels to `[0, 1]`). Labels are untouched.
    pub fn scale(&mut self, factor: f32) {
        for v in &mut self.x.data {
            *v *= factor;
        }
    }

    /// Maps byte-valued images to `[0, 1]`: when every input value is an
    /// integer in `[0, 255]` and some exceed 1, divides them all by 255
    /// and returns `true`. Data already in `[0, 1]`, or not byte-valued,
    /// is left as it is.
    pub fn scale_bytes_to_unit(&mut self) -> bool {
        let d = &self.x.data;
        let bytes = d
            .iter()
            .all(|v| v.fract() == 0.0 && (0.0..=255.0).contains(v))
            && d.iter().any(|v| *v > 1.0);
        if bytes {
            // Division, not `scale(1/255)`: exactly the stored pixel / 255.
            self.x.data.iter_mut().for_each(|v| *v /= 255.0);
        }
        bytes
    }
}

/// Z-score statistics: `mean` and `std` hold either one entry per feature
/// (per value of an example, [`ZScore::fit`]) or a single entry shared by
/// all values ([`ZScore::fit_global`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ZScore {
    /// Means, per feature or one for all.
    pub mean: Vec<f32>,
    /// Standard deviations (population; entries below [`MIN_STD`] are 1).
    pub std: Vec<f32>,
}

impl ZScore {
    /// Per-feature statistics of a training set: for every position of an
    /// example, the mean and standard deviation over all examples.
    pub fn fit(train: &Dataset) -> Result<ZScore, DataError> {
        train.validate()?;
        let n = train.len();
        let e = train.example_len();
        if n == 0 {
            return Err(DataError::invalid(
                "cannot compute z-score statistics of an empty data set",
            ));
        }
        let mut sum = vec![0f64; e];
        for row in train.x.data.chunks_exact(e.max(1)) {
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += f64::from(v);
            }
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / n as f64).collect();
        let mut sq = vec![0f64; e];
        for row in train.x.data.chunks_exact(e.max(1)) {
            for ((s, &v), m) in sq.iter_mut().zip(row).zip(&mean) {
                let d = f64::from(v) - m;
                *s += d * d;
            }
        }
        Ok(ZScore {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std: sq.iter().map(|s| guard((s / n as f64).sqrt())).collect(),
        })
    }

    /// One mean and standard deviation over every input value of a training
    /// set (the usual choice for images, e.g. MNIST ≈ 0.1307 / 0.3081 after
    /// scaling by 1/255).
    pub fn fit_global(train: &Dataset) -> Result<ZScore, DataError> {
        train.validate()?;
        let data = &train.x.data;
        if data.is_empty() {
            return Err(DataError::invalid(
                "cannot compute z-score statistics of an empty data set",
            ));
        }
        let n = data.len() as f64;
        let mean = data.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = data
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        Ok(ZScore {
            mean: vec![mean as f32],
            std: vec![guard(var.sqrt())],
        })
    }

    /// Applies the statistics to a data set's inputs (train, validation or
    /// test alike).
    pub fn apply(&self, data: &mut Dataset) -> Result<(), DataError> {
        data.validate()?;
        self.apply_tensor(&mut data.x)
    }

    /// Applies the statistics to stacked examples `[N, ...]` (e.g. a batch
    /// given to `netc run`).
    pub fn apply_tensor(&self, x: &mut Tensor) -> Result<(), DataError> {
        if self.mean.len() != self.std.len() || self.mean.is_empty() {
            return Err(DataError::invalid(format!(
                "z-score statistics have {} means and {} standard deviations",
                self.mean.len(),
                self.std.len()
            )));
        }
        let f = self.mean.len();
        if f == 1 {
            let (m, s) = (self.mean[0], self.std[0]);
            x.data.iter_mut().for_each(|v| *v = (*v - m) / s);
            return Ok(());
        }
        let example: usize = x.shape.iter().skip(1).product();
        if example != f || x.data.len() % f != 0 {
            return Err(DataError::shape(format!(
                "z-score statistics are for {f} values per example but the data has shape {:?} \
                 ({example} values per example)",
                x.shape
            )));
        }
        for row in x.data.chunks_exact_mut(f) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / s;
            }
        }
        Ok(())
    }

    /// The statistics as JSON: `{"mean": [...], "std": [...]}`.
    pub fn to_json(&self) -> String {
        json!({ "mean": self.mean, "std": self.std }).to_string()
    }

    /// Statistics from [`ZScore::to_json`]'s text.
    pub fn from_json(text: &str) -> Result<ZScore, DataError> {
        let bad = |why: &str| DataError::format(format!("invalid z-score statistics: {why}"));
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
        let list = |key: &str| -> Result<Vec<f32>, DataError> {
            v.get(key)
                .and_then(|a| a.as_array())
                .ok_or_else(|| bad(&format!("no \"{key}\" array")))?
                .iter()
                .map(|x| {
                    x.as_f64()
                        .map(|f| f as f32)
                        .ok_or_else(|| bad(&format!("\"{key}\" holds a non-number")))
                })
                .collect()
        };
        let z = ZScore {
            mean: list("mean")?,
            std: list("std")?,
        };
        if z.mean.len() != z.std.len() || z.mean.is_empty() {
            return Err(bad(
                "\"mean\" and \"std\" must be non-empty and of equal length",
            ));
        }
        if z.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(bad("every standard deviation must be positive"));
        }
        Ok(z)
    }
}

fn guard(std: f64) -> f32 {
    let s = std as f32;
    if s.is_finite() && s >= MIN_STD {
        s
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_and_json() {
        let x = Tensor::new(vec![2, 2], vec![0.0, 2.0, 4.0, 6.0]).unwrap();
        let mut d = Dataset::new(x, vec![0.0, 1.0], Some(2)).unwrap();
        let z = ZScore::fit_global(&d).unwrap();
        assert_eq!(z.mean, vec![3.0]);
        z.apply(&mut d).unwrap();
        let m: f32 = d.x.data.iter().sum::<f32>() / 4.0;
        assert!(m.abs() < 1e-6);
        let back = ZScore::from_json(&z.to_json()).unwrap();
        assert_eq!(back, z);
        assert!(ZScore::from_json("{\"mean\": [1], \"std\": [0]}").is_err());
        assert!(ZScore::from_json("nope").is_err());
    }

    #[test]
    fn constant_feature_is_centred_only() {
        let x = Tensor::new(vec![3, 1], vec![5.0, 5.0, 5.0]).unwrap();
        let mut d = Dataset::new(x, vec![0.0; 3], None).unwrap();
        let z = ZScore::fit(&d).unwrap();
        assert_eq!(z.std, vec![1.0]);
        z.apply(&mut d).unwrap();
        assert_eq!(d.x.data, vec![0.0; 3]);
    }
}
