//! ONNX export (`netc export`, `netc_runtime::onnx`): every example, and
//! the models of `tests/onnx/layers.net` (the layers and options no
//! example uses), export, and onnx's checker and onnxruntime agree with
//! `netc run`.
//!
//! For each model this writes, in a temporary directory, weights (netc's
//! initialization with every bias, batchnorm statistic and embedding
//! padding row set to random values, so that gate order, bias layout and
//! the inference-form batchnorm are all visible in the outputs), random
//! inputs (token ids within the vocabulary, the padding id among them;
//! variable-length inputs [`TEST_STEPS`] long), `netc run`'s outputs, and
//! `netc export`'s model; then `tests/onnx/check.py` checks every model
//! with `onnx.checker` and compares onnxruntime's outputs with netc's
//! within 1e-5 relative (1e-6 absolute near zero).
//!
//! The Python side needs the PyPI packages onnx, onnxruntime and numpy:
//! `.ci/run` installs them and sets `NETC_ONNX_PYTHONPATH`. Without them
//! the exports are still made and the comparison is skipped, except under
//! CI, where it fails.

mod common;
use common::*;

use netc_compiler::op::{Op, ParamRole};
use netc_compiler::Graph;
use netc_runtime::{init_weights, write_npy, Tensor, Weights};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Models of the layers and options no example uses.
const LAYERS: &str = "tests/onnx/layers.net";

/// Models with more parameters than this run at batch 1 (vgg16, alexnet).
const LARGE: usize = 10_000_000;

/// xorshift in [0, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// netc's initial weights for `g`, with biases, batchnorm parameters and
/// statistics, and embedding padding rows set to random values.
fn weights_for(g: &Graph, rng: &mut Rng) -> Weights {
    let mut w = init_weights(g, 0).unwrap();
    for id in g.g.node_indices() {
        let node = g.node(id);
        match &node.op {
            Op::Param { role } => {
                let (lo, span) = match role {
                    ParamRole::Bias | ParamRole::Beta | ParamRole::MovingMean => (-0.5, 1.0),
                    ParamRole::Gamma | ParamRole::MovingVar => (0.5, 1.0),
                    ParamRole::Weight => continue,
                };
                let t = w.get_mut(&node.name).unwrap();
                t.data.iter_mut().for_each(|v| *v = lo + span * rng.next());
            }
            Op::Embedding {
                padding: Some(p),
                dim,
                ..
            } => {
                // What a padding row holds must not matter.
                let table = g.inputs_of(id)[1];
                let t = w.get_mut(&g.node(table).name).unwrap();
                t.data[p * dim..(p + 1) * dim].fill(0.5);
            }
            _ => {}
        }
    }
    w
}

/// Random inputs for `g` at `batch`: floats in [-1, 1), token ids in the
/// vocabulary of the embedding that reads them, each example starting
/// with the padding id (0).
fn inputs_for(g: &Graph, batch: usize, rng: &mut Rng) -> Vec<(String, Tensor)> {
    g.inputs
        .iter()
        .map(|&i| {
            let node = g.node(i);
            let Op::Input { tokens, variable } = node.op else {
                unreachable!("inputs are inputs")
            };
            let mut shape = node.shape.clone().unwrap().0;
            if variable {
                shape[0] = TEST_STEPS;
            }
            let per: usize = shape.iter().product();
            let data: Vec<f32> = if tokens {
                let vocab = g
                    .users_of(i)
                    .into_iter()
                    .find_map(|u| match g.node(u).op {
                        Op::Embedding { vocab, .. } => Some(vocab),
                        _ => None,
                    })
                    .expect("a token input feeds an embedding");
                (0..batch * per)
                    .map(|k| {
                        if k % per == 0 {
                            0.0
                        } else {
                            ((rng.next() * vocab as f32) as usize).min(vocab - 1) as f32
                        }
                    })
                    .collect()
            } else {
                (0..batch * per).map(|_| 2.0 * rng.next() - 1.0).collect()
            };
            let mut dims = vec![batch];
            dims.extend(shape);
            (node.name.clone(), Tensor::new(dims, data).unwrap())
        })
        .collect()
}

/// Runs netc with `args`; panics with its stderr if it fails.
fn netc_ok(args: &[&str]) -> String {
    let (code, out, err) = netc(args);
    assert_eq!(code, 0, "netc {}: {err}", args.join(" "));
    out
}

/// One case directory for `check.py`: weights, inputs, `netc run`'s
/// outputs and `netc export`'s model.
fn write_case(file: &Path, g: &Graph, dir: &Path, rng: &mut Rng) {
    let file = rel(file);
    std::fs::create_dir_all(dir.join("inputs")).unwrap();
    std::fs::create_dir_all(dir.join("expected")).unwrap();
    let mut w = weights_for(g, rng);
    let batch = if w.param_count() > LARGE { 1 } else { 2 };
    let weights = dir.join("weights.safetensors");
    w.save(&weights).unwrap();
    let weights = weights.to_str().unwrap();
    let mut args = vec![
        "run".to_string(),
        file.clone(),
        "--model".into(),
        g.name.clone(),
        "--weights".into(),
        weights.into(),
    ];
    for (name, t) in inputs_for(g, batch, rng) {
        let path = dir.join("inputs").join(format!("{name}.npy"));
        write_npy(&path, &t).unwrap();
        args.push("--input".into());
        args.push(format!("{name}={}", path.display()));
    }
    let [(out_name, _)] = g.outputs.as_slice() else {
        panic!("{}: the examples have one output each", g.name)
    };
    args.push("-o".into());
    args.push(
        dir.join("expected")
            .join(format!("{out_name}.npy"))
            .display()
            .to_string(),
    );
    netc_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let model = dir.join("model.onnx");
    let out = netc_ok(&[
        "export",
        &file,
        "--model",
        &g.name,
        "--weights",
        weights,
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(
        out.starts_with(&format!("wrote model `{}`", g.name)),
        "{out}"
    );
    // The weights are read from the model from now on.
    std::fs::remove_file(weights).unwrap();
}

/// The PYTHONPATH under which `python3` imports onnx, onnxruntime and
/// numpy (`NETC_ONNX_PYTHONPATH`, `.ci/run`'s cache, or the plain
/// environment), or None.
fn onnx_python() -> Option<String> {
    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var("NETC_ONNX_PYTHONPATH") {
        candidates.push(p);
    }
    if let Ok(home) = std::env::var("HOME") {
        candidates.push(format!("{home}/.cache/netc-onnx"));
    }
    candidates.push(std::env::var("PYTHONPATH").unwrap_or_default());
    candidates.into_iter().find(|p| {
        Command::new("python3")
            .args(["-c", "import onnx, onnxruntime, numpy"])
            .env("PYTHONPATH", p)
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// A seed per model name (FNV-1a), so each case's weights and inputs do
/// not depend on which thread writes it or in which order.
fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[test]
fn every_example_exports_and_onnxruntime_matches_netc_run() {
    // NETC_ONNX_CASES=DIR keeps the cases there (to rerun check.py by hand).
    let temp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("NETC_ONNX_CASES").map_or(temp.path().to_path_buf(), PathBuf::from);
    let mut files = net_files("examples");
    files.push(root().join(LAYERS));
    let models: Vec<(PathBuf, Graph)> = files
        .into_iter()
        .flat_map(|f| {
            let checked = check_ok(&std::fs::read_to_string(&f).unwrap());
            checked.graphs.into_iter().map(move |g| (f.clone(), g))
        })
        .collect();
    // Two workers (CI has two cores): the ImageNet models' weights are
    // mostly file traffic.
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((f, g)) = models.get(k) else { break };
                let started = std::time::Instant::now();
                let mut rng = Rng(seed_of(&g.name) | 1);
                write_case(f, g, &dir.join(&g.name), &mut rng);
                eprintln!(
                    "{}: exported in {:.1} s",
                    g.name,
                    started.elapsed().as_secs_f64()
                );
            });
        }
    });
    let cases: Vec<PathBuf> = models.iter().map(|(_, g)| dir.join(&g.name)).collect();
    // One model per example, and the three of LAYERS.
    assert_eq!(cases.len(), net_files("examples").len() + 3);
    let Some(pythonpath) = onnx_python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "onnx and onnxruntime not found in CI: .ci/run installs them and sets NETC_ONNX_PYTHONPATH"
        );
        eprintln!("skipped the onnxruntime comparison: python3 cannot import onnx, onnxruntime and numpy (set NETC_ONNX_PYTHONPATH or run .ci/run)");
        return;
    };
    let started = std::time::Instant::now();
    let out = Command::new("python3")
        .arg(root().join("tests/onnx/check.py"))
        .args(&cases)
        .env("PYTHONPATH", pythonpath)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "{stdout}{}check.py took {:.1} s",
        String::from_utf8_lossy(&out.stderr),
        started.elapsed().as_secs_f64()
    );
    assert!(out.status.success(), "check.py failed:\n{stdout}");
    assert!(
        stdout.contains(&format!("{} passed, 0 failed", cases.len())),
        "{stdout}"
    );
}

/// The exported graph of a small model, as text: the transposes around
/// the batchnorm and the LSTM, the LSTM's attributes and initializer
/// shapes, the dense layer as MatMul + Add.
#[test]
fn onnx_graph_of_japanese_vowels() {
    let src = std::fs::read_to_string(root().join("examples/japanese_vowels.net")).unwrap();
    let checked = check_ok(&src);
    let g = &checked.graphs[0];
    let w = init_weights(g, 0).unwrap();
    let m = netc_runtime::onnx::export(g, &w).unwrap();
    insta::assert_snapshot!(netc_runtime::onnx::text::model_text(&m));
}

/// A variable-length model's time axis is symbolic in the ONNX inputs
/// and in the outputs that carry it.
#[test]
fn variable_length_inputs_have_a_symbolic_time_axis() {
    let src = "model tagger {\n  input words: tokens[*]\n  words -> embedding(50, 8) as emb\n    -> gru(4, return_sequences: true) as rec -> dense(3) as tag -> softmax -> tags\n  output tags\n}\n";
    let checked = check_ok(src);
    let g = &checked.graphs[0];
    let w = init_weights(g, 0).unwrap();
    let text = netc_runtime::onnx::text::model_text(&netc_runtime::onnx::export(g, &w).unwrap());
    assert!(text.contains("input words: int64[N, T]"), "{text}");
    assert!(text.contains("output tags: float[N, T, 3]"), "{text}");
}

/// Weights that do not fit the model are an error naming the tensor, and
/// the CLI prints it without a panic.
#[test]
fn export_with_wrong_weights_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    let w = w.to_str().unwrap();
    netc_ok(&["init", "examples/course_lstm.net", "-o", w]);
    let out = dir.path().join("m.onnx");
    let (code, _, err) = netc(&[
        "export",
        "examples/gru_classifier.net",
        "--weights",
        w,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("gru1.weight"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists());
}

/// `netc export` takes a run directory of `netc train` in place of the
/// `.net` file and weights, as `eval` does.
#[test]
fn export_reads_a_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let net = "model img {\n  input x: [2, 2, 1]\n  x -> flatten -> dense(2) as out -> softmax -> probs\n  output probs\n}\n\ntrain img {\n  optimizer: adam(lr: 0.05)\n  batch: 8\n  epochs: 1\n  data: \"idx\"\n}\n";
    std::fs::write(dir.path().join("img.net"), net).unwrap();
    idx_dir(dir.path(), 16);
    let (code, out, err) = netc_in(dir.path(), &["train", "img.net", "--threads", "1"]);
    assert_eq!(code, 0, "{err}");
    let run = out
        .lines()
        .find_map(|l| l.strip_prefix("saved: "))
        .unwrap_or_else(|| panic!("no `saved:` line in\n{out}"));
    let (code, out, err) = netc_in(dir.path(), &["export", run, "-o", "img.onnx"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "wrote model `img` to img.onnx (ONNX opset 17: 5 nodes, 2 initializers)\n"
    );
    let bytes = std::fs::read(dir.path().join("img.onnx")).unwrap();
    assert!(bytes.len() > 2 * 2 * 4, "{} bytes", bytes.len());
}

/// A graph instantiated at a length (its recurrent layers read a mask) is
/// not what export takes: a typed error naming the layer and the reason.
#[test]
fn an_instantiated_graph_is_an_error_naming_the_layer() {
    let src = std::fs::read_to_string(root().join("examples/japanese_vowels_masked.net")).unwrap();
    let checked = check_ok(&src);
    let g = &checked.graphs[0];
    let w = init_weights(g, 0).unwrap();
    let fixed = netc_compiler::masking::instantiate(g, 5).unwrap();
    let err = netc_runtime::onnx::export(&fixed, &w).unwrap_err();
    assert!(
        matches!(
            &err,
            netc_runtime::onnx::ExportError::Unsupported { layer, op: "lstm", .. } if layer == "lstm1.forward"
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "model `japanese_vowels_masked`: layer `lstm1.forward` (lstm) cannot be exported to ONNX: \
         it reads a mask; export the checked model, whose time axis is `T` with every step real"
    );
}
