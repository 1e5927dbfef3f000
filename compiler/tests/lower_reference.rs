//! The lowering's semantics checked against textbook implementations
//! written independently here (no kernel IR): recurrent cells in the
//! Keras formulation, softmax, batchnorm, padded pooling, concat.

use netc_compiler::kernel::{interp, BufKind, Program};
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};
use std::collections::HashMap;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// Lowers and runs with random params; returns (program, params by name, output).
fn run(
    src: &str,
    batch: usize,
    input: &[f32],
    seed: u64,
) -> (Program, HashMap<String, Vec<f32>>, Vec<f32>) {
    let ast = netc_lang::parse(src).unwrap();
    let checked = netc_compiler::check(&ast);
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    let p = Compilation::new(&checked.graphs[0], CompileOptions::at(OptLevel::O0))
        .program(batch)
        .unwrap();
    let mut rng = Rng(seed);
    let mut params = HashMap::new();
    let mut bufs: Vec<Vec<f32>> = p
        .buffers
        .iter()
        .map(|b| match &b.kind {
            BufKind::Input(_) => input.to_vec(),
            BufKind::Param(n) => {
                let mut v = rng.vec(b.len);
                if n.ends_with("moving_var") {
                    v.iter_mut().for_each(|x| *x = x.abs() + 0.5);
                }
                params.insert(n.clone(), v.clone());
                v
            }
            BufKind::Temp | BufKind::State(_) => vec![f32::NAN; b.len],
        })
        .collect();
    interp::run_program(&p, &mut bufs).unwrap();
    let out = bufs[p.outputs[0].buf].clone();
    (p, params, out)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `x[t]·W + h·U + b` for gate block `g`.
#[allow(clippy::too_many_arguments)]
fn gate(
    x: &[f32],
    h: &[f32],
    w: &[f32],
    u_w: &[f32],
    b: Option<&[f32]>,
    g: usize,
    j: usize,
    units: usize,
    gu: usize,
) -> (f32, f32) {
    let col = g * units + j;
    let xw: f32 = x
        .iter()
        .enumerate()
        .map(|(i, xi)| xi * w[i * gu + col])
        .sum::<f32>()
        + b.map_or(0.0, |b| b[col]);
    let hu: f32 = h
        .iter()
        .enumerate()
        .map(|(i, hi)| hi * u_w[i * gu + col])
        .sum();
    (xw, hu)
}

/// Runs one recurrent layer over `[t, f]` for one example, returning all hidden states.
#[allow(clippy::too_many_arguments)]
fn reference_rnn(
    cell: &str,
    xs: &[f32],
    t: usize,
    f: usize,
    units: usize,
    p: &HashMap<String, Vec<f32>>,
    prefix: &str,
    reverse: bool,
) -> Vec<Vec<f32>> {
    let w = &p[&format!("{prefix}.weight")];
    let u_w = &p[&format!("{prefix}.recurrent_weight")];
    let b = p.get(&format!("{prefix}.bias")).map(|v| v.as_slice());
    let rb = p
        .get(&format!("{prefix}.recurrent_bias"))
        .map(|v| v.as_slice());
    let gates = match cell {
        "lstm" => 4,
        "gru" => 3,
        _ => 1,
    };
    let gu = gates * units;
    let mut h = vec![0f32; units];
    let mut c = vec![0f32; units];
    let mut out = vec![vec![]; t];
    let steps: Vec<usize> = if reverse {
        (0..t).rev().collect()
    } else {
        (0..t).collect()
    };
    for step in steps {
        let x = &xs[step * f..(step + 1) * f];
        let mut nh = vec![0f32; units];
        for j in 0..units {
            let z = |g: usize| gate(x, &h, w, u_w, b, g, j, units, gu);
            match cell {
                "rnn" => {
                    let (a, bb) = z(0);
                    nh[j] = (a + bb).tanh();
                }
                "lstm" => {
                    let s = |g| {
                        let (a, bb) = z(g);
                        a + bb
                    };
                    let (i, fg, g, o) = (sigmoid(s(0)), sigmoid(s(1)), s(2).tanh(), sigmoid(s(3)));
                    c[j] = fg * c[j] + i * g;
                    nh[j] = o * c[j].tanh();
                }
                _ => {
                    let r_b = |g: usize| rb.map_or(0.0, |rb| rb[g * units + j]);
                    let (xz, hz) = z(0);
                    let (xr, hr) = z(1);
                    let (xh, hh) = z(2);
                    let zg = sigmoid(xz + hz + r_b(0));
                    let rg = sigmoid(xr + hr + r_b(1));
                    let cand = (xh + rg * (hh + r_b(2))).tanh();
                    nh[j] = zg * h[j] + (1.0 - zg) * cand;
                }
            }
        }
        h = nh;
        out[step] = h.clone();
    }
    out
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "element {i}: {x} vs {y}\n{a:?}\n{b:?}"
        );
    }
}

#[test]
fn recurrent_cells_match_the_keras_formulas() {
    let (n, t, f, u) = (3, 5, 4, 6);
    for cell in ["rnn", "lstm", "gru"] {
        for (bidi, rs) in [(false, false), (false, true), (true, true), (true, false)] {
            let src = format!(
                "model m {{ input x: [{t}, {f}]  x -> {cell}({u}, return_sequences: {rs}, bidirectional: {bidi}) as r -> y  output y }}"
            );
            let xs = Rng(7).vec(n * t * f);
            let (_, p, out) = run(&src, n, &xs, 11);
            let mut want = Vec::new();
            for ex in 0..n {
                let x = &xs[ex * t * f..(ex + 1) * t * f];
                let dirs: Vec<Vec<Vec<f32>>> = if bidi {
                    vec![
                        reference_rnn(cell, x, t, f, u, &p, "r.forward", false),
                        reference_rnn(cell, x, t, f, u, &p, "r.backward", true),
                    ]
                } else {
                    vec![reference_rnn(cell, x, t, f, u, &p, "r", false)]
                };
                // The last state of the backward direction is the one at t = 0.
                let last = |d: usize| if d == 1 { 0 } else { t - 1 };
                if rs {
                    for step in 0..t {
                        for d in &dirs {
                            want.extend(&d[step]);
                        }
                    }
                } else {
                    for (i, d) in dirs.iter().enumerate() {
                        want.extend(&d[last(i)]);
                    }
                }
            }
            close(&out, &want, 1e-5);
        }
    }
}

#[test]
fn softmax_rows_sum_to_one_and_match() {
    let xs: Vec<f32> = Rng(3).vec(2 * 7).iter().map(|x| x * 50.0).collect();
    let (_, _, out) = run(
        "model m { input x: [7]  x -> softmax -> y  output y }",
        2,
        &xs,
        1,
    );
    for r in 0..2 {
        let row = &xs[r * 7..(r + 1) * 7];
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let s: f32 = row.iter().map(|x| (x - m).exp()).sum();
        let want: Vec<f32> = row.iter().map(|x| (x - m).exp() / s).collect();
        close(&out[r * 7..(r + 1) * 7], &want, 1e-6);
    }
}

#[test]
fn batchnorm_inference_form() {
    let xs = Rng(5).vec(3 * 4);
    let (_, p, out) = run(
        "model m { input x: [4]  x -> batchnorm(epsilon: 0.01) as bn -> y  output y }",
        3,
        &xs,
        2,
    );
    let want: Vec<f32> = (0..12)
        .map(|i| {
            let c = i % 4;
            (xs[i] - p["bn.moving_mean"][c]) / (p["bn.moving_var"][c] + 0.01).sqrt()
                * p["bn.gamma"][c]
                + p["bn.beta"][c]
        })
        .collect();
    close(&out, &want, 1e-6);
}

#[test]
fn avg_pool_same_padding_excludes_padding() {
    let xs: Vec<f32> = (0..9).map(|i| i as f32).collect();
    let (_, _, out) = run(
        "model m { input x: [3, 3, 1]  x -> avgpool2d(2, stride: 2, padding: same) -> y  output y }",
        1,
        &xs,
        0,
    );
    // windows: {0,1,3,4}, {2,5}, {6,7}, {8}
    close(&out, &[2.0, 3.5, 6.5, 8.0], 1e-6);
}

#[test]
fn conv_same_padding_and_stride() {
    // 1 channel, all-ones 3×3 filter, 'same' padding, stride 2 on 4×4 → 2×2.
    let xs: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let src = "model m { input x: [4, 4, 1]  x -> conv2d(1, 3, stride: 2, padding: same, bias: false) as c -> y  output y }";
    let ast = netc_lang::parse(src).unwrap();
    let checked = netc_compiler::check(&ast);
    let p = Compilation::new(&checked.graphs[0], CompileOptions::at(OptLevel::O0))
        .program(1)
        .unwrap();
    let mut bufs: Vec<Vec<f32>> = p
        .buffers
        .iter()
        .map(|b| match &b.kind {
            BufKind::Input(_) => xs.clone(),
            BufKind::Param(_) => vec![1.0; b.len],
            BufKind::Temp | BufKind::State(_) => vec![f32::NAN; b.len],
        })
        .collect();
    interp::run_program(&p, &mut bufs).unwrap();
    // TF 'same' for 4 with k3 s2: total pad 1 → top 0, bottom 1.
    // out(0,0) = sum rows 0-2, cols 0-2; out(0,1) = rows 0-2, cols 2-3 (+pad)...
    let sum = |r: std::ops::Range<usize>, c: std::ops::Range<usize>| -> f32 {
        r.flat_map(|i| c.clone().map(move |j| (i * 4 + j) as f32))
            .sum()
    };
    let want = [
        sum(0..3, 0..3),
        sum(0..3, 2..4),
        sum(2..4, 0..3),
        sum(2..4, 2..4),
    ];
    close(&bufs[p.outputs[0].buf], &want, 1e-6);
}

#[test]
fn concat_on_channels() {
    let xs: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let src =
        "model m { input x: [2, 2, 2]  a = x -> relu  x -> tanh -> concat(a) -> y  output y }";
    let (_, _, out) = run(src, 1, &xs, 0);
    let want: Vec<f32> = (0..4)
        .flat_map(|p| {
            let v = [xs[2 * p], xs[2 * p + 1]];
            [v[0].tanh(), v[1].tanh(), v[0].max(0.0), v[1].max(0.0)]
        })
        .collect();
    close(&out, &want, 1e-6);
}
