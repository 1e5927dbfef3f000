//! Every diagnostic kind, rendered by the CLI exactly as users see it, is
//! pinned by a snapshot: one `.net` file in `tests/diagnostics/` → one
//! reviewed snapshot of `netc check`'s stderr.

mod common;
use common::*;

#[test]
fn every_diagnostic_kind_renders_with_location_and_arithmetic() {
    let files = net_files("tests/diagnostics");
    assert!(files.len() >= 30);
    for f in files {
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        let (code, out, err) = netc(&["check", &rel(&f)]);
        let warning_only = stem.starts_with('w');
        if warning_only {
            assert_eq!(code, 0, "{stem}: warnings must not fail the check\n{err}");
            assert!(err.contains("warning["), "{stem}: {err}");
        } else {
            assert_ne!(code, 0, "{stem}: expected failure\n{out}");
            assert!(err.contains("error["), "{stem}: {err}");
        }
        // The code named by the file appears in its output.
        let code_name = stem.split('_').next().unwrap().to_uppercase();
        if code_name.len() == 5 && code_name[1..].chars().all(|c| c.is_ascii_digit()) {
            assert!(err.contains(&format!("[{code_name}]")), "{stem}: {err}");
        }
        // file:line:col of the primary label is always shown.
        assert!(err.contains(&format!("{}:", rel(&f))), "{stem}: {err}");
        insta::assert_snapshot!(stem, err);
    }
}

#[test]
fn three_independent_shape_errors_are_all_reported() {
    let (code, _, err) = netc(&["check", "tests/diagnostics/three_shape_errors.net"]);
    assert_eq!(code, 1);
    assert_eq!(err.matches("error[E02").count(), 3, "{err}");
    assert!(err.contains("(28 − 31 + 2·0)/1 + 1 = -2"), "{err}");
    assert!(err.contains("(28 − 5 + 2·0)/2 + 1 = 12.50"), "{err}");
    assert!(err.contains("26·26·4 = 2704"), "{err}");
    assert!(err.contains("three_shape_errors.net:4:12"), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn invalid_utf8_is_a_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.net");
    std::fs::write(&p, b"model m {\n  input x: [8]\xff\n}\n").unwrap();
    let (code, _, err) = netc(&["check", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("error[E0001]: source is not valid UTF-8"),
        "{err}"
    );
    assert!(err.contains("bad.net:2:15"), "{err}");
}

#[test]
fn missing_file_is_one_clear_error() {
    let (code, out, err) = netc(&["check", "does/not/exist.net"]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.starts_with("error: cannot read `does/not/exist.net`"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}
