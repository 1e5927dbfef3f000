//! Checkpoints of a training run, and the directory that holds them.
//!
//! A checkpoint is one file, `DIR/checkpoint.safetensors`, so it becomes
//! visible as one unit: it is written to a temporary file, flushed, renamed
//! over the previous one and the directory flushed ([`write_atomic`]); a
//! kill at any moment leaves the previous checkpoint or the new one, never
//! a mix. It holds
//!
//! - every parameter under its own name, as in a weights file;
//! - every optimizer state buffer (Adam's moments, momentum) under
//!   `state/<buffer>`;
//! - in the header metadata: the [`Position`] (epoch, step within it,
//!   steps done, the epoch's running loss and accuracy sums, the early
//!   stopping state), the settings of the run ([`settings`]: loss,
//!   optimizer, schedule, batch, epochs, seed, the training set's size and
//!   a hash of its contents), the weights' `data.*` entries (a text data
//!   set's vocabulary and label names), and a checksum over all of it.
//!
//! After it, `DIR/weights.safetensors` receives a copy of the weights, for
//! `netc eval` and `netc predict`; resuming never reads that copy.
//!
//! Resuming verifies the file: format and version, the checksum, the model
//! name, every parameter present with the model's shape, every optimizer
//! state buffer present with its length; then it compares the settings
//! ([`compare`]) and refuses what cannot continue exactly.
//!
//! `DIR/.lock` is locked (an advisory `flock(2)`) for as long as a run uses
//! the directory, so two trainers cannot write it at once.

use crate::data::Dataset;
use crate::fsutil::write_atomic;
use crate::tensor::Tensor;
use crate::weights::{self, Weights, FORMAT_KEY, FORMAT_VALUE, MODEL_KEY};
use netc_compiler::train::{Schedule, TrainConfig};
use netc_compiler::Graph;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The checkpoint file in a checkpoint directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The copy of the checkpoint's weights, for `eval` and `predict`.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// The optimizer state file of netc before checkpoints were one file.
pub const LEGACY_OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The lock file; its presence also marks a directory a run has started in.
pub const LOCK_FILE: &str = ".lock";

const VERSION_KEY: &str = "netc.checkpoint";
const VERSION: &str = "1";
const CHECKSUM_KEY: &str = "checksum";
const STATE_PREFIX: &str = "state/";

/// Why a checkpoint could not be read, written or resumed. Every message
/// is one line and names the file or directory.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// `--resume` without a checkpoint directory.
    #[error("resuming needs a checkpoint directory (--checkpoint DIR)")]
    NoDirectory,
    /// The directory holds no checkpoint.
    #[error("no checkpoint to resume in {}: {why}", .dir.display())]
    NotFound {
        /// The directory.
        dir: PathBuf,
        /// What is there instead.
        why: String,
    },
    /// A file could not be read or written.
    #[error("{}: {error}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not a valid checkpoint.
    #[error("{}: {reason}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The checkpoint is sound but cannot continue this run exactly.
    #[error("cannot resume from {}: {reason}", .path.display())]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// What differs and what to do.
        reason: String,
    },
    /// Another process holds the directory's lock.
    #[error("checkpoint directory {} is in use by another `netc train` (it holds {}); wait for it to finish or choose another --checkpoint directory", .dir.display(), .dir.join(LOCK_FILE).display())]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
}

/// Where a run stands: enough to continue it exactly where it stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct Position {
    /// The 0-based epoch in progress (the number of finished epochs).
    pub epoch: usize,
    /// Steps finished in that epoch (0 at an epoch boundary).
    pub step: usize,
    /// Steps finished in the whole run (Adam's bias correction, dropout
    /// masks and the shuffle depend on it).
    pub global_step: usize,
    /// Sum of the per-example losses of the epoch so far.
    pub loss_sum: f64,
    /// Correct predictions of the epoch so far.
    pub correct: usize,
    /// Examples of the epoch so far.
    pub seen: usize,
    /// Predictions scored for accuracy so far: examples, non-padding
    /// tokens for per-token targets, output values for binary
    /// cross-entropy. `None` in checkpoints written before netc counted
    /// them (then the denominator follows from `seen`).
    pub scored: Option<usize>,
    /// Early stopping: the best monitored value so far.
    pub best: f64,
    /// Early stopping: epochs since it improved.
    pub bad_epochs: usize,
    /// Early stopping ended the run.
    pub stopped_early: bool,
}

impl Default for Position {
    fn default() -> Self {
        Position {
            epoch: 0,
            step: 0,
            global_step: 0,
            loss_sum: 0.0,
            correct: 0,
            seen: 0,
            scored: Some(0),
            best: f64::INFINITY,
            bad_epochs: 0,
            stopped_early: false,
        }
    }
}

impl std::fmt::Display for Position {
    /// Where the run stands, in words: "after epoch 3" or "at step 5 of
    /// epoch 4".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.step == 0 {
            write!(f, "after epoch {}", self.epoch)
        } else {
            write!(f, "at step {} of epoch {}", self.step, self.epoch + 1)
        }
    }
}

impl Position {
    fn to_meta(&self, meta: &mut BTreeMap<String, String>) {
        let mut put = |k: &str, v: String| {
            meta.insert(format!("position.{k}"), v);
        };
        put("epoch", self.epoch.to_string());
        put("step", self.step.to_string());
        put("global_step", self.global_step.to_string());
        // Floats as their bit patterns: exact, and NaN/inf survive.
        put("loss_sum", format!("{:016x}", self.loss_sum.to_bits()));
        put("correct", self.correct.to_string());
        put("seen", self.seen.to_string());
        if let Some(scored) = self.scored {
            put("scored", scored.to_string());
        }
        put("best", format!("{:016x}", self.best.to_bits()));
        put("bad_epochs", self.bad_epochs.to_string());
        put("stopped_early", self.stopped_early.to_string());
    }

    fn from_meta(meta: &BTreeMap<String, String>) -> Result<Position, String> {
        let get = |k: &str| {
            meta.get(&format!("position.{k}"))
                .ok_or_else(|| format!("no `position.{k}` in its metadata"))
        };
        let int = |k: &str| -> Result<usize, String> {
            get(k)?
                .parse()
                .map_err(|_| format!("`position.{k}` is not a count"))
        };
        let float = |k: &str| -> Result<f64, String> {
            u64::from_str_radix(get(k)?, 16)
                .map(f64::from_bits)
                .map_err(|_| format!("`position.{k}` is not a float's bits"))
        };
        Ok(Position {
            epoch: int("epoch")?,
            step: int("step")?,
            global_step: int("global_step")?,
            loss_sum: float("loss_sum")?,
            correct: int("correct")?,
            seen: int("seen")?,
            scored: match meta.contains_key("position.scored") {
                true => Some(int("scored")?),
                false => None,
            },
            best: float("best")?,
            bad_epochs: int("bad_epochs")?,
            stopped_early: get("stopped_early")? == "true",
        })
    }
}

/// The settings of a run that a checkpoint records, as (key, value) text
/// pairs in a fixed order; [`compare`] says how a resumed run differs.
pub type Settings = Vec<(String, String)>;

/// The settings of training `cfg` on `train` (the training examples after
/// any validation split).
pub fn settings(cfg: &TrainConfig, train: &Dataset) -> Settings {
    let schedule = match &cfg.schedule {
        None => "none".to_string(),
        Some(s) => format!("{s:?}"),
    };
    let early = match &cfg.early_stopping {
        None => "none".to_string(),
        Some(e) => format!("{e:?}"),
    };
    [
        ("loss", format!("{:?}", cfg.loss)),
        ("optimizer", format!("{:?}", cfg.optimizer)),
        ("schedule", schedule),
        ("epochs", cfg.epochs.to_string()),
        ("batch", cfg.batch.min(train.len()).max(1).to_string()),
        ("seed", cfg.seed.to_string()),
        ("clip_norm", format!("{:?}", cfg.clip_norm)),
        ("clip_value", format!("{:?}", cfg.clip_value)),
        ("l1", cfg.l1.to_string()),
        ("l2", cfg.l2.to_string()),
        ("early_stopping", early),
        ("validation_split", cfg.validation_split.to_string()),
        ("freeze", cfg.freeze.join(",")),
        ("bucket", cfg.bucket.to_string()),
        ("augment", format!("{:?}", cfg.augment)),
        ("train_examples", train.len().to_string()),
        ("train_data", format!("{:016x}", data_hash(train))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// FNV-1a over 64-bit words, for change detection (not security).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.word(b.len() as u64);
        for c in b.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
    }
    fn floats(&mut self, v: &[f32]) {
        self.word(v.len() as u64);
        for p in v.chunks(2) {
            let hi = p.get(1).map_or(0, |f| u64::from(f.to_bits()) << 32);
            self.word(u64::from(p[0].to_bits()) | hi);
        }
    }
}

fn data_hash(d: &Dataset) -> u64 {
    let mut h = Fnv::new();
    h.floats(&d.x.data);
    h.floats(&d.y);
    h.0
}

/// A run's state at one point: weights, optimizer state, position and
/// settings.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The model's name.
    pub model: String,
    /// Every parameter.
    pub weights: Weights,
    /// Every optimizer state buffer, by buffer name.
    pub state: Vec<(String, Vec<f32>)>,
    /// Where the run stands.
    pub position: Position,
    /// The run's settings.
    pub settings: Settings,
}

fn checksum(meta: &BTreeMap<String, String>, tensors: &[(&str, &Tensor)]) -> String {
    let mut h = Fnv::new();
    for (k, v) in meta.iter().filter(|(k, _)| *k != CHECKSUM_KEY) {
        h.bytes(k.as_bytes());
        h.bytes(v.as_bytes());
    }
    let mut sorted = tensors.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (name, t) in sorted {
        h.bytes(name.as_bytes());
        h.word(t.shape.len() as u64);
        for d in &t.shape {
            h.word(*d as u64);
        }
        h.floats(&t.data);
    }
    format!("{:016x}", h.0)
}

impl Checkpoint {
    /// The checkpoint file's bytes (the same checkpoint always gives the
    /// same bytes).
    pub fn to_bytes(&self) -> Result<Vec<u8>, CheckpointError> {
        // The weights' `data.*` entries (a text vocabulary) travel with the
        // checkpoint, under the checksum.
        let mut meta = self.weights.metadata_entries().clone();
        meta.extend([
            (FORMAT_KEY.to_string(), FORMAT_VALUE.to_string()),
            (MODEL_KEY.to_string(), self.model.clone()),
            (VERSION_KEY.to_string(), VERSION.to_string()),
        ]);
        self.position.to_meta(&mut meta);
        for (k, v) in &self.settings {
            meta.insert(format!("run.{k}"), v.clone());
        }
        let state: Vec<(String, Tensor)> = self
            .state
            .iter()
            .map(|(n, v)| (format!("{STATE_PREFIX}{n}"), Tensor::vector(v.clone())))
            .collect();
        let tensors: Vec<(&str, &Tensor)> = self
            .weights
            .iter()
            .chain(state.iter().map(|(n, t)| (n.as_str(), t)))
            .collect();
        meta.insert(CHECKSUM_KEY.to_string(), checksum(&meta, &tensors));
        weights::encode(&meta, &tensors).map_err(|e| CheckpointError::Invalid {
            path: PathBuf::from(CHECKPOINT_FILE),
            reason: e.to_string(),
        })
    }

    /// Writes the checkpoint to `dir` (created if needed) as one atomic
    /// file, then the copy of its weights.
    pub fn save(&self, dir: &Path) -> Result<(), CheckpointError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |error| CheckpointError::Io { path, error }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(CHECKPOINT_FILE);
        write_atomic(&path, &self.to_bytes()?).map_err(io(&path))?;
        let wpath = dir.join(WEIGHTS_FILE);
        let bytes = self
            .weights
            .to_bytes()
            .map_err(|e| CheckpointError::Invalid {
                path: wpath.clone(),
                reason: e.to_string(),
            })?;
        write_atomic(&wpath, &bytes).map_err(io(&wpath))
    }

    /// Reads and verifies the checkpoint in `dir`: format, version and
    /// checksum.
    pub fn load(dir: &Path) -> Result<Checkpoint, CheckpointError> {
        let path = dir.join(CHECKPOINT_FILE);
        if !path.exists() {
            return Err(CheckpointError::NotFound {
                dir: dir.to_path_buf(),
                why: describe_missing(dir),
            });
        }
        let invalid = |reason: String| CheckpointError::Invalid {
            path: path.clone(),
            reason,
        };
        let bytes = std::fs::read(&path).map_err(|error| CheckpointError::Io {
            path: path.clone(),
            error,
        })?;
        let (all, meta) = weights::decode(&bytes, Some(&path)).map_err(|e| {
            // The message names the file as a weights file; this error
            // names it as the checkpoint.
            let msg = e.to_string();
            let file = format!("weights file {}", path.display());
            let reason = [" is ", ": ", " "]
                .iter()
                .find_map(|sep| msg.strip_prefix(&format!("{file}{sep}")))
                .unwrap_or(&msg);
            invalid(reason.to_string())
        })?;
        if meta.get(FORMAT_KEY).map(String::as_str) != Some(FORMAT_VALUE)
            || !meta.contains_key(VERSION_KEY)
        {
            return Err(invalid(
                "not a netc checkpoint (no `netc.checkpoint` metadata)".into(),
            ));
        }
        if meta[VERSION_KEY] != VERSION {
            return Err(invalid(format!(
                "checkpoint version {} is not supported (this netc reads version {VERSION})",
                meta[VERSION_KEY]
            )));
        }
        let tensors: Vec<(&str, &Tensor)> = all.iter().collect();
        let sum = checksum(&meta, &tensors);
        match meta.get(CHECKSUM_KEY) {
            Some(s) if *s == sum => {}
            Some(s) => {
                return Err(invalid(format!(
                    "checksum mismatch (stored {s}, computed {sum}): the file is corrupt"
                )))
            }
            None => return Err(invalid("no checksum in its metadata".into())),
        }
        let position = Position::from_meta(&meta).map_err(invalid)?;
        let settings = meta
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("run.")?.to_string(), v.clone())))
            .collect();
        let model = all.model().to_string();
        let mut weights = Weights::new(&model);
        for (k, v) in all.metadata_entries() {
            weights.set_metadata(k.clone(), v.clone());
        }
        let mut state = Vec::new();
        for (name, t) in all.iter() {
            match name.strip_prefix(STATE_PREFIX) {
                Some(s) => state.push((s.to_string(), t.data.clone())),
                None => {
                    weights.insert(name, t.clone());
                }
            }
        }
        Ok(Checkpoint {
            model,
            weights,
            state,
            position,
            settings,
        })
    }

    /// Checks that the checkpoint is of model `g`: its name, and every
    /// parameter present with the model's shape.
    pub fn check_model(&self, g: &Graph, dir: &Path) -> Result<(), CheckpointError> {
        let path = dir.join(CHECKPOINT_FILE);
        if self.model != g.name {
            return Err(CheckpointError::Invalid {
                path,
                reason: format!(
                    "it is a checkpoint of model `{}`, not `{}`",
                    self.model, g.name
                ),
            });
        }
        self.weights
            .validate(&weights::expected_params(g))
            .map_err(|e| CheckpointError::Invalid {
                path,
                reason: e.to_string(),
            })
    }
}

/// What a directory without a checkpoint file holds, in words.
fn describe_missing(dir: &Path) -> String {
    if !dir.exists() {
        return "the directory does not exist".into();
    }
    if dir.join(LEGACY_OPTIMIZER_FILE).exists() {
        return format!(
            "it holds {WEIGHTS_FILE} and {LEGACY_OPTIMIZER_FILE} from an older netc, which do not record the position in the epoch; start over with --overwrite, or use --init-from {}",
            dir.join(WEIGHTS_FILE).display()
        );
    }
    format!("it has no {CHECKPOINT_FILE}")
}

/// What a checkpoint directory holds, for deciding what a run may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirState {
    /// No directory, or none of netc's files in it.
    Empty,
    /// A run started here (its lock file exists) but finished no
    /// checkpoint.
    Started,
    /// A checkpoint (or files of an older netc).
    Checkpoint,
}

/// What `dir` holds.
pub fn dir_state(dir: &Path) -> DirState {
    if [CHECKPOINT_FILE, WEIGHTS_FILE, LEGACY_OPTIMIZER_FILE]
        .iter()
        .any(|f| dir.join(f).exists())
    {
        DirState::Checkpoint
    } else if dir.join(LOCK_FILE).exists() {
        DirState::Started
    } else {
        DirState::Empty
    }
}

/// The lock on a checkpoint directory; released when dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Locks `dir` (created if needed) for this process, or says that another
/// process holds it.
pub fn lock(dir: &Path) -> Result<DirLock, CheckpointError> {
    let io = |path: PathBuf| move |error| CheckpointError::Io { path, error };
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(path.clone()))?;
    match try_lock(&file) {
        Ok(true) => Ok(DirLock { _file: file }),
        Ok(false) => Err(CheckpointError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(error) => Err(CheckpointError::Io { path, error }),
    }
}

/// Whether another process holds `dir`'s lock (checked without creating
/// anything).
pub fn is_locked(dir: &Path) -> bool {
    File::open(dir.join(LOCK_FILE)).is_ok_and(|f| matches!(try_lock(&f), Ok(false)))
}

/// Takes an exclusive advisory lock on `file` without waiting: `Ok(false)`
/// when another open file holds it. (`File::try_lock` would do, but needs
/// Rust 1.89 and the workspace supports 1.85.)
#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a descriptor `file` owns for the call's duration;
    // it touches no memory of ours.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Without flock, no locking: a second trainer is not detected.
#[cfg(not(unix))]
fn try_lock(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}

/// How the settings of a resumed run differ from the checkpoint's: notes
/// for what changes but still continues, an error for what cannot continue
/// the interrupted epoch exactly.
pub fn compare(
    saved: &Checkpoint,
    now: &Settings,
    cfg: &TrainConfig,
    steps_per_epoch: usize,
    dir: &Path,
) -> Result<Vec<String>, CheckpointError> {
    let old = |k: &str| {
        saved
            .settings
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let pos = &saved.position;
    let mid_epoch = pos.step > 0;
    // Steps of an epoch in the checkpoint's run, for messages.
    let saved_steps = match (old("train_examples"), old("batch")) {
        (Some(n), Some(b)) => n.parse::<usize>().ok().zip(b.parse::<usize>().ok()),
        _ => None,
    }
    .map_or(steps_per_epoch, |(n, b)| n / b.max(1));
    let mut notes = Vec::new();
    if pos.stopped_early {
        notes.push(format!(
            "early stopping ended this run after epoch {}; nothing left to train",
            pos.epoch
        ));
    } else if pos.epoch >= cfg.epochs {
        notes.push(format!(
            "the checkpoint is after epoch {} and the run has {}; nothing left to train",
            pos.epoch, cfg.epochs
        ));
    }
    for (key, value) in now {
        let Some(was) = old(key) else { continue };
        if was == value {
            continue;
        }
        let what = match key.as_str() {
            "train_data" => "the training data".to_string(),
            "train_examples" => "the number of training examples".to_string(),
            k => format!("`{k}`"),
        };
        let exact_only = [
            "batch",
            "seed",
            "train_examples",
            "train_data",
            "validation_split",
            "loss",
            "bucket",
            "augment",
        ];
        if mid_epoch && exact_only.contains(&key.as_str()) {
            let detail = if key == "train_data" {
                String::new()
            } else {
                format!(" ({was} then, {value} now)")
            };
            return Err(CheckpointError::Incompatible {
                path: dir.join(CHECKPOINT_FILE),
                reason: format!(
                    "it stopped at step {} of {} in epoch {}, and {what} differs{detail}, so the rest of that epoch would not be the same examples in the same order; resume with the checkpoint's setting (change it at an epoch boundary)",
                    pos.step,
                    saved_steps,
                    pos.epoch + 1
                ),
            });
        }
        let note = match key.as_str() {
            "epochs" => {
                let was_n: usize = was.parse().unwrap_or(0);
                match &cfg.schedule {
                    Some(Schedule::Cosine { .. }) => format!(
                        "the run now has {value} epochs instead of {was}: the cosine schedule is stretched over {value} epochs, so the learning rate from epoch {} on differs from the interrupted run's",
                        pos.epoch + 1
                    ),
                    _ if cfg.epochs < was_n => format!("the run now stops after epoch {value} instead of {was}"),
                    _ => format!("the run now continues to epoch {value} instead of {was}"),
                }
            }
            "train_data" => "the training data differs from the checkpoint's run (same number of examples, other values)".to_string(),
            _ => format!("{what} changes from {was} to {value}"),
        };
        notes.push(note);
    }
    Ok(notes)
}
