//! Property tests of the front end: any byte string
//! gives either a program or a diagnostic, never a panic; diagnostics point
//! inside the text; parsed programs print canonically and round-trip
//! through the printer; valid programs check cleanly, lower to kernel IR,
//! and have the parameter counts of the Keras formulas.
//!
//! Generators, from shallow to deep:
//! 1. arbitrary bytes and strings (mostly stop at decoding or the first token),
//! 2. "token soup": random sequences of the language's tokens, and
//!    "grammatical nonsense": programs that follow the grammar with random
//!    layers, arguments and numbers (they reach argument checking, shape
//!    inference and the training-section checker),
//! 3. a structured generator of valid CNN / MLP / recurrent models that
//!    computes each model's parameter count independently,
//! 4. mutated valid programs (shipped examples and generated models with a
//!    token or a number replaced, deleted, duplicated or swapped): programs
//!    that still check, with hostile sizes, reach summary and lowering.
//!
//! A panic anywhere fails the property and proptest shrinks the input; the
//! failure message shows the program text. Minimal inputs found so far are
//! kept as regression tests at the end of the file.

use netc_compiler::kernel::{plan::plan, print::program_text};
use netc_compiler::op::Op;
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};
use netc_compiler::shape::MAX_DIM;
use netc_compiler::{check, graph_text, summary, Checked};
use netc_lang::printer::print_file;
use netc_lang::{Diagnostic, SourceFile};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// `n` cases, or `PROPTEST_CASES` when set (for longer bug hunts:
/// `PROPTEST_CASES=100000 cargo test --test properties`). Failures are not
/// persisted to a regressions file: minimal inputs worth keeping go into
/// the regression tests at the end of this file.
fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(n)
    }
}

// ---------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------

/// Every label of every diagnostic lies within `text` on char boundaries,
/// and rendering never panics.
fn assert_diagnostics_sound(text: &str, diags: &[Diagnostic]) {
    let file = SourceFile::new("p.net", text);
    for d in diags {
        for l in &d.labels {
            let s = l.span;
            assert!(
                s.start <= s.end && s.end <= text.len(),
                "[{}] {}: span {s} outside the text (len {})",
                d.code,
                d.message,
                text.len()
            );
            assert!(
                text.is_char_boundary(s.start) && text.is_char_boundary(s.end),
                "[{}] {}: span {s} not on char boundaries",
                d.code,
                d.message
            );
        }
        let r = d.render_plain(&file);
        assert!(r.starts_with("p.net:"), "{r}");
    }
}

/// Printing is canonical: the printed text parses, and printing that again
/// gives the same text. Returns the canonical text.
fn assert_print_round_trips(ast: &netc_lang::ast::File) -> String {
    let printed = print_file(ast);
    let reparsed = match netc_lang::parse(&printed) {
        Ok(f) => f,
        Err(d) => panic!(
            "printed program does not parse: {:?}\n--- printed ---\n{printed}",
            d.0.iter().map(|d| &d.message).collect::<Vec<_>>()
        ),
    };
    let again = print_file(&reparsed);
    assert_eq!(again, printed, "printing is not idempotent");
    printed
}

/// Longest time axis a recurrent layer reads (0 when there is none).
fn longest_sequence(g: &netc_compiler::Graph) -> usize {
    g.g.node_indices()
        .filter(|&id| matches!(g.node(id).op, Op::Recurrent { .. }))
        .flat_map(|id| g.inputs_of(id))
        .filter(|&i| !matches!(g.node(i).op, Op::Param { .. }))
        .filter_map(|i| g.node(i).shape.as_ref().and_then(|s| s.0.first().copied()))
        .max()
        .unwrap_or(0)
}

/// Sequences up to this length are lowered in the properties.
const MAX_UNROLLED_STEPS: usize = 4096;

/// Summary, parameter counts and both graph forms of every graph; used
/// only on programs without errors, as the CLI does.
fn exercise_outputs(checked: &Checked) {
    for g in &checked.graphs {
        let frozen = checked
            .train_for(&g.name)
            .map(|t| t.freeze.clone())
            .unwrap_or_default();
        let c = summary::param_counts(g, &frozen);
        assert_eq!(c.total, c.trainable + c.frozen + c.non_trainable);
        let s = summary::summary(g, &frozen);
        assert!(s.starts_with("Model: "), "{s}");
        let _ = summary::summary(g, &[]);
        let t = graph_text::graph_text(g);
        assert!(t.starts_with("graph "), "{t}");
        let _ = graph_text::graph_dot(g);
        // Lowering to kernel IR and the memory plan (`netc summary`,
        // `netc compile --emit kernels`), at the smallest and largest batch.
        // Lowering unrolls recurrent layers over time (two kernels per step),
        // so very long sequences are skipped here: `[16777216, 1] -> rnn(1)`
        // checks fine but needs ~20 GB to lower.
        if longest_sequence(g) > MAX_UNROLLED_STEPS {
            continue;
        }
        // A model of any length lowers at a length.
        let g = &netc_compiler::masking::instantiate(g, 3).unwrap();
        for batch in [1, 3, MAX_DIM] {
            let p = match Compilation::new(g, CompileOptions::at(OptLevel::O0)).program(batch) {
                Ok(p) => p,
                Err(e) => panic!("a checked graph does not lower at batch {batch}: {e}"),
            };
            let m = plan(&p);
            let _ = m.peak_bytes(&p);
            let _ = program_text(&p);
        }
        assert!(
            Compilation::new(g, CompileOptions::at(OptLevel::O0))
                .program(0)
                .is_err()
                && Compilation::new(g, CompileOptions::at(OptLevel::O0))
                    .program(MAX_DIM + 1)
                    .is_err()
        );
    }
}

/// The whole front end on one text: parse, check, render, and on success
/// print / summarize. Never panics on any input (that is the property).
fn run_text(text: &str) -> Option<Checked> {
    match netc_lang::parse(text) {
        Err(d) => {
            assert!(
                d.0.iter().any(|d| d.is_error()),
                "parse failed without an error diagnostic"
            );
            assert_diagnostics_sound(text, &d.0);
            None
        }
        Ok(ast) => {
            assert_print_round_trips(&ast);
            let checked = check(&ast);
            assert_diagnostics_sound(text, &checked.diagnostics);
            if !checked.has_errors() {
                exercise_outputs(&checked);
            }
            Some(checked)
        }
    }
}

/// [`run_text`], with the input text in the failure message when it panics
/// (the generators' minimal inputs are structured, not text).
fn never_panics(text: &str) {
    if let Err(e) = std::panic::catch_unwind(|| run_text(text)) {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!("{msg}\n--- input ---\n{text}\n--- as a string ---\n{text:?}");
    }
}

fn run_bytes(bytes: &[u8]) {
    match netc_lang::decode(bytes) {
        Ok(text) => never_panics(text),
        Err(d) => {
            for d in &d.0 {
                for l in &d.labels {
                    assert!(l.span.start <= l.span.end && l.span.end <= bytes.len());
                }
                let lossy = String::from_utf8_lossy(bytes).into_owned();
                let _ = d.render_plain(&SourceFile::new("p.net", lossy));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 1. Arbitrary bytes
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        run_bytes(&bytes);
    }

    #[test]
    fn arbitrary_strings_never_panic(text in "\\PC{0,200}") {
        never_panics(&text);
    }
}

// ---------------------------------------------------------------------------
// 2. Token soup
// ---------------------------------------------------------------------------

#[rustfmt::skip]
const TOKENS: &[&str] = &[
    "model", "train", "input", "output", "as", "m", "x", "y", "h", "{", "}", "(", ")", "[", "]",
    "->", "=", ":", ",", ";", "conv2d", "dense", "lstm", "gru", "rnn", "maxpool2d", "avgpool2d",
    "flatten", "reshape", "add", "concat", "relu", "leaky_relu", "sigmoid", "tanh", "softmax",
    "batchnorm", "dropout", "filters", "kernel", "stride", "padding", "units", "size", "shape",
    "axis", "rate", "bias", "activation", "return_sequences", "bidirectional", "merge", "layers",
    "alpha", "epsilon", "momentum", "same", "valid", "none", "sum", "mul", "ave", "loss",
    "optimizer", "batch", "epochs", "metrics", "freeze", "schedule", "lr", "mse", "cross_entropy",
    "adam", "sgd", "accuracy", "seed", "data", "validation_split", "clip_norm", "0", "1", "2", "3",
    "7", "28", "-1", "-2", "4096", "65535", "65536", "1000000", "16777216", "16777217",
    "2147483648", "4294967295", "4294967296", "9223372036854775807", "-9223372036854775808",
    "9223372036854775808", "99999999999999999999", "0.5", "-0.5", "1.0", "0.0", "1e999", "1e-999",
    "2.5E+4", "true", "false", "\"s\"", "\"\"", "é", "\n", "// c\n", "# c\n", "/* c */", "/*",
    "tokens", "embedding", "vocab", "dim",
];

/// A token, sometimes a bigger integer chosen at random.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        16 => proptest::sample::select(TOKENS).prop_map(String::from),
        1 => any::<i64>().prop_map(|i| i.to_string()),
        1 => (0..=u32::MAX).prop_map(|i| i.to_string()),
        1 => (0..64u32, -1..=1i64).prop_map(|(k, d)| ((1i128 << k) + d as i128).to_string()),
    ]
}

/// Mostly one space between tokens; sometimes none (so tokens run together).
fn separator() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(&[" ", " ", " ", " ", "\n", ""][..])
}

fn soup() -> impl Strategy<Value = String> {
    proptest::collection::vec((token(), separator()), 0..80).prop_map(|ts| {
        let mut s = String::new();
        for (t, sep) in ts {
            s.push_str(&t);
            s.push_str(sep);
        }
        s
    })
}

/// Soup behind a plausible prefix, so most cases get past `model NAME {`.
fn soup_in_model() -> impl Strategy<Value = String> {
    (
        proptest::sample::select(
            &[
                "model m { input x: [",
                "model m { input x: [8, 8, 2]\n x ->",
                "model m { input x: [10, 3]\n x ->",
                "model m { input x: [16]\n",
                "model m { input x: [4]\n x -> dense(2) -> y\n output y }\ntrain m {",
                "",
            ][..],
        ),
        soup(),
        proptest::sample::select(&["", "}", " -> y\n output y }", "]\n output y }"][..]),
    )
        .prop_map(|(a, b, c)| format!("{a}{b}{c}"))
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn token_soup_never_panics(text in soup()) {
        never_panics(&text);
    }

    #[test]
    fn token_soup_inside_a_model_never_panics(text in soup_in_model()) {
        never_panics(&text);
    }
}

// ---------------------------------------------------------------------------
// 2b. Grammatical nonsense: programs that follow the grammar, with names,
//     layers, arguments and numbers drawn at random. Most of them parse, so
//     this is what exercises the graph builder, argument checking, shape
//     inference and the training-section checker on hostile values.
// ---------------------------------------------------------------------------

const NAMES: &[&str] = &["x", "y", "h", "m", "image", "out", "conv1", "fc1", "relu_1"];
#[rustfmt::skip]
const LAYER_NAMES: &[&str] = &[
    "conv2d", "maxpool2d", "avgpool2d", "flatten", "reshape", "dense", "dropout", "batchnorm",
    "relu", "leaky_relu", "sigmoid", "tanh", "softmax", "rnn", "lstm", "gru", "add", "concat",
    "embedding", "conv", "dnese",
];
#[rustfmt::skip]
const ARG_NAMES: &[&str] = &[
    "filters", "kernel", "stride", "padding", "bias", "activation", "size", "shape", "units",
    "rate", "epsilon", "momentum", "alpha", "return_sequences", "bidirectional", "merge", "layers",
    "axis", "lr", "beta1", "nesterov", "every", "gamma", "min_lr", "patience", "monitor",
    "min_delta", "weight_decay", "vocab", "dim", "bogus",
];
#[rustfmt::skip]
const IDENT_VALUES: &[&str] = &[
    "same", "valid", "none", "relu", "softmax", "concat", "sum", "mul", "ave", "x", "y", "h",
    "mse", "cross_entropy", "binary_cross_entropy", "accuracy", "val_loss", "conv1", "fc1",
];
#[rustfmt::skip]
const TRAIN_KEYS: &[&str] = &[
    "loss", "optimizer", "batch", "epochs", "metrics", "clip_norm", "clip_value", "l1", "l2",
    "early_stopping", "validation_split", "freeze", "schedule", "seed", "data", "lr",
];
#[rustfmt::skip]
const CALLEES: &[&str] = &[
    "adam", "adamw", "sgd", "momentum", "step", "cosine", "early_stopping", "dense",
];

/// An integer: mostly small, sometimes at the edges of u32 / i64.
fn int() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => -2..=40i64,
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
        2 => (0..64u32, -1..=1i64).prop_map(|(k, d)| (1i64 << k.min(62)).saturating_add(d)),
        2 => prop_oneof![Just(u32::MAX as i64), Just(u32::MAX as i64 + 1), Just(65_536i64)],
        1 => any::<i64>(),
    ]
}

fn float() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0.5".to_string()),
        Just("0.0".to_string()),
        Just("-0.5".to_string()),
        Just("1.0".to_string()),
        Just("1e-3".to_string()),
        Just("1e308".to_string()),
        Just("1e-320".to_string()),
        Just("2.5E+4".to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
    ]
}

fn value() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        4 => int().prop_map(|i| i.to_string()),
        2 => float(),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        1 => proptest::sample::select(&["\"s\"", "\"\"", "\"data/é\""][..]).prop_map(String::from),
        3 => proptest::sample::select(IDENT_VALUES).prop_map(String::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("[{}]", v.join(", "))),
            (proptest::sample::select(CALLEES), args_of(inner))
                .prop_map(|(c, a)| format!("{c}{a}")),
        ]
    })
    .boxed()
}

fn args_of(v: BoxedStrategy<String>) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        (
            proptest::option::weighted(0.5, proptest::sample::select(ARG_NAMES)),
            v,
        ),
        0..4,
    )
    .prop_map(|args| {
        let parts: Vec<String> = args
            .into_iter()
            .map(|(n, v)| match n {
                Some(n) => format!("{n}: {v}"),
                None => v,
            })
            .collect();
        format!("({})", parts.join(", "))
    })
}

fn stage() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            3 => proptest::sample::select(LAYER_NAMES),
            1 => proptest::sample::select(NAMES),
        ],
        proptest::option::weighted(0.6, args_of(value())),
        proptest::option::weighted(0.2, proptest::sample::select(NAMES)),
    )
        .prop_map(|(n, a, alias)| {
            let mut s = n.to_string();
            s += &a.unwrap_or_default();
            if let Some(al) = alias {
                s += &format!(" as {al}");
            }
            s
        })
}

fn statement() -> impl Strategy<Value = String> {
    let dims = proptest::collection::vec(
        prop_oneof![4 => 1..=32i64, 1 => int()].prop_map(|i| i.to_string()),
        0..5,
    );
    prop_oneof![
        2 => (proptest::sample::select(NAMES), proptest::bool::weighted(0.25), dims).prop_map(
            |(n, tokens, d)| {
                let kind = if tokens { "tokens" } else { "" };
                format!("input {n}: {kind}[{}]", d.join(", "))
            }
        ),
        1 => proptest::collection::vec(proptest::sample::select(NAMES), 1..3)
            .prop_map(|n| format!("output {}", n.join(", "))),
        4 => (
            proptest::option::weighted(0.4, proptest::sample::select(NAMES)),
            proptest::sample::select(NAMES),
            proptest::collection::vec(stage(), 0..6),
            proptest::option::weighted(0.6, proptest::sample::select(NAMES)),
        )
            .prop_map(|(bind, first, mid, last)| {
                let mut stages = vec![first.to_string()];
                stages.extend(mid);
                stages.extend(last.map(String::from));
                let p = stages.join(" -> ");
                match bind {
                    Some(b) => format!("{b} = {p}"),
                    None => p,
                }
            }),
    ]
}

fn item() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (
            proptest::sample::select(&["m", "n"][..]),
            proptest::collection::vec(statement(), 0..8),
        )
            .prop_map(|(name, st)| format!("model {name} {{\n  {}\n}}\n", st.join("\n  "))),
        1 => (
            proptest::sample::select(&["m", "n", "mm"][..]),
            proptest::collection::vec((proptest::sample::select(TRAIN_KEYS), value()), 0..6),
        )
            .prop_map(|(name, kv)| {
                let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("train {name} {{\n  {}\n}}\n", body.join("\n  "))
            }),
    ]
}

fn grammatical_nonsense() -> impl Strategy<Value = String> {
    proptest::collection::vec(item(), 1..4).prop_map(|items| items.concat())
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn grammatical_nonsense_never_panics(text in grammatical_nonsense()) {
        never_panics(&text);
    }
}

// ---------------------------------------------------------------------------
// 3. Valid models, generated with their expected parameter counts
// ---------------------------------------------------------------------------

/// A generated program: its source and the parameter total computed here,
/// independently of the compiler, from the Keras formulas.
#[derive(Debug, Clone)]
struct Generated {
    src: String,
    params: usize,
}

/// Builds the text of one model while tracking its shape and parameters.
struct ModelText {
    /// Pipeline segments; each is one statement once finished.
    statements: Vec<String>,
    /// The stage being extended.
    current: String,
    params: usize,
    layer_no: usize,
    binding_no: usize,
    /// How to spell things (drawn once per model).
    named_args: bool,
    name_layers: bool,
    break_lines: bool,
}

impl ModelText {
    fn new(input: &str, style: Style) -> Self {
        ModelText {
            statements: Vec::new(),
            current: input.to_string(),
            params: 0,
            layer_no: 0,
            binding_no: 0,
            named_args: style.named_args,
            name_layers: style.name_layers,
            break_lines: style.break_lines,
        }
    }

    /// Appends `-> stage`. `pos` are positional arguments, `named` always
    /// named; with `named_args` the positional ones are written by name.
    fn stage(
        &mut self,
        kind: &str,
        pos: &[(&str, String)],
        named: &[(&str, String)],
        params: usize,
    ) {
        self.params += params;
        let mut args: Vec<String> = pos
            .iter()
            .map(|(k, v)| {
                if self.named_args {
                    format!("{k}: {v}")
                } else {
                    v.clone()
                }
            })
            .collect();
        args.extend(named.iter().map(|(k, v)| format!("{k}: {v}")));
        let mut s = kind.to_string();
        if !args.is_empty() {
            s += &format!("({})", args.join(", "));
        }
        self.layer_no += 1;
        if self.name_layers {
            s += &format!(" as layer{}", self.layer_no);
        }
        let sep = if self.break_lines {
            "\n    -> "
        } else {
            " -> "
        };
        self.current += sep;
        self.current += &s;
    }

    /// Ends the current pipeline in a binding and continues from it, either
    /// as `name = pipeline` or as a trailing `-> name`.
    fn split(&mut self, as_assignment: bool) {
        if !self.current.contains("->") {
            return; // a binding needs at least one layer
        }
        self.binding_no += 1;
        let name = format!("h{}", self.binding_no);
        let stmt = if as_assignment {
            format!("{name} = {}", self.current)
        } else {
            format!("{} -> {name}", self.current)
        };
        self.statements.push(stmt);
        self.current = name;
    }

    fn finish(mut self, input_decl: String, output_first: bool) -> (String, usize) {
        self.statements.push(format!("{} -> out", self.current));
        let mut body = vec![input_decl];
        if output_first {
            body.insert(0, "output out".into());
            body.extend(self.statements);
        } else {
            body.extend(self.statements);
            body.push("output out".into());
        }
        let src = format!("// generated\nmodel gen {{\n  {}\n}}\n", body.join("\n  "));
        (src, self.params)
    }
}

#[derive(Debug, Clone, Copy)]
struct Style {
    named_args: bool,
    name_layers: bool,
    break_lines: bool,
    output_first: bool,
    with_train: bool,
}

fn style() -> impl Strategy<Value = Style> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(named_args, name_layers, break_lines, output_first, with_train)| Style {
                named_args,
                name_layers,
                break_lines,
                output_first,
                with_train,
            },
        )
}

/// Element-wise layers that keep the shape and have no parameters
/// (batchnorm has 4·C and is handled separately).
const ELEMENTWISE: &[&str] = &[
    "relu",
    "sigmoid",
    "tanh",
    "softmax",
    "leaky_relu(alpha: 0.1)",
    "dropout(0.25)",
    "dropout(rate: 0.5)",
];

#[derive(Debug, Clone)]
enum ImageLayer {
    Conv {
        filters: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        bias: bool,
        activation: bool,
    },
    Pool {
        max: bool,
        size: usize,
        stride: Option<usize>,
    },
    Elementwise(usize),
    BatchNorm,
    Split(bool),
}

fn image_layer() -> impl Strategy<Value = ImageLayer> {
    prop_oneof![
        4 => (1..=8usize, 1..=5usize, 1..=5usize, 1..=3usize, any::<bool>(), any::<bool>()).prop_map(
            |(filters, kh, kw, stride, bias, activation)| ImageLayer::Conv {
                filters,
                kh,
                kw,
                stride,
                bias,
                activation
            }
        ),
        2 => (any::<bool>(), 1..=3usize, proptest::option::of(1..=3usize))
            .prop_map(|(max, size, stride)| ImageLayer::Pool { max, size, stride }),
        2 => (0..ELEMENTWISE.len()).prop_map(ImageLayer::Elementwise),
        1 => Just(ImageLayer::BatchNorm),
        1 => any::<bool>().prop_map(ImageLayer::Split),
    ]
}

#[derive(Debug, Clone)]
enum VectorLayer {
    Dense {
        units: usize,
        bias: bool,
        activation: bool,
    },
    Elementwise(usize),
    BatchNorm,
    Split(bool),
}

fn vector_layer() -> impl Strategy<Value = VectorLayer> {
    prop_oneof![
        4 => (1..=40usize, any::<bool>(), any::<bool>()).prop_map(|(units, bias, activation)| {
            VectorLayer::Dense { units, bias, activation }
        }),
        2 => (0..ELEMENTWISE.len()).prop_map(VectorLayer::Elementwise),
        1 => Just(VectorLayer::BatchNorm),
        1 => any::<bool>().prop_map(VectorLayer::Split),
    ]
}

/// Appends vector layers to a `[F]` (or per-time-step `[T, F]`) value whose
/// last axis is `f`; returns the new last axis.
fn push_vector_layers(m: &mut ModelText, mut f: usize, layers: &[VectorLayer]) -> usize {
    for l in layers {
        match l {
            VectorLayer::Dense {
                units,
                bias,
                activation,
            } => {
                let mut named = Vec::new();
                if !bias {
                    named.push(("bias", "false".to_string()));
                }
                if *activation {
                    named.push(("activation", "relu".to_string()));
                }
                let p = f * units + if *bias { *units } else { 0 };
                m.stage("dense", &[("units", units.to_string())], &named, p);
                f = *units;
            }
            VectorLayer::Elementwise(i) => m.stage(ELEMENTWISE[*i], &[], &[], 0),
            VectorLayer::BatchNorm => m.stage("batchnorm", &[], &[], 4 * f),
            VectorLayer::Split(assign) => m.split(*assign),
        }
    }
    f
}

fn train_block(with: bool) -> &'static str {
    if with {
        "\ntrain gen {\n  loss: mse\n  optimizer: adam(lr: 0.001)\n  batch: 8, epochs: 2\n}\n"
    } else {
        ""
    }
}

/// A CNN: conv / pool / elementwise layers with shapes kept valid, then
/// flatten (or `reshape([-1])`) and a dense head.
fn cnn() -> impl Strategy<Value = Generated> {
    (
        (1..=12usize, 1..=12usize, 1..=4usize),
        proptest::collection::vec(image_layer(), 0..7),
        any::<bool>(),
        proptest::collection::vec(vector_layer(), 0..4),
        1..=10usize,
        style(),
    )
        .prop_map(|((h0, w0, c0), image, reshape, head, classes, st)| {
            let mut m = ModelText::new("image", st);
            let (mut h, mut w, mut c) = (h0, w0, c0);
            for l in &image {
                match l {
                    ImageLayer::Conv {
                        filters,
                        kh,
                        kw,
                        stride,
                        bias,
                        activation,
                    } => {
                        let kernel = if kh == kw {
                            kh.to_string()
                        } else {
                            format!("[{kh}, {kw}]")
                        };
                        let mut pos = vec![("filters", filters.to_string()), ("kernel", kernel)];
                        if *stride != 1 {
                            pos.push(("stride", stride.to_string()));
                        }
                        let mut named = vec![("padding", "same".to_string())];
                        if !bias {
                            named.push(("bias", "false".into()));
                        }
                        if *activation {
                            named.push(("activation", "relu".into()));
                        }
                        // Keras: F·(KH·KW·C + 1), without the +1 when bias is off.
                        let p = filters * (kh * kw * c + usize::from(*bias));
                        m.stage("conv2d", &pos, &named, p);
                        h = h.div_ceil(*stride);
                        w = w.div_ceil(*stride);
                        c = *filters;
                    }
                    ImageLayer::Pool { max, size, stride } => {
                        let kind = if *max { "maxpool2d" } else { "avgpool2d" };
                        let s = stride.unwrap_or(*size);
                        let mut pos = vec![("size", size.to_string())];
                        if let Some(st) = stride {
                            pos.push(("stride", st.to_string()));
                        }
                        // `valid` only where the window fits and the stride divides.
                        let fits = |x: usize| x >= *size && (x - size) % s == 0;
                        if fits(h) && fits(w) {
                            m.stage(kind, &pos, &[], 0);
                            h = (h - size) / s + 1;
                            w = (w - size) / s + 1;
                        } else {
                            m.stage(kind, &pos, &[("padding", "same".into())], 0);
                            h = h.div_ceil(s);
                            w = w.div_ceil(s);
                        }
                    }
                    ImageLayer::Elementwise(i) => m.stage(ELEMENTWISE[*i], &[], &[], 0),
                    ImageLayer::BatchNorm => m.stage("batchnorm", &[], &[], 4 * c),
                    ImageLayer::Split(assign) => m.split(*assign),
                }
            }
            if reshape {
                m.stage("reshape", &[("shape", "[-1]".into())], &[], 0);
            } else {
                m.stage("flatten", &[], &[], 0);
            }
            let f = push_vector_layers(&mut m, h * w * c, &head);
            m.stage(
                "dense",
                &[("units", classes.to_string())],
                &[],
                f * classes + classes,
            );
            m.stage("softmax", &[], &[], 0);
            let (src, params) =
                m.finish(format!("input image: [{h0}, {w0}, {c0}]"), st.output_first);
            Generated {
                src: src + train_block(st.with_train),
                params,
            }
        })
}

/// A multilayer perceptron over `[F]`.
fn mlp() -> impl Strategy<Value = Generated> {
    (
        1..=64usize,
        proptest::collection::vec(vector_layer(), 0..8),
        1..=10usize,
        style(),
    )
        .prop_map(|(f0, layers, out, st)| {
            let mut m = ModelText::new("features", st);
            let f = push_vector_layers(&mut m, f0, &layers);
            m.stage("dense", &[("units", out.to_string())], &[], f * out + out);
            let (src, params) = m.finish(format!("input features: [{f0}]"), st.output_first);
            Generated {
                src: src + train_block(st.with_train),
                params,
            }
        })
}

#[derive(Debug, Clone)]
struct Recurrent {
    kind: usize,
    units: usize,
    bidirectional: Option<bool>,
    layers: usize,
    bias: bool,
}

const CELLS: &[&str] = &["rnn", "lstm", "gru"];

fn recurrent() -> impl Strategy<Value = Recurrent> {
    (
        0..3usize,
        1..=16usize,
        proptest::option::of(any::<bool>()),
        1..=3usize,
        prop::bool::weighted(0.8),
    )
        .prop_map(|(kind, units, bidirectional, layers, bias)| Recurrent {
            kind,
            units,
            bidirectional,
            layers,
            bias,
        })
}

/// Parameters of one direction of one recurrent layer (Keras formulas).
fn cell_params(kind: &str, f: usize, u: usize, bias: bool) -> usize {
    let b = usize::from(bias);
    match kind {
        "rnn" => u * (f + u) + b * u,
        "lstm" => 4 * (u * (f + u) + b * u),
        "gru" => 3 * (u * (f + u) + b * 2 * u),
        _ => unreachable!(),
    }
}

/// A stack of recurrent layers over `[T, F]`: all but the last return
/// sequences; the last may too, and then the head is dense per time step.
fn rnn_stack() -> impl Strategy<Value = Generated> {
    (
        (1..=12usize, 1..=10usize),
        proptest::collection::vec(recurrent(), 1..4),
        any::<bool>(),
        proptest::collection::vec(vector_layer(), 0..3),
        1..=5usize,
        style(),
    )
        .prop_map(|((t, f0), cells, last_seq, head, out, st)| {
            let mut m = ModelText::new("series", st);
            let mut f = f0;
            let n = cells.len();
            for (i, r) in cells.iter().enumerate() {
                let kind = CELLS[r.kind];
                let u = r.units;
                let mut named = Vec::new();
                if i + 1 < n || last_seq {
                    named.push(("return_sequences", "true".to_string()));
                }
                // merge: concat doubles the features, sum/mul/ave keep U.
                let (dirs, u_out) = match r.bidirectional {
                    None => (1, u),
                    Some(concat) => {
                        named.push(("bidirectional", "true".into()));
                        if concat {
                            (2, 2 * u)
                        } else {
                            named.push(("merge", "sum".into()));
                            (2, u)
                        }
                    }
                };
                if r.layers > 1 {
                    named.push(("layers", r.layers.to_string()));
                }
                if !r.bias {
                    named.push(("bias", "false".into()));
                }
                let mut p = 0;
                for k in 0..r.layers {
                    let fin = if k == 0 { f } else { u_out };
                    p += dirs * cell_params(kind, fin, u, r.bias);
                }
                m.stage(kind, &[("units", u.to_string())], &named, p);
                f = u_out;
            }
            let f = push_vector_layers(&mut m, f, &head);
            m.stage("dense", &[("units", out.to_string())], &[], f * out + out);
            let (src, params) = m.finish(format!("input series: [{t}, {f0}]"), st.output_first);
            Generated {
                src: src + train_block(st.with_train),
                params,
            }
        })
}

fn valid_model() -> impl Strategy<Value = Generated> {
    prop_oneof![cnn(), mlp(), rnn_stack()]
}

/// Parses and checks a generated program; it must be accepted with the
/// expected parameter count, and print canonically.
fn assert_valid(g: &Generated) {
    let ast = match netc_lang::parse(&g.src) {
        Ok(a) => a,
        Err(d) => panic!("generated program does not parse: {:?}\n{}", d.0, g.src),
    };
    let checked = check(&ast);
    let errors: Vec<String> = checked
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.render_plain(&SourceFile::new("gen.net", g.src.as_str())))
        .collect();
    assert!(errors.is_empty(), "{}\n{}", errors.join(""), g.src);
    assert_eq!(checked.graphs.len(), 1);
    let graph = &checked.graphs[0];
    let counted = summary::param_counts(graph, &[]);
    assert_eq!(
        counted.total, g.params,
        "parameter count differs\n{}",
        g.src
    );
    exercise_outputs(&checked);

    // Printing round-trips, and the printed program is the same program.
    let printed = assert_print_round_trips(&ast);
    let rechecked = check(&netc_lang::parse(&printed).expect("printed program parses"));
    assert!(!rechecked.has_errors(), "{printed}");
    assert_eq!(
        graph_text::graph_text(&rechecked.graphs[0]),
        graph_text::graph_text(graph),
        "printed program builds a different graph\n--- source ---\n{}\n--- printed ---\n{printed}",
        g.src
    );
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn generated_models_check_and_round_trip(g in valid_model()) {
        assert_valid(&g);
    }
}

// ---------------------------------------------------------------------------
// 4. Mutated valid programs
// ---------------------------------------------------------------------------

/// Splits text into tokens and the whitespace between them (kept as tokens,
/// so joining gives back the text).
fn lex(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let class = |c: char| {
        if c.is_alphanumeric() || c == '_' || c == '.' {
            0
        } else if c.is_whitespace() {
            1
        } else {
            2 + c as u32
        }
    };
    let mut last = None;
    for c in text.chars() {
        let k = class(c);
        if last.is_some_and(|l| l != k || k >= 2) && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
        last = Some(k);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize),
    Duplicate(usize),
    Replace(usize, String),
    Insert(usize, String),
    Swap(usize, usize),
    /// Replace the i-th number in the text.
    Number(usize, i64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let idx = any::<prop::sample::Index>();
    prop_oneof![
        1 => idx.clone().prop_map(|i| Mutation::Delete(i.index(usize::MAX))),
        1 => idx.clone().prop_map(|i| Mutation::Duplicate(i.index(usize::MAX))),
        1 => (idx.clone(), token()).prop_map(|(i, t)| Mutation::Replace(i.index(usize::MAX), t)),
        1 => (idx.clone(), token()).prop_map(|(i, t)| Mutation::Insert(i.index(usize::MAX), t)),
        1 => (idx.clone(), idx.clone())
            .prop_map(|(i, j)| Mutation::Swap(i.index(usize::MAX), j.index(usize::MAX))),
        3 => (idx, int()).prop_map(|(i, n)| Mutation::Number(i.index(usize::MAX), n)),
    ]
}

fn mutate(text: &str, muts: &[Mutation]) -> String {
    let mut toks = lex(text);
    for m in muts {
        if toks.is_empty() {
            break;
        }
        let n = toks.len();
        match m {
            Mutation::Delete(i) => {
                toks.remove(i % n);
            }
            Mutation::Duplicate(i) => {
                let t = toks[i % n].clone();
                toks.insert(i % n, t);
            }
            Mutation::Replace(i, t) => toks[i % n] = t.clone(),
            Mutation::Insert(i, t) => toks.insert(i % (n + 1), format!(" {t} ")),
            Mutation::Swap(i, j) => toks.swap(i % n, j % n),
            Mutation::Number(i, v) => {
                let nums: Vec<usize> = (0..n)
                    .filter(|&k| toks[k].starts_with(|c: char| c.is_ascii_digit()))
                    .collect();
                if !nums.is_empty() {
                    toks[nums[i % nums.len()]] = v.to_string();
                }
            }
        }
    }
    toks.concat()
}

/// The shipped examples' texts, read once.
fn example_sources() -> &'static [String] {
    static SOURCES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    SOURCES.get_or_init(read_examples)
}

fn read_examples() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "net"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn mutated_examples_never_panic(
        which in any::<prop::sample::Index>(),
        muts in proptest::collection::vec(mutation(), 1..4),
    ) {
        let examples = example_sources();
        prop_assume!(!examples.is_empty());
        let text = mutate(which.get::<String>(examples), &muts);
        never_panics(&text);
    }

    #[test]
    fn mutated_generated_models_never_panic(
        g in valid_model(),
        muts in proptest::collection::vec(mutation(), 1..4),
    ) {
        never_panics(&mutate(&g.src, &muts));
    }
}

// ---------------------------------------------------------------------------
// Sanity checks of the generators themselves
// ---------------------------------------------------------------------------

#[test]
fn lexer_keeps_the_text() {
    for src in example_sources() {
        assert_eq!(&lex(src).concat(), src);
    }
}

#[test]
fn shipped_examples_pass_the_same_checks() {
    for src in example_sources() {
        let checked = run_text(src).expect("examples parse");
        assert!(!checked.has_errors());
    }
}

#[test]
fn parameter_formulas_match_the_course_numbers() {
    // course_lstm: 4*(128*(1+128) + 128) = 66,560; gru_classifier: 14,208.
    assert_eq!(cell_params("lstm", 1, 128, true), 66_560);
    assert_eq!(cell_params("gru", 8, 64, true), 14_208);
    assert_eq!(cell_params("rnn", 3, 4, true), 4 * 7 + 4);
}

// ---------------------------------------------------------------------------
// Regressions: inputs the generators above found
// ---------------------------------------------------------------------------

/// Programs whose sizes overflowed usize (shapes' element counts, reshape
/// targets, parameter totals) and panicked before the size limits of
/// E0208; found by `mutated_generated_models_never_panic`. Each single
/// number is within its own limit; the products and sums are not.
const HUGE: &[(&str, &str)] = &[
    ("[4294967295, 4294967295, 4294967295]", "flatten"),
    ("[16777216, 16777216, 16777216]", "flatten"),
    ("[2]", "dense(4294967295) -> dense(4294967295)"),
    ("[16777216]", "dense(16777216) -> dense(16777216)"),
    ("[1, 1]", "lstm(4294967295)"),
    ("[1, 1]", "lstm(16777216, layers: 3)"),
    ("[1, 1]", "gru(16777216, bidirectional: true)"),
    (
        "[1, 1, 16777216]",
        "conv2d(16777216, 16777216, padding: same)",
    ),
    ("[2]", "reshape([16777216, 16777216, 16777216])"),
    ("[2]", "reshape([-1, 16777216, 16777216, 16777216])"),
    ("[16777216, 16777216]", "concat(x) -> concat(x) -> flatten"),
];

#[test]
fn huge_sizes_are_diagnosed_not_overflowed() {
    let mut failures = Vec::new();
    for (shape, layers) in HUGE {
        let src = format!("model m {{\n  input x: {shape}\n  x -> {layers} -> y\n  output y\n}}\n");
        match std::panic::catch_unwind(|| run_text(&src)) {
            Err(_) => failures.push(format!("panics:\n{src}")),
            Ok(Some(c)) if !c.has_errors() => failures.push(format!("accepted:\n{src}")),
            Ok(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Two 2^36-element inputs at the largest batch: the plan's arena and the
/// inputs each fit in usize, but `peak_bytes` (4 × elements) overflows.
/// Only reachable through the library today (the CLI plans at batch 1).
#[test]
fn memory_plan_of_the_largest_batch_does_not_overflow() {
    let src = "model m {
  input a: [16777216, 4096]
  input b: [16777216, 4096]
  a -> add(b) -> relu -> y
  output y
}
";
    let checked = check(&netc_lang::parse(src).expect("parses"));
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    let p = Compilation::new(&checked.graphs[0], CompileOptions::at(OptLevel::O0))
        .program(MAX_DIM)
        .expect("lowers");
    let m = plan(&p);
    assert!(m.peak_bytes(&p) >= 4 * m.arena_len);
}

/// Found by `mutated_generated_models_never_panic`: eleven recurrent
/// layers over 2048 steps check fine but need more e-nodes to unroll
/// than the optimizer's default limit; the unrolling's limit grows with
/// the steps to unroll.
#[test]
fn long_sequences_through_many_layers_unroll() {
    let src = "model gen {
  input series: [2048, 1]
  series -> rnn(1, return_sequences: true, layers: 3, bias: false)
         -> rnn(1, return_sequences: true, layers: 2, bias: false)
         -> lstm(1, bidirectional: true, merge: sum, layers: 3, bias: false)
         -> dense(1) -> out
  output out
}
";
    let checked = check(&netc_lang::parse(src).unwrap());
    assert!(!checked.has_errors());
    let p = Compilation::new(&checked.graphs[0], CompileOptions::at(OptLevel::O0)).program(1);
    assert!(p.is_ok(), "{:?}", p.err());
}
