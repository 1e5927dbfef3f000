//! Shape and parameter-count cases worked by hand in the course notes
//! (`docs/golden.md`, items 7–10), through the whole front end.

mod common;
use common::check_ok;
use netc_compiler::summary::param_counts;
use netc_compiler::Shape;

/// Output shape of the layer named `layer` and the model's total params.
fn shape_and_params(src: &str, layer: &str) -> (Shape, usize) {
    let checked = check_ok(src);
    let g = &checked.graphs[0];
    let id =
        g.g.node_indices()
            .find(|n| g.node(*n).name == layer)
            .unwrap_or_else(|| panic!("no layer {layer}"));
    (
        g.node(id).shape.clone().expect("shape inferred"),
        param_counts(g, &[]).total,
    )
}

#[test]
fn golden_7_six_5x5_filters_on_32x32x3() {
    let src = "model m { input x: [32, 32, 3]  x -> conv2d(6, 5) as c -> y  output y }";
    assert_eq!(shape_and_params(src, "c"), (Shape(vec![28, 28, 6]), 456));
    let src = "model m { input x: [32, 32, 1]  x -> conv2d(6, 5) as c -> y  output y }";
    assert_eq!(shape_and_params(src, "c"), (Shape(vec![28, 28, 6]), 156));
}

#[test]
fn golden_8_stride_2_padding_1() {
    let src = "model m { input x: [5, 5, 3]  x -> conv2d(2, 3, stride: 2, padding: 1) as c -> y  output y }";
    assert_eq!(shape_and_params(src, "c"), (Shape(vec![3, 3, 2]), 56));
}

#[test]
fn golden_9_alexnet_first_layers() {
    let src = std::fs::read_to_string(common::root().join("examples/alexnet.net")).unwrap();
    let checked = check_ok(&src);
    let g = &checked.graphs[0];
    let spatial: Vec<usize> = g
        .layer_order()
        .into_iter()
        .filter(|n| {
            matches!(
                g.node(*n).op,
                netc_compiler::op::Op::Conv2d { .. } | netc_compiler::op::Op::Pool2d { .. }
            )
        })
        .map(|n| g.node(n).shape.as_ref().unwrap().0[0])
        .collect();
    // conv1 55, pool 27, conv2 27, pool 13, conv3-5 13, pool 6.
    assert_eq!(spatial, vec![55, 27, 27, 13, 13, 13, 13, 6]);
    let first = g.layer_order()[1];
    assert_eq!(g.node(first).shape, Some(Shape(vec![55, 55, 96])));
}

#[test]
fn golden_10_recurrent_161_weights_without_biases() {
    let src = "model m { input x: [5, 14]  x -> rnn(7, bias: false) -> dense(2, bias: false) -> y  output y }";
    let checked = check_ok(src);
    assert_eq!(param_counts(&checked.graphs[0], &[]).total, 161);
}

#[test]
fn same_padding_is_ceil_of_w_over_s() {
    let src = "model m { input x: [7, 7, 1]  x -> conv2d(1, 3, stride: 2, padding: same) as c -> y  output y }";
    assert_eq!(shape_and_params(src, "c").0, Shape(vec![4, 4, 1]));
}

#[test]
fn bidirectional_stacked_recurrent_shapes_and_counts() {
    let src = "model m { input x: [10, 3]  x -> lstm(4, layers: 2, bidirectional: true, return_sequences: true) as enc -> y  output y }";
    let checked = check_ok(src);
    let g = &checked.graphs[0];
    let out = g.outputs[0].1;
    assert_eq!(g.node(out).shape, Some(Shape(vec![10, 8])));
    // layer 0: 2 × 4·(4·(3+4)+4); layer 1 sees 8 features: 2 × 4·(4·(8+4)+4)
    assert_eq!(
        param_counts(g, &[]).total,
        2 * 4 * (4 * 7 + 4) + 2 * 4 * (4 * 12 + 4)
    );
}

#[test]
fn frozen_layers_are_counted_separately() {
    let src = "model m { input x: [4]  x -> dense(3) as a -> batchnorm as bn -> dense(2) as b -> y  output y }\ntrain m { freeze: [a] }";
    let checked = check_ok(src);
    let c = param_counts(&checked.graphs[0], &checked.trains[0].freeze);
    assert_eq!(
        (c.total, c.frozen, c.non_trainable, c.trainable),
        (15 + 12 + 8, 15, 6, 14)
    );
}
