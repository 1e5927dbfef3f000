//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root (tests run with it as the working directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the `netc` binary with `args` from the repository root.
/// Returns (exit code, stdout, stderr).
///
/// A `netc train` that names no place for its weights (`-o`, `--runs-dir`,
/// `--no-save`) would keep its run in `runs/` of the working directory,
/// here the repository; it gets `--no-save`. Tests of run directories run
/// in a temporary directory ([`netc_in`]).
pub fn netc(args: &[&str]) -> (i32, String, String) {
    let command = args.iter().find(|a| !a.starts_with('-'));
    let places = ["-o", "--output", "--runs-dir", "--no-save"];
    let mut args = args.to_vec();
    if command == Some(&"train") && !args.iter().any(|a| places.contains(a)) {
        args.push("--no-save");
    }
    netc_in(&root(), &args)
}

/// Runs the `netc` binary with `args` in the directory `cwd`.
/// Returns (exit code, stdout, stderr).
pub fn netc_in(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_netc"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .output()
        .expect("the netc binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every `.net` file in a directory (relative to the root), sorted.
pub fn net_files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .expect("directory exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "net"))
        .collect();
    v.sort();
    v
}

/// `dir/file.net` relative to the root, as the CLI is given it.
pub fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// Parses and checks a file through the library; panics with the
/// diagnostics if it has errors.
pub fn check_ok(src: &str) -> netc_compiler::Checked {
    let ast = netc_lang::parse(src).unwrap_or_else(|d| panic!("parse errors: {:?}", d.0));
    let checked = netc_compiler::check(&ast);
    let errors: Vec<_> = checked
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .collect();
    assert!(errors.is_empty(), "unexpected errors: {errors:#?}");
    checked
}

/// Deterministic buffers for running `p`: inputs in [0, 1), parameters in
/// [−0.5, 0.5), the `hyper` input at lr 0.01 and 1 elsewhere, everything
/// else zero (xorshift from `seed`).
pub fn program_buffers(p: &netc_compiler::kernel::ir::Program, seed: u64) -> Vec<Vec<f32>> {
    use netc_compiler::kernel::ir::BufKind;
    let mut seed = seed;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32
    };
    p.buffers
        .iter()
        .map(|b| match &b.kind {
            BufKind::Input(name) if name == "hyper" => {
                let mut v = vec![1.0; b.len];
                v[0] = 0.01;
                v
            }
            BufKind::Input(_) => (0..b.len).map(|_| next()).collect(),
            BufKind::Param(_) => (0..b.len).map(|_| next() - 0.5).collect(),
            BufKind::Temp | BufKind::State(_) => vec![0.0; b.len],
        })
        .collect()
}

/// The length a model with an input of any length (`[*, F]`) is compiled
/// at by the tests that run every example.
pub const TEST_STEPS: usize = 7;

/// `g`, or a variable-length `g` instantiated at [`TEST_STEPS`].
pub fn at_test_length(g: &netc_compiler::Graph) -> netc_compiler::Graph {
    netc_compiler::masking::instantiate(g, TEST_STEPS).expect("the model checks at any length")
}

/// Examples whose training programs are compared with plain SGD even when
/// not `well_conditioned`, for the reason below: with its own Adam,
/// japanese_vowels' `lstm1.weight[19]` (an LSTM input weight behind a
/// batchnorm) came out 0.014303 in the reference and 0.014308 in the GPU
/// launch geometry after one step, 3.5e-4 apart, above the 1e-4 the
/// comparison allows.
const ADAM_AMPLIFIED: &[&str] = &["japanese_vowels"];

/// Every program of every example: `(label, program)` for the optimized
/// forward pass at `batch`, and the training step where the model has a
/// train section and can be differentiated. With `well_conditioned`, every
/// step updates with plain SGD or momentum: Adam's first step moves each
/// weight by about ±lr whatever the gradient's size, so two correct
/// programs that sum a near-zero gradient in different orders can differ
/// by up to lr in a weight (the examples in [`ADAM_AMPLIFIED`] always
/// update with SGD). Models that cannot be differentiated yet are listed
/// in the second result.
pub fn programs(
    batch: usize,
    skip: &[&str],
    well_conditioned: bool,
) -> (
    Vec<(String, netc_compiler::kernel::ir::Program)>,
    Vec<String>,
) {
    use netc_compiler::pipeline::{lower_training, Compilation, CompileOptions};
    let (mut out, mut skipped) = (Vec::new(), Vec::new());
    for f in net_files("examples") {
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        if skip.contains(&stem.as_str()) {
            continue;
        }
        let checked = check_ok(&std::fs::read_to_string(&f).unwrap());
        for g in &checked.graphs {
            let g = &at_test_length(g);
            let compilation = Compilation::new(g, CompileOptions::default());
            let p = compilation
                .program(batch)
                .unwrap_or_else(|e| panic!("{stem}: {e}"));
            out.push((format!("{stem}/{} forward", g.name), p));
            let Some(cfg) = checked.train_for(&g.name) else {
                continue;
            };
            match compilation.training_graph(&cfg.objective()) {
                Ok(tg) => {
                    let mut cfg = cfg.clone();
                    if well_conditioned || ADAM_AMPLIFIED.contains(&stem.as_str()) {
                        cfg.optimizer = netc_compiler::train::Optimizer::Sgd { lr: 0.01 };
                    }
                    let tp = lower_training(&tg, &cfg, batch)
                        .unwrap_or_else(|e| panic!("{stem}: training program: {e}"));
                    out.push((format!("{stem}/{} training", g.name), tp.program));
                    if stem == "course_cnn" {
                        // Every other update kernel: the examples that
                        // clip by norm cannot be differentiated yet.
                        for (tag, opt) in optimizers()
                            .into_iter()
                            .filter(|(tag, _)| !well_conditioned || tag.contains("momentum"))
                        {
                            let mut c = cfg.clone();
                            c.optimizer = opt;
                            // Global-norm clipping sums ~700k squares; in
                            // a tree on the GPU and sequentially in the
                            // reference, which differ by ~1e-4 relative,
                            // and Adam's ε amplifies that for tiny
                            // gradients: clip only with momentum.
                            c.clip_norm = tag.contains("clip").then_some(1.0);
                            c.clip_value = Some(0.5);
                            c.l1 = 1e-4;
                            c.l2 = 1e-4;
                            let tp = lower_training(&tg, &c, batch).unwrap();
                            out.push((format!("{stem}/{} training {tag}", g.name), tp.program));
                        }
                    }
                }
                Err(e) => skipped.push(format!("{stem}/{}: {e}", g.name)),
            }
        }
    }
    (out, skipped)
}

/// Momentum and Nesterov with global-norm clipping, and AdamW, each with
/// value clipping and L1/L2 penalties (the course CNN's own section trains
/// with plain Adam).
pub fn optimizers() -> Vec<(&'static str, netc_compiler::train::Optimizer)> {
    use netc_compiler::train::Optimizer;
    vec![
        (
            "momentum+clip",
            Optimizer::Momentum {
                lr: 0.01,
                momentum: 0.9,
                nesterov: false,
            },
        ),
        (
            "nesterov+clip",
            Optimizer::Momentum {
                lr: 0.01,
                momentum: 0.9,
                nesterov: true,
            },
        ),
        (
            "adamw",
            Optimizer::Adam {
                lr: 0.001,
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-8,
                weight_decay: 0.01,
            },
        ),
    ]
}

/// Writes `dir/name`: `n` rows of two separable 2-D blobs as CSV (`a,b,label`,
/// label 0 or 1 in the last column), for quick training runs.
pub fn blobs_csv(dir: &Path, name: &str, n: usize) -> PathBuf {
    let mut csv = String::from("a,b,label\n");
    for i in 0..n {
        let c = i % 2;
        let off = if c == 0 { -1.0 } else { 1.0 };
        let j = (i as f32 * 0.37).sin() * 0.3;
        csv.push_str(&format!("{},{},{c}\n", off + j, off - j));
    }
    let p = dir.join(name);
    std::fs::write(&p, csv).expect("the test directory is writable");
    p
}

/// An MNIST-layout directory of 2×2 images: `n` training and 8 test
/// examples, class 1 bright, class 0 dark.
pub fn idx_dir(dir: &Path, n: usize) -> String {
    let d = dir.join("idx");
    std::fs::create_dir_all(&d).unwrap();
    for (prefix, n) in [("train", n), ("t10k", 8)] {
        let mut img = vec![0, 0, 8, 3];
        let mut lab = vec![0, 0, 8, 1];
        for v in [n as u32, 2, 2] {
            img.extend(v.to_be_bytes());
        }
        lab.extend((n as u32).to_be_bytes());
        for i in 0..n {
            let c = (i % 2) as u8;
            img.extend([c * 200 + 20 + i as u8 % 7; 4]);
            lab.push(c);
        }
        std::fs::write(d.join(format!("{prefix}-images-idx3-ubyte")), img).unwrap();
        std::fs::write(d.join(format!("{prefix}-labels-idx1-ubyte")), lab).unwrap();
    }
    d.display().to_string()
}

/// `ptxas` from `NETC_PTXAS`, the cache `.ci/run` installs into, or PATH.
pub fn ptxas() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("NETC_PTXAS") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/netc-ptxas/nvidia/cuda_nvcc/bin/ptxas"));
    }
    candidates.push(PathBuf::from("ptxas"));
    candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// `ptxas` as [`ptxas`] finds it; where there is none, says the test is
/// skipped and gives None (and fails in CI, where `.ci/run` installs it).
pub fn ptxas_or_skip() -> Option<PathBuf> {
    let found = ptxas();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "ptxas not found in CI: .ci/run installs it and sets NETC_PTXAS"
        );
        eprintln!("skipped: ptxas not found (set NETC_PTXAS or run .ci/run)");
    }
    found
}

/// `cuobjdump` (the SASS disassembler, from the PyPI wheel
/// `nvidia-cuda-cuobjdump`, with `nvidia-cuda-nvdisasm`'s `nvdisasm`,
/// which it runs, in the same folder) from `NETC_CUOBJDUMP`, the cache `.ci/run`
/// installs into, or PATH; where there is none, says the test is skipped
/// and gives None (and fails in CI, where `.ci/run` installs it).
pub fn cuobjdump_or_skip() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("NETC_CUOBJDUMP") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let dir = PathBuf::from(home).join(".cache/netc-cuobjdump/nvidia");
        // The wheel names its folder after the CUDA major version (`cu13`).
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                candidates.push(e.path().join("bin/cuobjdump"));
            }
        }
    }
    candidates.push(PathBuf::from("cuobjdump"));
    let found = candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "cuobjdump not found in CI: .ci/run installs it and sets NETC_CUOBJDUMP"
        );
        eprintln!("skipped: cuobjdump not found (set NETC_CUOBJDUMP or run .ci/run)");
    }
    found
}

/// The forward program and the training step of `g` (trained as `cfg`,
/// batch 3) at O0 and O1, each with a label `"<forward|training step> at
/// <level>"`.
pub fn forward_and_training_programs(
    g: &netc_compiler::Graph,
    cfg: &netc_compiler::train::TrainConfig,
) -> Vec<(String, netc_compiler::kernel::ir::Program)> {
    use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};
    let mut v = Vec::new();
    for level in [OptLevel::O0, OptLevel::O1] {
        let c = Compilation::new(g, CompileOptions::at(level));
        let forward = c.program(3).unwrap();
        let training = c.training_program(cfg, 3).unwrap().program;
        for (what, p) in [("forward", forward), ("training step", training)] {
            v.push((format!("{what} at {level:?}"), p));
        }
    }
    v
}

fn close(a: f32, b: f32, scale: f32) -> bool {
    a == b || (a - b).abs() <= 1e-4 * a.abs().max(b.abs()) + 1e-5 * scale + 1e-7
}

/// Panics (naming `label`, the buffer and the index) where a buffer of
/// `got` that is not a temporary, or is an output, differs from `want`.
fn compare_buffers(
    label: &str,
    p: &netc_compiler::kernel::ir::Program,
    got: &dyn Fn(usize) -> Vec<f32>,
    want: &[Vec<f32>],
) {
    use netc_compiler::kernel::ir::BufKind;
    let outputs: Vec<usize> = p.outputs.iter().map(|o| o.buf).collect();
    for (b, w) in want.iter().enumerate() {
        if matches!(p.buffers[b].kind, BufKind::Temp) && !outputs.contains(&b) {
            continue;
        }
        let g = got(b);
        let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
        if let Some(j) = (0..w.len()).find(|&j| !close(w[j], g[j], scale)) {
            panic!(
                "{label}: buffer `{}`[{j}]: interpreter {} vs {}",
                p.buffers[b].name, w[j], g[j]
            );
        }
    }
}

/// Runs `p` from the buffers `init` on the interpreter, the CPU backend
/// (two threads) and the PTX backend's launch geometry, and checks that
/// both backends agree with the interpreter.
pub fn backends_agree(label: &str, p: &netc_compiler::kernel::ir::Program, init: &[Vec<f32>]) {
    use netc_compiler::codegen::ptx::geometry;
    use netc_compiler::kernel::interp;
    use netc_compiler::kernel::ir::BufKind;
    let mut want = init.to_vec();
    interp::run_program(p, &mut want).unwrap();
    // The CPU backend on two threads.
    let mut exe = netc_runtime::Executable::compile(p.clone(), 2).unwrap();
    for (b, data) in init.iter().enumerate() {
        if !matches!(p.buffers[b].kind, BufKind::Temp) {
            exe.write_buffer(b, data).unwrap();
        }
    }
    exe.run().unwrap();
    compare_buffers(
        &format!("{label}, CPU"),
        p,
        &|b| exe.buffer(b).to_vec(),
        &want,
    );
    // The PTX backend's launch geometry.
    let mut gpu = init.to_vec();
    geometry::run_program(p, &mut gpu).unwrap();
    compare_buffers(
        &format!("{label}, GPU geometry"),
        p,
        &|b| gpu[b].clone(),
        &want,
    );
}

/// Runs the forward program and the training step of `c` at batch 1 in
/// the reference interpreter, for hand-computed golden cases. Each buffer
/// starts as [`program_buffers`] (seed 7) fills it, except where `fill`
/// returns values for its kind and length (inputs, `target`, parameters
/// by name).
/// Returns the first output of the forward pass and the training step's
/// `grad:NAME` output for each name in `grads`.
pub fn interp_output_and_grads(
    c: &netc_compiler::pipeline::Compilation,
    cfg: &netc_compiler::train::TrainConfig,
    fill: impl Fn(&netc_compiler::kernel::ir::BufKind, usize) -> Option<Vec<f32>>,
    grads: &[&str],
) -> (Vec<f32>, Vec<Vec<f32>>) {
    use netc_compiler::kernel::{interp, ir::Program};
    let run = |p: &Program| {
        let mut bufs = program_buffers(p, 7);
        for (b, buf) in p.buffers.iter().enumerate() {
            if let Some(v) = fill(&buf.kind, buf.len) {
                bufs[b] = v;
            }
        }
        interp::run_program(p, &mut bufs).unwrap();
        bufs
    };
    let p = c.program(1).unwrap();
    let out = run(&p)[p.outputs[0].buf].clone();
    let tp = c.training_program(cfg, 1).unwrap().program;
    let bufs = run(&tp);
    let grads = grads
        .iter()
        .map(|g| {
            let name = format!("grad:{g}");
            let o = tp.outputs.iter().find(|o| o.name == name).unwrap();
            bufs[o.buf].clone()
        })
        .collect();
    (out, grads)
}
