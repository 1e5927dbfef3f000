//! The training section: `train MODEL { key: value ... }` checked into a
//! typed [`TrainConfig`]. Unknown keys, wrong types and out-of-range values
//! are diagnostics.
//!
//! The admissible values of every hyper-parameter are written once, as the
//! [`Bound`]s in [`bounds`], and [`validate`] applies them to a whole
//! config: the checker and the command-line overrides (`--lr`, `--batch`,
//! `--epochs`) accept exactly the same values. Likewise the names of
//! optimizers and losses ([`OPTIMIZERS`], [`LOSSES`]) and an optimizer's
//! defaults ([`Optimizer::named`]) serve both `--optimizer`/`--loss` and
//! the checker.

use crate::args::{setting_type_error, Args};
pub use crate::bound::Bound;
use crate::graph::{Graph, NodeId};
pub use crate::op::Loss;
pub use crate::text_data::{Pad, TextConfig, TextFormat, TextOptions, Tokenizer, UnknownWords};
use netc_lang::ast::{Arg, Setting, Train, Value, ValueKind};
use netc_lang::{did_you_mean, Diagnostic, Span};
use std::collections::HashSet;

/// Optimizers and their hyperparameters.
#[derive(Clone, Debug, PartialEq)]
pub enum Optimizer {
    /// Plain gradient descent.
    Sgd {
        /// Learning rate.
        lr: f64,
    },
    /// Heavy-ball momentum, optionally Nesterov.
    Momentum {
        /// Learning rate.
        lr: f64,
        /// Momentum coefficient.
        momentum: f64,
        /// Nesterov's lookahead form.
        nesterov: bool,
    },
    /// Adam; with `weight_decay > 0` and `decoupled`, AdamW.
    Adam {
        /// Learning rate.
        lr: f64,
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator guard.
        epsilon: f64,
        /// Decoupled weight decay (AdamW); 0 for Adam.
        weight_decay: f64,
    },
}

/// The optimizers a train section names (`optimizer: adam(...)`).
pub const OPTIMIZERS: &[&str] = &["sgd", "momentum", "adam", "adamw"];

/// The losses a train section names (`loss: cross_entropy`).
pub const LOSSES: &[&str] = &["mse", "binary_cross_entropy", "cross_entropy"];

impl Optimizer {
    /// The optimizer `name` (one of [`OPTIMIZERS`]) with the default
    /// settings that `optimizer: name` in a train section gives it: the
    /// checker builds it, so the defaults are written once. `None` for any
    /// other name.
    pub fn named(name: &str) -> Option<Optimizer> {
        let v = Value {
            kind: ValueKind::Ident(name.to_string()),
            span: Span::default(),
        };
        let mut diags = Vec::new();
        optimizer(&v, &mut diags).filter(|_| diags.is_empty())
    }

    /// The name a train section gives this optimizer; Adam with decoupled
    /// weight decay is `adamw`.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "sgd",
            Optimizer::Momentum { .. } => "momentum",
            Optimizer::Adam { weight_decay, .. } if *weight_decay > 0.0 => "adamw",
            Optimizer::Adam { .. } => "adam",
        }
    }

    /// The learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            Optimizer::Sgd { lr } | Optimizer::Momentum { lr, .. } | Optimizer::Adam { lr, .. } => {
                *lr
            }
        }
    }
}

/// The loss `name` (one of [`LOSSES`]) names.
pub fn loss_named(name: &str) -> Option<Loss> {
    match name {
        "mse" => Some(Loss::Mse),
        "binary_cross_entropy" => Some(Loss::BinaryCrossEntropy),
        "cross_entropy" => Some(Loss::CrossEntropy),
        _ => None,
    }
}

/// The name a train section gives `loss`.
pub fn loss_name(loss: Loss) -> &'static str {
    match loss {
        Loss::Mse => "mse",
        Loss::BinaryCrossEntropy => "binary_cross_entropy",
        Loss::CrossEntropy => "cross_entropy",
    }
}

/// Learning-rate schedules.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// Multiply by `gamma` every `every` epochs.
    Step {
        /// Period in epochs.
        every: usize,
        /// Factor.
        gamma: f64,
    },
    /// Cosine decay to `min_lr` over the run.
    Cosine {
        /// Final learning rate.
        min_lr: f64,
    },
}

/// Early stopping on a monitored metric.
#[derive(Clone, Debug, PartialEq)]
pub struct EarlyStopping {
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// `val_loss`, `val_accuracy`, `loss` or `accuracy`.
    pub monitor: String,
    /// Smallest change that counts as improvement.
    pub min_delta: f64,
}

/// A checked training section. Defaults follow Keras.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// The model trained.
    pub model: String,
    /// Where the section was written.
    pub span: Span,
    /// The loss.
    pub loss: Loss,
    /// The optimizer.
    pub optimizer: Optimizer,
    /// Examples per step.
    pub batch: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Metrics reported each epoch (`accuracy`).
    pub metrics: Vec<String>,
    /// Clip gradients to this global L2 norm.
    pub clip_norm: Option<f64>,
    /// Clip each gradient element to `[-v, v]`.
    pub clip_value: Option<f64>,
    /// L1 penalty coefficient on weights.
    pub l1: f64,
    /// L2 penalty coefficient on weights.
    pub l2: f64,
    /// Early stopping, if any.
    pub early_stopping: Option<EarlyStopping>,
    /// Fraction of the training data held out for validation.
    pub validation_split: f64,
    /// Layers whose parameters are not updated.
    pub freeze: Vec<String>,
    /// Learning-rate schedule, if any.
    pub schedule: Option<Schedule>,
    /// Seed for initialization, shuffling and dropout.
    pub seed: u64,
    /// Data set path, if given in the file.
    pub data: Option<String>,
    /// The test file of a text data set (`test: "PATH"`), if given.
    pub test: Option<String>,
    /// `bucket: true`: a variable-length model's batches are made of
    /// examples of similar lengths (less padding to compute).
    pub bucket: bool,
    /// `augment: [...]`: random transformations of each training image,
    /// drawn anew for every batch (empty: none).
    pub augment: Vec<Augment>,
    /// How to read a text data set (`text:` and `format:`), if the data is
    /// text.
    pub text: Option<TextConfig>,
}

/// How cross-entropy targets are given to the training graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TargetEncoding {
    /// One class index per example (what the trainer feeds).
    #[default]
    ClassIndices,
    /// One one-hot row per example.
    OneHot,
}

/// What a training graph is built for: the loss, how its targets are
/// encoded, and which layers stay frozen.
#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    /// The loss the gradients are taken of.
    pub loss: Loss,
    /// How cross-entropy targets are encoded.
    pub targets: TargetEncoding,
    /// Frozen layers by name (see [`is_frozen`]).
    pub freeze: Vec<String>,
}

impl Objective {
    /// `loss` over class-index targets, nothing frozen.
    pub fn new(loss: Loss) -> Self {
        Objective {
            loss,
            targets: TargetEncoding::ClassIndices,
            freeze: Vec::new(),
        }
    }

    /// The nodes of `g` whose layer is frozen: their parameters get no
    /// gradient, and a frozen batchnorm keeps its running statistics.
    pub fn frozen_nodes(&self, g: &Graph) -> HashSet<NodeId> {
        g.g.node_indices()
            .filter(|n| is_frozen(&g.node(*n).layer, &self.freeze))
            .collect()
    }
}

impl TrainConfig {
    /// The objective this section trains for.
    pub fn objective(&self) -> Objective {
        Objective {
            loss: self.loss,
            targets: TargetEncoding::ClassIndices,
            freeze: self.freeze.clone(),
        }
    }
}

/// The freezing policy: a layer is frozen if it or an enclosing layer
/// (`enc` for `enc.0.forward`) is listed in `freeze`.
pub fn is_frozen(layer: &str, freeze: &[String]) -> bool {
    freeze.iter().any(|f| {
        layer == f
            || layer
                .strip_prefix(f.as_str())
                .is_some_and(|r| r.starts_with('.'))
    })
}

/// The admissible range of every numeric training setting.
pub mod bounds {
    use super::Bound;

    const fn b(min: f64, min_open: bool, max: f64, max_open: bool, why: &'static str) -> Bound {
        Bound {
            min,
            min_open,
            max,
            max_open,
            why,
        }
    }

    /// Learning rates (`lr`, also `--lr`).
    pub const LR: Bound = b(0.0, true, 1e3, false, "");
    /// `momentum`.
    pub const MOMENTUM: Bound = b(0.0, false, 1.0, true, "at 1 the velocity never decays");
    /// Adam's `beta1` and `beta2`.
    pub const BETA: Bound = b(
        0.0,
        false,
        1.0,
        true,
        "at 1 the moment never updates and the bias correction 1/(1 − βᵗ) divides by zero",
    );
    /// Adam's `epsilon`.
    pub const EPSILON: Bound = b(
        0.0,
        true,
        1.0,
        false,
        "ε > 0 keeps m̂/(√v̂ + ε) finite where the gradient is zero",
    );
    /// AdamW's `weight_decay`.
    pub const WEIGHT_DECAY: Bound = b(0.0, false, 1.0, false, "");
    /// `clip_norm` and `clip_value`.
    pub const CLIP: Bound = b(0.0, true, f64::INFINITY, true, "");
    /// `l1` and `l2`.
    pub const PENALTY: Bound = b(0.0, false, f64::INFINITY, true, "");
    /// `validation_split`.
    pub const VALIDATION_SPLIT: Bound = b(0.0, false, 1.0, true, "");
    /// `step(gamma:)`.
    pub const GAMMA: Bound = b(0.0, true, 1.0, false, "");
    /// `shift(f)` and `zoom(f)`: a fraction of the image.
    pub const FRACTION: Bound = b(0.0, true, 1.0, true, "");
    /// `rotate(degrees)`.
    pub const DEGREES: Bound = b(0.0, true, 180.0, false, "");
    /// `cosine(min_lr:)`.
    pub const MIN_LR: Bound = b(0.0, false, 1e3, false, "");
    /// `early_stopping(min_delta:)`.
    pub const MIN_DELTA: Bound = b(0.0, false, f64::INFINITY, true, "");
    /// The largest `batch` or `epochs`.
    pub const MAX_COUNT: usize = u32::MAX as usize;
}

/// A training config that makes no sense, found by [`validate`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A number outside its [`Bound`].
    #[error("`{setting}` is {}, outside {bound}{}", short(*value), why(bound.why))]
    OutOfRange {
        /// The section key it belongs to (`optimizer`, `schedule`, ...).
        key: &'static str,
        /// The setting or argument (`lr`, `beta1`, ...).
        setting: &'static str,
        /// The value given.
        value: f64,
        /// What it must be.
        bound: Bound,
    },
    /// `batch` or `epochs` below 1 or above [`bounds::MAX_COUNT`].
    #[error("`{setting}` is {value}, outside [1, {}]", bounds::MAX_COUNT)]
    Count {
        /// `batch`, `epochs`, `every` or `patience`.
        setting: &'static str,
        /// The value given.
        value: usize,
    },
    /// A cosine schedule whose floor is above the learning rate.
    #[error("`cosine(min_lr: {min_lr})` is above the learning rate {lr}: the schedule would raise the rate instead of annealing it")]
    MinLrAboveLr {
        /// The schedule's floor.
        min_lr: f64,
        /// The optimizer's learning rate.
        lr: f64,
    },
    /// Early stopping on a `val_*` metric without a validation split.
    #[error("`early_stopping` monitors `{monitor}`, but there is no `validation_split`: the per-epoch figures would come from the test set (or be missing), and the test set must stay out of every training decision; add `validation_split: 0.1` or monitor `{}`", monitor.trim_start_matches("val_"))]
    MonitorWithoutValidation {
        /// `val_loss` or `val_accuracy`.
        monitor: String,
    },
}

/// `1e30` rather than thirty-one digits.
fn short(x: f64) -> String {
    if x.is_finite() && x != 0.0 && !(1e-4..1e6).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

fn why(w: &str) -> String {
    if w.is_empty() {
        String::new()
    } else {
        format!(" ({w})")
    }
}

impl ConfigError {
    /// The section key whose value is wrong (`optimizer`, `batch`, ...).
    pub fn key(&self) -> &'static str {
        match self {
            ConfigError::OutOfRange { key, .. } => key,
            ConfigError::Count { setting, .. } => match *setting {
                "every" => "schedule",
                "patience" => "early_stopping",
                s => s,
            },
            ConfigError::MinLrAboveLr { .. } => "schedule",
            ConfigError::MonitorWithoutValidation { .. } => "early_stopping",
        }
    }
}

/// Checks every value of `cfg` against [`bounds`] and the settings
/// against each other. The checker reports these with source spans; the
/// command line calls it after applying its overrides.
pub fn validate(cfg: &TrainConfig) -> Result<(), Vec<ConfigError>> {
    let mut errs = Vec::new();
    let mut num = |key, setting, value: f64, bound: Bound| {
        if !bound.admits(value) {
            errs.push(ConfigError::OutOfRange {
                key,
                setting,
                value,
                bound,
            });
        }
    };
    let lr = match cfg.optimizer {
        Optimizer::Sgd { lr } => lr,
        Optimizer::Momentum { lr, momentum, .. } => {
            num("optimizer", "momentum", momentum, bounds::MOMENTUM);
            lr
        }
        Optimizer::Adam {
            lr,
            beta1,
            beta2,
            epsilon,
            weight_decay,
        } => {
            num("optimizer", "beta1", beta1, bounds::BETA);
            num("optimizer", "beta2", beta2, bounds::BETA);
            num("optimizer", "epsilon", epsilon, bounds::EPSILON);
            num(
                "optimizer",
                "weight_decay",
                weight_decay,
                bounds::WEIGHT_DECAY,
            );
            lr
        }
    };
    num("optimizer", "lr", lr, bounds::LR);
    if let Some(c) = cfg.clip_norm {
        num("clip_norm", "clip_norm", c, bounds::CLIP);
    }
    if let Some(c) = cfg.clip_value {
        num("clip_value", "clip_value", c, bounds::CLIP);
    }
    num("l1", "l1", cfg.l1, bounds::PENALTY);
    num("l2", "l2", cfg.l2, bounds::PENALTY);
    num(
        "validation_split",
        "validation_split",
        cfg.validation_split,
        bounds::VALIDATION_SPLIT,
    );
    match cfg.schedule {
        Some(Schedule::Step { gamma, .. }) => num("schedule", "gamma", gamma, bounds::GAMMA),
        Some(Schedule::Cosine { min_lr }) => num("schedule", "min_lr", min_lr, bounds::MIN_LR),
        None => {}
    }
    if let Some(es) = &cfg.early_stopping {
        num(
            "early_stopping",
            "min_delta",
            es.min_delta,
            bounds::MIN_DELTA,
        );
    }
    let mut counts = vec![("batch", cfg.batch), ("epochs", cfg.epochs)];
    if let Some(Schedule::Step { every, .. }) = cfg.schedule {
        counts.push(("every", every));
    }
    if let Some(es) = &cfg.early_stopping {
        counts.push(("patience", es.patience));
    }
    for (setting, value) in counts {
        if !(1..=bounds::MAX_COUNT).contains(&value) {
            errs.push(ConfigError::Count { setting, value });
        }
    }
    if let Some(Schedule::Cosine { min_lr }) = cfg.schedule {
        if min_lr > lr {
            errs.push(ConfigError::MinLrAboveLr { min_lr, lr });
        }
    }
    if let Some(es) = &cfg.early_stopping {
        if es.monitor.starts_with("val_") && cfg.validation_split <= 0.0 {
            errs.push(ConfigError::MonitorWithoutValidation {
                monitor: es.monitor.clone(),
            });
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

const KEYS: &[&str] = &[
    "loss",
    "optimizer",
    "batch",
    "epochs",
    "metrics",
    "clip_norm",
    "clip_value",
    "l1",
    "l2",
    "early_stopping",
    "validation_split",
    "freeze",
    "schedule",
    "seed",
    "data",
    "test",
    "text",
    "format",
    "bucket",
    "augment",
];

/// Checks a training section. `layers` are the trained model's layer names
/// (for `freeze`); `None` when the model itself is unknown.
pub fn check_train(
    t: &Train,
    layers: Option<&[String]>,
    diags: &mut Vec<Diagnostic>,
) -> TrainConfig {
    let mut cfg = TrainConfig {
        model: t.model.name.clone(),
        span: t.span,
        loss: Loss::CrossEntropy,
        optimizer: Optimizer::Adam {
            lr: 0.001,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            weight_decay: 0.0,
        },
        batch: 32,
        epochs: 1,
        metrics: vec![],
        clip_norm: None,
        clip_value: None,
        l1: 0.0,
        l2: 0.0,
        early_stopping: None,
        validation_split: 0.0,
        freeze: vec![],
        schedule: None,
        seed: 0,
        data: None,
        test: None,
        text: None,
        bucket: false,
        augment: vec![],
    };
    // `text` and `format` are read separately and joined after the loop.
    let mut text_options = None;
    let mut text_format = None;
    let mut seen: Vec<&Setting> = Vec::new();
    // Keys whose value already got a diagnostic: `validate` would only
    // repeat it.
    let mut reported: Vec<&str> = Vec::new();
    for s in &t.settings {
        let errors_before = diags.len();
        let key = s.key.name.as_str();
        if !KEYS.contains(&key) {
            let mut d = Diagnostic::error(
                "E0301",
                format!("unknown training setting `{key}`"),
                s.key.span,
            )
            .with_label("unknown setting");
            if let Some(m) = did_you_mean(key, KEYS.iter().copied()) {
                d = d.with_note(format!("help: did you mean `{m}`?"));
            }
            diags.push(d.with_note(format!("settings: {}", KEYS.join(", "))));
            continue;
        }
        if let Some(prev) = seen.iter().find(|p| p.key.name == key) {
            diags.push(
                Diagnostic::error(
                    "E0306",
                    format!("training setting `{key}` is given twice"),
                    s.key.span,
                )
                .with_label("second value")
                .with_secondary(prev.key.span, "first value"),
            );
            continue;
        }
        seen.push(s);
        let v = &s.value;
        match key {
            "loss" => {
                if let Some(l) = name_of(v, "loss", LOSSES, diags).and_then(loss_named) {
                    cfg.loss = l;
                }
            }
            "optimizer" => cfg.optimizer = optimizer(v, diags).unwrap_or(cfg.optimizer),
            "batch" => cfg.batch = int(v, key, 1, diags).unwrap_or(cfg.batch),
            "epochs" => cfg.epochs = int(v, key, 1, diags).unwrap_or(cfg.epochs),
            "seed" => cfg.seed = int(v, key, 0, diags).unwrap_or(0) as u64,
            "metrics" => {
                cfg.metrics = names(v, key, diags)
                    .into_iter()
                    .filter_map(|(m, sp)| {
                        let ok = ["accuracy", "loss"].contains(&m.as_str());
                        if !ok {
                            diags.push(
                                Diagnostic::error("E0304", format!("unknown metric `{m}`"), sp)
                                    .with_label("expected `accuracy` or `loss`"),
                            );
                        }
                        ok.then_some(m)
                    })
                    .collect()
            }
            "clip_norm" | "clip_value" => {
                let x = number(v, key, bounds::CLIP, diags);
                if key == "clip_norm" {
                    cfg.clip_norm = x;
                } else {
                    cfg.clip_value = x;
                }
            }
            "l1" => cfg.l1 = number(v, key, bounds::PENALTY, diags).unwrap_or(0.0),
            "l2" => cfg.l2 = number(v, key, bounds::PENALTY, diags).unwrap_or(0.0),
            "validation_split" => {
                cfg.validation_split =
                    number(v, key, bounds::VALIDATION_SPLIT, diags).unwrap_or(0.0)
            }
            "early_stopping" => cfg.early_stopping = early_stopping(v, diags),
            "schedule" => cfg.schedule = schedule(v, diags),
            "freeze" => {
                for (name, sp) in names(v, key, diags) {
                    if let Some(layers) = layers {
                        if !layers.contains(&name) {
                            let mut d = Diagnostic::error(
                                "E0305",
                                format!(
                                    "cannot freeze `{name}`: model `{}` has no such layer",
                                    t.model.name
                                ),
                                sp,
                            )
                            .with_label("unknown layer");
                            if let Some(m) = did_you_mean(&name, layers.iter().map(String::as_str))
                            {
                                d = d.with_note(format!("help: did you mean `{m}`?"));
                            }
                            diags.push(d);
                            continue;
                        }
                    }
                    cfg.freeze.push(name);
                }
            }
            "data" | "test" => match &v.kind {
                ValueKind::Str(s) if key == "data" => cfg.data = Some(s.clone()),
                ValueKind::Str(s) => cfg.test = Some(s.clone()),
                _ => diags.push(setting_type_error(key, "a string path", v)),
            },
            "augment" => cfg.augment = augment(v, diags),
            "bucket" => match v.kind {
                ValueKind::Bool(b) => cfg.bucket = b,
                _ => diags.push(setting_type_error(key, "`true` or `false`", v)),
            },
            "text" => text_options = crate::text_data::check_text(v, diags),
            "format" => text_format = crate::text_data::check_format(v, diags),
            _ => {}
        }
        if diags.len() > errors_before {
            reported.push(key);
        }
    }
    text_settings(&seen, &reported, text_options, text_format, &mut cfg, diags);
    // What no single value shows: settings that contradict each other.
    if let Err(errs) = validate(&cfg) {
        for e in errs.iter().filter(|e| !reported.contains(&e.key())) {
            let span = seen
                .iter()
                .find(|s| s.key.name == e.key())
                .map_or(t.span, |s| s.value.span);
            diags.push(
                Diagnostic::error("E0308", e.to_string(), span).with_label(match e {
                    ConfigError::MonitorWithoutValidation { .. } => {
                        "would select the model on the test set"
                    }
                    _ => "contradicts another setting",
                }),
            );
        }
    }
    cfg
}

/// Joins `text` and `format` into `cfg.text`; each needs the other, and
/// `test` needs both (the other loaders find their test set themselves).
fn text_settings(
    seen: &[&Setting],
    reported: &[&str],
    options: Option<TextOptions>,
    format: Option<TextFormat>,
    cfg: &mut TrainConfig,
    diags: &mut Vec<Diagnostic>,
) {
    let given = |key: &str| seen.iter().find(|s| s.key.name == key);
    let mut needs = |key: &str, other: &str, why: &str| {
        if reported.contains(&key) || reported.contains(&other) {
            return;
        }
        if let (Some(s), None) = (given(key), given(other)) {
            diags.push(
                Diagnostic::error(
                    "E0308",
                    format!("`{key}` needs `{other}`: {why}"),
                    s.key.span,
                )
                .with_label(format!("no `{other}` in this section")),
            );
        }
    };
    needs(
        "text",
        "format",
        "add `format: classification`, `tagging` or `language_model`",
    );
    needs(
        "format",
        "text",
        "add a tokenizer, e.g. `text: word()` or `text: char()`",
    );
    needs(
        "test",
        "text",
        "a separate test file is a setting of text data sets; the other formats find their test set beside the data",
    );
    if let (Some(options), Some(format)) = (options, format) {
        if let (TextFormat::Tagging, Tokenizer::Char { .. }, Some(s), false) = (
            format,
            options.tokenizer,
            given("text"),
            reported.contains(&"text"),
        ) {
            diags.push(
                Diagnostic::error(
                    "E0308",
                    "`format: tagging` reads `word/TAG` tokens, one tag per word; it needs `text: word(...)`",
                    s.value.span,
                )
                .with_label("a character tokenizer"),
            );
            return;
        }
        cfg.text = Some(TextConfig { options, format });
    }
}

fn int(v: &Value, key: &str, min: i64, diags: &mut Vec<Diagnostic>) -> Option<usize> {
    match v.kind {
        ValueKind::Int(i) if i >= min && i <= u32::MAX as i64 => Some(i as usize),
        ValueKind::Int(i) => {
            diags.push(
                Diagnostic::error(
                    "E0307",
                    format!("setting `{key}` is out of range: {i}"),
                    v.span,
                )
                .with_label(format!("must be at least {min}")),
            );
            None
        }
        _ => {
            diags.push(setting_type_error(key, "an integer", v));
            None
        }
    }
}

fn number(v: &Value, key: &str, bound: Bound, diags: &mut Vec<Diagnostic>) -> Option<f64> {
    let x = match v.kind {
        ValueKind::Int(i) => i as f64,
        ValueKind::Float(f) => f,
        _ => {
            diags.push(setting_type_error(key, "a number", v));
            return None;
        }
    };
    if !bound.admits(x) {
        diags.push(
            Diagnostic::error(
                "E0307",
                format!("setting `{key}` is out of range: {x}"),
                v.span,
            )
            .with_label(format!("must be in {bound}{}", why(bound.why))),
        );
        return None;
    }
    Some(x)
}

fn name_of<'a>(
    v: &Value,
    key: &str,
    options: &[&'a str],
    diags: &mut Vec<Diagnostic>,
) -> Option<&'a str> {
    let ValueKind::Ident(s) = &v.kind else {
        diags.push(setting_type_error(
            key,
            &format!("one of {}", options.join(", ")),
            v,
        ));
        return None;
    };
    let found = options.iter().find(|o| *o == s).copied();
    if found.is_none() {
        let mut d = Diagnostic::error("E0304", format!("unknown {key} `{s}`"), v.span)
            .with_label(format!("expected one of {}", options.join(", ")));
        if let Some(m) = did_you_mean(s, options.iter().copied()) {
            d = d.with_note(format!("help: did you mean `{m}`?"));
        }
        diags.push(d);
    }
    found
}

/// A name or a list of names.
fn names(v: &Value, key: &str, diags: &mut Vec<Diagnostic>) -> Vec<(String, Span)> {
    match &v.kind {
        ValueKind::Ident(s) => vec![(s.clone(), v.span)],
        ValueKind::List(items) => items
            .iter()
            .filter_map(|it| match &it.kind {
                ValueKind::Ident(s) => Some((s.clone(), it.span)),
                _ => {
                    diags.push(setting_type_error(key, "a list of names", it));
                    None
                }
            })
            .collect(),
        _ => {
            diags.push(setting_type_error(key, "a list of names", v));
            vec![]
        }
    }
}

/// A call such as `adam(lr: 0.001)` or a bare name `adam`.
fn call(v: &Value) -> Option<(&str, Span, &[Arg])> {
    match &v.kind {
        ValueKind::Call { name, args } => Some((&name.name, name.span, args)),
        ValueKind::Ident(s) => Some((s, v.span, &[])),
        _ => None,
    }
}

fn optimizer(v: &Value, diags: &mut Vec<Diagnostic>) -> Option<Optimizer> {
    let Some((name, span, args)) = call(v) else {
        diags.push(setting_type_error(
            "optimizer",
            "an optimizer such as adam(lr: 0.001)",
            v,
        ));
        return None;
    };
    let params: &[&'static str] = match name {
        "sgd" => &["lr"],
        "momentum" => &["lr", "momentum", "nesterov"],
        "adam" => &["lr", "beta1", "beta2", "epsilon"],
        "adamw" => &["lr", "weight_decay", "beta1", "beta2", "epsilon"],
        _ => {
            let mut d = Diagnostic::error("E0304", format!("unknown optimizer `{name}`"), span)
                .with_label(format!("expected one of {}", OPTIMIZERS.join(", ")));
            if let Some(m) = did_you_mean(name, OPTIMIZERS.iter().copied()) {
                d = d.with_note(format!("help: did you mean `{m}`?"));
            }
            diags.push(d);
            return None;
        }
    };
    let mut a = Args::bind(name, v.span, params, false, args, diags);
    let lr_default = if name == "sgd" || name == "momentum" {
        0.01
    } else {
        0.001
    };
    let lr = a.bounded("lr", Some(lr_default), &bounds::LR, diags);
    Some(match name {
        "sgd" => Optimizer::Sgd { lr },
        "momentum" => Optimizer::Momentum {
            lr,
            momentum: a.bounded("momentum", Some(0.9), &bounds::MOMENTUM, diags),
            nesterov: a.flag("nesterov", false, diags),
        },
        _ => Optimizer::Adam {
            lr,
            beta1: a.bounded("beta1", Some(0.9), &bounds::BETA, diags),
            beta2: a.bounded("beta2", Some(0.999), &bounds::BETA, diags),
            epsilon: a.bounded("epsilon", Some(1e-7), &bounds::EPSILON, diags),
            weight_decay: if name == "adamw" {
                a.bounded("weight_decay", Some(0.01), &bounds::WEIGHT_DECAY, diags)
            } else {
                0.0
            },
        },
    })
}

fn early_stopping(v: &Value, diags: &mut Vec<Diagnostic>) -> Option<EarlyStopping> {
    let Some(("early_stopping", _, args)) = call(v) else {
        diags.push(setting_type_error(
            "early_stopping",
            "early_stopping(patience: N)",
            v,
        ));
        return None;
    };
    let mut a = Args::bind(
        "early_stopping",
        v.span,
        &["patience", "monitor", "min_delta"],
        false,
        args,
        diags,
    );
    Some(EarlyStopping {
        patience: a.count("patience", Some(3), 1, diags),
        monitor: a
            .choice(
                "monitor",
                &["val_loss", "val_accuracy", "loss", "accuracy"],
                "val_loss",
                diags,
            )
            .to_string(),
        min_delta: a.bounded("min_delta", Some(0.0), &bounds::MIN_DELTA, diags),
    })
}

/// One random transformation of a training image (`augment:`), as Keras's
/// preprocessing layers make them: drawn per image and per batch, applied
/// to training batches only.
#[derive(Clone, Debug, PartialEq)]
pub enum Augment {
    /// `flip(horizontal)`, `flip(vertical)`, `flip(both)`: each axis
    /// mirrored with probability 1/2.
    Flip {
        /// Left-right.
        horizontal: bool,
        /// Top-bottom.
        vertical: bool,
    },
    /// `shift(f)`: translated by up to `f` of the width and of the height
    /// each way.
    Shift(f64),
    /// `rotate(d)`: rotated by up to `d` degrees each way.
    Rotate(f64),
    /// `zoom(f)`: scaled by a factor in `[1 − f, 1 + f]`.
    Zoom(f64),
}

/// `augment: [flip(horizontal), shift(0.1), rotate(10), zoom(0.1)]`.
fn augment(v: &Value, diags: &mut Vec<Diagnostic>) -> Vec<Augment> {
    let want = "a list of flip(horizontal|vertical|both), shift(F), rotate(DEGREES), zoom(F)";
    let ValueKind::List(items) = &v.kind else {
        diags.push(setting_type_error("augment", want, v));
        return vec![];
    };
    let mut out = Vec::new();
    for it in items {
        let one = match call(it) {
            Some(("flip", _, args)) => {
                let mut a = Args::bind("flip", it.span, &["axis"], false, args, diags);
                match a.choice(
                    "axis",
                    &["horizontal", "vertical", "both"],
                    "horizontal",
                    diags,
                ) {
                    "vertical" => Augment::Flip {
                        horizontal: false,
                        vertical: true,
                    },
                    "both" => Augment::Flip {
                        horizontal: true,
                        vertical: true,
                    },
                    _ => Augment::Flip {
                        horizontal: true,
                        vertical: false,
                    },
                }
            }
            Some((name @ ("shift" | "zoom"), _, args)) => {
                let mut a = Args::bind(name, it.span, &["factor"], false, args, diags);
                let f = a.bounded("factor", None, &bounds::FRACTION, diags);
                if name == "shift" {
                    Augment::Shift(f)
                } else {
                    Augment::Zoom(f)
                }
            }
            Some(("rotate", _, args)) => {
                let mut a = Args::bind("rotate", it.span, &["degrees"], false, args, diags);
                Augment::Rotate(a.bounded("degrees", None, &bounds::DEGREES, diags))
            }
            _ => {
                diags.push(setting_type_error("augment", want, it));
                continue;
            }
        };
        out.push(one);
    }
    out
}

fn schedule(v: &Value, diags: &mut Vec<Diagnostic>) -> Option<Schedule> {
    match call(v) {
        Some(("step", _, args)) => {
            let mut a = Args::bind("step", v.span, &["every", "gamma"], false, args, diags);
            // The defaults the language reference shows: halve every 10 epochs.
            Some(Schedule::Step {
                every: a.count("every", Some(10), 1, diags),
                gamma: a.bounded("gamma", Some(0.5), &bounds::GAMMA, diags),
            })
        }
        Some(("cosine", _, args)) => {
            let mut a = Args::bind("cosine", v.span, &["min_lr"], false, args, diags);
            Some(Schedule::Cosine {
                min_lr: a.bounded("min_lr", Some(0.0), &bounds::MIN_LR, diags),
            })
        }
        _ => {
            diags.push(setting_type_error(
                "schedule",
                "step(every: N, gamma: G) or cosine(min_lr: M)",
                v,
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_optimizers_have_the_sections_defaults_and_names() {
        assert_eq!(Optimizer::named("sgd"), Some(Optimizer::Sgd { lr: 0.01 }));
        for name in OPTIMIZERS {
            let o = Optimizer::named(name).unwrap();
            assert_eq!(o.name(), *name);
            assert!(bounds::LR.admits(o.lr()));
        }
        assert_eq!(Optimizer::named("nesterov"), None);
        assert_eq!(Optimizer::named("Adam"), None);
    }

    #[test]
    fn loss_names_round_trip() {
        for name in LOSSES {
            assert_eq!(loss_name(loss_named(name).unwrap()), *name);
        }
        assert_eq!(loss_named("crossentropy"), None);
    }
}
