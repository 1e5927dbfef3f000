//! The training loop: loss goes down on real data, resuming from a
//! checkpoint reproduces an uninterrupted run exactly, frozen layers stay
//! bit-identical, and a corrupt checkpoint is a clear error.

use netc_compiler::pipeline::OptLevel;
use netc_runtime::data::Dataset;
use netc_runtime::train::{train, Event, RunOptions};
use netc_runtime::{init_weights, Tensor, Weights};

fn model(src: &str) -> (netc_compiler::Graph, netc_compiler::train::TrainConfig) {
    let ast = netc_lang::parse(src).unwrap();
    let checked = netc_compiler::check(&ast);
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    (checked.graphs[0].clone(), checked.trains[0].clone())
}

/// Two noisy blobs in 6 dimensions: linearly separable, deterministic.
fn blobs(n: usize) -> Dataset {
    let mut s = 12345u64;
    let mut r = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..n {
        let c = (i % 2) as f32;
        for d in 0..6 {
            x.push(r() + if d % 2 == 0 { c } else { -c });
        }
        y.push(c);
    }
    Dataset::new(Tensor::new(vec![n, 6], x).unwrap(), y, Some(2)).unwrap()
}

const SRC: &str = "model m { input x: [6]  x -> dense(8) as h -> relu -> dropout(0.2) -> dense(2) as out -> softmax -> y  output y }
train m { loss: cross_entropy  optimizer: adam(lr: 0.01)  batch: 16  epochs: 4  seed: 7 }";

fn run(opts: &RunOptions, cfg_epochs: usize) -> (Weights, Vec<f64>) {
    let (g, mut cfg) = model(SRC);
    cfg.epochs = cfg_epochs;
    let data = blobs(128);
    let w = init_weights(&g, cfg.seed).unwrap();
    let mut losses = Vec::new();
    let t = train(&g, &cfg, &data, None, w, opts, &mut |e| {
        if let Event::Epoch(s) = e {
            losses.push(s.loss)
        }
    })
    .unwrap();
    (t.weights, losses)
}

/// A checkpoint directory that does not exist yet, inside a temporary
/// directory removed when `TempDir` drops.
fn tmpdir(tag: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join(tag);
    (t, d)
}

#[test]
fn loss_decreases() {
    let (_, losses) = run(
        &RunOptions {
            threads: 1,
            ..Default::default()
        },
        4,
    );
    assert_eq!(losses.len(), 4);
    assert!(losses[3] < 0.5 * losses[0], "{losses:?}");
}

#[test]
fn resuming_reproduces_an_uninterrupted_run_exactly() {
    let (full, _) = run(
        &RunOptions {
            threads: 2,
            ..Default::default()
        },
        4,
    );
    let (_keep, dir) = tmpdir("resume");
    // Two epochs, checkpointed…
    run(
        &RunOptions {
            threads: 2,
            checkpoint: Some(dir.clone()),
            ..Default::default()
        },
        2,
    );
    // …then resumed up to four.
    let (resumed, _) = run(
        &RunOptions {
            threads: 2,
            checkpoint: Some(dir.clone()),
            resume: true,
            ..Default::default()
        },
        4,
    );
    for (name, t) in full.iter() {
        assert_eq!(
            t.data,
            resumed.get(name).unwrap().data,
            "{name} differs after resuming"
        );
    }
}

#[test]
fn frozen_layers_stay_bit_identical() {
    let (g, mut cfg) = model(SRC);
    cfg.freeze = vec!["h".into()];
    let w = init_weights(&g, 1).unwrap();
    let t = train(
        &g,
        &cfg,
        &blobs(64),
        None,
        w.clone(),
        &RunOptions {
            threads: 1,
            ..Default::default()
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(
        t.weights.get("h.weight").unwrap().data,
        w.get("h.weight").unwrap().data
    );
    assert_ne!(
        t.weights.get("out.weight").unwrap().data,
        w.get("out.weight").unwrap().data
    );
}

#[test]
fn corrupt_or_missing_checkpoints_are_clear_errors() {
    let (g, cfg) = model(SRC);
    let (_keep, dir) = tmpdir("corrupt");
    let opts = RunOptions {
        threads: 1,
        checkpoint: Some(dir.clone()),
        resume: true,
        ..Default::default()
    };
    let w = init_weights(&g, 1).unwrap();
    let err = train(&g, &cfg, &blobs(32), None, w.clone(), &opts, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("no checkpoint to resume in") && err.contains("does not exist"),
        "{err}"
    );
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("checkpoint.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":",
    )
    .unwrap();
    let err = train(&g, &cfg, &blobs(32), None, w, &opts, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("checkpoint.safetensors") && !err.contains('\n'),
        "{err}"
    );
}

/// Sequences of 6 steps whose class is the sign of the first step: the
/// model must carry it through time (BPTT over the unrolled cells).
fn first_step_sign(n: usize) -> Dataset {
    let mut s = 99u64;
    let mut r = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..n {
        let c = (i % 2) as f32;
        x.push(if c > 0.0 { 1.0 } else { -1.0 });
        for _ in 1..6 {
            x.push(r());
        }
        y.push(c);
    }
    Dataset::new(Tensor::new(vec![n, 6, 1], x).unwrap(), y, Some(2)).unwrap()
}

#[test]
fn recurrent_layers_train_with_and_without_the_optimizer() {
    for cell in ["rnn", "lstm", "gru"] {
        for level in [OptLevel::O1, OptLevel::O0] {
            let src = format!(
                "model m {{ input x: [6, 1]  x -> {cell}(8) as r -> dense(2) as out -> softmax -> y  output y }}
                 train m {{ loss: cross_entropy  optimizer: adam(lr: 0.02)  batch: 16  epochs: 12  seed: 3 }}"
            );
            let (g, cfg) = model(&src);
            let w = init_weights(&g, cfg.seed).unwrap();
            let mut losses = Vec::new();
            let opts = RunOptions {
                threads: 1,
                level,
                ..Default::default()
            };
            train(&g, &cfg, &first_step_sign(128), None, w, &opts, &mut |e| {
                if let Event::Epoch(s) = e {
                    losses.push(s.loss)
                }
            })
            .unwrap();
            assert!(
                losses[losses.len() - 1] < 0.5 * losses[0],
                "{cell} ({level:?}): {losses:?}"
            );
        }
    }
}

#[test]
fn batchnorm_trains_and_updates_its_running_statistics() {
    let (g, cfg) = model(
        "model m { input x: [6]  x -> dense(8) as h -> batchnorm(momentum: 0.5) as bn -> relu -> dense(2) as out -> softmax -> y  output y }
         train m { loss: cross_entropy  optimizer: adam(lr: 0.01)  batch: 16  epochs: 4  seed: 7 }",
    );
    let w = init_weights(&g, cfg.seed).unwrap();
    let mut losses = Vec::new();
    let opts = RunOptions {
        threads: 1,
        ..Default::default()
    };
    let t = train(&g, &cfg, &blobs(128), None, w.clone(), &opts, &mut |e| {
        if let Event::Epoch(s) = e {
            losses.push(s.loss)
        }
    })
    .unwrap();
    assert!(losses[3] < 0.5 * losses[0], "{losses:?}");
    for stat in ["bn.moving_mean", "bn.moving_var"] {
        let before = &w.get(stat).unwrap().data;
        let after = &t.weights.get(stat).unwrap().data;
        assert!(
            before.iter().zip(after).any(|(a, b)| (a - b).abs() > 1e-3),
            "{stat} did not move: {after:?}"
        );
        assert!(after.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn settings_the_checker_refuses_are_refused_by_the_library_too() {
    let (g, mut cfg) = model(SRC);
    let w = init_weights(&g, cfg.seed).unwrap();
    let opts = RunOptions::default();
    // Early stopping on a validation metric without a validation split.
    cfg.early_stopping = Some(netc_compiler::train::EarlyStopping {
        patience: 1,
        monitor: "val_loss".into(),
        min_delta: 0.0,
    });
    let err = train(&g, &cfg, &blobs(32), None, w.clone(), &opts, &mut |_| {})
        .err()
        .expect("refused");
    assert!(err.to_string().contains("no `validation_split`"), "{err}");
    // A learning rate outside its range.
    cfg.early_stopping = None;
    cfg.optimizer = netc_compiler::train::Optimizer::Sgd { lr: -1.0 };
    let err = train(&g, &cfg, &blobs(32), None, w, &opts, &mut |_| {})
        .err()
        .expect("refused");
    assert!(err.to_string().contains("outside"), "{err}");
}

/// A per-token classifier (`[5, 2]` → `[5, 3]`) on sequences of 2 to 5
/// tokens padded to 5 with label −1: the padding is neither learned nor
/// scored, so accuracy on the real tokens reaches 1 although 30 % of the
/// positions are padding whose label could never match.
#[test]
fn per_token_targets_skip_padding() {
    let (g, mut cfg) = model(
        "model m { input x: [5, 2]  x -> dense(3) as tag -> softmax -> y  output y }
         train m { loss: cross_entropy  optimizer: adam(lr: 0.05)  batch: 16  epochs: 12  seed: 3 }",
    );
    cfg.epochs = 12;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let n = 64;
    for i in 0..n {
        let len = 2 + i % 4;
        for t in 0..5 {
            if t < len {
                let c = (i + t) % 3;
                let a = std::f32::consts::TAU * c as f32 / 3.0;
                x.extend([2.0 * a.cos(), 2.0 * a.sin()]);
                y.push(c as f32);
            } else {
                x.extend([0.0, 0.0]);
                y.push(netc_runtime::data::PAD_LABEL);
            }
        }
    }
    let padded = y.iter().filter(|l| **l < 0.0).count();
    assert_eq!(padded, 16 * (3 + 2 + 1));
    let data = Dataset::with_targets(Tensor::new(vec![n, 5, 2], x).unwrap(), y, vec![5], Some(3))
        .unwrap()
        .check_targets(netc_compiler::train::Loss::CrossEntropy, &[5, 3])
        .unwrap();
    let w = init_weights(&g, cfg.seed).unwrap();
    let mut last = None;
    let opts = RunOptions {
        threads: 1,
        ..Default::default()
    };
    train(&g, &cfg, &data, Some(&data), w, &opts, &mut |e| {
        if let Event::Epoch(s) = e {
            last = Some(s)
        }
    })
    .unwrap();
    let s = last.unwrap();
    assert_eq!(s.accuracy, Some(1.0), "{s:?}");
    assert_eq!(s.val_accuracy, Some(1.0), "{s:?}");
    assert!(s.val_loss.unwrap() < 0.2, "{s:?}");
}

/// A CPU run that accounts its steps as a GPU run does (results queued and
/// summed every `GPU_REPORT_STEPS` steps; cross-entropy scored per row as
/// the GPU's score kernel does) reports exactly the figures of the
/// per-step accounting, for each loss, with progress every 16 steps.
#[test]
fn deferred_accounting_reports_the_per_step_figures() {
    use netc_runtime::train::GPU_REPORT_STEPS;
    let srcs = [
        SRC.to_string(),
        "model b { input x: [6]  x -> dense(4) as h -> relu -> dense(1) as out -> sigmoid -> y  output y }
train b { loss: binary_cross_entropy  optimizer: sgd(lr: 0.1)  batch: 4  epochs: 2  seed: 3  validation_split: 0.25 }"
            .to_string(),
        "model r { input x: [6]  x -> dense(3) as out -> y  output y }
train r { loss: mse  optimizer: momentum(lr: 0.01, momentum: 0.9)  batch: 8  epochs: 2  seed: 5 }"
            .to_string(),
    ];
    for src in &srcs {
        let (g, cfg) = model(src);
        let mut data = blobs(160);
        if cfg.loss == netc_compiler::train::Loss::Mse {
            // Three regression targets per example.
            let y: Vec<f32> = (0..160 * 3).map(|i| (i % 7) as f32 * 0.1).collect();
            data = Dataset::with_targets(data.x.clone(), y, vec![3], None).unwrap();
        }
        let go = |deferred| {
            let w = init_weights(&g, cfg.seed).unwrap();
            let mut steps = Vec::new();
            let opts = RunOptions {
                threads: 1,
                deferred_reads: deferred,
                ..Default::default()
            };
            let t = train(&g, &cfg, &data, None, w, &opts, &mut |e| {
                if let Event::Step { step, .. } = e {
                    steps.push(step)
                }
            })
            .unwrap();
            (t, steps)
        };
        let (plain, plain_steps) = go(false);
        let (deferred, deferred_steps) = go(true);
        for (a, b) in plain.history.iter().zip(&deferred.history) {
            assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "{}", g.name);
            assert_eq!(
                a.accuracy.map(f64::to_bits),
                b.accuracy.map(f64::to_bits),
                "{}",
                g.name
            );
            assert_eq!(a.val_loss.map(f64::to_bits), b.val_loss.map(f64::to_bits));
        }
        assert_eq!(plain.history.len(), deferred.history.len());
        for (name, t) in plain.weights.iter() {
            assert_eq!(t.data, deferred.weights.get(name).unwrap().data, "{name}");
        }
        // Every step reported on its own, or every 16 and at the end of
        // each epoch.
        let steps_per_epoch = plain_steps.iter().max().copied().unwrap();
        assert_eq!(plain_steps.len(), steps_per_epoch * cfg.epochs);
        let expected: Vec<usize> = (1..=steps_per_epoch)
            .filter(|s| s % GPU_REPORT_STEPS == 0 || *s == steps_per_epoch)
            .collect();
        assert_eq!(deferred_steps, expected.repeat(cfg.epochs), "{}", g.name);
    }
}

/// A diverging run is stopped at the same step whether its figures are
/// read each step or queued as on a GPU (found up to 16 steps later, named
/// by the step whose loss or gradient norm went non-finite).
#[test]
fn deferred_accounting_finds_a_divergence_at_its_step() {
    // Gradient descent on y = 3x with step 100 overflows f32 in a few
    // dozen steps (as in tests/hostile/training.rs).
    let (g, cfg) = model(
        "model lin { input x: [1]  x -> dense(1) as out -> y  output y }
train lin { loss: mse  optimizer: sgd(lr: 100)  batch: 16  epochs: 40 }",
    );
    // 20 steps per epoch: the divergence falls between progress updates.
    let xs: Vec<f32> = (0..320).map(|i| 0.5 + (i % 16) as f32 / 32.0).collect();
    let ys: Vec<f32> = xs.iter().map(|x| 3.0 * x).collect();
    let data = Dataset::new(Tensor::new(vec![320, 1], xs).unwrap(), ys, None).unwrap();
    let go = |deferred| {
        let w = init_weights(&g, cfg.seed).unwrap();
        let opts = RunOptions {
            threads: 1,
            deferred_reads: deferred,
            ..Default::default()
        };
        match train(&g, &cfg, &data, None, w, &opts, &mut |_| {}) {
            Err(netc_runtime::train::TrainError::Diverged {
                epoch, step, what, ..
            }) => (epoch, step, what),
            other => panic!("did not diverge: {:?}", other.map(|t| t.history)),
        }
    };
    let (plain, deferred) = (go(false), go(true));
    eprintln!("per step: {plain:?}\ndeferred: {deferred:?}");
    assert_eq!((plain.0, plain.1), (deferred.0, deferred.1));
    assert!(
        plain.1 % netc_runtime::train::GPU_REPORT_STEPS != 0,
        "the divergence should fall between two progress updates: {plain:?}"
    );
}
