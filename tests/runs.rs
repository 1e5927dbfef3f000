//! Run directories (issue 17): `netc train` without `-o` keeps its run in
//! `runs/<model>/<n>/`, prints the path, and `netc eval`, `predict` and
//! `generate` take that directory in place of a `.net` file and weights;
//! `--optimizer` and `--loss` override the train section; results go to
//! stdout and progress to stderr. Every run here has a temporary working
//! directory, so nothing is written into the repository.

mod common;
use common::{idx_dir, netc_in};
use std::path::Path;
use std::process::Command;

/// A 2×2-image classifier whose train section reads `idx` beside it (an
/// IDX directory with a test split).
const IMG: &str = "model img {
  input x: [2, 2, 1]
  x -> flatten -> dense(2) as out -> softmax -> probs
  output probs
}

train img {
  optimizer: adam(lr: 0.05)
  batch: 8
  epochs: 2
  metrics: [accuracy]
  data: \"idx\"
}
";

/// A sigmoid classifier on two features, binary cross-entropy with Adam
/// at lr 0.02, reading `blobs.csv` beside it.
const BLOBS: &str = "model blob {
  input x: [2]
  x -> dense(1) as out -> sigmoid -> p
  output p
}

train blob {
  loss: binary_cross_entropy
  optimizer: adam(lr: 0.02)
  batch: 8
  epochs: 2
  data: \"blobs.csv\"
}
";

/// A temporary working directory holding `img.net` and its data.
fn img_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("img.net"), IMG).unwrap();
    idx_dir(dir.path(), 16);
    dir
}

/// `netc train` in `cwd` on one thread; must succeed. Returns (stdout,
/// stderr).
fn train(cwd: &Path, args: &[&str]) -> (String, String) {
    let mut all = vec!["train"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--threads", "1"]);
    let (code, out, err) = netc_in(cwd, &all);
    assert_eq!(code, 0, "{all:?}\nstdout:\n{out}\nstderr:\n{err}");
    (out, err)
}

/// The run directory a `saved: DIR` line of stdout names.
fn saved(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("saved: "))
        .unwrap_or_else(|| panic!("no `saved:` line in\n{out}"))
        .to_string()
}

fn record(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("run.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `loss L  accuracy A%` out of a `test:` line of `train` or the first
/// line of `eval` (`N examples: loss L  accuracy A%`).
fn figures(line: &str) -> String {
    let from = line.find("loss ").unwrap_or_else(|| panic!("{line}"));
    let rest = &line[from..];
    rest.split(" on ").next().unwrap().trim().to_string()
}

#[test]
fn train_without_o_keeps_the_run_and_eval_reads_it_back_with_no_flags() {
    let dir = img_dir();
    let (out, err) = train(dir.path(), &["img.net"]);
    // Results on stdout, nothing else: the test figures and the path.
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("test: loss "), "{out}");
    assert_eq!(lines[1], "saved: runs/img/1/");
    // Progress on stderr.
    assert!(err.contains("epoch 1/2  loss") && err.contains("epoch 2/2  loss"));
    assert!(err.contains("run directory: runs/img/1/"), "{err}");

    let run = dir.path().join("runs/img/1");
    for f in [
        "weights.safetensors",
        "model.net",
        "metrics.csv",
        "metrics.png",
        "run.json",
    ] {
        assert!(run.join(f).is_file(), "no {f} in {}", run.display());
    }
    assert_eq!(std::fs::read_to_string(run.join("model.net")).unwrap(), IMG);
    let log = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(log.lines().count(), 3, "{log}");
    let r = record(&run);
    assert_eq!(r["status"], "finished");
    assert_eq!(r["model"], "img");
    assert_eq!(r["epochs_run"], 2);
    assert_eq!(r["test"]["examples"], 8);
    assert_eq!(r["settings"]["optimizer"]["name"], "adam");
    assert_eq!(r["command"][1], "train");
    assert!(Path::new(r["data"].as_str().unwrap()).is_absolute(), "{r}");
    let weights = netc_runtime::Weights::load(run.join("weights.safetensors")).unwrap();
    assert_eq!(weights.model(), "img");

    // The next run takes the next number.
    let (out2, _) = train(dir.path(), &["img.net", "--seed", "1"]);
    assert_eq!(saved(&out2), "runs/img/2/");

    // `eval` on the printed directory, no flags: the same test figures.
    let (code, ev, err) = netc_in(dir.path(), &["eval", &saved(&out)]);
    assert_eq!(code, 0, "{err}");
    assert!(ev.starts_with("8 examples: "), "{ev}");
    assert_eq!(figures(ev.lines().next().unwrap()), figures(lines[0]));
    // From another working directory too: the record's data path is
    // absolute.
    let elsewhere = tempfile::tempdir().unwrap();
    let abs = run.display().to_string();
    let (code, ev2, err) = netc_in(elsewhere.path(), &["eval", &abs]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ev2, ev);
    // A run directory as --weights with the .net file.
    let (code, ev3, err) = netc_in(dir.path(), &["eval", "img.net", "--weights", &abs]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ev3, ev);
    // `predict` takes it too.
    let (code, pr, err) = netc_in(
        dir.path(),
        &["predict", "runs/img/1", "--input", "idx", "-o", "p.npy"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(pr.contains("wrote predictions [8, 2]"), "{pr}");
    assert!(!elsewhere.path().join("runs").exists());
}

#[test]
fn o_and_no_save_keep_no_run_directory() {
    let dir = img_dir();
    let (out, _) = train(dir.path(), &["img.net", "-o", "w.safetensors"]);
    assert!(out.contains("wrote weights to w.safetensors"), "{out}");
    assert!(!out.contains("saved:"), "{out}");
    let (out, _) = train(dir.path(), &["img.net", "--no-save"]);
    assert!(
        !out.contains("saved:") && out.starts_with("test: loss"),
        "{out}"
    );
    assert!(!dir.path().join("runs").exists());
    let (code, _, err) = netc_in(
        dir.path(),
        &["train", "img.net", "--no-save", "-o", "w.safetensors"],
    );
    assert_eq!(code, 2, "{err}");

    // --runs-dir chooses the root.
    let (out, _) = train(dir.path(), &["img.net", "--runs-dir", "exp"]);
    assert_eq!(saved(&out), "exp/img/1/");
    assert!(dir.path().join("exp/img/1/weights.safetensors").is_file());
}

#[test]
fn the_run_directory_holds_the_metrics_logged_elsewhere() {
    let dir = img_dir();
    let (out, _) = train(
        dir.path(),
        &["img.net", "--checkpoint", "ck", "--log", "m.csv"],
    );
    let run = dir.path().join(saved(&out));
    assert_eq!(
        std::fs::read(run.join("metrics.csv")).unwrap(),
        std::fs::read(dir.path().join("m.csv")).unwrap()
    );
    assert!(run.join("metrics.png").is_file());
    // The checkpoint directory is as it was.
    assert!(dir.path().join("ck/checkpoint.safetensors").is_file());
    assert!(!dir.path().join("ck/metrics.csv").exists());
}

#[test]
fn optimizer_and_loss_override_the_train_section() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("blob.net"), BLOBS).unwrap();
    common::blobs_csv(dir.path(), "blobs.csv", 32);
    let settings = |args: &[&str]| {
        let mut all = vec!["blob.net"];
        all.extend_from_slice(args);
        let (out, err) = train(dir.path(), &all);
        let r = record(&dir.path().join(saved(&out)));
        (r["settings"].clone(), err)
    };

    let (s, _) = settings(&[]);
    assert_eq!(s["loss"], "binary_cross_entropy");
    assert_eq!(s["optimizer"]["name"], "adam");
    assert_eq!(s["optimizer"]["lr"], 0.02);

    // Another optimizer starts from its own defaults, as `optimizer: sgd`
    // would; the loss changes the figures trained on.
    let (s, err) = settings(&["--optimizer", "sgd", "--loss", "mse"]);
    assert_eq!(s["loss"], "mse");
    assert_eq!(
        s["optimizer"],
        serde_json::json!({ "name": "sgd", "lr": 0.01 })
    );
    let (_, base_err) = settings(&["--optimizer", "sgd"]);
    let epoch1 = |e: &str| {
        e.lines()
            .find(|l| l.starts_with("epoch 1/"))
            .map(str::to_string)
    };
    assert_ne!(epoch1(&err), epoch1(&base_err), "--loss changed nothing");

    // --lr applies to the overriding optimizer.
    let (s, _) = settings(&["--optimizer", "nesterov", "--lr", "0.05"]);
    assert_eq!(s["optimizer"]["name"], "momentum");
    assert_eq!(s["optimizer"]["nesterov"], true);
    assert_eq!(s["optimizer"]["lr"], 0.05);
    // Naming the section's own optimizer keeps its settings.
    let (s, _) = settings(&["--optimizer", "adam"]);
    assert_eq!(s["optimizer"]["lr"], 0.02);
    let (s, _) = settings(&["--optimizer", "adamw"]);
    assert_eq!(s["optimizer"]["weight_decay"], 0.01);

    // `eval` scores with the loss the run trained with.
    let (code, ev, err) = netc_in(dir.path(), &["eval", "runs/blob/2"]);
    assert_eq!(code, 0, "{err}");
    assert!(ev.starts_with("32 examples: loss "), "{ev}");

    let runs_before = std::fs::read_dir(dir.path().join("runs/blob"))
        .unwrap()
        .count();
    for (flag, bad, listed) in [
        (
            "--optimizer",
            "adamx",
            "sgd, momentum, nesterov, adam, adamw",
        ),
        (
            "--loss",
            "hinge",
            "mse, binary_cross_entropy, cross_entropy",
        ),
    ] {
        let (code, out, err) = netc_in(dir.path(), &["train", "blob.net", flag, bad]);
        assert_eq!(code, 2, "{err}");
        assert!(out.is_empty(), "{out}");
        assert!(
            err.contains(&format!("invalid value '{bad}' for '{flag}")),
            "{err}"
        );
        assert!(err.contains(listed), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A value the section would refuse is refused the same way.
    let (code, _, err) = netc_in(
        dir.path(),
        &["train", "blob.net", "--optimizer", "sgd", "--lr", "0"],
    );
    assert_eq!(code, 1);
    assert!(err.starts_with("error: --lr: `lr` is 0"), "{err}");
    let runs_after = std::fs::read_dir(dir.path().join("runs/blob"))
        .unwrap()
        .count();
    assert_eq!(runs_before, runs_after, "a refused run took a directory");
}

#[test]
fn two_runs_started_together_get_different_directories() {
    let dir = img_dir();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_netc"))
            .args(["train", "img.net", "--threads", "1"])
            .current_dir(dir.path())
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    let path = |o: &std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        saved(&String::from_utf8_lossy(&o.stdout))
    };
    let mut got = [path(&a), path(&b)];
    got.sort();
    assert_eq!(got, ["runs/img/1/", "runs/img/2/"]);
}

#[test]
fn a_run_directory_that_cannot_be_written_loses_no_weights() {
    let dir = img_dir();
    // A root that is a file: refused before training.
    std::fs::write(dir.path().join("taken"), "").unwrap();
    let (code, out, err) = netc_in(dir.path(), &["train", "img.net", "--runs-dir", "taken"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("cannot create run directory taken/img"),
        "{err}"
    );
    assert!(!err.contains("epoch 1/"), "{err}");

    // Writing the weights fails (a full disk): they are saved elsewhere and
    // the message names both places.
    let trace = Command::new(env!("CARGO_BIN_EXE_netc"))
        .args(["train", "img.net", "--threads", "1"])
        .current_dir(dir.path())
        .env("NETC_FAULT_TRACE", "1")
        .output()
        .unwrap();
    assert!(trace.status.success());
    let trace = String::from_utf8_lossy(&trace.stderr);
    let step = trace
        .lines()
        .find(|l| l.ends_with(": write runs/img/1/weights.safetensors"))
        .and_then(|l| l.strip_prefix("fault: step "))
        .and_then(|l| l.split(':').next())
        .unwrap_or_else(|| panic!("{trace}"))
        .to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_netc"))
        .args(["train", "img.net", "--threads", "1"])
        .current_dir(dir.path())
        .env("NETC_FAULT_FAIL_AT", &step)
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot write weights file runs/img/2/weights.safetensors"),
        "{err}"
    );
    assert!(err.contains("the trained weights were saved to"), "{err}");
    let rescued = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("netc-img-"));
    assert!(rescued, "{err}");

    // `eval` on a run that did not finish says so.
    let (code, _, err) = netc_in(dir.path(), &["eval", "runs/img/2"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("has no weights.safetensors: its training did not finish"),
        "{err}"
    );
}

/// A text classifier with a separate test file (as in `text_train.rs`).
const SPAM: &str = "model spam {
  input words: [6]
  words -> dense(8) as h -> relu -> dense(2) as out -> softmax -> probs
  output probs
}

train spam {
  optimizer: adam(lr: 0.01)
  batch: 4
  epochs: 2
  metrics: [accuracy]
  data: \"train.tsv\"
  test: \"test.tsv\"
  text: word(min_count: 2)
  format: classification
}
";

#[test]
fn a_text_run_keeps_its_vocabulary_and_eval_reads_its_test_file() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("spam.net", SPAM),
        (
            "train.tsv",
            "spam\tWin cash now!\nham\tSee you at lunch\nspam\twin a free prize, win now\nham\tlunch now?\nspam\tWIN WIN WIN\nham\tlunch at noon\n",
        ),
        ("test.tsv", "ham\tlunch\nspam\twin now\n"),
    ];
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let (out, _) = train(dir.path(), &["spam.net"]);
    let test_line = out.lines().next().unwrap();
    assert!(test_line.ends_with("on 2 examples"), "{out}");
    let run = dir.path().join(saved(&out));
    let w = netc_runtime::Weights::load(run.join("weights.safetensors")).unwrap();
    let info = netc_runtime::data::TextInfo::from_weights(&w).unwrap();
    assert!(info.is_some(), "no vocabulary in the run's weights");
    assert!(record(&run)["test_data"]
        .as_str()
        .unwrap()
        .ends_with("test.tsv"));
    let (code, ev, err) = netc_in(dir.path(), &["eval", &saved(&out)]);
    assert_eq!(code, 0, "{err}");
    assert!(ev.starts_with("2 examples: "), "{ev}");
    assert_eq!(figures(ev.lines().next().unwrap()), figures(test_line));
}

#[test]
fn an_interrupted_run_keeps_its_metrics_but_no_weights() {
    let dir = img_dir();
    let o = Command::new(env!("CARGO_BIN_EXE_netc"))
        .args(["train", "img.net", "--threads", "1"])
        .current_dir(dir.path())
        .env("NETC_FAULT_SIGINT_AT_STEP", "3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        err.contains("runs/img/1/ keeps the interrupted run's metrics"),
        "{err}"
    );
    let run = dir.path().join("runs/img/1");
    assert!(!run.join("weights.safetensors").exists());
    assert_eq!(record(&run)["status"], "interrupted");
    assert_eq!(record(&run)["epochs_run"], 1);
    let log = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
}
