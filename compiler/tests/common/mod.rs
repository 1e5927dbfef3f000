//! Helpers shared by the optimizer's tests: graphs built by hand, and
//! programs run by the reference interpreter with deterministic values.

#![allow(dead_code)]

use netc_compiler::graph::{Graph, Node, NodeId};
use netc_compiler::kernel::{interp, BufKind, Program};
use netc_compiler::op::{Op, ParamRole};
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};
use netc_compiler::Shape;
use netc_lang::Span;
use std::collections::HashMap;

/// Builds a graph node by node; shapes come from shape inference.
pub struct Builder {
    pub g: Graph,
}

impl Builder {
    pub fn new(name: &str) -> Self {
        Builder {
            g: Graph::new(name),
        }
    }

    fn node(&mut self, op: Op, name: &str, shape: Option<Vec<usize>>) -> NodeId {
        let layer = name.split('.').next().unwrap_or(name).to_string();
        self.g.add(Node {
            op,
            name: name.to_string(),
            layer,
            span: Span { start: 0, end: 0 },
            shape: shape.map(Shape),
        })
    }

    pub fn input(&mut self, name: &str, dims: &[usize]) -> NodeId {
        let id = self.node(
            Op::Input {
                tokens: false,
                variable: false,
            },
            name,
            Some(dims.to_vec()),
        );
        self.g.inputs.push(id);
        id
    }

    /// A parameter whose shape its consumer's rule sets.
    pub fn param(&mut self, name: &str, role: ParamRole) -> NodeId {
        self.node(Op::Param { role }, name, None)
    }

    /// A parameter with an explicit shape (one only computed ops read).
    pub fn param_shaped(&mut self, name: &str, role: ParamRole, dims: &[usize]) -> NodeId {
        self.node(Op::Param { role }, name, Some(dims.to_vec()))
    }

    pub fn op(&mut self, op: Op, name: &str, ins: &[NodeId]) -> NodeId {
        let id = self.node(op, name, None);
        for (slot, i) in ins.iter().enumerate() {
            self.g.connect(*i, id, slot);
        }
        id
    }

    /// Declares the outputs and infers shapes (which must succeed).
    pub fn finish(mut self, outs: &[(&str, NodeId)]) -> Graph {
        for (n, id) in outs {
            self.g.outputs.push((n.to_string(), *id));
        }
        let diags = netc_compiler::infer::infer_shapes(&mut self.g, &Default::default());
        assert!(diags.is_empty(), "{diags:?}");
        self.g
    }
}

/// Every `.net` file of the repository's `examples/`, sorted by name,
/// parsed and checked (no errors): `(file name, checked file)`.
pub fn checked_examples() -> Vec<(String, netc_compiler::Checked)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "net"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "examples not found in {}", dir.display());
    files
        .iter()
        .map(|file| {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let src = std::fs::read_to_string(file).unwrap();
            let ast = netc_lang::parse(&src).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let checked = netc_compiler::check(&ast);
            assert!(!checked.has_errors(), "{name}: {:?}", checked.diagnostics);
            (name, checked)
        })
        .collect()
}

/// Parses and checks `src`; returns its first model.
pub fn model(src: &str) -> Graph {
    let ast = netc_lang::parse(src).unwrap();
    let checked = netc_compiler::check(&ast);
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    checked.graphs.into_iter().next().unwrap()
}

/// A deterministic value in [-1, 1) for element `i` of tensor `name`.
pub fn value(name: &str, i: usize) -> f32 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    h = (h ^ i as u64).wrapping_mul(0x9E3779B97F4A7C15);
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58476D1CE4E5B9);
    h ^= h >> 32;
    ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Runs `g` for `batch` in the interpreter with inputs and parameters
/// filled by [`value`] (variances made positive); returns the program and
/// every output by name.
pub fn run(g: &Graph, batch: usize) -> (Program, HashMap<String, Vec<f32>>) {
    let p = Compilation::new(g, CompileOptions::at(OptLevel::O0))
        .program(batch)
        .unwrap();
    let mut bufs: Vec<Vec<f32>> = p
        .buffers
        .iter()
        .map(|b| match &b.kind {
            BufKind::Input(n) => (0..b.len).map(|i| value(n, i)).collect(),
            BufKind::Param(n) => (0..b.len)
                .map(|i| {
                    let v = value(n, i);
                    if n.ends_with("moving_var") {
                        v.abs() + 0.5
                    } else {
                        v
                    }
                })
                .collect(),
            BufKind::Temp | BufKind::State(_) => vec![f32::NAN; b.len],
        })
        .collect();
    interp::run_program(&p, &mut bufs).unwrap();
    let outs = p
        .outputs
        .iter()
        .map(|o| (o.name.clone(), bufs[o.buf].clone()))
        .collect();
    (p, outs)
}

/// `|a − b| ≤ rel·max(|a|, |b|)`, with an absolute floor for values near 0.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let tol = rel * a.abs().max(b.abs()).max(1e-3);
        assert!(
            (a - b).abs() <= tol && a.is_finite(),
            "{what}[{i}]: {a} vs {b} (tolerance {tol})"
        );
    }
}

/// `|a − b| ≤ rel·max(|a|, |b|, m)` with `m` the largest magnitude in
/// `want`: for results that cancel (folded batchnorm), whose rounding
/// error scales with the tensor's magnitude rather than each element's.
pub fn assert_close_scaled(what: &str, got: &[f32], want: &[f32], rel: f32) {
    let m = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let tol = rel * a.abs().max(b.abs()).max(m);
        assert!(
            (a - b).abs() <= tol && a.is_finite(),
            "{what}[{i}]: {a} vs {b} (tolerance {tol})"
        );
    }
}

/// `n` deterministic values in `[lo, hi)` from a xorshift64 generator
/// seeded by `seed` (the `.kir` filetests' `random(seed, lo, hi)`).
pub fn xorshift_values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}
