//! `--device cuda`: on a machine without a driver every command fails with
//! one clear line and no panic; on a machine with a GPU (ignored tests, run
//! with `cargo test --test cuda -- --ignored`) every example's forward pass
//! and one training step match the CPU backend, and the lean step's parts
//! (device dropout masks, device scores, pinned inputs, queued reads, graph
//! replay, checked mode, the JIT log of a rejected module) agree with the
//! CPU and with plain runs.

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

const BLOBS: &str = "model blobs {
  input x: [4]
  x -> dense(16, activation: relu) as fc1 -> batchnorm as bn1 -> dense(3) as fc2 -> softmax -> y
  output y
}

train blobs {
  loss: cross_entropy
  optimizer: momentum(lr: 0.05, momentum: 0.9)
  batch: 16
  epochs: 3
  metrics: [accuracy]
  validation_split: 0.25
  seed: 7
}
";

/// Three separable blobs in four dimensions, `n` examples.
fn blobs(n: usize) -> netc_runtime::data::Dataset {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..n {
        let c = i % 3;
        for d in 0..4 {
            let wobble = ((i * 7 + d * 3) as f32 * 0.61).sin() * 0.4;
            x.push(if d == c { 1.5 } else { -0.5 } + wobble);
        }
        y.push(c as f32);
    }
    netc_runtime::data::Dataset::new(
        netc_runtime::Tensor::new(vec![n, 4], x).unwrap(),
        y,
        Some(3),
    )
    .unwrap()
}

/// Trains model `src` on `data` on the CPU and on the GPU and compares
/// every epoch's training and validation loss and the final `weights`.
fn trains_alike_on_cpu_and_gpu(src: &str, data: &netc_runtime::data::Dataset, weights: &[&str]) {
    use netc_runtime::train::{train, RunOptions};
    let checked = check_ok(src);
    let g = &checked.graphs[0];
    let cfg = checked.train_for(&g.name).unwrap();
    let run = |device| {
        let init = netc_runtime::init_weights(g, cfg.seed).unwrap();
        let opts = RunOptions {
            threads: 2,
            device,
            ..RunOptions::default()
        };
        train(g, cfg, data, None, init, &opts, &mut |_| {}).unwrap()
    };
    let cpu = run(netc_runtime::Device::Cpu);
    let gpu = run(netc_runtime::Device::Cuda);
    assert_eq!(cpu.history.len(), cfg.epochs);
    assert_eq!(gpu.history.len(), cfg.epochs);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-3 * a.abs().max(b.abs()) + 1e-5;
    for (c, d) in cpu.history.iter().zip(&gpu.history) {
        assert!(
            close(c.loss, d.loss),
            "{}: {} vs {}",
            g.name,
            c.loss,
            d.loss
        );
        if let (Some(cv), Some(dv)) = (c.val_loss, d.val_loss) {
            assert!(close(cv, dv), "{}: validation {cv} vs {dv}", g.name);
        }
    }
    assert!(gpu.history[cfg.epochs - 1].loss < gpu.history[0].loss);
    for name in weights {
        let (c, d) = (
            cpu.weights.get(name).unwrap(),
            gpu.weights.get(name).unwrap(),
        );
        for (a, b) in c.data.iter().zip(&d.data) {
            assert!(close(*a as f64, *b as f64), "{name}: {a} vs {b}");
        }
    }
}

/// A whole training run on the device's memory arena: each epoch's steps,
/// then the validation (whose arena takes the training step's place), the
/// step's arena allocated again for the next epoch. Same losses and
/// weights as on the CPU.
#[test]
#[ignore = "needs an NVIDIA GPU and driver: cargo test --test cuda -- --ignored"]
fn training_with_validation_on_the_arena_matches_the_cpu() {
    trains_alike_on_cpu_and_gpu(BLOBS, &blobs(200), &["fc1.weight", "fc2.bias", "bn1.gamma"]);
}

/// A variable-length LSTM on JapaneseVowels with `bucket: true`: one step
/// program per padded length, the parameters and momentum moving between
/// them by exchanging device allocations (`swap_buffer`) and each giving
/// its arena back before the next runs.
#[test]
#[ignore = "needs an NVIDIA GPU and driver: cargo test --test cuda -- --ignored"]
fn bucketed_variable_length_training_matches_the_cpu() {
    let src = "model jv {
  input frames: [*, 12]
  frames -> lstm(8) as l -> dense(9) as out -> softmax -> probs
  output probs
}

train jv {
  loss: cross_entropy
  optimizer: momentum(lr: 0.05, momentum: 0.9)
  batch: 16
  epochs: 2
  bucket: true
  validation_split: 0.2
  seed: 3
}
";
    let g = check_ok(src).graphs[0].clone();
    let path = root().join("data/japanese_vowels/JapaneseVowels_TRAIN.ts.gz");
    let (data, _) = netc_runtime::data::load_for_model(&g, path.to_str().unwrap(), None).unwrap();
    assert!(data.lengths.is_some());
    trains_alike_on_cpu_and_gpu(src, &data, &["out.weight", "out.bias"]);
}

/// A program too large for the device fails before anything is
/// allocated, with the sizes (here a forward pass of VGG-16 at a batch no
/// GPU holds).
#[test]
#[ignore = "needs an NVIDIA GPU and driver: cargo test --test cuda -- --ignored"]
fn a_program_larger_than_the_gpu_fails_with_the_sizes() {
    let gpu = cuda::open().expect("a CUDA device");
    let free = cuda::free_bytes(&gpu).unwrap();
    let checked = check_ok(&std::fs::read_to_string(root().join("examples/vgg16.net")).unwrap());
    let p = Compilation::new(&checked.graphs[0], CompileOptions::default())
        .program(16384)
        .unwrap();
    let needed = cuda::Footprint::of(&p).total();
    assert!(needed > free, "{needed} <= {free}");
    let Err(CudaError::OutOfMemory(e)) = CudaExecutable::compile(&gpu, p) else {
        panic!("VGG-16 at batch 16384 was allocated");
    };
    assert_eq!(e.needed, needed);
    assert!(e.available < needed, "{e}");
    eprintln!("{e}");
}

/// `--tf32` on a real GPU: a 1024×1024×256 product (register tiled) with
/// TF32 `mma.sync` is within TF32 rounding of the f64 reference
/// (2^-9·Σ|a·b|, see docs/numerics.md) and, on inputs with all 24
/// significand bits in play, differs from the f32 kernel's result by more
/// than f32 rounding at many outputs (the tensor cores were used).
#[test]
#[ignore = "needs an NVIDIA GPU and driver: cargo test --test cuda -- --ignored"]
fn the_tf32_product_is_within_tf32_rounding_on_a_gpu() {
    use netc_compiler::codegen::ptx::{Precision, PtxOptions};
    use netc_compiler::kernel::ir::{Buffer, Contraction, Epilogue, Kernel, KernelBody};
    let gpu = cuda::open().expect("a CUDA device");
    let (m, n, k) = (1024, 1024, 256);
    let buf = |name: &str, len| Buffer {
        name: name.into(),
        len,
        kind: BufKind::Input(name.into()),
    };
    let p = Program {
        name: "t".into(),
        batch: 1,
        buffers: vec![buf("a", m * k), buf("b", k * n), buf("c", m * n)],
        kernels: vec![Kernel {
            name: "k".into(),
            body: KernelBody::Contraction(Contraction {
                m_dims: [1, 1, m],
                m_strides: [0, 0, k],
                n,
                k_dims: [1, 1, k],
                k_strides: [0, 0, 1],
                a: (0, 0),
                b: (1, 0),
                ldb: n,
                b_transposed: false,
                c: (2, 0),
                ldc: n,
                bias: None,
                epilogue: Epilogue::None,
                accumulate: false,
            }),
        }],
        inputs: vec![],
        params: vec![],
        outputs: vec![],
    };
    let data = program_buffers(&p, 0x9e37_79b9_7f4a_7c15);
    let run = |precision| {
        let mut dev =
            CudaExecutable::compile_with(&gpu, p.clone(), &PtxOptions { precision }).unwrap();
        dev.write_buffer(0, &data[0]).unwrap();
        dev.write_buffer(1, &data[1]).unwrap();
        dev.run().unwrap();
        dev.read_buffer(2).unwrap()
    };
    let (f32_c, tf32_c) = (run(Precision::F32), run(Precision::Tf32));
    let mut differs = 0;
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut abs) = (0f64, 0f64);
            for kk in 0..k {
                let x = f64::from(data[0][i * k + kk]) * f64::from(data[1][kk * n + j]);
                sum += x;
                abs += x.abs();
            }
            let (g, f) = (f64::from(tf32_c[i * n + j]), f64::from(f32_c[i * n + j]));
            assert!(
                (g - sum).abs() <= 2f64.powi(-9) * abs,
                "c[{i}, {j}]: TF32 {g} vs {sum}"
            );
            assert!(
                (f - sum).abs() <= 1e-5 * abs,
                "c[{i}, {j}]: f32 {f} vs {sum}"
            );
            differs += usize::from((g - f).abs() > 1e-5 * abs);
        }
    }
    // The TF32 error of a 256-term sum of positive products is about
    // 2e-5 of Σ|a·b| (per-operand rounding of ~2e-4, averaging over 16 =
    // √256): past 1e-5 at roughly half of the outputs.
    assert!(
        differs > m * n / 10,
        "TF32 and f32 differ at only {differs} outputs"
    );
}

const DROPOUT: &str = "model drop {
  input x: [4]
  x -> dense(64, activation: relu) as fc1 -> dropout(0.3) -> dense(32, activation: relu) as fc2
    -> dropout(0.6) -> dense(3) as out -> softmax -> y
  output y
}

train drop {
  loss: cross_entropy
  optimizer: adam(lr: 0.01)
  batch: 16
  epochs: 3
  validation_split: 0.25
  seed: 11
}
";

/// The training program of `src` at `batch`, with its dropout masks.
fn training_program(src: &str, batch: usize) -> netc_compiler::kernel::training::TrainingProgram {
    let checked = check_ok(src);
    let g = &checked.graphs[0];
    let cfg = checked.train_for(&g.name).unwrap().clone();
    let tg = Compilation::new(g, CompileOptions::default())
        .training_graph(&cfg.objective())
        .unwrap();
    lower_training(&tg, &cfg, batch).unwrap()
}

/// The GPU's dropout-mask kernels write exactly the CPU's masks
/// (`netc_compiler::dropout::fill_mask`) at several steps, and are
/// JIT-compiled once (the module cache holds one more module after many
/// steps).
#[test]
#[ignore = "needs an NVIDIA GPU and driver: cargo test --test cuda -- --ignored"]
fn dropout_masks_on_the_gpu_are_the_cpus() {
    use netc_runtime::engine::{Engine, Target};
    let gpu = cuda::open().expect("a CUDA device");
    let tp = training_program(DROPOUT, 16);
    assert_eq!(tp.masks.len(), 2);
    let mut cpu = Engine::compile(tp.program.clone(), &Target::Cpu(2, Default::default())).unwrap();
    let mut dev = Engine::compile(
        tp.program.clone(),
        &Target::Cuda(gpu.clone(), Default::default()),
    )
    .unwrap();
    for step in [0u64, 1, 2, 1000, 123_456] {
        cpu.dropout_masks(&tp.masks, 11, step).unwrap();
        dev.dropout_masks(&tp.masks, 11, step).unwrap();
        for (name, _) in &tp.masks {
            let b = tp
                .program
                .inputs
                .iter()
                .find(|i| &i.name == name)
                .unwrap()
                .buf;
            assert_eq!(
                cpu.read(b).unwrap(),
                dev.read(b).unwrap(),
                "{name} at step {step}"
            );
        }
    }
    assert!(
        format!("{:?}", gpu.modules).contains("2 modules"),
        "{:?}",
        gpu.modules
    );
}

/// Training with dropout draws the same masks on both devices, so the
/// losses and weights agree as closely as without dropout.
#[test]
#[ignore = "needs an NVIDIA GPU and driver: cargo test --test cuda -- --ignored"]
fn training_with_dropout_matches_the_cpu() {
    trains_alike_on_cpu_and_gpu(DROPOUT, &blobs(200), &["fc1.weight", "out.bias"]);
}

/// A step replayed from its CUDA graph (runs after the first), a step run
/// kernel by kernel (kernels timed), and one in checked mode compute the
/// same; inputs written through pinned buffers between runs are seen by
/// the next run; results queued with `read_later` equal direct reads.
#[test]
#[ignore = "needs an NVIDIA GPU and driver: cargo test --test cuda -- --ignored"]
fn graph_replay_pinned_inputs_and_queued_reads_agree_with_plain_runs() {
    let mut gpu = cuda::open().expect("a CUDA device");
    let checked =
        check_ok(&std::fs::read_to_string(root().join("examples/course_cnn.net")).unwrap());
    let p = Compilation::new(&checked.graphs[0], CompileOptions::default())
        .program(8)
        .unwrap();
    let data = program_buffers(&p, 5);
    let out = p.outputs[0].buf;
    let input = p.inputs[0].buf;
    let mut dev = CudaExecutable::compile(&gpu, p.clone()).unwrap();
    for (b, buf) in p.buffers.iter().enumerate() {
        if !matches!(buf.kind, BufKind::Temp) && buf.len > 0 {
            dev.write_buffer(b, &data[b]).unwrap();
        }
    }
    dev.run().unwrap(); // plain
    let first = dev.read_buffer(out).unwrap();
    dev.run().unwrap(); // captured, then launched as a graph
    dev.run().unwrap(); // a replay
    assert_eq!(dev.read_buffer(out).unwrap(), first);
    // A new input through the pinned buffer reaches the graph's next replay.
    let other: Vec<f32> = data[input].iter().map(|v| -v).collect();
    dev.write_buffer(input, &other).unwrap();
    dev.run().unwrap();
    dev.read_later(out).unwrap();
    dev.write_buffer(input, &data[input]).unwrap();
    dev.run().unwrap();
    dev.read_later(out).unwrap();
    let reads = dev.take_reads().unwrap();
    assert_eq!(reads.len(), 2);
    assert_ne!(reads[0], first);
    assert_eq!(reads[1], first);
    // Kernel by kernel (timed), then in checked mode: the same.
    dev.time_kernels(true);
    dev.run().unwrap();
    assert_eq!(dev.read_buffer(out).unwrap(), first);
    gpu.checked = true;
    let mut checked_dev = CudaExecutable::compile(&gpu, p.clone()).unwrap();
    for (b, buf) in p.buffers.iter().enumerate() {
        if !matches!(buf.kind, BufKind::Temp) && buf.len > 0 {
            checked_dev.write_buffer(b, &data[b]).unwrap();
        }
    }
    checked_dev.run().unwrap();
    assert_eq!(checked_dev.read_buffer(out).unwrap(), first);
}

/// A module the driver rejects is reported with the JIT compiler's log.
#[test]
#[ignore = "needs an NVIDIA GPU and driver: cargo test --test cuda -- --ignored"]
fn a_rejected_module_shows_the_jit_log() {
    let gpu = cuda::open().expect("a CUDA device");
    let bad = ".version 7.8\n.target sm_80\n.address_size 64\n\
               .visible .entry bad()\n{\n\tmov.u32 %r1, 1;\n\tret;\n}\n";
    match cuda::jit::load(&gpu, bad, "a broken module") {
        Err(CudaError::Module(m)) => {
            assert!(m.starts_with("a broken module: "), "{m}");
            assert!(m.contains("JIT error log:"), "{m}");
        }
        other => panic!("loaded a broken module: {other:?}"),
    }
}

/// The device's classification scores of a training step count what the
/// trainer counts on the CPU from the same predictions and labels.
#[test]
#[ignore = "needs an NVIDIA GPU and driver: cargo test --test cuda -- --ignored"]
fn device_scores_count_what_the_cpu_counts() {
    let gpu = cuda::open().expect("a CUDA device");
    let tp = training_program(DROPOUT, 16);
    let p = &tp.program;
    let data = program_buffers(p, 9);
    let mut dev = CudaExecutable::compile(&gpu, p.clone()).unwrap();
    for (b, buf) in p.buffers.iter().enumerate() {
        if !matches!(buf.kind, BufKind::Temp) && buf.len > 0 {
            dev.write_buffer(b, &data[b]).unwrap();
        }
    }
    let target = p.inputs.iter().find(|i| i.name == "target").unwrap().buf;
    // Class labels 0..3, one padded.
    let mut labels: Vec<f32> = (0..16).map(|i| (i % 3) as f32).collect();
    labels[5] = -1.0;
    dev.write_buffer(target, &labels).unwrap();
    dev.run().unwrap();
    dev.score_later(tp.prediction, target, 3).unwrap();
    let scores = dev.take_reads().unwrap().remove(0);
    let pred = dev.read_buffer(tp.prediction).unwrap();
    assert_eq!(
        netc_compiler::codegen::ptx::score::count(&scores),
        netc_runtime::train::classification_counts(&pred, &labels, 3, 3)
    );
}
