//! Sequence to sequence: `repeat` (a vector copied at every step) and an
//! encoder's final state passed to a decoder (`return_state` /
//! `initial_state`). Shapes and diagnostics, hand-computed outputs, and the
//! interpreter against the CPU backend and the GPU launch geometry on
//! forward and training programs. (Gradients against finite differences
//! are in compiler/tests/gradcheck.rs.)

mod common;
use common::*;

use netc_compiler::kernel::interp;
use netc_compiler::kernel::ir::BufKind;
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};

/// Runs `src`'s first model forward on `x` (batch `batch`) with every
/// parameter set to `param`; returns output 0.
fn forward(src: &str, level: OptLevel, batch: usize, x: &[f32], param: f32) -> Vec<f32> {
    let checked = check_ok(src);
    let p = Compilation::new(&checked.graphs[0], CompileOptions::at(level))
        .program(batch)
        .unwrap();
    let mut bufs: Vec<Vec<f32>> = p
        .buffers
        .iter()
        .map(|b| match b.kind {
            BufKind::Input(_) => x.to_vec(),
            BufKind::Param(_) => vec![param; b.len],
            _ => vec![f32::NAN; b.len],
        })
        .collect();
    interp::run_program(&p, &mut bufs).unwrap();
    bufs[p.outputs[0].buf].clone()
}

/// The first diagnostic of `src` with `code`.
fn diagnostic(src: &str, code: &str) -> netc_lang::Diagnostic {
    let checked = netc_compiler::check(&netc_lang::parse(src).unwrap());
    checked
        .diagnostics
        .iter()
        .find(|d| d.code == code)
        .cloned()
        .unwrap_or_else(|| panic!("no {code} for {src}: {:?}", checked.diagnostics))
}

#[test]
fn repeat_shapes_and_errors() {
    let checked = check_ok(
        "model m { input x: [5]  x -> repeat(3) as r -> lstm(2, return_sequences: true) -> y  output y }",
    );
    let g = &checked.graphs[0];
    let r =
        g.g.node_indices()
            .find(|&n| g.node(n).name == "r")
            .unwrap();
    assert_eq!(g.node(r).shape.as_ref().unwrap().0, vec![3, 5]);
    // A sequence is not a vector.
    let d = diagnostic(
        "model m { input x: [4, 5]  x -> repeat(3) -> y  output y }",
        "E0204",
    );
    assert!(d.message.contains("[N, F]"), "{}", d.message);
    // `times` is required and positive.
    diagnostic("model m { input x: [5]  x -> repeat -> y  output y }", "E0103");
    diagnostic(
        "model m { input x: [5]  x -> repeat(0) -> y  output y }",
        "E0105",
    );
}

#[test]
fn repeat_hand_computed_outputs() {
    let src = "model m { input x: [2]  x -> repeat(3) -> y  output y }";
    for level in [OptLevel::O0, OptLevel::O1] {
        let y = forward(src, level, 2, &[1.0, -2.0, 3.5, 0.25], 0.0);
        assert_eq!(
            y,
            vec![1.0, -2.0, 1.0, -2.0, 1.0, -2.0, 3.5, 0.25, 3.5, 0.25, 3.5, 0.25]
        );
    }
}

/// The Keras addition model in miniature: encoder → repeat → decoder →
/// a softmax per output step, trained on per-step class indices.
fn repeat_model(cell: &str) -> String {
    format!(
        "model m {{
  input x: [4, 3]
  x -> {cell}(5) as encoder -> repeat(3) -> {cell}(4, return_sequences: true) as decoder
    -> dense(3) -> softmax -> probs
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
fn repeat_interpreter_cpu_backend_and_gpu_geometry_agree() {
    for cell in ["lstm", "gru"] {
        let checked = check_ok(&repeat_model(cell));
        let cfg = checked.train_for("m").unwrap();
        for (what, p) in forward_and_training_programs(&checked.graphs[0], cfg) {
            let init = program_buffers(&p, 0x2b99_7a3c_11d0_5e41);
            backends_agree(&format!("repeat {cell} {what}"), &p, &init);
        }
    }
}
