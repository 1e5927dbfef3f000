//! Hostile-input tests: sizes past the machine, pooling padding, and the wording of shape and syntax messages.

use crate::common::netc;
use std::path::Path;

/// Writes `src` (bytes, so a test can plant a BOM or NUL) as `name` in
/// `dir` and returns its path as a string.
fn write(dir: &Path, name: &str, src: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, src).unwrap();
    p.display().to_string()
}

/// One `error: …` line and nothing that says the process crashed.
fn one_clean_error(code: i32, err: &str) {
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked") && !err.contains("memory allocation"));
}

/// A 1×1 input padded by 131000 on each side: a 262001×262001 activation
/// (6.9·10^10 floats, 256 GiB; just under the checker's 2^36 elements)
/// from one-float weights and a one-float input.
const HUGE_CONV: &str = "model m {
  input x: [1, 1, 1]
  x -> conv2d(1, 1, padding: 131000) -> avgpool2d(262001) -> flatten -> dense(2) -> softmax -> y
  output y
}
train m { loss: cross_entropy, epochs: 1, batch: 2 }
";

#[test]
fn init_refuses_weights_past_memory_naming_the_parameter() {
    let dir = tempfile::tempdir().unwrap();
    // 2^24 · 2^12 = 2^36 floats = 256 GiB in one dense weight.
    let net = write(
        dir.path(),
        "big.net",
        b"model m {\n  input x: [16777216]\n  x -> dense(4096) -> y\n  output y\n}\n",
    );
    let (code, out, _) = netc(&["check", &net]);
    assert_eq!(code, 0, "the checker accepts it: {out}");
    let w = dir.path().join("w.safetensors");
    let (code, _, err) = netc(&["init", &net, "-o", w.to_str().unwrap()]);
    one_clean_error(code, &err);
    assert!(
        err.contains("the weights of model `m` need 256.0 GiB (274877923328 bytes; largest: `dense_1.weight` [16777216, 4096], 256.0 GiB), but only "),
        "{err}"
    );
    assert!(err.trim_end().ends_with("of memory is available"), "{err}");
    assert!(!w.exists());
}

#[test]
fn run_refuses_activations_past_memory_naming_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let net = write(dir.path(), "conv.net", HUGE_CONV.as_bytes());
    let w = dir.path().join("w.safetensors");
    let (code, out, err) = netc(&["init", &net, "-o", w.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(6 parameters)"), "{out}");
    let x = dir.path().join("x.npy");
    netc_runtime::write_npy(
        &x,
        &netc_runtime::Tensor::full(vec![1, 1, 1, 1], 0.5).unwrap(),
    )
    .unwrap();
    let (code, _, err) = netc(&[
        "-O0",
        "run",
        &net,
        "--weights",
        w.to_str().unwrap(),
        "--input",
        x.to_str().unwrap(),
    ]);
    one_clean_error(code, &err);
    assert!(
        err.starts_with("error: the buffers of model `m` at batch 1 need "),
        "{err}"
    );
    // The conv output is the largest buffer: 262001² floats.
    assert!(err.contains("largest: `conv2d_1"), "{err}");
    assert!(err.contains("of 68644524001 floats, 255.7 GiB"), "{err}");
}

#[test]
fn train_refuses_activations_past_memory() {
    let dir = tempfile::tempdir().unwrap();
    let net = write(dir.path(), "conv.net", HUGE_CONV.as_bytes());
    let (x, y) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    let t = |shape: Vec<usize>, data: Vec<f32>| netc_runtime::Tensor::new(shape, data).unwrap();
    netc_runtime::write_npy(&x, &t(vec![4, 1, 1, 1], vec![0.1, 0.2, 0.3, 0.4])).unwrap();
    netc_runtime::write_npy(&y, &t(vec![4], vec![0.0, 1.0, 0.0, 1.0])).unwrap();
    let data = format!("{},{}", x.display(), y.display());
    let (code, _, err) = netc(&["train", &net, "--data", &data, "--threads", "1"]);
    assert_eq!(code, 1, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: the buffers of model `m` at batch 2 need ")
            && last.contains("conv2d_1"),
        "{err}"
    );
    assert!(last.ends_with("of memory is available"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("memory allocation"));
}

/// `netc check` of a one-layer pooling model on an 8×8 image.
fn check_pool(dir: &Path, layer: &str) -> (i32, String) {
    let src = format!(
        "model m {{\n  input x: [8, 8, 1]\n  x -> {layer} -> flatten -> y\n  output y\n}}\n"
    );
    let net = write(dir, "pool.net", src.as_bytes());
    let (code, _, err) = netc(&["check", &net]);
    (code, err)
}

#[test]
fn pool_padding_that_leaves_windows_of_padding_only_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = check_pool(dir.path(), "maxpool2d(2, padding: 5)");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error[E0210]: `maxpool2d_1` (maxpool2d): the padding is so wide that some windows hold only padding"),
        "{err}"
    );
    for axis in ["height", "width"] {
        assert!(
            err.contains(&format!("= {axis}: the first window covers −P … −P + F − 1 = −5 … −4, all padding (P = 5 ≥ F = 2; at most F − 1 = 1)")),
            "{err}"
        );
    }
    assert!(err.contains("pool.net:3:8"), "{err}");
    // P = F on one axis only: the window is exactly the padding.
    let (code, err) = check_pool(dir.path(), "avgpool2d(3, padding: [1, 3])");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("(avgpool2d)"), "{err}");
    assert!(err.contains("= width: the first window covers −P … −P + F − 1 = −3 … −1"));
    assert!(!err.contains("= height:"), "{err}");
    // F − 1 leaves one real pixel in every window: accepted.
    let (code, err) = check_pool(dir.path(), "maxpool2d(2, padding: 1)");
    assert_eq!(code, 0, "{err}");
    let (code, err) = check_pool(dir.path(), "avgpool2d(3, padding: same)");
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_byte_order_mark_is_accepted_and_columns_stay_right() {
    let dir = tempfile::tempdir().unwrap();
    let ok = b"model m { input x: [4]  x -> dense(2) -> y  output y }\n";
    let net = write(
        dir.path(),
        "bom.net",
        &[b"\xef\xbb\xbf".as_slice(), ok].concat(),
    );
    let (code, out, err) = netc(&["check", &net]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("ok: model `m`") && out.contains(" 10 parameters"),
        "{out}"
    );
    // An error on the first line points at the same column as without the mark.
    let bad = b"model m { input x: [4]  x -> dense(0) -> y  output y }\n";
    let net = write(
        dir.path(),
        "bom.net",
        &[b"\xef\xbb\xbf".as_slice(), bad].concat(),
    );
    let (code, _, err) = netc(&["check", &net]);
    assert_eq!(code, 1);
    assert!(err.contains("bom.net:1:36"), "{err}");
}

#[test]
fn sizes_past_the_limits_name_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let src = "model m {
  input x: [16777217]
  input img: [8, 8, 1]
  img -> maxpool2d(2, padding: 1000000000000) -> flatten -> a
  img -> conv2d(4, 3, stride: 100000000) -> flatten -> b
  x -> reshape([16777217, 1]) -> c
  output a, b, c
}
";
    let net = write(dir.path(), "limits.net", src.as_bytes());
    let (code, _, err) = netc(&["check", &net]);
    assert_eq!(code, 1);
    let want = [
        "error[E0120]: input dimension 16777217 is larger than the limit 16777216 (2^24)",
        "error[E0105]: invalid `padding` for `maxpool2d`: 1000000000000 is larger than the limit 16777216 (2^24)",
        "error[E0105]: invalid `stride` for `conv2d`: 100000000 is larger than the limit 16777216 (2^24)",
        "error[E0105]: invalid `shape` for `reshape`: 16777217 is larger than the limit 16777216 (2^24)",
    ];
    for w in want {
        assert!(err.contains(w), "missing {w:?} in\n{err}");
    }
    // 2^96 elements: the count is not wrapped or saturated into a number.
    let src = "model m {\n  input x: [4]\n  x -> reshape([16777216, 16777216, 16777216, 16777216]) -> y\n  output y\n}\n";
    let net = write(dir.path(), "reshape.net", src.as_bytes());
    let (code, _, err) = netc(&["check", &net]);
    assert_eq!(code, 1);
    assert!(
        err.contains("= the input holds 4 elements; the target holds more than 2^64\n"),
        "{err}"
    );
}

#[test]
fn an_output_listed_twice_is_an_error_at_the_second_mention() {
    let dir = tempfile::tempdir().unwrap();
    let src = "model m {\n  input x: [4]\n  x -> dense(2) -> y\n  output y, y\n}\n";
    let net = write(dir.path(), "twice.net", src.as_bytes());
    let (code, _, err) = netc(&["check", &net]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error[E0111]: `y` is listed twice as an output"),
        "{err}"
    );
    assert!(err.contains("twice.net:4:13"), "{err}");
    assert!(err.contains("first listed here"), "{err}");
    // Also across two `output` statements.
    let src = "model m {\n  input x: [4]\n  x -> dense(2) -> y\n  output y\n  output y\n}\n";
    let net = write(dir.path(), "twice.net", src.as_bytes());
    let (code, _, err) = netc(&["check", &net]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("twice.net:5:10"), "{err}");
}

#[test]
fn control_characters_are_escaped_in_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let src = b"model m {\n  input x: [8]\x00\x1b[2J\n  x -> y\n  output y\n}\n";
    let net = write(dir.path(), "nul.net", src);
    let (code, _, err) = netc(&["check", &net]);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains('\0') && !err.contains('\x1b'), "{err:?}");
    // The message quotes the token escaped; the excerpt shows stand-ins.
    assert!(err.contains("found `\\0\\u{1b}[2J`"), "{err}");
    assert!(err.contains("input x: [8]\u{2400}\u{241b}[2J"), "{err}");
    assert!(err.contains("nul.net:2:15"), "{err}");
}
