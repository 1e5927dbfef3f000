//! The optimizer's graph ops, built by hand and run by the reference
//! interpreter against the unfused ops they replace: conv2d / dense with
//! a fused activation, elementwise maps (with per-channel operands),
//! batchnorm folded into weights, and recurrent layers unrolled into cells.

mod common;
use common::*;
use netc_compiler::graph::NodeId;
use netc_compiler::kernel::KernelBody;
use netc_compiler::op::{
    Activation, CellKind, MapBinary, MapExpr, MapUnary, Op, Padding, ParamRole, Spatial,
};

const ACTS: [Activation; 4] = [
    Activation::Relu,
    Activation::LeakyRelu(0.2),
    Activation::Sigmoid,
    Activation::Tanh,
];

fn conv_op(activation: Option<Activation>) -> Op {
    Op::Conv2d {
        spatial: Spatial::Image,
        filters: 5,
        kernel: (3, 3),
        stride: (1, 1),
        padding: Padding::Same,
        activation,
    }
}

/// `x → conv (→ act)` with the activation separate or fused.
fn conv_graph(act: Activation, fused: bool) -> netc_compiler::Graph {
    let mut b = Builder::new("m");
    let x = b.input("x", &[6, 7, 3]);
    let w = b.param("c.weight", ParamRole::Weight);
    let bias = b.param("c.bias", ParamRole::Bias);
    let y = if fused {
        b.op(conv_op(Some(act)), "c", &[x, w, bias])
    } else {
        let c = b.op(conv_op(None), "c", &[x, w, bias]);
        b.op(Op::Activation(act), "act", &[c])
    };
    b.finish(&[("y", y)])
}

fn contractions(p: &netc_compiler::kernel::Program) -> usize {
    p.kernels
        .iter()
        .filter(|k| matches!(k.body, KernelBody::Contraction(_)))
        .count()
}

#[test]
fn conv2d_with_a_fused_activation_matches_conv2d_then_the_activation() {
    for act in ACTS {
        let (p0, want) = run(&conv_graph(act, false), 2);
        let (p1, got) = run(&conv_graph(act, true), 2);
        assert_eq!(got["y"], want["y"], "{act:?}");
        assert_eq!(
            p1.kernels.len() + 1,
            p0.kernels.len(),
            "{act:?}: one kernel fewer"
        );
        assert_eq!(contractions(&p1), 1);
    }
}

#[test]
fn dense_with_a_fused_activation_matches_dense_then_the_activation() {
    for act in ACTS {
        for bias in [false, true] {
            let g = |fused: bool| {
                let mut b = Builder::new("m");
                let x = b.input("x", &[4, 9]);
                let mut ins = vec![x, b.param("d.weight", ParamRole::Weight)];
                if bias {
                    ins.push(b.param("d.bias", ParamRole::Bias));
                }
                let op = |activation| Op::Dense {
                    units: 6,
                    activation,
                };
                let y = if fused {
                    b.op(op(Some(act)), "d", &ins)
                } else {
                    let d = b.op(op(None), "d", &ins);
                    b.op(Op::Activation(act), "act", &[d])
                };
                b.finish(&[("y", y)])
            };
            let (_, want) = run(&g(false), 3);
            let (p, got) = run(&g(true), 3);
            assert_eq!(got["y"], want["y"], "{act:?} bias {bias}");
            assert_eq!(p.kernels.len(), 1);
        }
    }
}

#[test]
fn a_map_computes_an_elementwise_chain_in_one_kernel() {
    // relu(a + b) · sigmoid(b), as three ops and as one map.
    let g = |fused: bool| {
        let mut bl = Builder::new("m");
        let a = bl.input("a", &[3, 4, 5]);
        let b = bl.input("b", &[3, 4, 5]);
        let y = if fused {
            let e = MapExpr::Input(0)
                .binary(MapBinary::Add, MapExpr::Input(1))
                .unary(MapUnary::Act(Activation::Relu))
                .binary(
                    MapBinary::Mul,
                    MapExpr::Input(1).unary(MapUnary::Act(Activation::Sigmoid)),
                );
            bl.op(Op::Map { expr: e }, "chain", &[a, b])
        } else {
            let s = bl.op(Op::Add, "add", &[a, b]);
            let r = bl.op(Op::Activation(Activation::Relu), "relu", &[s]);
            let sg = bl.op(Op::Activation(Activation::Sigmoid), "sig", &[b]);
            bl.op(Op::Mul, "mul", &[r, sg])
        };
        bl.finish(&[("y", y)])
    };
    let (p0, want) = run(&g(false), 2);
    let (p1, got) = run(&g(true), 2);
    assert_eq!(got["y"], want["y"]);
    assert_eq!((p0.kernels.len(), p1.kernels.len()), (4, 1));
}

#[test]
fn a_map_reuses_a_leaky_relu_argument_through_a_register() {
    let g = |fused: bool| {
        let mut bl = Builder::new("m");
        let a = bl.input("a", &[10]);
        let b = bl.input("b", &[10]);
        let act = Activation::LeakyRelu(0.3);
        let y = if fused {
            let e = MapExpr::Input(0)
                .binary(MapBinary::Mul, MapExpr::Input(1))
                .unary(MapUnary::Act(act));
            bl.op(Op::Map { expr: e }, "chain", &[a, b])
        } else {
            let m = bl.op(Op::Mul, "mul", &[a, b]);
            bl.op(Op::Activation(act), "act", &[m])
        };
        bl.finish(&[("y", y)])
    };
    assert_eq!(run(&g(true), 3).1["y"], run(&g(false), 3).1["y"]);
}

/// Inference batchnorm as a map: `(x − μ)·(γ / √(σ² + ε)) + β` with
/// per-channel parameters broadcast over the batch and spatial axes.
fn bn_expr(eps: f32) -> MapExpr {
    let inv = MapExpr::Input(1).binary(
        MapBinary::Div,
        MapExpr::Input(4)
            .binary(MapBinary::Add, MapExpr::Const(eps))
            .unary(MapUnary::Sqrt),
    );
    MapExpr::Input(0)
        .binary(MapBinary::Sub, MapExpr::Input(3))
        .binary(MapBinary::Mul, inv)
        .binary(MapBinary::Add, MapExpr::Input(2))
}

fn bn_params(b: &mut Builder, name: &str, c: usize) -> [NodeId; 4] {
    [
        ("gamma", ParamRole::Gamma),
        ("beta", ParamRole::Beta),
        ("moving_mean", ParamRole::MovingMean),
        ("moving_var", ParamRole::MovingVar),
    ]
    .map(|(p, role)| b.param_shaped(&format!("{name}.{p}"), role, &[c]))
}

#[test]
fn a_map_with_per_channel_operands_matches_batchnorm() {
    let g = |fused: bool| {
        let mut b = Builder::new("m");
        let x = b.input("x", &[4, 3, 6]);
        let [ga, be, mu, var] = bn_params(&mut b, "bn", 6);
        let y = if fused {
            b.op(
                Op::Map {
                    expr: bn_expr(1e-3),
                },
                "bn",
                &[x, ga, be, mu, var],
            )
        } else {
            b.op(
                Op::BatchNorm {
                    epsilon: 1e-3,
                    momentum: 0.99,
                },
                "bn",
                &[x, ga, be, mu, var],
            )
        };
        b.finish(&[("y", y)])
    };
    assert_eq!(run(&g(true), 2).1["y"], run(&g(false), 2).1["y"]);
}

#[test]
fn batchnorm_folded_into_conv_weights_matches_conv_then_batchnorm() {
    let eps = 1e-3;
    for bias in [true, false] {
        let g = |fused: bool| {
            let mut b = Builder::new("m");
            let x = b.input("x", &[6, 6, 3]);
            let w = b.param_shaped("c.weight", ParamRole::Weight, &[3, 3, 3, 5]);
            let cb = bias.then(|| b.param_shaped("c.bias", ParamRole::Bias, &[5]));
            let [ga, be, mu, var] = bn_params(&mut b, "bn", 5);
            let y = if fused {
                // w' = w·γ/√(σ²+ε) per output channel; b' = (b − μ)·γ/√(σ²+ε) + β.
                let scale = MapExpr::Input(1).binary(
                    MapBinary::Div,
                    MapExpr::Input(2)
                        .binary(MapBinary::Add, MapExpr::Const(eps))
                        .unary(MapUnary::Sqrt),
                );
                let w2 = b.op(
                    Op::Map {
                        expr: MapExpr::Input(0).binary(MapBinary::Mul, scale),
                    },
                    "c.fold_weight",
                    &[w, ga, var],
                );
                let b2 = match cb {
                    Some(cb) => b.op(
                        Op::Map { expr: bn_expr(eps) },
                        "c.fold_bias",
                        &[cb, ga, be, mu, var],
                    ),
                    None => {
                        // (0 − μ)·γ/√(σ²+ε) + β over inputs γ, β, μ, σ².
                        let e = MapExpr::Const(0.0)
                            .binary(MapBinary::Sub, MapExpr::Input(2))
                            .binary(
                                MapBinary::Mul,
                                MapExpr::Input(0).binary(
                                    MapBinary::Div,
                                    MapExpr::Input(3)
                                        .binary(MapBinary::Add, MapExpr::Const(eps))
                                        .unary(MapUnary::Sqrt),
                                ),
                            )
                            .binary(MapBinary::Add, MapExpr::Input(1));
                        b.op(Op::Map { expr: e }, "c.fold_bias", &[ga, be, mu, var])
                    }
                };
                b.op(conv_op(None), "c", &[x, w2, b2])
            } else {
                let mut ins = vec![x, w];
                ins.extend(cb);
                let c = b.op(conv_op(None), "c", &ins);
                b.op(
                    Op::BatchNorm {
                        epsilon: eps,
                        momentum: 0.99,
                    },
                    "bn",
                    &[c, ga, be, mu, var],
                )
            };
            b.finish(&[("y", y)])
        };
        let fused = g(true);
        let text = netc_compiler::graph_text::graph_text(&fused);
        // Folded weights have no batch axis.
        assert!(
            text.contains(
                "{expr: ($0 * ($1 / sqrt(($2 + 0.001))))} : [3, 3, 3, 5]  # c.fold_weight"
            ),
            "{text}"
        );
        let (_, want) = run(&g(false), 2);
        let (p, got) = run(&fused, 2);
        assert_close_scaled("folded", &got["y"], &want["y"], 1e-5);
        assert_eq!(contractions(&p), 1);
    }
}

/// A recurrent layer over `[t, f]` unrolled by hand into the optimizer's
/// form: one input projection for all gates and steps, then per step a
/// time slice and a cell; the output is the stacked hidden states or the
/// last one.
fn unrolled(
    cell: CellKind,
    t: usize,
    f: usize,
    u: usize,
    seq: bool,
    reverse: bool,
) -> netc_compiler::Graph {
    let mut b = Builder::new("m");
    let x = b.input("x", &[t, f]);
    let w = b.param("r.weight", ParamRole::Weight);
    let uw = b.param("r.recurrent_weight", ParamRole::Weight);
    let bias = b.param("r.bias", ParamRole::Bias);
    let rb = (cell == CellKind::Gru).then(|| b.param("r.recurrent_bias", ParamRole::Bias));
    let proj = b.op(
        Op::Dense {
            units: cell.gates() * u,
            activation: None,
        },
        "r.input",
        &[x, w, bias],
    );
    let mut state: Option<NodeId> = None;
    let mut hs = vec![None; t];
    for s in 0..t {
        let step = if reverse { t - 1 - s } else { s };
        let xt = b.op(Op::TimeSlice { step }, &format!("r.x{step}"), &[proj]);
        let mut ins = vec![xt, uw];
        ins.extend(rb);
        ins.extend(state);
        let c = b.op(
            Op::Cell {
                cell,
                units: u,
                has_state: state.is_some(),
                recurrent_bias: rb.is_some(),
            },
            &format!("r.t{step}"),
            &ins,
        );
        state = Some(c);
        hs[step] = Some(if cell == CellKind::Lstm {
            b.op(Op::Slice { start: 0, len: u }, &format!("r.h{step}"), &[c])
        } else {
            c
        });
    }
    let hs: Vec<NodeId> = hs.into_iter().map(Option::unwrap).collect();
    let y = if seq {
        b.op(Op::Stack, "r", &hs)
    } else {
        hs[if reverse { 0 } else { t - 1 }]
    };
    b.finish(&[("y", y)])
}

fn recurrent(
    cell: CellKind,
    t: usize,
    f: usize,
    u: usize,
    seq: bool,
    reverse: bool,
) -> netc_compiler::Graph {
    let mut b = Builder::new("m");
    let x = b.input("x", &[t, f]);
    let mut ins = vec![
        x,
        b.param("r.weight", ParamRole::Weight),
        b.param("r.recurrent_weight", ParamRole::Weight),
        b.param("r.bias", ParamRole::Bias),
    ];
    if cell == CellKind::Gru {
        ins.push(b.param("r.recurrent_bias", ParamRole::Bias));
    }
    let y = b.op(
        Op::Recurrent {
            cell,
            units: u,
            return_sequences: seq,
            reverse,
            bias: true,
            return_state: false,
            initial_state: false,
            masked: false,
        },
        "r",
        &ins,
    );
    b.finish(&[("y", y)])
}

#[test]
fn unrolled_cells_match_the_recurrent_layer_exactly() {
    for cell in [CellKind::Rnn, CellKind::Lstm, CellKind::Gru] {
        for seq in [false, true] {
            for reverse in [false, true] {
                let what = format!("{cell:?} seq {seq} reverse {reverse}");
                let (_, want) = run(&recurrent(cell, 5, 3, 4, seq, reverse), 2);
                let (p, got) = run(&unrolled(cell, 5, 3, 4, seq, reverse), 2);
                assert_eq!(got["y"], want["y"], "{what}");
                // One projection, then one h·U per step after the first.
                assert_eq!(contractions(&p), 1 + 4, "{what}");
                // Time slices are read in place: no copy kernels.
                assert!(!p.kernels.iter().any(|k| k.name.contains(".x")), "{what}");
            }
        }
    }
}

#[test]
fn a_slice_feeding_a_dense_layer_is_copied() {
    let mut b = Builder::new("m");
    let x = b.input("x", &[8]);
    let s = b.op(Op::Slice { start: 2, len: 3 }, "s", &[x]);
    let w = b.param("d.weight", ParamRole::Weight);
    let d = b.op(
        Op::Dense {
            units: 2,
            activation: None,
        },
        "d",
        &[s, w],
    );
    let g = b.finish(&[("y", d), ("s", s)]);
    let (p, out) = run(&g, 2);
    assert_eq!(p.kernels.len(), 2);
    let xs: Vec<f32> = (0..16).map(|i| value("x", i)).collect();
    assert_eq!(out["s"], [&xs[2..5], &xs[10..13]].concat());
}

#[test]
fn new_ops_have_a_text_form() {
    let g = unrolled(CellKind::Lstm, 2, 3, 4, true, false);
    let text = netc_compiler::graph_text::graph_text(&g);
    insta::assert_snapshot!(text);
}
