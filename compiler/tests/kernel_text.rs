//! The kernel IR's text form is lossless: every program the compiler makes
//! from the examples (forward and training step, unoptimized and
//! optimized) prints, parses back to the same `Program`, and prints to the
//! same text again.

mod common;

use netc_compiler::kernel::parse::{parse_kernel, parse_program};
use netc_compiler::kernel::print::{kernel_text, program_text};
use netc_compiler::kernel::Program;
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};

fn round_trip(p: &Program, what: &str) {
    let text = program_text(p);
    let parsed = parse_program(&text).unwrap_or_else(|e| {
        let line = text.lines().nth(e.line - 1).unwrap_or("");
        panic!("{what}: {e}\n  {line}")
    });
    assert_eq!(program_text(&parsed), text, "{what}: text differs");
    // Field by field first, so that a mismatch names the part that differs.
    assert_eq!(parsed.buffers, p.buffers, "{what}: buffers");
    assert_eq!(parsed.inputs, p.inputs, "{what}: inputs");
    assert_eq!(parsed.params, p.params, "{what}: params");
    assert_eq!(parsed.outputs, p.outputs, "{what}: outputs");
    for (a, b) in parsed.kernels.iter().zip(&p.kernels) {
        assert_eq!(a, b, "{what}: kernel `{}`", b.name);
        let alone = parse_kernel(&kernel_text(b)).unwrap();
        assert_eq!(&alone, b, "{what}: kernel `{}` parsed alone", b.name);
    }
    assert_eq!(&parsed, p, "{what}");
}

#[test]
fn every_example_program_round_trips_through_text() {
    let examples = common::checked_examples();
    let mut programs = 0;
    for (name, checked) in &examples {
        for g in &checked.graphs {
            // A model of any length, at a length.
            let g = &netc_compiler::masking::instantiate(g, 7).unwrap();
            for level in [OptLevel::O0, OptLevel::O1] {
                let what = format!("{name}: model `{}` at {level:?}", g.name);
                let c = Compilation::new(g, CompileOptions::at(level));
                round_trip(&c.program(2).unwrap(), &format!("{what}, forward"));
                programs += 1;
                let Some(cfg) = checked.train_for(&g.name) else {
                    continue;
                };
                let tp = c.training_program(cfg, 2).unwrap();
                round_trip(&tp.program, &format!("{what}, training step"));
                programs += 1;
            }
        }
    }
    println!("{programs} programs from {} examples", examples.len());
    // Every example has a model; most have a training section too.
    assert!(programs >= 2 * examples.len(), "only {programs} programs");
}
