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

/// The buffer input `name` goes to, after checking `t`'s shape.
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
    Ok(b.buf)
}
