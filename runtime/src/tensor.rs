//! Host tensors: a shape and a flat, row-major (C order) `f32` buffer.
//!
//! Constructors check that the shape and the buffer agree and return a
//! [`TensorError`] when they do not; nothing here panics on user input.

use thiserror::Error;

/// A dense `f32` tensor in row-major (C) order.
///
/// The fields are public for cheap access by the executor; code that builds
/// a tensor from outside data goes through [`Tensor::new`], which checks that
/// `shape.iter().product() == data.len()`. A tensor with an empty shape is a
/// scalar and holds exactly one element.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements in row-major order.
    pub data: Vec<f32>,
}

/// A shape and a buffer that do not fit together.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TensorError {
    /// The buffer's length is not the shape's element count.
    #[error("shape {shape:?} has {expected} elements but the data has {actual}")]
    LengthMismatch {
        /// The requested shape.
        shape: Vec<usize>,
        /// `shape.iter().product()`.
        expected: usize,
        /// The buffer's length.
        actual: usize,
    },
    /// The element count does not fit in memory's address space.
    #[error("shape {shape:?} has too many elements")]
    TooLarge {
        /// The requested shape.
        shape: Vec<usize>,
    },
    /// The allocator refused the buffer.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
}

/// The number of elements of `shape`, or `None` when the product overflows.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl Tensor {
    /// A tensor from a shape and row-major data.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor, TensorError> {
        let Some(expected) = element_count(&shape) else {
            return Err(TensorError::TooLarge { shape });
        };
        if expected != data.len() {
            return Err(TensorError::LengthMismatch {
                shape,
                expected,
                actual: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor of `shape` with every element `value`.
    pub fn full(shape: Vec<usize>, value: f32) -> Result<Tensor, TensorError> {
        let Some(n) = element_count(&shape) else {
            return Err(TensorError::TooLarge { shape });
        };
        let data = crate::memory::try_filled(n, value, &format!("a tensor of shape {shape:?}"))?;
        Ok(Tensor { shape, data })
    }

    /// A tensor of `shape` filled with zeros.
    pub fn zeros(shape: Vec<usize>) -> Result<Tensor, TensorError> {
        Tensor::full(shape, 0.0)
    }

    /// A rank-0 tensor holding `value`.
    pub fn scalar(value: f32) -> Tensor {
        Tensor {
            shape: Vec::new(),
            data: vec![value],
        }
    }

    /// A rank-1 tensor holding `data`.
    pub fn vector(data: Vec<f32>) -> Tensor {
        Tensor {
            shape: vec![data.len()],
            data,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor has no elements (some dimension is zero).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The same elements under another shape with the same element count.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Tensor, TensorError> {
        Tensor::new(shape, self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_the_element_count() {
        assert!(Tensor::new(vec![2, 3], vec![0.0; 6]).is_ok());
        let e = Tensor::new(vec![2, 3], vec![0.0; 5]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "shape [2, 3] has 6 elements but the data has 5"
        );
        let e = Tensor::new(vec![usize::MAX, 2], vec![]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("shape [{}, 2] has too many elements", usize::MAX)
        );
        assert!(Tensor::zeros(vec![usize::MAX, 3]).is_err());
    }

    #[test]
    fn scalars_and_reshape() {
        let s = Tensor::scalar(2.5);
        assert_eq!((s.rank(), s.len()), (0, 1));
        assert!(Tensor::new(vec![], vec![1.0]).is_ok());
        let t = Tensor::full(vec![2, 2], 1.0).unwrap();
        let r = t.reshape(vec![4]).unwrap();
        assert_eq!(r.shape, vec![4]);
        assert!(r.reshape(vec![3]).is_err());
        assert!(Tensor::zeros(vec![0, 5]).unwrap().is_empty());
    }
}
