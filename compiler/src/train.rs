//! The training section: `train MODEL { key: value ... }` checked into a
//! typed [`TrainConfig`]. Unknown keys, wrong types and out-of-range values
//! are diagnostics.

use crate::args::Args;
use netc_lang::ast::{Arg, Setting, Train, Value, ValueKind};
use netc_lang::{did_you_mean, Diagnostic, Span};

/// Loss functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Mean squared error.
    Mse,
    /// Binary cross-entropy on sigmoid outputs.
    BinaryCrossEntropy,
    /// Categorical cross-entropy on softmax outputs (integer or one-hot labels).
    CrossEntropy,
}

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
    };
    let mut seen: Vec<&Setting> = Vec::new();
    for s in &t.settings {
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
                if let Some(l) = name_of(
                    v,
                    "loss",
                    &["mse", "binary_cross_entropy", "cross_entropy"],
                    diags,
                ) {
                    cfg.loss = match l {
                        "mse" => Loss::Mse,
                        "binary_cross_entropy" => Loss::BinaryCrossEntropy,
                        _ => Loss::CrossEntropy,
                    };
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
                let x = number(v, key, (1e-12, f64::MAX), diags);
                if key == "clip_norm" {
                    cfg.clip_norm = x;
                } else {
                    cfg.clip_value = x;
                }
            }
            "l1" => cfg.l1 = number(v, key, (0.0, f64::MAX), diags).unwrap_or(0.0),
            "l2" => cfg.l2 = number(v, key, (0.0, f64::MAX), diags).unwrap_or(0.0),
            "validation_split" => {
                cfg.validation_split = number(v, key, (0.0, 0.99), diags).unwrap_or(0.0)
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
            "data" => match &v.kind {
                ValueKind::Str(s) => cfg.data = Some(s.clone()),
                _ => diags.push(type_error(key, "a string path", v)),
            },
            _ => {}
        }
    }
    cfg
}

fn type_error(key: &str, want: &str, v: &Value) -> Diagnostic {
    Diagnostic::error(
        "E0302",
        format!(
            "setting `{key}` must be {want}, found {}",
            v.kind.describe()
        ),
        v.span,
    )
    .with_label(format!("expected {want}"))
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
            diags.push(type_error(key, "an integer", v));
            None
        }
    }
}

fn number(v: &Value, key: &str, range: (f64, f64), diags: &mut Vec<Diagnostic>) -> Option<f64> {
    let x = match v.kind {
        ValueKind::Int(i) => i as f64,
        ValueKind::Float(f) => f,
        _ => {
            diags.push(type_error(key, "a number", v));
            return None;
        }
    };
    if x < range.0 || x > range.1 {
        diags.push(
            Diagnostic::error(
                "E0307",
                format!("setting `{key}` is out of range: {x}"),
                v.span,
            )
            .with_label(format!("must be in [{}, {}]", range.0, range.1)),
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
        diags.push(type_error(
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
                    diags.push(type_error(key, "a list of names", it));
                    None
                }
            })
            .collect(),
        _ => {
            diags.push(type_error(key, "a list of names", v));
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
    const OPTS: &[&str] = &["sgd", "momentum", "adam", "adamw"];
    let Some((name, span, args)) = call(v) else {
        diags.push(type_error(
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
                .with_label(format!("expected one of {}", OPTS.join(", ")));
            if let Some(m) = did_you_mean(name, OPTS.iter().copied()) {
                d = d.with_note(format!("help: did you mean `{m}`?"));
            }
            diags.push(d);
            return None;
        }
    };
    let mut a = Args::bind(name, v.span, params, false, args, diags);
    let unit = (0.0, 1.0);
    let lr_default = if name == "sgd" || name == "momentum" {
        0.01
    } else {
        0.001
    };
    let lr = a.number("lr", Some(lr_default), (0.0, 1e3), diags);
    Some(match name {
        "sgd" => Optimizer::Sgd { lr },
        "momentum" => Optimizer::Momentum {
            lr,
            momentum: a.number("momentum", Some(0.9), unit, diags),
            nesterov: a.flag("nesterov", false, diags),
        },
        _ => Optimizer::Adam {
            lr,
            beta1: a.number("beta1", Some(0.9), unit, diags),
            beta2: a.number("beta2", Some(0.999), unit, diags),
            epsilon: a.number("epsilon", Some(1e-7), (0.0, 1.0), diags),
            weight_decay: if name == "adamw" {
                a.number("weight_decay", Some(0.01), (0.0, 1.0), diags)
            } else {
                0.0
            },
        },
    })
}

fn early_stopping(v: &Value, diags: &mut Vec<Diagnostic>) -> Option<EarlyStopping> {
    let Some(("early_stopping", _, args)) = call(v) else {
        diags.push(type_error(
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
        min_delta: a.number("min_delta", Some(0.0), (0.0, f64::MAX), diags),
    })
}

fn schedule(v: &Value, diags: &mut Vec<Diagnostic>) -> Option<Schedule> {
    match call(v) {
        Some(("step", _, args)) => {
            let mut a = Args::bind("step", v.span, &["every", "gamma"], false, args, diags);
            Some(Schedule::Step {
                every: a.count("every", None, 1, diags),
                gamma: a.number("gamma", Some(0.1), (0.0, 1.0), diags),
            })
        }
        Some(("cosine", _, args)) => {
            let mut a = Args::bind("cosine", v.span, &["min_lr"], false, args, diags);
            Some(Schedule::Cosine {
                min_lr: a.number("min_lr", Some(0.0), (0.0, 1e3), diags),
            })
        }
        _ => {
            diags.push(type_error(
                "schedule",
                "step(every: N, gamma: G) or cosine(min_lr: M)",
                v,
            ));
            None
        }
    }
}
