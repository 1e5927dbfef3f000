//! Criterion bench of one complete training step — forward, loss,
//! gradients and the parameter update, all generated kernels — exactly as
//! `netc train` runs it: the course CNN (batch 64 of 28×28×1) and the course
//! LSTM (batch 32, 10 steps × 1 feature, 128 units); and the text
//! examples `spam_classifier` and `pos_tagger` at their batch of 64.
//!
//! The step uses plain SGD (lr 0.01), as the JAX reference
//! (`reference/jax/bench_jax.py`, cases `a_cnn_train_step_*` and
//! `b_lstm128_train_step_b32_t10`) does, so the two times compare; the
//! `adam` variant shows what the file's own optimizer adds.
//!
//! `cargo bench --bench train_step` (add `-- cnn` etc. to filter).
//! `NETC_BENCH_THREADS=n` sets the worker threads (default: all cores);
//! `NETC_BENCH_KERNELS=1` also prints the slowest kernels of each step
//! (`=all`: every kernel). `NETC_KERNELS=cranelift` builds the
//! contractions with Cranelift instead of the native AVX2 kernels (the
//! bench names then end in `_cranelift`), for before/after comparisons.
//!
//! A model whose gradients netc cannot take prints why it is skipped
//! instead of failing the bench.

use criterion::{criterion_group, criterion_main, Criterion};
use netc_compiler::codegen::cpu::KernelPath;
use netc_compiler::kernel::optim::slot;
use netc_compiler::pipeline::{Compilation, CompileOptions};
use netc_compiler::train::{Optimizer, TrainConfig};
use netc_runtime::{init_weights, Executable, Tensor};
use std::time::Duration;

/// The contraction code generator: `NETC_KERNELS=cranelift` or `avx2`,
/// else auto.
fn kernel_path() -> KernelPath {
    match std::env::var("NETC_KERNELS").as_deref() {
        Ok("cranelift") => KernelPath::Cranelift,
        Ok("avx2") => KernelPath::Avx2,
        _ => KernelPath::Auto,
    }
}

/// Worker threads: `NETC_BENCH_THREADS`, else all cores.
fn threads() -> usize {
    std::env::var("NETC_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn filled(n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 * scale)
        .collect()
}

/// The example's graph and train section.
fn example(file: &str) -> (netc_compiler::Graph, TrainConfig) {
    let path = format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).expect("example exists");
    let ast = netc_lang::parse(&src).expect("example parses");
    let checked = netc_compiler::check(&ast);
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    let g = checked.graphs.first().expect("one model").clone();
    let cfg = checked.train_for(&g.name).expect("train section").clone();
    (g, cfg)
}

/// A compiled training step with inputs, targets and hyperparameters set,
/// or why the model cannot be trained yet.
fn step(
    file: &str,
    batch: usize,
    optimizer: Option<Optimizer>,
    classes: usize,
) -> Result<Executable, String> {
    let (g, mut cfg) = example(file);
    if let Some(o) = optimizer {
        cfg.optimizer = o;
    }
    // The pipeline `netc train` runs: unrolling, autodiff, then the optimizer.
    let tp = Compilation::new(&g, CompileOptions::default())
        .training_program(&cfg, batch)
        .map_err(|e| e.to_string())?;
    let mut exe = Executable::compile_with(tp.program.clone(), threads(), kernel_path())
        .map_err(|e| e.to_string())?;
    exe.set_weights(&init_weights(&g, 0).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let mut hyper = vec![0f32; slot::COUNT];
    hyper[slot::LR] = 0.01;
    // Adam's bias corrections at a late step (≈ 1), as in a long run.
    hyper[slot::BC1] = 1.0;
    hyper[slot::BC2] = 1.0;
    hyper[slot::CLIP] = 1.0;
    for b in tp.program.inputs.clone() {
        let n: usize = b.shape.iter().product();
        let data = match b.name.as_str() {
            "hyper" => hyper.clone(),
            // Class indices (cross-entropy) or 0/1 targets (binary).
            "target" => (0..n).map(|i| ((i * 3) % classes) as f32).collect(),
            // Token ids spread over the vocabulary (the gather and the
            // scatter-add touch as many rows as real text would).
            _ if b.vocab.is_some() => {
                let v = b.vocab.unwrap_or(1);
                (0..n).map(|i| ((i * 7919) % v) as f32).collect()
            }
            _ => filled(n, 1.0),
        };
        let t = Tensor::new(b.shape.clone(), data).map_err(|e| e.to_string())?;
        exe.set_input(&b.name, &t).map_err(|e| e.to_string())?;
    }
    Ok(exe)
}

/// The slowest kernels of `exe` over `iters` runs.
fn print_kernels(label: &str, exe: &mut Executable, iters: usize) {
    exe.timings.iter_mut().for_each(|t| *t = Duration::ZERO);
    for _ in 0..iters {
        exe.run().expect("step runs");
    }
    let total: Duration = exe.timings.iter().sum();
    let mut rows: Vec<(String, Duration)> = exe
        .program()
        .kernels
        .iter()
        .zip(&exe.timings)
        .map(|(k, t)| (k.name.clone(), *t))
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    eprintln!(
        "{label}: {} kernels, {:.3} ms per step; slowest:",
        rows.len(),
        total.as_secs_f64() * 1e3 / iters as f64
    );
    for (name, t) in rows.iter().take(
        if std::env::var("NETC_BENCH_KERNELS").is_ok_and(|v| v == "all") {
            usize::MAX
        } else {
            12
        },
    ) {
        eprintln!(
            "  {:>8.1} µs  {:>5.1}%  {name}",
            t.as_secs_f64() * 1e6 / iters as f64,
            100.0 * t.as_secs_f64() / total.as_secs_f64().max(1e-12)
        );
    }
}

fn bench_model(c: &mut Criterion, group: &str, file: &str, batch: usize, classes: usize) {
    let sgd = Optimizer::Sgd { lr: 0.01 };
    let mut g = c.benchmark_group(group);
    for (label, opt) in [("sgd", Some(sgd)), ("adam", None)] {
        let mut exe = match step(file, batch, opt, classes) {
            Ok(e) => e,
            Err(why) => {
                eprintln!("{group}: skipped, netc cannot train `{file}` yet: {why}");
                g.finish();
                return;
            }
        };
        if std::env::var("NETC_BENCH_KERNELS").is_ok() {
            print_kernels(&format!("{group}/{label}"), &mut exe, 20);
        }
        let path = match kernel_path() {
            KernelPath::Cranelift => "_cranelift",
            KernelPath::Avx2 => "_avx2",
            KernelPath::Auto => "",
        };
        g.bench_function(
            format!("batch{batch}_{label}_{}_threads{path}", threads()),
            |b| b.iter(|| exe.run().expect("step runs")),
        );
    }
    g.finish();
}

fn cnn(c: &mut Criterion) {
    bench_model(c, "course_cnn_train_step", "course_cnn.net", 64, 10);
}

fn lstm(c: &mut Criterion) {
    bench_model(c, "course_lstm_train_step", "course_lstm.net", 32, 2);
}

/// The text examples: 200 LSTM steps over embeddings (one label per
/// mail), and a bidirectional LSTM tagging 64 steps (a tag per step).
fn text(c: &mut Criterion) {
    bench_model(
        c,
        "spam_classifier_train_step",
        "spam_classifier.net",
        64,
        2,
    );
    bench_model(c, "pos_tagger_train_step", "pos_tagger.net", 64, 93);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = cnn, lstm, text
}
criterion_main!(benches);
