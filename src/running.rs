//! The commands that execute models: `init`, `run` and `bench`.

use netc_compiler::codegen::cpu::{measure_triad_gbps, Ceilings, KernelPath};
use netc_compiler::codegen::ptx::PtxOptions;
use netc_compiler::kernel::{ir::Program, KernelBody};
use netc_compiler::pipeline::Forward;
use netc_compiler::Graph;
use netc_runtime::{
    init_weights, read_npy, write_npy, Device, Engine, Executable, Target, Tensor, Weights,
};
use std::path::Path;
use std::time::Instant;

/// `netc init`: deterministic initial weights for `g`.
pub fn init(g: &Graph, out: &Path, seed: u64) -> Result<String, String> {
    let mut w = init_weights(g, seed).map_err(|e| e.to_string())?;
    w.save(out).map_err(|e| e.to_string())?;
    Ok(format!(
        "wrote {} tensors ({} parameters) of model `{}` to {} (seed {seed})",
        w.len(),
        w.param_count(),
        g.name,
        out.display()
    ))
}

/// Reads the `.npy` inputs (`name=path` or a bare path for a one-input
/// model) and brings each to `[batch, ...]`; returns the batch size.
fn read_inputs(g: &Graph, specs: &[String]) -> Result<(usize, Vec<(String, Tensor)>), String> {
    use netc_compiler::masking::mask_name;
    let all: Vec<String> = g.inputs.iter().map(|i| g.node(*i).name.clone()).collect();
    // A variable-length input's mask is not read from a file: every step
    // of a sequence given to `run` is real.
    let is_mask = |n: &String| all.iter().any(|m| mask_name(m) == *n);
    let names: Vec<String> = all.iter().filter(|n| !is_mask(n)).cloned().collect();
    let mut out = Vec::new();
    for spec in specs {
        let (name, path) = match spec.split_once('=') {
            Some((n, p)) => (n.to_string(), p.to_string()),
            None if names.len() == 1 => (names[0].clone(), spec.clone()),
            None => {
                return Err(format!(
                    "model `{}` has inputs {}; write --input NAME=FILE.npy",
                    g.name,
                    names.join(", ")
                ))
            }
        };
        let id = g
            .inputs
            .iter()
            .find(|i| g.node(**i).name == name)
            .ok_or_else(|| {
                format!(
                    "model `{}` has no input `{name}` (inputs: {})",
                    g.name,
                    names.join(", ")
                )
            })?;
        let t = read_npy(&path).map_err(|e| e.to_string())?;
        let t = batch_input(g, *id, t, &path)?;
        out.push((name, t));
    }
    for n in &names {
        if !out.iter().any(|(m, _)| m == n) {
            return Err(format!("missing --input for model input `{n}`"));
        }
    }
    let batch = out[0].1.shape[0];
    if let Some((n, t)) = out.iter().find(|(_, t)| t.shape[0] != batch) {
        return Err(format!(
            "input `{n}` has batch {} but `{}` has {batch}",
            t.shape[0], out[0].0
        ));
    }
    for &i in &g.inputs {
        let node = g.node(i);
        if is_mask(&node.name) {
            let steps = node.shape.as_ref().map_or(0, |s| s.numel());
            let ones = Tensor::new(vec![batch, steps], vec![1.0; batch * steps])
                .map_err(|e| e.to_string())?;
            out.push((node.name.clone(), ones));
        }
    }
    Ok((batch, out))
}

/// The number of steps in the `.npy` file given for a variable-length
/// model's first input (`[T, F]` for one example, `[N, T, F]` for a batch),
/// when it can be read.
pub fn input_steps(g: &Graph, specs: &[String]) -> Option<usize> {
    let input = g.node(*g.inputs.first()?);
    let rank = input.shape.as_ref()?.rank();
    let path = specs.iter().find_map(|s| match s.split_once('=') {
        Some((n, p)) if n == input.name => Some(p),
        None => Some(s.as_str()),
        _ => None,
    })?;
    let t = read_npy(path).ok()?;
    let axis = if t.shape.len() == rank { 0 } else { 1 };
    t.shape.get(axis).copied()
}

/// Brings an input read from `path` to `[batch, ...shape]` for the model
/// input `id`: a batch of examples as they are, or a single example without
/// the batch axis. The one shape check of `run` and `predict`, so both
/// accept the same files and word a mismatch the same way; NaN and
/// infinities are refused as in training data.
pub fn batch_input(
    g: &Graph,
    id: netc_compiler::graph::NodeId,
    t: Tensor,
    path: &str,
) -> Result<Tensor, String> {
    let node = g.node(id);
    let mut want = node.shape.as_ref().map(|s| s.0.clone()).unwrap_or_default();
    // A variable-length input takes the file's number of steps.
    if let netc_compiler::op::Op::Input { variable: true, .. } = node.op {
        let axis = usize::from(t.shape.len() != want.len());
        if let (Some(&steps), Some(w)) = (t.shape.get(axis), want.first_mut()) {
            *w = steps;
        }
    }
    let t = if t.shape == want {
        let mut s = vec![1];
        s.extend(&want);
        t.reshape(s).map_err(|e| e.to_string())?
    } else {
        t
    };
    if t.shape.len() != want.len() + 1 || t.shape[1..] != want[..] || t.shape[0] == 0 {
        let dims: Vec<String> = want.iter().map(|d| d.to_string()).collect();
        return Err(format!(
            "{path}: input `{}` has shape {:?}, but the model expects [batch, {}] (or {want:?} \
             for a single example)",
            node.name,
            t.shape,
            dims.join(", ")
        ));
    }
    netc_runtime::data::check_finite(&t).map_err(|e| format!("{path}: {e}"))?;
    Ok(t)
}

/// Compiles `f` for `batch` on `target`, loads weights and inputs, runs it.
fn execute(
    f: &Forward,
    weights: &Weights,
    inputs: &[(String, Tensor)],
    batch: usize,
    target: &Target,
) -> Result<Engine, String> {
    let program = f.lower(batch).map_err(|e| e.to_string())?;
    let mut exe = Engine::compile(program, target).map_err(|e| e.to_string())?;
    exe.set_weights(weights).map_err(|e| e.to_string())?;
    for (n, t) in inputs {
        exe.set_input(n, t).map_err(|e| e.to_string())?;
    }
    exe.run().map_err(|e| e.to_string())?;
    Ok(exe)
}

/// `netc run` of the forward graph `f`.
pub fn run(
    f: &Forward,
    weights: &Path,
    inputs: &[String],
    output: Option<&Path>,
    threads: usize,
    device: Device,
    (kernels, ptx): (KernelPath, PtxOptions),
) -> Result<String, String> {
    // Open the device first: without a GPU, fail before reading anything.
    let target = Target::open(device, threads)
        .map_err(|e| e.to_string())?
        .with_kernels(kernels)
        .with_ptx(ptx);
    let w = Weights::load(weights).map_err(|e| e.to_string())?;
    let (batch, inputs) = read_inputs(&f.graph, inputs)?;
    let exe = execute(f, &w, &inputs, batch, &target)?;
    let mut report = String::new();
    for (i, o) in exe.program().outputs.iter().enumerate() {
        let t = exe.output(i).map_err(|e| e.to_string())?;
        match output {
            Some(p) => {
                let path = if exe.program().outputs.len() == 1 {
                    p.to_path_buf()
                } else {
                    p.with_file_name(format!(
                        "{}.{}.npy",
                        p.file_stem().map_or("out".into(), |s| s.to_string_lossy()),
                        o.name
                    ))
                };
                write_npy(&path, &t).map_err(|e| e.to_string())?;
                report.push_str(&format!(
                    "wrote `{}` {:?} to {}\n",
                    o.name,
                    t.shape,
                    path.display()
                ));
            }
            None => report.push_str(&describe(&o.name, &t)),
        }
    }
    Ok(report)
}

/// A short human summary of an output tensor.
fn describe(name: &str, t: &Tensor) -> String {
    let (mn, mx) = t
        .data
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), x| {
            (a.min(*x), b.max(*x))
        });
    let mean = t.data.iter().map(|x| *x as f64).sum::<f64>() / t.data.len().max(1) as f64;
    let mut s = format!(
        "{name}: shape {:?}, min {mn:.6}, max {mx:.6}, mean {mean:.6}\n",
        t.shape
    );
    let batch = t.shape.first().copied().unwrap_or(1);
    let per = t.data.len() / batch.max(1);
    let show = batch.min(8);
    for b in 0..show {
        let row = &t.data[b * per..(b + 1) * per];
        if per > 1 {
            let (arg, best) =
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |(ai, av), (i, v)| {
                        if *v > av {
                            (i, *v)
                        } else {
                            (ai, av)
                        }
                    });
            let head: Vec<String> = row.iter().take(10).map(|v| format!("{v:.4}")).collect();
            s.push_str(&format!(
                "  [{b}] argmax {arg} ({best:.4})  [{}{}]\n",
                head.join(", "),
                if per > 10 { ", …" } else { "" }
            ));
        } else {
            s.push_str(&format!("  [{b}] {:.6}\n", row[0]));
        }
    }
    if batch > show {
        s.push_str(&format!("  … {} more\n", batch - show));
    }
    s
}

/// A compiled program ready to time: weights and inputs set, warmed up.
struct Timed {
    exe: Executable,
    compile_ms: f64,
    /// Seconds spent in `run` over all timed iterations.
    total: f64,
}

/// Deterministic inputs for timing `program` (the values do not matter,
/// only that every run sees the same ones).
pub(crate) fn bench_inputs(
    program: &netc_compiler::kernel::ir::Program,
) -> Result<Vec<(String, Tensor)>, String> {
    program
        .inputs
        .iter()
        .map(|b| {
            let n = b.shape.iter().product::<usize>();
            // Token inputs get ids of their vocabulary (the runtime
            // rejects anything else).
            let data = match b.vocab {
                Some(v) => (0..n).map(|i| ((i * 7919) % v.max(1)) as f32).collect(),
                None => (0..n)
                    .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
                    .collect(),
            };
            Tensor::new(b.shape.clone(), data).map(|t| (b.name.clone(), t))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())
}

/// Compiles `program` with weights initialized from `model` (the graph as
/// written: the compiled forms keep its parameters) and deterministic
/// inputs; runs it once to pack weights and fault pages.
fn prepare(
    model: &Graph,
    program: Program,
    threads: usize,
    kernels: KernelPath,
    seed: u64,
) -> Result<Timed, String> {
    let w = init_weights(model, seed).map_err(|e| e.to_string())?;
    let inputs = bench_inputs(&program)?;
    let compile_start = Instant::now();
    let mut exe = Executable::compile_with(program, threads, kernels).map_err(|e| e.to_string())?;
    let compile_ms = compile_start.elapsed().as_secs_f64() * 1e3;
    exe.set_weights(&w).map_err(|e| e.to_string())?;
    for (n, t) in &inputs {
        exe.set_input(n, t).map_err(|e| e.to_string())?;
    }
    exe.run().map_err(|e| e.to_string())?; // warm-up: packs weights, faults pages
    exe.timings.iter_mut().for_each(|t| *t = Default::default());
    Ok(Timed {
        exe,
        compile_ms,
        total: 0.0,
    })
}

impl Timed {
    fn run(&mut self) -> Result<(), String> {
        let start = Instant::now();
        self.exe.run().map_err(|e| e.to_string())?;
        self.total += start.elapsed().as_secs_f64();
        Ok(())
    }
}

/// The machine's FMA ceilings (128-, 256- and 512-bit) on 1 and on `threads`
/// threads, and their line. Kernels are rated against the widest on
/// `threads` threads: a 128-bit kernel at its own ceiling uses about half
/// of an AVX2 core, and the report says so.
fn ceilings(threads: usize) -> Result<(Ceilings, f64, String), String> {
    let one = Ceilings::measure(1).map_err(|e| e.to_string())?;
    let triad = measure_triad_gbps(threads);
    let all = if threads > 1 {
        Ceilings::measure(threads).map_err(|e| e.to_string())?
    } else {
        one
    };
    let pair = |c: &Ceilings| {
        let mut s = format!("128-bit {:.1}", c.f128);
        match c.f256 {
            Some(w) => s.push_str(&format!(", 256-bit {w:.1}")),
            None => s.push_str(" (no 256-bit FMA)"),
        }
        if let Some(z) = c.f512 {
            s.push_str(&format!(", 512-bit {z:.1}"));
        }
        s + " GFLOP/s"
    };
    let mut line = format!("FMA ceilings measured now: {} on 1 thread", pair(&one));
    if threads > 1 {
        line.push_str(&format!("; {} on {threads}", pair(&all)));
    }
    line.push_str(&format!(
        "; memory (triad) {triad:.1} GB/s on {threads} thread(s)
kernels are rated against the widest, {}-bit ({:.1} GFLOP/s on {threads} thread(s)); loops by the bytes of the buffers they touch against the triad\n",
        all.widest().1,
        all.widest().0
    ));
    Ok((all, triad, line))
}

/// Bytes a kernel moves at least: for each buffer it reads or writes, the
/// span of elements its accesses cover over its loops' ranges (guards
/// taken as passing; a data-dependent row covers its whole table), but no
/// more elements than the accesses run (a gather of a few rows of a large
/// table, a strided walk), each counted once, whether read, written or
/// both. A contraction covers its operands whole.
fn touched_bytes(p: &Program, k: &netc_compiler::kernel::ir::Kernel) -> f64 {
    use netc_compiler::kernel::ir::{Expr, Index, Stmt};
    use std::collections::HashMap;
    let KernelBody::Loop(l) = &k.body else {
        return netc_compiler::kernel::plan::touched(k)
            .iter()
            .map(|b| 4.0 * p.buffers[*b].len as f64)
            .sum();
    };
    /// Per buffer: the span `[lo, hi]` and how many accesses run.
    type Spans = HashMap<usize, (i64, i64, f64)>;
    fn cover(spans: &mut Spans, buf: usize, ix: &Index, ext: &[usize], extra: i64) {
        let (mut lo, mut hi) = (ix.offset, ix.offset);
        for (v, c) in &ix.terms {
            let t = c * (ext[*v].max(1) as i64 - 1);
            lo += t.min(0);
            hi += t.max(0);
        }
        // Unbound variables' extents are 1, so this is the access's count.
        let runs: f64 = ext.iter().map(|&e| e as f64).product();
        let e = spans.entry(buf).or_insert((lo, hi + extra, 0.0));
        *e = (e.0.min(lo), e.1.max(hi + extra), e.2 + runs);
    }
    fn expr(spans: &mut Spans, e: &Expr, ext: &[usize]) {
        match e {
            Expr::Load(b, ix) => cover(spans, *b, ix, ext, 0),
            Expr::Un(_, a) => expr(spans, a, ext),
            Expr::Bin(_, a, b) => {
                expr(spans, a, ext);
                expr(spans, b, ext);
            }
            Expr::Select(a, _, b, t, o) => {
                for x in [a, b, t, o] {
                    expr(spans, x, ext);
                }
            }
            Expr::Gather { buf, row, index } => {
                expr(spans, &row.value, ext);
                let span = (row.rows.max(1) - 1) * row.stride;
                cover(spans, *buf, index, ext, span as i64);
            }
            Expr::Const(_) | Expr::Get(_) | Expr::Iter(_) => {}
        }
    }
    fn stmts(spans: &mut Spans, body: &[Stmt], ext: &mut Vec<usize>) {
        for s in body {
            match s {
                Stmt::Loop { var, extent, body } => {
                    let old = ext[*var];
                    ext[*var] = *extent;
                    stmts(spans, body, ext);
                    ext[*var] = old;
                }
                Stmt::IfInBounds { body, .. } => stmts(spans, body, ext),
                Stmt::Store { buf, index, value } => {
                    expr(spans, value, ext);
                    cover(spans, *buf, index, ext, 0);
                }
                Stmt::Set { value, .. } => expr(spans, value, ext),
                Stmt::ScatterAdd {
                    buf,
                    row,
                    index,
                    value,
                } => {
                    expr(spans, &row.value, ext);
                    expr(spans, value, ext);
                    let span = (row.rows.max(1) - 1) * row.stride;
                    cover(spans, *buf, index, ext, span as i64);
                }
            }
        }
    }
    let mut spans = Spans::new();
    stmts(&mut spans, &l.body, &mut vec![1; l.vars]);
    spans
        .iter()
        .map(|(b, (lo, hi, runs))| {
            let len = p.buffers[*b].len as i64;
            let span = ((*hi).min(len - 1) - (*lo).max(0) + 1).max(0) as f64;
            4.0 * span.min(*runs)
        })
        .sum()
}

/// One row per kernel; returns the table and the total FLOPs.
/// Contractions are rated in GFLOP/s against `ceiling`, loops in GB/s
/// (the bytes of the buffers they touch) against `triad`.
fn kernel_table(t: &Timed, iters: usize, ceiling: f64, triad: f64) -> (String, f64) {
    let mut s = format!(
        "{:<28} {:>12} {:>10} {:>9} {:>9} {:>8} {:>9}\n",
        "kernel", "kind", "time (µs)", "GFLOP/s", "of widest", "GB/s", "of triad"
    );
    let mut total_flops = 0.0;
    let p = t.exe.program();
    for (k, d) in p.kernels.iter().zip(&t.exe.timings) {
        let us = d.as_secs_f64() / iters as f64 * 1e6;
        let (kind, flops) = match &k.body {
            KernelBody::Contraction(c) => ("contraction", c.flops()),
            KernelBody::Loop(_) => ("loop", 0.0),
        };
        total_flops += flops;
        let dash = || "-".to_string();
        let (rate, frac, gbps, of_triad) = if flops > 0.0 {
            let g = flops / us / 1e3;
            (
                format!("{g:.1}"),
                format!("{:.2}", g / ceiling),
                dash(),
                dash(),
            )
        } else {
            let gb = touched_bytes(p, k) / us / 1e3;
            (
                dash(),
                dash(),
                format!("{gb:.1}"),
                format!("{:.2}", gb / triad),
            )
        };
        s.push_str(&format!(
            "{:<28} {:>12} {:>10.1} {:>9} {:>9} {:>8} {:>9}\n",
            k.name, kind, us, rate, frac, gbps, of_triad
        ));
    }
    (s, total_flops)
}

/// `netc bench`: per-kernel time and GFLOP/s, with the machine's FMA
/// ceilings measured in the same run. `program` is what runs (`model`
/// compiled, optimized or not); `model` is the graph as written, whose
/// parameters are initialized. With `json`, one JSON object per kernel and
/// then one summary object, a line each (for scripts and regressions).
pub fn bench(
    model: &Graph,
    program: Program,
    threads: usize,
    kernels: KernelPath,
    iters: usize,
    seed: u64,
    json: bool,
) -> Result<String, String> {
    let batch = program.batch;
    let mut t = prepare(model, program, threads, kernels, seed)?;
    for _ in 0..iters {
        t.run()?;
    }
    let total = t.total / iters as f64;
    let (ceilings, triad, ceiling_line) = ceilings(threads)?;
    let (widest, bits) = ceilings.widest();
    if json {
        return Ok(bench_json(
            model,
            &t,
            iters,
            threads,
            (&ceilings, triad),
            total,
        ));
    }
    let mut s = format!(
        "model `{}`, batch {batch}, {threads} thread(s), {iters} iterations; compiled {} kernels in {:.1} ms\n",
        model.name,
        t.exe.program().kernels.len(),
        t.compile_ms
    );
    s.push_str(&ceiling_line);
    s.push('\n');
    let (table, total_flops) = kernel_table(&t, iters, widest, triad);
    s.push_str(&table);
    s.push_str(&format!(
        "\ntotal {:.3} ms per {}, {:.1} GFLOP/s overall ({:.2} of the {threads}-thread {bits}-bit ceiling), {:.0} examples/s\n",
        total * 1e3,
        // A training step reads the optimizer's `hyper` input.
        if t.exe.program().inputs.iter().any(|b| b.name == "hyper") {
            "training step"
        } else {
            "forward pass"
        },
        total_flops / total / 1e9,
        total_flops / total / 1e9 / widest,
        batch as f64 / total
    ));
    Ok(s)
}

/// `netc bench --json`: a line per kernel, then the summary line.
fn bench_json(
    model: &Graph,
    t: &Timed,
    iters: usize,
    threads: usize,
    (ceilings, triad): (&Ceilings, f64),
    total: f64,
) -> String {
    use serde_json::json;
    let (widest, bits) = ceilings.widest();
    let mut out = String::new();
    let mut total_flops = 0.0;
    for (k, d) in t.exe.program().kernels.iter().zip(&t.exe.timings) {
        let us = d.as_secs_f64() / iters as f64 * 1e6;
        let (kind, flops) = match &k.body {
            KernelBody::Contraction(c) => ("contraction", c.flops()),
            KernelBody::Loop(_) => ("loop", 0.0),
        };
        total_flops += flops;
        let gflops = (flops > 0.0).then(|| flops / us / 1e3);
        let gbps = (flops == 0.0).then(|| touched_bytes(t.exe.program(), k) / us / 1e3);
        let row = json!({
            "kernel": k.name,
            "kind": kind,
            "time_us": us,
            "flops": flops,
            "gflops": gflops,
            "of_widest": gflops.map(|g| g / widest),
            "gbps": gbps,
            "of_triad": gbps.map(|g| g / triad),
        });
        out.push_str(&row.to_string());
        out.push('\n');
    }
    let summary = json!({
        "summary": true,
        "model": model.name,
        "batch": t.exe.program().batch,
        "threads": threads,
        "iters": iters,
        "kernels": t.exe.program().kernels.len(),
        "compile_ms": t.compile_ms,
        "ceiling_128_gflops": ceilings.f128,
        "ceiling_256_gflops": ceilings.f256,
        "ceiling_512_gflops": ceilings.f512,
        "widest_bits": bits,
        "triad_gbps": triad,
        "total_ms": total * 1e3,
        "gflops": total_flops / total / 1e9,
        "of_widest": total_flops / total / 1e9 / widest,
        "examples_per_s": t.exe.program().batch as f64 / total,
    });
    out.push_str(&summary.to_string());
    out.push('\n');
    out
}

/// `netc bench --compare-opt`: the model unoptimized (`-O0`) and optimized,
/// compiled in this process and timed alternately (one run of each per
/// iteration, so both see the same machine state); each version's kernels,
/// the kernels both have by name side by side, and the overall ratio.
pub fn bench_compare(
    model: &Graph,
    unoptimized: Program,
    optimized: Program,
    threads: usize,
    kernels: KernelPath,
    iters: usize,
    seed: u64,
) -> Result<String, String> {
    let batch = unoptimized.batch;
    let mut base = prepare(model, unoptimized, threads, kernels, seed)?;
    let mut fast = prepare(model, optimized, threads, kernels, seed)?;
    for _ in 0..iters {
        base.run()?;
        fast.run()?;
    }
    // Both compute the same outputs.
    for i in 0..base.exe.program().outputs.len() {
        let (a, b) = (base.exe.output(i), fast.exe.output(i));
        let agree = match (&a, &b) {
            (Some(a), Some(b)) => a
                .data
                .iter()
                .zip(&b.data)
                .all(|(x, y)| (x - y).abs() <= 1e-5 * x.abs().max(y.abs()).max(1e-3)),
            _ => false,
        };
        if !agree {
            return Err(format!(
                "the optimized and unoptimized programs disagree on output {i}; this is a netc bug"
            ));
        }
    }
    let (ceilings, triad, ceiling_line) = ceilings(threads)?;
    let ceiling = ceilings.widest().0;
    let mut s = format!(
        "model `{}`, batch {batch}, {threads} thread(s), {iters} iterations of each version, alternating\n",
        model.name
    );
    s.push_str(&ceiling_line);
    let per = |t: &Timed| t.total / iters as f64;
    for (label, t) in [("unoptimized (-O0)", &base), ("optimized", &fast)] {
        s.push_str(&format!(
            "\n{label}: {} kernels (compiled in {:.1} ms), {:.3} ms per forward pass\n",
            t.exe.program().kernels.len(),
            t.compile_ms,
            per(t) * 1e3
        ));
        s.push_str(&kernel_table(t, iters, ceiling, triad).0);
    }
    // Kernels present in both versions, e.g. a convolution with and
    // without its fused activation.
    let times = |t: &Timed| -> Vec<(String, f64)> {
        t.exe
            .program()
            .kernels
            .iter()
            .zip(&t.exe.timings)
            .map(|(k, d)| (k.name.clone(), d.as_secs_f64() / iters as f64 * 1e6))
            .collect()
    };
    let (tb, tf) = (times(&base), times(&fast));
    let common: Vec<(&String, f64, f64)> = tf
        .iter()
        .filter_map(|(n, f)| tb.iter().find(|(m, _)| m == n).map(|(_, b)| (n, *b, *f)))
        .collect();
    if !common.is_empty() {
        s.push_str(&format!(
            "\n{:<28} {:>12} {:>12} {:>8}\n",
            "kernel in both", "-O0 (µs)", "opt (µs)", "ratio"
        ));
        for (n, b, f) in common {
            s.push_str(&format!(
                "{:<28} {:>12.1} {:>12.1} {:>7.2}x\n",
                n,
                b,
                f,
                b / f.max(1e-9)
            ));
        }
    }
    s.push_str(&format!(
        "\ntotal: -O0 {:.3} ms, optimized {:.3} ms per forward pass: {:.2}x faster optimized ({} -> {} kernels)\n",
        per(&base) * 1e3,
        per(&fast) * 1e3,
        per(&base) / per(&fast).max(1e-12),
        base.exe.program().kernels.len(),
        fast.exe.program().kernels.len()
    ));
    Ok(s)
}
