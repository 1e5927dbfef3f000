//! Differential tests: the compiled CPU kernels (Cranelift loops; native
//! AVX2 or Cranelift contractions, see `KernelPath`) against the
//! reference interpreter of the kernel IR, on every shipped example and on
//! randomized convolution/pooling/dense/recurrent shapes.

use netc_compiler::codegen::cpu::{IsaLevel, KernelPath};
use netc_compiler::kernel::{interp, BufKind, Program};
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};
use netc_runtime::{init_weights, Executable, Tensor};
use std::path::PathBuf;

fn graph(src: &str) -> netc_compiler::Graph {
    let ast = netc_lang::parse(src).expect("parses");
    let checked = netc_compiler::check(&ast);
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    checked.graphs.into_iter().next().unwrap()
}

struct Lcg(u64);
impl Lcg {
    fn f(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

/// Runs `g` at `batch` through both the interpreter and the JIT (with
/// `threads`), and compares every output within 1e-4 relative.
fn compare(g: &netc_compiler::Graph, batch: usize, threads: usize, seed: u64) {
    compare_on(g, batch, threads, seed, KernelPath::Auto)
}

/// [`compare`] with the contractions built by `kernels`.
fn compare_on(
    g: &netc_compiler::Graph,
    batch: usize,
    threads: usize,
    seed: u64,
    kernels: KernelPath,
) {
    // A model of any length, at a length (its mask random 0s and 1s).
    let g = &netc_compiler::masking::instantiate(g, 7).unwrap();
    let p: Program = Compilation::new(g, CompileOptions::at(OptLevel::O0))
        .program(batch)
        .unwrap();
    let w = init_weights(g, seed).unwrap();
    let mut rng = Lcg(seed ^ 0x5eed);
    let inputs: Vec<(String, Tensor)> = p
        .inputs
        .iter()
        .map(|b| {
            let n: usize = b.shape.iter().product();
            (
                b.name.clone(),
                Tensor::new(
                    b.shape.clone(),
                    (0..n)
                        .map(|_| match b.vocab {
                            // Token inputs take ids in the vocabulary.
                            Some(v) => rng.below(v) as f32,
                            None => rng.f(),
                        })
                        .collect(),
                )
                .unwrap(),
            )
        })
        .collect();
    // Interpreter.
    let mut bufs: Vec<Vec<f32>> = p
        .buffers
        .iter()
        .map(|b| match &b.kind {
            BufKind::Input(n) => inputs.iter().find(|(m, _)| m == n).unwrap().1.data.clone(),
            BufKind::Param(n) => w.get(n).unwrap().data.clone(),
            BufKind::Temp | BufKind::State(_) => vec![f32::NAN; b.len],
        })
        .collect();
    interp::run_program(&p, &mut bufs).unwrap();
    // JIT.
    let mut exe = Executable::compile_with(p.clone(), threads, kernels).unwrap();
    exe.set_weights(&w).unwrap();
    for (n, t) in &inputs {
        exe.set_input(n, t).unwrap();
    }
    exe.run().unwrap();
    for (i, o) in p.outputs.iter().enumerate() {
        let want = &bufs[o.buf];
        let got = exe.output(i).unwrap().data;
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        for (j, (a, b)) in got.iter().zip(want).enumerate() {
            let tol = 1e-4 * (b.abs() + 1e-2 * scale) + 1e-7;
            assert!(
                (a - b).abs() <= tol,
                "{} output `{}` element {j}: jit {a} vs interpreter {b} (batch {batch}, threads {threads}, {kernels:?})",
                g.name,
                o.name
            );
        }
    }
}

fn examples() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "net"))
        .collect();
    v.sort();
    v
}

#[test]
fn jit_matches_interpreter_on_every_example() {
    for path in examples() {
        let g = graph(&std::fs::read_to_string(&path).unwrap());
        let big = g.g.node_count() > 60 || path.ends_with("alexnet.net");
        // The large ImageNet models run at batch 1; the rest at an odd batch.
        let batch = if big { 1 } else { 3 };
        compare(&g, batch, 2, 1);
    }
}

/// The examples above run the widest native contractions the host has
/// (AVX-512 or AVX2); these contraction-bearing ones (convolutional,
/// recurrent, 1-D convolutional, residual, dense) also run on the forced
/// Cranelift path.
#[test]
fn cranelift_path_matches_interpreter_on_representative_examples() {
    assert_eq!(representative_examples(KernelPath::Cranelift), 5);
}

/// On an AVX-512 host, where the examples above run the `zmm` kernels, the
/// same representative examples also run the forced AVX2 kernels, so every
/// native path the host has is checked end to end. (Elsewhere `Avx2` is
/// what `Auto` already ran.)
#[test]
fn avx2_path_matches_interpreter_on_an_avx512_host() {
    if IsaLevel::detect() != Some(IsaLevel::Avx512) {
        eprintln!("no AVX-512 on this host: the default path is the AVX2 one");
        return;
    }
    assert_eq!(representative_examples(KernelPath::Avx2), 5);
}

/// Runs the representative examples on `kernels`; returns how many ran.
fn representative_examples(kernels: KernelPath) -> usize {
    let keep = [
        "course_cnn.net",
        "course_lstm.net",
        "spam_conv1d.net",
        "residual_cnn.net",
        "mlp_batchnorm.net",
    ];
    let mut ran = 0;
    for path in examples() {
        if !keep.iter().any(|k| path.ends_with(k)) {
            continue;
        }
        let g = graph(&std::fs::read_to_string(&path).unwrap());
        compare_on(&g, 3, 2, 1, kernels);
        ran += 1;
    }
    ran
}

#[test]
fn jit_matches_interpreter_on_random_conv_shapes() {
    let mut rng = Lcg(42);
    for case in 0..24 {
        let h = 5 + rng.below(12);
        let w = 5 + rng.below(12);
        let c = 1 + rng.below(5);
        let k = [1, 2, 3, 5, 7][rng.below(5)].min(h).min(w);
        let s = 1 + rng.below(3);
        let f = 1 + rng.below(9);
        let pad = match rng.below(3) {
            0 => "same".to_string(),
            1 => "valid".to_string(),
            _ => (rng.below(3)).to_string(),
        };
        let pool = ["maxpool2d", "avgpool2d"][rng.below(2)];
        let act = ["relu", "tanh", "sigmoid", "leaky_relu"][rng.below(4)];
        let bias = rng.below(2) == 0;
        let src = format!(
            "model r{case} {{ input x: [{h}, {w}, {c}]
               x -> conv2d({f}, {k}, stride: {s}, padding: {pad}, bias: {bias}) -> {act}
                 -> {pool}(2, stride: 1, padding: same) -> flatten -> dense({}) -> softmax -> y
               output y }}",
            1 + rng.below(6)
        );
        let ast = netc_lang::parse(&src).unwrap();
        let checked = netc_compiler::check(&ast);
        if checked.has_errors() {
            continue; // a stride that does not divide: not a valid model
        }
        let g = &checked.graphs[0];
        for batch in [1, 7] {
            compare(g, batch, 1 + (case % 2), case as u64);
        }
    }
}

#[test]
fn jit_matches_interpreter_on_random_recurrent_shapes() {
    let mut rng = Lcg(7);
    for case in 0..12 {
        let cell = ["rnn", "lstm", "gru"][case % 3];
        let t = 1 + rng.below(9);
        let f = 1 + rng.below(5);
        let u = 1 + rng.below(13);
        let rs = rng.below(2) == 0;
        let bidi = rng.below(2) == 0;
        let merge = ["concat", "sum", "mul", "ave"][rng.below(4)];
        let src = format!(
            "model r{case} {{ input x: [{t}, {f}]
               x -> {cell}({u}, return_sequences: {rs}, bidirectional: {bidi}, merge: {merge}) -> dense(3) -> y
               output y }}"
        );
        let g = graph(&src);
        for batch in [1, 7] {
            compare(&g, batch, 2, case as u64);
        }
    }
}

#[test]
fn thread_count_does_not_change_results() {
    let src = std::fs::read_to_string(
        examples()
            .into_iter()
            .find(|p| p.ends_with("course_cnn.net"))
            .unwrap(),
    )
    .unwrap();
    let g = graph(&src);
    let p = Compilation::new(&g, CompileOptions::at(OptLevel::O0))
        .program(8)
        .unwrap();
    let w = init_weights(&g, 3).unwrap();
    let x = Tensor::new(
        vec![8, 28, 28, 1],
        (0..8 * 784).map(|i| (i % 255) as f32 / 255.0).collect(),
    )
    .unwrap();
    let run = |threads| {
        let mut e = Executable::compile(p.clone(), threads).unwrap();
        e.set_weights(&w).unwrap();
        e.set_input("image", &x).unwrap();
        e.run().unwrap();
        e.output(0).unwrap().data
    };
    assert_eq!(run(1), run(2));
}

/// The unrolled steps of a recurrent layer share one packed copy of the
/// recurrent weight; new weights must reach every step, and a run after
/// `set_weights` must equal a fresh program with those weights.
#[test]
fn new_weights_reach_every_kernel_sharing_a_packed_weight() {
    let g = graph(
        "model r { input x: [6, 3]  x -> lstm(9, return_sequences: true) -> flatten -> dense(4) -> y  output y }",
    );
    let p = Compilation::new(&g, CompileOptions::at(OptLevel::O0))
        .program(5)
        .unwrap();
    let x = Tensor::new(
        vec![5, 6, 3],
        (0..90)
            .map(|i| ((i * 37) % 19) as f32 / 19.0 - 0.5)
            .collect(),
    )
    .unwrap();
    let fresh = |seed| {
        let mut e = Executable::compile(p.clone(), 2).unwrap();
        e.set_weights(&init_weights(&g, seed).unwrap()).unwrap();
        e.set_input("x", &x).unwrap();
        e.run().unwrap();
        e.output(0).unwrap().data
    };
    let mut reused = Executable::compile(p.clone(), 2).unwrap();
    reused.set_weights(&init_weights(&g, 1).unwrap()).unwrap();
    reused.set_input("x", &x).unwrap();
    reused.run().unwrap();
    let first = reused.output(0).unwrap().data;
    assert_eq!(first, fresh(1));
    reused.set_weights(&init_weights(&g, 2).unwrap()).unwrap();
    reused.run().unwrap();
    let second = reused.output(0).unwrap().data;
    assert_ne!(first, second);
    assert_eq!(second, fresh(2));
}

/// A kernel that writes a parameter between two products reading it: the
/// second product must see the new values (the two share one packed copy,
/// which the write makes stale).
#[test]
fn a_parameter_written_mid_run_is_repacked() {
    use netc_compiler::kernel::ir::*;
    let (m, k, n) = (3, 5, 8);
    let buf = |name: &str, len, kind| Buffer {
        name: name.into(),
        len,
        kind,
    };
    let product = |c| Contraction {
        m_dims: [1, 1, m],
        m_strides: [0, 0, k],
        n,
        k_dims: [1, 1, k],
        k_strides: [0, 0, 1],
        a: (0, 0),
        b: (1, 0),
        ldb: n,
        b_transposed: false,
        c: (c, 0),
        ldc: n,
        bias: None,
        epilogue: Epilogue::None,
        accumulate: false,
    };
    let double = LoopKernel::outer_loop(
        1,
        0,
        0,
        k * n,
        vec![Stmt::store(
            1,
            Index::var(0, 1),
            Expr::load(1, Index::var(0, 1)).bin(BinOp::Mul, Expr::Const(2.0)),
        )],
    );
    let kernel = |name: &str, body| Kernel {
        name: name.into(),
        body,
    };
    let p = Program {
        name: "p".into(),
        batch: m,
        buffers: vec![
            buf("x", m * k, BufKind::Input("x".into())),
            buf("w", k * n, BufKind::Param("w".into())),
            buf("y1", m * n, BufKind::Temp),
            buf("y2", m * n, BufKind::Temp),
        ],
        kernels: vec![
            kernel("y1", KernelBody::Contraction(product(2))),
            kernel("double", KernelBody::Loop(double)),
            kernel("y2", KernelBody::Contraction(product(3))),
        ],
        inputs: vec![Binding {
            name: "x".into(),
            buf: 0,
            shape: vec![m, k],
            vocab: None,
        }],
        params: vec![Binding {
            name: "w".into(),
            buf: 1,
            shape: vec![k, n],
            vocab: None,
        }],
        outputs: ["y1", "y2"]
            .iter()
            .enumerate()
            .map(|(i, name)| Binding {
                name: name.to_string(),
                buf: 2 + i,
                shape: vec![m, n],
                vocab: None,
            })
            .collect(),
    };
    let mut exe = Executable::compile(p, 2).unwrap();
    exe.write_buffer(0, &(0..m * k).map(|i| i as f32 - 4.0).collect::<Vec<_>>())
        .unwrap();
    exe.write_buffer(
        1,
        &(0..k * n).map(|i| (i % 7) as f32 * 0.5).collect::<Vec<_>>(),
    )
    .unwrap();
    for _ in 0..2 {
        exe.run().unwrap();
        let (y1, y2) = (exe.output(0).unwrap().data, exe.output(1).unwrap().data);
        assert!(y1.iter().any(|v| *v != 0.0));
        let doubled: Vec<f32> = y1.iter().map(|v| 2.0 * v).collect();
        assert_eq!(
            y2, doubled,
            "the second product used the parameter before the write"
        );
    }
}

/// A program's kernels run with subnormals flushed to zero, on every
/// thread of the split, and only while the program runs: the interpreter
/// keeps them, and the two agree on every other value.
#[test]
fn a_run_flushes_subnormals_and_only_those() {
    let n = 1 << 16;
    let text = format!(
        "program flush (batch 1) {{\n  %0 = input \"x\" [{n}]\n  %1 = temp \"y\" [{n}]\n  \
         input \"x\" = %0 [{n}]\n  output \"y\" = %1 [{n}]\n\n  kernel scale (loop) {{\n    \
         for i0 in 0..{n} {{\n      %1[i0] = (%0[i0] * 1e-10)\n    }}\n  }}\n}}\n"
    );
    let p = netc_compiler::kernel::parse::parse_program(&text).unwrap();
    // Every other element is 1e-30, whose product is subnormal.
    let x: Vec<f32> = (0..n)
        .map(|i| if i % 2 == 0 { 1.0e-30 } else { i as f32 })
        .collect();
    let mut bufs = vec![x.clone(), vec![0.0; n]];
    interp::run_program(&p, &mut bufs).unwrap();
    assert!(bufs[1][0] > 0.0 && !bufs[1][0].is_normal());
    let mut exe = Executable::compile(p, 2).unwrap();
    exe.write_buffer(0, &x).unwrap();
    exe.run().unwrap();
    let y = exe.output(0).unwrap().data;
    for (i, (got, want)) in y.iter().zip(&bufs[1]).enumerate() {
        if want.is_normal() {
            assert_eq!(got.to_bits(), want.to_bits(), "element {i}");
        } else {
            assert_eq!(*got, 0.0, "element {i}: {want:e} not flushed");
        }
    }
    // The caller's mode is back.
    let tiny = std::hint::black_box(1.0e-30f32) * std::hint::black_box(1.0e-10);
    assert!(tiny > 0.0);
}
