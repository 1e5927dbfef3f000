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

fn close(a: f32, b: f32) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-4 * a.abs().max(b.abs()) + 1e-6
}

/// Runs `p` with the reference interpreter and with the launch geometry
/// and compares every buffer.
fn geometry_matches(label: &str, p: &Program) {
    let mut want = program_buffers(p, 0x2545_f491_4f6c_dd1d);
    let mut got = want.clone();
    interp::run_program(p, &mut want).unwrap_or_else(|e| panic!("{label}: interp: {e}"));
    geometry::run_program(p, &mut got).unwrap_or_else(|e| panic!("{label}: geometry: {e}"));
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        if let Some(j) = (0..w.len()).find(|&j| !close(w[j], g[j])) {
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
    let (programs, skipped) = programs(2, &["alexnet", "vgg16"], false);
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
