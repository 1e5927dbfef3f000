//! The single-step form of a sequence model (`step::step_graph`): running
//! it token by token, carrying each recurrent layer's state from one call
//! to the next, gives the full model's output at every step; layers that
//! need the whole sequence are errors naming the layer.

use netc_compiler::kernel::{interp, Program};
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};
use netc_compiler::step::{step_graph, StepError};
use netc_compiler::Graph;
use std::collections::HashMap;

fn graph(src: &str) -> Graph {
    let checked = netc_compiler::check(&netc_lang::parse(src).unwrap());
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    checked.graphs[0].clone()
}

fn program(g: &Graph, batch: usize) -> Program {
    Compilation::new(g, CompileOptions::at(OptLevel::O0))
        .program(batch)
        .unwrap()
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// Buffers for `p` with parameters from `params` (by name), zero elsewhere.
fn buffers(p: &Program, params: &HashMap<String, Vec<f32>>) -> Vec<Vec<f32>> {
    let mut bufs: Vec<Vec<f32>> = p.buffers.iter().map(|b| vec![0.0; b.len]).collect();
    for b in &p.params {
        bufs[b.buf] = params[&b.name].clone();
    }
    bufs
}

fn buf_of(bindings: &[netc_compiler::kernel::ir::Binding], name: &str) -> usize {
    bindings.iter().find(|b| b.name == name).unwrap().buf
}

/// Runs the model over `t` steps whole and step by step, and compares
/// the output at every step (`per_step`: the output is `[T, …]`) or
/// after the last one.
fn agrees(src: &str, per_step: bool) {
    let g = graph(src);
    let batch = 2;
    let full = program(&g, batch);
    let step = step_graph(&g).unwrap();
    let sp = program(&step.graph, batch);
    let params: HashMap<String, Vec<f32>> = full
        .params
        .iter()
        .enumerate()
        .map(|(i, b)| {
            (
                b.name.clone(),
                values(full.buffers[b.buf].len, 7 + i as u64),
            )
        })
        .collect();
    let x_full = &full.inputs[0];
    let (t, f) = (x_full.shape[1], x_full.shape[2..].iter().product::<usize>());
    let x = match x_full.vocab {
        // Token ids, every one in the vocabulary (padding 0 included).
        Some(v) => (0..batch * t).map(|i| ((i * 3 + 1) % v) as f32).collect(),
        None => values(batch * t * f, 99),
    };

    let mut fb = buffers(&full, &params);
    fb[x_full.buf] = x.clone();
    interp::run_program(&full, &mut fb).unwrap();
    let want = &fb[full.outputs[0].buf];
    let out_len = want.len() / batch;

    let mut sb = buffers(&sp, &params);
    let x_step = sp.inputs[0].buf;
    let mut state: HashMap<String, Vec<f32>> = step
        .states
        .iter()
        .map(|s| (s.name.clone(), vec![0.0; batch * s.len]))
        .collect();
    for s in 0..t {
        for b in 0..batch {
            let at = (b * t + s) * f;
            sb[x_step][b * f..(b + 1) * f].copy_from_slice(&x[at..at + f]);
        }
        for st in &step.states {
            sb[buf_of(&sp.inputs, &st.name)] = state[&st.name].clone();
        }
        interp::run_program(&sp, &mut sb).unwrap();
        for st in &step.states {
            state.insert(st.name.clone(), sb[buf_of(&sp.outputs, &st.name)].clone());
        }
        let got = &sb[sp.outputs[0].buf];
        if per_step {
            let c = out_len / t;
            for b in 0..batch {
                let w = &want[b * out_len + s * c..b * out_len + (s + 1) * c];
                let g = &got[b * c..(b + 1) * c];
                for (w, g) in w.iter().zip(g) {
                    assert!(
                        (w - g).abs() < 1e-5,
                        "step {s}, example {b}: {w} vs {g}\n{src}"
                    );
                }
            }
        } else if s + 1 == t {
            for (w, g) in want.iter().zip(got) {
                assert!((w - g).abs() < 1e-5, "last step: {w} vs {g}\n{src}");
            }
        }
    }
}

#[test]
fn stacked_lstm_and_gru_tagger_agrees_at_every_step() {
    agrees(
        "model m { input x: [6, 3]  x -> lstm(5, return_sequences: true) as l1 \
         -> gru(4, return_sequences: true) as l2 -> dense(3) -> softmax -> y  output y }",
        true,
    );
}

#[test]
fn last_step_models_give_the_output_after_the_current_step() {
    agrees(
        "model m { input x: [5, 2]  x -> rnn(4) as r -> dense(2) -> y  output y }",
        false,
    );
    agrees(
        "model m { input x: [5, 2]  x -> lstm(3, bias: false) as l -> dense(2) -> y  output y }",
        false,
    );
}

#[test]
fn token_models_step_through_the_embedding() {
    agrees(
        "model m { input w: tokens[4]  w -> embedding(7, 3) as emb \
         -> lstm(4, return_sequences: true) as l -> dense(7) -> softmax -> y  output y }",
        true,
    );
}

#[test]
fn state_bindings_follow_the_layers() {
    let g = graph(
        "model m { input x: [6, 3]  x -> lstm(5, return_sequences: true) as l1 \
         -> gru(4) as l2 -> dense(3) -> y  output y }",
    );
    let s = step_graph(&g).unwrap();
    let names: Vec<(&str, usize)> = s.states.iter().map(|s| (s.name.as_str(), s.len)).collect();
    assert_eq!(names, [("l1.state", 10), ("l2.state", 4)]);
    let inputs: Vec<&str> = s
        .graph
        .inputs
        .iter()
        .map(|i| s.graph.node(*i).name.as_str())
        .collect();
    assert_eq!(inputs, ["x", "l1.state", "l2.state"]);
    let x = s.graph.node(s.graph.inputs[0]).shape.clone().unwrap();
    assert_eq!(x.0, [1, 3]);
}

#[test]
fn layers_that_need_the_whole_sequence_are_errors() {
    let bi = graph(
        "model m { input x: [6, 3]  x -> lstm(4, bidirectional: true) as enc -> dense(2) -> y  output y }",
    );
    assert_eq!(
        step_graph(&bi).unwrap_err(),
        StepError::Reversed {
            layer: "enc.backward".into()
        }
    );
    let flat = graph(
        "model m { input x: [6, 3]  x -> lstm(4, return_sequences: true) -> flatten as f -> dense(2) -> y  output y }",
    );
    let e = step_graph(&flat).unwrap_err();
    assert!(
        matches!(&e, StepError::MixesSteps { layer, .. } if layer == "f"),
        "{e}"
    );
    assert!(
        e.to_string().contains("`f` (flatten) mixes time steps"),
        "{e}"
    );
}
