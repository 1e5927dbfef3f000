//! Image folders, as Keras's `image_dataset_from_directory` reads them:
//! `dir/<class>/*.png|jpg|jpeg`, classes in sorted order of their folder
//! names, or `dir/train/<class>/…` with an optional `dir/test/<class>/…`
//! (the test set's classes must be among the training set's).
//!
//! Each image is decoded (PNG, JPEG; by content, so a misnamed file still
//! reads), converted to the model's channels (1: luma, 3: RGB), resized to
//! its `[H, W]` (bilinear) when it differs, and stored as bytes `0..=255`
//! (the loader's caller scales them to `[0, 1]` as it does IDX pixels).
//! Files are decoded in parallel on every core, once per run: the decoded
//! set stays in memory for every epoch, and with a cache directory it is
//! kept on disk for the next run (`image_cache`). A file that does not decode is an
//! error naming it, unless the caller asks for [`BadImages::Skip`]; then it
//! is left out and listed in the data set's [`Origin::skipped`] for the
//! caller to warn about. Other files (no image extension) are skipped, as
//! hidden files and notes beside the images are. Class folders with no
//! (readable) image are an error: a class the data never shows cannot be
//! learned.

use super::dataset::{Dataset, Origin};
use super::error::DataError;
use super::image_cache::{self, CacheUse};
use crate::tensor::Tensor;
use std::path::{Path, PathBuf};

/// What loading does with a file that has an image extension but does not
/// decode (truncated download, wrong format, empty file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BadImages {
    /// Stop with an error naming the file: nothing is silently left out.
    #[default]
    Fail,
    /// Leave the file out and list it in [`Origin::skipped`].
    Skip,
}

/// Whether `dir` looks like an image folder: a subfolder (of `dir`, or of
/// `dir/train`) that holds an image file.
pub fn is_image_folder(dir: &Path) -> bool {
    let root = split_root(dir).unwrap_or_else(|| dir.to_path_buf());
    subdirs(&root).iter().any(|d| !images_in(d).is_empty())
}

/// `dir/train` when it exists.
fn split_root(dir: &Path) -> Option<PathBuf> {
    let t = dir.join("train");
    t.is_dir().then_some(t)
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir() && !hidden(p))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn images_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && !hidden(p)
                        && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                            ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str())
                        })
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Loads the image folder `dir` for a model input of shape `[H, W, C]`
/// (C 1 or 3): the training set and, with `dir/test`, the test set.
///
/// With a `cache` directory, each split's decoded pixels are kept there
/// and read back on the next run while the folder is unchanged (see
/// [`image_cache`](super::image_cache)); what happened is in the data
/// set's [`Origin::image_cache`].
pub fn load_image_folder(
    dir: &Path,
    shape: &[usize],
    bad: BadImages,
    cache: Option<&Path>,
) -> Result<(Dataset, Option<Dataset>), DataError> {
    let &[h, w, c] = shape else {
        return Err(DataError::shape(format!(
            "an image folder feeds an image input [H, W, C]; the model's input has shape {shape:?}"
        ))
        .at(dir));
    };
    if c != 1 && c != 3 {
        return Err(DataError::shape(format!(
            "an image folder gives 1 (grey) or 3 (RGB) channels; the model's input has {c}"
        ))
        .at(dir));
    }
    let (train_root, test_root) = match split_root(dir) {
        Some(t) => (t, Some(dir.join("test")).filter(|p| p.is_dir())),
        None => (dir.to_path_buf(), None),
    };
    let classes: Vec<String> = subdirs(&train_root)
        .iter()
        .filter_map(|d| d.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .collect();
    if classes.len() < 2 {
        return Err(DataError::format(format!(
            "an image folder needs a folder per class (at least two); found {}",
            classes.len()
        ))
        .at(&train_root));
    }
    let train = load_split(&train_root, &classes, [h, w, c], true, bad, cache)?;
    let test = match test_root {
        Some(t) => {
            if let Some(extra) = subdirs(&t).iter().find(|d| {
                d.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !classes.iter().any(|c| c == n))
            }) {
                return Err(DataError::mismatch(
                    "this test class has no folder in train/, so the model cannot learn it",
                )
                .at(extra));
            }
            Some(load_split(&t, &classes, [h, w, c], false, bad, cache)?)
        }
        None => None,
    };
    Ok((train, test))
}

/// One split: every class folder under `root` (absent ones allowed unless
/// `every_class`).
fn load_split(
    root: &Path,
    classes: &[String],
    [h, w, c]: [usize; 3],
    every_class: bool,
    bad: BadImages,
    cache: Option<&Path>,
) -> Result<Dataset, DataError> {
    let mut files: Vec<(PathBuf, usize)> = Vec::new();
    for (k, name) in classes.iter().enumerate() {
        let d = root.join(name);
        let found = images_in(&d);
        if found.is_empty() && every_class {
            return Err(DataError::format(format!(
                "class folder `{name}` holds no .png or .jpg image"
            ))
            .at(&d));
        }
        files.extend(found.into_iter().map(|p| (p, k)));
    }
    if files.is_empty() {
        return Err(DataError::format("no .png or .jpg image in any class folder").at(root));
    }
    let per = h * w * c;
    let mut x = vec![0f32; files.len() * per];
    let manifest = cache.and_then(|_| image_cache::manifest(root, &files, [h, w, c]));
    let cached = match (cache, &manifest) {
        (Some(dir), Some(m)) => image_cache::read(dir, m, x.len()),
        _ => None,
    };
    let (failures, cache_use) = match cached {
        Some((pixels, path)) => {
            for (d, b) in x.iter_mut().zip(pixels) {
                *d = f32::from(b);
            }
            (Vec::new(), Some(CacheUse::Read(path)))
        }
        None => {
            let failures = decode_all(&files, [h, w, c], &mut x)?;
            // Only a complete decode is cached: a skipped file is decoded
            // (and reported) again next time.
            let cache_use = match (cache, &manifest) {
                (Some(dir), Some(m)) if failures.is_empty() => {
                    // Decoded pixels are whole bytes, so this is exact.
                    let pixels: Vec<u8> = x.iter().map(|&v| v as u8).collect();
                    Some(match image_cache::write(dir, m, &pixels) {
                        Ok(path) => CacheUse::Written(path),
                        Err(e) => CacheUse::Unwritable(format!("{}: {e}", dir.display())),
                    })
                }
                _ => None,
            };
            (failures, cache_use)
        }
    };
    let mut skipped: Vec<(PathBuf, String)> = Vec::new();
    if !failures.is_empty() {
        if bad == BadImages::Fail {
            // The first in file order, whichever thread met it first.
            let (_, e) = failures.into_iter().next().expect("not empty");
            return Err(e);
        }
        let mut keep = vec![true; files.len()];
        for (i, e) in failures {
            keep[i] = false;
            skipped.push((files[i].0.clone(), e.kind.to_string()));
        }
        x = x
            .chunks(per)
            .zip(&keep)
            .filter(|(_, &k)| k)
            .flat_map(|(row, _)| row.iter().copied())
            .collect();
        let mut kept = keep.iter();
        files.retain(|_| *kept.next().expect("one flag per file"));
        if every_class {
            if let Some(k) = (0..classes.len()).find(|k| !files.iter().any(|(_, c)| c == k)) {
                return Err(DataError::format(format!(
                    "class folder `{}` holds no readable image (its files were skipped)",
                    classes[k]
                ))
                .at(&root.join(&classes[k])));
            }
        }
        if files.is_empty() {
            return Err(DataError::format("no readable image in any class folder").at(root));
        }
    }
    let y: Vec<f32> = files.iter().map(|(_, k)| *k as f32).collect();
    let x =
        Tensor::new(vec![files.len(), h, w, c], x).map_err(|e| DataError::shape(e.to_string()))?;
    let mut d = Dataset::new(x, y, Some(classes.len()))?;
    d.origin = Some(Origin {
        path: root.to_path_buf(),
        lines: None,
        class_names: Some(classes.to_vec()),
        truncated: None,
        skipped,
        image_cache: cache_use,
    });
    Ok(d)
}

/// Decodes every file into its row of `x`, in parallel on every core;
/// returns the files that did not decode (index into `files`, error), in
/// file order.
fn decode_all(
    files: &[(PathBuf, usize)],
    [h, w, c]: [usize; 3],
    x: &mut [f32],
) -> Result<Vec<(usize, DataError)>, DataError> {
    let per = h * w * c;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .zip(x.chunks_mut(chunk * per))
            .enumerate()
            .map(|(t, (fs, out))| {
                s.spawn(move || {
                    let mut failed = Vec::new();
                    for (i, ((path, _), dst)) in fs.iter().zip(out.chunks_mut(per)).enumerate() {
                        if let Err(e) = decode_into(path, [h, w, c], dst) {
                            failed.push((t * chunk + i, e));
                        }
                    }
                    failed
                })
            })
            .collect();
        let mut failed = Vec::new();
        for handle in handles {
            failed.extend(
                handle
                    .join()
                    .map_err(|_| DataError::invalid("an image decoder thread panicked"))?,
            );
        }
        Ok(failed)
    })
}

/// Decodes one image into `dst` (`h·w·c` bytes as f32, row-major HWC).
fn decode_into(path: &Path, [h, w, c]: [usize; 3], dst: &mut [f32]) -> Result<(), DataError> {
    use image::imageops::{resize, FilterType};
    let bad = |e: String| DataError::format(format!("not a readable image: {e}")).at(path);
    let img = image::io::Reader::open(path)
        .map_err(|e| bad(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?
        .decode()
        .map_err(|e| bad(e.to_string()))?;
    let (w32, h32) = (w as u32, h as u32);
    let bytes: Vec<u8> = if c == 1 {
        let g = img.to_luma8();
        if g.dimensions() == (w32, h32) {
            g.into_raw()
        } else {
            resize(&g, w32, h32, FilterType::Triangle).into_raw()
        }
    } else {
        let g = img.to_rgb8();
        if g.dimensions() == (w32, h32) {
            g.into_raw()
        } else {
            resize(&g, w32, h32, FilterType::Triangle).into_raw()
        }
    };
    for (d, b) in dst.iter_mut().zip(bytes) {
        *d = f32::from(b);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
            .save(path)
            .unwrap();
    }

    #[test]
    fn classes_sorted_images_resized_and_converted() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        png(&d.join("cat/a.png"), 4, 4, [255, 255, 255]);
        png(&d.join("cat/b.PNG"), 8, 6, [0, 0, 0]);
        png(&d.join("ant/c.png"), 4, 4, [255, 0, 0]);
        std::fs::write(d.join("ant/notes.txt"), "not an image").unwrap();
        assert!(is_image_folder(d));
        let (train, test) = load_image_folder(d, &[4, 4, 1], BadImages::Fail, None).unwrap();
        assert!(test.is_none());
        assert_eq!(train.x.shape, vec![3, 4, 4, 1]);
        // `ant` is class 0, `cat` class 1, files in name order.
        assert_eq!(train.y, vec![0.0, 1.0, 1.0]);
        let names = train.origin.as_ref().unwrap().class_names.clone().unwrap();
        assert_eq!(names, ["ant", "cat"]);
        // Red in luma (ITU-R 601 in `image`): 54 or so; white 255; the
        // black 8x6 image resized to 4x4 stays 0.
        let px = |i: usize| train.x.data[i * 16];
        assert!((50.0..=80.0).contains(&px(0)), "{}", px(0));
        assert_eq!(px(1), 255.0);
        assert_eq!(px(2), 0.0);
        let (rgb, _) = load_image_folder(d, &[4, 4, 3], BadImages::Fail, None).unwrap();
        assert_eq!(&rgb.x.data[..3], &[255.0, 0.0, 0.0]);
    }

    #[test]
    fn train_and_test_splits_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        png(&d.join("train/a/1.png"), 2, 2, [1, 1, 1]);
        png(&d.join("train/b/1.png"), 2, 2, [2, 2, 2]);
        png(&d.join("test/b/1.png"), 2, 2, [3, 3, 3]);
        let (train, test) = load_image_folder(d, &[2, 2, 1], BadImages::Fail, None).unwrap();
        assert_eq!(train.len(), 2);
        let test = test.unwrap();
        assert_eq!(test.y, vec![1.0]);
        assert_eq!(test.classes, Some(2));
        // A test class the training set lacks.
        png(&d.join("test/c/1.png"), 2, 2, [3, 3, 3]);
        let e = load_image_folder(d, &[2, 2, 1], BadImages::Fail, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test/c") && e.contains("no folder in train/"),
            "{e}"
        );
        std::fs::remove_dir_all(d.join("test/c")).unwrap();
        // A file that does not decode is named.
        std::fs::write(d.join("train/a/broken.png"), b"not a png").unwrap();
        let e = load_image_folder(d, &[2, 2, 1], BadImages::Fail, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("broken.png") && e.contains("not a readable image"),
            "{e}"
        );
        // Under `--skip-bad-images` it is left out and listed.
        let (train, _) = load_image_folder(d, &[2, 2, 1], BadImages::Skip, None).unwrap();
        assert_eq!(train.len(), 2);
        assert_eq!(train.y, vec![0.0, 1.0]);
        assert_eq!(train.x.data, vec![1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]);
        let skipped = &train.origin.as_ref().unwrap().skipped;
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].0.ends_with("train/a/broken.png"));
        assert!(skipped[0].1.contains("not a readable image"), "{skipped:?}");
        // A class left with no readable image is still an error.
        std::fs::rename(d.join("train/a/1.png"), d.join("1.png")).unwrap();
        let e = load_image_folder(d, &[2, 2, 1], BadImages::Skip, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`a` holds no readable image"), "{e}");
        std::fs::rename(d.join("1.png"), d.join("train/a/1.png")).unwrap();
        // The model's input must be an image of 1 or 3 channels.
        std::fs::remove_file(d.join("train/a/broken.png")).unwrap();
        assert!(load_image_folder(d, &[2, 2, 2], BadImages::Fail, None).is_err());
        assert!(load_image_folder(d, &[4], BadImages::Fail, None).is_err());
    }
}
