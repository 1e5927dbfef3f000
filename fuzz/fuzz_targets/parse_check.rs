//! Fuzz target for the front end: any byte string gives either a program or
//! diagnostics, never a panic. On a program that
//! checks, the summary, graph text, the optimizer and kernel lowering must
//! not panic either.
//!
//! Run with a nightly toolchain: `cargo +nightly fuzz run parse_check`
//! (seed the corpus with `examples/*.net` for a head start). On stable,
//! `cargo build --manifest-path fuzz/Cargo.toml` checks that it compiles,
//! and the built binary replays inputs: `fuzz/target/debug/parse_check FILE...`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use netc_compiler::kernel::{plan::plan, print::program_text};
use netc_compiler::op::Op;
use netc_compiler::opt::OptOptions;
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel, PipelineError};
use netc_compiler::{check, graph_text, summary, Graph};
use netc_lang::SourceFile;

/// Compilation unrolls recurrent layers over time at every level (under
/// the limits below), so its work grows with the sequence length; longer
/// sequences are not compiled here: they would only rediscover that.
const MAX_UNROLLED_STEPS: usize = 64;

/// The optimizer's limits, small: an input that reaches them takes the
/// same fallback and region paths as a huge model does under the defaults,
/// at a hundredth of the time (the default one-second limit would cap the
/// fuzzer near one execution a second on such inputs). The node limit
/// also bounds extraction, which the time limit does not cover; under the
/// fuzzer's comparison tracing, extracting from 20,000 e-nodes took most
/// of the fuzzer's time.
fn fuzz_limits() -> OptOptions {
    OptOptions {
        node_limit: 5_000,
        time_limit: std::time::Duration::from_millis(10),
        ..OptOptions::default()
    }
}

fn longest_sequence(g: &Graph) -> usize {
    g.g.node_indices()
        .filter(|&id| matches!(g.node(id).op, Op::Recurrent { .. }))
        .flat_map(|id| g.inputs_of(id))
        .filter(|&i| !matches!(g.node(i).op, Op::Param { .. }))
        .filter_map(|i| g.node(i).shape.as_ref().and_then(|s| s.0.first().copied()))
        .max()
        .unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let text = match netc_lang::decode(data) {
        Ok(text) => text,
        Err(_) => return,
    };
    let file = SourceFile::new("fuzz.net", text);
    let ast = match netc_lang::parse(text) {
        Ok(ast) => ast,
        Err(d) => {
            for d in &d.0 {
                let _ = d.render_plain(&file);
            }
            return;
        }
    };
    // The canonical form round-trips: printed text parses and prints the same.
    let printed = netc_lang::printer::print_file(&ast);
    let reparsed = netc_lang::parse(&printed).expect("printed program parses");
    assert_eq!(netc_lang::printer::print_file(&reparsed), printed);

    let checked = check(&ast);
    for d in &checked.diagnostics {
        for l in &d.labels {
            assert!(l.span.start <= l.span.end && l.span.end <= text.len());
            assert!(text.is_char_boundary(l.span.start) && text.is_char_boundary(l.span.end));
        }
        let _ = d.render_plain(&file);
    }
    if checked.has_errors() {
        return;
    }
    for g in &checked.graphs {
        let _ = summary::param_counts(g, &[]);
        let _ = summary::summary(g, &[]);
        let _ = graph_text::graph_text(g);
        let _ = graph_text::graph_dot(g);
        if longest_sequence(g) <= MAX_UNROLLED_STEPS {
            let at = |level| {
                Compilation::new(
                    g,
                    CompileOptions {
                        level,
                        forward: fuzz_limits(),
                    },
                )
            };
            // A checked graph compiles, or says that unrolling stopped at a limit.
            let p = match at(OptLevel::O0).program(1) {
                Ok(p) => p,
                Err(PipelineError::Unroll(_)) => continue,
                Err(e) => panic!("a checked graph lowers: {e}"),
            };
            match at(OptLevel::O1).program(1) {
                Ok(_) | Err(PipelineError::Unroll(_)) => {}
                Err(e) => panic!("an optimized graph lowers: {e}"),
            }
            let _ = plan(&p).peak_bytes(&p);
            let _ = program_text(&p);
        }
    }
});
