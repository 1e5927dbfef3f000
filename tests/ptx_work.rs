//! Parallelism of the GPU launches, read from their launch plans
//! (`codegen::ptx::kernel_work`, the decomposition the PTX encodes and the
//! geometry interpreter runs; `tests/ptx.rs` checks that the interpreter
//! measures the same figures on every example): in the training steps of the course CNN,
//! the course LSTM and VGG-16, no thread runs more than 4,096 loop trips
//! one after another, and every launch with work for a full H100 (132
//! SMs) has at least 132 blocks. And the rewrites that got them there —
//! contractions split along a long reduction, column sums with a register
//! per column, products planned as one block per output, col2im as a
//! gather — compute what the reference interpreter does on every backend.

mod common;
use common::*;
use netc_compiler::codegen::ptx::launch::{Shape, BLOCK};
use netc_compiler::codegen::ptx::{kernel_work, program_plan, Work};
use netc_compiler::kernel::ir::{KernelBody, Program};
use netc_compiler::pipeline::{lower_training, Compilation, CompileOptions};

/// Streaming multiprocessors of an H100 SXM.
const SMS: u64 = 132;
/// Longest sequence of loop trips one thread may run.
const MAX_SERIAL: u64 = 4096;
/// Work (innermost iterations) that would give every thread of a full
/// wave of 132 blocks at least 16 iterations: such a launch must fill the
/// GPU. Smaller ones (a loss over 64 rows) are latency, not throughput.
const FULL_WAVE: u64 = SMS * BLOCK as u64 * 16;

fn training(src: &str, batch: usize) -> Program {
    let checked = check_ok(src);
    let g = &checked.graphs[0];
    let cfg = checked.train_for(&g.name).unwrap();
    let c = Compilation::new(g, CompileOptions::default());
    let tg = c.training_graph(&cfg.objective()).unwrap();
    lower_training(&tg, cfg, batch).unwrap().program
}

fn example(name: &str) -> String {
    std::fs::read_to_string(root().join(format!("examples/{name}.net"))).unwrap()
}

fn works(p: &Program) -> Vec<(String, Work)> {
    program_plan(p)
        .unwrap()
        .iter()
        .map(|pl| (pl.kernel.clone(), kernel_work(pl)))
        .collect()
}

#[test]
fn training_steps_fill_an_h100_without_long_serial_loops() {
    for (name, batch) in [("course_cnn", 64), ("course_lstm", 32), ("vgg16", 64)] {
        let p = training(&example(name), batch);
        let w = works(&p);
        let register_tiled = program_plan(&p)
            .unwrap()
            .iter()
            .filter(|pl| matches!(pl.shape, Shape::RegisterTiled(..)))
            .count();
        let (worst, longest) = w.iter().max_by_key(|(_, w)| w.serial).unwrap();
        let big: Vec<_> = w.iter().filter(|(_, w)| w.total >= FULL_WAVE).collect();
        let fewest = big.iter().map(|(_, w)| w.blocks).min().unwrap_or(0);
        eprintln!(
            "{name} batch {batch}: {} launches; longest serial loop {} trips (`{worst}`); \
             {} launches with a full wave of work, the fewest blocks among them {fewest}; \
             {register_tiled} register-tiled products",
            w.len(),
            longest.serial,
            big.len()
        );
        for (k, work) in &w {
            assert!(
                work.serial <= MAX_SERIAL,
                "{name}: `{k}` runs {} trips in one thread ({work:?})",
                work.serial
            );
            assert!(
                work.total < FULL_WAVE || work.blocks >= SMS,
                "{name}: `{k}` has work for a full wave but {} blocks ({work:?})",
                work.blocks
            );
        }
    }
}

#[test]
fn the_course_cnns_reductions_run_one_block_per_output() {
    let p = training(&example("course_cnn"), 64);
    let plans = program_plan(&p).unwrap();
    let find = |name: &str| plans.iter().find(|pl| pl.kernel == name).unwrap();
    // conv1's weight gradient: 9×32 outputs, K = 64·26·26 = 43,264, was
    // two 16×16 tiles of 43,264 serial steps.
    let dw = find("grad:conv1.weight");
    assert!(
        matches!(dw.shape, Shape::Blocks { total: 288, .. }),
        "{:?}",
        dw.shape
    );
    // One block-stride step, then its share of the split K loop.
    assert_eq!(kernel_work(dw).serial, 1 + 43_264_u64.div_ceil(256));
    // The bias gradient's 8 partial column sums over 1,352 rows of 32
    // columns (of the max-pool windows' masked gradients, which the pool
    // gradient stores besides), was one thread per partial.
    let db = find("grad:conv1.bias.partial");
    assert!(
        matches!(
            db.shape,
            Shape::Blocks {
                total: 256,
                scalars: 1,
                ..
            }
        ),
        "{:?}",
        db.shape
    );
    assert_eq!(kernel_work(db).serial, 1 + 1352_u64.div_ceil(256));
    assert_eq!(kernel_work(db).blocks, 256);
}

/// Interpreter, CPU JIT and GPU launch geometry on the forward and
/// training programs of `src` at `batch`.
fn all_agree(label: &str, src: &str, batch: usize) -> Vec<Program> {
    let checked = check_ok(src);
    let g = &checked.graphs[0];
    let c = Compilation::new(g, CompileOptions::default());
    let forward = c.program(batch).unwrap();
    let cfg = checked.train_for(&g.name).unwrap();
    let step = c.training_program(cfg, batch).unwrap().program;
    for (what, p) in [("forward", &forward), ("training", &step)] {
        backends_agree(&format!("{label} {what}"), p, &program_buffers(p, 3));
    }
    vec![forward, step]
}

fn kernel_names(p: &Program) -> Vec<&str> {
    p.kernels.iter().map(|k| k.name.as_str()).collect()
}

#[test]
fn long_reductions_split_into_partial_products_that_agree() {
    // A dense layer over 70,000 features (K > 65,536): two partial
    // products, then a sum with the bias and the relu.
    let src = "model wide { input x: [70000]  x -> dense(5, activation: relu) -> y  output y }
               train wide { loss: mse  optimizer: sgd(lr: 0.1)  batch: 2  epochs: 1 }";
    let ps = all_agree("dense over 70,000", src, 2);
    let names = kernel_names(&ps[0]);
    assert!(
        names.contains(&"dense_1.k0")
            && names.contains(&"dense_1.k1")
            && names.contains(&"dense_1"),
        "{names:?}"
    );
    let KernelBody::Contraction(c) =
        &ps[0].kernels[names.iter().position(|n| *n == "dense_1.k1").unwrap()].body
    else {
        panic!("not a contraction")
    };
    assert_eq!(c.k(), 35_000);
    // A convolution whose weight gradient sums over 20·62·62 = 76,880
    // positions, after another one (so col2im runs too); the course of a
    // step checks the bias column sums with a register per column.
    let src = "model deep { input x: [64, 64, 1]
                 x -> conv2d(2, 3, activation: relu) -> conv2d(3, 3, stride: 2, padding: same) -> flatten -> dense(3) -> y
                 output y }
               train deep { loss: mse  optimizer: sgd(lr: 0.1)  batch: 20  epochs: 1 }";
    let ps = all_agree("strided convolutions at batch 20", src, 20);
    let names = kernel_names(&ps[1]);
    assert!(names.iter().any(|n| n.ends_with(".weight.k1")), "{names:?}");
    assert!(names.iter().any(|n| n.contains("col2im.r1_1")), "{names:?}");
}
