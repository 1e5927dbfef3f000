//! The lecture notes' worked convolution and pooling examples
//! (docs/golden.md items 1–6), lowered to kernel IR and run by the
//! reference interpreter.

use netc_compiler::kernel::{interp, BufKind};
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};
use std::collections::HashMap;

/// Lowers `src` for batch 1, fills the input and the named params, runs
/// the interpreter and returns the first output.
fn run(src: &str, input: &[f32], params: &[(&str, &[f32])]) -> Vec<f32> {
    let ast = netc_lang::parse(src).unwrap();
    let checked = netc_compiler::check(&ast);
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    let p = Compilation::new(&checked.graphs[0], CompileOptions::at(OptLevel::O0))
        .program(1)
        .unwrap();
    let given: HashMap<&str, &[f32]> = params.iter().copied().collect();
    let mut bufs: Vec<Vec<f32>> = p
        .buffers
        .iter()
        .map(|b| match &b.kind {
            BufKind::Input(_) => input.to_vec(),
            BufKind::Param(n) => given
                .get(n.as_str())
                .unwrap_or_else(|| panic!("no value for {n}"))
                .to_vec(),
            BufKind::Temp | BufKind::State(_) => vec![f32::NAN; b.len],
        })
        .collect();
    interp::run_program(&p, &mut bufs).unwrap();
    bufs[p.outputs[0].buf].clone()
}

fn flat(rows: &[&[f32]]) -> Vec<f32> {
    rows.iter().flat_map(|r| r.iter().copied()).collect()
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-5, "got {got:?}, want {want:?}");
    }
}

fn conv(h: usize, w: usize, k: usize, bias: bool) -> String {
    format!(
        "model m {{ input x: [{h}, {w}, 1]  x -> conv2d(1, {k}, bias: {bias}) as c -> y  output y }}"
    )
}

#[test]
fn golden_1_binary_image() {
    let image = flat(&[
        &[1., 1., 1., 0., 0.],
        &[0., 1., 1., 1., 0.],
        &[0., 0., 1., 1., 1.],
        &[0., 0., 1., 1., 0.],
        &[0., 1., 1., 0., 0.],
    ]);
    let filter = flat(&[&[1., 0., 1.], &[0., 1., 0.], &[1., 0., 1.]]);
    let y = run(&conv(5, 5, 3, false), &image, &[("c.weight", &filter)]);
    assert_close(&y, &flat(&[&[4., 3., 4.], &[2., 4., 3.], &[2., 3., 4.]]));
}

#[test]
fn golden_2_filter_with_bias() {
    let input = flat(&[&[2., 2., 1.], &[3., 1., -1.], &[4., 3., 2.]]);
    let filter = flat(&[&[1., -1.], &[-1., 0.]]);
    let y = run(
        &conv(3, 3, 2, true),
        &input,
        &[("c.weight", &filter), ("c.bias", &[2.0])],
    );
    assert_close(&y, &flat(&[&[-1., 2.], &[0., 1.]]));
}

const EDGE: [f32; 9] = [1., 0., -1., 1., 0., -1., 1., 0., -1.];

#[test]
fn golden_3_vertical_edge() {
    let input = flat(&[
        &[7., 2., 3., 3., 8.],
        &[4., 5., 3., 8., 4.],
        &[3., 3., 2., 8., 4.],
        &[2., 8., 7., 2., 7.],
        &[5., 4., 4., 5., 4.],
    ]);
    let y = run(&conv(5, 5, 3, false), &input, &[("c.weight", &EDGE)]);
    assert_close(
        &y,
        &flat(&[&[6., -9., -8.], &[-3., -2., -3.], &[-3., 0., -2.]]),
    );
}

#[test]
fn golden_4_step_image() {
    let input: Vec<f32> = (0..6).flat_map(|_| [10., 10., 10., 0., 0., 0.]).collect();
    let y = run(&conv(6, 6, 3, false), &input, &[("c.weight", &EDGE)]);
    let want: Vec<f32> = (0..4).flat_map(|_| [0., 30., 30., 0.]).collect();
    assert_close(&y, &want);
}

fn pool(h: usize, size: usize, stride: usize) -> String {
    format!("model m {{ input x: [{h}, {h}, 1]  x -> maxpool2d({size}, stride: {stride}) -> y  output y }}")
}

#[test]
fn golden_5_max_pool_3x3_stride_1() {
    let input = flat(&[
        &[3., 3., 2., 1., 0.],
        &[0., 0., 1., 3., 1.],
        &[3., 1., 2., 2., 3.],
        &[2., 0., 0., 2., 2.],
        &[2., 0., 0., 0., 1.],
    ]);
    let y = run(&pool(5, 3, 1), &input, &[]);
    assert_close(&y, &flat(&[&[3., 3., 3.], &[3., 3., 3.], &[3., 2., 3.]]));
}

#[test]
fn golden_6_max_pool_2x2() {
    let input = flat(&[
        &[1., 4., 2., 1.],
        &[5., 8., 3., 4.],
        &[7., 6., 4., 5.],
        &[1., 3., 1., 2.],
    ]);
    assert_close(
        &run(&pool(4, 2, 2), &input, &[]),
        &flat(&[&[8., 4.], &[7., 5.]]),
    );
    assert_close(
        &run(&pool(4, 2, 1), &input, &[]),
        &flat(&[&[8., 8., 4.], &[8., 8., 5.], &[7., 6., 5.]]),
    );
}
