//! Run directories: where `netc train` keeps a run's results when no `-o`
//! is given, and how `eval`, `predict` and `generate` read one back.
//!
//! A run directory is `ROOT/<model>/<n>/` (`ROOT` is `runs` in the working
//! directory unless `--runs-dir` names another; `n` counts from 1). It
//! holds:
//!
//! - `model.net`: a copy of the `.net` file the run trained, so the
//!   directory stays usable when the original changes;
//! - `weights.safetensors`: the final weights, as `-o` writes them (with
//!   the `data.*` metadata, such as a text vocabulary), once training has
//!   finished;
//! - `metrics.csv` and `metrics.png`: the per-epoch log and its plot;
//! - `run.json`: the command line, the times, netc's version, the settings
//!   the run trained with (after the command line's overrides), the data it
//!   read (absolute paths) and its final figures.
//!
//! Every file is written atomically ([`fsutil::write_atomic`]), and the
//! directory itself is taken with `create_dir`, which fails when it exists:
//! two runs started at once get different numbers.

use netc_compiler::train::{loss_name, loss_named, Loss, Optimizer, TrainConfig};
use netc_runtime::fsutil;
use netc_runtime::train::EpochStats;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Where run directories go by default, relative to the working directory.
pub const DEFAULT_ROOT: &str = "runs";
/// The final weights in a run directory.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// The copy of the model's source in a run directory.
pub const MODEL_FILE: &str = "model.net";
/// The per-epoch metrics log in a run directory.
pub const METRICS_FILE: &str = "metrics.csv";
/// The training curves in a run directory.
pub const PLOT_FILE: &str = "metrics.png";
/// The run's record in a run directory.
pub const RECORD_FILE: &str = "run.json";

/// A run directory being written by `netc train`.
pub struct RunDir {
    path: PathBuf,
    started: SystemTime,
}

impl RunDir {
    /// Takes the next free `root/<model>/<n>/` (one more than the highest
    /// number there, so a removed run's number is not reused while later
    /// ones exist) and copies the model's source into it.
    pub fn create(root: &Path, model: &str, net_file: &Path) -> Result<RunDir, String> {
        let parent = root.join(model);
        std::fs::create_dir_all(&parent)
            .map_err(|e| format!("cannot create run directory {}: {e}", parent.display()))?;
        let highest = std::fs::read_dir(&parent)
            .map_err(|e| format!("cannot read {}: {e}", parent.display()))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let mut n = highest + 1;
        let path = loop {
            let p = parent.join(n.to_string());
            match std::fs::create_dir(&p) {
                Ok(()) => break p,
                // Another run took it between the listing and now.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(format!("cannot create run directory {}: {e}", p.display())),
            }
        };
        let dir = RunDir {
            path,
            started: SystemTime::now(),
        };
        let source = std::fs::read(net_file)
            .map_err(|e| format!("cannot read `{}`: {e}", net_file.display()))?;
        dir.write(MODEL_FILE, &source)?;
        Ok(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory as printed: with a trailing `/`, so it reads as one.
    pub fn display(&self) -> String {
        format!("{}/", self.path.display())
    }

    /// When the run started.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// Writes `name` in the directory atomically; the error names the file.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let p = self.path.join(name);
        fsutil::write_atomic(&p, bytes).map_err(|e| format!("cannot write {}: {e}", p.display()))
    }

    /// Copies `from` into the directory as `name`, unless it is that file
    /// already (the log was written here) or does not exist (no plot was
    /// drawn).
    pub fn copy_in(&self, from: &Path, name: &str) -> Result<(), String> {
        let to = self.path.join(name);
        if from == to || !from.exists() {
            return Ok(());
        }
        let bytes =
            std::fs::read(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
        self.write(name, &bytes)
    }

    /// Writes `run.json`.
    pub fn write_record(&self, record: &Record) -> Result<(), String> {
        let mut text = serde_json::to_string_pretty(record)
            .map_err(|e| format!("cannot encode {RECORD_FILE}: {e}"))?;
        text.push('\n');
        self.write(RECORD_FILE, text.as_bytes())
    }
}

/// The test-set evaluation after training.
#[derive(Serialize)]
pub struct TestFigures {
    /// Mean loss.
    pub loss: f64,
    /// Accuracy (a fraction), for classifiers.
    pub accuracy: Option<f64>,
    /// Examples evaluated.
    pub examples: usize,
}

/// `run.json`. Reading one back ([`Run::open`]) takes only what `eval`
/// needs, so records of other versions still read.
#[derive(Serialize)]
pub struct Record {
    /// `finished`, or `interrupted` (Ctrl-C; no weights were saved).
    pub status: &'static str,
    /// netc's version.
    pub netc_version: &'static str,
    /// The command line, as given.
    pub command: Vec<String>,
    /// The working directory it ran in.
    pub cwd: String,
    /// Start and end, UTC, RFC 3339.
    pub started: String,
    /// See `started`.
    pub finished: String,
    /// The model trained.
    pub model: String,
    /// The `.net` file as given (its copy is `model.net`).
    pub source: String,
    /// The training data, absolute (as `--data` would take it).
    pub data: String,
    /// A text data set's test file, absolute.
    pub test_data: Option<String>,
    /// The settings trained with, after the command line's overrides.
    pub settings: Value,
    /// Epochs trained (fewer than `settings.epochs` after early stopping).
    pub epochs_run: usize,
    /// The last epoch's figures, named as in the metrics log.
    pub last_epoch: Option<Value>,
    /// The test-set evaluation, when there is a test set.
    pub test: Option<TestFigures>,
}

/// The settings part of `run.json`.
pub fn settings_json(cfg: &TrainConfig, threads: usize, device: &str) -> Value {
    json!({
        "loss": loss_name(cfg.loss),
        "optimizer": optimizer_json(&cfg.optimizer),
        "batch": cfg.batch,
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "validation_split": cfg.validation_split,
        "threads": threads,
        "device": device,
    })
}

/// An optimizer with its settings, named as in a train section.
fn optimizer_json(o: &Optimizer) -> Value {
    match *o {
        Optimizer::Sgd { lr } => json!({ "name": "sgd", "lr": lr }),
        Optimizer::Momentum {
            lr,
            momentum,
            nesterov,
        } => json!({ "name": "momentum", "lr": lr, "momentum": momentum, "nesterov": nesterov }),
        Optimizer::Adam {
            lr,
            beta1,
            beta2,
            epsilon,
            weight_decay,
        } => json!({
            "name": o.name(),
            "lr": lr,
            "beta1": beta1,
            "beta2": beta2,
            "epsilon": epsilon,
            "weight_decay": weight_decay,
        }),
    }
}

/// An epoch's figures under the metrics log's column names (`held_out` is
/// `val` or `test`).
pub fn epoch_json(s: &EpochStats, held_out: &str) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("epoch".into(), json!(s.epoch));
    m.insert("loss".into(), json!(s.loss));
    m.insert("accuracy".into(), json!(s.accuracy));
    m.insert(format!("{held_out}_loss"), json!(s.val_loss));
    m.insert(format!("{held_out}_accuracy"), json!(s.val_accuracy));
    m.insert("lr".into(), json!(s.lr));
    m.insert("seconds".into(), json!(s.seconds));
    Value::Object(m)
}

/// `path` made absolute against the working directory (without resolving
/// links), so the record still finds it from elsewhere; a two-file
/// `x.npy,y.npy` spec is made absolute file by file.
pub fn absolute_spec(spec: &str) -> String {
    let abs = |p: &str| {
        std::path::absolute(p.trim()).map_or_else(|_| p.to_string(), |a| a.display().to_string())
    };
    match spec.split_once(',') {
        Some((x, y)) => format!("{},{}", abs(x), abs(y)),
        None => abs(spec),
    }
}

/// A finished run directory, as `eval`, `predict` and `generate` read it.
pub struct Run {
    /// The directory.
    pub dir: PathBuf,
    /// The model it trained, from `run.json`.
    pub model: Option<String>,
    /// The data set to evaluate on: the text test file, else the training
    /// data (whose test split `eval` uses), from `run.json`.
    pub eval_data: Option<String>,
    /// The loss it trained with, from `run.json`.
    pub loss: Option<Loss>,
}

impl Run {
    /// Reads the run directory `dir`. `run.json` is optional (a directory
    /// holding `model.net` and `weights.safetensors` is enough), but one
    /// that cannot be read is an error.
    pub fn open(dir: &Path) -> Result<Run, String> {
        let record = dir.join(RECORD_FILE);
        let mut run = Run {
            dir: dir.to_path_buf(),
            model: None,
            eval_data: None,
            loss: None,
        };
        if !record.exists() {
            return Ok(run);
        }
        let text = std::fs::read_to_string(&record)
            .map_err(|e| format!("cannot read {}: {e}", record.display()))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not valid JSON: {e}", record.display()))?;
        let s = |v: &Value| v.as_str().map(str::to_string);
        run.model = s(&v["model"]);
        run.eval_data = s(&v["test_data"]).or_else(|| s(&v["data"]));
        run.loss = match v["settings"]["loss"].as_str() {
            Some(name) => Some(
                loss_named(name)
                    .ok_or_else(|| format!("{}: unknown loss `{name}`", record.display()))?,
            ),
            None => None,
        };
        Ok(run)
    }

    /// The copy of the model's source.
    pub fn model_file(&self) -> Result<PathBuf, String> {
        let p = self.dir.join(MODEL_FILE);
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{} is not a run directory of `netc train`: it has no {MODEL_FILE}",
                self.dir.display()
            ))
        }
    }

    /// The final weights; a run that did not finish has none.
    pub fn weights_file(&self) -> Result<PathBuf, String> {
        let p = self.dir.join(WEIGHTS_FILE);
        if p.is_file() {
            Ok(p)
        } else if self.dir.join(MODEL_FILE).is_file() {
            Err(format!(
                "run directory {} has no {WEIGHTS_FILE}: its training did not finish (see its {RECORD_FILE} and {METRICS_FILE})",
                self.dir.display()
            ))
        } else {
            Err(format!(
                "{} is not a run directory of `netc train`: it has no {WEIGHTS_FILE}",
                self.dir.display()
            ))
        }
    }
}

/// `t` as UTC in RFC 3339 (`2026-12-06T21:18:01Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        let at = |s| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_796_591_881), "2026-12-06T21:18:01Z");
    }

    #[test]
    fn run_numbers_count_up_and_skip_taken_ones() {
        let root = tempfile::tempdir().unwrap();
        let net = root.path().join("m.net");
        std::fs::write(&net, "model m {}").unwrap();
        let a = RunDir::create(root.path(), "m", &net).unwrap();
        let b = RunDir::create(root.path(), "m", &net).unwrap();
        assert!(a.path().ends_with("m/1") && b.path().ends_with("m/2"));
        std::fs::create_dir(root.path().join("m/7")).unwrap();
        let c = RunDir::create(root.path(), "m", &net).unwrap();
        assert!(c.path().ends_with("m/8"), "{}", c.display());
        assert_eq!(
            std::fs::read(c.path().join(MODEL_FILE)).unwrap(),
            b"model m {}"
        );
    }
}
