//! `global_maxpool2d` and `global_avgpool2d`: shapes and diagnostics,
//! hand-computed outputs, the interpreter against the CPU backend and the
//! GPU launch geometry on forward and training programs, and a model that
//! trains from the CLI. (Gradients against finite differences are in
//! compiler/tests/gradcheck.rs.)

mod common;
use common::*;

use netc_compiler::kernel::interp;
use netc_compiler::kernel::ir::BufKind;
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};

/// A small classifier ending in global pooling: conv → relu → global pool
/// → dense → softmax, with a training section.
fn classifier(pool: &str) -> String {
    format!(
        "model m {{
  input image: [5, 4, 2]
  image -> conv2d(filters: 3, kernel: 2, padding: same) -> relu -> {pool}
        -> dense(4) -> softmax -> probs
  output probs
}}
train m {{
  loss: cross_entropy
  optimizer: sgd(lr: 0.1)
  batch: 3
  epochs: 1
}}
"
    )
}

#[test]
fn shapes_parameters_and_errors() {
    for pool in ["global_maxpool2d", "global_avgpool2d"] {
        let checked = check_ok(&classifier(pool));
        let g = &checked.graphs[0];
        let node =
            g.g.node_indices()
                .find(|&n| g.node(n).op.name() == pool)
                .unwrap();
        assert_eq!(g.node(node).shape.as_ref().unwrap().0, vec![3]);
        // conv 2·2·2·3 + 3, dense 3·4 + 4: the pool has no parameters.
        let counts = netc_compiler::summary::param_counts(g, &[]);
        assert_eq!(counts.total, 27 + 16);
        // A vector input is not an image.
        let src = format!("model v {{\n  input x: [8]\n  x -> {pool} -> y\n  output y\n}}\n");
        let checked = netc_compiler::check(&netc_lang::parse(&src).unwrap());
        let d = checked
            .diagnostics
            .iter()
            .find(|d| d.code == "E0204")
            .unwrap_or_else(|| panic!("{pool}: {:?}", checked.diagnostics));
        assert!(d.message.contains("[N, H, W, C]"), "{}", d.message);
        // No arguments.
        let src = format!(
            "model v {{\n  input x: [2, 2, 1]\n  x -> {pool}(size: 2) -> y\n  output y\n}}\n"
        );
        let checked = netc_compiler::check(&netc_lang::parse(&src).unwrap());
        assert!(
            checked.diagnostics.iter().any(|d| d.code == "E0102"),
            "{:?}",
            checked.diagnostics
        );
    }
}

/// Two examples of a `[2, 3, 2]` image (channels interleaved, as stored).
const IMAGES: [f32; 24] = [
    // example 0: channel 0 is 1, 5, -2, 3, 0, 4; channel 1 is -1 … -6
    1.0, -1.0, 5.0, -2.0, -2.0, -3.0, 3.0, -4.0, 0.0, -5.0, 4.0, -6.0,
    // example 1: channel 0 is 7 everywhere; channel 1 is 0.5 … 5.5
    7.0, 0.5, 7.0, 1.5, 7.0, 2.5, 7.0, 3.5, 7.0, 4.5, 7.0, 5.5,
];

fn forward(pool: &str, level: OptLevel) -> Vec<f32> {
    let src = format!("model p {{\n  input x: [2, 3, 2]\n  x -> {pool} -> y\n  output y\n}}\n");
    let checked = check_ok(&src);
    let p = Compilation::new(&checked.graphs[0], CompileOptions::at(level))
        .program(2)
        .unwrap();
    let mut bufs: Vec<Vec<f32>> = p
        .buffers
        .iter()
        .map(|b| match b.kind {
            BufKind::Input(_) => IMAGES.to_vec(),
            _ => vec![f32::NAN; b.len],
        })
        .collect();
    interp::run_program(&p, &mut bufs).unwrap();
    bufs[p.outputs[0].buf].clone()
}

#[test]
fn hand_computed_outputs() {
    for level in [OptLevel::O0, OptLevel::O1] {
        // [example][channel]: the maxima, and the means 11/6, −21/6, 7, 18/6.
        assert_eq!(
            forward("global_maxpool2d", level),
            vec![5.0, -1.0, 7.0, 5.5]
        );
        let avg = forward("global_avgpool2d", level);
        let want = [11.0 / 6.0, -3.5, 7.0, 3.0];
        for (g, w) in avg.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{avg:?} vs {want:?}");
        }
    }
}

#[test]
fn interpreter_cpu_backend_and_gpu_geometry_agree() {
    for pool in ["global_maxpool2d", "global_avgpool2d"] {
        let checked = check_ok(&classifier(pool));
        let cfg = checked.train_for("m").unwrap();
        for (what, p) in forward_and_training_programs(&checked.graphs[0], cfg) {
            let init = program_buffers(&p, 0x51_7cc1_b727_220a);
            backends_agree(&format!("{pool} {what}"), &p, &init);
        }
    }
}

#[test]
fn a_global_pooling_classifier_trains_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Images whose class is which channel is brighter on average.
    let mut csv = String::new();
    let mut s = 0x2545_f491u64;
    for i in 0..60 {
        let class = i % 2;
        let mut row = Vec::new();
        for k in 0..5 * 4 * 2 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let noise = (s >> 40) as f32 / (1u64 << 24) as f32;
            let bright = if k % 2 == class { 0.8 } else { 0.2 };
            row.push(format!("{:.4}", bright + 0.3 * noise));
        }
        row.push(class.to_string());
        csv.push_str(&row.join(","));
        csv.push('\n');
    }
    std::fs::write(dir.join("train.csv"), &csv).unwrap();
    let src = classifier("global_avgpool2d")
        .replace("dense(4)", "dense(2)")
        .replace("epochs: 1", "epochs: 8\n  data: \"train.csv\"");
    let net = dir.join("gp.net");
    std::fs::write(&net, src).unwrap();
    let (code, out, err) = netc(&["train", &rel(&net)]);
    assert_eq!(code, 0, "{out}\n{err}");
    let losses: Vec<f64> = format!("{out}{err}")
        .lines()
        .filter(|l| l.starts_with("epoch"))
        .filter_map(|l| {
            let i = l.find("loss ")? + 5;
            l[i..].split_whitespace().next()?.parse().ok()
        })
        .collect();
    assert_eq!(losses.len(), 8, "{out}\n{err}");
    assert!(
        losses[7] < 0.5 * losses[0],
        "the loss did not fall: {losses:?}"
    );
}
