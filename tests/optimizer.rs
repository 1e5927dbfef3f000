//! The optimizer end to end: snapshots of every example's optimized
//! graph; `-O0` and optimized programs agree (compiled kernels, 1e-5
//! relative) on every example and on randomized models; the CLI flags
//! `-O0`, `--emit graph-opt`, `--explain` and `bench --compare-opt`.

mod common;
use common::*;
use netc_compiler::opt::{optimize, OptOptions};
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};
use netc_compiler::Graph;
use netc_runtime::{init_weights, Executable, Tensor};

/// Runs `model` compiled at `level` for `batch` with its initial weights
/// (seed 0) and deterministic inputs; returns every output.
fn outputs(model: &Graph, level: OptLevel, batch: usize) -> Vec<Tensor> {
    let w = init_weights(model, 0).expect("weights");
    let p = Compilation::new(model, CompileOptions::at(level))
        .program(batch)
        .expect("lowers");
    let inputs = p.inputs.clone();
    let mut exe = Executable::compile(p, 2).expect("compiles");
    exe.set_weights(&w).expect("weights fit");
    for (k, i) in inputs.iter().enumerate() {
        let n: usize = i.shape.iter().product();
        let data = (0..n)
            .map(|j| match i.vocab {
                // Token inputs take ids in the vocabulary.
                Some(v) => ((j * 7919 + k * 104729) % v) as f32,
                None => (((j * 7919 + k * 104729) % 2001) as f32 / 1000.0) - 1.0,
            })
            .collect();
        exe.set_input(&i.name, &Tensor::new(i.shape.clone(), data).unwrap())
            .expect("input fits");
    }
    exe.run().expect("runs");
    (0..exe.program().outputs.len())
        .map(|i| exe.output(i).unwrap())
        .collect()
}

/// Optimized and unoptimized outputs agree: `|a − b| ≤ 1e-5·max(|a|, |b|, m)`
/// with `m` the output's largest magnitude (batchnorm folding reorders
/// sums that cancel; every other rule is bit-exact).
fn agree(what: &str, model: &Graph, batch: usize) {
    let (_, r) = optimize(model, &OptOptions::default());
    assert_eq!(r.fallback, None, "{what}");
    let want = outputs(model, OptLevel::O0, batch);
    let got = outputs(model, OptLevel::O1, batch);
    assert_eq!(want.len(), got.len());
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w.shape, g.shape, "{what}");
        let m = w.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in g.data.iter().zip(&w.data).enumerate() {
            let tol = 1e-5 * a.abs().max(b.abs()).max(m);
            assert!(
                a.is_finite() && (a - b).abs() <= tol,
                "{what}: element {i}: optimized {a}, -O0 {b}"
            );
        }
    }
}

fn examples() -> Vec<(String, Graph)> {
    net_files("examples")
        .into_iter()
        .flat_map(|f| {
            let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
            let src = std::fs::read_to_string(&f).unwrap();
            check_ok(&src)
                .graphs
                .into_iter()
                .map(move |g| (stem.clone(), at_test_length(&g)))
        })
        .collect()
}

#[test]
fn optimized_graph_snapshots_of_every_example() {
    for (stem, g) in examples() {
        let (o, r) = optimize(&g, &OptOptions::default());
        assert_eq!(r.fallback, None, "{stem}");
        assert!(r.cost_after < r.cost_before, "{stem}: no improvement");
        insta::assert_snapshot!(
            format!("graph_opt_{stem}"),
            netc_compiler::graph_text::graph_text(&o)
        );
    }
}

#[test]
fn optimized_and_unoptimized_agree_on_every_example() {
    for (stem, g) in examples() {
        // The ImageNet models at batch 1 (a forward pass is GFLOPs).
        let big = matches!(stem.as_str(), "vgg16" | "alexnet");
        agree(&stem, &g, if big { 1 } else { 3 });
    }
}

/// A small deterministic generator of valid random models.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.next() as usize % xs.len()]
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.next() as usize % (hi - lo + 1)
    }
}

const ACTS: [&str; 5] = [
    "relu",
    "leaky_relu(alpha: 0.1)",
    "sigmoid",
    "tanh",
    "softmax",
];

/// An image model: convolutions with optional batchnorm, activations,
/// pooling and dropout, then flatten and a dense head.
fn random_cnn(r: &mut Rng) -> String {
    let (h, c) = (r.range(6, 12), r.range(1, 4));
    let mut s = format!("model m {{ input x: [{h}, {h}, {c}]\n  x");
    for i in 0..r.range(1, 3) {
        let f = r.range(2, 6);
        let bias = r.pick(&["true", "false"]);
        s += &format!(" -> conv2d({f}, 3, padding: same, bias: {bias}) as c{i}");
        if r.next() % 2 == 0 {
            s += &format!(" -> batchnorm as bn{i}");
        }
        s += &format!(" -> {}", r.pick(&ACTS[..4]));
        if r.next() % 3 == 0 {
            s += " -> dropout(0.25)";
        }
    }
    if r.next() % 2 == 0 {
        s += " -> maxpool2d(2)";
    }
    s += " -> flatten";
    if r.next() % 3 == 0 {
        s += " -> reshape([-1]) -> flatten";
    }
    for i in 0..r.range(1, 2) {
        s += &format!(" -> dense({}) as d{i}", r.range(2, 9));
        if r.next() % 3 == 0 {
            s += &format!(" -> batchnorm as dbn{i}");
        }
        s += &format!(" -> {}", r.pick(&ACTS));
    }
    s + " -> y\n  output y }"
}

/// A sequence model: stacked / bidirectional / reversed recurrent layers
/// and a dense head, sometimes a residual-style elementwise chain.
fn random_rnn(r: &mut Rng) -> String {
    let (t, f) = (r.range(2, 9), r.range(1, 5));
    let cell = r.pick(&["rnn", "lstm", "gru"]);
    let u = r.range(2, 7);
    let mut args = String::new();
    if r.next() % 2 == 0 {
        args += ", return_sequences: true";
    }
    if r.next() % 3 == 0 {
        args += &format!(
            ", bidirectional: true, merge: {}",
            r.pick(&["concat", "sum", "mul", "ave"])
        );
    }
    if r.next() % 3 == 0 {
        args += ", layers: 2";
    }
    if r.next() % 4 == 0 {
        args += ", bias: false";
    }
    let mut s = format!(
        "model m {{ input x: [{t}, {f}]\n  x -> {cell}({u}{args}) as r -> dropout(0.1) -> dense({}) as d -> {} -> y",
        r.range(1, 4),
        r.pick(&ACTS)
    );
    if r.next() % 2 == 0 {
        s += " y -> add(y) -> relu -> z output z }";
        // `y` feeds the add twice: a single-use chain with a repeated operand.
        return s.replace(" y -> add(y)", "\n  y -> add(y)");
    }
    s + "\n  output y }"
}

#[test]
fn optimized_and_unoptimized_agree_on_random_models() {
    let mut r = Rng(0x5eed);
    let mut fired = std::collections::BTreeSet::new();
    for case in 0..40 {
        let src = if case % 2 == 0 {
            random_cnn(&mut r)
        } else {
            random_rnn(&mut r)
        };
        let g = check_ok(&src).graphs.remove(0);
        agree(&format!("case {case}:\n{src}"), &g, 1 + case % 3);
        let (_, rep) = optimize(&g, &OptOptions::default());
        fired.extend(
            rep.fired
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(r, _)| r),
        );
    }
    // The random models exercise the rules.
    for rule in [
        "conv2d-relu",
        "conv2d-tanh",
        "dense-sigmoid",
        "conv2d-batchnorm-fold",
        "elementwise-chain",
        "dropout-inference",
        "flatten-reshape",
        "bptt-unroll-rnn",
        "bptt-unroll-lstm",
        "bptt-unroll-gru",
    ] {
        assert!(fired.contains(rule), "`{rule}` never fired: {fired:?}");
    }
}

#[test]
fn cli_explain_shows_fusion_and_unrolling() {
    let (code, out, err) = netc(&["compile", "examples/course_cnn.net", "--explain"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("conv2d-relu  1"), "{out}");
    assert!(out.contains("dense-relu   1"), "{out}");
    assert!(out.contains("stopped: saturated"), "{out}");
    assert!(out.contains("graph nodes: 15 -> 13"), "{out}");
    assert!(
        out.contains("runner limits: 30 iterations, 100000 e-nodes, 1.0 s"),
        "{out}"
    );
    let (code, out, err) = netc(&["compile", "examples/course_lstm.net", "--explain"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("bptt-unroll-lstm  1"), "{out}");
    assert!(out.contains("dense-sigmoid     1"), "{out}");
    assert!(
        !out.contains("kernel "),
        "--explain alone emits no IR: {out}"
    );
}

#[test]
fn cli_o0_skips_the_optimizer() {
    let (code, out, _) = netc(&["-O0", "compile", "examples/course_cnn.net", "--explain"]);
    assert_eq!(code, 0);
    assert!(out.contains("not run (-O0)"), "{out}");
    // The flag goes anywhere, and graph-opt is then the graph as written.
    let (_, opt0, _) = netc(&[
        "compile",
        "examples/course_cnn.net",
        "-O0",
        "--emit",
        "graph-opt",
    ]);
    let (_, graph, _) = netc(&["compile", "examples/course_cnn.net", "--emit", "graph"]);
    assert_eq!(opt0, graph);
    let (_, opt1, _) = netc(&["compile", "examples/course_cnn.net", "--emit", "graph-opt"]);
    assert_ne!(opt1, graph);
    assert!(opt1.contains("activation: relu"), "{opt1}");
    // Kernels: the fused program has no separate relu kernels.
    let (_, k0, _) = netc(&["compile", "examples/course_cnn.net", "-O0"]);
    let (_, k1, _) = netc(&["compile", "examples/course_cnn.net"]);
    assert!(k0.contains("relu_1"), "{k0}");
    assert!(!k1.contains("relu_1"), "{k1}");
    let (code, _, err) = netc(&["-O2", "compile", "examples/course_cnn.net"]);
    assert_ne!(code, 0);
    assert!(err.contains("opt-level"), "{err}");
}

#[test]
fn cli_run_agrees_with_and_without_the_optimizer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let w = dir.join("w.safetensors");
    let x = dir.join("x.npy");
    let (code, _, err) = netc(&[
        "init",
        "examples/gru_classifier.net",
        "-o",
        w.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let data: Vec<f32> = (0..2 * 50 * 8)
        .map(|i| ((i % 17) as f32 - 8.0) / 8.0)
        .collect();
    netc_runtime::write_npy(&x, &Tensor::new(vec![2, 50, 8], data).unwrap()).unwrap();
    let mut outs = Vec::new();
    for level in ["-O0", "-O1"] {
        let y = dir.join(format!("y{level}.npy"));
        let (code, _, err) = netc(&[
            level,
            "run",
            "examples/gru_classifier.net",
            "--weights",
            w.to_str().unwrap(),
            "--input",
            x.to_str().unwrap(),
            "-o",
            y.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        outs.push(netc_runtime::read_npy(&y).unwrap());
    }
    assert_eq!(outs[0].shape, outs[1].shape);
    for (a, b) in outs[0].data.iter().zip(&outs[1].data) {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1e-3), "{a} vs {b}");
    }
}

#[test]
fn cli_bench_compare_opt_prints_both_versions_and_the_ratio() {
    let (code, out, err) = netc(&[
        "bench",
        "examples/course_cnn.net",
        "--compare-opt",
        "--iters",
        "2",
        "--threads",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    for needle in [
        "unoptimized (-O0): 7 kernels",
        "optimized: 5 kernels",
        "relu_1",
        "kernel in both",
        "x faster optimized (7 -> 5 kernels)",
    ] {
        assert!(out.contains(needle), "missing `{needle}`:\n{out}");
    }
}

/// `netc bench` measures both FMA ceilings and rates kernels against the
/// widest; `--json` writes a line per kernel and a summary line.
#[test]
fn cli_bench_reports_both_ceilings_and_json() {
    let args = [
        "bench",
        "examples/course_cnn.net",
        "--iters",
        "2",
        "--threads",
        "1",
    ];
    let (code, out, err) = netc(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("FMA ceilings measured now: 128-bit"), "{out}");
    assert!(
        out.contains("kernels are rated against the widest"),
        "{out}"
    );
    assert!(out.contains("of widest"), "{out}");
    // Loops are rated by bandwidth against the triad measured beside.
    assert!(out.contains("; memory (triad) "), "{out}");
    assert!(out.contains("of triad"), "{out}");
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let (code, out, err) = netc(&json_args);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let (summary, kernels) = rows.split_last().unwrap();
    assert_eq!(summary["summary"], true);
    assert_eq!(summary["kernels"].as_u64().unwrap() as usize, kernels.len());
    assert_eq!(kernels[0]["kernel"], "conv1");
    assert!(summary["ceiling_128_gflops"].as_f64().unwrap() > 0.0);
    let widest = summary["widest_bits"].as_u64().unwrap();
    assert!([128, 256, 512].contains(&widest), "{widest}");
    for wide in ["ceiling_256_gflops", "ceiling_512_gflops"] {
        if let Some(g) = summary[wide].as_f64() {
            assert!(g > 0.0, "{wide}");
        }
    }
    // A contraction's rate over the widest ceiling is its `of_widest`.
    let c = kernels.iter().find(|k| k["kind"] == "contraction").unwrap();
    assert!(c["of_widest"].as_f64().unwrap() > 0.0);
    // A loop's bandwidth over the triad is its `of_triad`.
    assert!(summary["triad_gbps"].as_f64().unwrap() > 0.0);
    let l = kernels.iter().find(|k| k["kind"] == "loop").unwrap();
    assert!(l["gbps"].as_f64().unwrap() > 0.0 && l["of_triad"].as_f64().unwrap() > 0.0);
    // `--train` times the train section's step: gradients and updates.
    let (code, out, err) = netc(&[
        "bench",
        "examples/course_cnn.net",
        "--train",
        "--batch",
        "4",
        "--iters",
        "1",
        "--threads",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("per training step"), "{out}");
    assert!(
        out.contains("grad:conv1.weight ") && out.contains("update:fc1.weight "),
        "{out}"
    );
    // A model without a train section has no step to time.
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("m.net");
    std::fs::write(
        &net,
        "model m { input x: [4]  x -> dense(2) -> y  output y }",
    )
    .unwrap();
    let (code, _, err) = netc(&["bench", net.to_str().unwrap(), "--train"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--train: model `m` has no train section"),
        "{err}"
    );
}
