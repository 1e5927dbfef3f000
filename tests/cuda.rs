//! `--device cuda`: on a machine without a driver every command fails with
//! one clear line and no panic; on a machine with a GPU (ignored tests, run
//! with `cargo test --test cuda -- --ignored`) every example's forward pass
//! and one training step match the CPU backend.

mod common;
use common::*;

use netc_compiler::kernel::ir::{BufKind, Program};
use netc_compiler::pipeline::{lower_training, Compilation, CompileOptions};
use netc_runtime::cuda::{self, CudaError, CudaExecutable};
use netc_runtime::Executable;

fn no_driver() -> bool {
    matches!(cuda::open(), Err(CudaError::NoDriver))
}

fn assert_one_line_error(args: &[&str]) {
    let (code, _, err) = netc(args);
    assert_ne!(code, 0, "{args:?} succeeded without a GPU");
    assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {err}");
    assert!(
        errors[0].contains("--device cuda") && errors[0].contains("CUDA driver"),
        "{args:?}: {err}"
    );
}

#[test]
fn without_a_driver_cuda_commands_fail_with_one_line() {
    if !no_driver() {
        eprintln!("skipped: this machine has a CUDA driver");
        return;
    }
    assert_one_line_error(&["train", "examples/course_cnn.net", "--device", "cuda"]);
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    let (code, _, err) = netc(&["init", "examples/course_cnn.net", "-o", w.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let x = dir.path().join("x.npy");
    netc_runtime::write_npy(
        &x,
        &netc_runtime::Tensor::zeros(vec![1, 28, 28, 1]).unwrap(),
    )
    .unwrap();
    assert_one_line_error(&[
        "run",
        "examples/course_cnn.net",
        "--device",
        "cuda",
        "--weights",
        w.to_str().unwrap(),
        "--input",
        x.to_str().unwrap(),
    ]);
    assert_one_line_error(&["bench", "examples/course_cnn.net", "--device", "cuda"]);
}

/// Runs `p` once on the CPU executor and once on the GPU from the same
/// inputs, parameters and state, and compares the outputs, parameters and
/// optimizer state.
fn gpu_matches_cpu(label: &str, p: &Program, gpu: &cuda::Gpu) {
    let data = program_buffers(p, 0x9e37_79b9_7f4a_7c15);
    let mut cpu = Executable::compile(p.clone(), 2).unwrap();
    let mut dev = CudaExecutable::compile(gpu, p.clone()).unwrap();
    for (b, buf) in p.buffers.iter().enumerate() {
        if !matches!(buf.kind, BufKind::Temp) && buf.len > 0 {
            cpu.write_buffer(b, &data[b]).unwrap();
            dev.write_buffer(b, &data[b]).unwrap();
        }
    }
    cpu.run().unwrap();
    dev.run().unwrap();
    let mut checked: Vec<usize> = p.outputs.iter().map(|o| o.buf).collect();
    checked.extend(
        p.buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| matches!(b.kind, BufKind::Param(_) | BufKind::State(_)))
            .map(|(i, _)| i),
    );
    for b in checked {
        let (want, got) = (cpu.buffer(b), dev.read_buffer(b).unwrap());
        for (j, (w, g)) in want.iter().zip(&got).enumerate() {
            assert!(
                (w - g).abs() <= 1e-3 * w.abs().max(g.abs()) + 1e-5,
                "{label}: `{}`[{j}]: cpu {w} vs cuda {g}",
                p.buffers[b].name
            );
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver: cargo test --test cuda -- --ignored"]
fn every_example_forward_and_training_step_match_the_cpu_on_a_gpu() {
    let gpu = cuda::open().expect("a CUDA device");
    let (mut forward, mut steps, mut skipped) = (0, 0, Vec::new());
    for f in net_files("examples") {
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        let checked = check_ok(&std::fs::read_to_string(&f).unwrap());
        for g in &checked.graphs {
            let g = &at_test_length(g);
            let compilation = Compilation::new(g, CompileOptions::default());
            gpu_matches_cpu(
                &format!("{stem} forward"),
                &compilation.program(2).unwrap(),
                &gpu,
            );
            forward += 1;
            let Some(cfg) = checked.train_for(&g.name) else {
                continue;
            };
            match compilation.training_graph(&cfg.objective()) {
                Ok(tg) => {
                    let tp = lower_training(&tg, cfg, 2).unwrap();
                    gpu_matches_cpu(&format!("{stem} training step"), &tp.program, &gpu);
                    steps += 1;
                }
                Err(e) => skipped.push(format!("{stem}: {e}")),
            }
        }
    }
    eprintln!("{forward} forward passes and {steps} training steps match; skipped: {skipped:?}");
}
