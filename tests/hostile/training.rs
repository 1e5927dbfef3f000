//! Hostile-input tests: training semantics (hyper-parameters, divergence, validation, clipping, schedules).

use crate::common::{self, netc};
use netc_runtime::{Tensor, Weights};
use std::path::Path;

/// A two-class classifier on 2 features.
const CLASSIFIER: &str = "model tiny {
  input x: [2]
  x -> dense(4) as h -> relu -> dense(2) as out -> softmax -> probs
  output probs
}
";

/// One weight and one bias: `y = w·x + b`, small enough to train by hand.
const LINEAR: &str = "model lin {
  input x: [1]
  x -> dense(1) as fc -> y
  output y
}
";

/// Two separable blobs, 32 examples, label in the last column.
fn blobs_csv(dir: &Path) -> String {
    common::blobs_csv(dir, "blobs.csv", 32)
        .display()
        .to_string()
}

/// `x.npy,y.npy` with the given single-feature examples and targets.
fn npy_pair(dir: &Path, x: &[f32], y: &[f32]) -> String {
    let (xp, yp) = (dir.join("x.npy"), dir.join("y.npy"));
    netc_runtime::write_npy(&xp, &Tensor::new(vec![x.len(), 1], x.to_vec()).unwrap()).unwrap();
    netc_runtime::write_npy(&yp, &Tensor::new(vec![y.len(), 1], y.to_vec()).unwrap()).unwrap();
    format!("{},{}", xp.display(), yp.display())
}

/// The linear model's weights file with `w` and `b`.
fn linear_weights(dir: &Path, w: f32, b: f32) -> String {
    let mut ws = Weights::new("lin");
    ws.insert("fc.weight", Tensor::new(vec![1, 1], vec![w]).unwrap());
    ws.insert("fc.bias", Tensor::new(vec![1], vec![b]).unwrap());
    let p = dir.join("init.safetensors");
    ws.save(&p).unwrap();
    p.display().to_string()
}

/// Writes `model` + `train` to `dir/m.net`; returns its path.
fn net(dir: &Path, model: &str, train: &str) -> String {
    let p = dir.join("m.net");
    std::fs::write(&p, format!("{model}\n{train}\n")).unwrap();
    p.display().to_string()
}

/// The rows of a metrics log, split into fields, after checking its header.
fn log_rows(path: &Path, header: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(header), "{text}");
    lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

const LOG: &str = "epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds";

#[test]
fn cli_overrides_pass_the_same_validation_as_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = blobs_csv(dir.path());
    let f = net(
        dir.path(),
        CLASSIFIER,
        "train tiny { loss: cross_entropy, optimizer: adam(lr: 0.01), batch: 8 }",
    );
    for (flag, value, says) in [
        ("--lr", "nan", "--lr: `lr` is NaN, outside (0, 1000]"),
        ("--lr", "inf", "--lr: `lr` is inf, outside (0, 1000]"),
        ("--lr", "-1", "--lr: `lr` is -1, outside (0, 1000]"),
        ("--lr", "1e30", "--lr: `lr` is 1e30, outside (0, 1000]"),
        (
            "--batch",
            "0",
            "--batch: `batch` is 0, outside [1, 4294967295]",
        ),
        (
            "--epochs",
            "0",
            "--epochs: `epochs` is 0, outside [1, 4294967295]",
        ),
    ] {
        let arg = format!("{flag}={value}");
        let (code, out, err) = netc(&["train", &f, "--data", &data, &arg]);
        assert_eq!(code, 1, "{arg}: {out}\n{err}");
        assert_eq!(err.lines().count(), 1, "{arg}: {err}");
        assert!(err.starts_with(&format!("error: {says}")), "{arg}: {err}");
        assert!(out.is_empty(), "{arg}: nothing trains: {out}");
    }
}

#[test]
fn adam_that_cannot_update_is_a_checker_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = net(
        dir.path(),
        CLASSIFIER,
        "train tiny { optimizer: adam(beta1: 1.0, epsilon: 0.0) }",
    );
    let (code, _, err) = netc(&["check", &f]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error[E0105]: invalid `beta1` for `adam`: 1 is outside [0, 1)"),
        "{err}"
    );
    assert!(
        err.contains("error[E0105]: invalid `epsilon` for `adam`: 0 is outside (0, 1]"),
        "{err}"
    );
    let f = net(
        dir.path(),
        CLASSIFIER,
        "train tiny { optimizer: momentum(momentum: 1), schedule: step(gamma: 0) }",
    );
    let (code, _, err) = netc(&["check", &f]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("invalid `momentum` for `momentum`: 1 is outside [0, 1)"));
    assert!(err.contains("invalid `gamma` for `step`: 0 is outside (0, 1]"));
}

#[test]
fn divergence_stops_naming_epoch_step_and_tensor_and_saves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Plain gradient descent on y = 3x with step 100: each step multiplies
    // the error by about −200, so the weight overflows f32 in epoch 2.
    let xs: Vec<f32> = (0..16).map(|i| 0.5 + i as f32 / 32.0).collect();
    let ys: Vec<f32> = xs.iter().map(|x| 3.0 * x).collect();
    let data = npy_pair(dir.path(), &xs, &ys);
    let f = net(
        dir.path(),
        LINEAR,
        "train lin { loss: mse, optimizer: sgd(lr: 100), batch: 16, epochs: 40 }",
    );
    let ck = dir.path().join("ck");
    let out_w = dir.path().join("out.safetensors");
    let (code, out, err) = netc(&[
        "train",
        &f,
        "--data",
        &data,
        "--checkpoint",
        ck.to_str().unwrap(),
        "-o",
        out_w.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}\n{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: training diverged in epoch "),
        "{err}"
    );
    // The epoch named is the first not in the log, and its one step.
    let rows = log_rows(&ck.join("metrics.csv"), LOG);
    let epoch = rows.len() + 1;
    assert!(
        last.starts_with(&format!(
            "error: training diverged in epoch {epoch}, step 1: "
        )),
        "{err}"
    );
    assert!(
        last.contains(&format!(
            "the checkpoint in {} still holds epoch {}",
            ck.display(),
            epoch - 1
        )),
        "{err}"
    );
    assert!(!out_w.exists(), "-o must not hold diverged weights");
    let kept = Weights::load(ck.join("weights.safetensors")).unwrap();
    for (name, t) in kept.iter() {
        assert!(t.data.iter().all(|v| v.is_finite()), "{name}: {:?}", t.data);
    }
    for r in &rows {
        assert!(r[1].parse::<f64>().unwrap().is_finite(), "{rows:?}");
    }
}

#[test]
fn early_stopping_on_val_metrics_needs_a_validation_split() {
    let dir = tempfile::tempdir().unwrap();
    let f = net(
        dir.path(),
        CLASSIFIER,
        "train tiny { epochs: 5, early_stopping: early_stopping(patience: 2) }",
    );
    let (code, _, err) = netc(&["check", &f]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error[E0308]: `early_stopping` monitors `val_loss`, but there is no `validation_split`"),
        "{err}"
    );
    assert!(
        err.contains("add `validation_split: 0.1` or monitor `loss`"),
        "{err}"
    );
    // Monitoring the training loss, or with a split, is fine.
    for ok in [
        "early_stopping: early_stopping(patience: 2, monitor: loss)",
        "early_stopping: early_stopping(patience: 2, monitor: val_accuracy), validation_split: 0.25",
    ] {
        let f = net(dir.path(), CLASSIFIER, &format!("train tiny {{ {ok} }}"));
        let (code, _, err) = netc(&["check", &f]);
        assert_eq!(code, 0, "{ok}: {err}");
    }
}

#[test]
fn per_epoch_figures_from_the_test_set_are_labelled_test() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::idx_dir(dir.path(), 16);
    let model = "model img {
  input x: [2, 2, 1]
  x -> flatten -> dense(2) as out -> softmax -> probs
  output probs
}";
    let f = net(
        dir.path(),
        model,
        "train img { optimizer: adam(lr: 0.01), batch: 8, epochs: 2, metrics: [accuracy] }",
    );
    let log = dir.path().join("m.csv");
    let (code, out, err) = netc(&["train", &f, "--data", &data, "--log", log.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    let epochs: Vec<&str> = err.lines().filter(|l| l.starts_with("epoch ")).collect();
    assert_eq!(epochs.len(), 2, "{err}");
    for l in &epochs {
        assert!(
            l.contains("  test_loss ") && l.contains("  test_acc "),
            "{l}"
        );
        assert!(!l.contains("val_"), "{l}");
    }
    let rows = log_rows(
        &log,
        "epoch,loss,accuracy,test_loss,test_accuracy,lr,seconds",
    );
    assert_eq!(rows.len(), 2);
    // With a split, the per-epoch figures are validation figures again.
    let f = net(
        dir.path(),
        model,
        "train img { optimizer: adam(lr: 0.01), batch: 4, epochs: 1, validation_split: 0.25 }",
    );
    // The first run drew m.png beside the log.
    let (code, out, err) = netc(&[
        "train",
        &f,
        "--data",
        &data,
        "--log",
        log.to_str().unwrap(),
        "--overwrite",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("  val_loss "), "{out}\n{err}");
    assert_eq!(log_rows(&log, LOG).len(), 1);
}

/// Trains the linear model one step (one example x = 1, target 0, from
/// w = 1, b = 0, plain gradient descent with lr 1) with `extra` settings;
/// returns (w, b, logged loss).
fn one_linear_step(extra: &str) -> (f32, f32, f64) {
    let dir = tempfile::tempdir().unwrap();
    let data = npy_pair(dir.path(), &[1.0], &[0.0]);
    let init = linear_weights(dir.path(), 1.0, 0.0);
    let f = net(
        dir.path(),
        LINEAR,
        &format!("train lin {{ loss: mse, optimizer: sgd(lr: 1), batch: 1, epochs: 1, {extra} }}"),
    );
    let (log, out_w) = (dir.path().join("m.csv"), dir.path().join("w.safetensors"));
    let (code, out, err) = netc(&[
        "train",
        &f,
        "--data",
        &data,
        "--init-from",
        &init,
        "--log",
        log.to_str().unwrap(),
        "-o",
        out_w.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let w = Weights::load(&out_w).unwrap();
    let rows = log_rows(&log, LOG);
    (
        w.get("fc.weight").unwrap().data[0],
        w.get("fc.bias").unwrap().data[0],
        rows[0][1].parse().unwrap(),
    )
}

#[test]
fn clip_norm_clips_the_full_gradient_penalties_included() {
    // Prediction 1, target 0: the data gradient is 2 for w and for b; l2
    // adds 2·0.5·w = 1 to w's. Full gradient (3, 2), norm √13; clipped to
    // norm 1: w = 1 − 3/√13, b = −2/√13. (Clipping the data gradient
    // alone, then adding the penalty, gave w = 1 − 2/√8 − 1 = −0.7071.)
    let (w, b, _) = one_linear_step("l2: 0.5, clip_norm: 1.0");
    let n = 13f32.sqrt();
    assert!((w - (1.0 - 3.0 / n)).abs() < 1e-6, "w = {w}");
    assert!((b - (-2.0 / n)).abs() < 1e-6, "b = {b}");
    // clip_value then clamps the clipped gradient: (0.832, 0.555) → 0.6.
    let (w, b, _) = one_linear_step("l2: 0.5, clip_norm: 1.0, clip_value: 0.6");
    assert!((w - 0.4).abs() < 1e-6, "w = {w}");
    assert!((b - (-2.0 / n)).abs() < 1e-6, "b = {b}");
}

#[test]
fn logged_loss_includes_the_penalties() {
    // Data loss (1 − 0)² = 1, plus l2·w² = 0.5 plus l1·|w| = 0.25, at the
    // weights the step started from (biases are not penalized).
    let (_, _, loss) = one_linear_step("l2: 0.5, l1: 0.25");
    assert_eq!(loss, 1.75);
    let (_, _, loss) = one_linear_step("");
    assert_eq!(loss, 1.0);
}

#[test]
fn schedules_follow_the_documented_formulas_and_the_lr_column_is_the_f32_used() {
    let dir = tempfile::tempdir().unwrap();
    let data = blobs_csv(dir.path());
    let f = net(
        dir.path(),
        CLASSIFIER,
        "train tiny { optimizer: sgd(lr: 0.01), batch: 32, epochs: 3, schedule: cosine(min_lr: 0.001) }",
    );
    let log = dir.path().join("m.csv");
    let (code, out, err) = netc(&["train", &f, "--data", &data, "--log", log.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    let lrs: Vec<String> = log_rows(&log, LOG)
        .into_iter()
        .map(|r| r[5].clone())
        .collect();
    // min_lr + ½(lr − min_lr)(1 + cos(π e / 3)), e = 0, 1, 2 (PyTorch's
    // convention, as documented), each the f32 used, shortest form: not
    // 0.010000000000000002.
    assert_eq!(lrs, ["0.01", "0.00775", "0.00325"]);
    // A step schedule: 0.01·0.5^k printed without float noise.
    let f = net(
        dir.path(),
        CLASSIFIER,
        "train tiny { optimizer: sgd(lr: 0.01), batch: 32, epochs: 4, schedule: step(every: 1) }",
    );
    // The first run drew m.png beside the log.
    let (code, out, err) = netc(&[
        "train",
        &f,
        "--data",
        &data,
        "--log",
        log.to_str().unwrap(),
        "--overwrite",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let lrs: Vec<String> = log_rows(&log, LOG)
        .into_iter()
        .map(|r| r[5].clone())
        .collect();
    assert_eq!(lrs, ["0.01", "0.005", "0.0025", "0.00125"]);
}

/// The call values of the language reference's training table, e.g.
/// `adam(lr: 0.001, beta1: 0.9, ...)`.
fn documented_calls() -> Vec<String> {
    let doc = std::fs::read_to_string(common::root().join("docs/language.md")).unwrap();
    let section = doc.split("## Training section").nth(1).unwrap();
    let table = section
        .split("\n\n")
        .find(|p| p.contains("| Key |"))
        .unwrap();
    table
        .lines()
        .filter_map(|l| l.split('|').nth(2))
        .filter_map(|cell| {
            let code = cell.trim().strip_prefix('`')?.strip_suffix('`')?;
            (code.contains('(') && code.ends_with(')')).then(|| code.to_string())
        })
        .collect()
}

#[test]
fn documented_defaults_are_the_checker_defaults() {
    let calls = documented_calls();
    assert_eq!(calls.len(), 7, "{calls:?}");
    for call in calls {
        let name = &call[..call.find('(').unwrap()];
        let key = match name {
            "early_stopping" => "early_stopping",
            "step" | "cosine" => "schedule",
            _ => "optimizer",
        };
        let cfg = |value: &str| {
            let src =
                format!("{CLASSIFIER}\ntrain tiny {{ validation_split: 0.1, {key}: {value} }}");
            let c = common::check_ok(&src).trains[0].clone();
            (c.optimizer, c.schedule, c.early_stopping)
        };
        assert_eq!(cfg(&call), cfg(&format!("{name}()")), "{call}");
    }
}

#[test]
fn adam_constants_are_rounded_once_from_f64() {
    let dir = tempfile::tempdir().unwrap();
    let f = net(
        dir.path(),
        CLASSIFIER,
        "train tiny { optimizer: adam(beta1: 0.9, beta2: 0.999) }",
    );
    let (code, out, err) = netc(&["compile", &f, "--emit", "kernels-train"]);
    assert_eq!(code, 0, "{err}");
    // 1 − β₂ is 0.001 (f32 0.0010000000475) and 1 − β₁ is 0.1, not the
    // f32 differences 0.0009999871 and 0.100000024.
    assert!(out.contains("0.001 * (s0 * s0)"), "{out}");
    assert!(out.contains("0.1 * s0"), "{out}");
    for noise in ["0.0009999871", "0.100000024"] {
        assert!(!out.contains(noise), "{noise} in\n{out}");
    }
}

#[test]
fn the_reference_tells_keras_users_about_adamw_and_clip_norm() {
    let doc = std::fs::read_to_string(common::root().join("docs/language.md")).unwrap();
    let section = doc.split("## Training section").nth(1).unwrap();
    let section = section.split("\n## ").next().unwrap();
    assert!(
        section.contains("decays weights but not biases"),
        "AdamW's decay set is undocumented"
    );
    assert!(
        section.contains("global norm of all gradients together"),
        "clip_norm being global is undocumented"
    );
    assert!(section.contains("Keras `clipnorm`"));
}
