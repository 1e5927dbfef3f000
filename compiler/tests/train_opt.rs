//! The training graph through the optimizer: one training step's loss and
//! gradients agree between `-O0` and the optimized graph (run by the
//! reference interpreter), and the optimizer really rewrote the graph
//! (fusions fired in its forward part, autodiff's ops kept opaque).

use netc_compiler::autodiff::{differentiate, TrainingGraph};
use netc_compiler::kernel::{interp, lower::lower, BufKind, Program};
use netc_compiler::pipeline::{
    optimize_training, training_forward, Compilation, CompileOptions, OptLevel,
};
use netc_compiler::train::{Loss, Objective, TargetEncoding};
use std::collections::HashSet;

/// The training graph of `g` for `loss` at `level`, through the driver.
fn training_graph(g: &netc_compiler::Graph, loss: Loss, level: OptLevel) -> TrainingGraph {
    Compilation::new(g, CompileOptions::at(level))
        .training_graph(&Objective::new(loss))
        .unwrap()
}

/// The stages of `training_graph` at `-O1` one by one, for the optimizer's report.
fn differentiated(g: &netc_compiler::Graph, loss: Loss) -> TrainingGraph {
    let (forward, _) = training_forward(g, OptLevel::O1).unwrap();
    differentiate(
        &forward,
        loss,
        TargetEncoding::ClassIndices,
        &HashSet::new(),
    )
    .unwrap()
}

fn checked(src: &str) -> netc_compiler::Graph {
    let ast = netc_lang::parse(src).unwrap();
    let c = netc_compiler::check(&ast);
    assert!(!c.has_errors(), "{:?}", c.diagnostics);
    c.graphs[0].clone()
}

/// A value for element `i` of the tensor `name`, the same in every program.
fn value(name: &str, i: usize, classes: usize) -> f32 {
    if name == "target" {
        return (i % classes) as f32;
    }
    if name.ends_with(".mask") {
        return !(i * 13 + 3).is_multiple_of(4) as u8 as f32;
    }
    let h = name.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ b as u64).wrapping_mul(1099511628211)
    });
    let x = h.wrapping_add(i as u64).wrapping_mul(6364136223846793005) >> 40;
    ((x as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * 0.5
}

/// Loss and every gradient (by output name) of one step.
fn step(tg: &TrainingGraph, batch: usize, classes: usize) -> Vec<(String, Vec<f32>)> {
    let p: Program = lower(&tg.graph, batch).unwrap();
    let mut bufs: Vec<Vec<f32>> = p
        .buffers
        .iter()
        .map(|b| match &b.kind {
            BufKind::Input(n) | BufKind::Param(n) => {
                (0..b.len).map(|i| value(n, i, classes)).collect()
            }
            _ => vec![f32::NAN; b.len],
        })
        .collect();
    interp::run_program(&p, &mut bufs).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = p
        .outputs
        .iter()
        .map(|o| (o.name.clone(), bufs[o.buf].clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn agree(src: &str, loss: Loss, classes: usize) {
    let g = checked(src);
    let plain = training_graph(&g, loss, OptLevel::O0);
    let (forward, _) = training_forward(&g, OptLevel::O0).unwrap();
    let (opt, report) = optimize_training(
        differentiate(
            &forward,
            loss,
            TargetEncoding::ClassIndices,
            &HashSet::new(),
        )
        .unwrap(),
    );
    assert_eq!(report.fallback, None, "{src}");
    assert!(
        report.fired.iter().any(|(_, n)| *n > 0),
        "no rule fired on the training graph of {src}"
    );
    assert!(report.cost_after < report.cost_before, "{src}");
    let a = step(&plain, 2, classes);
    let b = step(&opt, 2, classes);
    assert_eq!(
        a.iter().map(|x| &x.0).collect::<Vec<_>>(),
        b.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(x.len(), y.len(), "{name}");
        for (i, (p, q)) in x.iter().zip(y).enumerate() {
            let err = (p - q).abs() / p.abs().max(q.abs()).max(1e-6);
            assert!(err < 1e-5, "{name}[{i}]: -O0 {p} vs optimized {q}\n{src}");
        }
    }
}

#[test]
fn cnn_training_step_agrees() {
    agree(
        "model m { input x: [6, 6, 1]
           x -> conv2d(3, 3) -> relu -> maxpool2d(2) -> flatten -> dense(5) -> relu -> dense(3) -> softmax -> y
           output y }",
        Loss::CrossEntropy,
        3,
    );
}

#[test]
fn batchnorm_mlp_training_step_agrees() {
    agree(
        "model m { input x: [6]
           x -> dense(8, activation: relu) as fc1 -> batchnorm as bn1 -> dropout(0.3)
             -> dense(5) -> leaky_relu(alpha: 0.1) -> batchnorm(momentum: 0.9) -> dense(3) -> softmax -> y
           output y }",
        Loss::CrossEntropy,
        3,
    );
}

#[test]
fn residual_dropout_training_step_agrees() {
    agree(
        "model m { input x: [4, 4, 2]
           a = x -> conv2d(2, 3, padding: same) -> relu
           b = a -> conv2d(2, 1) -> add(a) -> relu
           b -> flatten -> dense(4) -> tanh -> dropout(0.25) -> dense(2) -> sigmoid -> y
           output y }",
        Loss::BinaryCrossEntropy,
        2,
    );
}

#[test]
fn recurrent_training_steps_agree() {
    agree(
        "model m { input x: [5, 3]  x -> lstm(4, bidirectional: true) -> dense(4) -> relu -> dense(3) -> softmax -> y  output y }",
        Loss::CrossEntropy,
        3,
    );
    agree(
        "model m { input x: [5, 3]  x -> gru(4, return_sequences: true) -> dense(2) -> tanh -> y  output y }",
        Loss::Mse,
        2,
    );
}

#[test]
fn backward_elementwise_chains_fuse() {
    let src =
        "model m { input x: [5]  x -> dense(4) -> tanh -> sigmoid -> dense(2) -> y  output y }";
    agree(src, Loss::Mse, 2);
    let g = checked(src);
    let tg = training_graph(&g, Loss::Mse, OptLevel::O1);
    let act_grads = tg
        .graph
        .g
        .node_indices()
        .filter(|n| tg.graph.node(*n).op.name() == "act_grad")
        .count();
    // tanh's and sigmoid's gradients are one map kernel.
    assert_eq!(
        act_grads,
        0,
        "{}",
        netc_compiler::graph_text::graph_text(&tg.graph)
    );
}

/// `relu-pool_grad`: a pooling gradient over a relu's output takes the
/// relu's gradient into the same kernel, for max and average pooling,
/// tiling and overlapping windows, and the step still equals `-O0`.
#[test]
fn relu_gradient_fuses_into_the_pooling_gradient() {
    for pool in [
        "maxpool2d(2)",
        "avgpool2d(2)",
        "maxpool2d(3, stride: 2)",
        "avgpool2d(3, stride: 1, padding: same)",
    ] {
        let src = format!(
            "model m {{ input x: [7, 7, 2]
               x -> conv2d(4, 2) -> relu -> {pool} -> flatten -> dense(3) -> softmax -> y
               output y }}"
        );
        agree(&src, Loss::CrossEntropy, 3);
        let g = checked(&src);
        let (opt, report) = optimize_training(differentiated(&g, Loss::CrossEntropy));
        let fired = report
            .fired
            .iter()
            .find(|(r, _)| r == "relu-pool_grad")
            .map_or(0, |(_, n)| *n);
        assert_eq!(fired, 1, "{pool}");
        let text = netc_compiler::graph_text::graph_text(&opt.graph);
        assert!(text.contains("relu_mask"), "{pool}\n{text}");
        assert!(
            !opt.graph
                .g
                .node_indices()
                .any(|n| opt.graph.node(n).op.name() == "act_grad"),
            "{pool}: the relu's gradient is still a kernel of its own\n{text}"
        );
    }
}

/// A weight used at every time step gets one product `h_{t-1}ᵀ·dz_t` per
/// step. With every step's state in one time-major arena and the steps'
/// gate gradients stacked time major, their sum is one contraction whose
/// reduction runs over time and batch: `h` read in place inside the
/// states (rows `[h, c]` for an LSTM), `dz` from the stack's second step.
/// No buffer per step, no copy of `h`, no pass adding products. (Values:
/// `gradcheck.rs` against finite differences.) A GRU's recurrent `dz`
/// differs from the stacked one (its candidate block is scaled by `r`):
/// its products, one per step, accumulate into the gradient's buffer
/// (the first overwrites, the rest add), still reading `h` in place.
#[test]
fn a_recurrent_weight_gradient_is_one_contraction_over_the_steps() {
    use netc_compiler::kernel::ir::KernelBody;
    for (cell, gates, state) in [("rnn", 1, 4), ("lstm", 4, 8), ("gru", 3, 4)] {
        let g = checked(&format!(
            "model m {{ input x: [5, 3]  x -> {cell}(4) -> dense(2) -> softmax -> y  output y }}"
        ));
        let tg = training_graph(&g, Loss::CrossEntropy, OptLevel::O0);
        let (n, steps) = (2, 5);
        let p = lower(&tg.graph, n).unwrap();
        let out = p
            .outputs
            .iter()
            .find(|o| o.name.ends_with("recurrent_weight"))
            .unwrap()
            .buf;
        let writers: Vec<_> = p
            .kernels
            .iter()
            .filter(|k| match &k.body {
                KernelBody::Contraction(c) => c.c.0 == out,
                KernelBody::Loop(_) => netc_compiler::kernel::plan::touched(k).contains(&out),
            })
            .collect();
        if cell == "gru" {
            assert_eq!(writers.len(), steps - 1, "{cell}: {writers:#?}");
            for (i, k) in writers.iter().enumerate() {
                let KernelBody::Contraction(c) = &k.body else {
                    panic!("{} is not a contraction", k.name)
                };
                assert_eq!(c.accumulate, i > 0, "{}", k.name);
                assert_eq!(c.k_strides, [0, 0, state], "{}", k.name);
            }
            continue;
        }
        assert_eq!(writers.len(), 1, "{cell}: {writers:#?}");
        let KernelBody::Contraction(c) = &writers[0].body else {
            panic!("{cell}: {} is not a contraction", writers[0].name)
        };
        assert!(!c.accumulate, "{cell}");
        // Steps 1..5 (step 0's previous state is zero): (T − 1)·N rows,
        // each a state row apart, from the first state on.
        assert_eq!(c.k_dims, [1, 1, (steps - 1) * n], "{cell}");
        assert_eq!(c.k_strides, [0, 0, state], "{cell}");
        assert_eq!((c.a.1, c.m_dims, c.m_strides), (0, [1, 1, 4], [0, 0, 1]));
        assert!(p.buffers[c.a.0].name.ends_with(".states"), "{cell}");
        // dz from step 1 of the stack: N rows of G·U per step.
        assert_eq!((c.b.1, c.ldb, c.n), (n * gates * 4, gates * 4, gates * 4));
        assert!(
            !p.kernels
                .iter()
                .any(|k| k.name.ends_with(".h_prev") && matches!(k.body, KernelBody::Loop(_))),
            "{cell}: a copy of h remains"
        );
    }
}

/// An LSTM layer's input projection `x·W + b`, its steps' activated gates
/// and their gradients `dz` live in one time-major `[T, N, 4U]` buffer,
/// each step's slot overwritten in turn (projection, then the cell's
/// gates, then the gate-gradient kernel's `dz`): no buffer of that size
/// per role, and none per step. (Values: `gradcheck.rs`, and the
/// interpreter against the JIT on every example.)
#[test]
fn an_lstm_keeps_projection_gates_and_dz_in_one_buffer() {
    use netc_compiler::kernel::ir::{BufKind, KernelBody};
    let g =
        checked("model m { input x: [5, 3]  x -> lstm(4) -> dense(2) -> softmax -> y  output y }");
    let tg = training_graph(&g, Loss::CrossEntropy, OptLevel::O0);
    let (n, steps, gu) = (2, 5, 16);
    let p = lower(&tg.graph, n).unwrap();
    let big: Vec<usize> = (0..p.buffers.len())
        .filter(|&b| {
            matches!(p.buffers[b].kind, BufKind::Temp) && p.buffers[b].len == steps * n * gu
        })
        .collect();
    assert_eq!(
        big.len(),
        1,
        "{:#?}",
        big.iter().map(|b| &p.buffers[*b].name).collect::<Vec<_>>()
    );
    let stack = big[0];
    assert!(
        !p.buffers.iter().any(|b| b.name.ends_with(".gates")),
        "a step keeps its gates in a buffer of its own"
    );
    let writes = |name: &str| {
        let k = p
            .kernels
            .iter()
            .find(|k| k.name == name)
            .unwrap_or_else(|| panic!("no {name}"));
        match &k.body {
            KernelBody::Contraction(c) => c.c.0 == stack,
            KernelBody::Loop(_) => netc_compiler::kernel::plan::touched(k).contains(&stack),
        }
    };
    // The dense over all steps, every cell, every gate gradient.
    let proj = p
        .kernels
        .iter()
        .find(|k| matches!(&k.body, KernelBody::Contraction(c) if c.c.0 == stack))
        .expect("the projection writes the stack");
    let KernelBody::Contraction(c) = &proj.body else {
        unreachable!()
    };
    // Rows in (t, n) order: x [N, T, 3] read with steps 3 apart.
    assert_eq!((c.m_dims, c.m_strides), ([1, steps, n], [0, 3, steps * 3]));
    let named = |suffix: &str, grad: bool| {
        p.kernels
            .iter()
            .find(|k| k.name.ends_with(suffix) && k.name.starts_with("grad:") == grad)
            .unwrap_or_else(|| panic!("no kernel *{suffix}"))
            .name
            .clone()
    };
    for t in 0..steps {
        assert!(writes(&named(&format!(".t{t}"), false)), "step {t}'s cell");
        assert!(
            writes(&named(&format!(".t{t}.gates"), true)),
            "step {t}'s dz"
        );
    }
}

/// A step's state gradient `dz·Uᵀ + direct` has no kernel of its own (nor
/// has the stack of the steps' gate gradients): the
/// step's gate-gradient kernel stores the direct part (an LSTM's `f·dc`, a
/// GRU's `z·dh`) and the product writes (or, for a GRU, adds) `dz·Uᵀ` into
/// the same buffer. (Values: `gradcheck.rs` against finite differences.
/// An RNN's state gradient is the product alone, so autodiff has no node
/// for it.)
#[test]
fn state_gradients_are_written_by_the_gate_kernel_and_the_product() {
    use netc_compiler::op::{CellWrt, GradOp, Op};
    for cell in ["lstm", "gru"] {
        let g = checked(&format!(
            "model m {{ input x: [4, 3]  x -> {cell}(5) -> dense(2) -> softmax -> y  output y }}"
        ));
        let tg = training_graph(&g, Loss::CrossEntropy, OptLevel::O0);
        let states: Vec<String> = tg
            .graph
            .g
            .node_weights()
            .filter(|n| {
                matches!(
                    n.op,
                    Op::Grad(GradOp::CellGrad {
                        wrt: CellWrt::State,
                        ..
                    })
                )
            })
            .map(|n| n.name.clone())
            .collect();
        // Steps 1..3 each have a previous state to differentiate.
        assert_eq!(states.len(), 3, "{cell}: {states:?}");
        let p = lower(&tg.graph, 2).unwrap();
        for s in &states {
            assert!(
                !p.kernels.iter().any(|k| &k.name == s),
                "{cell}: state gradient {s} has a kernel of its own"
            );
        }
        // Nor does the stack of every step's gate gradients (the input
        // weight's and the bias's `dy`): each gate kernel writes its slot.
        let stacks: Vec<&str> = tg
            .graph
            .g
            .node_weights()
            .filter(|n| matches!(n.op, Op::Stack))
            .map(|n| n.name.as_str())
            .collect();
        assert!(!stacks.is_empty(), "{cell}");
        for s in stacks {
            assert!(
                !p.kernels.iter().any(|k| k.name == s),
                "{cell}: stack {s} has a kernel of its own"
            );
        }
    }
}

/// A recurrent layer over a series of one or two features: its input
/// weight's gradient `xᵀ·dz` and its bias's `Σ dz` are one loop kernel,
/// one pass over the time-major stack of gate gradients (a contraction
/// with one or two rows waits on its additions, and the bias re-read the
/// stack). Three features keep the contraction and the bias's own
/// kernel. (Values: `gradcheck.rs`, `rnn_lstm_gru_last_step`.)
#[test]
fn few_input_features_get_their_weight_and_bias_gradients_in_one_pass() {
    use netc_compiler::kernel::ir::KernelBody;
    use netc_compiler::kernel::plan::touched;
    for (features, fused) in [(1, true), (2, true), (3, false)] {
        let g = checked(&format!(
            "model m {{ input x: [5, {features}]  x -> lstm(4) -> dense(2) -> softmax -> y  output y }}"
        ));
        let tg = training_graph(&g, Loss::CrossEntropy, OptLevel::O0);
        let p = lower(&tg.graph, 2).unwrap();
        let out = |name: &str| p.outputs.iter().find(|o| o.name == name).unwrap().buf;
        let (w, b) = (out("grad:lstm_1.weight"), out("grad:lstm_1.bias"));
        let writers = |buf| {
            p.kernels
                .iter()
                .filter(|k| match &k.body {
                    KernelBody::Contraction(c) => c.c.0 == buf,
                    KernelBody::Loop(_) => touched(k).contains(&buf),
                })
                .map(|k| k.name.clone())
                .collect::<Vec<_>>()
        };
        let (ww, bw) = (writers(w), writers(b));
        assert_eq!(ww.len(), 1, "{features}: {ww:?}");
        assert_eq!(ww == bw, fused, "{features}: {ww:?} {bw:?}");
    }
}
