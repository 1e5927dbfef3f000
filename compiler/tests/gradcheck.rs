//! Gradients from autodiff (lowered and run by the reference interpreter)
//! against central finite differences of the loss, for every op with a
//! gradient rule.

use netc_compiler::autodiff::differentiate;
use netc_compiler::kernel::{interp, lower::lower, BufKind, Program};
use netc_compiler::train::Loss;
use std::collections::HashMap;

struct Lcg(u64);
impl Lcg {
    fn f(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

struct Case {
    p: Program,
    bufs: Vec<Vec<f32>>,
    loss_buf: usize,
    grads: Vec<(String, usize, usize)>, // name, param buffer, grad buffer
}

fn setup(src: &str, loss: Loss, one_hot: bool, batch: usize, seed: u64) -> Case {
    let ast = netc_lang::parse(src).unwrap();
    let checked = netc_compiler::check(&ast);
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    let tg = differentiate(&checked.graphs[0], loss, one_hot, &[]).unwrap();
    let p = lower(&tg.graph, batch).unwrap();
    let mut rng = Lcg(seed);
    let classes = tg
        .graph
        .node(tg.prediction)
        .shape
        .as_ref()
        .unwrap()
        .0
        .last()
        .copied()
        .unwrap_or(1);
    let bufs: Vec<Vec<f32>> = p
        .buffers
        .iter()
        .map(|b| match &b.kind {
            BufKind::Input(n) if n == "target" => (0..b.len)
                .map(|i| match (loss, one_hot) {
                    (Loss::CrossEntropy, false) => ((i * 7 + seed as usize) % classes) as f32,
                    (Loss::CrossEntropy, true) => {
                        if i % classes == (i / classes + seed as usize) % classes {
                            1.0
                        } else {
                            0.0
                        }
                    }
                    (Loss::BinaryCrossEntropy, _) => ((i * 5 + 1) % 2) as f32,
                    (Loss::Mse, _) => rng.f(),
                })
                .collect(),
            BufKind::Input(n) if n.ends_with(".mask") => (0..b.len)
                .map(|i| ((i * 13 + 3) % 4 != 0) as u8 as f32)
                .collect(),
            BufKind::Input(_) => (0..b.len).map(|_| rng.f()).collect(),
            BufKind::Param(_) => (0..b.len).map(|_| 0.5 * rng.f()).collect(),
            BufKind::Temp | BufKind::State(_) => vec![f32::NAN; b.len],
        })
        .collect();
    let out = |name: &str| p.outputs.iter().find(|o| o.name == name).unwrap().buf;
    let loss_buf = out("loss");
    let grads = p
        .params
        .iter()
        .filter_map(|pb| {
            p.outputs
                .iter()
                .find(|o| o.name == format!("grad:{}", pb.name))
                .map(|o| (pb.name.clone(), pb.buf, o.buf))
        })
        .collect();
    Case {
        p,
        bufs,
        loss_buf,
        grads,
    }
}

fn mean_loss(c: &Case, bufs: &mut [Vec<f32>]) -> f64 {
    interp::run_program(&c.p, bufs).unwrap();
    let l = &bufs[c.loss_buf];
    l.iter().map(|x| *x as f64).sum::<f64>() / l.len() as f64
}

/// Checks every parameter's gradient at up to `per_param` elements.
fn check(src: &str, loss: Loss, one_hot: bool, batch: usize) {
    let c = setup(src, loss, one_hot, batch, 3);
    assert!(!c.grads.is_empty(), "no gradients for {src}");
    let mut bufs = c.bufs.clone();
    mean_loss(&c, &mut bufs);
    let analytic: HashMap<String, Vec<f32>> = c
        .grads
        .iter()
        .map(|(n, _, g)| (n.clone(), bufs[*g].clone()))
        .collect();
    let eps = 1e-3f32;
    let mut worst = 0f64;
    for (name, pbuf, _) in &c.grads {
        let len = c.bufs[*pbuf].len();
        let step = (len / 7).max(1);
        for i in (0..len).step_by(step).take(12) {
            let mut plus = c.bufs.clone();
            plus[*pbuf][i] += eps;
            let mut minus = c.bufs.clone();
            minus[*pbuf][i] -= eps;
            let numeric =
                (mean_loss(&c, &mut plus) - mean_loss(&c, &mut minus)) / (2.0 * eps as f64);
            let a = analytic[name][i] as f64;
            // Below 1e-2 in magnitude the f32 loss differences are dominated by
            // rounding, so the error is measured against 1e-2 there.
            let err = (a - numeric).abs() / (a.abs().max(numeric.abs()).max(1e-2));
            worst = worst.max(err);
            assert!(err < 1e-2, "{name}[{i}]: autodiff {a:.6} vs finite difference {numeric:.6} (rel err {err:.2e})\n{src}");
        }
    }
    assert!(worst.is_finite());
}

#[test]
fn dense_relu_softmax_cross_entropy() {
    check(
        "model m { input x: [5]  x -> dense(7) -> relu -> dense(4) -> softmax -> y  output y }",
        Loss::CrossEntropy,
        false,
        3,
    );
}

#[test]
fn cross_entropy_with_one_hot_targets() {
    check(
        "model m { input x: [5]  x -> dense(4) -> softmax -> y  output y }",
        Loss::CrossEntropy,
        true,
        2,
    );
}

#[test]
fn sigmoid_binary_cross_entropy_and_tanh_mse() {
    check(
        "model m { input x: [4]  x -> dense(3) -> tanh -> dense(1) -> sigmoid -> y  output y }",
        Loss::BinaryCrossEntropy,
        false,
        4,
    );
    check(
        "model m { input x: [4]  x -> dense(3) -> tanh -> dense(2) -> y  output y }",
        Loss::Mse,
        false,
        3,
    );
    // BCE and CE without a fused final activation.
    check(
        "model m { input x: [4]  x -> dense(2) -> sigmoid -> relu -> y  output y }",
        Loss::BinaryCrossEntropy,
        false,
        2,
    );
}

#[test]
fn softmax_in_the_middle() {
    check(
        "model m { input x: [4]  x -> dense(5) -> softmax -> dense(2) -> y  output y }",
        Loss::Mse,
        false,
        2,
    );
}

#[test]
fn conv_pool_dense() {
    check(
        "model m { input x: [7, 6, 2]
           x -> conv2d(3, 3, stride: 2, padding: same) -> relu -> maxpool2d(2, stride: 1) -> flatten -> dense(3) -> softmax -> y
           output y }",
        Loss::CrossEntropy,
        false,
        2,
    );
    check(
        "model m { input x: [6, 6, 1]
           x -> conv2d(2, 3) -> leaky_relu -> conv2d(2, 2, padding: 1) -> avgpool2d(2, padding: same) -> flatten -> dense(2) -> y
           output y }",
        Loss::Mse,
        false,
        2,
    );
}

#[test]
fn residual_concat_reshape_dropout() {
    check(
        "model m { input x: [4, 4, 2]
           a = x -> conv2d(2, 3, padding: same) -> relu
           b = a -> conv2d(2, 1) -> add(a) -> relu
           b -> concat(a) -> reshape([4, 16]) -> dense(3) -> dropout(0.25) -> flatten -> dense(2) -> softmax -> y
           output y }",
        Loss::CrossEntropy,
        false,
        2,
    );
}

#[test]
fn frozen_layers_get_no_gradient() {
    let ast = netc_lang::parse(
        "model m { input x: [3]  x -> dense(2) as a -> dense(2) as b -> y  output y }",
    )
    .unwrap();
    let checked = netc_compiler::check(&ast);
    let tg = differentiate(&checked.graphs[0], Loss::Mse, false, &["a".into()]).unwrap();
    let names: Vec<&str> = tg.grads.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["b.bias", "b.weight"]);
}

#[test]
fn strided_same_conv_and_overlapping_max_pool() {
    check("model m { input x: [7, 6, 2]  x -> conv2d(3, 3, stride: 2, padding: same) -> flatten -> dense(2) -> y  output y }", Loss::Mse, false, 2);
    check("model m { input x: [4, 3, 3]  x -> conv2d(3, 1) -> maxpool2d(2, stride: 1) -> flatten -> dense(2) -> y  output y }", Loss::Mse, false, 2);
}

#[test]
fn tiling_and_disjoint_pools() {
    // 2×2 stride 2 on an even size: every element in exactly one window
    // (the gradient is stored without zeroing first).
    check("model m { input x: [4, 4, 2]  x -> conv2d(2, 1) -> maxpool2d(2) -> flatten -> dense(2) -> y  output y }", Loss::Mse, false, 2);
    check("model m { input x: [4, 6, 2]  x -> conv2d(2, 1) -> avgpool2d(2) -> flatten -> dense(2) -> y  output y }", Loss::Mse, false, 2);
    // Odd size: the last row and column are in no window and get 0.
    check("model m { input x: [5, 5, 2]  x -> conv2d(2, 1) -> maxpool2d(2) -> flatten -> dense(2) -> y  output y }", Loss::Mse, false, 2);
}
