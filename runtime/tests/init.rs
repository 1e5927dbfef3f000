//! Deterministic initialization: same seed → same bits, per-layer streams,
//! the Keras-like rules and their statistics.

use netc_compiler::Graph;
use netc_runtime::{expected_params, init_plan, init_weights, Init, InitError, Tensor};

fn graph(src: &str) -> Graph {
    let ast = netc_lang::parse(src).unwrap();
    let checked = netc_compiler::check(&ast);
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    checked.graphs.into_iter().next().unwrap()
}

const MLP: &str = "
model mlp {
  input x: [64]
  x -> dense(32) as fc1 -> relu -> dense(16) as fc2 -> softmax -> y
  output y
}
";

/// MLP plus a layer after `fc2` and a batchnorm: `fc1` and `fc2` keep their
/// names, shapes and rules.
const MLP_PLUS: &str = "
model mlp {
  input x: [64]
  x -> dense(32) as fc1 -> relu -> dense(16) as fc2 -> batchnorm as bn
    -> dense(4) as fc3 -> softmax -> y
  output y
}
";

fn bits(t: &Tensor) -> Vec<u32> {
    t.data.iter().map(|v| v.to_bits()).collect()
}

fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn same_seed_gives_the_same_bits() {
    let g = graph(MLP);
    let a = init_weights(&g, 42).unwrap();
    let b = init_weights(&g, 42).unwrap();
    assert_eq!(a.len(), 4);
    for (name, t) in a.iter() {
        assert_eq!(bits(t), bits(b.get(name).unwrap()), "{name}");
    }
    // Parsing the source again gives the same weights too.
    let c = init_weights(&graph(MLP), 42).unwrap();
    assert_eq!(
        bits(a.get("fc1.weight").unwrap()),
        bits(c.get("fc1.weight").unwrap())
    );
    // The order is the graph's parameter order.
    let names: Vec<&str> = a.names().collect();
    let expected: Vec<String> = expected_params(&g).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, expected);
}

#[test]
fn different_seeds_and_layers_give_different_values() {
    let g = graph(MLP);
    let a = init_weights(&g, 1).unwrap();
    let b = init_weights(&g, 2).unwrap();
    for name in ["fc1.weight", "fc2.weight"] {
        let (x, y) = (a.get(name).unwrap(), b.get(name).unwrap());
        let same = x.data.iter().zip(&y.data).filter(|(p, q)| p == q).count();
        assert_eq!(same, 0, "{name}: {same} equal elements across seeds");
    }
    // Two layers with the same shape still get different values.
    let g = graph(
        "model twin {
           input x: [8]
           x -> dense(8) as p -> dense(8) as q -> y
           output y
         }",
    );
    let w = init_weights(&g, 0).unwrap();
    assert_ne!(
        w.get("p.weight").unwrap().data,
        w.get("q.weight").unwrap().data
    );
}

#[test]
fn adding_a_layer_leaves_other_layers_alone() {
    let a = init_weights(&graph(MLP), 7).unwrap();
    let b = init_weights(&graph(MLP_PLUS), 7).unwrap();
    for name in ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"] {
        assert_eq!(
            bits(a.get(name).unwrap()),
            bits(b.get(name).unwrap()),
            "{name}"
        );
    }
    assert_eq!(b.len(), 4 + 4 + 2);
}

#[test]
fn rules_follow_the_layers() {
    let g = graph(
        "model mix {
           input image: [12, 12, 3]
           image -> conv2d(filters: 8, kernel: 3) as c1 -> relu
                 -> conv2d(filters: 4, kernel: [3, 5]) as c2 -> leaky_relu(alpha: 0.2)
                 -> conv2d(filters: 2, kernel: 1) as c3 -> flatten
                 -> dense(10, activation: relu) as d1
                 -> dense(6) as d2 -> tanh -> batchnorm as bn -> y
           output y
         }",
    );
    let plan = init_plan(&g).unwrap();
    let rule = |name: &str| {
        plan.iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("{name} not in {plan:?}"))
            .2
    };
    assert_eq!(rule("c1.weight"), Init::HeNormal { fan_in: 27 });
    assert_eq!(rule("c2.weight"), Init::HeNormal { fan_in: 3 * 5 * 8 });
    assert_eq!(
        rule("c3.weight"),
        Init::GlorotUniform {
            fan_in: 4,
            fan_out: 2
        }
    );
    assert_eq!(rule("d1.weight"), Init::HeNormal { fan_in: 8 * 6 * 2 });
    assert_eq!(
        rule("d2.weight"),
        Init::GlorotUniform {
            fan_in: 10,
            fan_out: 6
        }
    );
    assert_eq!(rule("c1.bias"), Init::Zeros);
    assert_eq!(rule("bn.gamma"), Init::Ones);
    assert_eq!(rule("bn.beta"), Init::Zeros);
    assert_eq!(rule("bn.moving_mean"), Init::Zeros);
    assert_eq!(rule("bn.moving_var"), Init::Ones);

    let w = init_weights(&g, 3).unwrap();
    assert!(w.get("d1.bias").unwrap().data.iter().all(|&v| v == 0.0));
    assert!(w.get("bn.gamma").unwrap().data.iter().all(|&v| v == 1.0));
    assert!(w
        .get("bn.moving_var")
        .unwrap()
        .data
        .iter()
        .all(|&v| v == 1.0));
    assert!(w
        .get("bn.moving_mean")
        .unwrap()
        .data
        .iter()
        .all(|&v| v == 0.0));
    assert_eq!(w.get("bn.beta").unwrap().shape, vec![6]);
}

#[test]
fn he_normal_statistics() {
    // 1024 × 512 weights feeding a relu: std √(2/1024).
    let g = graph(
        "model big {
           input x: [1024]
           x -> dense(512) as fc -> relu -> y
           output y
         }",
    );
    let w = init_weights(&g, 123).unwrap();
    let t = w.get("fc.weight").unwrap();
    assert_eq!(t.shape, vec![1024, 512]);
    let want = (2.0f64 / 1024.0).sqrt();
    let (mean, std) = mean_std(&t.data);
    assert!((std / want - 1.0).abs() < 0.05, "std {std}, want {want}");
    assert!(mean.abs() < 0.01 * want, "mean {mean}");
    // Unbounded, unlike Glorot uniform: some values beyond 3 std.
    assert!(t.data.iter().any(|&v| (v as f64).abs() > 3.0 * want));
    // Roughly 68% within one std.
    let within = t.data.iter().filter(|&&v| (v as f64).abs() < want).count() as f64;
    assert!((within / t.len() as f64 - 0.6827).abs() < 0.01);
}

#[test]
fn glorot_uniform_statistics() {
    let g = graph(
        "model big {
           input image: [16, 16, 64]
           image -> conv2d(filters: 128, kernel: 3) as conv -> sigmoid -> y
           output y
         }",
    );
    let w = init_weights(&g, 9).unwrap();
    let t = w.get("conv.weight").unwrap();
    assert_eq!(t.shape, vec![3, 3, 64, 128]);
    let limit = (6.0f64 / (9.0 * 64.0 + 9.0 * 128.0)).sqrt();
    assert!(t.data.iter().all(|&v| (v as f64).abs() <= limit));
    let max = t.data.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()));
    assert!(max > 0.999 * limit, "max {max}, limit {limit}");
    let (mean, std) = mean_std(&t.data);
    let want = limit / 3.0f64.sqrt();
    assert!((std / want - 1.0).abs() < 0.02, "std {std}, want {want}");
    assert!(mean.abs() < 0.01 * limit);
}

#[test]
fn recurrent_weights_and_lstm_forget_bias() {
    let g = graph(
        "model seq {
           input series: [10, 3]
           series -> lstm(5) as l1 -> dense(1) as out -> sigmoid -> p
           output p
         }",
    );
    let plan = init_plan(&g).unwrap();
    let find = |name: &str| plan.iter().find(|(n, _, _)| n == name).unwrap().2;
    assert_eq!(
        find("l1.weight"),
        Init::GlorotUniform {
            fan_in: 3,
            fan_out: 20
        }
    );
    assert_eq!(
        find("l1.recurrent_weight"),
        Init::GlorotUniform {
            fan_in: 5,
            fan_out: 20
        }
    );
    assert_eq!(find("l1.bias"), Init::LstmBias { units: 5 });
    let w = init_weights(&g, 0).unwrap();
    let b = w.get("l1.bias").unwrap();
    assert_eq!(b.shape, vec![20]);
    let mut want = vec![0.0f32; 20];
    want[5..10].fill(1.0);
    assert_eq!(b.data, want);
    let rw = w.get("l1.recurrent_weight").unwrap();
    let limit = (6.0f64 / 25.0).sqrt();
    assert!(rw.data.iter().all(|&v| (v as f64).abs() <= limit));

    // GRU biases (bias and recurrent_bias) are all zeros.
    let g = graph(
        "model g {
           input s: [6, 2]
           s -> gru(4) as g1 -> y
           output y
         }",
    );
    let w = init_weights(&g, 0).unwrap();
    for name in ["g1.bias", "g1.recurrent_bias"] {
        let t = w.get(name).unwrap();
        assert_eq!(t.shape, vec![12], "{name}");
        assert!(t.data.iter().all(|&v| v == 0.0), "{name}");
    }
}

#[test]
fn models_with_errors_are_refused() {
    let ast = netc_lang::parse(
        "model bad {
           input x: [4, 4, 1]
           x -> conv2d(filters: 2, kernel: 9) as c -> y
           output y
         }",
    )
    .unwrap();
    let checked = netc_compiler::check(&ast);
    assert!(checked.has_errors());
    let g = &checked.graphs[0];
    let e = init_weights(g, 0).unwrap_err();
    assert!(matches!(e, InitError::NoShape { .. }), "{e}");
    assert!(e
        .to_string()
        .ends_with("has no known shape (the model has errors)"));
}
