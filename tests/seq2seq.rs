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
    let r = g.g.node_indices().find(|&n| g.node(n).name == "r").unwrap();
    assert_eq!(g.node(r).shape.as_ref().unwrap().0, vec![3, 5]);
    // A sequence is not a vector.
    let d = diagnostic(
        "model m { input x: [4, 5]  x -> repeat(3) -> y  output y }",
        "E0204",
    );
    assert!(d.message.contains("[N, F]"), "{}", d.message);
    // `times` is required and positive.
    diagnostic(
        "model m { input x: [5]  x -> repeat -> y  output y }",
        "E0103",
    );
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

#[test]
fn state_shapes_and_errors() {
    // The final state: h for rnn and gru, h ++ c for an LSTM.
    for (cell, want) in [("rnn", 6), ("gru", 6), ("lstm", 12)] {
        let checked = check_ok(&format!(
            "model m {{ input x: [4, 3]  x -> {cell}(6, return_state: true) as enc -> y  output y }}"
        ));
        let g = &checked.graphs[0];
        let enc =
            g.g.node_indices()
                .find(|&n| g.node(n).name == "enc")
                .unwrap();
        assert_eq!(g.node(enc).shape.as_ref().unwrap().0, vec![want], "{cell}");
    }
    // A state of the wrong size, at the decoder's span, naming the source.
    let src = "model m {\n  input x: [4, 3]\n  s = x -> lstm(6, return_state: true) as enc\n  \
               x -> lstm(5, initial_state: s) as dec -> y\n  output y\n}\n";
    let d = diagnostic(src, "E0212");
    assert!(d.message.contains("[N, 10]"), "{}", d.message);
    assert!(
        d.message.contains("`enc` has shape [N, 12]"),
        "{}",
        d.message
    );
    assert_eq!(
        &src[d.span().start..d.span().end],
        "lstm(5, initial_state: s) as dec",
        "{d:?}"
    );
    // A GRU's h is not an LSTM's h ++ c.
    diagnostic(
        "model m { input x: [4, 3]  s = x -> gru(6, return_state: true)  x -> lstm(6, initial_state: s) -> y  output y }",
        "E0212",
    );
    // Contradicting or malformed arguments, an unknown name.
    for (src, code) in [
        ("model m { input x: [4, 3]  x -> lstm(6, return_state: true, return_sequences: true) -> y  output y }", "E0105"),
        ("model m { input x: [4, 3]  x -> gru(6, return_state: true, bidirectional: true) -> y  output y }", "E0105"),
        ("model m { input x: [4, 3]  s = x -> rnn(6, return_state: true)  x -> rnn(6, initial_state: s, layers: 2) -> y  output y }", "E0105"),
        ("model m { input x: [4, 3]  x -> rnn(6, initial_state: 3) -> y  output y }", "E0104"),
        ("model m { input x: [4, 3]  x -> rnn(6, initial_state: nowhere) -> y  output y }", "E0110"),
    ] {
        diagnostic(src, code);
    }
}

#[test]
fn state_hand_computed_outputs() {
    let sigmoid = |z: f32| 1.0 / (1.0 + (-z).exp());
    for level in [OptLevel::O0, OptLevel::O1] {
        // Every parameter 0.5, x = [1, −1]: the encoder's last h is the
        // decoder's first previous state.
        let src = "model m { input x: [2, 1]  s = x -> rnn(1, return_state: true) as enc  \
                   x -> rnn(1, return_sequences: true, initial_state: s) as dec -> y  output y }";
        let y = forward(src, level, 1, &[1.0, -1.0], 0.5);
        let e0 = (0.5f32 + 0.5).tanh();
        let e1 = (-0.5 + 0.5 * e0 + 0.5f32).tanh();
        let d0 = (0.5 + 0.5 * e1 + 0.5f32).tanh();
        let d1 = (-0.5 + 0.5 * d0 + 0.5f32).tanh();
        for (g, w) in y.iter().zip([d0, d1]) {
            assert!((g - w).abs() < 1e-6, "{level:?}: {y:?} vs {:?}", [d0, d1]);
        }
        // An LSTM's state is h then c: one step from zeros, every gate's
        // pre-activation 0.5·1 + 0.5 = 1.
        let src = "model m { input x: [1, 1]  x -> lstm(1, return_state: true) -> y  output y }";
        let y = forward(src, level, 1, &[1.0], 0.5);
        let c = sigmoid(1.0) * 1f32.tanh();
        let h = sigmoid(1.0) * c.tanh();
        assert!(
            (y[0] - h).abs() < 1e-6 && (y[1] - c).abs() < 1e-6,
            "{y:?} vs {:?}",
            [h, c]
        );
    }
}

/// The Keras addition model with the decoder started from the encoder's
/// state, in miniature.
fn state_model(cell: &str) -> String {
    format!(
        "model m {{
  input x: [4, 3]
  s = x -> {cell}(5, return_state: true) as encoder
  s -> repeat(3) -> {cell}(5, return_sequences: true, initial_state: s) as decoder
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
fn state_interpreter_cpu_backend_and_gpu_geometry_agree() {
    for cell in ["rnn", "lstm", "gru"] {
        let checked = check_ok(&state_model(cell));
        let cfg = checked.train_for("m").unwrap();
        for (what, p) in forward_and_training_programs(&checked.graphs[0], cfg) {
            let init = program_buffers(&p, 0x6c8e_9cf5_7072_1a3d);
            backends_agree(&format!("initial_state {cell} {what}"), &p, &init);
        }
    }
}

#[test]
fn summary_shows_the_state_edge() {
    let tmp = tempfile::tempdir().unwrap();
    let net = tmp.path().join("s2s.net");
    std::fs::write(&net, state_model("lstm")).unwrap();
    let (code, out, err) = netc(&["summary", &rel(&net)]);
    assert_eq!(code, 0, "{out}\n{err}");
    let row = out.lines().find(|l| l.starts_with("decoder")).unwrap();
    assert!(row.contains("[N, 3, 5]"), "{row}");
    assert!(row.trim_end().ends_with("repeat_1, encoder"), "{row}");
    let enc = out.lines().find(|l| l.starts_with("encoder")).unwrap();
    assert!(enc.contains("[N, 10]"), "{enc}");
}

#[test]
fn a_decoder_from_a_state_has_no_single_step_form() {
    let checked = check_ok(
        "model m { input x: [4, 3]  s = x -> gru(5, return_state: true) as encoder  \
         x -> gru(5, return_sequences: true, initial_state: s) as decoder -> y  output y }",
    );
    let e = netc_compiler::step::step_graph(&checked.graphs[0]).unwrap_err();
    assert!(
        matches!(e, netc_compiler::step::StepError::InitialState { ref layer } if layer == "decoder"),
        "{e}"
    );
}

/// `format: pairs` of char tokens: the question's ids padded at the end,
/// one answer id per output step with −1 past the answer, one vocabulary
/// for both sides; a line without a TAB is an error naming it.
#[test]
fn pairs_format_reads_questions_and_answers() {
    use netc_compiler::train::{TextConfig, TextFormat, TextOptions, Tokenizer};
    use netc_runtime::data::text::{load_text_sized, Lengths};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pairs.tsv");
    std::fs::write(&file, "12+3\t15\n\n4+4\t8 \n").unwrap();
    let cfg = TextConfig {
        options: TextOptions {
            tokenizer: Tokenizer::Char { lowercase: false },
            max_vocab: None,
            min_count: 1,
            unknown: netc_compiler::train::UnknownWords::Single,
        },
        format: TextFormat::Pairs,
    };
    let lengths = Lengths {
        input: 5,
        target: 3,
    };
    let data = load_text_sized(&file, None, &cfg, lengths, None).unwrap();
    let v = &data.info.vocabulary;
    // <pad> <unk>, then by count, ties by first appearance: '1', '+', '4'
    // twice each, then '2', '3', '5', '8', ' ' once.
    assert_eq!(
        v.tokens(),
        ["<pad>", "<unk>", "1", "+", "4", "2", "3", "5", "8", " "]
    );
    assert_eq!(data.train.x.shape, vec![2, 5]);
    assert_eq!(
        data.train.x.data,
        vec![2.0, 5.0, 3.0, 6.0, 0.0, 4.0, 3.0, 4.0, 0.0, 0.0]
    );
    assert_eq!(data.train.y, vec![2.0, 7.0, -1.0, 8.0, 9.0, -1.0]);
    assert!(data.info.labels.is_none());
    std::fs::write(&file, "12+3\t15\n4+4 8\n").unwrap();
    let e = load_text_sized(&file, None, &cfg, lengths, None).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("line 2") && msg.contains("no TAB"), "{msg}");
}

/// Trains a tiny sequence-to-sequence model (reverse three letters) from
/// the CLI; `eval` reports whole-answer accuracy and `predict` writes
/// `question<TAB>answer` lines decoded with the vocabulary.
#[test]
fn a_seq2seq_model_trains_evaluates_and_predicts_text() {
    let dir = tempfile::tempdir().unwrap();
    let model = "model m {
  input q: tokens[3]
  s = q -> embedding(8, 8) -> lstm(16, return_state: true) as enc
  s -> repeat(3) -> lstm(16, return_sequences: true, initial_state: s) as dec
    -> dense(8) -> softmax -> a
  output a
}
train m {
  loss: cross_entropy  optimizer: adam(lr: 0.05)  batch: 4  epochs: 60  seed: 1
  metrics: [accuracy]  data: \"pairs.tsv\"  text: char()  format: pairs
}
";
    let data = "abc\tcba\nbca\tacb\ncab\tbac\naab\tbaa\nbbc\tcbb\ncca\tacc\n";
    std::fs::write(dir.path().join("m.net"), model).unwrap();
    std::fs::write(dir.path().join("pairs.tsv"), data).unwrap();
    let path = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let (net, w, file) = (path("m.net"), path("w.safetensors"), path("pairs.tsv"));
    let (code, out, err) = netc(&["train", &net, "-o", &w, "--threads", "1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = netc(&["eval", &net, "--weights", &w, "--data", &file]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("whole sequences: accuracy 100.00% (6 of 6 entirely right)"),
        "{out}"
    );
    let txt = path("answers.txt");
    let (code, out, err) = netc(&[
        "predict",
        &net,
        "--weights",
        &w,
        "--input",
        &file,
        "-o",
        &txt,
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("wrote 6 predicted answers"), "{out}");
    assert_eq!(std::fs::read_to_string(&txt).unwrap(), data);
}

/// An encoder alone has a single-step form: with `return_state: true` its
/// output after each step is the state (`h ++ c` for an LSTM).
#[test]
fn an_encoder_returning_its_state_steps_token_by_token() {
    let checked = check_ok(
        "model m { input x: [4, 3]  x -> lstm(5, return_state: true) as enc -> y  output y }",
    );
    let s = netc_compiler::step::step_graph(&checked.graphs[0]).unwrap();
    let g = &s.graph;
    let y = g.outputs[0].1;
    assert_eq!(g.node(y).shape.as_ref().unwrap().0, vec![10]);
    assert_eq!(s.states[0].len, 10);
}

/// A layer starting from its own output is a cycle, reported as one.
#[test]
fn a_state_from_the_layer_itself_is_a_cycle() {
    diagnostic(
        "model m { input x: [3, 2]  x -> gru(3, return_sequences: true, initial_state: y) as dec -> y  output y }",
        "E0112",
    );
}
