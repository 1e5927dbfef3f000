//! The training loop: batches from a [`Dataset`], one compiled training
//! step per batch (forward, loss, gradients and optimizer updates all in
//! generated kernels), evaluation after each epoch, early stopping,
//! atomic checkpoints and exact resumption.

use crate::checkpoint::{self, Checkpoint, CheckpointError, Position, Settings};
use crate::cuda::{CudaError, DeviceShortfall, Footprint};
use crate::data::augment::augment_batch;
use crate::data::variable::{length_masks, padded_length};
use crate::data::Dataset;
use crate::engine::{Device, Engine, Target};
use crate::exec::{ExecError, Executable};
use crate::fault;
use crate::tensor::Tensor;
use crate::weights::Weights;
use netc_compiler::codegen::cpu::KernelPath;
use netc_compiler::codegen::ptx::PtxOptions;

/// A set of weights' `data.*` metadata entries.
type Metadata = std::collections::BTreeMap<String, String>;
use netc_compiler::kernel::ir::BufKind;
use netc_compiler::kernel::optim::slot;
use netc_compiler::kernel::training::TrainingProgram;
use netc_compiler::masking;
use netc_compiler::pipeline::{
    lower_training, Compilation, CompileOptions, Forward, OptLevel, PipelineError,
};
use netc_compiler::train::{Loss, Optimizer, Schedule, TrainConfig};
use netc_compiler::Graph;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use thiserror::Error;

/// Why training stopped with an error.
#[derive(Debug, Error)]
pub enum TrainError {
    /// The training settings are out of range or contradict each other
    /// (the checker reports the same problems with source spans; a library
    /// caller that builds or edits a [`TrainConfig`] gets them here).
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Config(Vec<netc_compiler::train::ConfigError>),
    /// The model cannot be trained as written.
    #[error("{0}")]
    Model(String),
    /// The data does not fit the model.
    #[error("{0}")]
    Data(String),
    /// The model could not be compiled (training graph or kernels).
    #[error(transparent)]
    Compile(#[from] PipelineError),
    /// Running a kernel failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A checkpoint could not be read, written or resumed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A step produced a non-finite loss, gradient or weight; nothing
    /// from that point on was saved.
    #[error("{}", diverged_message(*epoch, *step, what, kept))]
    Diverged {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step within the epoch.
        step: usize,
        /// The first non-finite quantity, e.g. "the gradient of `fc.weight` is NaN".
        what: String,
        /// The checkpoint directory left as it was, and the epochs it holds.
        kept: Option<(PathBuf, usize)>,
    },
}

fn diverged_message(
    epoch: usize,
    step: usize,
    what: &str,
    kept: &Option<(PathBuf, usize)>,
) -> String {
    let kept = match kept {
        Some((dir, n)) if *n > 0 => format!(
            "; the checkpoint in {} still holds epoch {n}",
            dir.display()
        ),
        Some(_) | None => String::new(),
    };
    format!(
        "training diverged in epoch {epoch}, step {step}: {what}; nothing was saved from this step on{kept} (try a lower learning rate or `clip_norm`)"
    )
}

/// Run settings beyond the model's training section.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Worker threads.
    pub threads: usize,
    /// Checkpoint directory (see [`checkpoint`]): a checkpoint after
    /// every epoch and on interruption. The caller should hold its lock
    /// ([`checkpoint::lock`]).
    pub checkpoint: Option<PathBuf>,
    /// Continue from the checkpoint in `checkpoint`.
    pub resume: bool,
    /// Initial weights for some or all parameters (transfer learning).
    pub init_from: Option<PathBuf>,
    /// Stop after this many steps in total (for tests of resumption).
    pub max_steps: Option<usize>,
    /// The optimizer on the training graph, or (`-O0`) only the unrolling
    /// of recurrent layers, which training needs.
    pub level: OptLevel,
    /// Where the training step and the evaluation run.
    pub device: Device,
    /// Which code generator builds the CPU contraction kernels (the CLI
    /// sets it from `--kernels` / `NETC_KERNELS`).
    pub kernels: KernelPath,
    /// How the GPU's PTX is generated (`--tf32`); ignored on the CPU.
    pub ptx: PtxOptions,
    /// Account each step's results as a GPU run does even on the CPU:
    /// queued, and summed every [`GPU_REPORT_STEPS`] steps (for testing
    /// that accounting without a GPU; a GPU always defers).
    pub deferred_reads: bool,
}

/// What the loop reports as it goes.
#[derive(Clone, Debug)]
pub enum Event {
    /// Training of an epoch starts.
    EpochStart {
        /// 1-based epoch.
        epoch: usize,
        /// Steps in the epoch.
        steps: usize,
    },
    /// A step finished.
    Step {
        /// 1-based step within the epoch.
        step: usize,
        /// Running mean loss of the epoch.
        loss: f64,
        /// Running accuracy of the epoch, for classifiers.
        accuracy: Option<f64>,
        /// Throughput so far in the epoch.
        examples_per_s: f64,
    },
    /// An epoch finished.
    Epoch(EpochStats),
    /// Training stopped early.
    EarlyStop {
        /// The epoch after which it stopped.
        epoch: usize,
    },
    /// Resuming from a checkpoint, before the first step.
    Resumed {
        /// 1-based epoch it continues.
        epoch: usize,
        /// Steps of that epoch already done.
        step: usize,
        /// Steps in an epoch.
        steps: usize,
        /// How this run's settings differ from the checkpoint's.
        notes: Vec<String>,
    },
    /// Interrupted; a checkpoint was saved.
    Interrupted {
        /// Where.
        checkpoint: Option<PathBuf>,
    },
}

/// Metrics of one epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochStats {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Training accuracy, for classifiers.
    pub accuracy: Option<f64>,
    /// Validation (or test) loss.
    pub val_loss: Option<f64>,
    /// Validation (or test) accuracy.
    pub val_accuracy: Option<f64>,
    /// Learning rate used.
    pub lr: f64,
    /// Wall time of the epoch.
    pub seconds: f64,
}

/// The result of a run.
pub struct Trained {
    /// Final weights.
    pub weights: Weights,
    /// Per-epoch metrics.
    pub history: Vec<EpochStats>,
}

/// Set by a Ctrl-C handler; the loop saves a checkpoint and returns.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

use netc_compiler::codegen::ptx::score;
use netc_compiler::dropout::splitmix;

/// Steps a GPU runs between progress updates: their results are read back
/// together, with one synchronization (see [`Pending`]).
pub const GPU_REPORT_STEPS: usize = 16;

/// A GPU step whose results (losses, statistics, predictions) were queued
/// by `Engine::read_later` and are accounted at the next progress update.
struct Pending {
    /// The step's number in its epoch (1-based).
    step: usize,
    /// Its targets, for scoring its predictions on the host (binary
    /// cross-entropy; empty otherwise).
    targets: Vec<f32>,
    /// Outputs per example at its sequence length.
    k: usize,
}

/// Where deferred steps' results wait: on a GPU's queue
/// (`Engine::read_later`), or, for a CPU run with
/// [`RunOptions::deferred_reads`], in host copies made at once.
#[derive(Default)]
struct Queue(Vec<Vec<f32>>);

impl Queue {
    fn read(&mut self, exe: &mut Engine, b: usize) -> Result<(), ExecError> {
        if exe.defers_reads() {
            return exe.read_later(b);
        }
        self.0.push(exe.read(b)?.into_owned());
        Ok(())
    }

    fn scores(
        &mut self,
        exe: &mut Engine,
        pred: usize,
        target: usize,
        classes: usize,
    ) -> Result<(), ExecError> {
        if exe.defers_reads() {
            return exe.score_later(pred, target, classes);
        }
        let rows = score::score_rows(&exe.read(pred)?, &exe.read(target)?, classes);
        self.0.push(rows);
        Ok(())
    }

    fn take(&mut self, exe: &mut Engine) -> Result<Vec<Vec<f32>>, ExecError> {
        if exe.defers_reads() {
            return exe.take_reads();
        }
        Ok(std::mem::take(&mut self.0))
    }
}

/// Why a step's queued figures diverge, if they do: read after later steps
/// ran, so unlike [`step_divergence`] it cannot inspect that step's
/// parameters and gradients.
fn deferred_divergence(losses: &[f32], norm2: f32) -> Option<String> {
    if let Some(v) = losses.iter().find(|v| !v.is_finite()) {
        return Some(format!("the loss is {v}"));
    }
    (!norm2.is_finite()).then(|| {
        format!("the squared global gradient norm is {norm2} (a gradient or the update overflowed)")
    })
}

/// Per-example target width: a class index per row of `classes` values
/// for cross-entropy (one for a `[C]` output, `T` for `[T, C]`), else the
/// prediction's size.
fn target_len(loss: Loss, pred_len: usize, classes: usize) -> usize {
    if loss == Loss::CrossEntropy {
        (pred_len / classes.max(1)).max(1)
    } else {
        pred_len
    }
}

fn lr_at(base: f64, schedule: &Option<Schedule>, epoch: usize, epochs: usize) -> f64 {
    match schedule {
        None => base,
        Some(Schedule::Step { every, gamma }) => {
            base * gamma.powi((epoch / (*every).max(1)) as i32)
        }
        // PyTorch's CosineAnnealingLR with T_max = epochs: the rate would
        // reach `min_lr` after the last epoch. Ending on it instead would
        // waste the last epoch when `min_lr` is 0.
        Some(Schedule::Cosine { min_lr }) => {
            let t = epoch as f64 / epochs.max(1) as f64;
            min_lr + 0.5 * (base - min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

fn base_lr(opt: &Optimizer) -> f64 {
    match opt {
        Optimizer::Sgd { lr } | Optimizer::Momentum { lr, .. } | Optimizer::Adam { lr, .. } => *lr,
    }
}

/// What [`score`] measured on a batch.
struct Score {
    /// Sum of the per-example losses.
    loss: f64,
    /// Correct predictions.
    correct: usize,
    /// Predictions scored: examples (one class each), non-padding tokens
    /// (per-token classes), or output values (binary cross-entropy).
    scored: usize,
}

/// Scores predictions `p` (`[n, k]`, rows of `classes` values) against
/// labels `y`. Cross-entropy reads one class index per row: one per example
/// for a `[C]` output, one per token for `[T, C]`, where a negative label
/// marks padding that is not scored (an example's loss is the mean over
/// its other rows, as in the compiled loss).
/// `(correct, scored)` of cross-entropy predictions `p` (`k` values per
/// example, rows of `classes`) against class labels `y`, as the trainer
/// counts them on the CPU: what the GPU's score kernel
/// (`codegen::ptx::score`) must reproduce.
pub fn classification_counts(p: &[f32], y: &[f32], k: usize, classes: usize) -> (usize, usize) {
    let s = score(Loss::CrossEntropy, p, y, k, classes);
    (s.correct, s.scored)
}

fn score(loss: Loss, p: &[f32], y: &[f32], k: usize, classes: usize) -> Score {
    let mut s = Score {
        loss: 0.0,
        correct: 0,
        scored: 0,
    };
    let rows = target_len(loss, k, classes);
    // Both sides hold whole examples (the trainer checked the targets).
    let n = (p.len() / k.max(1)).min(y.len() / rows);
    for i in 0..n {
        let ex = &p[i * k..(i + 1) * k];
        match loss {
            Loss::CrossEntropy => {
                let (mut sum, mut valid) = (0.0, 0usize);
                for r in 0..rows {
                    let label = y[i * rows + r];
                    // Padding (see `netc_runtime::data::PAD_LABEL`).
                    if label < 0.0 {
                        continue;
                    }
                    let (label, row) = (label as usize, &ex[r * classes..(r + 1) * classes]);
                    sum -= (row.get(label).copied().unwrap_or(0.0).max(1e-7) as f64).ln();
                    let arg = row
                        .iter()
                        .enumerate()
                        .fold(0, |b, (j, v)| if *v > row[b] { j } else { b });
                    s.correct += usize::from(arg == label);
                    valid += 1;
                }
                s.loss += sum / valid.max(1) as f64;
                s.scored += valid;
            }
            Loss::BinaryCrossEntropy => {
                for (j, pv) in ex.iter().enumerate() {
                    let (pv, t) = ((*pv as f64).clamp(1e-7, 1.0 - 1e-7), y[i * k + j] as f64);
                    s.loss -= (t * pv.ln() + (1.0 - t) * (1.0 - pv).ln()) / k as f64;
                    s.correct += usize::from((pv > 0.5) == (t > 0.5));
                }
                s.scored += k;
            }
            Loss::Mse => {
                for (j, pv) in ex.iter().enumerate() {
                    s.loss += ((*pv - y[i * k + j]) as f64).powi(2) / k as f64;
                }
                s.scored += 1;
            }
        }
    }
    s
}

/// Runs the model as written (`-O0`) on held-out data. A variable-length
/// model's examples are taken in order of length, each batch at its own
/// padded length (`padded_length`), with a forward program per length.
struct Evaluator<'g> {
    /// The model as checked (a variable-length one not instantiated).
    g: &'g Graph,
    target: Target,
    /// The forward graph per sequence length (0: a fixed-length model),
    /// compiled on first use.
    forward: HashMap<usize, Forward>,
    /// Compiled programs by (length, batch).
    by_batch: HashMap<(usize, usize), Engine>,
}

impl<'g> Evaluator<'g> {
    fn new(g: &'g Graph, target: Target) -> Self {
        Evaluator {
            g,
            target,
            forward: HashMap::new(),
            by_batch: HashMap::new(),
        }
    }
}

impl Evaluator<'_> {
    /// Examples per forward pass. On a GPU, many: each launch then has
    /// work enough. On the CPU, few enough that a layer's activations
    /// stay near the L2 cache instead of streaming through memory: the
    /// course CNN's unoptimized forward (its conv1 output 22 MB at 256)
    /// runs 37k examples/s at 64 and 25.7k at 256 on one thread.
    fn chunk(&self) -> usize {
        match self.target {
            Target::Cpu(..) => 64,
            _ => 256,
        }
    }

    /// The program for `b` examples `len` steps long (`len` 0: not a
    /// variable-length model).
    fn engine(&mut self, len: usize, b: usize) -> Result<&mut Engine, TrainError> {
        if !self.by_batch.contains_key(&(len, b)) {
            if !self.forward.contains_key(&len) {
                let f = if len == 0 {
                    unoptimized(self.g).forward()?
                } else {
                    let gl = masking::instantiate(self.g, len)
                        .map_err(|e| TrainError::Data(e.to_string()))?;
                    unoptimized(&gl).forward()?
                };
                self.forward.insert(len, f);
            }
            let p = self.forward[&len].lower(b)?;
            self.by_batch
                .insert((len, b), Engine::compile(p, &self.target)?);
        }
        self.by_batch
            .get_mut(&(len, b))
            .ok_or_else(|| TrainError::Model("evaluator".into()))
    }

    /// Mean loss and accuracy of `weights` on `data`.
    fn evaluate(
        &mut self,
        params: &[(String, Vec<f32>)],
        data: &Dataset,
        loss: Loss,
    ) -> Result<(f64, Option<f64>), TrainError> {
        let variable = masking::is_variable(self.g);
        let full = data.x.shape.get(1).copied().unwrap_or(0);
        let follows = variable && crate::data::output_follows_input(self.g);
        let n = data.len();
        // Shortest first, so a batch needs little padding; the sums do not
        // depend on the order.
        let mut order: Vec<usize> = (0..n).collect();
        if let (true, Some(l)) = (variable, &data.lengths) {
            order.sort_by_key(|&i| l[i]);
        }
        let mut total = 0.0;
        let (mut correct, mut scored) = (0usize, 0usize);
        for idx in order.chunks(self.chunk()) {
            let b = idx.len();
            let len = match &data.lengths {
                Some(l) if variable => {
                    padded_length(idx.iter().map(|&i| l[i]).max().unwrap_or(1), full)
                }
                _ if variable => full,
                _ => 0,
            };
            let exe = self.engine(len, b)?;
            for (name, v) in params {
                if let Some(pb) = exe
                    .program()
                    .params
                    .iter()
                    .find(|p| &p.name == name)
                    .map(|p| p.buf)
                {
                    exe.write_buffer(pb, v)?;
                }
            }
            let (x, y, seq_mask) = data
                .batch_steps(idx, if variable { len } else { full }, follows)
                .map_err(|e| TrainError::Data(e.to_string()))?;
            let input = exe.program().inputs[0].name.clone();
            exe.set_input(&input, &x)?;
            set_mask(exe, &input, || seq_mask)?;
            exe.run()?;
            let out = exe.output(0)?;
            // One arena at a time on a GPU (see `release_temporaries`).
            exe.release_temporaries()?;
            let k = out.data.len() / b;
            let classes = out.shape.last().copied().unwrap_or(1);
            let s = score(loss, &out.data, &y.data, k, classes);
            total += s.loss;
            correct += s.correct;
            scored += s.scored;
        }
        let acc = (loss != Loss::Mse).then(|| correct as f64 / scored.max(1) as f64);
        Ok((total / n as f64, acc))
    }
}

/// Trains `g` on `train`, evaluating on `val` (or a split of `train` when
/// the section asks for one) after each epoch.
pub fn train(
    g: &Graph,
    cfg: &TrainConfig,
    train: &Dataset,
    val: Option<&Dataset>,
    initial: Weights,
    opts: &RunOptions,
    on: &mut dyn FnMut(Event),
) -> Result<Trained, TrainError> {
    // Early stopping on `val_loss` without a validation split would
    // otherwise quietly monitor the training loss.
    netc_compiler::train::validate(cfg).map_err(TrainError::Config)?;
    let threads = opts.threads.max(1);
    // Open the device first: without a GPU, fail before any work.
    let target = Target::open(opts.device, threads)?
        .with_kernels(opts.kernels)
        .with_ptx(opts.ptx);
    let model = g;
    let instantiated = at_data_length(g, train)?;
    let g = instantiated.as_ref();
    if let Some(v) = val {
        if v.x.shape.get(1) != train.x.shape.get(1) && masking::is_variable(g) {
            return Err(TrainError::Data(format!(
                "the validation sequences are {} steps long and the training ones {}; a \
                 variable-length model trains on one length (load them together)",
                v.x.shape.get(1).copied().unwrap_or(0),
                train.x.shape.get(1).copied().unwrap_or(0)
            )));
        }
    }
    let tg =
        Compilation::new(g, CompileOptions::at(opts.level)).training_graph(&cfg.objective())?;
    let pred_shape = g
        .node(g.outputs[0].1)
        .shape
        .clone()
        .ok_or_else(|| TrainError::Model("no shape".into()))?;
    let k = pred_shape.numel();
    let classes = pred_shape.0.last().copied().unwrap_or(1);
    if !cfg.augment.is_empty() && train.x.shape.len() != 4 {
        return Err(TrainError::Data(format!(
            "augment: transforms images [H, W, C]; the training examples have shape {:?}",
            &train.x.shape[1..]
        )));
    }
    if train.example_len() == 0 || train.is_empty() {
        return Err(TrainError::Data("the training set is empty".into()));
    }
    let (train_set, split_val);
    if cfg.validation_split > 0.0 && val.is_none() {
        let (t, v) = train
            .split(cfg.validation_split, cfg.seed)
            .map_err(|e| TrainError::Data(e.to_string()))?;
        train_set = t;
        split_val = Some(v);
    } else {
        train_set = train.clone();
        split_val = None;
    }
    let val = val.or(split_val.as_ref());
    let batch = cfg.batch.min(train_set.len()).max(1);
    let mut tp: TrainingProgram = lower_training(&tg, cfg, batch)?;
    // What the data was encoded with (a text vocabulary) goes with every
    // set of weights the run writes: results and checkpoints.
    let mut meta = initial.metadata_entries().clone();
    if let Some(text) = &train.text {
        meta.extend(text.metadata());
    }
    let input_name = tp.program.inputs[0].name.clone();
    let mut exe = Engine::compile(tp.program.clone(), &target).map_err(|e| match e {
        // Too large for the GPU: say which batch would fit.
        ExecError::Cuda(CudaError::OutOfMemory(s)) => {
            let s = DeviceShortfall {
                what: format!("the training step of {}", s.what),
                ..s
            };
            ExecError::Cuda(CudaError::OutOfMemory(s.with_largest_batch(|b| {
                let tp = lower_training(&tg, cfg, b).ok()?;
                Some(Footprint::training(&tp, cfg.loss).total())
            })))
        }
        e => e,
    })?;
    exe.set_weights(&initial)?;
    // A variable-length model steps each batch at its own padded length
    // (`data::variable::padded_length`): one step program per length,
    // compiled on first use, the parameters and optimizer state moving to
    // whichever runs (`exe`/`tp` are always the current one).
    let variable = masking::is_variable(model);
    let full_len = train_set.x.shape.get(1).copied().unwrap_or(0);
    let follows = variable && crate::data::output_follows_input(model);
    let mut current_len = full_len;
    let mut others: HashMap<usize, (TrainingProgram, Engine)> = HashMap::new();
    let compile_at = |len: usize| -> Result<(TrainingProgram, Engine), TrainError> {
        let gl = masking::instantiate(model, len).map_err(|e| TrainError::Data(e.to_string()))?;
        let tgl = Compilation::new(&gl, CompileOptions::at(opts.level))
            .training_graph(&cfg.objective())?;
        let tpl = lower_training(&tgl, cfg, batch)?;
        let e = Engine::compile(tpl.program.clone(), &target)?;
        Ok((tpl, e))
    };
    let mut evaluator = Evaluator::new(model, target.clone());
    let steps = train_set.len() / batch;
    // Hashing the training data costs a pass over it: only for checkpoints.
    let settings = match opts.checkpoint {
        Some(_) => checkpoint::settings(cfg, &train_set),
        None => Settings::new(),
    };
    let mut resumed = Position::default();
    if opts.resume {
        let dir = opts
            .checkpoint
            .as_deref()
            .ok_or(CheckpointError::NoDirectory)?;
        let (position, notes) = restore(dir, g, cfg, &settings, &tp, &mut exe, steps)?;
        resumed = position;
        on(Event::Resumed {
            epoch: resumed.epoch + 1,
            step: resumed.step,
            steps,
            notes,
        });
    }
    let first_epoch = resumed.epoch;
    let mut global_step = resumed.global_step;
    if resumed.stopped_early {
        return Ok(Trained {
            weights: weights_of(g, &exe, &meta)?,
            history: Vec::new(),
        });
    }
    let (beta1, beta2) = match cfg.optimizer {
        Optimizer::Adam { beta1, beta2, .. } => (beta1, beta2),
        _ => (0.0, 0.0),
    };
    let mut history = Vec::new();
    let mut best = resumed.best;
    let mut bad_epochs = resumed.bad_epochs;
    let params_of = |exe: &Engine| -> Result<Vec<(String, Vec<f32>)>, ExecError> {
        exe.program()
            .params
            .iter()
            .map(|p| Ok((p.name.clone(), exe.read(p.buf)?.to_vec())))
            .collect()
    };
    let save = |exe: &Engine, position: Position| -> Result<Option<PathBuf>, TrainError> {
        let Some(dir) = opts.checkpoint.as_deref() else {
            return Ok(None);
        };
        snapshot(g, exe, position, &settings, &meta)?.save(dir)?;
        Ok(Some(dir.to_path_buf()))
    };
    // What a divergence in epoch `e` (0-based) leaves behind.
    let kept = |e: usize| opts.checkpoint.clone().map(|d| (d, e));
    // A GPU's per-step results, queued on the device (see `Pending`).
    let mut pending: Vec<Pending> = Vec::new();
    let mut queue = Queue::default();
    for epoch in first_epoch..cfg.epochs {
        let started = Instant::now();
        on(Event::EpochStart {
            epoch: epoch + 1,
            steps,
        });
        let lr = lr_at(base_lr(&cfg.optimizer), &cfg.schedule, epoch, cfg.epochs);
        let epoch_seed = splitmix(cfg.seed ^ splitmix(epoch as u64 + 1));
        let mut order = train_set.shuffled_indices(epoch_seed);
        if cfg.bucket && variable {
            order = train_set.bucketed(order, batch, splitmix(epoch_seed));
        }
        // A resumed epoch continues at its step with its running sums, so
        // its figures and its remaining batches are the uninterrupted run's.
        let (first_step, mut sum, mut correct, mut seen, mut scored) = if epoch == resumed.epoch {
            (
                resumed.step,
                resumed.loss_sum,
                resumed.correct,
                resumed.seen,
                // Older checkpoints: one scored prediction per example, or
                // per output value for binary cross-entropy.
                resumed.scored.unwrap_or(
                    resumed.seen
                        * if cfg.loss == Loss::BinaryCrossEntropy {
                            k
                        } else {
                            1
                        },
                ),
            )
        } else {
            (0, 0.0, 0usize, 0usize, 0usize)
        };
        let seen_before = seen;
        // Accounts for the GPU's queued steps exactly as the CPU path does
        // per step (the same f64 sums and scores), and reports progress
        // once; a divergence is found here, up to `GPU_REPORT_STEPS` steps
        // late, and named by the step whose figures first went non-finite.
        macro_rules! drain {
            () => {
                if !pending.is_empty() {
                    let mut reads = queue.take(&mut exe)?.into_iter();
                    let mut last = 0;
                    for p in std::mem::take(&mut pending) {
                        let missing = || ExecError::Input("a queued read is missing".into());
                        let losses = reads.next().ok_or_else(missing)?;
                        let stats = reads.next().ok_or_else(missing)?;
                        let (norm2, penalty) = (stats[slot::NORM2], stats[slot::PENALTY]);
                        if let Some(what) = deferred_divergence(&losses, norm2) {
                            return Err(TrainError::Diverged {
                                epoch: epoch + 1,
                                step: p.step,
                                what,
                                kept: kept(epoch),
                            });
                        }
                        sum += losses.iter().map(|v| *v as f64).sum::<f64>()
                            + penalty as f64 * batch as f64;
                        seen += batch;
                        let (c, n) = match cfg.loss {
                            Loss::CrossEntropy => score::count(&reads.next().ok_or_else(missing)?),
                            Loss::BinaryCrossEntropy => {
                                let pred = reads.next().ok_or_else(missing)?;
                                let s = score(cfg.loss, &pred, &p.targets, p.k, classes);
                                (s.correct, s.scored)
                            }
                            // `score` counts each example once.
                            Loss::Mse => (0, batch),
                        };
                        correct += c;
                        scored += n;
                        last = p.step;
                    }
                    let denom = scored.max(1);
                    on(Event::Step {
                        step: last,
                        loss: sum / seen as f64,
                        accuracy: (cfg.loss != Loss::Mse).then(|| correct as f64 / denom as f64),
                        examples_per_s: (seen - seen_before) as f64
                            / started.elapsed().as_secs_f64().max(1e-9),
                    });
                }
            };
        }
        for step in first_step..steps {
            let interrupted =
                INTERRUPTED.load(Ordering::SeqCst) || fault::interrupt_before(global_step);
            let at_max = opts.max_steps.is_some_and(|m| global_step >= m);
            if interrupted || at_max {
                // The position saved or returned includes every step run.
                drain!();
            }
            if interrupted {
                if let Some(what) = non_finite_param(&params_of(&exe)?) {
                    return Err(TrainError::Diverged {
                        epoch: epoch + 1,
                        step,
                        what,
                        kept: kept(epoch),
                    });
                }
                let position = Position {
                    epoch,
                    step,
                    global_step,
                    loss_sum: sum,
                    correct,
                    seen,
                    scored: Some(scored),
                    best,
                    bad_epochs,
                    stopped_early: false,
                };
                let at = save(&exe, position)?;
                on(Event::Interrupted { checkpoint: at });
                return Ok(Trained {
                    weights: weights_of(g, &exe, &meta)?,
                    history,
                });
            }
            if at_max {
                return Ok(Trained {
                    weights: weights_of(g, &exe, &meta)?,
                    history,
                });
            }
            let idx = &order[step * batch..(step + 1) * batch];
            let len = match &train_set.lengths {
                Some(l) if variable => {
                    padded_length(idx.iter().map(|&i| l[i]).max().unwrap_or(1), full_len)
                }
                _ => full_len,
            };
            if len != current_len {
                // The queued results belong to the program in use.
                drain!();
                // The arena of the length in use is not needed by the next.
                exe.release_temporaries()?;
                let (mut tp_l, mut exe_l) = match others.remove(&len) {
                    Some(p) => p,
                    None => compile_at(len)?,
                };
                move_state(&mut exe, &mut exe_l)?;
                std::mem::swap(&mut exe, &mut exe_l);
                std::mem::swap(&mut tp, &mut tp_l);
                others.insert(current_len, (tp_l, exe_l));
                current_len = len;
            }
            let (mut x, y, seq_mask) = train_set
                .batch_steps(idx, len, follows)
                .map_err(|e| TrainError::Data(e.to_string()))?;
            // Drawn from the seed and the step: a resumed run draws the same.
            let augment_seed = splitmix(cfg.seed ^ splitmix(global_step as u64 ^ 0xa067_0e17));
            augment_batch(&mut x, &cfg.augment, augment_seed).map_err(TrainError::Data)?;
            // Outputs per example at this length (per-step outputs shrink).
            let k = exe.program().buffers[tp.prediction].len / batch;
            let tl = target_len(cfg.loss, k, classes);
            if y.data.len() != batch * tl {
                return Err(TrainError::Data(format!(
                    "the data has {} target value(s) per example but loss {:?} on output {} needs {tl}",
                    y.data.len() / batch,
                    cfg.loss,
                    pred_shape
                )));
            }
            exe.set_input(&input_name, &x)?;
            set_mask(&mut exe, &input_name, || seq_mask)?;
            exe.set_input(
                "target",
                &Tensor::new(
                    exe.program()
                        .inputs
                        .iter()
                        .find(|i| i.name == "target")
                        .map_or(vec![], |i| i.shape.clone()),
                    y.data.clone(),
                )
                .map_err(|e| TrainError::Data(e.to_string()))?,
            )?;
            // Counter-based: the same masks on either device, and a resumed
            // run draws the same (see `netc_compiler::dropout`).
            exe.dropout_masks(&tp.masks, cfg.seed, global_step as u64)?;
            let t = (global_step + 1) as i32;
            let mut hyper = vec![0f32; slot::COUNT];
            hyper[slot::LR] = lr as f32;
            hyper[slot::BC1] = (1.0 / (1.0 - beta1.powi(t))) as f32;
            hyper[slot::BC2] = (1.0 / (1.0 - beta2.powi(t))) as f32;
            hyper[slot::CLIP] = 1.0;
            exe.set_input("hyper", &Tensor::vector(hyper))?;
            exe.run()?;
            global_step += 1;
            if exe.defers_reads() || opts.deferred_reads {
                // On a GPU the step's results are copied down without
                // waiting, and taken (one synchronization) once per
                // progress update.
                queue.read(&mut exe, tp.loss)?;
                queue.read(&mut exe, tp.hyper)?;
                // Cross-entropy is scored on the device (one value per
                // row comes back); mean squared error counts examples, and
                // needs no predictions.
                let targets = match cfg.loss {
                    Loss::CrossEntropy => {
                        let t = exe
                            .program()
                            .inputs
                            .iter()
                            .find(|i| i.name == "target")
                            .map(|i| i.buf)
                            .ok_or_else(|| ExecError::Input("no target input".into()))?;
                        queue.scores(&mut exe, tp.prediction, t, classes)?;
                        Vec::new()
                    }
                    Loss::BinaryCrossEntropy => {
                        queue.read(&mut exe, tp.prediction)?;
                        y.data
                    }
                    Loss::Mse => Vec::new(),
                };
                pending.push(Pending {
                    step: step + 1,
                    targets,
                    k,
                });
                if pending.len() >= GPU_REPORT_STEPS || step + 1 == steps {
                    drain!();
                }
                continue;
            }
            let losses = exe.read(tp.loss)?;
            let stats = exe.read(tp.hyper)?;
            let (norm2, penalty) = (stats[slot::NORM2], stats[slot::PENALTY]);
            if let Some(what) = step_divergence(&exe, &tp, &losses, norm2)? {
                return Err(TrainError::Diverged {
                    epoch: epoch + 1,
                    step: step + 1,
                    what,
                    kept: kept(epoch),
                });
            }
            // The logged loss is the loss minimized: data plus penalties.
            sum += losses.iter().map(|v| *v as f64).sum::<f64>() + penalty as f64 * batch as f64;
            seen += batch;
            let s = score(cfg.loss, &exe.read(tp.prediction)?, &y.data, k, classes);
            correct += s.correct;
            scored += s.scored;
            let denom = scored.max(1);
            on(Event::Step {
                step: step + 1,
                loss: sum / seen as f64,
                accuracy: (cfg.loss != Loss::Mse).then(|| correct as f64 / denom as f64),
                examples_per_s: (seen - seen_before) as f64
                    / started.elapsed().as_secs_f64().max(1e-9),
            });
        }
        let params = params_of(&exe)?;
        if let Some(what) = non_finite_param(&params) {
            return Err(TrainError::Diverged {
                epoch: epoch + 1,
                step: steps,
                what,
                kept: kept(epoch),
            });
        }
        let (val_loss, val_accuracy) = match val {
            Some(v) => {
                // The evaluation's arena takes the training step's place.
                exe.release_temporaries()?;
                let (l, a) = evaluator.evaluate(&params, v, cfg.loss)?;
                (Some(l), a)
            }
            None => (None, None),
        };
        let denom = scored.max(1);
        let stats = EpochStats {
            epoch: epoch + 1,
            loss: sum / seen.max(1) as f64,
            accuracy: (cfg.loss != Loss::Mse).then(|| correct as f64 / denom as f64),
            val_loss,
            val_accuracy,
            // The rate the kernels used, not its f64 before rounding.
            lr: f64::from(lr as f32),
            seconds: started.elapsed().as_secs_f64(),
        };
        history.push(stats.clone());
        // Early stopping's state goes into the checkpoint, so it is
        // updated first.
        let mut stop = false;
        if let Some(es) = &cfg.early_stopping {
            let monitored = match es.monitor.as_str() {
                "val_loss" => stats.val_loss.unwrap_or(stats.loss),
                "val_accuracy" => -stats.val_accuracy.or(stats.accuracy).unwrap_or(0.0),
                "accuracy" => -stats.accuracy.unwrap_or(0.0),
                _ => stats.loss,
            };
            if monitored < best - es.min_delta {
                best = monitored;
                bad_epochs = 0;
            } else {
                bad_epochs += 1;
                stop = bad_epochs >= es.patience;
            }
        }
        // The epoch's metrics row is written (by the caller) before the
        // checkpoint: a kill between the two leaves a row that resuming
        // cuts back, never a finished epoch without its row.
        on(Event::Epoch(stats.clone()));
        let position = Position {
            epoch: epoch + 1,
            global_step,
            best,
            bad_epochs,
            stopped_early: stop,
            ..Position::default()
        };
        save(&exe, position)?;
        if stop {
            on(Event::EarlyStop { epoch: epoch + 1 });
            break;
        }
    }
    Ok(Trained {
        weights: weights_of(g, &exe, &meta)?,
        history,
    })
}

/// Moves the parameters and optimizer state of `from` into `to`, a step
/// program of the same model at another sequence length (buffers matched
/// by kind and name); on the CPU without copying.
fn move_state(from: &mut Engine, to: &mut Engine) -> Result<(), ExecError> {
    let wanted: Vec<(usize, BufKind)> = to
        .program()
        .buffers
        .iter()
        .enumerate()
        .filter(|(_, b)| matches!(b.kind, BufKind::Param(_) | BufKind::State(_)))
        .map(|(i, b)| (i, b.kind.clone()))
        .collect();
    for (i, kind) in wanted {
        if let Some(j) = from.program().buffers.iter().position(|b| b.kind == kind) {
            to.take_buffer(i, from, j)?;
        }
    }
    Ok(())
}

/// The first non-finite quantity of a finished step, or `None` when the
/// loss and the squared global gradient norm are finite (the only values
/// read every step). Only on failure are the parameters and gradients
/// read, to name the culprit: a weight already broken by the previous
/// update, else the loss, else the first gradient in program order.
fn step_divergence(
    exe: &Engine,
    tp: &TrainingProgram,
    losses: &[f32],
    norm2: f32,
) -> Result<Option<String>, ExecError> {
    let bad_loss = losses.iter().find(|v| !v.is_finite());
    if bad_loss.is_none() && norm2.is_finite() {
        return Ok(None);
    }
    let params: Vec<(String, Vec<f32>)> = tp
        .params
        .iter()
        .map(|s| Ok((s.name.clone(), exe.read(s.param)?.to_vec())))
        .collect::<Result<_, ExecError>>()?;
    if let Some(w) = non_finite_param(&params) {
        return Ok(Some(format!("{w}, from the previous step's update")));
    }
    if let Some(v) = bad_loss {
        return Ok(Some(format!("the loss is {v}")));
    }
    for s in &tp.params {
        let g = exe.read(s.grad)?;
        if let Some((i, v)) = g.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Ok(Some(format!(
                "the gradient of `{}` is {v} (element {i} of {})",
                s.name,
                g.len()
            )));
        }
    }
    Ok(Some(format!(
        "the squared global gradient norm is {norm2} (it overflows f32 although every element is finite)"
    )))
}

/// "parameter `fc.weight` is NaN (element 3 of 8)" for the first
/// non-finite parameter value.
fn non_finite_param(params: &[(String, Vec<f32>)]) -> Option<String> {
    params.iter().find_map(|(name, v)| {
        let (i, x) = v.iter().enumerate().find(|(_, x)| !x.is_finite())?;
        Some(format!(
            "parameter `{name}` is {x} (element {i} of {})",
            v.len()
        ))
    })
}

/// The run's state in `exe` as a checkpoint.
fn snapshot(
    g: &Graph,
    exe: &Engine,
    position: Position,
    settings: &Settings,
    meta: &Metadata,
) -> Result<Checkpoint, TrainError> {
    let mut state = Vec::new();
    for (id, b) in exe.program().buffers.iter().enumerate() {
        if let BufKind::State(_) = b.kind {
            state.push((b.name.clone(), exe.read(id)?.to_vec()));
        }
    }
    Ok(Checkpoint {
        model: g.name.clone(),
        weights: weights_of(g, exe, meta)?,
        state,
        position,
        settings: settings.clone(),
    })
}

/// Loads and verifies the checkpoint in `dir` into `exe`; returns where
/// the run stands and how its settings changed.
fn restore(
    dir: &std::path::Path,
    g: &Graph,
    cfg: &TrainConfig,
    settings: &Settings,
    tp: &TrainingProgram,
    exe: &mut Engine,
    steps: usize,
) -> Result<(Position, Vec<String>), TrainError> {
    let ck = Checkpoint::load(dir)?;
    ck.check_model(g, dir)?;
    let path = dir.join(checkpoint::CHECKPOINT_FILE);
    let incompatible = |reason: String| CheckpointError::Incompatible {
        path: path.clone(),
        reason,
    };
    let wanted: Vec<(usize, &str, usize)> = tp
        .program
        .buffers
        .iter()
        .enumerate()
        .filter(|(_, b)| matches!(b.kind, BufKind::State(_)))
        .map(|(i, b)| (i, b.name.as_str(), b.len))
        .collect();
    let same_set = wanted.len() == ck.state.len()
        && wanted
            .iter()
            .all(|(_, n, _)| ck.state.iter().any(|(s, _)| s == n));
    if !same_set {
        let old = ck
            .settings
            .iter()
            .find(|(k, _)| k == "optimizer")
            .map_or("?", |(_, v)| v.as_str());
        return Err(incompatible(format!(
            "its optimizer state ({} buffers, optimizer {old}) does not fit this run's ({} buffers, optimizer {:?}, freeze [{}]); resume with the checkpoint's optimizer, or start a new run from its weights with --init-from {} --overwrite",
            ck.state.len(),
            wanted.len(),
            cfg.optimizer,
            cfg.freeze.join(", "),
            dir.join(checkpoint::WEIGHTS_FILE).display()
        ))
        .into());
    }
    let notes = checkpoint::compare(&ck, settings, cfg, steps, dir)?;
    if ck.position.step >= steps && steps > 0 {
        return Err(incompatible(format!(
            "it stopped at step {} of epoch {}, but an epoch now has {steps} steps",
            ck.position.step,
            ck.position.epoch + 1
        ))
        .into());
    }
    exe.set_weights(&ck.weights)?;
    for (id, name, len) in wanted {
        let Some((_, data)) = ck.state.iter().find(|(s, _)| s == name) else {
            continue;
        };
        if data.len() != len {
            return Err(CheckpointError::Invalid {
                path: path.clone(),
                reason: format!(
                    "optimizer state `{name}` has {} values but the model needs {len}",
                    data.len()
                ),
            }
            .into());
        }
        exe.write_buffer(id, data)?;
    }
    Ok((ck.position, notes))
}

/// The parameters in `exe` as weights carrying `meta` (`data.*` entries).
fn weights_of(g: &Graph, exe: &Engine, meta: &Metadata) -> Result<Weights, ExecError> {
    let mut w = Weights::new(&g.name);
    for (k, v) in meta {
        w.set_metadata(k.clone(), v.clone());
    }
    for p in &exe.program().params {
        if let Ok(t) = Tensor::new(p.shape.clone(), exe.read(p.buf)?.to_vec()) {
            w.insert(p.name.clone(), t);
        }
    }
    Ok(w)
}

/// The model's outputs for every example of `x` (`[n, ...]`), in batches.
/// For a variable-length model `x`'s axis 1 is time and `lengths` gives
/// each example's real steps (padding after them); `None` means every
/// step is real.
pub fn predict(
    g: &Graph,
    weights: &Weights,
    x: &Tensor,
    lengths: Option<&[usize]>,
    threads: usize,
) -> Result<Tensor, TrainError> {
    predict_with(g, weights, x, lengths, threads, KernelPath::Auto)
}

/// [`predict`] with the contractions built by `kernels`.
pub fn predict_with(
    g: &Graph,
    weights: &Weights,
    x: &Tensor,
    lengths: Option<&[usize]>,
    threads: usize,
    kernels: KernelPath,
) -> Result<Tensor, TrainError> {
    let n = *x
        .shape
        .first()
        .ok_or_else(|| TrainError::Data("empty input".into()))?;
    let instantiated = match x.shape.get(1) {
        Some(&steps) if masking::is_variable(g) => {
            Cow::Owned(masking::instantiate(g, steps).map_err(|e| TrainError::Data(e.to_string()))?)
        }
        _ => Cow::Borrowed(g),
    };
    let g = instantiated.as_ref();
    let steps = x.shape.get(1).copied().unwrap_or(0);
    if let Some(l) = lengths.filter(|l| l.len() != n || l.iter().any(|&l| l > steps)) {
        return Err(TrainError::Data(format!(
            "{} sequence lengths for {n} examples of {steps} steps",
            l.len()
        )));
    }
    let per: usize = x.shape[1..].iter().product();
    let mut by_batch: HashMap<usize, Executable> = HashMap::new();
    let mut forward: Option<Forward> = None;
    let mut out = Vec::new();
    let mut out_shape = vec![n];
    let mut start = 0;
    while start < n {
        let b = (n - start).min(256);
        let exe = match by_batch.entry(b) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let forward = match &forward {
                    Some(f) => f,
                    None => forward.insert(unoptimized(g).forward()?),
                };
                let p = forward.lower(b)?;
                let mut exe = Executable::compile_with(p, threads.max(1), kernels)?;
                exe.set_weights(weights)?;
                v.insert(exe)
            }
        };
        let mut shape = vec![b];
        shape.extend(&x.shape[1..]);
        let chunk = Tensor::new(shape, x.data[start * per..(start + b) * per].to_vec())
            .map_err(|e| TrainError::Data(e.to_string()))?;
        let input = exe.program().inputs[0].name.clone();
        exe.set_input(&input, &chunk)?;
        let mask_name = masking::mask_name(&input);
        if exe.program().inputs.iter().any(|i| i.name == mask_name) {
            let m = length_masks(
                (start..start + b).map(|i| lengths.map_or(steps, |l| l[i])),
                steps,
            );
            let t = Tensor::new(vec![b, steps], m).map_err(|e| TrainError::Data(e.to_string()))?;
            exe.set_input(&mask_name, &t)?;
        }
        exe.run()?;
        let y = exe
            .output(0)
            .ok_or_else(|| TrainError::Model("no output".into()))?;
        if out_shape.len() == 1 {
            out_shape.extend(&y.shape[1..]);
        }
        out.extend(y.data);
        start += b;
    }
    Tensor::new(out_shape, out).map_err(|e| TrainError::Data(e.to_string()))
}

/// Evaluates `weights` on `data`: mean loss and accuracy.
pub fn evaluate(
    g: &Graph,
    loss: Loss,
    weights: &Weights,
    data: &Dataset,
    threads: usize,
) -> Result<(f64, Option<f64>), TrainError> {
    evaluate_with(g, loss, weights, data, threads, KernelPath::Auto)
}

/// [`evaluate`] with the contractions built by `kernels`.
pub fn evaluate_with(
    g: &Graph,
    loss: Loss,
    weights: &Weights,
    data: &Dataset,
    threads: usize,
    kernels: KernelPath,
) -> Result<(f64, Option<f64>), TrainError> {
    let params: Vec<(String, Vec<f32>)> = weights
        .iter()
        .map(|(n, t)| (n.to_string(), t.data.clone()))
        .collect();
    Evaluator::new(g, Target::Cpu(threads.max(1), kernels)).evaluate(&params, data, loss)
}

/// A variable-length model instantiated at `data`'s length (its axis 1;
/// `data::variable` lays the data out); any other model as it is.
fn at_data_length<'g>(g: &'g Graph, data: &Dataset) -> Result<Cow<'g, Graph>, TrainError> {
    if !masking::is_variable(g) {
        return Ok(Cow::Borrowed(g));
    }
    let steps = data.x.shape.get(1).copied().unwrap_or(0);
    masking::instantiate(g, steps)
        .map(Cow::Owned)
        .map_err(|e| TrainError::Data(e.to_string()))
}

/// Sets the mask input of the data input `input`, when the program has
/// one (a variable-length model), to `masks()` (`[batch, T]`).
fn set_mask(
    exe: &mut Engine,
    input: &str,
    masks: impl FnOnce() -> Vec<f32>,
) -> Result<(), TrainError> {
    let name = masking::mask_name(input);
    let Some(shape) = exe
        .program()
        .inputs
        .iter()
        .find(|i| i.name == name)
        .map(|i| i.shape.clone())
    else {
        return Ok(());
    };
    let t = Tensor::new(shape, masks()).map_err(|e| TrainError::Data(e.to_string()))?;
    exe.set_input(&name, &t)?;
    Ok(())
}

/// How evaluation and prediction compile: the model as written, only its
/// recurrent layers unrolled, so the numbers do not depend on the optimizer.
fn unoptimized(g: &Graph) -> Compilation<'_> {
    Compilation::new(g, CompileOptions::at(OptLevel::O0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_divergence_names_the_loss_then_the_norm() {
        assert_eq!(deferred_divergence(&[0.5, 1.0], 3.0), None);
        assert_eq!(
            deferred_divergence(&[0.5, f32::NAN], f32::INFINITY).as_deref(),
            Some("the loss is NaN")
        );
        assert!(deferred_divergence(&[0.5], f32::INFINITY)
            .unwrap()
            .starts_with("the squared global gradient norm is inf"));
    }

    #[test]
    fn the_shuffle_hash_is_unchanged() {
        // Shuffles and augmentation seeds now use the compiler's
        // SplitMix64; runs stay reproducible across this change.
        assert_eq!(splitmix(0), 0xe220_a839_7b1d_cdaf);
    }
}
