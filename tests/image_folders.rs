//! Image folders (`data: "DIR"` with a folder per class, optionally under
//! `train/` and `test/`) through the CLI: a model trains on them, `eval`
//! reads the test folder, and a broken image is named (or, under
//! `--skip-bad-images`, left out with a warning naming it), and decoded
//! images are kept in a cache that a changed folder invalidates.

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
    // The decode cache lives in the test's directory, not the user's.
    let cache = dir.path().join("cache").display().to_string();
    let (code, out, err) = netc(&[
        "train",
        &net.display().to_string(),
        "--data",
        &data,
        "-o",
        &w.display().to_string(),
        "--threads",
        "1",
        "--image-cache",
        &cache,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("on 24 examples"), "{err}");
    assert!(out.contains("accuracy 100.00% on 8 examples"), "{out}");
    // Both splits were decoded and kept for the next run.
    assert_eq!(err.matches("; kept in ").count(), 2, "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("cache")).unwrap().count(),
        2
    );
    let (code, out, err) = netc(&[
        "eval",
        &net.display().to_string(),
        "--weights",
        &w.display().to_string(),
        "--data",
        &data,
        "--threads",
        "1",
        "--image-cache",
        &cache,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("accuracy 100.00%"), "{out}");
    // Nothing changed: the pixels come from the cache, nothing is decoded.
    assert!(
        err.contains("8 images of") && err.contains("read from the decode cache"),
        "{err}"
    );
    assert!(!err.contains("kept in"), "{err}");
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
        "--image-cache",
        &cache,
    ]);
    // A changed folder is decoded again, so the new file is seen.
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
        "--image-cache",
        &cache,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning: skipped ") && err.contains("99.png: not a readable image"),
        "{err}"
    );
    assert!(err.contains("1 unreadable image(s) left out"), "{err}");
    assert!(err.contains("on 24 examples"), "{err}");
    assert!(out.contains("accuracy 100.00% on 8 examples"), "{out}");
    // A folder with a skipped file is not cached (it is decoded, and the
    // file reported, every time); the test split still comes from the cache.
    assert!(!err.contains("24 images of"), "{err}");
    assert!(err.contains("read from the decode cache"), "{err}");
}
