//! Image folders (`data: "DIR"` with a folder per class, optionally under
//! `train/` and `test/`) through the CLI: a model trains on them, `eval`
//! reads the test folder, and a broken image is named (or, under
//! `--skip-bad-images`, left out with a warning naming it).

mod common;
use common::*;

use std::path::Path;

/// Bright images are class `bright`, dark ones `dark`; sizes vary (each
/// is resized to the model's 8x8), and they are RGB (converted to grey).
fn folder(root: &Path, split: &str, n: usize) {
    for i in 0..n {
        for (class, level) in [("bright", 200u8), ("dark", 30u8)] {
            let d = root.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            let size = 8 + (i % 3) as u32 * 4;
            let v = level.wrapping_add((i * 7 % 20) as u8);
            image::RgbImage::from_pixel(size, size, image::Rgb([v, v, v]))
                .save(d.join(format!("{i}.png")))
                .unwrap();
        }
    }
}

const MODEL: &str = "model shades {
  input image: [8, 8, 1]
  image -> flatten -> dense(2) as out -> softmax -> probs
  output probs
}

train shades {
  loss: cross_entropy
  optimizer: adam(lr: 0.05)
  batch: 4
  epochs: 5
  metrics: [accuracy]
}
";

#[test]
fn a_model_trains_and_evaluates_on_image_folders() {
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path(), "train", 12);
    folder(dir.path(), "test", 4);
    let net = dir.path().join("m.net");
    std::fs::write(&net, MODEL).unwrap();
    let w = dir.path().join("w.safetensors");
    let data = dir.path().display().to_string();
    let (code, out, err) = netc(&[
        "train",
        &net.display().to_string(),
        "--data",
        &data,
        "-o",
        &w.display().to_string(),
        "--threads",
        "1",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("on 24 examples"), "{err}");
    assert!(out.contains("accuracy 100.00% on 8 examples"), "{out}");
    let (code, out, err) = netc(&[
        "eval",
        &net.display().to_string(),
        "--weights",
        &w.display().to_string(),
        "--data",
        &data,
        "--threads",
        "1",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("accuracy 100.00%"), "{out}");
    // The class names come from the folders.
    assert!(out.contains("bright") && out.contains("dark"), "{out}");
    // A file that is not an image is named, and nothing trains.
    std::fs::write(dir.path().join("train/dark/99.png"), b"truncated").unwrap();
    let (code, out, err) = netc(&[
        "train",
        &net.display().to_string(),
        "--data",
        &data,
        "--no-save",
        "--threads",
        "1",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("99.png") && err.contains("not a readable image"),
        "{err}"
    );
    // Under --skip-bad-images it is left out with a warning naming it.
    let (code, out, err) = netc(&[
        "train",
        &net.display().to_string(),
        "--data",
        &data,
        "--no-save",
        "--threads",
        "1",
        "--skip-bad-images",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning: skipped ") && err.contains("99.png: not a readable image"),
        "{err}"
    );
    assert!(err.contains("1 unreadable image(s) left out"), "{err}");
    assert!(err.contains("on 24 examples"), "{err}");
    assert!(out.contains("accuracy 100.00% on 8 examples"), "{out}");
}
