//! Hostile-input tests: models the compiler must reject or survive (depth, chain length, sizes, padding, messages).

use crate::common::netc;
use std::fmt::Write;
use std::path::Path;

/// `model m { input x: [4]  x -> s -> s ... -> y  output y }` with `stages`
/// copies of `stage`, written to `dir/name`.
fn pipeline_file(dir: &Path, name: &str, stage: &str, stages: usize) -> String {
    let mut src = String::from("model m {\n  input x: [4]\n  x");
    for _ in 0..stages {
        let _ = write!(src, " -> {stage}");
    }
    src.push_str(" -> y\n  output y\n}\n");
    let path = dir.join(name);
    std::fs::write(&path, src).unwrap();
    path.display().to_string()
}

/// The count `--explain` prints for rule `rule`.
fn fired(explain: &str, rule: &str) -> usize {
    explain
        .lines()
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(rule))
                .then(|| parts.next().and_then(|n| n.parse().ok()))
                .flatten()
        })
        .unwrap_or_else(|| panic!("`{rule}` not in the report:\n{explain}"))
}

/// A pipeline of 100,000 stages overflowed the stack in every command
/// (petgraph's recursive Tarjan in the cycle check, then the recursive
/// extraction of the optimized graph). Now no pass recurses on the
/// model's depth.
#[test]
fn a_pipeline_of_100000_stages_checks_and_compiles() {
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline_file(dir.path(), "deep.net", "relu", 100_000);
    let (code, out, err) = netc(&["check", &file]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("100001 layers"), "{out}");
    assert!(!err.contains("overflow"), "{err}");

    // -O1: the optimizer works region by region; how many regions its
    // time limit allows depends on the machine, and it says what it left.
    let (code, out, err) = netc(&["compile", &file]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("relu"), "kernels are written");
    for line in err.lines() {
        assert!(
            line.starts_with("warning: model `m`: optimizer: time limit (1.0 s) reached"),
            "{err}"
        );
    }
}

/// `elementwise-chain` fused every suffix of a chain into its own map: on
/// 200 relus it fired 19,900 times, and 1,000 relus aborted after 28 s.
/// Now it extends only the largest map of an operand, and a map holds at
/// most 64 operations: 1,000 relus fire it 2·1000 − 3 times and become 16
/// maps of 64 and one of the rest.
#[test]
fn a_chain_of_1000_relus_fuses_with_linear_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline_file(dir.path(), "chain.net", "relu", 1000);
    // A generous time limit: the counts below are those of a finished
    // saturation, however loaded the machine is.
    let (code, out, err) = netc(&["compile", "--explain", "--opt-time-limit", "60", &file]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fired(&out, "elementwise-chain"), 1997, "{out}");
    assert!(out.contains("graph nodes: 1001 -> 18"), "{out}");
    assert!(out.contains("stopped: saturated"), "{out}");
}

/// 27,628 dense + relu layers passed `check`, then `compile` at `-O1`
/// aborted in the allocator (extraction kept, for every e-class, the set
/// of every class below it). A long model is now optimized in regions of
/// 1,000 layers: every dense + relu pair still fuses, and memory stays
/// proportional to the model.
#[test]
fn a_long_dense_relu_chain_is_optimized_in_regions() {
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline_file(dir.path(), "dense.net", "dense(4) -> relu", 1500);
    let (code, out, err) = netc(&["compile", "--explain", "--opt-time-limit", "60", &file]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(3 regions of at most 1000 layers)"), "{out}");
    assert_eq!(fired(&out, "dense-relu"), 1500, "{out}");
    assert!(out.contains("graph nodes: 6001 -> 4501"), "{out}");
    assert!(!err.contains("warning"), "{err}");
}
