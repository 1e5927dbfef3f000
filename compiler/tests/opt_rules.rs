//! One test per optimizer rule: it fires on a model made for it, the
//! graph's cost goes down, and the optimized program computes what the
//! unoptimized one does (reference interpreter). Plus the cases where a
//! rule must not fire.

mod common;
use common::*;
use netc_compiler::graph::Graph;
use netc_compiler::op::Op;
use netc_compiler::opt::{optimize, OptOptions, OptReport};
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};

fn opt(src: &str) -> (Graph, Graph, OptReport) {
    let g = model(src);
    let (o, r) = optimize(&g, &OptOptions::default());
    assert_eq!(r.fallback, None, "{r:?}");
    (g, o, r)
}

/// Fires `rule` at least once, lowers the cost, and keeps the outputs
/// within 1e-5 relative (bitwise for most rules).
fn fires(rule: &str, src: &str) -> (Graph, OptReport) {
    let (g, o, r) = opt(src);
    assert!(r.count(rule) >= 1, "`{rule}` did not fire: {:?}", r.fired);
    assert!(
        r.cost_after < r.cost_before,
        "{rule}: cost {} -> {}",
        r.cost_before,
        r.cost_after
    );
    let (_, want) = run(&g, 2);
    let (_, got) = run(&o, 2);
    for (name, w) in &want {
        assert_close_scaled(name, &got[name], w, 1e-5);
    }
    (o, r)
}

fn count(g: &Graph, pred: impl Fn(&Op) -> bool) -> usize {
    g.g.node_indices().filter(|n| pred(&g.node(*n).op)).count()
}

fn text(g: &Graph) -> String {
    netc_compiler::graph_text::graph_text(g)
}

#[test]
fn conv2d_activation_rules() {
    for act in ["relu", "leaky_relu", "sigmoid", "tanh"] {
        let src = format!(
            "model m {{ input x: [8, 8, 3]  x -> conv2d(4, 3, padding: same) as c -> {act} -> y  output y }}"
        );
        let (o, _) = fires(&format!("conv2d-{act}"), &src);
        assert_eq!(
            count(&o, |op| matches!(op, Op::Activation(_))),
            0,
            "{}",
            text(&o)
        );
        assert!(
            text(&o).contains(&format!("activation: {act}")),
            "{}",
            text(&o)
        );
    }
}

#[test]
fn conv2d_without_bias_fuses_too() {
    fires(
        "conv2d-relu",
        "model m { input x: [8, 8, 3]  x -> conv2d(4, 3, bias: false) -> relu -> y  output y }",
    );
}

#[test]
fn dense_activation_rules() {
    for act in ["relu", "leaky_relu", "sigmoid", "tanh"] {
        let src =
            format!("model m {{ input x: [12]  x -> dense(5) as d -> {act} -> y  output y }}");
        let (o, _) = fires(&format!("dense-{act}"), &src);
        assert_eq!(o.g.node_count(), 4, "{}", text(&o));
    }
}

#[test]
fn a_shared_conv_output_is_not_fused() {
    // conv feeds both relu and the add: fusing would compute it twice.
    let (_, o, r) = opt("model m { input x: [6, 6, 2]
           c = x -> conv2d(2, 3, padding: same) as conv
           c -> relu -> a
           a -> add(c) -> y
           output y }");
    assert_eq!(r.count("conv2d-relu"), 0, "{}", text(&o));
    assert_eq!(count(&o, |op| matches!(op, Op::Conv2d { .. })), 1);
}

#[test]
fn softmax_is_not_fused() {
    let (_, o, _) = opt("model m { input x: [12]  x -> dense(5) -> softmax -> y  output y }");
    assert_eq!(count(&o, |op| matches!(op, Op::Activation(_))), 1);
}

#[test]
fn elementwise_chain() {
    let (o, r) = fires(
        "elementwise-chain",
        "model m { input a: [4, 4, 3]  input b: [4, 4, 3]
           a -> add(b) -> relu -> y  output y }",
    );
    assert_eq!(
        count(&o, |op| matches!(op, Op::Map { .. })),
        1,
        "{}",
        text(&o)
    );
    assert_eq!(count(&o, |op| matches!(op, Op::Add | Op::Activation(_))), 0);
    assert!(text(&o).contains("{expr: relu(($0 + $1))}"), "{}", text(&o));
    assert_eq!(r.nodes_after, 3);
}

#[test]
fn a_long_elementwise_chain_becomes_one_kernel() {
    let (o, _) = fires(
        "elementwise-chain",
        "model m { input a: [10]  input b: [10]
           a -> add(b) -> tanh -> add(b) -> sigmoid -> leaky_relu(alpha: 0.2) -> y  output y }",
    );
    assert_eq!(o.g.node_count(), 3, "{}", text(&o));
}

#[test]
fn dropout_inference() {
    let src = "model m { input x: [12]  x -> dense(5) -> dropout(0.5) -> y  output y }";
    let (o, _) = fires("dropout-inference", src);
    assert_eq!(count(&o, |op| matches!(op, Op::Dropout { .. })), 0);
    // Not when training.
    let opts = OptOptions {
        inference: false,
        ..OptOptions::default()
    };
    let (o, r) = optimize(&model(src), &opts);
    assert_eq!(r.count("dropout-inference"), 0);
    assert_eq!(count(&o, |op| matches!(op, Op::Dropout { .. })), 1);
}

#[test]
fn conv2d_batchnorm_fold() {
    for bias in [true, false] {
        let (o, _) = fires(
            "conv2d-batchnorm-fold",
            &format!(
                "model m {{ input x: [12, 12, 3]
                   x -> conv2d(8, 3, bias: {bias}) as c -> batchnorm as bn -> relu -> y  output y }}"
            ),
        );
        let t = text(&o);
        assert_eq!(count(&o, |op| matches!(op, Op::BatchNorm { .. })), 0, "{t}");
        // The folded conv still takes the activation.
        assert!(t.contains("activation: relu"), "{t}");
        assert!(
            t.contains("# c.fold_weight") && t.contains("# c.fold_bias"),
            "{t}"
        );
    }
}

#[test]
fn dense_batchnorm_fold() {
    let (o, _) = fires(
        "dense-batchnorm-fold",
        "model m { input x: [20, 16]  x -> dense(32) as d -> batchnorm as bn -> y  output y }",
    );
    assert_eq!(
        count(&o, |op| matches!(op, Op::BatchNorm { .. })),
        0,
        "{}",
        text(&o)
    );
}

#[test]
fn batchnorm_is_not_folded_where_folding_costs_more() {
    // A 4096x4096 weight rescaled on every run costs more than one pass
    // over 4096 activations.
    let (_, o, r) =
        opt("model m { input x: [4096]  x -> dense(4096) -> batchnorm -> y  output y }");
    assert_eq!(r.count("dense-batchnorm-fold"), 0);
    // It becomes a map instead (same cost, same kernel count).
    assert_eq!(count(&o, |op| matches!(op, Op::Dense { .. })), 1);
}

#[test]
fn alias_pairs_cancel_or_merge() {
    // flatten then reshape back to the same shape: both go.
    let (o, _) = fires(
        "flatten-reshape",
        "model m { input x: [4, 4, 2]  x -> flatten -> reshape([4, 4, 2]) -> conv2d(3, 3) -> y  output y }",
    );
    assert_eq!(
        count(&o, |op| matches!(op, Op::Flatten | Op::Reshape { .. })),
        0,
        "{}",
        text(&o)
    );
    // reshape then flatten: one alias left.
    let (o, _) = fires(
        "reshape-flatten",
        "model m { input x: [4, 4, 2]  x -> reshape([8, 4]) -> flatten -> dense(3) -> y  output y }",
    );
    assert_eq!(
        count(&o, |op| matches!(op, Op::Flatten | Op::Reshape { .. })),
        1,
        "{}",
        text(&o)
    );
    fires(
        "reshape-reshape",
        "model m { input x: [4, 4, 2]  x -> reshape([8, 4]) -> reshape([32]) -> dense(3) -> y  output y }",
    );
    fires(
        "flatten-flatten",
        "model m { input x: [4, 4, 2]  x -> flatten -> flatten -> dense(3) -> y  output y }",
    );
}

#[test]
fn noop_aliases_go() {
    fires(
        "reshape-noop",
        "model m { input x: [4, 2]  x -> reshape([4, 2]) -> dense(3) -> y  output y }",
    );
    fires(
        "flatten-noop",
        "model m { input x: [8]  x -> flatten -> dense(3) -> y  output y }",
    );
}

fn cells(g: &Graph) -> usize {
    count(g, |op| matches!(op, Op::Cell { .. }))
}

#[test]
fn bptt_unroll_rules() {
    for (cell, rule) in [
        ("rnn", "bptt-unroll-rnn"),
        ("lstm", "bptt-unroll-lstm"),
        ("gru", "bptt-unroll-gru"),
    ] {
        for args in [
            "",
            ", return_sequences: true",
            ", bidirectional: true",
            ", layers: 2",
        ] {
            let src =
                format!("model m {{ input x: [7, 3]  x -> {cell}(5{args}) as r -> y  output y }}");
            let (o, r) = fires(rule, &src);
            let layers = if args.contains("bidirectional") || args.contains("layers") {
                2
            } else {
                1
            };
            assert_eq!(r.count(rule), layers, "{src}");
            assert_eq!(cells(&o), 7 * layers, "{src}\n{}", text(&o));
            assert_eq!(count(&o, |op| matches!(op, Op::Recurrent { .. })), 0);
            // Bitwise equal to the monolithic layer.
            assert_eq!(run(&o, 3).1, run(&model(&src), 3).1, "{src}");
        }
    }
}

#[test]
fn unrolled_cells_share_the_layer_parameters() {
    let (_, o, _) = opt("model m { input x: [4, 2]  x -> lstm(3) as l -> y  output y }");
    let u =
        o.g.node_indices()
            .find(|n| o.node(*n).name == "l.recurrent_weight")
            .unwrap();
    // The first step has no state and skips h·U; the other three read U.
    assert_eq!(o.users_of(u).len(), 4 - 1 + 1);
    let t = text(&o);
    insta::assert_snapshot!(t);
}

#[test]
fn the_unrolled_lstm_computes_all_gates_with_one_product_per_step() {
    // T = 6 steps: one input projection for all gates and steps, then one
    // h·U per step after the first — never one product per gate.
    let (_, o, _) = opt("model m { input x: [6, 4]  x -> lstm(8) -> y  output y }");
    let p = Compilation::new(&o, CompileOptions::at(OptLevel::O0))
        .program(2)
        .unwrap();
    let products = p
        .kernels
        .iter()
        .filter(|k| matches!(k.body, netc_compiler::kernel::KernelBody::Contraction(_)))
        .count();
    assert_eq!(products, 1 + 5);
}

#[test]
fn the_report_lists_limits_and_counts() {
    let (_, _, r) = opt("model m { input x: [8, 8, 3]  x -> conv2d(4, 3) -> relu -> y  output y }");
    assert_eq!(r.stop_reason, "saturated");
    assert!(r.iterations >= 1);
    assert!(r.egraph_nodes >= r.egraph_classes);
    let s = netc_compiler::opt::explain::explain("m", &r, true);
    assert!(
        s.contains("runner limits: 30 iterations, 100000 e-nodes, 1.0 s"),
        "{s}"
    );
    assert!(s.contains("conv2d-relu  1"), "{s}");
    assert!(s.contains("rules not fired:"), "{s}");
}

#[test]
fn tight_limits_are_reported_and_still_give_a_valid_graph() {
    let g = model("model m { input x: [6, 3]  x -> lstm(4) -> dense(2) -> relu -> y  output y }");
    let opts = OptOptions {
        iter_limit: 1,
        ..OptOptions::default()
    };
    let (o, r) = optimize(&g, &opts);
    assert_eq!(r.stop_reason, "iteration limit (1)");
    assert_eq!(r.fallback, None);
    assert_eq!(run(&o, 1).1, run(&g, 1).1);
}

#[test]
fn optimizing_twice_changes_nothing_more() {
    let g = model(
        "model m { input x: [8, 8, 3]  x -> conv2d(4, 3) -> relu -> flatten -> dense(3) -> dropout(0.1) -> y  output y }",
    );
    let (o1, _) = optimize(&g, &OptOptions::default());
    let (o2, r2) = optimize(&o1, &OptOptions::default());
    assert_eq!(text(&o1), text(&o2));
    assert_eq!(r2.cost_before, r2.cost_after);
}
