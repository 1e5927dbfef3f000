//! Filetests of the Cranelift loop-kernel backend: every
//! `tests/kernels/*.kir` file holds kernel IR programs in their printed
//! form, each followed by the data and the expectations of its test. The
//! runner compiles every loop kernel (both Cranelift optimization levels),
//! runs the program with the interpreter and with the compiled kernels
//! (contractions interpreted on both sides), and checks that they agree
//! and that the file's expectations hold. A new test is a new file.
//!
//! File format, line by line:
//!
//! ```text
//! ; a comment (blank lines are ignored too)
//! program NAME (batch 1) {          starts a case: a program in the printed
//!   ...                             form, up to the `}` line in column 0
//! }
//! init %B = GEN                     buffer B's values (buffers start at zero);
//! init %B[OFF] = GEN                from element OFF; later lines overwrite
//! tolerance REL                     JIT vs interpreter, relative (default 1e-6)
//! threads 1 2 3                     thread counts (default 1 2 3): the first is
//!                                   compared with the interpreter, the others
//!                                   must give the same bits
//! parallel N | parallel none        the compiled kernel's parallel extent
//! error "TEXT"                      compiling must fail with a message
//!                                   containing TEXT; nothing runs
//! expect %B[OFF] = GEN              after the run (interpreter and JIT), the
//!   ... within REL abs ABS          buffer holds GEN; optional tolerance
//!                                   |got - want| <= REL·|want| + ABS
//!                                   (default the case's, abs 0)
//! clif-contains "TEXT"              the kernel's Cranelift IR contains TEXT
//! ```
//!
//! `GEN` is `[v, v, ...]` (that many elements), or one of these filling the
//! buffer to its end: `fill(v)`, `ramp(start, step)` (start + i·step), or
//! `random(seed, lo, hi)`: values in `[lo, hi)` from a xorshift64 generator
//! seeded with `seed·0x9E3779B97F4A7C15 | 1`, each draw shifting the state
//! by 13 left, 7 right, 17 left (xor each time) and using its top 24 bits
//! as the fraction. NaN matches NaN; `inf`, `-inf` and `NaN` are numbers.
//! `parallel`, `error` and `clif-contains` need a program with exactly one
//! loop kernel.

mod common;
use common::xorshift_values;
use netc_compiler::codegen::cpu::loops::{compile_clif_text, CompiledLoop};
use netc_compiler::codegen::cpu::OptLevel;
use netc_compiler::kernel::parse::parse_program;
use netc_compiler::kernel::{interp, KernelBody, LoopKernel, Program};
use std::path::Path;

#[derive(Clone, Debug)]
enum Gen {
    List(Vec<f32>),
    Fill(f32),
    Ramp(f32, f32),
    Random(u64, f32, f32),
}

#[derive(Clone, Debug)]
enum Directive {
    Init(usize, usize, Gen),
    Tolerance(f32),
    Threads(Vec<usize>),
    Parallel(Option<usize>),
    Error(String),
    Expect(usize, usize, Gen, Option<(f32, f32)>),
    ClifContains(String),
}

struct Case {
    /// `file:line` of the `program` line.
    at: String,
    file: String,
    program: Program,
    directives: Vec<(usize, Directive)>,
}

impl Gen {
    /// The values for `len` elements (a list gives its own length).
    fn values(&self, len: usize) -> Vec<f32> {
        match self {
            Gen::List(v) => v.clone(),
            Gen::Fill(x) => vec![*x; len],
            Gen::Ramp(a, d) => (0..len).map(|i| a + i as f32 * d).collect(),
            Gen::Random(seed, lo, hi) => xorshift_values(len, *seed, *lo, *hi),
        }
    }
}

fn float(s: &str) -> Result<f32, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{}` is not a number", s.trim()))
}

fn args<'a>(s: &'a str, func: &str) -> Option<Vec<&'a str>> {
    let inner = s.strip_prefix(func)?.trim().strip_prefix('(')?;
    Some(inner.strip_suffix(')')?.split(',').collect())
}

fn gen(s: &str) -> Result<Gen, String> {
    let s = s.trim();
    if let Some(list) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        return list
            .split(',')
            .map(float)
            .collect::<Result<_, _>>()
            .map(Gen::List);
    }
    if let Some(a) = args(s, "fill") {
        if let [x] = a[..] {
            return Ok(Gen::Fill(float(x)?));
        }
    }
    if let Some(a) = args(s, "ramp") {
        if let [x, d] = a[..] {
            return Ok(Gen::Ramp(float(x)?, float(d)?));
        }
    }
    if let Some(a) = args(s, "random") {
        if let [seed, lo, hi] = a[..] {
            let seed = seed.trim().parse().map_err(|_| "bad seed".to_string())?;
            return Ok(Gen::Random(seed, float(lo)?, float(hi)?));
        }
    }
    Err(format!(
        "expected `[...]`, `fill(v)`, `ramp(start, step)` or `random(seed, lo, hi)`, found `{s}`"
    ))
}

/// `%B` or `%B[OFF]`.
fn target(s: &str) -> Result<(usize, usize), String> {
    let s = s.trim();
    let bad = || format!("expected `%B` or `%B[OFF]`, found `{s}`");
    let s = s.strip_prefix('%').ok_or_else(bad)?;
    let (b, off) = match s.split_once('[') {
        Some((b, off)) => (b, off.strip_suffix(']').ok_or_else(bad)?),
        None => (s, "0"),
    };
    Ok((
        b.parse().map_err(|_| bad())?,
        off.parse().map_err(|_| bad())?,
    ))
}

fn quoted(s: &str) -> Result<String, String> {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .map(str::to_string)
        .ok_or_else(|| format!("expected a quoted string, found `{s}`"))
}

fn directive(line: &str) -> Result<Directive, String> {
    let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let assignment = || {
        rest.split_once('=')
            .ok_or_else(|| format!("expected `{word} %B = ...`"))
    };
    Ok(match word {
        "init" => {
            let (t, g) = assignment()?;
            let (b, off) = target(t)?;
            Directive::Init(b, off, gen(g)?)
        }
        "expect" => {
            let (t, g) = assignment()?;
            let (b, off) = target(t)?;
            let (g, tol) = match g.split_once(" within ") {
                Some((g, tol)) => {
                    let (rel, abs) = tol.split_once(" abs ").unwrap_or((tol, "0"));
                    (g, Some((float(rel)?, float(abs)?)))
                }
                None => (g, None),
            };
            Directive::Expect(b, off, gen(g)?, tol)
        }
        "tolerance" => Directive::Tolerance(float(rest)?),
        "threads" => Directive::Threads(
            rest.split_whitespace()
                .map(|t| t.parse().map_err(|_| format!("bad thread count `{t}`")))
                .collect::<Result<_, _>>()?,
        ),
        "parallel" if rest.trim() == "none" => Directive::Parallel(None),
        "parallel" => Directive::Parallel(Some(
            rest.trim()
                .parse()
                .map_err(|_| "expected `parallel N|none`")?,
        )),
        "error" => Directive::Error(quoted(rest)?),
        "clif-contains" => Directive::ClifContains(quoted(rest)?),
        _ => return Err(format!("unknown directive `{word}`")),
    })
}

/// Splits a file into cases; errors are `file:line: message`.
fn read_cases(path: &Path, file: &str) -> Result<Vec<Case>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{file}: {e}"))?;
    let lines: Vec<&str> = text.lines().collect();
    let mut cases: Vec<Case> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        let lineno = i + 1;
        i += 1;
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        if line.starts_with("program ") {
            let start = i - 1;
            while i < lines.len() && lines[i].trim_end() != "}" {
                i += 1;
            }
            i += 1;
            let chunk = lines[start..i.min(lines.len())].join("\n");
            let program = parse_program(&chunk)
                .map_err(|e| format!("{file}:{}:{}: {}", start + e.line, e.column, e.kind))?;
            cases.push(Case {
                at: format!("{file}:{lineno}"),
                file: file.to_string(),
                program,
                directives: vec![],
            });
            continue;
        }
        let d = directive(line).map_err(|e| format!("{file}:{lineno}: {e}"))?;
        let case = cases
            .last_mut()
            .ok_or_else(|| format!("{file}:{lineno}: directive before the first `program`"))?;
        case.directives.push((lineno, d));
    }
    if cases.is_empty() {
        return Err(format!("{file}: no `program` in the file"));
    }
    Ok(cases)
}

fn close(want: f32, got: f32, rel: f32, abs: f32) -> bool {
    want == got
        || (want.is_nan() && got.is_nan())
        || (want - got).abs() <= rel * want.abs().max(got.abs()).max(1e-30) + abs
}

fn bits(bufs: &[Vec<f32>]) -> Vec<Vec<u32>> {
    bufs.iter()
        .map(|b| b.iter().map(|x| x.to_bits()).collect())
        .collect()
}

/// Runs the program with the loop kernels compiled (`compiled[k]` for
/// kernel `k`) and contractions interpreted.
fn run_jit(
    p: &Program,
    compiled: &[Option<CompiledLoop>],
    init: &[Vec<f32>],
    threads: usize,
) -> Result<Vec<Vec<f32>>, String> {
    let mut bufs = init.to_vec();
    for (k, c) in p.kernels.iter().zip(compiled) {
        match c {
            Some(c) => {
                let mut slices: Vec<&mut [f32]> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
                c.run(&mut slices, threads)
                    .map_err(|e| format!("kernel `{}`: {e}", k.name))?;
            }
            None => interp::run_kernel(p, k, &mut bufs).map_err(|e| e.to_string())?,
        }
    }
    Ok(bufs)
}

fn run_case(case: &Case) -> Result<(), String> {
    let p = &case.program;
    let at = |line: usize| format!("{}:{line}", case.file);
    let lens: Vec<usize> = p.buffers.iter().map(|b| b.len).collect();
    let mut init: Vec<Vec<f32>> = lens.iter().map(|&n| vec![0.0; n]).collect();
    let mut tol = 1e-6;
    let mut threads = vec![1, 2, 3];
    let loops: Vec<&LoopKernel> = p
        .kernels
        .iter()
        .filter_map(|k| match &k.body {
            KernelBody::Loop(l) => Some(l),
            KernelBody::Contraction(_) => None,
        })
        .collect();
    let only_loop = |line: usize| match loops[..] {
        [l] => Ok(l),
        _ => Err(format!(
            "{}: this directive needs exactly one loop kernel",
            at(line)
        )),
    };
    for (line, d) in &case.directives {
        match d {
            Directive::Init(b, off, g) => {
                let buf = init
                    .get_mut(*b)
                    .ok_or_else(|| format!("{}: no buffer %{b}", at(*line)))?;
                let v = g.values(buf.len().saturating_sub(*off));
                if off + v.len() > buf.len() {
                    return Err(format!(
                        "{}: {} values from element {off} overflow %{b} of {} elements",
                        at(*line),
                        v.len(),
                        buf.len()
                    ));
                }
                buf[*off..off + v.len()].copy_from_slice(&v);
            }
            Directive::Tolerance(t) => tol = *t,
            Directive::Threads(t) if !t.is_empty() => threads.clone_from(t),
            Directive::Threads(_) => return Err(format!("{}: no thread counts", at(*line))),
            Directive::Error(msg) => {
                let l = only_loop(*line)?;
                return match CompiledLoop::compile(l, &lens) {
                    Ok(_) => Err(format!("{}: compiled, expected error `{msg}`", at(*line))),
                    Err(e) if !e.to_string().contains(msg.as_str()) => Err(format!(
                        "{}: error `{e}` does not contain `{msg}`",
                        at(*line)
                    )),
                    Err(_) if compile_clif_text(l, &lens).is_ok() => Err(format!(
                        "{}: compile_clif_text succeeded where compile failed",
                        at(*line)
                    )),
                    Err(_) => Ok(()),
                };
            }
            _ => {}
        }
    }
    let mut compiled = Vec::new();
    let mut unoptimized = Vec::new();
    for k in &p.kernels {
        let KernelBody::Loop(l) = &k.body else {
            compiled.push(None);
            unoptimized.push(None);
            continue;
        };
        let what = |e| format!("{}: kernel `{}`: {e}", case.at, k.name);
        let c = CompiledLoop::compile(l, &lens).map_err(what)?;
        let text = compile_clif_text(l, &lens).map_err(what)?;
        if text != c.clif() || !text.starts_with("function ") {
            return Err(format!(
                "{}: kernel `{}`: compile_clif_text differs from the compiled kernel's CLIF",
                case.at, k.name
            ));
        }
        compiled.push(Some(c));
        unoptimized.push(Some(
            CompiledLoop::compile_with_opt_level(l, &lens, OptLevel::None).map_err(what)?,
        ));
    }
    let mut want = init.clone();
    interp::run_program(p, &mut want).map_err(|e| format!("{}: interpreter: {e}", case.at))?;
    let first =
        run_jit(p, &compiled, &init, threads[0]).map_err(|e| format!("{}: {e}", case.at))?;
    for (b, (w, g)) in want.iter().zip(&first).enumerate() {
        if let Some(i) = (0..w.len()).find(|&i| !close(w[i], g[i], tol, 0.0)) {
            return Err(format!(
                "{}: %{b}[{i}]: interpreter {}, JIT {} ({} threads, tolerance {tol})",
                case.at, w[i], g[i], threads[0]
            ));
        }
    }
    for &t in &threads[1..] {
        let got = run_jit(p, &compiled, &init, t).map_err(|e| format!("{}: {e}", case.at))?;
        if bits(&got) != bits(&first) {
            return Err(format!(
                "{}: {t} threads differ from {}",
                case.at, threads[0]
            ));
        }
    }
    let plain =
        run_jit(p, &unoptimized, &init, threads[0]).map_err(|e| format!("{}: {e}", case.at))?;
    if bits(&plain) != bits(&first) {
        return Err(format!(
            "{}: Cranelift's `none` and `speed` optimization levels differ",
            case.at
        ));
    }
    for (line, d) in &case.directives {
        match d {
            Directive::Parallel(want) => {
                only_loop(*line)?;
                let c = compiled.iter().flatten().next().expect("one loop kernel");
                if c.parallel_extent() != *want {
                    return Err(format!(
                        "{}: parallel extent {:?}, expected {want:?}",
                        at(*line),
                        c.parallel_extent()
                    ));
                }
            }
            Directive::ClifContains(needle) => {
                only_loop(*line)?;
                let c = compiled.iter().flatten().next().expect("one loop kernel");
                if !c.clif().contains(needle.as_str()) {
                    return Err(format!("{}: CLIF lacks `{needle}`", at(*line)));
                }
            }
            Directive::Expect(b, off, g, within) => {
                let (rel, abs) = within.unwrap_or((tol, 0.0));
                let len = lens
                    .get(*b)
                    .ok_or_else(|| format!("{}: no buffer %{b}", at(*line)))?;
                let v = g.values(len.saturating_sub(*off));
                if off + v.len() > *len {
                    return Err(format!(
                        "{}: {} values from element {off} overflow %{b} of {len} elements",
                        at(*line),
                        v.len()
                    ));
                }
                for (who, bufs) in [("interpreter", &want), ("JIT", &first)] {
                    let got = &bufs[*b][*off..off + v.len()];
                    if let Some(i) = (0..v.len()).find(|&i| !close(v[i], got[i], rel, abs)) {
                        return Err(format!(
                            "{}: %{b}[{}]: expected {}, {who} gives {}",
                            at(*line),
                            off + i,
                            v[i],
                            got[i]
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[test]
fn kernel_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kernels");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "kir"))
        .collect();
    paths.sort();
    let mut failures = Vec::new();
    let mut cases = 0;
    for path in &paths {
        let file = format!(
            "compiler/tests/kernels/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        match read_cases(path, &file) {
            Err(e) => failures.push(e),
            Ok(list) => {
                for case in &list {
                    cases += 1;
                    if let Err(e) = run_case(case) {
                        failures.push(e);
                    }
                }
            }
        }
    }
    println!("{cases} cases in {} files", paths.len());
    assert!(
        failures.is_empty(),
        "{} of {cases} kernel filetests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // A guard against the folder going missing or unread.
    assert!(cases >= 50, "only {cases} cases");
}
