//! The GPU backend without a GPU: every PTX module of every example
//! (forward and training programs) assembles with `ptxas` for sm_80 and
//! sm_90, and the launch-geometry interpreter — which runs each kernel
//! with the grid, block, tiling and barrier structure the PTX uses —
//! matches the reference interpreter (the CPU backend's oracle).

mod common;
use common::*;

use netc_compiler::codegen::ptx::{geometry, program_ptx};
use netc_compiler::kernel::interp;
use netc_compiler::kernel::ir::Program;
use netc_compiler::pipeline::{Compilation, CompileOptions};
use std::process::Command;

#[test]
fn every_ptx_module_assembles_for_sm_80_and_sm_90() {
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (programs, skipped) = programs(4, &[], false);
    let mut assembled = 0;
    for (label, p) in &programs {
        let started = std::time::Instant::now();
        let m = program_ptx(p).unwrap_or_else(|e| panic!("{label}: {e}"));
        let (text, distinct) = distinct_kernels(&m.text);
        let file = dir
            .path()
            .join(format!("{}.ptx", label.replace(['/', ' '], "_")));
        std::fs::write(&file, &text).unwrap();
        // Both architectures at once: the module's ptxas runs dominate
        // this test, and CI has two cores.
        let runs: Vec<_> = ["sm_80", "sm_90"]
            .into_iter()
            .map(|arch| {
                let child = Command::new(&ptxas)
                    .arg(format!("-arch={arch}"))
                    .arg(&file)
                    .args(["-o", "/dev/null"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                (arch, child)
            })
            .collect();
        for (arch, child) in runs {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{label}: ptxas -arch={arch} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assembled += 1;
        eprintln!(
            "{label}: {} kernels ({distinct} distinct), {} bytes of PTX, {:.1?}",
            p.kernels.len(),
            m.text.len(),
            started.elapsed()
        );
    }
    eprintln!(
        "{assembled} PTX modules ({} kernels) assembled for sm_80 and sm_90",
        programs.iter().map(|(_, p)| p.kernels.len()).sum::<usize>()
    );
    for s in &skipped {
        eprintln!("note: training program skipped: {s}");
    }
    eprintln!("{} training program(s) skipped", skipped.len());
    assert!(assembled >= 20, "too few programs: {assembled}");
}

/// The module with each kernel's code kept once: the unrolled steps of a
/// recurrent layer compile to hundreds of kernels that differ only in
/// their symbol (`k12_lstm1_t3` and `k15_lstm1_t4` hold the same
/// instructions), and ptxas would spend minutes assembling copies. A
/// kernel is the text from its `// launch SYMBOL:` comment to the next;
/// two are the same when they are equal with their symbol replaced and
/// their `// kernel NAME` comment left out.
/// Returns the module and the number of distinct kernels.
fn distinct_kernels(module: &str) -> (String, usize) {
    let mut parts = module.split_inclusive('\n').peekable();
    let mut out = String::new();
    while let Some(line) = parts.next_if(|l| !l.starts_with("// launch ")) {
        out.push_str(line);
    }
    let mut seen = std::collections::HashSet::new();
    let mut kernel = String::new();
    let mut flush = |kernel: &mut String, out: &mut String| {
        if kernel.is_empty() {
            return;
        }
        let symbol = kernel["// launch ".len()..].split(':').next().unwrap();
        let code: String = kernel
            .split_inclusive('\n')
            .filter(|l| !l.starts_with("// kernel "))
            .collect();
        if seen.insert(code.replace(symbol, "SYMBOL")) {
            out.push_str(kernel);
        }
        kernel.clear();
    };
    for line in parts {
        if line.starts_with("// launch ") {
            flush(&mut kernel, &mut out);
        }
        kernel.push_str(line);
    }
    flush(&mut kernel, &mut out);
    (out, seen.len())
}

/// Whether a kernel's loops hold a bounds guard (which may skip work).
fn guarded(body: &[netc_compiler::kernel::ir::Stmt]) -> bool {
    use netc_compiler::kernel::ir::Stmt;
    body.iter().any(|s| match s {
        Stmt::IfInBounds { .. } => true,
        Stmt::Loop { body, .. } => guarded(body),
        _ => false,
    })
}

/// The threads and longest per-thread loop the geometry interpreter
/// measured are the launch plan's figures (`kernel_work`, which the
/// parallelism tests bound): exactly, unless a guard skipped work.
fn agrees_with_the_plan(label: &str, p: &Program, measured: &[geometry::Measured]) {
    use netc_compiler::kernel::ir::KernelBody;
    let plans = netc_compiler::codegen::ptx::program_plan(p).unwrap();
    for ((k, plan), m) in p.kernels.iter().zip(&plans).zip(measured) {
        let w = netc_compiler::codegen::ptx::kernel_work(plan);
        assert_eq!(
            m.threads,
            w.blocks * w.threads_per_block,
            "{label}: `{}`",
            k.name
        );
        let exact = match &k.body {
            KernelBody::Loop(l) => !guarded(&l.body),
            KernelBody::Contraction(_) => true,
        };
        assert!(
            m.serial == w.serial || (!exact && m.serial < w.serial),
            "{label}: `{}` ran {} trips in one thread, its plan says {}",
            k.name,
            m.serial,
            w.serial
        );
    }
}

/// Equal up to summation order. The launch plans reduce in trees where
/// the reference adds in order (block reductions, one block per output of
/// a contraction), which moves a sum with cancellation by far more than
/// its own rounding, and Adam's first step turns that into ~1e-5 of a
/// weight; an indexing or decomposition error is wrong by whole values.
/// As loose as the PTX-text comparison below (the 1e-5 floor covers
/// gradients that are zero but for rounding, as a bias before batchnorm).
fn close(a: f32, b: f32, scale: f32) -> bool {
    (a.is_nan() && b.is_nan())
        || a == b
        || (a - b).abs() <= 1e-3 * a.abs().max(b.abs()) + 1e-5 * scale + 1e-5
}

/// Runs `p` with the reference interpreter and with the launch geometry
/// and compares every buffer.
fn geometry_matches(label: &str, p: &Program) {
    let mut want = program_buffers(p, 0x2545_f491_4f6c_dd1d);
    let mut got = want.clone();
    interp::run_program(p, &mut want).unwrap_or_else(|e| panic!("{label}: interp: {e}"));
    let measured = geometry::run_program_measured(p, &mut got)
        .unwrap_or_else(|e| panic!("{label}: geometry: {e}"));
    agrees_with_the_plan(label, p, &measured);
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
        if let Some(j) = (0..w.len()).find(|&j| !close(w[j], g[j], scale)) {
            panic!(
                "{label}: buffer `{}`[{j}]: reference {} vs GPU geometry {}",
                p.buffers[i].name, w[j], g[j]
            );
        }
    }
}

#[test]
fn launch_geometry_matches_the_reference_on_every_example() {
    // The two ImageNet-sized networks take minutes in an interpreter; they
    // run in the ignored test below.
    // Plain SGD or momentum: Adam's first step moves a weight by up to its
    // learning rate when its gradient is a near-zero sum, whose value then
    // depends on the order of the sum (see `programs`). Adam and AdamW run
    // on the course CNN, whose gradients are not.
    let (mut programs, skipped) = programs(2, &["alexnet", "vgg16"], true);
    let others: Vec<String> = net_files("examples")
        .iter()
        .map(|f| f.file_stem().unwrap().to_string_lossy().into_owned())
        .filter(|s| s != "course_cnn")
        .collect();
    let others: Vec<&str> = others.iter().map(String::as_str).collect();
    let (adam, _) = common::programs(2, &others, false);
    programs.extend(adam.into_iter().filter(|(l, _)| l.contains("training")));
    for (label, p) in &programs {
        geometry_matches(label, p);
    }
    eprintln!(
        "{} programs match; {} training program(s) skipped",
        programs.len(),
        skipped.len()
    );
}

#[test]
#[ignore = "AlexNet and VGG-16 take minutes in the interpreters; run with --ignored"]
fn launch_geometry_matches_the_reference_on_the_imagenet_models() {
    for stem in ["alexnet", "vgg16"] {
        let f = root().join(format!("examples/{stem}.net"));
        let checked = check_ok(&std::fs::read_to_string(f).unwrap());
        for g in &checked.graphs {
            let p = Compilation::new(g, CompileOptions::default())
                .program(1)
                .unwrap();
            geometry_matches(stem, &p);
        }
    }
}

/// The integer divisions and remainders in a kernel's text: `div`/`rem`
/// of any integer type (`div.rn.f32` and other float divisions are not
/// counted).
fn integer_divisions(kernel: &str) -> usize {
    kernel
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace().skip_while(|w| w.starts_with('@'));
            words.next()
        })
        .filter(|op| (op.starts_with("div.") || op.starts_with("rem.")) && !op.ends_with(".f32"))
        .count()
}

/// The distinct kernels of a module, each as its text from its
/// `// launch` comment to the next.
fn kernels_of(module: &str) -> Vec<String> {
    let (text, _) = distinct_kernels(module);
    let mut out = Vec::new();
    for part in text.split("// launch ").skip(1) {
        out.push(format!("// launch {part}"));
    }
    out
}

/// Issue 16, item 3: index arithmetic is 32-bit where the sizes fit (they
/// do in every example) and never divides in 64 bits — `div.u64` and
/// `rem.u64` become a ~65-instruction subroutine call in SASS. Counts the
/// distinct kernels with a 64-bit division or remainder, and those with
/// any integer division at all.
#[test]
fn no_example_kernel_divides_in_64_bits() {
    let (programs, _) = programs(4, &[], false);
    let (mut kernels, mut wide, mut any) = (0, 0, 0);
    let mut offenders = Vec::new();
    for (label, p) in &programs {
        let m = program_ptx(p).unwrap_or_else(|e| panic!("{label}: {e}"));
        for k in kernels_of(&m.text) {
            kernels += 1;
            if k.contains("div.u64") || k.contains("rem.u64") || k.contains("div.s64") {
                wide += 1;
                if offenders.len() < 5 {
                    offenders.push(format!("{label}: {}", k.lines().next().unwrap()));
                }
            }
            if integer_divisions(&k) > 0 {
                any += 1;
            }
        }
    }
    eprintln!(
        "{kernels} distinct kernels in {} programs: {wide} with a 64-bit div/rem, {any} with any integer div/rem",
        programs.len()
    );
    assert!(
        wide == 0,
        "{wide} kernels divide in 64 bits, e.g.\n{}",
        offenders.join("\n")
    );
    // Stronger than the bar (no division by a non-power of two in
    // an inner loop): divisions by constants are multiply-highs, shifts
    // and masks, so no kernel has an integer `div` or `rem` at all.
    assert!(any == 0, "{any} kernels divide integers");
}

fn temp(name: &str, len: usize) -> netc_compiler::kernel::ir::Buffer {
    netc_compiler::kernel::ir::Buffer {
        name: name.into(),
        len,
        kind: netc_compiler::kernel::ir::BufKind::Temp,
    }
}

/// A dense contraction `C[M, N] = A[M, K] · B[K, N]` over buffers 0, 1, 2
/// with its rows and reduction index split into the given digits.
fn dense(
    m_dims: [usize; 3],
    n: usize,
    k_dims: [usize; 3],
) -> netc_compiler::kernel::ir::Contraction {
    let k: usize = k_dims.iter().product();
    netc_compiler::kernel::ir::Contraction {
        m_dims,
        m_strides: [m_dims[1] * m_dims[2] * k, m_dims[2] * k, k],
        n,
        k_dims,
        k_strides: [k_dims[1] * k_dims[2], k_dims[2], 1],
        a: (0, 0),
        b: (1, 0),
        ldb: n,
        b_transposed: false,
        c: (2, 0),
        ldc: n,
        bias: None,
        epilogue: netc_compiler::kernel::ir::Epilogue::None,
        accumulate: false,
    }
}

/// `C[M, N] = Aᵀ · Bᵀ` with A stored `[K, M]` and B `[N, K]`: both
/// operands read transposed, as gradients read them.
fn transposed(m: usize, n: usize, k: usize) -> Program {
    one_kernel_program(
        vec![temp("a", k * m), temp("b", n * k), temp("c", m * n)],
        netc_compiler::kernel::ir::KernelBody::Contraction(
            netc_compiler::kernel::ir::Contraction {
                m_strides: [0, 0, 1],
                k_strides: [0, 0, m],
                ldb: k,
                b_transposed: true,
                ..dense([1, 1, m], n, [1, 1, k])
            },
        ),
    )
}

fn one_kernel_program(
    buffers: Vec<netc_compiler::kernel::ir::Buffer>,
    body: netc_compiler::kernel::ir::KernelBody,
) -> Program {
    Program {
        name: "t".into(),
        batch: 1,
        buffers,
        kernels: vec![netc_compiler::kernel::ir::Kernel {
            name: "k".into(),
            body,
        }],
        inputs: vec![],
        params: vec![],
        outputs: vec![],
    }
}

/// Index arithmetic is 32-bit where every size fits and 64-bit otherwise:
/// a kernel over buffers of 2.5·10^9 elements (an elementwise loop and a
/// contraction with 2^27 rows) keeps 64-bit indices, and its module still
/// assembles. A small contraction whose reduction digits (3, 5, 7) make
/// the tile step carry through every digit runs in 32 bits and matches
/// the reference.
#[test]
fn index_arithmetic_falls_back_to_64_bits_beyond_2_to_the_31() {
    use netc_compiler::kernel::ir::{Expr, Index, KernelBody, LoopKernel, Stmt};
    let big = 50_000usize;
    let at = Index::new([(0, big as i64), (1, 1)], 0);
    let elementwise = one_kernel_program(
        vec![temp("x", big * big), temp("y", big * big)],
        KernelBody::Loop(LoopKernel {
            vars: 2,
            scalars: 0,
            body: vec![Stmt::Loop {
                var: 0,
                extent: big,
                body: vec![Stmt::Loop {
                    var: 1,
                    extent: big,
                    body: vec![Stmt::Store {
                        buf: 1,
                        index: at.clone(),
                        value: Expr::load(0, at) * Expr::Const(2.0),
                    }],
                }],
            }],
        }),
    );
    let rows = 1usize << 27;
    let product = one_kernel_program(
        vec![temp("a", rows * 20), temp("b", 20 * 9), temp("c", rows * 9)],
        KernelBody::Contraction(dense([1, 1, rows], 9, [1, 1, 20])),
    );
    let small = one_kernel_program(
        vec![temp("a", 30 * 105), temp("b", 105 * 19), temp("c", 30 * 19)],
        KernelBody::Contraction(dense([2, 3, 5], 19, [3, 5, 7])),
    );
    let ptxas = ptxas();
    let dir = tempfile::tempdir().unwrap();
    for (label, p, index32) in [
        ("elementwise 2.5e9", &elementwise, false),
        ("contraction 2^27 rows", &product, false),
        ("contraction 30x19x105", &small, true),
    ] {
        let m = program_ptx(p).unwrap();
        assert_eq!(m.plans[0].index32, index32, "{label}");
        let (w, other) = if index32 {
            ("s32", "s64")
        } else {
            ("s64", "s32")
        };
        assert!(
            m.text.contains(&format!("mad.lo.{w}")),
            "{label}:\n{}",
            m.text
        );
        assert!(
            !m.text.contains(&format!("mad.lo.{other}")),
            "{label}:\n{}",
            m.text
        );
        // Not even the 64-bit fallback divides: `mul.hi.u64` by a magic
        // number instead.
        assert_eq!(integer_divisions(&m.text), 0, "{label}:\n{}", m.text);
        if index32 {
            geometry_matches(label, p);
        }
        if let Some(ptxas) = &ptxas {
            let file = dir.path().join("t.ptx");
            std::fs::write(&file, &m.text).unwrap();
            let out = Command::new(ptxas)
                .args(["-arch=sm_80", "-o", "/dev/null"])
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{label}: ptxas failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                m.text
            );
        }
    }
}

mod ptx_sim;

/// The PTX text itself, run by a small PTX interpreter (`ptx_sim`) over
/// every thread of the planned grid, matches the reference interpreter:
/// this checks the printed index arithmetic (32-bit indices, magic-number
/// divisions, digits stepped by carrying), which the launch-geometry
/// interpreter — reading the plan, not the text — cannot. Programs whose
/// grids would take too long to interpret are left out: the default work
/// budget keeps CI's run to seconds (about ten programs, recurrent training
/// steps among them); `NETC_PTX_SIM_BUDGET=3000000` runs 22 of them.
#[test]
fn the_ptx_text_computes_what_the_reference_does() {
    let (mut programs, _) = programs(1, &["alexnet", "vgg16"], true);
    let small = one_kernel_program(
        vec![temp("a", 30 * 105), temp("b", 105 * 19), temp("c", 30 * 19)],
        netc_compiler::kernel::ir::KernelBody::Contraction(dense([2, 3, 5], 19, [3, 5, 7])),
    );
    programs.insert(0, ("contraction 30x19x105".into(), small));
    // Tiled (a short reduction) and one block per output (a long one).
    for (m, n, k) in [(21, 18, 37), (12, 20, 300)] {
        let label = format!("transposed contraction {m}x{n}x{k}");
        let p = transposed(m, n, k);
        geometry_matches(&label, &p);
        programs.insert(0, (label, p));
    }
    let budget: u64 = std::env::var("NETC_PTX_SIM_BUDGET")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(800_000);
    let (mut ran, mut left) = (0, Vec::new());
    for (label, p) in &programs {
        let m = program_ptx(p).unwrap();
        // Threads times each thread's longest loop, roughly.
        let work: u64 = m
            .plans
            .iter()
            .map(|pl| {
                let threads = pl
                    .grid
                    .iter()
                    .chain(&pl.block)
                    .map(|d| u64::from(*d))
                    .product::<u64>();
                let k = match &p.kernels.iter().find(|k| k.name == pl.kernel).unwrap().body {
                    netc_compiler::kernel::ir::KernelBody::Contraction(c) => {
                        (c.k() as u64).div_ceil(16)
                    }
                    _ => 1,
                };
                threads * k
            })
            .sum();
        if work > budget {
            left.push(label.clone());
            continue;
        }
        let started = std::time::Instant::now();
        let mut want = program_buffers(p, 0x2545_f491_4f6c_dd1d);
        let mut got = want.clone();
        interp::run_program(p, &mut want).unwrap_or_else(|e| panic!("{label}: interp: {e}"));
        ptx_sim::run_module(&m, &mut got);
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            // Looser than `close`: the PTX fuses multiply-adds and takes
            // e^x as 2^(x·log2 e), which long recurrences amplify to ~1e-4
            // relative; an indexing error is wrong by whole values.
            let near = |a: f32, b: f32| {
                (a.is_nan() && b.is_nan()) || (a - b).abs() <= 2e-3 * a.abs().max(b.abs()) + 1e-5
            };
            if let Some(j) = (0..w.len()).find(|&j| !near(w[j], g[j])) {
                panic!(
                    "{label}: buffer `{}`[{j}]: reference {} vs PTX {}",
                    p.buffers[i].name, w[j], g[j]
                );
            }
        }
        ran += 1;
        eprintln!("{label}: PTX matches ({:.1?})", started.elapsed());
    }
    eprintln!("{ran} programs' PTX run and matched; left out: {left:?}");
    assert!(ran >= 5, "too few programs interpreted: {ran}");
}
