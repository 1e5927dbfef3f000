//! The 1-D layers over sequences `[T, F]` — `conv1d`, `maxpool1d`,
//! `avgpool1d`, `global_maxpool1d`, `global_avgpool1d` — which netc
//! computes as the 2-D ops on the height-1 image `[1, T, F]`: shapes,
//! parameters and 1-D wording of the diagnostics, hand-computed outputs
//! and gradients, and the interpreter against the CPU backend and the GPU
//! launch geometry on forward and training programs. (Gradients against
//! finite differences are in compiler/tests/gradcheck.rs; the rendered
//! diagnostics are snapshots of tests/diagnostics/*1d*.net.)

mod common;
use common::*;

use netc_compiler::kernel::ir::BufKind;
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};

fn diagnostics(src: &str) -> Vec<netc_lang::Diagnostic> {
    netc_compiler::check(&netc_lang::parse(src).unwrap()).diagnostics
}

fn find<'d>(d: &'d [netc_lang::Diagnostic], code: &str) -> &'d netc_lang::Diagnostic {
    d.iter()
        .find(|d| d.code == code)
        .unwrap_or_else(|| panic!("no {code} in {d:#?}"))
}

/// `x: [SHAPE] -> LAYER -> y`.
fn one_layer(shape: &str, layer: &str) -> String {
    format!("model m {{\n  input x: [{shape}]\n  x -> {layer} -> y\n  output y\n}}\n")
}

/// A text classifier over every 1-D layer: ids → embedding → conv1d →
/// maxpool1d → avgpool1d → conv1d → global pool → dense → softmax.
fn classifier(global: &str) -> String {
    format!(
        "model m {{
  input words: tokens[12]
  words -> embedding(9, 3) as emb
        -> conv1d(4, 3, padding: same, activation: relu) as c1
        -> maxpool1d(3, stride: 2) as p1
        -> avgpool1d(2, stride: 1, padding: 1) as p2
        -> conv1d(5, 2, stride: 2) as c2 -> relu
        -> {global} as g
        -> dense(3) as out -> softmax -> probs
  output probs
}}
train m {{
  loss: cross_entropy
  optimizer: adam(lr: 0.01)
  batch: 3
  epochs: 1
}}
"
    )
}

#[test]
fn shapes_and_parameters() {
    let checked = check_ok(&classifier("global_maxpool1d"));
    let g = &checked.graphs[0];
    let shape = |name: &str| {
        let n =
            g.g.node_indices()
                .find(|&n| g.node(n).name == name)
                .unwrap();
        (
            g.node(n).op.name(),
            g.node(n).shape.as_ref().unwrap().0.clone(),
        )
    };
    // 12 → same → 12; (12 − 3)/2 + 1 = 5 (W0203: step 11 dropped);
    // (5 − 2 + 2)/1 + 1 = 6; (6 − 2)/2 + 1 = 3.
    assert_eq!(shape("c1"), ("conv1d", vec![12, 4]));
    assert_eq!(shape("p1"), ("maxpool1d", vec![5, 4]));
    assert_eq!(shape("p2"), ("avgpool1d", vec![6, 4]));
    assert_eq!(shape("c2"), ("conv1d", vec![3, 5]));
    assert_eq!(shape("g"), ("global_maxpool1d", vec![5]));
    assert!(checked.diagnostics.iter().any(|d| d.code == "W0203"
        && d.message.contains("(maxpool1d)")
        && d.message.contains("the length")));
    // Weights are [K, C, filters], Keras's Conv1D layout.
    let weight = |name: &str| {
        let n =
            g.g.node_indices()
                .find(|&n| g.node(n).name == name)
                .unwrap();
        g.node(n).shape.as_ref().unwrap().0.clone()
    };
    assert_eq!(weight("c1.weight"), vec![3, 3, 4]);
    assert_eq!(weight("c2.weight"), vec![2, 4, 5]);
    // embedding 9·3; c1 3·3·4 + 4; c2 2·4·5 + 5; out 5·3 + 3.
    let counts = netc_compiler::summary::param_counts(g, &[]);
    assert_eq!(counts.total, 27 + 40 + 45 + 18);
    let summary = netc_compiler::summary::summary(g, &[]);
    assert!(summary.contains("c2 (conv1d)"), "{summary}");
    assert!(summary.contains("[N, 3, 5]"), "{summary}");
    // The graph text writes 1-D windows as integers.
    let text = netc_compiler::graph_text::graph_text(g);
    assert!(
        text.contains("{filters: 5, kernel: 2, stride: 2, padding: valid}"),
        "{text}"
    );
    assert!(
        text.contains("avgpool1d(%") && text.contains("{size: 2, stride: 1, padding: 1}"),
        "{text}"
    );
}

#[test]
fn diagnostics_speak_of_sequences() {
    for layer in [
        "conv1d(4, 3)",
        "maxpool1d(2)",
        "avgpool1d(2)",
        "global_maxpool1d",
        "global_avgpool1d",
    ] {
        let kind = layer.split('(').next().unwrap();
        // An image and a vector are not sequences.
        for (shape, hint) in [("6, 6, 2", "2-D layers"), ("8", "reshape([8, 1])")] {
            let d = diagnostics(&one_layer(shape, layer));
            let e = find(&d, "E0204");
            assert!(
                e.message.contains(&format!("({kind}) expects [N, T, F]")),
                "{}",
                e.message
            );
            assert!(e.notes.iter().any(|n| n.contains(hint)), "{:?}", e.notes);
        }
        check_ok(&one_layer("6, 2", layer));
    }
    // A window longer than the (padded) sequence.
    let d = diagnostics(&one_layer("4, 2", "conv1d(3, 5)"));
    let e = find(&d, "E0201");
    assert!(e.message.contains("(conv1d)"), "{}", e.message);
    assert!(
        e.notes.iter().any(|n| n.starts_with("length: (4 − 5")),
        "{:?}",
        e.notes
    );
    check_ok(&one_layer("4, 2", "conv1d(3, 5, padding: 1)"));
    // A stride that does not divide: an error for conv1d, a warning for pooling.
    let d = diagnostics(&one_layer("10, 2", "conv1d(3, 3, stride: 2)"));
    assert!(find(&d, "E0202")
        .message
        .contains("the length of input [N, 10, 2]"));
    let d = diagnostics(&one_layer("10, 2", "avgpool1d(3, stride: 2)"));
    assert!(find(&d, "W0203").message.contains("(avgpool1d)"));
    // Pooling padding of the whole window.
    let d = diagnostics(&one_layer("10, 2", "maxpool1d(2, padding: 2)"));
    let e = find(&d, "E0210");
    assert!(
        e.notes.iter().any(|n| n.starts_with("length:")),
        "{:?}",
        e.notes
    );
    // 1-D windows are integers, not [h, w] pairs.
    for (layer, code) in [
        ("conv1d(3, [1, 3])", "E0104"),
        ("conv1d(3, 3, stride: [1, 2])", "E0104"),
        ("conv1d(3, 3, padding: [0, 1])", "E0104"),
        ("maxpool1d([2, 2])", "E0104"),
        ("conv1d(3, 0)", "E0105"),
        ("conv1d(3)", "E0103"),
        ("global_avgpool1d(size: 2)", "E0102"),
    ] {
        find(&diagnostics(&one_layer("10, 2", layer)), code);
    }
    // And a 2-D layer fed a sequence points at the 1-D ones.
    let d = diagnostics(&one_layer("10, 2", "conv2d(3, 3)"));
    let e = find(&d, "E0204");
    assert!(
        e.notes.iter().any(|n| n.contains("conv1d")),
        "{:?}",
        e.notes
    );
}

/// The sequence `[5, 2]` every golden case reads: steps (1, 0), (2, −1),
/// (0, 3), (−1, 1), (4, 2).
const X: [f32; 10] = [1.0, 0.0, 2.0, -1.0, 0.0, 3.0, -1.0, 1.0, 4.0, 2.0];

/// `layer` applied to [`X`], which an embedding table looks up (ids 0..5,
/// no padding id) so that the table's gradient is the gradient at `X`.
/// Returns the output, and from an `mse` training step against a zero
/// target the gradients of every parameter in `grads`. `params` fills
/// the layer's parameters.
fn golden(
    layer: &str,
    params: &[(&str, &[f32])],
    grads: &[&str],
    level: OptLevel,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let src = format!(
        "model s {{
  input ids: tokens[5]
  ids -> embedding(5, 2, padding: none) as e -> {layer} as l -> flatten -> y
  output y
}}
train s {{ loss: mse  optimizer: sgd(lr: 1.0)  batch: 1  epochs: 1 }}
"
    );
    let checked = check_ok(&src);
    let cfg = checked.train_for("s").unwrap();
    let c = Compilation::new(&checked.graphs[0], CompileOptions::at(level));
    let fill = |kind: &BufKind, len: usize| match kind {
        BufKind::Input(n) if n == "ids" => Some(vec![0.0, 1.0, 2.0, 3.0, 4.0]),
        BufKind::Input(n) if n == "target" => Some(vec![0.0; len]),
        BufKind::Param(n) if n == "e.weight" => Some(X.to_vec()),
        BufKind::Param(n) => params.iter().find(|(p, _)| p == n).map(|(_, v)| v.to_vec()),
        _ => None,
    };
    interp_output_and_grads(&c, cfg, fill, grads)
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{what}: {got:?} vs {want:?}");
    }
}

#[test]
fn hand_computed_conv1d() {
    // Weight [K = 2, C = 2, F = 1]: w0 = (1, 2), w1 = (−1, 0.5); bias 0.5.
    let w: &[f32] = &[1.0, 2.0, -1.0, 0.5];
    for level in [OptLevel::O0, OptLevel::O1] {
        let (y, g) = golden(
            "conv1d(1, 2)",
            &[("l.weight", w), ("l.bias", &[0.5])],
            &["e.weight", "l.weight", "l.bias"],
            level,
        );
        // y[t] = x[t]·w0 + x[t+1]·w1 + 0.5, e.g. y0 = 1 + (−2 − 0.5) + 0.5.
        assert_close("conv1d y", &y, &[-1.0, 2.0, 8.0, -1.5]);
        // mse over 4 values: dy = y/2 = (−0.5, 1, 4, −0.75).
        // dx[t] = dy[t]·w0 + dy[t−1]·w1.
        assert_close(
            "conv1d dx",
            &g[0],
            &[-0.5, -1.0, 1.5, 1.75, 3.0, 8.5, -4.75, 0.5, 0.75, -0.375],
        );
        // dw[k] = Σ_t dy[t]·x[t+k]; db = Σ dy.
        assert_close("conv1d dw", &g[1], &[2.25, 10.25, -8.0, 6.0]);
        assert_close("conv1d db", &g[2], &[3.75]);
    }
}

#[test]
fn hand_computed_conv1d_with_same_padding() {
    // w0 = (1, 0), w1 = (0, 1), w2 = (1, 1): y[t] = x[t−1].a + x[t].b +
    // (x[t+1].a + x[t+1].b), zeros past either end.
    let w: &[f32] = &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
    for level in [OptLevel::O0, OptLevel::O1] {
        let (y, g) = golden(
            "conv1d(1, 3, padding: same, bias: false)",
            &[("l.weight", w)],
            &["l.weight"],
            level,
        );
        assert_close("same y", &y, &[1.0, 3.0, 5.0, 7.0, 1.0]);
        // dy = 2y/5 = (0.4, 1.2, 2, 2.8, 0.4). dw[k] = Σ_t dy[t]·x[t + k − 1]:
        // dw0.a = 1.2·1 + 2·2 + 2.8·0 + 0.4·(−1) = 4.8,
        // dw0.b = 1.2·0 + 2·(−1) + 2.8·3 + 0.4·1 = 6.8,
        // dw1.a = 0.4·1 + 1.2·2 + 2·0 + 2.8·(−1) + 0.4·4 = 1.6,
        // dw1.b = 0.4·0 + 1.2·(−1) + 2·3 + 2.8·1 + 0.4·2 = 8.4,
        // dw2.a = 0.4·2 + 1.2·0 + 2·(−1) + 2.8·4 = 10,
        // dw2.b = 0.4·(−1) + 1.2·3 + 2·1 + 2.8·2 = 10.8.
        assert_close("same dw", &g[0], &[4.8, 6.8, 1.6, 8.4, 10.0, 10.8]);
    }
}

#[test]
fn hand_computed_pooling() {
    for level in [OptLevel::O0, OptLevel::O1] {
        // Windows t0..2 and t2..4: maxima a 2 (t1), b 3 (t2); a 4 (t4),
        // b 3 (t2). dy = y/2 = (1, 1.5, 2, 1.5): both b gradients land on
        // step 2.
        let (y, g) = golden("maxpool1d(3, stride: 2)", &[], &["e.weight"], level);
        assert_close("maxpool1d y", &y, &[2.0, 3.0, 4.0, 3.0]);
        assert_close(
            "maxpool1d dx",
            &g[0],
            &[0.0, 0.0, 1.0, 0.0, 0.0, 3.0, 0.0, 0.0, 2.0, 0.0],
        );
        // Same padding with size 2, stride 1 adds one step after the end,
        // which the last mean leaves out of its count.
        let (y, g) = golden(
            "avgpool1d(2, stride: 1, padding: same)",
            &[],
            &["e.weight"],
            level,
        );
        assert_close(
            "avgpool1d y",
            &y,
            &[1.5, -0.5, 1.0, 1.0, -0.5, 2.0, 1.5, 1.5, 4.0, 2.0],
        );
        // dy = y/5; dx[t] = dy[t]/2 + dy[t−1]/2, and all of dy[4] at step 4.
        assert_close(
            "avgpool1d dx",
            &g[0],
            &[0.15, -0.05, 0.25, 0.05, 0.05, 0.3, 0.1, 0.35, 0.95, 0.55],
        );
        let (y, g) = golden("global_maxpool1d", &[], &["e.weight"], level);
        assert_close("global_maxpool1d y", &y, &[4.0, 3.0]);
        assert_close(
            "global_maxpool1d dx",
            &g[0],
            &[0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 4.0, 0.0],
        );
        // Means 6/5 and 5/5; dy = y, spread as dy/5 over the 5 steps.
        let (y, g) = golden("global_avgpool1d", &[], &["e.weight"], level);
        assert_close("global_avgpool1d y", &y, &[1.2, 1.0]);
        assert_close("global_avgpool1d dx", &g[0], &[0.24, 0.2].repeat(5));
    }
}

#[test]
fn interpreter_cpu_backend_and_gpu_geometry_agree() {
    for global in ["global_maxpool1d", "global_avgpool1d"] {
        let checked = check_ok(&classifier(global));
        let cfg = checked.train_for("m").unwrap();
        for (what, p) in forward_and_training_programs(&checked.graphs[0], cfg) {
            let mut init = program_buffers(&p, 0x51_7cc1_b727_220a);
            let words = p.inputs.iter().find(|i| i.name == "words").unwrap();
            init[words.buf] = (0..36).map(|i| ((i * 7 + i / 5) % 9) as f32).collect();
            backends_agree(&format!("{global} {what}"), &p, &init);
        }
    }
}

/// `conv1d -> relu` and `activation: relu` fuse into the convolution's
/// epilogue at -O1 like conv2d's.
#[test]
fn the_activation_fuses_into_conv1d() {
    for layer in ["conv1d(4, 3, activation: relu)", "conv1d(4, 3) -> relu"] {
        let checked = check_ok(&one_layer("8, 2", layer));
        let c = Compilation::new(&checked.graphs[0], CompileOptions::at(OptLevel::O1));
        let g = c.forward().unwrap().graph;
        let ops: Vec<String> =
            g.g.node_indices()
                .map(|n| g.node(n).op.name().to_string() + &g.node(n).op.attrs())
                .collect();
        assert!(
            ops.iter()
                .any(|o| o.starts_with("conv1d") && o.contains("activation: relu")),
            "{ops:?}"
        );
        assert!(!ops.iter().any(|o| o == "relu"), "{ops:?}");
    }
}
