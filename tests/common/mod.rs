//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root (tests run with it as the working directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the `netc` binary with `args` from the repository root.
/// Returns (exit code, stdout, stderr).
pub fn netc(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_netc"))
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .output()
        .expect("the netc binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every `.net` file in a directory (relative to the root), sorted.
pub fn net_files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .expect("directory exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "net"))
        .collect();
    v.sort();
    v
}

/// `dir/file.net` relative to the root, as the CLI is given it.
pub fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// Parses and checks a file through the library; panics with the
/// diagnostics if it has errors.
pub fn check_ok(src: &str) -> netc_compiler::Checked {
    let ast = netc_lang::parse(src).unwrap_or_else(|d| panic!("parse errors: {:?}", d.0));
    let checked = netc_compiler::check(&ast);
    let errors: Vec<_> = checked
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .collect();
    assert!(errors.is_empty(), "unexpected errors: {errors:#?}");
    checked
}

/// Deterministic buffers for running `p`: inputs in [0, 1), parameters in
/// [−0.5, 0.5), the `hyper` input at lr 0.01 and 1 elsewhere, everything
/// else zero (xorshift from `seed`).
pub fn program_buffers(p: &netc_compiler::kernel::ir::Program, seed: u64) -> Vec<Vec<f32>> {
    use netc_compiler::kernel::ir::BufKind;
    let mut seed = seed;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32
    };
    p.buffers
        .iter()
        .map(|b| match &b.kind {
            BufKind::Input(name) if name == "hyper" => {
                let mut v = vec![1.0; b.len];
                v[0] = 0.01;
                v
            }
            BufKind::Input(_) => (0..b.len).map(|_| next()).collect(),
            BufKind::Param(_) => (0..b.len).map(|_| next() - 0.5).collect(),
            BufKind::Temp | BufKind::State(_) => vec![0.0; b.len],
        })
        .collect()
}
