//! Criterion benches of the CPU backend, all reported as FLOP/s so they
//! read as ratios of the `fma_ceiling` bench measured in the same run:
//! conv2d 3×3 64→64 on 56×56 (batch 1 and 8), dense 1024×1024 (batch 64),
//! each on one and two threads, and the course CNN and LSTM forward passes.
//!
//! `cargo bench --bench kernels` (add `-- conv` etc. to filter).
//! Contractions run the native AVX2 kernels where the CPU has them;
//! `NETC_KERNELS=cranelift` times Cranelift's instead (compare against the
//! 256-bit and 128-bit ceilings `netc bench` prints, respectively).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use netc_compiler::codegen::cpu::ceiling::FmaCeiling;
use netc_compiler::codegen::cpu::contraction::{CompiledContraction, KernelPath};
use netc_compiler::codegen::cpu::parallel::parallel_for;
use netc_compiler::kernel::KernelBody;
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};
use netc_runtime::exec::contraction_spec;
use netc_runtime::{init_weights, Executable, Tensor};
use std::hint::black_box;

fn graph(src: &str) -> netc_compiler::Graph {
    let ast = netc_lang::parse(src).expect("bench model parses");
    let checked = netc_compiler::check(&ast);
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    checked.graphs.into_iter().next().expect("one model")
}

/// The contraction code generator: `NETC_KERNELS=cranelift` or `avx2`,
/// else auto.
fn kernel_path() -> KernelPath {
    match std::env::var("NETC_KERNELS").as_deref() {
        Ok("cranelift") => KernelPath::Cranelift,
        Ok("avx2") => KernelPath::Avx2,
        _ => KernelPath::Auto,
    }
}

fn filled(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

/// The contraction kernel the compiler lowers `src`'s layer `layer` to.
fn lowered_contraction(src: &str, batch: usize, layer: &str) -> netc_compiler::kernel::Contraction {
    let g = graph(src);
    let p = Compilation::new(&g, CompileOptions::at(OptLevel::O0))
        .program(batch)
        .expect("lowers");
    p.kernels
        .into_iter()
        .find_map(|k| match k.body {
            KernelBody::Contraction(c) if k.name == layer => Some(c),
            _ => None,
        })
        .expect("layer is a contraction")
}

fn fma_ceiling(c: &mut Criterion) {
    let probe = FmaCeiling::compile().expect("ceiling kernel compiles");
    let iters = 1u64 << 16;
    let flops = probe.run(1) as u64 * iters;
    let mut g = c.benchmark_group("fma_ceiling");
    g.throughput(Throughput::Elements(flops));
    g.bench_function("f32x4_fma_1_thread", |b| {
        b.iter(|| probe.run(black_box(iters)))
    });
    g.finish();
}

/// What splitting a kernel costs: `parallel_for` over two empty pieces
/// (the floor under which `Executable` keeps kernels on one thread).
fn split_overhead(c: &mut Criterion) {
    let mut g = c.benchmark_group("split_overhead");
    g.bench_function("parallel_for_2_empty", |b| {
        b.iter(|| {
            parallel_for(2, &|i| {
                black_box(i);
            })
        })
    });
    g.finish();
}

fn contraction_bench(c: &mut Criterion, group: &str, src: &str, layer: &str, batches: &[usize]) {
    let mut g = c.benchmark_group(group);
    for &batch in batches {
        let ir = lowered_contraction(src, batch, layer);
        let mut spec = contraction_spec(&ir);
        spec.tuning.kernels = kernel_path();
        let k = CompiledContraction::compile(&spec).expect("compiles");
        let lens = k.spec().operand_lens().expect("valid spec");
        let a = filled(lens.a);
        let b = filled(lens.b);
        let bias = filled(ir.n);
        let mut out = vec![0f32; lens.c];
        g.throughput(Throughput::Elements(ir.flops() as u64));
        for threads in [1, 2] {
            let packed = k.pack_b(&b, threads).expect("packs");
            g.bench_with_input(
                BenchmarkId::new(format!("batch{batch}"), format!("{threads}_threads")),
                &threads,
                |bch, &t| {
                    bch.iter(|| {
                        k.run_packed(&a, &packed, Some(&bias), &mut out, t)
                            .expect("runs")
                    })
                },
            );
        }
    }
    g.finish();
}

fn conv(c: &mut Criterion) {
    // The input is pre-padded ('same' lowers to a pad kernel, then this).
    let src = "model m { input x: [58, 58, 64]  x -> conv2d(64, 3) as conv -> y  output y }";
    contraction_bench(c, "conv3x3_64to64_56x56", src, "conv", &[1, 8]);
}

fn dense(c: &mut Criterion) {
    let src = "model m { input x: [1024]  x -> dense(1024) as fc -> y  output y }";
    contraction_bench(c, "dense_1024x1024", src, "fc", &[64]);
}

fn model_forward(c: &mut Criterion, name: &str, file: &str, batch: usize) {
    let src = std::fs::read_to_string(format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR")))
        .expect("example exists");
    let g = graph(&src);
    let p = Compilation::new(&g, CompileOptions::at(OptLevel::O0))
        .program(batch)
        .expect("lowers");
    let flops: f64 = p
        .kernels
        .iter()
        .map(|k| match &k.body {
            KernelBody::Contraction(c) => c.flops(),
            KernelBody::Loop(_) => 0.0,
        })
        .sum();
    let w = init_weights(&g, 0).expect("init");
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(flops as u64));
    for threads in [1, 2] {
        let mut exe =
            Executable::compile_with(p.clone(), threads, kernel_path()).expect("compiles");
        exe.set_weights(&w).expect("weights fit");
        for i in &p.inputs {
            let t = Tensor::new(i.shape.clone(), filled(i.shape.iter().product())).expect("tensor");
            exe.set_input(&i.name, &t).expect("input fits");
        }
        group.bench_function(format!("batch{batch}_{threads}_threads"), |b| {
            b.iter(|| exe.run().expect("runs"))
        });
    }
    group.finish();
}

fn models(c: &mut Criterion) {
    model_forward(c, "course_cnn_forward", "course_cnn.net", 64);
    model_forward(c, "course_lstm_forward", "course_lstm.net", 32);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = fma_ceiling, split_overhead, conv, dense, models
}
criterion_main!(benches);
