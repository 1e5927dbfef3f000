//! Token inputs and `embedding`: shapes and diagnostics, hand-computed
//! outputs and gradients (a repeated id, the padding id), the interpreter
//! against the CPU backend and the GPU launch geometry on forward and
//! training programs, the runtime's id check, and a text classifier
//! (embedding → lstm → dense → softmax) that learns through the runtime
//! API. (Gradients against finite differences are in
//! compiler/tests/gradcheck.rs; the kernel IR forms in
//! compiler/tests/kernels/gather.kir.)

mod common;
use common::*;

use netc_compiler::codegen::ptx::program_ptx;
use netc_compiler::kernel::ir::BufKind;
use netc_compiler::op::Op;
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};
use netc_runtime::train::{train, RunOptions};
use netc_runtime::{init_weights, Dataset, Engine, Target, Tensor};

/// A text classifier: 5 token ids → embedding(7, 3) → lstm(4) → dense(3)
/// → softmax.
const CLASSIFIER: &str = "model text {
  input words: tokens[5]
  words -> embedding(7, 3) as embed -> lstm(4) -> dense(3) -> softmax -> probs
  output probs
}
train text {
  loss: cross_entropy
  optimizer: sgd(lr: 0.1)
  batch: 3
  epochs: 1
}
";

fn diagnostics(src: &str) -> Vec<netc_lang::Diagnostic> {
    netc_compiler::check(&netc_lang::parse(src).unwrap()).diagnostics
}

fn find<'d>(d: &'d [netc_lang::Diagnostic], code: &str) -> &'d netc_lang::Diagnostic {
    d.iter()
        .find(|d| d.code == code)
        .unwrap_or_else(|| panic!("no {code} in {d:#?}"))
}

#[test]
fn shapes_parameters_and_errors() {
    let checked = check_ok(CLASSIFIER);
    let g = &checked.graphs[0];
    let embed =
        g.g.node_indices()
            .find(|&n| g.node(n).name == "embed")
            .unwrap();
    assert_eq!(g.node(embed).shape.as_ref().unwrap().0, vec![5, 3]);
    let words =
        g.g.node_indices()
            .find(|&n| g.node(n).name == "words")
            .unwrap();
    assert_eq!(
        g.node(words).op,
        Op::Input {
            tokens: true,
            variable: false
        }
    );
    // embedding 7·3, lstm 4·(4·(3 + 4) + 4), dense 4·3 + 3.
    let counts = netc_compiler::summary::param_counts(g, &[]);
    assert_eq!(counts.total, 21 + 128 + 15);

    // A token input feeds only an embedding.
    let d = diagnostics("model m {\n  input w: tokens[4]\n  w -> dense(2) -> y\n  output y\n}\n");
    let e = find(&d, "E0211");
    assert!(e.message.contains("token input `w`"), "{}", e.message);
    // An embedding reads only a token input.
    let d = diagnostics("model m {\n  input x: [4]\n  x -> embedding(9, 2) -> y\n  output y\n}\n");
    assert!(find(&d, "E0211").message.contains("not a token input"));
    // Token ids are a sequence [T].
    let d = diagnostics(
        "model m {\n  input w: tokens[4, 2]\n  w -> embedding(9, 2) -> y\n  output y\n}\n",
    );
    assert!(find(&d, "E0204").message.contains("[N, T]"));
    // Arguments: positive sizes, a padding id in the vocabulary or `none`.
    for (args, code) in [
        ("0, 2", "E0105"),
        ("9, 0", "E0105"),
        ("9", "E0103"),
        ("9, 2, padding: 9", "E0105"),
        ("9, 2, padding: -1", "E0105"),
        ("9, 2, padding: same", "E0104"),
    ] {
        let src = format!(
            "model m {{\n  input w: tokens[4]\n  w -> embedding({args}) -> y\n  output y\n}}\n"
        );
        find(&diagnostics(&src), code);
    }
    for args in ["9, 2, padding: none", "9, 2, padding: 8", "9, 2"] {
        let src = format!(
            "model m {{\n  input w: tokens[4]\n  w -> embedding({args}) -> y\n  output y\n}}\n"
        );
        check_ok(&src);
    }
}

/// A table `[4, 2]` whose padding row 0 holds non-zero values (as loaded
/// weights might), looked up by `ids`: returns the lookup and, from an
/// `mse` training step against a zero target, the table's gradient.
fn golden(ids: &[f32], level: OptLevel) -> (Vec<f32>, Vec<f32>) {
    let src = format!(
        "model e {{
  input words: tokens[{}]
  words -> embedding(4, 2) as e -> flatten -> y
  output y
}}
train e {{ loss: mse  optimizer: sgd(lr: 1.0)  batch: 1  epochs: 1 }}
",
        ids.len()
    );
    let checked = check_ok(&src);
    let g = &checked.graphs[0];
    let cfg = checked.train_for("e").unwrap();
    let table = [7.0, 9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let c = Compilation::new(g, CompileOptions::at(level));
    let fill = |kind: &BufKind, len: usize| match kind {
        BufKind::Input(n) if n == "words" => Some(ids.to_vec()),
        BufKind::Input(n) if n == "target" => Some(vec![0.0; len]),
        BufKind::Param(n) if n == "e.weight" => Some(table.to_vec()),
        _ => None,
    };
    let (out, mut grads) = interp_output_and_grads(&c, cfg, fill, &["e.weight"]);
    (out, grads.remove(0))
}

#[test]
fn hand_computed_lookup_and_gradient() {
    for level in [OptLevel::O0, OptLevel::O1] {
        // Ids 2, 0 (padding), 2 again, 3.
        let (out, grad) = golden(&[2.0, 0.0, 2.0, 3.0], level);
        // The padding id reads as zeros, whatever its row holds.
        assert_eq!(out, vec![3.0, 4.0, 0.0, 0.0, 3.0, 4.0, 5.0, 6.0]);
        // mse over 8 values: dL/dy = 2·y/8 = y/4. Row 2 is used twice:
        // (3 + 3)/4, (4 + 4)/4; row 3 once: 5/4, 6/4; row 1 never; row 0
        // is the padding id's, whose gradient is zero.
        assert_eq!(grad, vec![0.0, 0.0, 0.0, 0.0, 1.5, 2.0, 1.25, 1.5]);
    }
}

/// Three examples of five ids: repeats, the padding id 0, and (for the
/// kernels alone; the runtime refuses them) ids 9 and −1 outside the
/// vocabulary, which read a zero row and add to none.
const IDS: [f32; 15] = [
    1.0, 2.0, 2.0, 0.0, 6.0, //
    3.0, 3.0, 3.0, 3.0, 3.0, //
    0.0, 9.0, 5.0, -1.0, 4.0,
];

#[test]
fn interpreter_cpu_backend_and_gpu_geometry_agree() {
    let checked = check_ok(CLASSIFIER);
    let cfg = checked.train_for("text").unwrap();
    for (what, p) in forward_and_training_programs(&checked.graphs[0], cfg) {
        let p = &p;
        let label = format!("embedding {what}");
        // The text form reads back to the same program.
        let text = netc_compiler::kernel::print::program_text(p);
        assert_eq!(
            &netc_compiler::kernel::parse::parse_program(&text).unwrap(),
            p,
            "{label}"
        );
        let mut init = program_buffers(p, 0x51_7cc1_b727_220a);
        let words = p.inputs.iter().find(|i| i.name == "words").unwrap();
        assert_eq!(words.vocab, Some(7), "{label}");
        init[words.buf] = IDS.to_vec();
        backends_agree(&label, p, &init);
    }
}

/// The CPU backend's parallel extent of the table-gradient kernel in the
/// training step of `src` (the CLASSIFIER model or a variant of it).
fn table_gradient_parallel_extent(src: &str) -> Option<usize> {
    use netc_compiler::codegen::cpu::loops::CompiledLoop;
    use netc_compiler::kernel::ir::KernelBody;
    let checked = check_ok(src);
    let p = Compilation::new(&checked.graphs[0], CompileOptions::at(OptLevel::O1))
        .training_program(checked.train_for("text").unwrap(), 3)
        .unwrap()
        .program;
    let lens: Vec<usize> = p.buffers.iter().map(|b| b.len).collect();
    let k = p
        .kernels
        .iter()
        .find(|k| k.name == "grad:embed.weight")
        .expect("the table's gradient kernel");
    let KernelBody::Loop(l) = &k.body else {
        panic!("{}: not a loop kernel", k.name)
    };
    CompiledLoop::compile(l, &lens).unwrap().parallel_extent()
}

#[test]
fn the_table_gradient_splits_its_column_blocks_across_threads() {
    // One column of all rows per iteration: 3 columns, proven disjoint.
    assert_eq!(table_gradient_parallel_extent(CLASSIFIER), Some(3));
    // 64 columns go in blocks of 16 (a cache line of each row per
    // iteration): 4 iterations, still proven disjoint.
    let src = CLASSIFIER.replace("embedding(7, 3)", "embedding(7, 64)");
    assert_ne!(src, CLASSIFIER);
    assert_eq!(table_gradient_parallel_extent(&src), Some(4));
}

#[test]
fn the_ptx_assembles_for_sm_80_and_sm_90() {
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    // The lookup and its gradient alone (the recurrent kernels are
    // assembled by tests/ptx.rs): a training step holds both.
    let src = "model e {
  input words: tokens[5]
  words -> embedding(7, 3) as e -> flatten -> y
  output y
}
train e { loss: mse  optimizer: sgd(lr: 0.1)  batch: 3  epochs: 1 }
";
    let checked = check_ok(src);
    let g = &checked.graphs[0];
    let cfg = checked.train_for("e").unwrap();
    let c = Compilation::new(g, CompileOptions::at(OptLevel::O1));
    let dir = tempfile::tempdir().unwrap();
    let programs = [("training", c.training_program(cfg, 3).unwrap().program)];
    for (what, p) in programs {
        let kernels = netc_compiler::kernel::print::program_text(&p);
        assert!(
            kernels.contains("+= ") && kernels.contains("row("),
            "{kernels}"
        );
        let m = program_ptx(&p).unwrap();
        let file = dir.path().join(format!("{what}.ptx"));
        std::fs::write(&file, &m.text).unwrap();
        for arch in ["sm_80", "sm_90"] {
            let out = std::process::Command::new(&ptxas)
                .arg(format!("-arch={arch}"))
                .arg(&file)
                .args(["-o", "/dev/null"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{what}: ptxas -arch={arch} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `n` sequences of six ids in `1..20`, some with leading padding (id 0);
/// the class is the last id modulo 3.
fn sequences(n: usize) -> Dataset {
    let mut s = 0x2545_f491u64;
    let mut next = move |m: u64| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s % m
    };
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let pad = next(3) as usize;
        for t in 0..6 {
            x.push(if t < pad { 0.0 } else { 1.0 + next(19) as f32 });
        }
        y.push((*x.last().unwrap() as usize % 3) as f32);
    }
    Dataset::new(Tensor::new(vec![n, 6], x).unwrap(), y, Some(3)).unwrap()
}

const TEXT_MODEL: &str = "model text {
  input words: tokens[6]
  words -> embedding(20, 8) as embed -> lstm(16) -> dense(3) -> softmax -> probs
  output probs
}
train text {
  loss: cross_entropy
  optimizer: adam(lr: 0.02)
  batch: 8
  epochs: 12
  seed: 3
}
";

#[test]
fn a_text_classifier_learns_through_the_runtime_api() {
    let checked = check_ok(TEXT_MODEL);
    let g = &checked.graphs[0];
    let cfg = checked.train_for("text").unwrap();
    let init = init_weights(g, cfg.seed).unwrap();
    // The padding row starts at zero; the rest is uniform on ±0.05.
    let table = init.get("embed.weight").unwrap();
    assert_eq!(table.shape, vec![20, 8]);
    assert!(table.data[..8].iter().all(|v| *v == 0.0));
    assert!(table.data[8..].iter().all(|v| v.abs() <= 0.05));
    assert!(table.data[8..].iter().any(|v| *v != 0.0));
    let data = sequences(96);
    let opts = RunOptions {
        threads: 2,
        ..RunOptions::default()
    };
    let trained = train(g, cfg, &data, None, init, &opts, &mut |_| {}).unwrap();
    let losses: Vec<f64> = trained.history.iter().map(|e| e.loss).collect();
    assert_eq!(losses.len(), 12);
    assert!(
        losses[11] < 0.7 * losses[0],
        "the loss did not fall: {losses:?}"
    );
    // The padding row was never trained.
    let table = trained.weights.get("embed.weight").unwrap();
    assert!(
        table.data[..8].iter().all(|v| *v == 0.0),
        "{:?}",
        &table.data[..8]
    );
}

#[test]
fn the_runtime_rejects_ids_outside_the_vocabulary() {
    let checked = check_ok(TEXT_MODEL);
    let g = &checked.graphs[0];
    let cfg = checked.train_for("text").unwrap();
    // Where inputs are bound, for every engine.
    let p = Compilation::new(g, CompileOptions::at(OptLevel::O0))
        .program(2)
        .unwrap();
    let target = Target::open(netc_runtime::Device::Cpu, 1).unwrap();
    let mut exe = Engine::compile(p, &target).unwrap();
    let mut ids = vec![1.0; 12];
    exe.set_input("words", &Tensor::new(vec![2, 6], ids.clone()).unwrap())
        .unwrap();
    for (bad, shown) in [(20.0, "20"), (-1.0, "-1"), (2.5, "2.5")] {
        ids[9] = bad;
        let err = exe
            .set_input("words", &Tensor::new(vec![2, 6], ids.clone()).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("input `words`")
                && err.contains(&format!("token id {shown} "))
                && err.contains("example 1, position 3")
                && err.contains("vocabulary of 20 ids"),
            "{err}"
        );
    }
    // And in training, before any step runs.
    let mut data = sequences(16);
    data.x.data[40] = 57.0;
    let init = init_weights(g, 1).unwrap();
    let opts = RunOptions {
        threads: 1,
        ..RunOptions::default()
    };
    let err = train(g, cfg, &data, None, init, &opts, &mut |_| {})
        .err()
        .expect("an id past the vocabulary trains")
        .to_string();
    assert!(
        err.contains("token id 57") && err.contains("vocabulary of 20 ids"),
        "{err}"
    );
}

#[test]
fn the_cli_benches_a_token_model_with_ids_of_its_vocabulary() {
    let tmp = tempfile::tempdir().unwrap();
    let net = tmp.path().join("text.net");
    std::fs::write(&net, CLASSIFIER).unwrap();
    let net = net.display().to_string();
    let (code, out, err) = netc(&[
        "bench",
        "--batch",
        "2",
        "--threads",
        "1",
        "--iters",
        "1",
        &net,
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("embed"), "{out}");
}

#[test]
fn loading_data_for_a_token_model_keeps_the_ids() {
    // Ids below 256 look like pixels; they must not be scaled to [0, 1].
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("ids.csv");
    let mut text = String::new();
    for i in 0..6 {
        let ids: Vec<String> = (0..6).map(|t| ((i * 7 + t * 3) % 20).to_string()).collect();
        text.push_str(&format!("{},{}\n", ids.join(","), i % 3));
    }
    std::fs::write(&csv, &text).unwrap();
    let checked = check_ok(TEXT_MODEL);
    let (train, _) = netc_runtime::data::load_for_model(
        &checked.graphs[0],
        csv.to_str().unwrap(),
        Some(netc_compiler::train::Loss::CrossEntropy),
    )
    .unwrap();
    assert_eq!(train.x.shape, vec![6, 6]);
    assert!(train.x.data.iter().any(|v| *v > 1.0));
    assert!(train.x.data.iter().all(|v| v.fract() == 0.0 && *v < 20.0));
}
