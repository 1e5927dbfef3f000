//! GPU memory without a GPU: the CUDA executor lays its buffers out by the
//! CPU executor's memory plan, so what a program needs on the device (its
//! `Footprint`) is computed and checked here from the kernel IR alone.

mod common;
use common::*;

use netc_compiler::kernel::ir::{BufKind, Program};
use netc_compiler::kernel::plan::{plan, touched, ARENA_ALIGN};
use netc_compiler::pipeline::{lower_training, Compilation, CompileOptions};
use netc_runtime::cuda::footprint::{check_fits, per_buffer_bytes, FittingBatch, Footprint};
use netc_runtime::memory::bytes;
use netc_runtime::Executable;

/// 80 GB (an 80 GB A100 or H100, decimal as vendors count).
const GPU_80GB: u64 = 80_000_000_000;

/// The plan's placement holds what the device relies on: temporaries start
/// at multiples of 256 bytes, and two that are live at once never overlap.
fn assert_placement_is_sound(label: &str, p: &Program) {
    let m = plan(p);
    let n = p.buffers.len();
    let (mut first, mut last) = (vec![usize::MAX; n], vec![0; n]);
    for (i, k) in p.kernels.iter().enumerate() {
        for b in touched(k) {
            first[b] = first[b].min(i);
            last[b] = last[b].max(i);
        }
    }
    for o in &p.outputs {
        last[o.buf] = usize::MAX;
    }
    let placed: Vec<(usize, usize, usize, usize)> = (0..n)
        .filter_map(|b| {
            let off = m.offsets[b]?;
            assert_eq!(off % ARENA_ALIGN, 0, "{label}: `{}`", p.buffers[b].name);
            assert!(off + p.buffers[b].len <= m.arena_len, "{label}");
            Some((off, p.buffers[b].len, first[b].min(last[b]), last[b]))
        })
        .collect();
    for (i, a) in placed.iter().enumerate() {
        for b in &placed[i + 1..] {
            let live_together = a.2 <= b.3 && b.2 <= a.3;
            let overlap = a.0 < b.0 + b.1 && b.0 < a.0 + a.1;
            assert!(!(live_together && overlap), "{label}: {a:?} and {b:?}");
        }
    }
}

#[test]
fn every_example_needs_on_the_gpu_what_the_cpu_executor_plans() {
    let (programs, skipped) = programs(2, &[], false);
    assert!(programs.len() >= 40, "{}", programs.len());
    let mut steps = 0;
    for (label, p) in &programs {
        assert_placement_is_sound(label, p);
        let f = Footprint::of(p);
        // The CPU executor allocates its arena and one buffer per input,
        // parameter and state from this plan, and checks this total
        // against the host's memory before it does.
        let cpu_plan = Executable::compile(p.clone(), 1)
            .unwrap_or_else(|e| panic!("{label}: {e}"))
            .plan()
            .clone();
        let cpu_arena = 4 * cpu_plan.arena_len as u64;
        let cpu_total = cpu_plan.peak_bytes(p) as u64;
        assert_eq!(f.arena, cpu_arena, "{label}");
        assert_eq!(f.total(), cpu_total, "{label}");
        let outside: usize = p
            .buffers
            .iter()
            .filter(|b| !matches!(b.kind, BufKind::Temp))
            .map(|b| b.len)
            .sum();
        assert_eq!(f.params + f.state + f.inputs, 4 * outside as u64, "{label}");
        // Sharing memory never costs more than allocating each buffer
        // (the alignment pads at most 252 bytes per temporary).
        let temps = p
            .buffers
            .iter()
            .filter(|b| matches!(b.kind, BufKind::Temp))
            .count() as u64;
        assert!(
            f.total() <= per_buffer_bytes(p) + 4 * ARENA_ALIGN as u64 * temps,
            "{label}"
        );
        if label.contains("training") {
            assert!(f.state > 0 || !label.contains("adam"), "{label}");
            steps += 1;
        } else {
            assert_eq!(f.state, 0, "{label}");
        }
    }
    assert!(steps >= 15, "{steps} training steps; skipped: {skipped:?}");
}

/// Each example's training step at the batch of its train section, with
/// the per-buffer allocation the GPU executor made before the arena.
#[test]
fn every_examples_training_step_at_its_own_batch() {
    let mut rows = Vec::new();
    for f in net_files("examples") {
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        let checked = check_ok(&std::fs::read_to_string(&f).unwrap());
        for g in &checked.graphs {
            let Some(cfg) = checked.train_for(&g.name) else {
                continue;
            };
            let g = &at_test_length(g);
            let Ok(tg) =
                Compilation::new(g, CompileOptions::default()).training_graph(&cfg.objective())
            else {
                continue;
            };
            let p = lower_training(&tg, cfg, cfg.batch).unwrap().program;
            let f = Footprint::of(&p);
            let before = per_buffer_bytes(&p);
            // Only tiny programs (rnn_golden's 8 KiB) can need more than
            // before: the alignment pads each temporary by up to 252 bytes.
            let temps = p
                .buffers
                .iter()
                .filter(|b| matches!(b.kind, BufKind::Temp))
                .count() as u64;
            assert!(
                f.total() < before || f.total() <= before + 252 * temps,
                "{stem}: {f} vs {before}"
            );
            rows.push(format!(
                "{stem:>26} batch {:>4}: {f}; per buffer {}",
                cfg.batch,
                bytes(before)
            ));
        }
    }
    eprintln!("{}", rows.join("\n"));
    assert!(rows.len() >= 15, "{rows:?}");
}

fn vgg16() -> (
    netc_compiler::autodiff::TrainingGraph,
    netc_compiler::train::TrainConfig,
) {
    let checked = check_ok(&std::fs::read_to_string(root().join("examples/vgg16.net")).unwrap());
    let g = &checked.graphs[0];
    let cfg = checked.train_for(&g.name).unwrap().clone();
    let tg = Compilation::new(g, CompileOptions::default())
        .training_graph(&cfg.objective())
        .unwrap();
    (tg, cfg)
}

fn vgg16_step(
    tg: &netc_compiler::autodiff::TrainingGraph,
    cfg: &netc_compiler::train::TrainConfig,
    batch: usize,
) -> Footprint {
    Footprint::of(&lower_training(tg, cfg, batch).unwrap().program)
}

#[test]
fn vgg16_trains_at_batch_64_within_80_gb() {
    let (tg, cfg) = vgg16();
    assert_eq!(cfg.batch, 256);
    let f = vgg16_step(&tg, &cfg, 64);
    eprintln!("VGG-16 training step at batch 64: {f}");
    // 138,357,544 parameters and their momentum.
    assert_eq!(f.params, 4 * 138_357_544);
    assert_eq!(f.state, f.params);
    assert_eq!(f.inputs, 40_632_600);
    assert_eq!(f.arena, 13_853_625_344);
    assert_eq!(f.total(), 15_001_118_296);
    assert!(f.total() <= GPU_80GB);
    assert!(check_fits("VGG-16", &f, GPU_80GB).is_ok());
    // Its own batch, 256, fits too (one allocation per buffer would need
    // ~216 GB there).
    let p = lower_training(&tg, &cfg, 256).unwrap().program;
    assert_eq!(per_buffer_bytes(&p), 218_019_559_672);
    let f = Footprint::of(&p);
    eprintln!("VGG-16 training step at batch 256: {f}");
    assert_eq!(f.arena, 55_414_501_376);
    assert_eq!(f.total(), 56_683_892_056);
    assert!(f.total() <= GPU_80GB);
}

#[test]
fn vgg16_at_batch_4096_fails_before_allocating_and_names_the_batch_that_fits() {
    let (tg, cfg) = vgg16();
    let f = vgg16_step(&tg, &cfg, 4096);
    // First-fit plans need not be linear in the batch (VGG-16's was not
    // while its gradients had transpose buffers: a line through batches 64
    // and 256 missed 4096 by 1.5 %), so the search re-plans each batch it
    // tries; today's VGG-16 plan happens to lie on the line.
    let (f64_, f256) = (
        vgg16_step(&tg, &cfg, 64).total(),
        vgg16_step(&tg, &cfg, 256).total(),
    );
    let per_example = (f256 - f64_) / 192;
    let line = f64_ + (4096 - 64) * per_example;
    assert_eq!((f256 - f64_) % 192, 0);
    assert_eq!(line, 890_339_367_256);
    assert_eq!(f.total(), 890_339_367_256);
    let e = check_fits("the training step of model `vgg16`", &f, GPU_80GB).unwrap_err();
    assert_eq!((e.needed, e.available), (f.total(), GPU_80GB));
    assert_eq!(e.fitting, FittingBatch::Unknown);
    let mut probed = 0;
    let e = e.with_largest_batch(|b| {
        probed += 1;
        Some(vgg16_step(&tg, &cfg, b).total())
    });
    let FittingBatch::Largest(b) = e.fitting else {
        panic!("{e}");
    };
    eprintln!("{e} ({probed} batches planned)");
    assert!(probed <= 13, "{probed}");
    assert!(vgg16_step(&tg, &cfg, b).total() <= GPU_80GB);
    assert!(vgg16_step(&tg, &cfg, b + 1).total() > GPU_80GB);
    assert_eq!(b, 363);
    let text = e.to_string();
    for part in [
        "the training step of model `vgg16` at batch 4096 needs",
        &format!("({} bytes: ", f.total()),
        "but only 74.5 GiB (80000000000 bytes) is free",
        "the largest batch that fits is 363",
    ] {
        assert!(text.contains(part), "{part:?} not in {text}");
    }
}

#[test]
fn summary_for_cuda_prints_the_training_steps_footprint() {
    let (code, out, err) = netc(&["summary", "examples/course_cnn.net", "--device", "cuda"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("Device")).collect();
    assert_eq!(
        lines,
        [
            "Device memory for a training step at batch 32: 15.3 MiB (arena 7.3 MiB, parameters \
             2.6 MiB, optimizer state 5.3 MiB, inputs 98.1 KiB, scores 128 B); one allocation per \
             buffer: 18.7 MiB",
            "Device memory for a forward pass at batch 32: 6.0 MiB (arena 3.3 MiB, parameters \
             2.6 MiB, optimizer state 0 B, inputs 98.0 KiB); one allocation per buffer: 6.1 MiB",
        ]
    );
    // Without `--device cuda` the summary is as before.
    let (code, plain, _) = netc(&["summary", "examples/course_cnn.net"]);
    assert_eq!(code, 0);
    assert!(!plain.contains("Device memory"), "{plain}");
    assert!(out.starts_with(&plain), "{out}");
    let (code, out, err) = netc(&[
        "summary",
        "examples/vgg16.net",
        "--device",
        "cuda",
        "--batch",
        "64",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "Device memory for a training step at batch 64: 14.0 GiB (arena 12.9 GiB, \
             parameters 527.8 MiB, optimizer state 527.8 MiB, inputs 38.8 MiB, dropout keys 16 B, scores 256 B); \
             one allocation per buffer: 51.9 GiB"
        ),
        "{out}"
    );
}
