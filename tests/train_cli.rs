//! `netc train` end to end on a tiny CSV data set: the metrics log and the
//! training-curve PNG beside it, with and without a checkpoint directory,
//! and across `--resume`.

mod common;
use common::{netc, root};
use std::path::Path;

const MODEL: &str = "model tiny {
  input x: [2]
  x -> dense(8) as h -> relu -> dense(2) as out -> softmax -> probs
  output probs
}

train tiny {
  loss: cross_entropy
  optimizer: adam(lr: 0.01)
  batch: 8
  epochs: 2
  metrics: [accuracy]
}
";

/// Two separable blobs, 64 examples, label in the last column.
fn write_data(dir: &Path) -> String {
    common::blobs_csv(dir, "blobs.csv", 64)
        .display()
        .to_string()
}

/// Width and height from a PNG's IHDR chunk, after checking the signature.
fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &b[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    assert_eq!(&b[12..16], b"IHDR");
    let be = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
    (be(&b[16..20]), be(&b[20..24]))
}

fn log_rows(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds")
    );
    lines.map(str::to_string).collect()
}

#[test]
fn checkpoint_dir_gets_metrics_log_and_plot_and_resume_extends_them() {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("tiny.net");
    std::fs::write(&net, MODEL).unwrap();
    let data = write_data(dir.path());
    let ck = dir.path().join("ck");
    let (net_s, ck_s) = (net.display().to_string(), ck.display().to_string());
    let args = ["train", &net_s, "--data", &data, "--checkpoint", &ck_s];
    let (code, out, err) = netc(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(log_rows(&ck.join("metrics.csv")).len(), 2);
    assert_eq!(
        png_size(&ck.join("metrics.png")),
        (netc_runtime::plot::WIDTH, netc_runtime::plot::HEIGHT)
    );

    let mut more = args.to_vec();
    more.extend(["--resume", "--epochs", "3"]);
    let (code, out, err) = netc(&more);
    assert_eq!(code, 0, "{out}\n{err}");
    let rows = log_rows(&ck.join("metrics.csv"));
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows[2].starts_with("3,"), "{rows:?}");
    png_size(&ck.join("metrics.png"));
}

#[test]
fn plot_flag_names_the_png_and_log_flag_puts_one_beside_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("tiny.net");
    std::fs::write(&net, MODEL).unwrap();
    let data = write_data(dir.path());
    let (net_s, plot) = (
        net.display().to_string(),
        dir.path().join("curves.png").display().to_string(),
    );
    let (code, out, err) = netc(&["train", &net_s, "--data", &data, "--plot", &plot]);
    assert_eq!(code, 0, "{out}\n{err}");
    png_size(Path::new(&plot));

    let log = dir.path().join("run.csv").display().to_string();
    let (code, out, err) = netc(&["train", &net_s, "--data", &data, "--log", &log]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(log_rows(Path::new(&log)).len(), 2);
    png_size(&dir.path().join("run.png"));
    // The repository itself is untouched.
    assert!(!root().join("run.png").exists());
}
