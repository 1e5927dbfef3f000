//! Checkpoints, resume, interrupts and output files: a kill at any moment
//! loses no finished work and `--resume` continues bit for bit; Ctrl-C
//! exits 130 and leaves `-o` alone; outputs are checked before training,
//! are byte-deterministic, and replace nothing unasked.
//!
//! The crash tests use the fault hooks of `netc_runtime::fault`
//! (`NETC_FAULT_KILL_AFTER`, `NETC_FAULT_FAIL_AT`,
//! `NETC_FAULT_SIGINT_AT_STEP`, `NETC_FAULT_TRACE`) to stop training at
//! every filesystem step of a checkpoint and at chosen steps, plus real
//! SIGKILLs and SIGINTs at seeded random moments.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MLP: &str = "model tiny {
  input x: [2]
  x -> dense(8) as h -> relu -> dropout(0.2) -> dense(2) as out -> softmax -> probs
  output probs
}
train tiny {
  loss: cross_entropy
  optimizer: adam(lr: 0.01)
  batch: 8
  epochs: 2
  schedule: cosine(min_lr: 0.0)
}
";

const CNN: &str = "model cnn {
  input image: [6, 6, 1]
  image -> conv2d(filters: 2, kernel: 3) as conv -> relu -> maxpool2d(2) -> flatten
        -> dense(3) as out -> softmax -> probs
  output probs
}
train cnn {
  loss: cross_entropy
  optimizer: momentum(lr: 0.05, momentum: 0.9)
  batch: 4
  epochs: 2
}
";

const LSTM: &str = "model seq {
  input series: [5, 1]
  series -> lstm(4) as lstm1 -> dense(1) as out -> sigmoid -> prob
  output prob
}
train seq {
  loss: binary_cross_entropy
  optimizer: adam(lr: 0.02)
  batch: 4
  epochs: 2
}
";

/// What a finished `netc` process left: exit code (None if killed),
/// signal, stdout, stderr.
struct Out {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
}

/// A scratch directory with a model and its data; runs `netc` inside it.
struct Fixture {
    dir: tempfile::TempDir,
    net: &'static str,
    data: String,
}

impl Fixture {
    /// The MLP on 64 CSV rows of two blobs.
    fn mlp() -> Fixture {
        Fixture::blobs(MLP)
    }

    /// A model of two inputs on 64 CSV rows of two blobs.
    fn blobs(src: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.net"), src).unwrap();
        crate::common::blobs_csv(dir.path(), "d.csv", 64);
        Fixture {
            dir,
            net: "m.net",
            data: "d.csv".into(),
        }
    }

    /// A model on `.npy` data: `n` examples of `shape`, labels from `label`.
    fn npy(src: &str, n: usize, shape: &[usize], label: impl Fn(&[f32]) -> f32) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.net"), src).unwrap();
        let per: usize = shape.iter().product();
        let mut s = 7u64;
        let mut x = Vec::with_capacity(n * per);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let ex: Vec<f32> = (0..per)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect();
            y.push(label(&ex));
            x.extend(ex);
        }
        let mut xs = vec![n];
        xs.extend(shape);
        let t = |shape, data| netc_runtime::Tensor::new(shape, data).unwrap();
        netc_runtime::write_npy(dir.path().join("x.npy"), &t(xs, x)).unwrap();
        netc_runtime::write_npy(dir.path().join("y.npy"), &t(vec![n], y)).unwrap();
        Fixture {
            dir,
            net: "m.net",
            data: "x.npy,y.npy".into(),
        }
    }

    /// A model on a data set of the repository (an absolute path).
    fn repo_data(src: &str, data: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.net"), src).unwrap();
        Fixture {
            dir,
            net: "m.net",
            data: crate::common::root().join(data).display().to_string(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn command(&self, extra: &[&str], env: &[(&str, String)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_netc"));
        c.args(["train", self.net, "--data", &self.data, "--threads", "1"])
            .args(extra)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1");
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn run(&self, extra: &[&str], env: &[(&str, String)]) -> Out {
        let o = self.command(extra, env).output().unwrap();
        Out {
            code: o.status.code(),
            signal: o.status.signal(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    fn spawn(&self, extra: &[&str]) -> Child {
        self.command(extra, &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn read(&self, p: &str) -> Vec<u8> {
        std::fs::read(self.path(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    /// The metrics log without its wall-time column.
    fn log(&self, p: &str) -> Vec<String> {
        String::from_utf8(self.read(p))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').map_or(l, |(a, _)| a).to_string())
            .collect()
    }

    /// The uninterrupted run: final weights and metrics log (written to
    /// `ref.safetensors` and `ref/`).
    fn reference(&self) -> (Vec<u8>, Vec<String>) {
        let o = self.run(&["--checkpoint", "ref", "-o", "ref.safetensors"], &[]);
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        (self.read("ref.safetensors"), self.log("ref/metrics.csv"))
    }
}

fn ok(o: &Out) {
    assert_eq!(
        o.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
}

/// Epoch lines (on stderr) without the wall time.
fn epoch_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.starts_with("epoch "))
        .map(|l| l.rsplit_once("  ").map_or(l, |(a, _)| a).to_string())
        .collect()
}

/// Resumes the run in `ck` (or, when it was killed before it took the
/// directory, checks that `--resume` refuses cleanly and starts over) and
/// checks its result against the uninterrupted run's.
fn resume_and_compare(f: &Fixture, ck: &str, reference: &(Vec<u8>, Vec<String>), what: &str) {
    let out = format!("{ck}.safetensors");
    let args = ["--checkpoint", ck, "-o", &out];
    let mut o = f.run(&[&args[..], &["--resume"]].concat(), &[]);
    if !f.path(ck).join(".lock").exists() {
        assert_eq!(o.code, Some(1), "{what}: {}", o.stderr);
        assert!(
            o.stderr.contains("no checkpoint to resume in"),
            "{what}: {}",
            o.stderr
        );
        o = f.run(&args, &[]);
    }
    ok(&o);
    assert!(
        f.read(&out) == reference.0,
        "{what}: final weights differ from the uninterrupted run's\n{}",
        o.stderr
    );
    assert_eq!(f.log(&format!("{ck}/metrics.csv")), reference.1, "{what}");
    let leftovers: Vec<_> = std::fs::read_dir(f.path(ck))
        .unwrap()
        .chain(std::fs::read_dir(f.dir.path()).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{what}: {leftovers:?}");
    std::fs::remove_dir_all(f.path(ck)).unwrap();
}

#[test]
fn a_kill_at_every_filesystem_step_of_checkpointing_then_resume_is_exact() {
    let f = Fixture::mlp();
    let reference = f.reference();
    // Every filesystem step of an uninterrupted run: the log's header, each
    // epoch's log row and checkpoint (file + weights copy), and `-o`.
    let o = f.run(
        &["--checkpoint", "trace", "-o", "trace.safetensors"],
        &[("NETC_FAULT_TRACE", "1".into())],
    );
    ok(&o);
    let steps = o.stderr.matches("fault: step ").count();
    for what in [
        "rename trace/checkpoint.safetensors",
        "fsync dir trace",
        "fsync trace/metrics.csv",
    ] {
        assert!(o.stderr.contains(what), "{what} not traced:\n{}", o.stderr);
    }
    assert!(steps >= 20, "{}", o.stderr);
    for n in 1..=steps {
        let o = f.run(
            &["--checkpoint", "ck", "-o", "ck.safetensors"],
            &[("NETC_FAULT_KILL_AFTER", n.to_string())],
        );
        assert_eq!(o.signal, Some(9), "step {n}: not killed\n{}", o.stderr);
        resume_and_compare(&f, "ck", &reference, &format!("kill after step {n}"));
    }
}

/// A seeded xorshift generator for kill times.
fn rng(mut s: u64) -> impl FnMut() -> u64 {
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

#[test]
fn sigkill_at_random_moments_then_resume_is_exact() {
    let f = Fixture::mlp();
    let reference = f.reference();
    // How long a run takes to start (until it locks its checkpoint
    // directory) and to train, measured on a run like the killed ones;
    // capped so a loaded machine cannot stretch the test.
    let (startup, training) = {
        let t = Instant::now();
        let mut child = f.spawn(&["--checkpoint", "timing"]);
        wait_for_lock(&f, "timing");
        let startup = t.elapsed();
        assert!(child.wait().unwrap().success());
        let cap = Duration::from_secs(2);
        (startup.min(cap), (t.elapsed() - startup).min(cap))
    };
    let mut next = rng(0x5eed);
    let mut in_training = 0;
    for i in 0..20 {
        let ck = format!("ck{i}");
        let mut child = f.spawn(&["--checkpoint", &ck, "-o", &format!("{ck}.safetensors")]);
        // One kill in four lands while the run starts up, the others
        // while it trains (or just after it finished).
        let span = if i % 4 == 0 {
            startup
        } else {
            wait_for_lock(&f, &ck);
            training + training / 8
        };
        let us = span.as_micros().max(1) as u64;
        std::thread::sleep(Duration::from_micros(next() % us));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.signal() == Some(9) && f.path(&ck).join(".lock").exists() {
            in_training += 1;
        }
        resume_and_compare(&f, &ck, &reference, &format!("kill {i}"));
    }
    eprintln!("{in_training} of 20 kills landed after the run took its directory");
    assert!(
        in_training >= 5,
        "only {in_training} of 20 kills hit training"
    );
}

/// Waits (up to 20 s) until a run has locked checkpoint directory `ck`.
fn wait_for_lock(f: &Fixture, ck: &str) {
    let t = Instant::now();
    while !f.path(ck).join(".lock").exists() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Interrupts a run (as Ctrl-C) before each of `points` (steps done),
/// resumes it, and checks that the result, the metrics log and the
/// printed epoch figures equal the uninterrupted run's.
fn interrupt_and_resume(f: &Fixture, points: &[usize]) {
    let reference = f.reference();
    let full = f.run(&["--checkpoint", "full"], &[]);
    ok(&full);
    for &p in points {
        let ck = format!("ck{p}");
        let out = format!("{ck}.safetensors");
        let o = f.run(
            &["--checkpoint", &ck, "-o", &out],
            &[("NETC_FAULT_SIGINT_AT_STEP", p.to_string())],
        );
        assert_eq!(o.code, Some(130), "step {p}: {}", o.stderr);
        assert!(
            o.stderr.contains("interrupted: checkpoint saved in"),
            "{}",
            o.stderr
        );
        assert!(
            !f.path(&out).exists(),
            "step {p}: -o written by an interrupted run"
        );
        let r = f.run(&["--checkpoint", &ck, "-o", &out, "--resume"], &[]);
        ok(&r);
        let mut printed = epoch_lines(&o.stderr);
        printed.extend(epoch_lines(&r.stderr));
        assert_eq!(printed, epoch_lines(&full.stderr), "step {p}");
        assert!(f.read(&out) == reference.0, "step {p}: weights differ");
        assert_eq!(f.log(&format!("{ck}/metrics.csv")), reference.1, "step {p}");
    }
}

#[test]
fn sigint_at_any_step_of_a_cnn_then_resume_is_exact() {
    // 24 examples, batch 4: 6 steps an epoch. Before any step, mid-epoch,
    // at the epoch boundary, mid second epoch, before the last step.
    let f = Fixture::npy(CNN, 24, &[6, 6, 1], |e| {
        (e.iter().sum::<f32>() * 4.0).clamp(0.0, 2.0).floor()
    });
    interrupt_and_resume(&f, &[0, 1, 3, 6, 8, 11]);
}

/// Augmentation draws from the seed and the step: an interrupted and
/// resumed run transforms its images as the uninterrupted one did.
#[test]
fn sigint_then_resume_with_augmentation_is_exact() {
    let src = CNN.replace(
        "  epochs: 2\n",
        "  epochs: 2\n  augment: [flip(horizontal), shift(0.2), rotate(15), zoom(0.1)]\n",
    );
    assert!(src.contains("augment"));
    let src: &'static str = Box::leak(src.into_boxed_str());
    let f = Fixture::npy(src, 24, &[6, 6, 1], |e| {
        (e.iter().sum::<f32>() * 4.0).clamp(0.0, 2.0).floor()
    });
    interrupt_and_resume(&f, &[3, 8]);
}

#[test]
fn sigint_at_any_step_of_an_lstm_then_resume_is_exact() {
    let f = Fixture::npy(LSTM, 24, &[5, 1], |e| f32::from(u8::from(e[0] > 0.0)));
    interrupt_and_resume(&f, &[0, 2, 5, 6, 7, 10]);
}

/// A variable-length model (JapaneseVowels, 7–29 frames) with buckets:
/// batches of similar lengths, each stepped at its own padded length with
/// its own step program, the parameters and optimizer state moving
/// between them; an interrupt anywhere resumes bit for bit.
#[test]
fn sigint_at_any_step_of_a_variable_length_model_then_resume_is_exact() {
    let f = Fixture::repo_data(
        "model jv {
  input frames: [*, 12]
  frames -> gru(4) as r -> dense(9) as out -> softmax -> probs
  output probs
}
train jv {
  loss: cross_entropy
  optimizer: adam(lr: 0.01)
  batch: 32
  epochs: 2
  bucket: true
}
",
        "data/japanese_vowels/JapaneseVowels_TRAIN.ts.gz",
    );
    // 270 utterances, batch 32: 8 steps an epoch.
    interrupt_and_resume(&f, &[3, 11]);
}

/// A real SIGINT at a random moment: interrupted in training, the run
/// exits 130 with a checkpoint and no `-o`; after its last epoch, with the
/// finished weights in `-o` (never lose finished work); either way the
/// resumed run ends with the uninterrupted run's weights.
#[test]
fn a_real_ctrl_c_exits_130_without_writing_the_output() {
    let f = Fixture::mlp();
    let reference = f.reference();
    // Long enough (many epochs) that the SIGINT lands in training.
    let mut next = rng(42);
    let mut interrupted = 0;
    for i in 0..3 {
        let ck = format!("ck{i}");
        let out = format!("{ck}.safetensors");
        let child = f
            .command(&["--checkpoint", &ck, "-o", &out], &[])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for the run to take the directory, then a random moment.
        wait_for_lock(&f, &ck);
        std::thread::sleep(Duration::from_micros(next() % 30_000));
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        match o.status.code() {
            // Interrupted in training: a checkpoint, no output.
            Some(130) if !f.path(&out).exists() => {
                interrupted += 1;
                assert!(err.contains("interrupted: checkpoint saved in"), "{err}");
            }
            // Interrupted after the last epoch (while the test set is
            // evaluated): the finished weights are kept, and they are the
            // uninterrupted run's.
            Some(130) => {
                assert!(!err.contains("interrupted: checkpoint saved in"), "{err}");
                assert!(
                    f.read(&out) == reference.0,
                    "-o written by a run interrupted before it finished"
                );
            }
            Some(0) => {}
            other => panic!("exit {other:?}: {err}"),
        }
        resume_and_compare(&f, &ck, &reference, &format!("SIGINT {i}"));
    }
    assert!(interrupted >= 1, "no SIGINT landed in training");
}

#[test]
fn identical_runs_write_identical_bytes() {
    let f = Fixture::mlp();
    for run in ["a", "b"] {
        let out = format!("{run}.safetensors");
        ok(&f.run(&["--checkpoint", run, "-o", &out], &[]));
    }
    for file in [
        ".safetensors",
        "/checkpoint.safetensors",
        "/weights.safetensors",
        "/metrics.png",
    ] {
        let (a, b) = (f.read(&format!("a{file}")), f.read(&format!("b{file}")));
        assert!(a == b, "a{file} and b{file} differ");
    }
}

#[test]
fn output_paths_are_checked_before_training() {
    let f = Fixture::mlp();
    let cases = [
        (
            vec!["-o", "missing_dir/w.safetensors"],
            "cannot write `missing_dir/w.safetensors`: directory `missing_dir` does not exist",
        ),
        (
            vec!["--log", "nope/log.csv"],
            "cannot write `nope/log.csv`: directory `nope` does not exist",
        ),
        (
            vec!["--plot", "nope/p.png"],
            "cannot write `nope/p.png`: directory `nope` does not exist",
        ),
        (
            vec!["--checkpoint", "m.net"],
            "checkpoint directory `m.net` is a file, not a directory",
        ),
        (vec!["-o", "."], "cannot write `.`: it is a directory"),
    ];
    for (args, msg) in cases {
        let o = f.run(&args, &[]);
        assert_eq!(o.code, Some(1), "{args:?}: {}", o.stderr);
        assert!(o.stderr.contains(msg), "{args:?}: {}", o.stderr);
        assert!(!o.stderr.contains("epoch 1/"), "{args:?} trained first");
    }
}

#[test]
fn a_failed_final_write_saves_the_weights_elsewhere() {
    let f = Fixture::mlp();
    let (weights, _) = f.reference();
    let tmp = f.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    // No log or checkpoint: the first filesystem step is writing `-o`.
    let o = f.run(
        &["-o", "w.safetensors"],
        &[
            ("NETC_FAULT_FAIL_AT", "1".into()),
            ("TMPDIR", tmp.display().to_string()),
        ],
    );
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr
            .contains("cannot write weights file w.safetensors: No space left on device"),
        "{}",
        o.stderr
    );
    let saved: Vec<PathBuf> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(
        o.stderr.contains(&format!(
            "the trained weights were saved to {} instead",
            saved[0].display()
        )),
        "{}",
        o.stderr
    );
    assert!(std::fs::read(&saved[0]).unwrap() == weights);
    assert!(!f.path("w.safetensors").exists());

    // With a checkpoint directory the last checkpoint holds them.
    let o = f.run(
        &[
            "--checkpoint",
            "ck",
            "--log",
            "other.csv",
            "-o",
            "w.safetensors",
        ],
        &[
            ("NETC_FAULT_FAIL_AT", "25".into()),
            ("NETC_FAULT_TRACE", "1".into()),
        ],
    );
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr.contains("fault: step 25: write w.safetensors"),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr
            .contains("the trained weights are in ck/weights.safetensors (the last checkpoint)"),
        "{}",
        o.stderr
    );
}

#[test]
fn a_checkpoint_directory_in_use_is_refused() {
    let f = Fixture::mlp();
    std::fs::create_dir(f.path("ck")).unwrap();
    // Another process holds the lock (util-linux `flock`, as a second
    // trainer would): it says so once it has it, and lets go when its
    // stdin closes.
    let mut holder = Command::new("flock")
        .args(["ck/.lock", "-c", "echo locked; cat"])
        .current_dir(f.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("util-linux flock runs");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "locked\n");
    let o = f.run(&["--checkpoint", "ck"], &[]);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr.contains(
            "checkpoint directory ck is in use by another `netc train` (it holds ck/.lock)"
        ),
        "{}",
        o.stderr
    );
    assert!(!f.path("ck/metrics.csv").exists());
    drop(holder.stdin.take());
    holder.wait().unwrap();
    let o = f.run(&["--checkpoint", "ck"], &[]);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr.contains("checkpoint directory ck already holds a run that stopped before its first checkpoint (ck/.lock)"),
        "{}",
        o.stderr
    );
    ok(&f.run(&["--checkpoint", "ck", "--resume"], &[]));
}

#[test]
fn an_existing_run_or_plot_is_not_replaced_without_overwrite() {
    let f = Fixture::mlp();
    ok(&f.run(&["--checkpoint", "ck"], &[]));
    let before = f.read("ck/checkpoint.safetensors");
    let o = f.run(&["--checkpoint", "ck", "--epochs", "1"], &[]);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr.contains("checkpoint directory ck already holds a checkpoint of `tiny` after epoch 2; pass --resume to continue that run, or --overwrite to start a new one there"),
        "{}",
        o.stderr
    );
    assert!(f.read("ck/checkpoint.safetensors") == before);
    let o = f.run(&["--checkpoint", "ck", "--epochs", "1", "--overwrite"], &[]);
    ok(&o);
    assert_eq!(f.log("ck/metrics.csv").len(), 2, "header and one epoch");

    std::fs::write(f.path("results.png"), b"my figure").unwrap();
    let o = f.run(&["--log", "results.csv"], &[]);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr.contains(
            "`results.png` exists and would be replaced by the training plot of --log results.csv"
        ),
        "{}",
        o.stderr
    );
    assert_eq!(f.read("results.png"), b"my figure");
    assert!(!f.path("results.csv").exists());
    ok(&f.run(&["--log", "results.csv", "--plot", "curves.png"], &[]));
    assert_eq!(f.read("results.png"), b"my figure");
}

#[test]
fn resume_without_a_checkpoint_fails_and_touches_nothing() {
    let f = Fixture::mlp();
    std::fs::create_dir(f.path("empty")).unwrap();
    let o = f.run(&["--checkpoint", "empty", "--resume"], &[]);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr
            .contains("no checkpoint to resume in empty: it has no checkpoint.safetensors"),
        "{}",
        o.stderr
    );
    assert_eq!(std::fs::read_dir(f.path("empty")).unwrap().count(), 0);
    let o = f.run(&["--checkpoint", "nowhere", "--resume"], &[]);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr
            .contains("no checkpoint to resume in nowhere: the directory does not exist"),
        "{}",
        o.stderr
    );
    assert!(!f.path("nowhere").exists());
}

#[test]
fn resume_says_what_changes_and_refuses_what_cannot_continue_exactly() {
    let f = Fixture::mlp();
    let sigint = [("NETC_FAULT_SIGINT_AT_STEP", "3".to_string())];
    assert_eq!(f.run(&["--checkpoint", "ck"], &sigint).code, Some(130));
    let o = f.run(&["--checkpoint", "ck", "--resume", "--batch", "16"], &[]);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr.contains("cannot resume from ck/checkpoint.safetensors: it stopped at step 3 of 8 in epoch 1, and `batch` differs (8 then, 16 now)"),
        "{}",
        o.stderr
    );
    let o = f.run(&["--checkpoint", "ck", "--resume", "--epochs", "4"], &[]);
    ok(&o);
    assert!(
        o.stderr.contains("resuming in epoch 1 after step 3 of 8"),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains("note: the run now has 4 epochs instead of 2: the cosine schedule is stretched over 4 epochs"),
        "{}",
        o.stderr
    );
    let o = f.run(
        &[
            "--checkpoint",
            "ck",
            "--resume",
            "--epochs",
            "4",
            "--lr",
            "0.5",
        ],
        &[],
    );
    ok(&o);
    assert!(o.stderr.contains("nothing left to train"), "{}", o.stderr);
    assert!(
        o.stderr
            .contains("note: `optimizer` changes from Adam { lr: 0.01"),
        "{}",
        o.stderr
    );
    let o = f.run(&["--checkpoint", "ck", "--resume", "--epochs", "5"], &[]);
    ok(&o);
    assert!(
        o.stderr.contains("resuming at the start of epoch 5"),
        "{}",
        o.stderr
    );
}

#[test]
fn a_corrupt_or_foreign_checkpoint_is_refused() {
    let f = Fixture::mlp();
    ok(&f.run(&["--checkpoint", "ck"], &[]));
    let good = f.read("ck/checkpoint.safetensors");
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(f.path("ck/checkpoint.safetensors"), &bad).unwrap();
    let o = f.run(&["--checkpoint", "ck", "--resume", "--epochs", "3"], &[]);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr
            .contains("ck/checkpoint.safetensors: checksum mismatch"),
        "{}",
        o.stderr
    );
    assert!(
        !o.stderr.contains('\u{0}') && o.stderr.lines().count() <= 2,
        "{}",
        o.stderr
    );
    std::fs::write(f.path("ck/checkpoint.safetensors"), &good[..good.len() / 2]).unwrap();
    let o = f.run(&["--checkpoint", "ck", "--resume", "--epochs", "3"], &[]);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr
            .contains("ck/checkpoint.safetensors: not a valid safetensors file"),
        "{}",
        o.stderr
    );

    std::fs::write(f.path("ck/checkpoint.safetensors"), &good).unwrap();
    std::fs::write(f.path("other.net"), MLP.replace("tiny", "other")).unwrap();
    let o = f.run(&["--checkpoint", "ck", "--resume", "--epochs", "3"], &[]);
    ok(&o);
    let mut c = Command::new(env!("CARGO_BIN_EXE_netc"));
    let o = c
        .args([
            "train",
            "other.net",
            "--data",
            "d.csv",
            "--checkpoint",
            "ck",
            "--resume",
        ])
        .current_dir(f.dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("it is a checkpoint of model `tiny`, not `other`"),
        "{err}"
    );
}

#[test]
fn resume_cleans_leftovers_and_cuts_the_log_back_to_the_checkpoint() {
    let f = Fixture::mlp();
    let reference = f.reference();
    let sigint = [("NETC_FAULT_SIGINT_AT_STEP", "11".to_string())];
    let o = f.run(&["--checkpoint", "ck"], &sigint);
    assert_eq!(o.code, Some(130), "{}", o.stderr);
    // What a kill leaves: a temporary file, and a log row for an epoch
    // whose checkpoint never became visible.
    std::fs::write(f.path("ck/.checkpoint.safetensors.Ab12Cd.tmp"), b"half").unwrap();
    let mut log = std::fs::read_to_string(f.path("ck/metrics.csv")).unwrap();
    log.push_str("2,0.5,0.5,,,0.01,1.0\n3,0.4");
    std::fs::write(f.path("ck/metrics.csv"), log).unwrap();
    ok(&f.run(
        &["--checkpoint", "ck", "--resume", "-o", "ck.safetensors"],
        &[],
    ));
    assert!(!f.path("ck/.checkpoint.safetensors.Ab12Cd.tmp").exists());
    assert_eq!(f.log("ck/metrics.csv"), reference.1);
    assert!(f.read("ck.safetensors") == reference.0);
}

#[test]
fn early_stopping_state_survives_an_interrupt() {
    // Loss never improves by 0.5 after epoch 1: the run stops after epoch
    // 2, and only if the resumed run remembers epoch 1's best loss.
    let src = MLP.replace(
        "epochs: 2",
        "epochs: 6\n  early_stopping: early_stopping(patience: 1, monitor: loss, min_delta: 0.5)",
    );
    let f = Fixture::blobs(&src);
    let reference = f.reference();
    for p in [8, 9] {
        let ck = format!("ck{p}");
        let out = format!("{ck}.safetensors");
        let o = f.run(
            &["--checkpoint", &ck],
            &[("NETC_FAULT_SIGINT_AT_STEP", p.to_string())],
        );
        assert_eq!(o.code, Some(130), "{}", o.stderr);
        let o = f.run(&["--checkpoint", &ck, "--resume", "-o", &out], &[]);
        ok(&o);
        assert!(
            o.stderr.contains("early stopping after epoch 2"),
            "{}",
            o.stderr
        );
        assert!(f.read(&out) == reference.0, "step {p}: weights differ");
        let o = f.run(&["--checkpoint", &ck, "--resume"], &[]);
        ok(&o);
        assert!(
            o.stderr.contains(
                "note: early stopping ended this run after epoch 2; nothing left to train"
            ),
            "{}",
            o.stderr
        );
        assert!(!o.stderr.contains("epoch 3/"), "{}", o.stderr);
    }
}

#[test]
fn a_full_disk_while_checkpointing_keeps_the_last_checkpoint() {
    let f = Fixture::mlp();
    let reference = f.reference();
    // Steps 1-4 write the log's header, 5-14 epoch 1's row, checkpoint and
    // weights copy, 15-16 epoch 2's row: step 17 writes epoch 2's checkpoint.
    let o = f.run(
        &["--checkpoint", "ck", "-o", "ck.safetensors"],
        &[
            ("NETC_FAULT_FAIL_AT", "17".into()),
            ("NETC_FAULT_TRACE", "1".into()),
        ],
    );
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr
            .contains("fault: step 17: write ck/checkpoint.safetensors"),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains(
            "error: ck/checkpoint.safetensors: No space left on device (injected by NETC_FAULT_FAIL_AT)"
        ),
        "{}",
        o.stderr
    );
    assert!(!f.path("ck.safetensors").exists());
    let o = f.run(
        &["--checkpoint", "ck", "--resume", "-o", "ck.safetensors"],
        &[],
    );
    ok(&o);
    assert!(
        o.stderr.contains("resuming at the start of epoch 2"),
        "{}",
        o.stderr
    );
    assert!(f.read("ck.safetensors") == reference.0);
    assert_eq!(f.log("ck/metrics.csv"), reference.1);
}
