//! The CPU backend on training programs: every example's training step
//! (forward, gradients, an SGD update; the course CNN also with momentum,
//! clipping and penalties) compiled by the JIT on two threads matches the
//! reference interpreter on every parameter, optimizer state and output
//! after one step. (Adam's own kernels are checked against hand-computed
//! steps in runtime/tests/train.rs.) (tests/jit_vs_interp.rs covers the
//! forward programs.)

mod common;
use common::*;

use netc_compiler::codegen::cpu::{IsaLevel, KernelPath};
use netc_compiler::kernel::interp;
use netc_compiler::kernel::ir::{BufKind, Program};
use netc_runtime::Executable;

/// Within 1e-4 relative, or 1e-5 of the buffer's largest magnitude: a
/// weight gradient sums thousands of products that mostly cancel, so its
/// small elements carry the rounding of the large terms.
fn close(a: f32, b: f32, scale: f32) -> bool {
    a == b || (a - b).abs() <= 1e-4 * a.abs().max(b.abs()) + 1e-5 * scale + 1e-7
}

#[test]
fn jit_matches_interpreter_on_every_training_step() {
    // Odd batch: row splits and vector tails do not line up.
    let (programs, _) = programs(3, &["alexnet", "vgg16"], true);
    let mut checked = 0;
    for (label, p) in programs.iter().filter(|(l, _)| l.contains("training")) {
        check_step(label, p, KernelPath::Auto);
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} training programs");
    eprintln!("{checked} training programs match");
}

/// The default path above runs the widest native contractions the host
/// has (AVX-512 or AVX2); a convolutional, a recurrent and a
/// batch-normalized dense model also run on the forced Cranelift path, so
/// both kernel generators stay checked (the whole suite twice would cost CI
/// too much).
#[test]
fn cranelift_path_matches_interpreter_on_representative_training_steps() {
    representative_training_steps(KernelPath::Cranelift);
}

/// On an AVX-512 host the same models also run the forced AVX2 kernels, so
/// each native path the host has is checked (elsewhere `Auto` is AVX2).
#[test]
fn avx2_path_matches_interpreter_on_an_avx512_host() {
    if IsaLevel::detect() != Some(IsaLevel::Avx512) {
        eprintln!("no AVX-512 on this host: the default path is the AVX2 one");
        return;
    }
    representative_training_steps(KernelPath::Avx2);
}

/// The first training program of each representative model on `kernels`.
fn representative_training_steps(kernels: KernelPath) {
    let keep = ["course_cnn", "course_lstm", "mlp_batchnorm"];
    let skip: Vec<String> = net_files("examples")
        .iter()
        .map(|f| f.file_stem().unwrap().to_string_lossy().into_owned())
        .filter(|s| !keep.contains(&s.as_str()))
        .collect();
    let skip: Vec<&str> = skip.iter().map(String::as_str).collect();
    let (programs, _) = programs(3, &skip, true);
    let mut checked = 0;
    // The course CNN's first training program (plain SGD) is enough: the
    // optimizer variants differ in loop kernels, not contractions.
    let mut seen = std::collections::HashSet::new();
    for (label, p) in programs.iter().filter(|(l, _)| l.contains("training")) {
        if !seen.insert(label.split('/').next().unwrap_or_default().to_string()) {
            continue;
        }
        check_step(label, p, kernels);
        checked += 1;
    }
    assert_eq!(checked, keep.len());
}

/// One training step of `p` compiled on `kernels` against the interpreter,
/// on every parameter, optimizer state and output.
fn check_step(label: &str, p: &Program, kernels: KernelPath) {
    {
        let init = program_buffers(p, 0x9e37_79b9_7f4a_7c15);
        let mut want = init.clone();
        interp::run_program(p, &mut want).unwrap_or_else(|e| panic!("{label}: interp: {e}"));
        let mut exe = Executable::compile_with(p.clone(), 2, kernels)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        for (b, data) in init.iter().enumerate() {
            if !matches!(p.buffers[b].kind, BufKind::Temp) {
                exe.write_buffer(b, data).unwrap();
            }
        }
        exe.run().unwrap_or_else(|e| panic!("{label}: {e}"));
        let outputs: Vec<usize> = p.outputs.iter().map(|o| o.buf).collect();
        for (b, w) in want.iter().enumerate() {
            if matches!(p.buffers[b].kind, BufKind::Temp) && !outputs.contains(&b) {
                continue;
            }
            let got = exe.buffer(b);
            let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
            if let Some(j) = (0..w.len()).find(|&j| !close(w[j], got[j], scale)) {
                panic!(
                    "{label} ({kernels:?}): buffer `{}`[{j}]: interpreter {} vs JIT {} (largest magnitude {scale})",
                    p.buffers[b].name, w[j], got[j]
                );
            }
        }
    }
}
