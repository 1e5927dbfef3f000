//! Where a weights file's tensors and an input tensor go among a program's
//! buffers, checked once for both executors (CPU and CUDA).

use crate::{Tensor, Weights, WeightsError};
use netc_compiler::kernel::ir::Program;

/// The buffer of each of `p`'s parameters with its tensor from `w`, after
/// checking that `w` holds exactly those parameters with their shapes.
pub(crate) fn weight_buffers<'w>(
    p: &Program,
    w: &'w Weights,
) -> Result<Vec<(usize, &'w Tensor)>, WeightsError> {
    let expected: Vec<(String, Vec<usize>)> = p
        .params
        .iter()
        .map(|b| (b.name.clone(), b.shape.clone()))
        .collect();
    w.validate(&expected)?;
    Ok(p.params
        .iter()
        .filter_map(|b| w.get(&b.name).map(|t| (b.buf, t)))
        .collect())
}

/// The buffer input `name` goes to, after checking `t`'s shape and, for a
/// token input, that every id is an integer in `0..vocab` (the kernels
/// would read an out-of-range id as a zero row; a clear error is better).
pub(crate) fn input_buffer(p: &Program, name: &str, t: &Tensor) -> Result<usize, String> {
    let b = p
        .inputs
        .iter()
        .find(|i| i.name == name)
        .ok_or_else(|| format!("the model has no input `{name}`"))?;
    if t.shape != b.shape {
        return Err(format!(
            "input `{name}` has shape {:?}, but the model expects {:?}",
            t.shape, b.shape
        ));
    }
    if let Some(vocab) = b.vocab {
        check_token_ids(name, &t.data, &b.shape, vocab)?;
    }
    Ok(b.buf)
}

/// Every id in `data` (of `shape`, batch first) is a whole number in
/// `0..vocab`; else an error naming the input, the id, where it is and the
/// vocabulary.
pub(crate) fn check_token_ids(
    name: &str,
    data: &[f32],
    shape: &[usize],
    vocab: usize,
) -> Result<(), String> {
    let per_example = shape.iter().skip(1).product::<usize>().max(1);
    let bad = data
        .iter()
        .position(|&x| !(x >= 0.0 && x.fract() == 0.0 && (x as f64) < vocab as f64));
    match bad {
        None => Ok(()),
        Some(i) => Err(format!(
            "input `{name}`: token id {} (example {}, position {}) is outside the vocabulary of {vocab} ids (0..{vocab})",
            data[i],
            i / per_example,
            i % per_example
        )),
    }
}
