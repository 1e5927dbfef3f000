//! Checkpoints of a training run: the weights and the optimizer state in a
//! directory, saved after every epoch and read back by `--resume`.

use crate::engine::Engine;
use crate::tensor::Tensor;
use crate::train::TrainError;
use crate::weights::Weights;
use netc_compiler::kernel::training::TrainingProgram;
use netc_compiler::Graph;
use std::path::{Path, PathBuf};

fn checkpoint_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (
        dir.join("weights.safetensors"),
        dir.join("optimizer.safetensors"),
    )
}

/// Saves the weights and optimizer state of `exe` to `dir`.
pub(crate) fn save(
    dir: &Path,
    g: &Graph,
    tp: &TrainingProgram,
    exe: &Engine,
    epochs_done: usize,
    steps_done: usize,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", dir.display())))?;
    let (wp, op) = checkpoint_paths(dir);
    let mut w = Weights::new(&g.name);
    for p in &exe.program().params {
        let t = Tensor::new(p.shape.clone(), exe.read(p.buf)?.to_vec())
            .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
        w.insert(p.name.clone(), t);
    }
    let mut o = Weights::new(&g.name);
    for s in &tp.params {
        for buf in [s.state1, s.state2].into_iter().flatten() {
            o.insert(
                tp.program.buffers[buf].name.clone(),
                Tensor::vector(exe.read(buf)?.to_vec()),
            );
        }
    }
    o.insert(
        "train.epochs_done",
        Tensor::vector(vec![epochs_done as f32]),
    );
    o.insert("train.steps_done", Tensor::vector(vec![steps_done as f32]));
    // Optimizer state first: a crash between the two renames leaves
    // weights one epoch behind, never ahead of their moments.
    o.save(&op)
        .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    w.save(&wp)
        .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    Ok(())
}

/// Loads the checkpoint in `dir` into `exe`; returns the epochs and steps
/// done.
pub(crate) fn restore(
    dir: &Path,
    tp: &TrainingProgram,
    exe: &mut Engine,
    steps: usize,
) -> Result<(usize, usize), TrainError> {
    let (wp, op) = checkpoint_paths(dir);
    let w = Weights::load(&wp).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    exe.set_weights(&w)?;
    let o = Weights::load(&op).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    for s in &tp.params {
        for buf in [s.state1, s.state2].into_iter().flatten() {
            let name = &tp.program.buffers[buf].name;
            let t = o.get(name).ok_or_else(|| {
                TrainError::Checkpoint(format!("{}: no optimizer state `{name}`", op.display()))
            })?;
            exe.write_buffer(buf, &t.data)
                .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", op.display())))?;
        }
    }
    let counter = |n: &str| {
        o.get(n)
            .and_then(|t| t.data.first().copied())
            .map(|v| v as usize)
    };
    let first_epoch = counter("train.epochs_done")
        .ok_or_else(|| TrainError::Checkpoint(format!("{}: no epoch counter", op.display())))?;
    let global_step = counter("train.steps_done").unwrap_or(first_epoch * steps);
    Ok((first_epoch, global_step))
}
