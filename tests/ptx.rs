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

/// One SASS instruction of a disassembly: its address and text (opcode
/// and operands, predicate included).
struct Sass {
    addr: u64,
    text: String,
}

/// The instructions of `cuobjdump -sass` output, with label lines
/// (`.L_x_3:`) resolved to the address of the instruction that follows.
fn parse_sass(dump: &str) -> (Vec<Sass>, std::collections::HashMap<String, u64>) {
    let mut out = Vec::new();
    let mut labels = std::collections::HashMap::new();
    let mut pending: Vec<String> = Vec::new();
    for line in dump.lines() {
        let t = line.trim();
        if let Some(l) = t.strip_suffix(':').filter(|l| l.starts_with(".L")) {
            pending.push(l.to_string());
            continue;
        }
        let Some(rest) = t.strip_prefix("/*") else {
            continue;
        };
        let Some((addr, ins)) = rest.split_once("*/") else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr.trim(), 16) else {
            continue;
        };
        let text = ins.split(";").next().unwrap().trim().to_string();
        if text.is_empty() {
            continue;
        }
        for l in pending.drain(..) {
            labels.insert(l, addr);
        }
        out.push(Sass { addr, text });
    }
    (out, labels)
}

/// The opcode of a SASS instruction (its predicate left out).
fn sass_op(text: &str) -> &str {
    let mut words = text.split_whitespace();
    let mut w = words.next().unwrap_or("");
    if w.starts_with('@') {
        w = words.next().unwrap_or("");
    }
    w
}

/// The loop (a branch to an earlier address, over [target, branch]) of
/// `sass` with the most `op` instructions: (their count, its length).
fn busiest_loop(
    sass: &[Sass],
    labels: &std::collections::HashMap<String, u64>,
    op: &str,
) -> Option<(usize, usize)> {
    let mut best: Option<(usize, usize)> = None;
    for s in sass {
        if !sass_op(&s.text).starts_with("BRA") {
            continue;
        }
        let target = s.text.split_whitespace().last().unwrap();
        let target = target.trim_matches(|c| c == '`' || c == '(' || c == ')');
        let to = match labels.get(target) {
            Some(a) => *a,
            None => match u64::from_str_radix(target.trim_start_matches("0x"), 16) {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        if to >= s.addr {
            continue;
        }
        let body: Vec<&Sass> = sass
            .iter()
            .filter(|i| i.addr >= to && i.addr <= s.addr)
            .collect();
        let n = body
            .iter()
            .filter(|i| sass_op(&i.text).split('.').next() == Some(op))
            .count();
        if best.is_none_or(|(f, _)| n > f) {
            best = Some((n, body.len()));
        }
    }
    best
}

/// Issue 16, item 4: the main contraction kernel's inner loop is mostly
/// FFMA in SASS. Assembles a 1024×1024×1024 dense product (register
/// tiled) for sm_80 and sm_90, disassembles it with `cuobjdump -sass`,
/// takes the loop (a backward branch and its target) with the most FFMAs,
/// and bounds its FFMA share; also no local-memory spills (ptxas's report,
/// no `LDL`/`STL`). The 16×16 kernel's loop was 58 instructions with 16
/// FFMA (27.6 %) for sm_80.
#[test]
fn the_contraction_inner_loop_is_mostly_ffma_in_sass() {
    use netc_compiler::codegen::ptx::launch::Shape;
    use netc_compiler::codegen::ptx::{program_ptx_with, Precision, PtxOptions};
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let Some(cuobjdump) = cuobjdump_or_skip() else {
        return;
    };
    let n = 1024;
    let p = one_kernel_program(
        vec![temp("a", n * n), temp("b", n * n), temp("c", n * n)],
        netc_compiler::kernel::ir::KernelBody::Contraction(dense([1, 1, n], n, [1, 1, n])),
    );
    let dir = tempfile::tempdir().unwrap();
    let (ptx, cubin) = (dir.path().join("k.ptx"), dir.path().join("k.cubin"));
    // cuobjdump runs `nvdisasm`, which the same install puts beside it.
    let mut path = std::ffi::OsString::from(cuobjdump.parent().unwrap_or(std::path::Path::new("")));
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    // The f32 kernel (FFMA share asserted) and the opt-in TF32 one (HMMA
    // share printed: its fragments are loaded and converted one scalar
    // at a time, so the share is low and no bound is claimed).
    let tf32 = PtxOptions {
        precision: Precision::Tf32,
    };
    for (opts, op) in [(PtxOptions::default(), "FFMA"), (tf32, "HMMA")] {
        let m = program_ptx_with(&p, &opts).unwrap();
        assert!(matches!(m.plans[0].shape, Shape::RegisterTiled(_, pr) if pr == opts.precision));
        std::fs::write(&ptx, &m.text).unwrap();
        for arch in ["sm_80", "sm_90"] {
            let out = Command::new(&ptxas)
                .args([&format!("-arch={arch}"), "-v", "-o"])
                .arg(&cubin)
                .arg(&ptx)
                .output()
                .unwrap();
            let log = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{arch}: ptxas failed:\n{log}");
            assert!(
                log.contains("0 bytes spill stores, 0 bytes spill loads"),
                "{arch}: spills:\n{log}"
            );
            let regs = log
                .lines()
                .find(|l| l.contains("registers"))
                .unwrap_or_default()
                .trim_start_matches("ptxas info    : ");
            let out = Command::new(&cuobjdump)
                .env("PATH", &path)
                .arg("-sass")
                .arg(&cubin)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "cuobjdump failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let dump = String::from_utf8_lossy(&out.stdout);
            let (sass, labels) = parse_sass(&dump);
            assert!(
                !sass
                    .iter()
                    .any(|s| matches!(sass_op(&s.text), "LDL" | "STL")),
                "{arch}: local memory in SASS"
            );
            let (count, total) = busiest_loop(&sass, &labels, op).expect("no loop in the SASS");
            let share = count as f64 / total as f64;
            eprintln!(
                "1024x1024x1024 contraction ({:?}), {arch}: inner loop {total} instructions, \
             {count} {op} ({:.1} %); {regs}",
                opts.precision,
                100.0 * share
            );
            if op == "HMMA" {
                assert!(count > 0, "{arch}: no HMMA in the TF32 loop");
                continue;
            }
            assert!(share >= 0.6, "{arch}: FFMA share {:.1} %", 100.0 * share);
        }
    }
}

/// The register-tiled kernel's PTX text (planned for small products that
/// would otherwise keep the 16×16 tile, so the PTX interpreter can run
/// them in seconds) assembles for sm_80 and sm_90 without spills and
/// computes what the reference does: ragged edges in M, N and K, row and
/// reduction digits that carry, N a multiple of 4 (16-byte B copies) and
/// not (4-byte ones), a bias, a leaky relu and accumulation.
#[test]
fn the_register_tiled_kernel_assembles_and_computes_what_the_reference_does() {
    use netc_compiler::codegen::ptx::launch::{register_tiled_plan, Shape};
    use netc_compiler::codegen::ptx::plans_ptx;
    use netc_compiler::kernel::ir::{Epilogue, KernelBody};
    let ptxas = ptxas();
    let dir = tempfile::tempdir().unwrap();
    // (N, C +=, A transposed, B transposed): the last two are the
    // gradient products `xᵀ·dy` and `dy·Wᵀ`.
    for (n, accumulate, a_t, b_t) in [
        (70, false, false, false),
        (68, true, false, false),
        (68, false, true, true),
        (70, true, false, true),
    ] {
        let (m, k) = (78, 45);
        let mut c = dense([2, 3, 13], n, [3, 5, 3]);
        c.a.1 = 1;
        c.bias = Some((3, 2));
        c.epilogue = Epilogue::LeakyRelu(0.1);
        c.accumulate = accumulate;
        let mut a_len = m * k + 1;
        let mut b_len = k * n;
        if a_t {
            // A stored [K, M + 2].
            c.m_dims = [1, 1, m];
            c.m_strides = [0, 0, 1];
            c.k_dims = [1, 1, k];
            c.k_strides = [0, 0, m + 2];
            a_len = k * (m + 2) + 1;
        }
        if b_t {
            // B stored [N, K + 3].
            c.b_transposed = true;
            c.ldb = k + 3;
            b_len = n * (k + 3);
        }
        let p = one_kernel_program(
            vec![
                temp("a", a_len),
                temp("b", b_len),
                temp("c", m * n),
                temp("bias", n + 2),
            ],
            KernelBody::Contraction(c),
        );
        let plan = register_tiled_plan(&p, 0, netc_compiler::codegen::ptx::Precision::F32).unwrap();
        assert!(matches!(plan.shape, Shape::RegisterTiled(..)));
        assert_eq!(plan.grid, [2, 2, 1]);
        let module = plans_ptx(&p, vec![plan]).unwrap();
        let label = format!("register-tiled {m}x{n}x{k} a_t={a_t} b_t={b_t}");
        assert!(
            module.text.contains("cp.async.ca.shared.global [%rd"),
            "{label}"
        );
        assert_eq!(
            module.text.contains("], 16;"),
            n % 4 == 0 && !b_t,
            "{label}"
        );
        assert_eq!(integer_divisions(&module.text), 0, "{label}");
        assert!(
            !module.text.contains("mad.lo.s64"),
            "{label}: 32-bit indices"
        );
        let mut want = filled_buffers(&p, 0x2545_f491_4f6c_dd1d);
        let mut got = want.clone();
        interp::run_program(&p, &mut want).unwrap();
        ptx_sim::run_module(&module, &mut got);
        for (j, (w, g)) in want[2].iter().zip(&got[2]).enumerate() {
            assert!(
                (w - g).abs() <= 1e-4 * w.abs().max(1.0),
                "{label}: c[{j}]: reference {w} vs PTX {g}"
            );
        }
        if let Some(ptxas) = &ptxas {
            assembles_without_spills(ptxas, dir.path(), &module.text, &label);
        }
    }
}

/// Every buffer of `p` filled with values in [-1, 1) with all 24
/// significand bits in play (`program_buffers` leaves temporaries zero,
/// which would make a one-kernel product over temporaries compare zeros).
fn filled_buffers(p: &Program, seed: u64) -> Vec<Vec<f32>> {
    let mut seed = seed;
    p.buffers
        .iter()
        .map(|b| {
            (0..b.len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                })
                .collect()
        })
        .collect()
}

/// Issue 16, item 4: the opt-in TF32 path. On the planner's path (a
/// 1024×1024×1024 product, register tiled), `mma.sync` and
/// `cvt.rna.tf32.f32` appear only with `Precision::Tf32`; on a ragged
/// product with a bias, a leaky relu and accumulation (planned register
/// tiled), the TF32 module has no integer division and assembles for
/// sm_80 and sm_90 without spills, and its text, run by the PTX
/// interpreter, matches the geometry model and the f64 reference.
#[test]
fn the_tf32_path_assembles_and_is_used_only_when_asked_for() {
    use netc_compiler::codegen::ptx::launch::{a_col, a_row, register_tiled_plan, Shape};
    use netc_compiler::codegen::ptx::{plans_ptx, program_ptx_with, Precision, PtxOptions};
    use netc_compiler::kernel::ir::{Epilogue, KernelBody};
    let n = 1024;
    let big = one_kernel_program(
        vec![temp("a", n * n), temp("b", n * n), temp("c", n * n)],
        KernelBody::Contraction(dense([1, 1, n], n, [1, 1, n])),
    );
    let tf32 = PtxOptions {
        precision: Precision::Tf32,
    };
    let default = program_ptx(&big).unwrap();
    let opted = program_ptx_with(&big, &tf32).unwrap();
    assert!(matches!(
        opted.plans[0].shape,
        Shape::RegisterTiled(_, Precision::Tf32)
    ));
    for (text, tf) in [(&default.text, false), (&opted.text, true)] {
        assert_eq!(text.contains("mma.sync.aligned.m16n8k8"), tf);
        assert_eq!(text.contains("cvt.rna.tf32.f32"), tf);
        assert_eq!(text.contains("fma.rn.f32"), !tf);
    }
    // A warp's code per slice of 16: 2 steps of 8, each 2×2 m16n8 tiles.
    assert_eq!(opted.text.matches("mma.sync.aligned.m16n8k8").count(), 8);

    let (m, k, n) = (78, 45, 70);
    let mut c = dense([2, 3, 13], n, [3, 5, 3]);
    c.a.1 = 1;
    c.bias = Some((3, 2));
    c.epilogue = Epilogue::LeakyRelu(0.1);
    c.accumulate = true;
    let p = one_kernel_program(
        vec![
            temp("a", m * k + 1),
            temp("b", k * n),
            temp("c", m * n),
            temp("bias", n + 2),
        ],
        KernelBody::Contraction(c),
    );
    let plan = register_tiled_plan(&p, 0, Precision::Tf32).unwrap();
    let module = plans_ptx(&p, vec![plan]).unwrap();
    assert_eq!(integer_divisions(&module.text), 0);
    // The PTX text run lane by lane, `mma.sync` as a warp collective with
    // the ISA's fragment layout (tests/ptx_sim), gives bit for bit what
    // the geometry interpreter's model gives (the same fragments summed
    // in the same order), and both are within TF32 rounding of the f64
    // reference: 2^-9·Σ|a·b| (see the geometry interpreter's tests for
    // the bound) plus f32 rounding of the bias and accumulate additions.
    let bufs = filled_buffers(&p, 0x2545_f491_4f6c_dd1d);
    let mut sim = bufs.clone();
    ptx_sim::run_module(&module, &mut sim);
    let mut geo = bufs.clone();
    geometry::run_kernel(&p, &p.kernels[0], &module.plans[0], &mut geo).unwrap();
    assert!(sim[2] == geo[2], "the PTX and the geometry model differ");
    let KernelBody::Contraction(c) = &p.kernels[0].body else {
        unreachable!()
    };
    let (mut worst, mut exact) = (0f64, 0);
    for row in 0..m {
        for col in 0..n {
            let (mut sum, mut abs) = (0f64, 0f64);
            for kk in 0..k {
                let ai = c.a.1 as u64 + a_row(c, row as u64) + a_col(c, kk as u64);
                let x = f64::from(bufs[0][ai as usize]);
                let y = f64::from(bufs[1][kk * n + col]);
                sum += x * y;
                abs += (x * y).abs();
            }
            sum += f64::from(bufs[3][2 + col]);
            if sum < 0.0 {
                sum *= f64::from(0.1f32);
            }
            sum += f64::from(bufs[2][row * n + col]);
            let got = f64::from(sim[2][row * n + col]);
            let err = (got - sum).abs();
            assert!(
                err <= 2f64.powi(-9) * abs + 1e-5 * (1.0 + sum.abs()),
                "c[{row}, {col}]: TF32 PTX {got} vs f64 {sum} (Σ|ab| {abs})"
            );
            worst = worst.max(err / abs);
            exact += usize::from(err <= 1e-6 * abs);
        }
    }
    // Rounded, not f32: most outputs are off by more than f32 would be.
    assert!(exact < m * n / 4, "{exact} of {} outputs f32-exact", m * n);
    eprintln!("TF32 PTX: worst error {worst:.2e} of Σ|a·b|");
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    assembles_without_spills(&ptxas, dir.path(), &module.text, "TF32");
}

/// `ptxas` assembles `text` (written into `dir`) for sm_80 and sm_90 with
/// no register spills.
fn assembles_without_spills(
    ptxas: &std::path::Path,
    dir: &std::path::Path,
    text: &str,
    label: &str,
) {
    let file = dir.join("t.ptx");
    std::fs::write(&file, text).unwrap();
    for arch in ["sm_80", "sm_90"] {
        let out = Command::new(ptxas)
            .args([&format!("-arch={arch}"), "-v", "-o", "/dev/null"])
            .arg(&file)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{label} {arch}: ptxas failed:\n{log}");
        assert!(
            log.contains("0 bytes spill stores, 0 bytes spill loads"),
            "{label} {arch}:\n{log}"
        );
    }
}

/// The dropout-mask kernels, run as PTX text, draw exactly the host's
/// masks (`netc_compiler::dropout::fill_mask`) for several seeds, steps,
/// rates and lengths (ragged last blocks, a one-element mask), at the
/// rates asked for; and they assemble without spills.
#[test]
fn dropout_mask_kernels_draw_the_host_masks() {
    use netc_compiler::codegen::ptx::dropout::{dropout_ptx, MASK_BLOCK};
    use netc_compiler::dropout::{fill_mask, mask_key};
    let masks = [
        (1000usize, 0.5f32),
        (777, 0.1),
        (4096, 0.8),
        (1, 0.3),
        (300, 0.0),
    ];
    let m = dropout_ptx(&masks).unwrap();
    for (seed, step) in [(0u64, 0u64), (42, 17), (u64::MAX, 123_456_789)] {
        let mut bufs: Vec<Vec<f32>> = masks.iter().map(|(n, _)| vec![f32::NAN; *n]).collect();
        // The keys buffer: one little-endian u64 per mask, as the runtime
        // uploads it.
        bufs.push(
            (0..masks.len() as u32)
                .flat_map(|mi| {
                    let k = mask_key(seed, step, mi);
                    [f32::from_bits(k as u32), f32::from_bits((k >> 32) as u32)]
                })
                .collect(),
        );
        for e in &m.entries {
            ptx_sim::run_entry(
                &m.text,
                &e.entry,
                [e.grid, 1, 1],
                [MASK_BLOCK, 1, 1],
                &[e.mask as usize, masks.len()],
                &mut bufs,
            );
        }
        for (mi, &(n, rate)) in masks.iter().enumerate() {
            let mut want = vec![0f32; n];
            fill_mask(seed, step, mi as u32, rate, &mut want);
            assert_eq!(
                bufs[mi].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "mask {mi}, seed {seed}, step {step}"
            );
            let dropped = bufs[mi].iter().filter(|v| **v == 0.0).count() as f64;
            let (nf, r) = (n as f64, f64::from(rate));
            let sd = (nf * r * (1.0 - r)).sqrt();
            assert!(
                (dropped - nf * r).abs() <= 5.0 * sd + 1.0,
                "mask {mi}: {dropped} of {n} dropped at rate {rate}"
            );
        }
    }
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    assembles_without_spills(&ptxas, dir.path(), &m.text, "dropout masks");
}

/// The GPU's classification score (one thread per row: argmax against the
/// label) counts exactly what the trainer counts on the CPU, over rows
/// with ties, NaNs, padding labels, labels past the classes and
/// non-integer labels; and it assembles without spills.
#[test]
fn the_score_kernel_counts_what_the_cpu_counts() {
    use netc_compiler::codegen::ptx::score::{count, score_ptx, SCORE_BLOCK, SCORE_ENTRY};
    for (examples, rows_per, classes) in [
        (37usize, 1usize, 10usize),
        (5, 7, 3),
        (300, 1, 2),
        (3, 2, 1),
    ] {
        let rows = examples * rows_per;
        let mut seed = 0x1234_5678_9abc_def0u64 ^ (rows * classes) as u64;
        let mut next = move || {
            seed = netc_compiler::dropout::splitmix(seed);
            seed
        };
        let pred: Vec<f32> = (0..rows * classes)
            .map(|_| match next() % 13 {
                0 => f32::NAN,
                1 => 0.5, // ties
                n => n as f32 / 13.0,
            })
            .collect();
        let labels: Vec<f32> = (0..rows)
            .map(|_| match next() % 11 {
                0 => -1.0,                 // padding
                1 => classes as f32 + 2.0, // past the classes
                2 => 1.7,                  // truncated to 1
                3 => f32::NAN,             // as usize: 0
                n => (n % classes as u64) as f32,
            })
            .collect();
        let m = score_ptx(rows, classes).unwrap();
        let mut bufs = vec![pred.clone(), labels.clone(), vec![f32::NAN; rows]];
        ptx_sim::run_entry(
            &m.text,
            SCORE_ENTRY,
            [m.grid, 1, 1],
            [SCORE_BLOCK, 1, 1],
            &[0, 1, 2],
            &mut bufs,
        );
        assert!(bufs[2].iter().all(|v| [-1.0, 0.0, 1.0].contains(v)));
        // Row by row, the host's version of the kernel (a CPU run's
        // deferred accounting uses it).
        assert_eq!(
            bufs[2],
            netc_compiler::codegen::ptx::score::score_rows(&pred, &labels, classes)
        );
        let want =
            netc_runtime::train::classification_counts(&pred, &labels, rows_per * classes, classes);
        assert_eq!(
            count(&bufs[2]),
            want,
            "{examples}×{rows_per} rows of {classes}"
        );
        if let Some(ptxas) = ptxas() {
            let dir = tempfile::tempdir().unwrap();
            assembles_without_spills(&ptxas, dir.path(), &m.text, "score");
        }
    }
}
