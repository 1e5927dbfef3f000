//! Differential tests of the Cranelift loop-kernel backend against the
//! kernel IR interpreter.

use netc_compiler::codegen::cpu::loops::{compile_clif_text, CompiledLoop};
use netc_compiler::codegen::cpu::{CodegenError, OptLevel};
use netc_compiler::kernel::{
    interp, BinOp, BufKind, Buffer, Cmp, Expr, Index, Kernel, KernelBody, LoopKernel, Program,
    Stmt, UnOp,
};
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel as GraphOptLevel};

/// Tolerance for exactly rounded operations.
const EXACT: f32 = 1e-6;
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

/// Deterministic values in `[lo, hi)`.
fn values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

fn program(k: &LoopKernel, lens: &[usize]) -> Program {
    Program {
        name: "test".into(),
        batch: 1,
        buffers: lens
            .iter()
            .enumerate()
            .map(|(i, &len)| Buffer {
                name: format!("b{i}"),
                len,
                kind: BufKind::Temp,
            })
            .collect(),
        kernels: vec![Kernel {
            name: "k".into(),
            body: KernelBody::Loop(k.clone()),
        }],
        inputs: vec![],
        params: vec![],
        outputs: vec![],
    }
}

fn interpret(k: &LoopKernel, bufs: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let lens: Vec<usize> = bufs.iter().map(Vec::len).collect();
    let p = program(k, &lens);
    let mut out = bufs.to_vec();
    interp::run_kernel(&p, &p.kernels[0], &mut out).expect("interpreter");
    out
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

fn assert_close(want: &[Vec<f32>], got: &[Vec<f32>], tol: f32, what: &str) {
    for (b, (w, g)) in want.iter().zip(got).enumerate() {
        for (i, (&x, &y)) in w.iter().zip(g).enumerate() {
            assert!(
                close(x, y, tol),
                "{what}: buffer {b}[{i}]: want {x}, got {y}"
            );
        }
    }
}

/// Compiles `k` for `bufs`, runs it with 1, 2 and 3 threads, checks every
/// run against the interpreter, and returns the single-threaded result.
fn check(k: &LoopKernel, bufs: &[Vec<f32>], tol: f32, what: &str) -> Vec<Vec<f32>> {
    let lens: Vec<usize> = bufs.iter().map(Vec::len).collect();
    let c = CompiledLoop::compile(k, &lens).unwrap_or_else(|e| panic!("{what}: {e}"));
    let want = interpret(k, bufs);
    let one = jit(&c, bufs, 1);
    assert_close(&want, &one, tol, what);
    for threads in [2, 3] {
        let got = jit(&c, bufs, threads);
        assert_eq!(
            bits(&one),
            bits(&got),
            "{what}: {threads} threads differ from 1"
        );
    }
    one
}

fn bits(bufs: &[Vec<f32>]) -> Vec<Vec<u32>> {
    bufs.iter()
        .map(|b| b.iter().map(|x| x.to_bits()).collect())
        .collect()
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

#[test]
fn elementwise_unary_ops_over_odd_sizes() {
    let specials = [
        0.0, -0.0, 1.0, -1.0, 30.0, -30.0, 88.0, -88.0, 100.0, -100.0,
    ];
    let ops = [
        (UnOp::Neg, EXACT),
        (UnOp::Relu, EXACT),
        (UnOp::Sqrt, EXACT),
        (UnOp::Exp, TRANSCENDENTAL),
        (UnOp::Log, TRANSCENDENTAL),
        (UnOp::Tanh, TRANSCENDENTAL),
        (UnOp::Sigmoid, TRANSCENDENTAL),
    ];
    for (op, tol) in ops {
        for n in [1, 7, 33, 1001] {
            let mut input = values(n, n as u64 + 3, -20.0, 20.0);
            for (slot, s) in input.iter_mut().zip(specials) {
                *slot = s;
            }
            if matches!(op, UnOp::Log | UnOp::Sqrt) {
                // Mostly positive, with a few NaN-producing negatives.
                input.iter_mut().skip(3).for_each(|x| *x = x.abs() + 1e-3);
            }
            let bufs = vec![input, vec![7.0; n]];
            check(&unary_kernel(op, n), &bufs, tol, &format!("{op} over {n}"));
        }
    }
}

#[test]
fn sigmoid_is_accurate_in_both_tails() {
    let xs: Vec<f32> = vec![
        -120.0, -90.0, -80.0, -50.0, -16.0, -1e-3, 0.0, 1e-3, 16.0, 50.0, 120.0,
    ];
    let n = xs.len();
    let c = CompiledLoop::compile(&unary_kernel(UnOp::Sigmoid, n), &[n, n]).unwrap();
    let out = jit(&c, &[xs.clone(), vec![0.0; n]], 1);
    for (&x, &y) in xs.iter().zip(&out[1]) {
        let want = 1.0 / (1.0 + (-f64::from(x)).exp());
        assert!((0.0..=1.0).contains(&y), "sigmoid({x}) = {y}");
        // Relative accuracy down to f32's normal range, absolute below it.
        let err = (f64::from(y) - want).abs();
        assert!(
            err <= 1e-6 * want + 1e-37,
            "sigmoid({x}) = {y}, want {want}"
        );
    }
}

#[test]
fn elementwise_binary_ops_follow_f32_semantics_including_nan() {
    let n = 37;
    let mut a = values(n, 11, -5.0, 5.0);
    let mut b = values(n, 12, -5.0, 5.0);
    a[0] = f32::NAN;
    b[1] = f32::NAN;
    a[2] = f32::NAN;
    b[2] = f32::NAN;
    b[3] = 0.0;
    for op in [
        BinOp::Add,
        BinOp::Sub,
        BinOp::Mul,
        BinOp::Div,
        BinOp::Max,
        BinOp::Min,
    ] {
        let x = || Expr::load(0, Index::var(0, 1));
        let y = || Expr::load(1, Index::var(0, 1));
        // out0 = a op b, out1 = a op 0.5, out2 = 0.5 op a.
        let k = LoopKernel {
            vars: 1,
            scalars: 0,
            body: vec![lp(
                0,
                n,
                vec![
                    store(2, Index::var(0, 1), x().bin(op, y())),
                    store(3, Index::var(0, 1), x().bin(op, Expr::Const(0.5))),
                    store(4, Index::var(0, 1), Expr::Const(0.5).bin(op, x())),
                ],
            )],
        };
        let bufs = vec![
            a.clone(),
            b.clone(),
            vec![0.0; n],
            vec![0.0; n],
            vec![0.0; n],
        ];
        check(&k, &bufs, EXACT, &format!("binary {op}"));
    }
}

#[test]
fn select_with_every_comparison() {
    let n = 41;
    let mut a = values(n, 21, -2.0, 2.0);
    let b = values(n, 22, -2.0, 2.0);
    a[5] = b[5];
    a[6] = f32::NAN;
    for cmp in [Cmp::Gt, Cmp::Ge, Cmp::Lt] {
        let x = || Expr::load(0, Index::var(0, 1));
        let y = || Expr::load(1, Index::var(0, 1));
        // out = a cmp b ? 2a : b - 1
        let k = LoopKernel {
            vars: 1,
            scalars: 0,
            body: vec![lp(
                0,
                n,
                vec![store(
                    2,
                    Index::var(0, 1),
                    x().select(
                        cmp,
                        y(),
                        x().bin(BinOp::Mul, Expr::Const(2.0)),
                        y().bin(BinOp::Sub, Expr::Const(1.0)),
                    ),
                )],
            )],
        };
        check(
            &k,
            &[a.clone(), b.clone(), vec![0.0; n]],
            EXACT,
            &format!("select {cmp}"),
        );
    }
}

#[test]
fn two_dimensional_affine_indices() {
    // out[(R-1-i)*C + j + 3] = 2*in[j*R + i] + bias[j], i.e. a transpose with
    // the rows reversed, written at an offset; R = 5, C = 9.
    let (r, c) = (5usize, 9usize);
    let k = LoopKernel {
        vars: 2,
        scalars: 0,
        body: vec![lp(
            0,
            r,
            vec![lp(
                1,
                c,
                vec![store(
                    2,
                    ix(&[(0, -(c as i64)), (1, 1)], ((r - 1) * c + 3) as i64),
                    Expr::load(0, ix(&[(1, r as i64), (0, 1)], 0))
                        .bin(BinOp::Mul, Expr::Const(2.0))
                        .bin(BinOp::Add, Expr::load(1, Index::var(1, 1))),
                )],
            )],
        )],
    };
    let input = values(r * c, 31, -1.0, 1.0);
    let bias = values(c, 32, -1.0, 1.0);
    let out = check(
        &k,
        &[input.clone(), bias.clone(), vec![-9.0; r * c + 3]],
        EXACT,
        "2-d",
    );
    for i in 0..r {
        for j in 0..c {
            assert_eq!(
                out[2][(r - 1 - i) * c + j + 3],
                2.0 * input[j * r + i] + bias[j]
            );
        }
    }
    assert_eq!(&out[2][..3], &[-9.0; 3]);
    // The outer loop writes rows (R-1-i)*C + [3, 3+C): disjoint bands.
    let c2 = CompiledLoop::compile(&k, &[r * c, c, r * c + 3]).unwrap();
    assert_eq!(c2.parallel_extent(), Some(r));
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
fn row_softmax() {
    let (rows, cols) = (7, 13);
    let k = softmax_kernel(rows, cols);
    let x = values(rows * cols, 41, -10.0, 10.0);
    let out = check(
        &k,
        &[x.clone(), vec![0.0; rows * cols]],
        TRANSCENDENTAL,
        "softmax",
    );
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let m = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let s: f64 = row.iter().map(|&v| (f64::from(v) - m).exp()).sum();
        for (j, &v) in row.iter().enumerate() {
            let want = ((f64::from(v) - m).exp() / s) as f32;
            assert!(close(want, out[1][r * cols + j], TRANSCENDENTAL));
        }
        let total: f32 = out[1][r * cols..(r + 1) * cols].iter().sum();
        assert!((total - 1.0).abs() < 1e-5);
    }
    let c = CompiledLoop::compile(&k, &[rows * cols, rows * cols]).unwrap();
    assert_eq!(c.parallel_extent(), Some(rows));
}

#[test]
fn max_pool_with_padding_guards() {
    // NHWC input [2, 5, 6, 3], 3x3 window, stride 2, padding 1 -> [2, 3, 3, 3].
    let (n, h, w, ch) = (2usize, 5usize, 6usize, 3usize);
    let (kk, s, p) = (3usize, 2i64, 1i64);
    let (oh, ow) = (3usize, 3usize);
    let (hi, wi, ci) = (h as i64, w as i64, ch as i64);
    // Variables: n=0, oh=1, ow=2, c=3, kh=4, kw=5.
    let row = ix(&[(1, s), (4, 1)], -p);
    let col = ix(&[(2, s), (5, 1)], -p);
    let load = ix(
        &[
            (0, hi * wi * ci),
            (1, s * wi * ci),
            (4, wi * ci),
            (2, s * ci),
            (5, ci),
            (3, 1),
        ],
        -p * wi * ci - p * ci,
    );
    let out = ix(
        &[
            (0, (oh * ow * ch) as i64),
            (1, (ow * ch) as i64),
            (2, ch as i64),
            (3, 1),
        ],
        0,
    );
    let k = LoopKernel {
        vars: 6,
        scalars: 1,
        body: vec![lp(
            0,
            n,
            vec![lp(
                1,
                oh,
                vec![lp(
                    2,
                    ow,
                    vec![lp(
                        3,
                        ch,
                        vec![
                            set(0, Expr::Const(f32::NEG_INFINITY)),
                            lp(
                                4,
                                kk,
                                vec![lp(
                                    5,
                                    kk,
                                    vec![Stmt::IfInBounds {
                                        conds: vec![(row, h), (col, w)],
                                        body: vec![set(
                                            0,
                                            Expr::Get(0).bin(BinOp::Max, Expr::load(0, load)),
                                        )],
                                    }],
                                )],
                            ),
                            store(1, out, Expr::Get(0)),
                        ],
                    )],
                )],
            )],
        )],
    };
    let input = values(n * h * w * ch, 51, -3.0, 3.0);
    let lens = [n * h * w * ch, n * oh * ow * ch];
    let got = check(&k, &[input.clone(), vec![0.0; lens[1]]], EXACT, "max pool");
    // Direct check of one padded corner and one interior window.
    let at = |b: usize, y: usize, x: usize, c: usize| input[((b * h + y) * w + x) * ch + c];
    let corner = (0..2)
        .flat_map(|y| (0..2).map(move |x| (y, x)))
        .map(|(y, x)| at(1, y, x, 2))
        .fold(f32::NEG_INFINITY, f32::max);
    assert_eq!(got[1][oh * ow * ch + 2], corner);
    let c = CompiledLoop::compile(&k, &lens).unwrap();
    assert_eq!(c.parallel_extent(), Some(n));
    // Dropping the column guard makes the padded loads unprovable.
    let mut unguarded = k.clone();
    fn drop_col_guard(s: &mut Stmt) {
        match s {
            Stmt::Loop { body, .. } => body.iter_mut().for_each(drop_col_guard),
            Stmt::IfInBounds { conds, .. } => conds.truncate(1),
            _ => {}
        }
    }
    unguarded.body.iter_mut().for_each(drop_col_guard);
    let err = CompiledLoop::compile(&unguarded, &lens).unwrap_err();
    assert!(
        matches!(
            err,
            CodegenError::OutOfBounds {
                access: "load",
                buf: 0,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn out_of_bounds_kernels_are_rejected() {
    // out[i] = in[i + 1] for i < 8 over 8-element buffers.
    let k = LoopKernel {
        vars: 1,
        scalars: 0,
        body: vec![lp(
            0,
            8,
            vec![store(
                1,
                Index::var(0, 1),
                Expr::load(0, Index::var(0, 1).shift(1)),
            )],
        )],
    };
    let err = CompiledLoop::compile(&k, &[8, 8]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "load of buffer 0 may be out of bounds: index `v0 + 1` ranges over [1, 8], \
         but the buffer has 8 elements"
    );
    assert!(compile_clif_text(&k, &[8, 8]).is_err());
    assert!(CompiledLoop::compile(&k, &[9, 8]).is_ok());
    // A store below zero.
    let k = LoopKernel {
        vars: 1,
        scalars: 0,
        body: vec![lp(
            0,
            4,
            vec![store(0, Index::var(0, 1).shift(-1), Expr::Const(1.0))],
        )],
    };
    let err = CompiledLoop::compile(&k, &[100]).unwrap_err();
    assert!(matches!(
        err,
        CodegenError::OutOfBounds {
            access: "store",
            min: -1,
            max: 2,
            ..
        }
    ));
    // A guard on a different index does not help.
    let k = LoopKernel {
        vars: 1,
        scalars: 0,
        body: vec![lp(
            0,
            4,
            vec![Stmt::IfInBounds {
                conds: vec![(Index::var(0, 1), 4)],
                body: vec![store(0, Index::var(0, 2), Expr::Const(1.0))],
            }],
        )],
    };
    assert!(CompiledLoop::compile(&k, &[4]).is_err());
    assert!(CompiledLoop::compile(&k, &[7]).is_ok());
}

#[test]
fn guards_filter_at_run_time() {
    // out[i] = in[i - 2] where 0 <= i - 2 < 5, else untouched; 9 outputs.
    let k = LoopKernel {
        vars: 1,
        scalars: 0,
        body: vec![lp(
            0,
            9,
            vec![Stmt::IfInBounds {
                conds: vec![(Index::var(0, 1).shift(-2), 5)],
                body: vec![store(
                    1,
                    Index::var(0, 1),
                    Expr::load(0, Index::var(0, 1).shift(-2)),
                )],
            }],
        )],
    };
    let out = check(
        &k,
        &[vec![1.0, 2.0, 3.0, 4.0, 5.0], vec![-1.0; 9]],
        EXACT,
        "guard",
    );
    assert_eq!(out[1], [-1.0, -1.0, 1.0, 2.0, 3.0, 4.0, 5.0, -1.0, -1.0]);
}

#[test]
fn threads_split_the_outer_loop_identically() {
    let (rows, cols) = (257, 31);
    let k = softmax_kernel(rows, cols);
    let x = values(rows * cols, 61, -30.0, 30.0);
    let bufs = vec![x, vec![0.0; rows * cols]];
    let c = CompiledLoop::compile(&k, &[rows * cols, rows * cols]).unwrap();
    assert_eq!(c.parallel_extent(), Some(rows));
    let one = jit(&c, &bufs, 1);
    for threads in [2, 4, 7] {
        assert_eq!(
            bits(&one),
            bits(&jit(&c, &bufs, threads)),
            "{threads} threads"
        );
    }
    assert_close(
        &interpret(&k, &bufs),
        &one,
        TRANSCENDENTAL,
        "softmax 257x31",
    );
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

#[test]
fn loop_carried_scalars_are_not_split() {
    // Prefix sum: out[i] = Σ_{j<=i} in[j]; the scalar carries across rows.
    let n = 64;
    let k = LoopKernel {
        vars: 1,
        scalars: 1,
        body: vec![lp(
            0,
            n,
            vec![
                set(
                    0,
                    Expr::Get(0).bin(BinOp::Add, Expr::load(0, Index::var(0, 1))),
                ),
                store(1, Index::var(0, 1), Expr::Get(0)),
            ],
        )],
    };
    let c = CompiledLoop::compile(&k, &[n, n]).unwrap();
    assert_eq!(c.parallel_extent(), None);
    let out = check(&k, &[vec![1.0; n], vec![0.0; n]], EXACT, "prefix sum");
    assert_eq!(out[1][n - 1], n as f32);
}

#[test]
fn unsplittable_bodies_scalars_and_dead_code() {
    // Top-level statements (no single outer loop), a scalar read before any
    // Set (it starts at 0), an in-place update, a zero-trip loop and an
    // empty guard.
    let k = LoopKernel {
        vars: 2,
        scalars: 2,
        body: vec![
            store(
                1,
                Index::constant(0),
                Expr::Get(1).bin(BinOp::Add, Expr::Const(3.0)),
            ),
            set(0, Expr::Const(0.0)),
            lp(
                0,
                5,
                vec![
                    set(
                        0,
                        Expr::Get(0).bin(BinOp::Add, Expr::load(0, Index::var(0, 1))),
                    ),
                    store(
                        0,
                        Index::var(0, 1),
                        Expr::load(0, Index::var(0, 1)).un(UnOp::Relu),
                    ),
                ],
            ),
            store(1, Index::constant(1), Expr::Get(0)),
            lp(
                1,
                0,
                vec![store(1, Index::var(1, 1).shift(50), Expr::Const(9.0))],
            ),
            Stmt::IfInBounds {
                conds: vec![(Index::constant(0), 0)],
                body: vec![store(1, Index::constant(99), Expr::Const(9.0))],
            },
        ],
    };
    let bufs = vec![vec![1.0, -2.0, 3.0, -4.0, 5.0], vec![0.0; 2]];
    let c = CompiledLoop::compile(&k, &[5, 2]).unwrap();
    assert_eq!(c.parallel_extent(), None);
    let out = check(&k, &bufs, EXACT, "mixed body");
    assert_eq!(out[0], [1.0, 0.0, 3.0, 0.0, 5.0]);
    assert_eq!(out[1], [3.0, 3.0]);
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
fn clif_text_is_available_and_deterministic() {
    let k = softmax_kernel(3, 5);
    let text = compile_clif_text(&k, &[15, 15]).unwrap();
    assert_eq!(text, compile_clif_text(&k, &[15, 15]).unwrap());
    let c = CompiledLoop::compile(&k, &[15, 15]).unwrap();
    assert_eq!(c.clif(), text);
    assert!(text.starts_with("function "), "{text}");
    for needle in ["load.f32", "store", "brif", "fcmp", "f32x4"] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[test]
fn both_opt_levels_agree() {
    let (rows, cols) = (9, 17);
    let k = softmax_kernel(rows, cols);
    let bufs = vec![values(rows * cols, 71, -5.0, 5.0), vec![0.0; rows * cols]];
    let lens = [rows * cols, rows * cols];
    let none = CompiledLoop::compile_with_opt_level(&k, &lens, OptLevel::None).unwrap();
    let speed = CompiledLoop::compile_with_opt_level(&k, &lens, OptLevel::Speed).unwrap();
    assert_eq!(bits(&jit(&none, &bufs, 1)), bits(&jit(&speed, &bufs, 1)));
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
        let mut bufs = [values(n_in, 81, -8.0, 8.0), vec![0.0; n_out]];
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
                BufKind::Param(n) if n.ends_with("moving_var") => values(b.len, i as u64, 0.5, 1.5),
                BufKind::Input(_) | BufKind::Param(_) => values(b.len, i as u64, -1.0, 1.0),
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
