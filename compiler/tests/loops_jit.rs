//! Tests of the Cranelift loop-kernel backend that stay in Rust. Kernel
//! and data tests (a kernel, its inputs, and the interpreter or golden
//! values to match) are text files in `tests/kernels/`, run by
//! `kernel_files.rs`; what is here cannot be written that way:
//! - `run_range` (an unsafe raw-pointer entry point) and `run`'s own
//!   argument checks exercise the API, not a kernel;
//! - `Send + Sync` is a property of the type;
//! - the transcendental sweep compares 80,000 points against f64 `exp`,
//!   `tanh` and the logistic function and bounds the worst error;
//! - the example-model tests lower whole programs from `examples/` and
//!   compare kernel by kernel on the interpreter's intermediate state;
//! - the timing is a benchmark, not a test.

mod common;
use common::xorshift_values;
use netc_compiler::codegen::cpu::loops::CompiledLoop;
use netc_compiler::codegen::cpu::{CodegenError, KernelPath, OptLevel};
use netc_compiler::kernel::{
    interp, BinOp, BufKind, Expr, Index, KernelBody, LoopKernel, Stmt, UnOp,
};
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel as GraphOptLevel};

/// Tolerance for libm-based operations.
const TRANSCENDENTAL: f32 = 1e-5;

fn lp(var: usize, extent: usize, body: Vec<Stmt>) -> Stmt {
    Stmt::Loop { var, extent, body }
}

fn store(buf: usize, index: Index, value: Expr) -> Stmt {
    Stmt::Store { buf, index, value }
}

fn set(scalar: usize, value: Expr) -> Stmt {
    Stmt::Set { scalar, value }
}

fn ix(terms: &[(usize, i64)], offset: i64) -> Index {
    Index::new(terms.iter().copied(), offset)
}

fn jit(c: &CompiledLoop, bufs: &[Vec<f32>], threads: usize) -> Vec<Vec<f32>> {
    let mut out = bufs.to_vec();
    let mut slices: Vec<&mut [f32]> = out.iter_mut().map(Vec::as_mut_slice).collect();
    c.run(&mut slices, threads).expect("run");
    out
}

fn close(a: f32, b: f32, tol: f32) -> bool {
    a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol * a.abs().max(b.abs()).max(1e-30)
}

/// `out[i] = op(in[i])` over `n` elements.
fn unary_kernel(op: UnOp, n: usize) -> LoopKernel {
    LoopKernel {
        vars: 1,
        scalars: 0,
        body: vec![lp(
            0,
            n,
            vec![store(
                1,
                Index::var(0, 1),
                Expr::load(0, Index::var(0, 1)).un(op),
            )],
        )],
    }
}

/// Row softmax over `[rows, cols]`: max-reduce, sum of exps, divide.
fn softmax_kernel(rows: usize, cols: usize) -> LoopKernel {
    let at = || ix(&[(0, cols as i64), (1, 1)], 0);
    LoopKernel {
        vars: 2,
        scalars: 2,
        body: vec![lp(
            0,
            rows,
            vec![
                set(0, Expr::Const(f32::NEG_INFINITY)),
                lp(
                    1,
                    cols,
                    vec![set(0, Expr::Get(0).bin(BinOp::Max, Expr::load(0, at())))],
                ),
                set(1, Expr::Const(0.0)),
                lp(
                    1,
                    cols,
                    vec![
                        store(
                            1,
                            at(),
                            Expr::load(0, at())
                                .bin(BinOp::Sub, Expr::Get(0))
                                .un(UnOp::Exp),
                        ),
                        set(1, Expr::Get(1).bin(BinOp::Add, Expr::load(1, at()))),
                    ],
                ),
                lp(
                    1,
                    cols,
                    vec![store(
                        1,
                        at(),
                        Expr::load(1, at()).bin(BinOp::Div, Expr::Get(1)),
                    )],
                ),
            ],
        )],
    }
}

#[test]
fn run_range_runs_only_the_requested_iterations() {
    let n = 10;
    let k = unary_kernel(UnOp::Neg, n);
    let c = CompiledLoop::compile(&k, &[n, n]).unwrap();
    let input: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
    let mut out = vec![0.0f32; n];
    let mut input2 = input.clone();
    let ptrs = [input2.as_mut_ptr(), out.as_mut_ptr()];
    // SAFETY: both buffers have the compiled lengths; one caller.
    unsafe {
        c.run_range(ptrs.as_ptr(), 3, 6);
        c.run_range(ptrs.as_ptr(), 8, 1000); // clamped to the extent
        c.run_range(ptrs.as_ptr(), 5, 2); // empty
    }
    let want: Vec<f32> = (0..n)
        .map(|i| {
            if (3..6).contains(&i) || i >= 8 {
                -input[i]
            } else {
                0.0
            }
        })
        .collect();
    assert_eq!(out, want);
}

/// A kernel keeps the lengths of the buffers it touches only: a program of
/// n kernels over n buffers must not hold n² lengths.
#[test]
fn a_kernel_keeps_only_the_lengths_it_touches() {
    let mut lens = vec![4, 4];
    lens.extend(std::iter::repeat_n(7, 10_000));
    let c = CompiledLoop::compile(&unary_kernel(UnOp::Neg, 4), &lens).unwrap();
    assert_eq!(c.touched_lens(), &[(0, 4), (1, 4)]);
    // Untouched buffers are passed but neither read nor length-checked.
    let mut bufs: Vec<Vec<f32>> = lens.iter().map(|_| vec![]).collect();
    bufs[0] = vec![1.0, -2.0, 3.0, -4.0];
    bufs[1] = vec![0.0; 4];
    let mut slices: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
    c.run(&mut slices, 1).unwrap();
    assert_eq!(bufs[1], vec![-1.0, 2.0, -3.0, 4.0]);
}

#[test]
fn run_checks_its_buffers() {
    let c = CompiledLoop::compile(&unary_kernel(UnOp::Neg, 4), &[4, 4]).unwrap();
    let mut a = vec![0.0f32; 4];
    let mut b = vec![0.0f32; 3];
    assert!(matches!(
        c.run(&mut [a.as_mut_slice()], 1),
        Err(CodegenError::BufferCount {
            expected: 2,
            got: 1
        })
    ));
    assert!(matches!(
        c.run(&mut [a.as_mut_slice(), b.as_mut_slice()], 1),
        Err(CodegenError::LoopBufferTooSmall {
            buf: 1,
            expected: 4,
            got: 3
        })
    ));
    // Longer buffers are fine.
    let mut long = vec![0.0f32; 9];
    assert!(c
        .run(&mut [a.as_mut_slice(), long.as_mut_slice()], 2)
        .is_ok());
}

#[test]
fn compiled_loops_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CompiledLoop>();
}

/// Times a softmax kernel (exp-bound) and a max-pool kernel (no libcalls)
/// at both optimization levels; prints the best of several runs. Run with
/// `cargo test --test loops_jit -- --ignored --nocapture`.
#[test]
#[ignore = "timing, not a test"]
fn softmax_opt_level_timing() {
    let (rows, cols) = (1024, 1000);
    let softmax = softmax_kernel(rows, cols);
    let pool = {
        // 3x3 stride-1 max over a [256, 256] image (no padding), 64 channels.
        let (hw, ch) = (256i64, 64i64);
        let o = hw - 2;
        let load = ix(&[(0, hw * ch), (2, hw * ch), (1, ch), (3, ch), (4, 1)], 0);
        let out = ix(&[(0, o * ch), (1, ch), (4, 1)], 0);
        LoopKernel {
            vars: 5,
            scalars: 1,
            body: vec![lp(
                0,
                o as usize,
                vec![lp(
                    1,
                    o as usize,
                    vec![lp(
                        4,
                        ch as usize,
                        vec![
                            set(0, Expr::Const(f32::NEG_INFINITY)),
                            lp(
                                2,
                                3,
                                vec![lp(
                                    3,
                                    3,
                                    vec![set(0, Expr::Get(0).bin(BinOp::Max, Expr::load(0, load)))],
                                )],
                            ),
                            store(1, out, Expr::Get(0)),
                        ],
                    )],
                )],
            )],
        }
    };
    let cases = [
        ("softmax 1024x1000", &softmax, rows * cols, rows * cols),
        (
            "maxpool 3x3 256x256x64",
            &pool,
            256 * 256 * 64,
            254 * 254 * 64,
        ),
    ];
    for (name, k, n_in, n_out) in cases {
        let lens = [n_in, n_out];
        let mut bufs = [xorshift_values(n_in, 81, -8.0, 8.0), vec![0.0; n_out]];
        for opt in [
            OptLevel::None,
            OptLevel::Speed,
            OptLevel::None,
            OptLevel::Speed,
        ] {
            let t0 = std::time::Instant::now();
            let c = CompiledLoop::compile_with_opt_level(k, &lens, opt).unwrap();
            let compile = t0.elapsed();
            let mut slices: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
            c.run(&mut slices, 1).unwrap();
            let best = (0..7)
                .map(|_| {
                    let t0 = std::time::Instant::now();
                    c.run(&mut slices, 1).unwrap();
                    t0.elapsed()
                })
                .min()
                .unwrap();
            let ns = best.as_nanos() as f64 / n_out as f64;
            println!("{name}: {opt:?}: compile {compile:?}, best run {best:?} ({ns:.2} ns/output)");
        }
    }
}

/// Every loop kernel the lowering produces for the example models compiles
/// (its accesses are proven in bounds) and, run by the JIT with the
/// contractions interpreted, gives the interpreter's results.
#[test]
fn lowered_example_models_match_the_interpreter() {
    let models = [
        ("course_cnn", include_str!("../../examples/course_cnn.net")),
        (
            "course_lstm",
            include_str!("../../examples/course_lstm.net"),
        ),
        ("lenet5", include_str!("../../examples/lenet5.net")),
        (
            "gru_classifier",
            include_str!("../../examples/gru_classifier.net"),
        ),
        (
            "bilstm_tagger",
            include_str!("../../examples/bilstm_tagger.net"),
        ),
        (
            "stacked_lstm",
            include_str!("../../examples/stacked_lstm.net"),
        ),
        (
            "mlp_batchnorm",
            include_str!("../../examples/mlp_batchnorm.net"),
        ),
        (
            "residual_cnn",
            include_str!("../../examples/residual_cnn.net"),
        ),
        ("rnn_golden", include_str!("../../examples/rnn_golden.net")),
        (
            "italy_power_lstm",
            include_str!("../../examples/italy_power_lstm.net"),
        ),
    ];
    for (name, src) in models {
        let ast = netc_lang::parse(src).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let checked = netc_compiler::check(&ast);
        assert!(!checked.has_errors(), "{name}: {:?}", checked.diagnostics);
        let p = Compilation::new(&checked.graphs[0], CompileOptions::at(GraphOptLevel::O0))
            .program(2)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let lens: Vec<usize> = p.buffers.iter().map(|b| b.len).collect();
        let init: Vec<Vec<f32>> = p
            .buffers
            .iter()
            .enumerate()
            .map(|(i, b)| match &b.kind {
                BufKind::Param(n) if n.ends_with("moving_var") => {
                    xorshift_values(b.len, i as u64, 0.5, 1.5)
                }
                BufKind::Input(_) | BufKind::Param(_) => {
                    xorshift_values(b.len, i as u64, -1.0, 1.0)
                }
                BufKind::Temp | BufKind::State(_) => vec![0.0; b.len],
            })
            .collect();
        // Each loop kernel runs on the interpreter's state before it and
        // must give the interpreter's state after it: per-kernel error,
        // not the error the recurrence amplifies over the time steps.
        let mut state = init;
        let mut compiled = 0;
        for kernel in &p.kernels {
            let before = state.clone();
            interp::run_kernel(&p, kernel, &mut state).unwrap();
            let KernelBody::Loop(l) = &kernel.body else {
                continue;
            };
            let c = CompiledLoop::compile(l, &lens)
                .unwrap_or_else(|e| panic!("{name}: kernel `{}`: {e}", kernel.name));
            let mut got = before;
            let mut slices: Vec<&mut [f32]> = got.iter_mut().map(Vec::as_mut_slice).collect();
            c.run(&mut slices, 2).unwrap();
            compiled += 1;
            // The JIT evaluates every operation in the interpreter's order;
            // only its inline exp/tanh/sigmoid differ from libm, by an ulp
            // or so, which cancellation (c = f·c + i·g) can make large
            // relative to a small result: also accept that error relative
            // to the buffer's scale.
            for (b, (w, g)) in state.iter().zip(&got).enumerate() {
                let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (i, (&x, &y)) in w.iter().zip(g).enumerate() {
                    assert!(
                        close(x, y, TRANSCENDENTAL)
                            || (x - y).abs() <= TRANSCENDENTAL * 0.1 * scale,
                        "{name}: kernel `{}`: buffer {b}[{i}]: want {x}, got {y} (scale {scale})",
                        kernel.name
                    );
                }
            }
        }
        assert!(compiled > 0, "{name}: no loop kernels");
    }
}

/// The loop kernels of the large CNNs compile too (too slow to interpret in
/// a test), and their outermost loops are proven splittable.
#[test]
fn large_example_models_compile() {
    for (name, src) in [
        ("alexnet", include_str!("../../examples/alexnet.net")),
        ("vgg16", include_str!("../../examples/vgg16.net")),
    ] {
        let ast = netc_lang::parse(src).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let checked = netc_compiler::check(&ast);
        assert!(!checked.has_errors(), "{name}: {:?}", checked.diagnostics);
        let p = Compilation::new(&checked.graphs[0], CompileOptions::at(GraphOptLevel::O0))
            .program(4)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let lens: Vec<usize> = p.buffers.iter().map(|b| b.len).collect();
        for kernel in &p.kernels {
            if let KernelBody::Loop(l) = &kernel.body {
                let c = CompiledLoop::compile(l, &lens)
                    .unwrap_or_else(|e| panic!("{name}: kernel `{}`: {e}", kernel.name));
                assert!(
                    c.parallel_extent().is_some(),
                    "{name}: kernel `{}` is not splittable",
                    kernel.name
                );
            }
        }
    }
}

/// The inline `exp`, `tanh` and `sigmoid` stay within a few ulp of the
/// exact (f64) function over a dense sweep of their whole useful range.
#[test]
fn inline_transcendentals_are_accurate() {
    let n = 40_001;
    let xs: Vec<f32> = (0..n)
        .map(|i| -100.0 + 200.0 * i as f32 / (n - 1) as f32)
        .collect();
    let small: Vec<f32> = (0..n)
        .map(|i| -2.0 + 4.0 * i as f32 / (n - 1) as f32)
        .collect();
    type Exact = fn(f64) -> f64;
    let cases: [(UnOp, Exact); 3] = [
        (UnOp::Exp, f64::exp),
        (UnOp::Tanh, f64::tanh),
        (UnOp::Sigmoid, |x| 1.0 / (1.0 + (-x).exp())),
    ];
    for (op, f) in cases {
        let c = CompiledLoop::compile(&unary_kernel(op, n), &[n, n]).unwrap();
        let mut worst = 0f64;
        for input in [&xs, &small] {
            let out = jit(&c, &[input.clone(), vec![0.0; n]], 1);
            for (&x, &y) in input.iter().zip(&out[1]) {
                let want = f(f64::from(x));
                if want > f64::from(f32::MAX) {
                    assert_eq!(y, f32::INFINITY, "{op}({x})");
                    continue;
                }
                if want.abs() < f64::from(f32::MIN_POSITIVE) {
                    // Below the normal range: flushed or a denormal.
                    assert!(f64::from(y.abs()) < 1.2e-38, "{op}({x}) = {y}, want {want}");
                    continue;
                }
                let rel = (f64::from(y) - want).abs() / want.abs();
                worst = worst.max(rel);
            }
        }
        println!("{op}: worst relative error {worst:e}");
        assert!(worst < 5e-7, "{op}: worst relative error {worst:e}");
    }
}

/// At the edges of their ranges `sigmoid` and `tanh` give their limits on
/// both kernel paths: exactly 0 and 1 where `e^-x` overflows or vanishes,
/// `tanh(±9)` (the f32 nearest ±1 from inside) past ±9, and NaN for NaN. (`exp` inside them skips the
/// clamps and fixups that cannot change these results: see
/// `vmath::ExpInput`.)
#[test]
fn sigmoid_and_tanh_keep_their_limits() {
    let inf = f32::INFINITY;
    let sigmoid: [(f32, f32); 10] = [
        (-inf, 0.0),
        (-1e30, 0.0),
        (-104.0, 0.0),
        (-103.97208, 0.0),
        (104.0, 1.0),
        (88.8, 1.0),
        (1e30, 1.0),
        (inf, 1.0),
        (0.0, 0.5),
        (-0.0, 0.5),
    ];
    // tanh(9) = 1 − 3.05e-8 rounds down to 1 − 2⁻²⁴, and |x| ≥ 9 is
    // clamped to 9.
    let one = 1.0 - f32::EPSILON / 2.0;
    let tanh: [(f32, f32); 7] = [
        (-inf, -one),
        (-9.0, -one),
        (-104.0, -one),
        (9.0, one),
        (50.0, one),
        (inf, one),
        (0.0, 0.0),
    ];
    for path in [KernelPath::Auto, KernelPath::Cranelift] {
        for (op, cases) in [(UnOp::Sigmoid, &sigmoid[..]), (UnOp::Tanh, &tanh[..])] {
            // Every case in every lane position, past a vector's width.
            let xs: Vec<f32> = (0..8)
                .flat_map(|_| cases.iter().map(|c| c.0))
                .chain([f32::NAN, -f32::NAN])
                .collect();
            let n = xs.len();
            let c = CompiledLoop::compile_with(&unary_kernel(op, n), &[n, n], path).unwrap();
            let out = jit(&c, &[xs.clone(), vec![0.0; n]], 1);
            for (i, (&x, &y)) in xs.iter().zip(&out[1]).enumerate() {
                if x.is_nan() {
                    assert!(y.is_nan(), "{path:?} {op}(NaN) = {y}");
                    continue;
                }
                let want = cases[i % cases.len()].1;
                assert_eq!(
                    y.to_bits(),
                    want.to_bits(),
                    "{path:?} {op}({x}) = {y}, want {want}"
                );
            }
        }
    }
}
