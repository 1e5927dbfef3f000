//! `netc train` and `netc eval`: data loading, progress display, and the
//! training loop of `netc_runtime::train`.
//!
//! Output follows one rule: what a run produces goes to stdout (the final
//! test figures, where the weights were saved, `eval`'s report), and
//! everything that tells how it is going goes to stderr (the progress bar,
//! the per-epoch lines, notes, warnings, errors). So `netc train ... >
//! result.txt` keeps the results, and the per-epoch figures are in the
//! metrics log.

use crate::report::Confusion;
use crate::runs::{self, RunDir};
use indicatif::{ProgressBar, ProgressStyle};
use netc_compiler::codegen::cpu::KernelPath;
use netc_compiler::pipeline::OptLevel;
use netc_compiler::train::{Loss, TextConfig, TextFormat, TextOptions, TrainConfig};
use netc_compiler::Graph;
use netc_runtime::checkpoint::{self, Checkpoint, CheckpointError, DirState};
use netc_runtime::data::text::PAD_ID;
use netc_runtime::data::{Dataset, LoadOptions, TextInfo};
use netc_runtime::plot::write_training_plot;
use netc_runtime::train::{self, EpochStats, Event, RunOptions};
use netc_runtime::{fault, fsutil, init_weights, Tensor, Weights};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

/// Finds a data path written in a `.net` file: relative to the file, then
/// to the working directory.
pub fn resolve_data(spec: &str, net_file: &Path) -> String {
    let beside = net_file.parent().unwrap_or(Path::new(".")).join(spec);
    if beside.exists() {
        beside.display().to_string()
    } else {
        spec.to_string()
    }
}

/// [`netc_runtime::data::load_for_model_with`] with its error as a
/// message and a warning for each file it skipped.
fn load_for(
    g: &Graph,
    spec: &str,
    loss: Option<Loss>,
    options: LoadOptions,
) -> Result<(Dataset, Option<Dataset>), String> {
    let (train, test) = netc_runtime::data::load_for_model_with(g, spec, loss, options)
        .map_err(|e| e.to_string())?;
    for d in std::iter::once(&train).chain(&test) {
        warn_skipped(d);
        note_image_cache(d);
    }
    Ok((train, test))
}

/// What the image decode cache did, on stderr: where the pixels came from
/// or went, so a user can see why a second run starts faster (or delete
/// the file).
fn note_image_cache(d: &Dataset) {
    use netc_runtime::data::image_cache::CacheUse;
    let Some(o) = &d.origin else { return };
    match &o.image_cache {
        Some(CacheUse::Read(file)) => eprintln!(
            "note: {} images of {} read from the decode cache {}",
            d.len(),
            o.path.display(),
            file.display()
        ),
        Some(CacheUse::Written(file)) => eprintln!(
            "note: decoded {} images of {}; kept in {} for the next run",
            d.len(),
            o.path.display(),
            file.display()
        ),
        Some(CacheUse::Unwritable(why)) => {
            eprintln!("warning: could not keep the decoded images in the cache ({why})")
        }
        None => {}
    }
}

/// One warning per file `--skip-bad-images` left out, on stderr.
fn warn_skipped(d: &Dataset) {
    let Some(o) = &d.origin else { return };
    for (path, why) in &o.skipped {
        eprintln!("warning: skipped {}: {why}", path.display());
    }
    if !o.skipped.is_empty() {
        eprintln!(
            "warning: {} unreadable image(s) left out of {}; {} examples remain",
            o.skipped.len(),
            o.path.display(),
            d.len()
        );
    }
}

/// [`load_for`] for weights `w`: weights trained on text carry their
/// vocabulary, format and label names, and the file is read with exactly
/// those (as the data set to evaluate; no vocabulary is built).
fn load_with(
    g: &Graph,
    w: &Weights,
    spec: &str,
    loss: Option<Loss>,
    options: LoadOptions,
) -> Result<(Dataset, Option<Dataset>), String> {
    let Some(info) = TextInfo::from_weights(w).map_err(|e| e.to_string())? else {
        return load_for(g, spec, loss, options);
    };
    let cfg = TextConfig {
        options: TextOptions {
            tokenizer: info.vocabulary.tokenizer(),
            max_vocab: None,
            min_count: 1,
            unknown: info.vocabulary.unknown_words(),
        },
        format: info.format,
    };
    let (set, _, _) =
        netc_runtime::data::load_text_for_model(g, Path::new(spec), None, &cfg, Some(&info), loss)
            .map_err(|e| e.to_string())?;
    note_truncation(&set);
    Ok((set, None))
}

/// Says on stderr when a text file's examples were cut to the model's
/// length: a per-token score then covers only the tokens read.
fn note_truncation(d: &Dataset) {
    if let Some(n) = d.truncation_note() {
        eprintln!("note: {n}");
    }
}

/// `--init-from`: copies the file's tensors that the model has into
/// `weights` (same name, same shape; other parameters keep their initial
/// values). A file sharing no name with the model is an error listing both
/// sides, since training from it would silently start from scratch;
/// tensors the model lacks are named in a warning.
fn init_from(weights: &mut Weights, path: &Path) -> Result<(), String> {
    let from = Weights::load(path).map_err(|e| e.to_string())?;
    let mut taken = 0;
    let mut ignored = Vec::new();
    for (name, t) in from.iter() {
        let Some(w) = weights.get_mut(name) else {
            ignored.push(name);
            continue;
        };
        if w.shape != t.shape {
            return Err(format!(
                "{}: tensor `{name}` has shape {:?} but the model expects {:?}",
                path.display(),
                t.shape,
                w.shape
            ));
        }
        *w = t.clone();
        taken += 1;
    }
    if taken == 0 {
        return Err(format!(
            "{}: no tensor in the file is a parameter of the model, so --init-from would \
             change nothing; the file has {}; the model has {}",
            path.display(),
            name_list(from.names()),
            name_list(weights.names())
        ));
    }
    if !ignored.is_empty() {
        eprintln!(
            "warning: {}: ignored {} tensor(s) the model does not have: {}",
            path.display(),
            ignored.len(),
            name_list(ignored.into_iter())
        );
    }
    eprintln!(
        "initialized {taken} tensors from {} ({} of the model's {} keep their initial values)",
        path.display(),
        weights.len() - taken,
        weights.len()
    );
    Ok(())
}

/// Up to 12 tensor names, quoted, then how many more.
fn name_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        return "no tensors".into();
    }
    let shown: Vec<String> = names.iter().take(12).map(|n| format!("`{n}`")).collect();
    let more = names.len().saturating_sub(12);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("{}{tail}", shown.join(", "))
}

/// Options from the command line.
pub struct TrainArgs {
    /// `--data`.
    pub data: Option<String>,
    /// `--epochs`.
    pub epochs: Option<usize>,
    /// `--batch`.
    pub batch: Option<usize>,
    /// `--lr`.
    pub lr: Option<f64>,
    /// `--optimizer`: one of the section's optimizer names, or `nesterov`.
    pub optimizer: Option<String>,
    /// `--loss`: one of the section's loss names.
    pub loss: Option<String>,
    /// `--seed`.
    pub seed: Option<u64>,
    /// `--threads`.
    pub threads: usize,
    /// `--checkpoint`.
    pub checkpoint: Option<PathBuf>,
    /// `--resume`.
    pub resume: bool,
    /// `--init-from`.
    pub init_from: Option<PathBuf>,
    /// `--output`: final weights.
    pub output: Option<PathBuf>,
    /// Where run directories go (`--runs-dir`, default `runs`); `None`
    /// with `-o` or `--no-save`, which keep no run directory.
    pub runs_root: Option<PathBuf>,
    /// `--log`: metrics CSV.
    pub log: Option<PathBuf>,
    /// `-O`: `O0` trains without the optimizer (recurrent layers are still
    /// unrolled).
    pub level: OptLevel,
    /// `--device`.
    pub device: netc_runtime::Device,
    /// `--kernels` / `NETC_KERNELS`.
    pub kernels: KernelPath,
    /// `--tf32`: how the GPU's PTX is generated.
    pub ptx: netc_compiler::codegen::ptx::PtxOptions,
    /// `--plot`: training-curve PNG.
    pub plot: Option<PathBuf>,
    /// `--overwrite`: replace an existing run in the checkpoint directory
    /// and an existing plot the run would write beside its log.
    pub overwrite: bool,
    /// `--skip-bad-images` and other choices about reading the data.
    pub load: LoadOptions,
}

/// The metrics log's header; `held_out` names the per-epoch evaluation
/// set (`val` or `test`, see [`held_out_name`]).
fn log_header(held_out: &str) -> String {
    format!("epoch,loss,accuracy,{held_out}_loss,{held_out}_accuracy,lr,seconds")
}

/// What the per-epoch evaluation figures are called: `val_*` when they
/// come from a validation split, `test_*` when they come from the test set
/// (which then only informs; no training decision reads it).
fn held_out_name(cfg: &TrainConfig, has_test: bool) -> &'static str {
    if cfg.validation_split > 0.0 || !has_test {
        "val"
    } else {
        "test"
    }
}

/// The exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells
/// report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// The rows of a metrics log written by an earlier run (for `--resume`, so
/// the plot shows the whole run); rows that do not parse are skipped.
fn read_log(path: &Path) -> Vec<EpochStats> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let num = |f: &str| f.parse::<f64>().ok();
    text.lines()
        .filter(|l| !l.starts_with("epoch,"))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let [epoch, loss, acc, vl, va, lr, secs] = f.as_slice() else {
                return None;
            };
            Some(EpochStats {
                epoch: epoch.parse().ok()?,
                loss: num(loss)?,
                accuracy: num(acc),
                val_loss: num(vl),
                val_accuracy: num(va),
                lr: num(lr)?,
                seconds: num(secs)?,
            })
        })
        .collect()
}

/// Opens the metrics log. Resuming keeps the header and the rows of the
/// `keep` epochs the checkpoint holds (rows of epochs it lost, and a row a
/// kill cut short, are dropped) and appends; otherwise the log starts
/// afresh with `header`.
fn open_log(path: &Path, resume: bool, keep: usize, header: &str) -> Result<std::fs::File, String> {
    let cannot = |e: std::io::Error| format!("cannot write `{}`: {e}", path.display());
    let mut text = format!("{header}\n");
    if resume {
        if let Ok(old) = std::fs::read_to_string(path) {
            let kept = old
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n') && !l.starts_with("epoch,"))
                .filter(|l| {
                    l.split(',')
                        .next()
                        .and_then(|e| e.parse::<usize>().ok())
                        .is_some_and(|e| (1..=keep).contains(&e))
                });
            text.extend(kept);
            if text == old {
                return std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(cannot);
            }
        }
    }
    fsutil::write_atomic(path, text.as_bytes()).map_err(cannot)?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(cannot)
}

/// Appends one row and flushes it to disk, so a kill loses no finished
/// epoch's row.
fn append_row(f: &mut std::fs::File, path: &Path, row: &str) -> std::io::Result<()> {
    fault::fs_step("append", path, || f.write_all(row.as_bytes()))?;
    fault::fs_step("fsync", path, || f.sync_data())
}

/// Checks, before any data is loaded or anything written, that the run's
/// outputs can be written and that it replaces nothing it was not asked to.
fn preflight(
    args: &TrainArgs,
    log_path: Option<&Path>,
    plot_path: Option<&Path>,
) -> Result<(), String> {
    if let Some(dir) = &args.checkpoint {
        if dir.exists() && !dir.is_dir() {
            return Err(format!(
                "checkpoint directory `{}` is a file, not a directory",
                dir.display()
            ));
        }
        if checkpoint::is_locked(dir) {
            return Err(CheckpointError::Locked { dir: dir.clone() }.to_string());
        }
        let state = checkpoint::dir_state(dir);
        if args.resume && state == DirState::Empty {
            return Err(CheckpointError::NotFound {
                dir: dir.clone(),
                why: if dir.exists() {
                    format!("it has no {}", checkpoint::CHECKPOINT_FILE)
                } else {
                    "the directory does not exist".into()
                },
            }
            .to_string());
        }
        let old_log = dir.join("metrics.csv");
        if !args.resume && !args.overwrite && (state != DirState::Empty || old_log.exists()) {
            let what = match Checkpoint::load(dir) {
                Ok(ck) => format!("a checkpoint of `{}` {}", ck.model, ck.position),
                Err(_) if state == DirState::Empty => format!("{}", old_log.display()),
                Err(_) if state == DirState::Started => format!(
                    "a run that stopped before its first checkpoint ({})",
                    dir.join(checkpoint::LOCK_FILE).display()
                ),
                Err(_) => "files of an earlier run".into(),
            };
            return Err(format!(
                "checkpoint directory {} already holds {what}; pass --resume to continue that run, or --overwrite to start a new one there",
                dir.display()
            ));
        }
    }
    let explicit = [
        args.output.as_deref(),
        args.log.as_deref(),
        args.plot.as_deref(),
    ];
    for p in explicit.into_iter().flatten() {
        fsutil::check_writable(p)?;
    }
    // A plot named after the log, not by the user, must not replace a file
    // the user has.
    if let (None, Some(plot)) = (&args.plot, plot_path) {
        let ours = args
            .checkpoint
            .as_ref()
            .is_some_and(|d| log_path == Some(&d.join("metrics.csv")));
        if !ours && !args.resume && !args.overwrite && plot.exists() {
            return Err(format!(
                "`{}` exists and would be replaced by the training plot of --log {}; pass --plot PATH to put the plot elsewhere, or --overwrite to replace it",
                plot.display(),
                log_path.map_or(String::new(), |p| p.display().to_string())
            ));
        }
    }
    Ok(())
}

/// Saves the trained weights somewhere after writing `-o` failed; says
/// where, or that nothing could be saved.
fn save_elsewhere(weights: &mut Weights, model: &str, checkpoint: Option<&Path>) -> String {
    if let Some(dir) = checkpoint {
        let copy = dir.join(checkpoint::WEIGHTS_FILE);
        if copy.exists() {
            return format!(
                "the trained weights are in {} (the last checkpoint)",
                copy.display()
            );
        }
    }
    let name = format!("netc-{model}-{}.safetensors", std::process::id());
    let mut tried = Vec::new();
    for dir in [std::env::temp_dir(), PathBuf::from(".")] {
        let p = dir.join(&name);
        match weights.save(&p) {
            Ok(()) => return format!("the trained weights were saved to {} instead", p.display()),
            Err(e) => tried.push(e.to_string()),
        }
    }
    format!(
        "the trained weights could not be saved anywhere ({})",
        tried.join("; ")
    )
}

/// The file's section with the command line's overrides, checked by the
/// same [`validate`](netc_compiler::train::validate) as the file, so
/// `--lr nan` or `--batch 0` fail as `lr: nan` or `batch: 0` would.
fn apply_overrides(mut cfg: TrainConfig, a: &TrainArgs) -> Result<TrainConfig, String> {
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    if let Some(b) = a.batch {
        cfg.batch = b;
    }
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    if let Some(name) = &a.optimizer {
        cfg.optimizer = override_optimizer(&cfg.optimizer, name)?;
    }
    if let Some(name) = &a.loss {
        cfg.loss = netc_compiler::train::loss_named(name).ok_or_else(|| {
            format!(
                "--loss: unknown loss `{name}`; expected one of {}",
                netc_compiler::train::LOSSES.join(", ")
            )
        })?;
    }
    if let Some(lr) = a.lr {
        use netc_compiler::train::Optimizer::*;
        match &mut cfg.optimizer {
            Sgd { lr: l } | Momentum { lr: l, .. } | Adam { lr: l, .. } => *l = lr,
        }
    }
    if let Err(errs) = netc_compiler::train::validate(&cfg) {
        let e = &errs[0];
        use netc_compiler::train::ConfigError::*;
        let flag = match e {
            OutOfRange { setting: "lr", .. } if a.lr.is_some() => "--lr",
            MinLrAboveLr { .. } if a.lr.is_some() => "--lr",
            MinLrAboveLr { .. } if a.optimizer.is_some() => "--optimizer",
            Count {
                setting: "batch", ..
            } if a.batch.is_some() => "--batch",
            Count {
                setting: "epochs", ..
            } if a.epochs.is_some() => "--epochs",
            _ => "the train section",
        };
        return Err(format!("{flag}: {e}"));
    }
    Ok(cfg)
}

/// `--optimizer NAME` over the section's optimizer: NAME's defaults, as
/// `optimizer: NAME` would give them, unless the section already uses NAME,
/// whose settings are then kept. `nesterov` is momentum with Nesterov's
/// lookahead (and `momentum` without it).
fn override_optimizer(
    file: &netc_compiler::train::Optimizer,
    name: &str,
) -> Result<netc_compiler::train::Optimizer, String> {
    use netc_compiler::train::{Optimizer, OPTIMIZERS};
    let (base, lookahead) = match name {
        "nesterov" => ("momentum", true),
        n => (n, false),
    };
    let mut o = if file.name() == base {
        file.clone()
    } else {
        Optimizer::named(base).ok_or_else(|| {
            format!(
                "--optimizer: unknown optimizer `{name}`; expected one of {}, nesterov",
                OPTIMIZERS.join(", ")
            )
        })?
    };
    if let Optimizer::Momentum { nesterov, .. } = &mut o {
        *nesterov = lookahead;
    }
    Ok(o)
}

fn fmt_metric(name: &str, v: Option<f64>, pct: bool) -> String {
    match v {
        Some(v) if pct => format!("  {name} {:.2}%", v * 100.0),
        Some(v) => format!("  {name} {v:.4}"),
        None => String::new(),
    }
}

/// The data set to train on: `--data`, else the section's `data` (relative
/// to the `.net` file).
fn data_spec(args: &TrainArgs, cfg: &TrainConfig, net_file: &Path) -> Result<String, String> {
    match (&args.data, &cfg.data) {
        (Some(d), _) => Ok(d.clone()),
        (None, Some(d)) => Ok(resolve_data(d, net_file)),
        (None, None) => {
            Err("no data: pass --data PATH or write `data: \"PATH\"` in the train section".into())
        }
    }
}

/// Where the metrics log and the plot beside it go: --log, else the
/// checkpoint directory's metrics.csv, else the run directory's; the plot
/// is the log's name with `.png` unless --plot names it.
fn log_and_plot_paths(
    args: &TrainArgs,
    run_dir: Option<&Path>,
) -> (Option<PathBuf>, Option<PathBuf>) {
    let log_path = args
        .log
        .clone()
        .or_else(|| args.checkpoint.as_ref().map(|d| d.join("metrics.csv")))
        .or_else(|| run_dir.map(|d| d.join(runs::METRICS_FILE)));
    let plot_path = args
        .plot
        .clone()
        .or_else(|| log_path.as_ref().map(|p| p.with_extension("png")));
    (log_path, plot_path)
}

/// Verifies the checkpoint to resume from before anything is written;
/// returns whether the run resumes and how many epochs the checkpoint holds.
fn verify_resume(args: &TrainArgs, g: &Graph) -> Result<(bool, usize), String> {
    let (true, Some(dir)) = (args.resume, &args.checkpoint) else {
        return Ok((false, 0));
    };
    if checkpoint::dir_state(dir) == DirState::Started {
        eprintln!(
            "note: {} holds no checkpoint yet (its run stopped before the first one); training starts from the beginning",
            dir.display()
        );
        return Ok((false, 0));
    }
    let ck = Checkpoint::load(dir).map_err(|e| e.to_string())?;
    ck.check_model(g, dir).map_err(|e| e.to_string())?;
    Ok((true, ck.position.epoch))
}

/// Takes the checkpoint directory (locks it, cleans what a killed run
/// left, and with --overwrite removes the earlier run's files) and cleans
/// temporary files a killed run left beside the other outputs. The lock
/// is held while the returned value lives.
fn take_outputs(args: &TrainArgs) -> Result<Option<checkpoint::DirLock>, String> {
    let lock = match &args.checkpoint {
        Some(dir) => {
            let lock = checkpoint::lock(dir).map_err(|e| e.to_string())?;
            fsutil::remove_leftovers(dir)
                .map_err(|e| format!("cannot clean {}: {e}", dir.display()))?;
            if args.overwrite && !args.resume {
                for f in [
                    checkpoint::CHECKPOINT_FILE,
                    checkpoint::WEIGHTS_FILE,
                    checkpoint::LEGACY_OPTIMIZER_FILE,
                    "metrics.csv",
                    "metrics.png",
                ] {
                    let p = dir.join(f);
                    if p.exists() {
                        std::fs::remove_file(&p)
                            .map_err(|e| format!("cannot remove {}: {e}", p.display()))?;
                    }
                }
            }
            Some(lock)
        }
        None => None,
    };
    for p in [&args.output, &args.log, &args.plot].into_iter().flatten() {
        fsutil::remove_leftovers_of(p)
            .map_err(|e| format!("cannot clean up beside {}: {e}", p.display()))?;
    }
    Ok(lock)
}

/// Ctrl-C ends a run in a checkpoint; a second Ctrl-C does not wait for
/// it (the previous checkpoint is intact: they are replaced atomically).
fn handle_interrupts() {
    let _ = ctrlc::set_handler(|| {
        if train::INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
    });
}

/// What `netc train` shows and records as the training loop reports:
/// the progress bar, one line per epoch, the metrics log and the plot.
struct Progress<'a> {
    model: &'a str,
    epochs: usize,
    /// Whether accuracy is shown as a percentage (not for MSE).
    pct: bool,
    held_out: &'static str,
    bar: Option<ProgressBar>,
    log: Option<(std::fs::File, PathBuf)>,
    log_failed: bool,
    plot: Option<PathBuf>,
    /// Every epoch's figures so far, for the plot.
    curves: Vec<EpochStats>,
    /// The last epoch's figures, for the run's record.
    last: Option<EpochStats>,
    interrupted: bool,
}

impl Progress<'_> {
    fn on(&mut self, e: Event) {
        match e {
            Event::EpochStart { epoch, steps } => {
                let b = ProgressBar::new(steps as u64);
                b.set_style(
                    ProgressStyle::with_template(
                        "epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                b.set_prefix(format!("{epoch}/{}", self.epochs));
                self.bar = Some(b);
            }
            Event::Step {
                step,
                loss,
                accuracy,
                examples_per_s,
            } => {
                if let Some(b) = &self.bar {
                    b.set_message(format!(
                        "loss {loss:.4}{} {examples_per_s:.0} ex/s",
                        fmt_metric("acc", accuracy, self.pct)
                    ));
                    // A GPU reports every few steps (`GPU_REPORT_STEPS`).
                    b.set_position(step as u64);
                }
            }
            Event::Epoch(s) => self.epoch(s),
            Event::EarlyStop { epoch } => eprintln!("early stopping after epoch {epoch}"),
            Event::Resumed {
                epoch,
                step,
                steps,
                notes,
            } => {
                if step == 0 {
                    eprintln!("resuming at the start of epoch {epoch}");
                } else {
                    eprintln!("resuming in epoch {epoch} after step {step} of {steps}");
                }
                for n in notes {
                    eprintln!("note: {n}");
                }
            }
            Event::Interrupted { checkpoint } => {
                self.interrupted = true;
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                match checkpoint {
                    Some(d) => eprintln!(
                        "interrupted: checkpoint saved in {}; continue with --resume",
                        d.display()
                    ),
                    None => eprintln!("interrupted (no --checkpoint given, nothing saved)"),
                }
            }
        }
    }

    /// An epoch's line, log row and plot.
    fn epoch(&mut self, s: EpochStats) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let (pct, held_out) = (self.pct, self.held_out);
        self.last = Some(s.clone());
        eprintln!(
            "epoch {}/{}  loss {:.4}{}{}{}  {:.1}s",
            s.epoch,
            self.epochs,
            s.loss,
            fmt_metric("acc", s.accuracy, pct),
            fmt_metric(&format!("{held_out}_loss"), s.val_loss, false),
            fmt_metric(&format!("{held_out}_acc"), s.val_accuracy, pct),
            s.seconds
        );
        if let Some((f, p)) = self.log.as_mut() {
            let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
            let row = format!(
                "{},{:.6},{},{},{},{},{:.3}\n",
                s.epoch,
                s.loss,
                opt(s.accuracy),
                opt(s.val_loss),
                opt(s.val_accuracy),
                // The f32 the kernels used, shortest round-trip form.
                s.lr as f32,
                s.seconds
            );
            if let Err(e) = append_row(f, p, &row) {
                if !self.log_failed {
                    eprintln!("warning: cannot append to {}: {e}", p.display());
                }
                self.log_failed = true;
            }
        }
        if let Some(p) = &self.plot {
            // A resumed run replaces the epochs it trains again.
            self.curves.retain(|c| c.epoch < s.epoch);
            self.curves.push(s);
            // A plot that cannot be drawn is worth a warning, not the run.
            if let Err(e) = write_training_plot(p, self.model, held_out, &self.curves) {
                eprintln!("warning: {e}");
            }
        }
    }
}

/// `netc train`.
pub fn run_train(
    g: &Graph,
    cfg: &TrainConfig,
    net_file: &Path,
    args: &TrainArgs,
) -> Result<ExitCode, String> {
    let cfg = apply_overrides(cfg.clone(), args)?;
    if args.device == netc_runtime::Device::Cuda {
        // Fail on a machine without a GPU before loading any data.
        netc_runtime::cuda::open().map_err(|e| e.to_string())?;
    }
    let spec = data_spec(args, &cfg, net_file)?;
    // The run directory's files need no checks: the directory is new.
    let (log_path, plot_path) = log_and_plot_paths(args, None);
    preflight(args, log_path.as_deref(), plot_path.as_deref())?;
    // A `test` file written in the section is relative to it, as `data` is.
    let test_file = match &cfg.text {
        Some(_) => cfg.test.as_ref().map(|t| resolve_data(t, net_file)),
        None => None,
    };
    let (train_set, test) = match &cfg.text {
        Some(text) => {
            let test = test_file.clone();
            // Weights to start from that were trained on text fix the ids:
            // their embedding rows belong to their vocabulary, so it is
            // reused, not rebuilt from this file.
            let saved = match &args.init_from {
                Some(p) => {
                    let w = Weights::load(p).map_err(|e| e.to_string())?;
                    TextInfo::from_weights(&w).map_err(|e| e.to_string())?
                }
                None => None,
            };
            let (train_set, test, _) = netc_runtime::data::load_text_for_model(
                g,
                Path::new(&spec),
                test.as_deref().map(Path::new),
                text,
                saved.as_ref(),
                Some(cfg.loss),
            )
            .map_err(|e| e.to_string())?;
            (train_set, test)
        }
        None => load_for(g, &spec, Some(cfg.loss), args.load.clone())?,
    };
    let mut weights = init_weights(g, cfg.seed).map_err(|e| e.to_string())?;
    if let Some(path) = &args.init_from {
        init_from(&mut weights, path)?;
    }
    let val = if cfg.validation_split > 0.0 {
        None
    } else {
        test.as_ref()
    };
    eprintln!(
        "training `{}` on {} examples ({}), batch {}, {} epochs, {}",
        g.name,
        train_set.len(),
        spec,
        cfg.batch,
        cfg.epochs,
        match args.device {
            netc_runtime::Device::Cpu => format!("{} thread(s)", args.threads),
            netc_runtime::Device::Cuda => "on the GPU (--device cuda)".to_string(),
        }
    );
    note_truncation(&train_set);
    if let Some(t) = &test {
        note_truncation(t);
    }
    let (resume, epochs_kept) = verify_resume(args, g)?;
    // Before the directory is taken: from the moment a run holds it, Ctrl-C
    // must end in a checkpoint, not kill the process.
    handle_interrupts();
    let _lock = take_outputs(args)?;
    // Taken before training, so the metrics log streams into it and two
    // runs started together get different directories.
    let run = match &args.runs_root {
        Some(root) => {
            let run = RunDir::create(root, &g.name, net_file)?;
            eprintln!("run directory: {}", run.display());
            Some(run)
        }
        None => None,
    };
    let (log_path, plot_path) = log_and_plot_paths(args, run.as_ref().map(RunDir::path));
    let held_out = held_out_name(&cfg, val.is_some());
    let log = match &log_path {
        Some(p) => Some((
            open_log(p, args.resume, epochs_kept, &log_header(held_out))?,
            p.clone(),
        )),
        None => None,
    };
    let curves = match (&log_path, args.resume) {
        (Some(p), true) => read_log(p),
        _ => Vec::new(),
    };
    let pct = cfg.loss != Loss::Mse;
    let mut progress = Progress {
        model: &g.name,
        epochs: cfg.epochs,
        pct,
        held_out,
        bar: None,
        log,
        log_failed: false,
        plot: plot_path.clone(),
        curves,
        last: None,
        interrupted: false,
    };
    let opts = RunOptions {
        threads: args.threads,
        checkpoint: args.checkpoint.clone(),
        resume,
        init_from: args.init_from.clone(),
        max_steps: None,
        level: args.level,
        device: args.device,
        kernels: args.kernels,
        ptx: args.ptx,
        deferred_reads: false,
    };
    let mut trained = train::train(g, &cfg, &train_set, val, weights, &opts, &mut |e| {
        progress.on(e)
    })
    .map_err(|e| e.to_string())?;
    let last = progress.last.take();
    let record = |status, test_figures| runs::Record {
        status,
        netc_version: env!("CARGO_PKG_VERSION"),
        // `args` would panic on an argument that is not UTF-8.
        command: std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        cwd: std::env::current_dir().map_or_else(|_| String::new(), |d| d.display().to_string()),
        started: runs::rfc3339(run.as_ref().map_or_else(SystemTime::now, RunDir::started)),
        finished: runs::rfc3339(SystemTime::now()),
        model: g.name.clone(),
        source: net_file.display().to_string(),
        data: runs::absolute_spec(&spec),
        test_data: test_file.as_deref().map(runs::absolute_spec),
        settings: runs::settings_json(
            &cfg,
            args.threads,
            match args.device {
                netc_runtime::Device::Cpu => "cpu",
                netc_runtime::Device::Cuda => "cuda",
            },
        ),
        // Epochs are numbered from the run's start, resumed or not.
        epochs_run: last.as_ref().map_or(0, |s| s.epoch),
        last_epoch: last.as_ref().map(|s| runs::epoch_json(s, held_out)),
        test: test_figures,
    };
    if progress.interrupted {
        // `-o` and the run's weights are the finished result only; the
        // run directory keeps what the run did.
        if let Some(run) = &run {
            let kept = keep_metrics(run, log_path.as_deref(), plot_path.as_deref())
                .and_then(|()| run.write_record(&record("interrupted", None)));
            match kept {
                Ok(()) => eprintln!(
                    "note: {} keeps the interrupted run's metrics (no weights)",
                    run.display()
                ),
                Err(e) => eprintln!("warning: {e}"),
            }
        }
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    if let Some(out) = &args.output {
        if let Err(e) = trained.weights.save(out) {
            let saved = save_elsewhere(&mut trained.weights, &g.name, args.checkpoint.as_deref());
            return Err(format!("{e}; {saved}"));
        }
        println!("wrote weights to {}", out.display());
    }
    if let Some(run) = &run {
        // The weights first: whatever fails after this, they are kept.
        let path = run.path().join(runs::WEIGHTS_FILE);
        if let Err(e) = trained.weights.save(&path) {
            let saved = save_elsewhere(&mut trained.weights, &g.name, args.checkpoint.as_deref());
            return Err(format!("{e}; {saved}"));
        }
    }
    // Ctrl-C after the last epoch: the weights are saved, the test set is
    // not evaluated.
    let interrupted = train::INTERRUPTED.load(Ordering::SeqCst);
    let mut test_figures = None;
    if let (Some(test), false) = (&test, interrupted) {
        let (l, a) = train::evaluate_with(
            g,
            cfg.loss,
            &trained.weights,
            test,
            args.threads,
            args.kernels,
        )
        .map_err(|e| e.to_string())?;
        println!(
            "test: loss {l:.4}{} on {} examples",
            fmt_metric("accuracy", a, pct),
            test.len()
        );
        test_figures = Some(runs::TestFigures {
            loss: l,
            accuracy: a,
            examples: test.len(),
        });
    }
    if let Some(run) = &run {
        let saved_in = |e: String| {
            format!(
                "{e} (the trained weights are saved in {})",
                run.path().join(runs::WEIGHTS_FILE).display()
            )
        };
        keep_metrics(run, log_path.as_deref(), plot_path.as_deref()).map_err(saved_in)?;
        run.write_record(&record("finished", test_figures))
            .map_err(saved_in)?;
        println!("saved: {}", run.display());
    }
    if interrupted {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies the metrics log and its plot into the run directory when they
/// were written elsewhere (`--log`, `--plot`, `--checkpoint`), so the run
/// directory always holds its run's metrics.
fn keep_metrics(run: &RunDir, log: Option<&Path>, plot: Option<&Path>) -> Result<(), String> {
    if let Some(p) = log {
        run.copy_in(p, runs::METRICS_FILE)?;
    }
    if let Some(p) = plot {
        run.copy_in(p, runs::PLOT_FILE)?;
    }
    Ok(())
}

/// `netc eval`: loss, accuracy and, for classifiers and taggers, a
/// confusion matrix and per-class precision, recall and F1.
pub fn run_eval(
    g: &Graph,
    loss: Loss,
    weights: &Path,
    data: &str,
    threads: usize,
    kernels: KernelPath,
    load: LoadOptions,
) -> Result<String, String> {
    let w = Weights::load(weights).map_err(|e| e.to_string())?;
    let (train_set, test) = load_with(g, &w, data, Some(loss), load)?;
    let set = test.unwrap_or(train_set);
    let (l, acc) =
        train::evaluate_with(g, loss, &w, &set, threads, kernels).map_err(|e| e.to_string())?;
    let mut out = format!(
        "{} examples: loss {l:.4}{}\n",
        set.len(),
        fmt_metric("accuracy", acc, true)
    );
    let p = train::predict_with(g, &w, &set.x, set.lengths.as_deref(), threads, kernels)
        .map_err(|e| e.to_string())?;
    let k = p.data.len() / set.len().max(1);
    // Classes lie along the output's last axis (a tagger's [T, C] is
    // scored per token); one sigmoid output is two classes.
    let last = g
        .node(g.outputs[0].1)
        .shape
        .as_ref()
        .and_then(|s| s.0.last().copied())
        .unwrap_or(k);
    let classes = match loss {
        Loss::CrossEntropy => last,
        Loss::BinaryCrossEntropy if k == 1 => 2,
        _ => 0,
    };
    if loss == Loss::CrossEntropy && k > last {
        // Per-token outputs: the loss per scored token (the training loss
        // averages each sequence first), in bits as language models report.
        if let Some(nll) = crate::report::token_nll(&p.data, &set.y, last) {
            out.push_str(&format!(
                "per token: loss {nll:.4} ({:.4} bits)\n",
                nll / std::f64::consts::LN_2
            ));
        }
        // The accuracy above is per token; a translation or an answer is
        // right only when all of its tokens are.
        let (right, scored) = crate::report::sequence_accuracy(&p.data, &set.y, last, k / last);
        if scored > 0 {
            out.push_str(&format!(
                "whole sequences: accuracy {:.2}% ({right} of {scored} entirely right)\n",
                100.0 * right as f64 / scored as f64
            ));
        }
    }
    if classes >= 2 {
        let c = Confusion::new(&p.data, &set.y, classes);
        out.push_str(&c.matrix());
        // A language model's classes are its vocabulary's tokens.
        let vocab_tokens = TextInfo::from_weights(&w)
            .ok()
            .flatten()
            .filter(|i| i.labels.is_none())
            .map(|i| i.vocabulary.tokens().to_vec());
        let names = set
            .origin
            .as_ref()
            .and_then(|o| o.class_names.as_deref())
            .or(vocab_tokens.as_deref());
        out.push_str(&c.per_class(names));
    }
    Ok(out)
}

/// `netc predict`: class probabilities (the model's outputs) for `.npy`
/// or IDX input, written as `.npy`.
pub fn run_predict(
    g: &Graph,
    weights: &Path,
    input: &str,
    output: &Path,
    threads: usize,
    kernels: KernelPath,
    load: LoadOptions,
) -> Result<String, String> {
    let w = Weights::load(weights).map_err(|e| e.to_string())?;
    let (x, lengths) = if input.ends_with(".npy") {
        let t = netc_runtime::read_npy(input).map_err(|e| e.to_string())?;
        (crate::running::batch_input(g, g.inputs[0], t, input)?, None)
    } else {
        let (train_set, test) = load_with(g, &w, input, None, load)?;
        let set = test.unwrap_or(train_set);
        (set.x, set.lengths)
    };
    let p = train::predict_with(g, &w, &x, lengths.as_deref(), threads, kernels)
        .map_err(|e| e.to_string())?;
    let as_text = output.extension().is_some_and(|e| e == "txt" || e == "tsv");
    if as_text {
        let info = TextInfo::from_weights(&w)
            .map_err(|e| e.to_string())?
            .filter(|i| i.labels.is_some() || i.format == TextFormat::Pairs)
            .ok_or_else(|| {
                format!(
                    "{}: text predictions need weights trained on a classification, tagging or \
                     pairs file (they name the classes); write .npy for the raw outputs",
                    output.display()
                )
            })?;
        let lines = text_predictions(&info, &x, &p)?;
        fsutil::write_atomic(output, lines.as_bytes()).map_err(|e| e.to_string())?;
        return Ok(format!(
            "wrote {} predicted {} to {}",
            x.shape[0],
            match info.format {
                TextFormat::Tagging => "tag sequences",
                TextFormat::Pairs => "answers",
                _ => "labels",
            },
            output.display()
        ));
    }
    netc_runtime::write_npy(output, &p).map_err(|e| e.to_string())?;
    Ok(format!(
        "wrote predictions {:?} to {}",
        p.shape,
        output.display()
    ))
}

/// One line per example in the data's own layout: `label<TAB>text` for
/// classification, `word/TAG ...` for tagging (the words as the vocabulary
/// knows them: unknown ones are `<unk>`), `question<TAB>answer` for pairs
/// (the answer's most likely token at each output step, up to the first
/// `<pad>`), the most likely class for each.
fn text_predictions(info: &TextInfo, x: &Tensor, p: &Tensor) -> Result<String, String> {
    use crate::report::argmax;
    let labels = info.labels.as_deref().unwrap_or_default();
    let (n, t) = (x.shape[0], x.data.len() / x.shape[0].max(1));
    // Classes (tags, answer tokens) lie along the output's last axis.
    let c = p.shape.last().copied().unwrap_or(1).max(1);
    let name = |k: usize| labels.get(k).map_or("?", |s| s.as_str());
    let v = &info.vocabulary;
    let mut out = String::new();
    for i in 0..n {
        let ids: Vec<u32> = x.data[i * t..(i + 1) * t]
            .iter()
            .map(|&f| f as u32)
            .collect();
        let per = p.data.len() / n;
        let rows = &p.data[i * per..(i + 1) * per];
        match info.format {
            TextFormat::Tagging => {
                let tagged: Vec<String> = ids
                    .iter()
                    .zip(rows.chunks(c))
                    .filter(|(id, _)| **id != PAD_ID)
                    .map(|(id, row)| format!("{}/{}", v.decode(&[*id]), name(argmax(row))))
                    .collect();
                out.push_str(&tagged.join(" "));
            }
            TextFormat::Pairs => {
                let answer: Vec<u32> = rows
                    .chunks(c)
                    .map(|row| argmax(row) as u32)
                    .take_while(|&id| id != PAD_ID)
                    .collect();
                out.push_str(&v.decode(&ids));
                out.push('\t');
                out.push_str(&v.decode(&answer));
            }
            _ => {
                out.push_str(name(argmax(rows)));
                out.push('\t');
                out.push_str(&v.decode(&ids));
            }
        }
        out.push('\n');
    }
    Ok(out)
}
