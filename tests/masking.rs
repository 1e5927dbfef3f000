//! Variable-length sequences (`[*, F]`, `tokens[*]`) and their masks:
//! the symbolic shape check (E0213, E0214), `masking::instantiate`, and
//! the acceptance property — a sequence's outputs and gradients are the
//! same alone and inside a padded batch, whatever the padding holds —
//! for every recurrent cell, bidirectional and stacked layers, per-step
//! outputs and the masked global poolings; hand-computed values of a
//! masked RNN and poolings; and the interpreter against the CPU backend
//! and the GPU launch geometry on masked forward and training programs.
//! (Gradients against finite differences: compiler/tests/gradcheck.rs.)

mod common;
use common::*;

use netc_compiler::kernel::interp;
use netc_compiler::kernel::ir::{BufKind, Program};
use netc_compiler::masking::{instantiate, mask_name};
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};
use netc_compiler::train::TrainConfig;
use netc_compiler::Graph;
use std::collections::HashMap;

fn diagnostics(src: &str) -> Vec<netc_lang::Diagnostic> {
    netc_compiler::check(&netc_lang::parse(src).unwrap()).diagnostics
}

/// A deterministic value for element `i` of the buffer called `name`
/// (parameters get the same values in programs of any length).
fn value(name: &str, i: usize) -> f32 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes().chain(i.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    ((h >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

/// Runs `p` in the interpreter with parameters from [`value`], the
/// `hyper` input at lr 0 and the given inputs; returns every buffer.
fn run(p: &Program, inputs: &HashMap<String, Vec<f32>>) -> Vec<Vec<f32>> {
    let mut bufs: Vec<Vec<f32>> = p
        .buffers
        .iter()
        .map(|b| match &b.kind {
            BufKind::Param(name) => (0..b.len).map(|i| value(name, i)).collect(),
            BufKind::Input(name) if name == "hyper" => {
                let mut v = vec![1.0; b.len];
                v[0] = 0.0;
                v
            }
            BufKind::Input(name) => {
                let v = inputs
                    .get(name)
                    .unwrap_or_else(|| panic!("no values for input `{name}`"));
                assert_eq!(v.len(), b.len, "input `{name}`");
                v.clone()
            }
            _ => vec![0.0; b.len],
        })
        .collect();
    interp::run_program(p, &mut bufs).unwrap();
    bufs
}

/// Targets of a model with per-step outputs: one class of `k` per input
/// step (−1 at padding), or `t` classes of `k` per example (an output of
/// its own `t` steps, e.g. a decoder's).
#[derive(Clone, Copy)]
enum Targets {
    PerStep(usize),
    Fixed(usize, usize),
}

/// One example: `len` real steps of `f` features (or token ids), then
/// padding up to `steps` holding garbage (which the mask must hide).
struct Example {
    real: Vec<f32>,
    len: usize,
}

impl Example {
    fn padded(&self, steps: usize, f: usize, garbage: f32) -> Vec<f32> {
        let mut v = self.real.clone();
        v.resize(steps * f, garbage);
        v
    }
    fn mask(&self, steps: usize) -> Vec<f32> {
        (0..steps)
            .map(|t| if t < self.len { 1.0 } else { 0.0 })
            .collect()
    }
}

struct Model {
    g: Graph,
    cfg: TrainConfig,
    input: String,
    /// Features per step (1 for token ids).
    f: usize,
}

fn model(src: &str) -> Model {
    let checked = check_ok(src);
    let g = checked.graphs[0].clone();
    let cfg = checked.trains[0].clone();
    let input = g.node(g.inputs[0]).name.clone();
    let f = g
        .node(g.inputs[0])
        .shape
        .as_ref()
        .unwrap()
        .0
        .get(1)
        .copied()
        .unwrap_or(1);
    Model { g, cfg, input, f }
}

/// The forward output and the named parameter gradients of `examples`
/// run as one batch padded to `steps`, with per-step targets `targets`
/// (`None` for one label per example, the example's index mod 2).
fn outputs_and_grads(
    m: &Model,
    level: OptLevel,
    steps: usize,
    examples: &[&Example],
    per_step_classes: Option<Targets>,
    garbage: f32,
) -> (Vec<f32>, HashMap<String, Vec<f32>>) {
    let g = instantiate(&m.g, steps).unwrap();
    let c = Compilation::new(&g, CompileOptions::at(level));
    let n = examples.len();
    let mut inputs = HashMap::new();
    inputs.insert(
        m.input.clone(),
        examples
            .iter()
            .flat_map(|e| e.padded(steps, m.f, garbage))
            .collect(),
    );
    inputs.insert(
        mask_name(&m.input),
        examples.iter().flat_map(|e| e.mask(steps)).collect(),
    );
    let target: Vec<f32> = match per_step_classes {
        None => (0..n).map(|i| (i % 2) as f32).collect(),
        Some(Targets::PerStep(k)) => examples
            .iter()
            .flat_map(|e| {
                (0..steps).map(move |t| {
                    if t < e.len {
                        ((t * 7 + e.len) % k) as f32
                    } else {
                        -1.0
                    }
                })
            })
            .collect(),
        Some(Targets::Fixed(k, t)) => examples
            .iter()
            .flat_map(|e| (0..t).map(move |i| ((i * 5 + e.len) % k) as f32))
            .collect(),
    };
    inputs.insert("target".to_string(), target);
    let p = c.program(n).unwrap();
    let out = run(&p, &inputs)[p.outputs[0].buf].clone();
    let tp = c.training_program(&m.cfg, n).unwrap().program;
    let bufs = run(&tp, &inputs);
    let grads = tp
        .outputs
        .iter()
        .filter(|o| o.name.starts_with("grad:"))
        .map(|o| (o.name.clone(), bufs[o.buf].clone()))
        .collect();
    (out, grads)
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 + 1e-4 * b.abs(),
            "{what}[{i}]: {a} vs {b}"
        );
    }
}

fn example(len: usize, f: usize, seed: usize, vocab: Option<usize>) -> Example {
    let real = (0..len * f)
        .map(|i| match vocab {
            Some(v) => ((i * 5 + seed * 3 + 1) % v) as f32,
            None => value("example", seed * 1000 + i) * 2.0,
        })
        .collect();
    Example { real, len }
}

/// The acceptance property for one model: example `a` alone (padded to
/// its own length) and inside a batch padded to 9 steps with another
/// example, forward; and alone vs alone-with-padding, gradients (the
/// batch's loss is a mean, so its gradients are another number).
fn same_alone_and_padded(src: &str, per_step_classes: Option<Targets>, vocab: Option<usize>) {
    let m = model(src);
    let a = example(4, m.f, 1, vocab);
    let b = example(9, m.f, 2, vocab);
    for level in [OptLevel::O0, OptLevel::O1] {
        let garbage = if vocab.is_some() { 2.0 } else { 7.5 };
        let (alone, grads_alone) =
            outputs_and_grads(&m, level, 4, &[&a], per_step_classes, garbage);
        let (batch, _) = outputs_and_grads(&m, level, 9, &[&a, &b], per_step_classes, garbage);
        let (_, grads_padded) = outputs_and_grads(&m, level, 9, &[&a], per_step_classes, garbage);
        let what = format!("{level:?}");
        match per_step_classes {
            // Per-step outputs: the real steps agree, padded steps are
            // whatever the last layer makes of zeros.
            Some(Targets::PerStep(k)) => {
                assert_close(&format!("{what}: output"), &batch[..4 * k], &alone)
            }
            _ => assert_close(&format!("{what}: output"), &batch[..alone.len()], &alone),
        }
        assert!(!grads_alone.is_empty());
        for (name, g) in &grads_alone {
            assert!(g.iter().any(|v| *v != 0.0), "{what}: {name} is all zeros");
            assert_close(&format!("{what}: {name}"), &grads_padded[name], g);
        }
    }
}

const TRAIN: &str =
    "train m {\n  loss: cross_entropy\n  optimizer: sgd(lr: 0.1)\n  batch: 2\n  epochs: 1\n}\n";

#[test]
fn every_cell_keeps_its_state_through_padding() {
    for cell in ["rnn", "lstm", "gru"] {
        let src = format!(
            "model m {{\n  input x: [*, 3]\n  x -> {cell}(5) as r -> dense(2) as out -> softmax -> probs\n  output probs\n}}\n{TRAIN}"
        );
        same_alone_and_padded(&src, None, None);
    }
}

#[test]
fn bidirectional_and_stacked_layers_reverse_within_each_length() {
    let src = format!(
        "model m {{
  input x: [*, 3]
  x -> dense(4) as d -> tanh
    -> lstm(5, return_sequences: true, bidirectional: true) as bi
    -> gru(4, layers: 2, bidirectional: true, merge: sum) as top
    -> dense(2) as out -> softmax -> probs
  output probs
}}
{TRAIN}"
    );
    same_alone_and_padded(&src, None, None);
}

#[test]
fn masked_global_poolings_skip_padding() {
    for pool in ["global_maxpool1d", "global_avgpool1d"] {
        let src = format!(
            "model m {{
  input x: [*, 3]
  x -> rnn(5, return_sequences: true) as r -> {pool} as p -> dense(2) as out -> softmax -> probs
  output probs
}}
{TRAIN}"
        );
        same_alone_and_padded(&src, None, None);
    }
}

#[test]
fn per_step_outputs_of_a_tagger_over_tokens() {
    let src = format!(
        "model m {{
  input words: tokens[*]
  words -> embedding(11, 4) as emb
        -> gru(5, return_sequences: true, bidirectional: true) as bi
        -> dense(3) as out -> softmax -> tags
  output tags
}}
{TRAIN}"
    );
    same_alone_and_padded(&src, Some(Targets::PerStep(3)), Some(11));
}

/// An encoder over questions of any length hands its state (after the
/// question's own last token) to a decoder of fixed length.
#[test]
fn a_sequence_to_sequence_encoder_over_any_length() {
    let src = format!(
        "model m {{
  input q: tokens[*]
  state = q -> embedding(12, 4) as emb -> lstm(6, return_state: true) as enc
  state -> repeat(3) -> lstm(6, return_sequences: true, initial_state: state) as dec
        -> dense(12) as out -> softmax -> answer
  output answer
}}
{TRAIN}"
    );
    same_alone_and_padded(&src, Some(Targets::Fixed(12, 3)), Some(12));
}

/// A masked RNN with one unit, `h_t = tanh(w·x_t + u·h_{t−1} + b)`, by
/// hand: w = 0.5, u = −1, b = 0.25, x = [1, 2, (pad 9)]. Then the
/// masked poolings of its outputs.
#[test]
fn golden_masked_rnn_and_poolings() {
    let src = "model m {
  input x: [*, 1]
  h = x -> rnn(1, return_sequences: true) as r
  h -> global_maxpool1d as mx -> m
  h -> global_avgpool1d as av -> a
  output h, m, a
}
";
    let g = check_ok(src).graphs[0].clone();
    let g = instantiate(&g, 3).unwrap();
    let p = Compilation::new(&g, CompileOptions::at(OptLevel::O0))
        .program(1)
        .unwrap();
    let mut bufs: Vec<Vec<f32>> = p
        .buffers
        .iter()
        .map(|b| match &b.kind {
            BufKind::Param(n) if n == "r.weight" => vec![0.5],
            BufKind::Param(n) if n == "r.recurrent_weight" => vec![-1.0],
            BufKind::Param(n) if n == "r.bias" => vec![0.25],
            BufKind::Input(n) if n == "x" => vec![1.0, 2.0, 9.0],
            BufKind::Input(n) if n == "x.mask" => vec![1.0, 1.0, 0.0],
            _ => vec![0.0; b.len],
        })
        .collect();
    interp::run_program(&p, &mut bufs).unwrap();
    let h0 = (0.5f32 * 1.0 + 0.25).tanh(); // 0.635149
    let h1 = (0.5f32 * 2.0 - h0 + 0.25).tanh(); // 0.558...
    let out = |i: usize| bufs[p.outputs[i].buf].clone();
    // The padded step outputs zero; the state it keeps is not visible
    // in a sequence output, only in the poolings, which skip it.
    assert_close("r", &out(0), &[h0, h1, 0.0]);
    assert_close("max", &out(1), &[h0.max(h1)]);
    assert_close("avg", &out(2), &[(h0 + h1) / 2.0]);
    // An example with no real step pools to zero.
    let x = p.inputs.iter().find(|i| i.name == "x.mask").unwrap().buf;
    bufs[x] = vec![0.0; 3];
    interp::run_program(&p, &mut bufs).unwrap();
    assert_close("empty max", &bufs[p.outputs[1].buf], &[0.0]);
    assert_close("empty avg", &bufs[p.outputs[2].buf], &[0.0]);
}

#[test]
fn backends_agree_on_masked_programs() {
    let src = format!(
        "model m {{
  input x: [*, 3]
  x -> lstm(4, return_sequences: true, bidirectional: true) as bi
    -> global_maxpool1d as p
    -> dense(2) as out -> softmax -> probs
  output probs
}}
{TRAIN}"
    );
    let m = model(&src);
    let g = instantiate(&m.g, 6).unwrap();
    for (label, p) in forward_and_training_programs(&g, &m.cfg) {
        let mut init = program_buffers(&p, 11);
        // Masks of lengths 6, 3 and 1.
        let mask = p.inputs.iter().find(|i| i.name == "x.mask").unwrap().buf;
        init[mask] = [6, 3, 1]
            .iter()
            .flat_map(|&l| (0..6).map(move |t| if t < l { 1.0 } else { 0.0 }))
            .collect();
        if let Some(t) = p.inputs.iter().find(|i| i.name == "target") {
            init[t.buf] = vec![0.0, 1.0, 1.0];
        }
        backends_agree(&label, &p, &init);
    }
}

#[test]
fn the_placeholder_length_is_checked_and_instantiated() {
    let m = model(&format!(
        "model m {{\n  input x: [*, 3]\n  x -> gru(5) as r -> dense(2) as out -> softmax -> probs\n  output probs\n}}\n{TRAIN}"
    ));
    assert!(netc_compiler::masking::is_variable(&m.g));
    let g = instantiate(&m.g, 12).unwrap();
    let x = g.node(g.inputs[0]);
    assert_eq!(x.shape.as_ref().unwrap().0, vec![12, 3]);
    let mask = g.node(g.inputs[1]);
    assert_eq!(mask.name, "x.mask");
    assert_eq!(mask.shape.as_ref().unwrap().0, vec![12]);
    assert!(instantiate(&m.g, 0).is_err());
}

#[test]
fn layers_that_need_a_fixed_length_say_so() {
    for (layer, why) in [
        ("flatten", "its output size would depend on the length"),
        ("conv1d(4, 3)", "its windows would read the padding"),
        ("maxpool1d(2)", "its windows would read the padding"),
        (
            "batchnorm",
            "its batch statistics would include the padding",
        ),
    ] {
        let src = format!(
            "model m {{\n  input x: [*, 3]\n  x -> {layer} as l -> dense(2) -> y\n  output y\n}}\n"
        );
        let d = diagnostics(&src);
        let e = d
            .iter()
            .find(|d| d.code == "E0213")
            .unwrap_or_else(|| panic!("{layer}: no E0213 in {d:#?}"));
        assert!(e.message.contains("`l`"), "{}", e.message);
        assert!(e.labels[0].message.contains(why), "{layer}: {:?}", e.labels);
        // At the layer's span.
        let at = &src[e.span().start..e.span().end];
        assert!(at.contains(layer.split('(').next().unwrap()), "{at}");
    }
    // `*` only on the time axis.
    for shape in ["[3, *]", "[*]", "[*, 3, 3]"] {
        let d = diagnostics(&format!(
            "model m {{\n  input x: {shape}\n  x -> dense(2) -> y\n  output y\n}}\n"
        ));
        assert!(d.iter().any(|d| d.code == "E0120"), "{shape}: {d:#?}");
    }
    // Two sequences of independent lengths cannot be added step by step.
    let d = diagnostics(
        "model m {\n  input a: [*, 3]\n  input b: [*, 3]\n  s = add(a, b)\n  s -> lstm(2) -> y\n  output y\n}\n",
    );
    assert!(d.iter().any(|d| d.code == "E0214"), "{d:#?}");
}

/// Through the CLI on real data (JapaneseVowels, 7–29 frames): a
/// variable-length LSTM trains on sequences padded to the longest,
/// `eval` reproduces the accuracy `train` printed, and `run` on one
/// utterance alone (its own length, no padding) gives the probabilities
/// `predict` gave it inside the padded test set.
#[test]
fn a_variable_length_model_trains_evaluates_and_runs_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = root().join("data/japanese_vowels/JapaneseVowels_TRAIN.ts.gz");
    let net = dir.path().join("jv.net");
    std::fs::write(
        &net,
        format!(
            "model jv {{\n  input frames: [*, 12]\n  frames -> lstm(8) as l -> dense(9) as out -> softmax -> probs\n  output probs\n}}\n\
             train jv {{\n  loss: cross_entropy\n  optimizer: adam(lr: 0.01)\n  batch: 16\n  epochs: 2\n  data: \"{}\"\n}}\n",
            data.display()
        ),
    )
    .unwrap();
    let w = dir.path().join("w.safetensors");
    let (s, out, err) = netc(&["train", &rel(&net), "--threads", "1", "-o", &rel(&w)]);
    assert_eq!(s, 0, "{out}{err}");
    let acc = |text: &str| {
        let line = text
            .lines()
            .find(|l| l.starts_with("test:"))
            .unwrap_or_else(|| panic!("{text}"));
        line.split("accuracy")
            .nth(1)
            .unwrap()
            .split('%')
            .next()
            .unwrap()
            .trim()
            .to_string()
    };
    let trained = acc(&format!("{out}{err}"));
    let test = root().join("data/japanese_vowels/JapaneseVowels_TEST.ts.gz");
    let (s, out, err) = netc(&[
        "eval",
        &rel(&net),
        "--weights",
        &rel(&w),
        "--data",
        &rel(&test),
        "--threads",
        "1",
    ]);
    assert_eq!(s, 0, "{out}{err}");
    let evaluated = format!("{out}{err}");
    assert!(
        evaluated.contains(&format!("accuracy {trained}%")),
        "train printed {trained}%; eval: {evaluated}"
    );
    // Predictions for the padded test set, then utterances run alone.
    let preds = dir.path().join("p.npy");
    let (s, out, err) = netc(&[
        "predict",
        &rel(&net),
        "--weights",
        &rel(&w),
        "--input",
        &rel(&test),
        "-o",
        &rel(&preds),
    ]);
    assert_eq!(s, 0, "{out}{err}");
    let p = netc_runtime::read_npy(&preds).unwrap();
    let g = check_ok(&std::fs::read_to_string(&net).unwrap()).graphs[0].clone();
    let (set, _) = netc_runtime::data::load_for_model(&g, test.to_str().unwrap(), None).unwrap();
    let lengths = set.lengths.clone().unwrap();
    let steps = set.x.shape[1];
    assert_eq!(steps, 29, "padded to the longest utterance");
    for i in [0, 100, 369] {
        let l = lengths[i];
        assert!(l < steps, "example {i} is padded");
        let x = set.x.data[i * steps * 12..(i * steps + l) * 12].to_vec();
        let one = dir.path().join(format!("x{i}.npy"));
        netc_runtime::write_npy(&one, &netc_runtime::Tensor::new(vec![1, l, 12], x).unwrap())
            .unwrap();
        let o = dir.path().join(format!("o{i}.npy"));
        let (s, out, err) = netc(&[
            "run",
            &rel(&net),
            "--weights",
            &rel(&w),
            "--input",
            &rel(&one),
            "-o",
            &rel(&o),
        ]);
        assert_eq!(s, 0, "{out}{err}");
        let alone = netc_runtime::read_npy(&o).unwrap();
        assert_close(
            &format!("utterance {i} ({l} frames)"),
            &alone.data,
            &p.data[i * 9..(i + 1) * 9],
        );
    }
}
