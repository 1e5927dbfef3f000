//! Criterion benches of the optimizer: fused against unfused programs in
//! the same run, and the optimizer's own compile time.
//!
//! * `conv2d_relu_64to64_56x56_batch8`: conv2d 3×3 `same` 64→64 then relu,
//!   lowered unoptimized (`-O0`: a conv kernel, then a relu pass) and
//!   optimized (the relu in the conv's epilogue).
//! * `dense_relu_1024x1024_batch64`: likewise for dense.
//! * `lstm_step_128_batch32`: one full LSTM step (x_t, h, c → h', c'; 128
//!   inputs, 128 units) as the textbook graph (eight gate matrix
//!   products, one kernel per elementwise op) against the unrolled cell the
//!   optimizer produces (one input projection for all gates, one `h·U`
//!   for all gates, one gate kernel).
//! * `course_cnn_forward_batch64`: the whole course CNN, `-O0` against
//!   optimized.
//! * `optimize`: optimizing VGG-16 and an LSTM over 100 steps.
//!
//! After the criterion groups, each pair is also timed alternately (one
//! run of each per round, median of the rounds) and the ratio printed, so
//! one run reports the speedups: `cargo bench --bench fusion`.
//! `NETC_BENCH_THREADS=n` sets the worker threads (default: all cores);
//! `NETC_BENCH_KERNELS=1` also prints each kernel's time of both versions.

use criterion::{criterion_group, Criterion};
use netc_compiler::graph::{Graph, Node, NodeId};
use netc_compiler::kernel::ir::Program;
use netc_compiler::op::{Activation, CellKind, Op, ParamRole};
use netc_compiler::opt::{optimize, OptOptions};
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};
use netc_runtime::{init_weights, Executable, Tensor, Weights};
use std::time::{Duration, Instant};

fn graph(src: &str) -> Graph {
    let ast = netc_lang::parse(src).expect("bench model parses");
    let checked = netc_compiler::check(&ast);
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    checked.graphs.into_iter().next().expect("one model")
}

fn filled(n: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7919 + salt * 104729) % 1000) as f32 / 1000.0 - 0.5) * 0.5)
        .collect()
}

/// `g` compiled at `level` for `batch`.
fn program(g: &Graph, level: OptLevel, batch: usize) -> Program {
    Compilation::new(g, CompileOptions::at(level))
        .program(batch)
        .expect("lowers")
}

/// `p` compiled with `weights` and deterministic inputs.
fn executable(p: Program, weights: &Weights, threads: usize) -> Executable {
    let inputs = p.inputs.clone();
    let mut exe = Executable::compile(p, threads).expect("compiles");
    exe.set_weights(weights).expect("weights fit");
    for (k, i) in inputs.iter().enumerate() {
        let t = Tensor::new(i.shape.clone(), filled(i.shape.iter().product(), k)).expect("tensor");
        exe.set_input(&i.name, &t).expect("input fits");
    }
    exe.run().expect("runs"); // packs weights, faults pages
    exe
}

/// The model as written (`-O0`) and optimized, with the same weights.
fn both(src: &str, batch: usize, threads: usize) -> (Executable, Executable) {
    let g = graph(src);
    let (_, report) = optimize(&g, &OptOptions::default());
    assert_eq!(report.fallback, None);
    let w = init_weights(&g, 0).expect("init");
    (
        executable(program(&g, OptLevel::O0, batch), &w, threads),
        executable(program(&g, OptLevel::O1, batch), &w, threads),
    )
}

/// Worker threads: `NETC_BENCH_THREADS`, else all cores.
fn threads() -> usize {
    std::env::var("NETC_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// A graph under construction (the LSTM step is not expressible in the
/// language: it has no elementwise product layer).
struct Build {
    g: Graph,
}

impl Build {
    fn node(&mut self, op: Op, name: &str, ins: &[NodeId], shape: Option<Vec<usize>>) -> NodeId {
        let id = self.g.add(Node {
            op,
            name: name.into(),
            layer: "step".into(),
            span: Default::default(),
            shape: shape.map(netc_compiler::Shape),
        });
        for (slot, i) in ins.iter().enumerate() {
            self.g.connect(*i, id, slot);
        }
        id
    }
    fn input(&mut self, name: &str, dims: &[usize]) -> NodeId {
        let id = self.node(
            Op::Input {
                tokens: false,
                variable: false,
            },
            name,
            &[],
            Some(dims.to_vec()),
        );
        self.g.inputs.push(id);
        id
    }
    fn param(&mut self, name: &str, role: ParamRole, dims: &[usize]) -> NodeId {
        self.node(Op::Param { role }, name, &[], Some(dims.to_vec()))
    }
    fn finish(mut self, outs: &[(&str, NodeId)]) -> Graph {
        for (n, id) in outs {
            self.g.outputs.push((n.to_string(), *id));
        }
        let d = netc_compiler::infer::infer_shapes(&mut self.g, &Default::default());
        assert!(d.is_empty(), "{d:?}");
        self.g
    }
}

const GATES: [&str; 4] = ["i", "f", "c", "o"];

/// The textbook LSTM step: per gate `act(x·W_g + b_g + h·U_g)`, then
/// `c' = f·c + i·g`, `h' = o·tanh(c')`, every op its own kernel.
fn lstm_step_unfused(f: usize, u: usize) -> Graph {
    let mut b = Build {
        g: Graph::new("lstm_step"),
    };
    let x = b.input("x", &[f]);
    let h = b.input("h", &[u]);
    let c = b.input("c", &[u]);
    let dense = |units| Op::Dense {
        units,
        activation: None,
    };
    let mut gate = Vec::new();
    for (k, g) in GATES.iter().enumerate() {
        let w = b.param(&format!("step.w_{g}"), ParamRole::Weight, &[f, u]);
        let bias = b.param(&format!("step.b_{g}"), ParamRole::Bias, &[u]);
        let uw = b.param(&format!("step.u_{g}"), ParamRole::Weight, &[u, u]);
        let xw = b.node(dense(u), &format!("x{g}"), &[x, w, bias], None);
        let hu = b.node(dense(u), &format!("h{g}"), &[h, uw], None);
        let z = b.node(Op::Add, &format!("z{g}"), &[xw, hu], None);
        let act = if k == 2 {
            Activation::Tanh
        } else {
            Activation::Sigmoid
        };
        gate.push(b.node(Op::Activation(act), &format!("gate_{g}"), &[z], None));
    }
    let fc = b.node(Op::Mul, "f_c", &[gate[1], c], None);
    let ig = b.node(Op::Mul, "i_g", &[gate[0], gate[2]], None);
    let c2 = b.node(Op::Add, "c_new", &[fc, ig], None);
    let tc = b.node(Op::Activation(Activation::Tanh), "tanh_c", &[c2], None);
    let h2 = b.node(Op::Mul, "h_new", &[gate[3], tc], None);
    b.finish(&[("h", h2), ("c", c2)])
}

/// The same step as the optimizer unrolls it: the input projection of all
/// four gates in one product, then one cell (`h·U` for all gates and one
/// gate kernel) on the state `h ++ c`.
fn lstm_step_fused(f: usize, u: usize) -> Graph {
    let mut b = Build {
        g: Graph::new("lstm_step"),
    };
    let x = b.input("x", &[f]);
    let s = b.input("s", &[2 * u]);
    let w = b.param("step.weight", ParamRole::Weight, &[f, 4 * u]);
    let bias = b.param("step.bias", ParamRole::Bias, &[4 * u]);
    let uw = b.param("step.recurrent_weight", ParamRole::Weight, &[u, 4 * u]);
    let proj = b.node(
        Op::Dense {
            units: 4 * u,
            activation: None,
        },
        "step.input",
        &[x, w, bias],
        None,
    );
    let cell = b.node(
        Op::Cell {
            cell: CellKind::Lstm,
            units: u,
            has_state: true,
            recurrent_bias: false,
        },
        "step.t",
        &[proj, uw, s],
        None,
    );
    b.finish(&[("s", cell)])
}

/// Both LSTM step programs with the same weights and inputs; checks they
/// compute the same state.
fn lstm_pair(f: usize, u: usize, batch: usize, threads: usize) -> (Executable, Executable) {
    let big = |rows: usize, salt| filled(rows * 4 * u, salt);
    let (w, uw, bias) = (big(f, 1), big(u, 2), filled(4 * u, 3));
    let mut fused_w = Weights::new("lstm_step");
    fused_w.insert(
        "step.weight",
        Tensor::new(vec![f, 4 * u], w.clone()).unwrap(),
    );
    fused_w.insert(
        "step.recurrent_weight",
        Tensor::new(vec![u, 4 * u], uw.clone()).unwrap(),
    );
    fused_w.insert("step.bias", Tensor::vector(bias.clone()));
    let mut split_w = Weights::new("lstm_step");
    let cols = |m: &[f32], rows: usize, g: usize| -> Vec<f32> {
        (0..rows)
            .flat_map(|r| m[r * 4 * u + g * u..r * 4 * u + (g + 1) * u].to_vec())
            .collect()
    };
    for (k, g) in GATES.iter().enumerate() {
        split_w.insert(
            format!("step.w_{g}"),
            Tensor::new(vec![f, u], cols(&w, f, k)).unwrap(),
        );
        split_w.insert(
            format!("step.u_{g}"),
            Tensor::new(vec![u, u], cols(&uw, u, k)).unwrap(),
        );
        split_w.insert(
            format!("step.b_{g}"),
            Tensor::vector(bias[k * u..(k + 1) * u].to_vec()),
        );
    }
    let unfused = lstm_step_unfused(f, u);
    let fused = lstm_step_fused(f, u);
    let mut a = Executable::compile(program(&unfused, OptLevel::O0, batch), threads).unwrap();
    let mut b = Executable::compile(program(&fused, OptLevel::O0, batch), threads).unwrap();
    a.set_weights(&split_w).unwrap();
    b.set_weights(&fused_w).unwrap();
    let x = Tensor::new(vec![batch, f], filled(batch * f, 4)).unwrap();
    let h = filled(batch * u, 5);
    let c = filled(batch * u, 6);
    let s: Vec<f32> = (0..batch)
        .flat_map(|n| [&h[n * u..(n + 1) * u], &c[n * u..(n + 1) * u]].concat())
        .collect();
    a.set_input("x", &x).unwrap();
    a.set_input("h", &Tensor::new(vec![batch, u], h).unwrap())
        .unwrap();
    a.set_input("c", &Tensor::new(vec![batch, u], c).unwrap())
        .unwrap();
    b.set_input("x", &x).unwrap();
    b.set_input("s", &Tensor::new(vec![batch, 2 * u], s).unwrap())
        .unwrap();
    a.run().unwrap();
    b.run().unwrap();
    let (h2, c2, s2) = (
        a.output(0).unwrap(),
        a.output(1).unwrap(),
        b.output(0).unwrap(),
    );
    for n in 0..batch {
        for j in 0..u {
            let close = |p: f32, q: f32| (p - q).abs() <= 1e-5 * p.abs().max(1e-2);
            assert!(
                close(h2.data[n * u + j], s2.data[n * 2 * u + j]),
                "h differs"
            );
            assert!(
                close(c2.data[n * u + j], s2.data[n * 2 * u + u + j]),
                "c differs"
            );
        }
    }
    (a, b)
}

/// Median time of one `run` of each, alternating for `rounds` rounds.
fn alternate(a: &mut Executable, b: &mut Executable, rounds: usize) -> (Duration, Duration) {
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let s = Instant::now();
        a.run().unwrap();
        ta.push(s.elapsed());
        let s = Instant::now();
        b.run().unwrap();
        tb.push(s.elapsed());
    }
    ta.sort();
    tb.sort();
    (ta[rounds / 2], tb[rounds / 2])
}

fn pair_bench(
    c: &mut Criterion,
    group: &str,
    mut unfused: Executable,
    mut fused: Executable,
    rounds: usize,
) {
    let mut g = c.benchmark_group(group);
    g.bench_function("unfused", |b| b.iter(|| unfused.run().unwrap()));
    g.bench_function("fused", |b| b.iter(|| fused.run().unwrap()));
    g.finish();
    unfused.timings.iter_mut().for_each(|t| *t = Duration::ZERO);
    fused.timings.iter_mut().for_each(|t| *t = Duration::ZERO);
    let (tu, tf) = alternate(&mut unfused, &mut fused, rounds);
    if std::env::var("NETC_BENCH_KERNELS").is_ok() {
        for e in [&unfused, &fused] {
            for (k, t) in e.program().kernels.iter().zip(&e.timings) {
                println!(
                    "    {:<24} {:>10.1} µs",
                    k.name,
                    t.as_secs_f64() * 1e6 / rounds as f64
                );
            }
        }
    }
    let line = format!(
        "{group}: unfused {:.1} µs ({} kernels), fused {:.1} µs ({} kernels): fused is {:.2}x faster (median of {rounds} alternating rounds)",
        tu.as_secs_f64() * 1e6,
        unfused.program().kernels.len(),
        tf.as_secs_f64() * 1e6,
        fused.program().kernels.len(),
        tu.as_secs_f64() / tf.as_secs_f64()
    );
    println!("{line}");
    RATIOS.with(|r| r.borrow_mut().push(line));
}

thread_local! {
    static RATIOS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn conv_relu(c: &mut Criterion) {
    let src = "model m { input x: [56, 56, 64]  x -> conv2d(64, 3, padding: same) as conv -> relu -> y  output y }";
    let (u, f) = both(src, 8, threads());
    pair_bench(c, "conv2d_relu_64to64_56x56_batch8", u, f, 15);
}

fn dense_relu(c: &mut Criterion) {
    let src = "model m { input x: [1024]  x -> dense(1024) as fc -> relu -> y  output y }";
    let (u, f) = both(src, 64, threads());
    pair_bench(c, "dense_relu_1024x1024_batch64", u, f, 41);
}

fn lstm_step(c: &mut Criterion) {
    let (u, f) = lstm_pair(128, 128, 32, threads());
    pair_bench(c, "lstm_step_128_batch32", u, f, 201);
}

fn course_cnn(c: &mut Criterion) {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/course_cnn.net"
    ))
    .expect("example exists");
    let (u, f) = both(&src, 64, threads());
    pair_bench(c, "course_cnn_forward_batch64", u, f, 21);
}

fn compile_time(c: &mut Criterion) {
    let vgg = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/vgg16.net"))
        .expect("example exists");
    let lstm = "model m { input x: [100, 32]  x -> lstm(128) as l -> dense(10) -> softmax -> y  output y }";
    let mut g = c.benchmark_group("optimize");
    for (name, src) in [("vgg16", vgg.as_str()), ("lstm_100_steps", lstm)] {
        let model = graph(src);
        let (_, r) = optimize(&model, &OptOptions::default());
        assert_eq!(r.fallback, None);
        assert_eq!(r.stop_reason, "saturated", "{name}");
        let line = format!(
            "optimize {name}: {} -> {} nodes, {} e-nodes, {} iterations, {:.1} ms",
            r.nodes_before,
            r.nodes_after,
            r.egraph_nodes,
            r.iterations,
            r.time.as_secs_f64() * 1e3
        );
        println!("{line}");
        RATIOS.with(|r| r.borrow_mut().push(line));
        g.bench_function(name, |b| {
            b.iter(|| optimize(&model, &OptOptions::default()))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = conv_relu, dense_relu, lstm_step, course_cnn, compile_time
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    println!("\nsummary ({} thread(s)):", threads());
    RATIOS.with(|r| {
        for line in r.borrow().iter() {
            println!("  {line}");
        }
    });
}
