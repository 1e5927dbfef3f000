//! Data sets for training and evaluation.
//!
//! Loaders turn files into a [`Dataset`] (examples stacked along the first
//! axis, one label per example):
//!
//! - [`idx`]: MNIST / Fashion-MNIST IDX files, raw or gzip
//!   ([`load_mnist_dir`], [`load_idx_pair`], [`read_idx`]);
//! - [`ucr`]: UCR/UEA `.ts` time series, raw or gzip, of one length or
//!   padded at the start ([`load_ucr`], [`Dataset::pad_steps`]);
//! - [`csv`](mod@csv): numeric CSV with a label column ([`load_csv`]);
//! - [`npy`]: an `x.npy`, `y.npy` pair ([`load_npy_pair`]);
//! - [`text`]: text classification, tagging and language-model files,
//!   tokenized and encoded with a vocabulary built from the training file
//!   ([`load_text`], [`load_text_for_model`]);
//!
//! and [`load`] picks the right one from a single specification string.
//! Loaders return values as stored (pixels 0–255); normalization is a
//! separate, explicit step ([`Dataset::scale`], [`ZScore`], whose statistics
//! come from the training set only). [`Dataset::split`] holds out a
//! validation set, [`Dataset::shuffled_indices`] and [`Dataset::batch`]
//! feed an epoch, [`Dataset::fit_to`] reshapes examples to the model's
//! input, [`Dataset::check_targets`] checks every label against the loss
//! and the model's output, and [`one_hot`] / [`targets_for`] shape labels
//! for a loss.
//!
//! Every error is a [`DataError`] that displays as one line naming the file
//! and the problem (for a label: its row or line and value); nothing here
//! panics on bad input, and no loader lets a NaN or infinite value through.

pub mod augment;
pub mod csv;
pub mod dataset;
pub mod error;
pub mod idx;
pub mod image_cache;
pub mod images;
pub mod normalize;
pub mod npy;
pub mod pad;
pub mod shuffle;
pub mod text;
pub mod ucr;
pub mod variable;

use netc_compiler::op::Op;
use netc_compiler::shape::MAX_STEPS;
use netc_compiler::train::Loss;
use netc_compiler::Graph;
use std::path::{Path, PathBuf};

pub use self::csv::{load_csv, read_csv, CsvFile, CsvOptions, LabelColumn, LabelKind};
pub use dataset::{
    check_finite, infer_classes, one_hot, targets_for, Dataset, Origin, Truncated, PAD_LABEL,
};
pub use error::{DataError, DataErrorKind};
pub use idx::{
    decode_idx, find_mnist_files, load_idx_pair, load_mnist_dir, read_idx, read_idx_with_dtype,
    IdxDtype, Split,
};
pub use images::BadImages;
pub use normalize::ZScore;
pub use npy::load_npy_pair;
pub use shuffle::{shuffle, shuffled_indices};
pub use text::{load_text, TextData, TextInfo, Vocabulary};
pub use ucr::{load_ucr, read_ucr, UcrFile};

/// Loads a data set ([`load`]) and shapes it for `g`: series of different
/// lengths padded at the start to the input's first axis
/// ([`Dataset::pad_steps`]), examples reshaped to
/// the input's shape ([`Dataset::into_shape`]), byte-valued images scaled
/// to `[0, 1]` ([`Dataset::scale_bytes_to_unit`]; never a token input's
/// ids) and, given the loss,
/// every label checked against it and the model's output
/// ([`Dataset::check_targets`]). Prediction passes no loss: it never reads
/// the labels.
pub fn load_for_model(
    g: &Graph,
    spec: &str,
    loss: Option<Loss>,
) -> Result<(Dataset, Option<Dataset>), DataError> {
    load_for_model_with(g, spec, loss, LoadOptions::default())
}

/// Choices a user makes about how data is read (`netc` flags).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Image folders: fail on a file that does not decode, or skip it
    /// (`--skip-bad-images`).
    pub bad_images: BadImages,
    /// Image folders: where decoded pixels are kept between runs (see
    /// [`image_cache`]); `None` decodes every time (`--no-image-cache`).
    pub image_cache: Option<std::path::PathBuf>,
}

/// [`load_for_model`] with `options`.
pub fn load_for_model_with(
    g: &Graph,
    spec: &str,
    loss: Option<Loss>,
    options: LoadOptions,
) -> Result<(Dataset, Option<Dataset>), DataError> {
    let (train, test) = match image_folder(g, spec, &options) {
        Some(folder) => folder?,
        None => load(spec)?,
    };
    let no_shape = |what: &str| {
        DataError::from(DataErrorKind::Shape(format!(
            "the model {what} has no shape"
        )))
    };
    let input = g
        .node(g.inputs[0])
        .shape
        .clone()
        .ok_or_else(|| no_shape("input"))?;
    let output = g
        .node(g.outputs[0].1)
        .shape
        .clone()
        .ok_or_else(|| no_shape("output"))?;
    // Token ids are integers too, but not pixels: never scale them.
    let tokens = matches!(g.node(g.inputs[0]).op, Op::Input { tokens: true, .. });
    if netc_compiler::masking::is_variable(g) {
        let shaped = |mut d: Dataset| -> Result<Dataset, DataError> {
            let mut want = input.0.clone();
            want[0] = d.x.shape.get(1).copied().unwrap_or(1);
            let lengths = d.lengths.take();
            d = d.into_shape(&want)?;
            d.lengths = lengths;
            Ok(d)
        };
        let test = test.map(shaped).transpose()?;
        return fit_variable(g, shaped(train)?, test, tokens, loss);
    }
    let prepare = |mut d: Dataset| -> Result<Dataset, DataError> {
        // Series of different lengths: the input's first axis is time.
        if let (Some(_), Some(&steps)) = (&d.lengths, input.0.first()) {
            d = d.pad_steps(steps)?;
        }
        let mut d = d.into_shape(&input.0)?;
        if let Some(loss) = loss {
            d = d.check_targets(loss, &output.0)?;
        }
        if !tokens {
            d.scale_bytes_to_unit();
        }
        Ok(d)
    };
    let test = test.map(prepare).transpose()?;
    Ok((prepare(train)?, test))
}

/// Loads a text data set ([`load_text`]) for `g`, whose input must be a
/// sequence of `T` token ids (shape `[T]`): `train` and optionally `test`
/// encoded with `saved`'s vocabulary, or with one built from `train`; given
/// the loss, the targets are checked against it and the model's output
/// ([`Dataset::check_targets`]). A pair's answer (`format: pairs`) is as
/// long as the output has steps (`[T_out, vocab]`). Returns the
/// vocabulary and names too.
pub fn load_text_for_model(
    g: &Graph,
    train: &Path,
    test: Option<&Path>,
    cfg: &netc_compiler::train::TextConfig,
    saved: Option<&TextInfo>,
    loss: Option<Loss>,
) -> Result<(Dataset, Option<Dataset>, TextInfo), DataError> {
    let shape_of = |id, what: &str| {
        g.node(id).shape.clone().ok_or_else(|| {
            DataError::from(DataErrorKind::Shape(format!(
                "the model {what} has no shape"
            )))
        })
    };
    let input = shape_of(g.inputs[0], "input")?;
    let output = shape_of(g.outputs[0].1, "output")?;
    let variable = netc_compiler::masking::is_variable(g);
    let &[length] = input.0.as_slice() else {
        return Err(DataError::shape(format!(
            "a text data set gives each example as a sequence of token ids, so the model's \
             input must have shape [T] (T tokens); `{}` has shape {:?}",
            g.node(g.inputs[0]).name,
            input.0
        )));
    };
    // A variable-length model reads examples up to the longest step count
    // netc allows; they are cut to the longest one here afterwards.
    let follows = variable && output_follows_input(g);
    let length = if variable { MAX_STEPS } else { length };
    let lengths = text::Lengths {
        input: length,
        target: match output.0[..] {
            _ if follows => length,
            [steps, _] => steps,
            _ => length,
        },
    };
    let data = text::load_text_sized(train, test, cfg, lengths, saved)?;
    if variable {
        let (train, test) = fit_variable(g, data.train, data.test, true, loss)?;
        return Ok((train, test, data.info));
    }
    let prepare = |d: Dataset| match loss {
        Some(loss) => d.check_targets(loss, &output.0),
        None => Ok(d),
    };
    let test = data.test.map(prepare).transpose()?;
    Ok((prepare(data.train)?, test, data.info))
}

/// The image folder `spec` loaded for `g`'s input shape, when `spec` is
/// one (a directory of class folders, and no IDX or `.ts` files).
fn image_folder(
    g: &Graph,
    spec: &str,
    options: &LoadOptions,
) -> Option<Result<(Dataset, Option<Dataset>), DataError>> {
    let path = Path::new(spec);
    let other = find_mnist_files(path, Split::Train).is_some() || !ts_train_files(path).is_empty();
    if !path.is_dir() || other || !images::is_image_folder(path) {
        return None;
    }
    let shape = g.node(*g.inputs.first()?).shape.clone()?;
    Some(images::load_image_folder(
        path,
        &shape.0,
        options.bad_images,
        options.image_cache.as_deref(),
    ))
}

/// Whether the model's (first) output keeps its variable-length input's
/// time axis: per-step predictions, whose targets follow the input.
pub fn output_follows_input(g: &Graph) -> bool {
    let sources = netc_compiler::masking::sequence_sources(g);
    g.outputs
        .first()
        .is_some_and(|(_, o)| sources[o.index()].is_some())
}

/// Lays out `train` and `test` for a variable-length model
/// ([`variable`]): real steps first, both as long as the longest example of
/// either, targets checked against the model's output at that length.
fn fit_variable(
    g: &Graph,
    train: Dataset,
    test: Option<Dataset>,
    tokens: bool,
    loss: Option<Loss>,
) -> Result<(Dataset, Option<Dataset>), DataError> {
    let follows = output_follows_input(g);
    let train = train.pad_at_end(tokens)?;
    let test = test.map(|d| d.pad_at_end(tokens)).transpose()?;
    let steps = train
        .longest()
        .max(test.as_ref().map_or(0, Dataset::longest))
        .max(1);
    let gi = netc_compiler::masking::instantiate(g, steps)
        .map_err(|e| DataError::shape(e.to_string()))?;
    let output = gi
        .node(gi.outputs[0].1)
        .shape
        .clone()
        .ok_or_else(|| DataError::shape("the model output has no shape"))?;
    let prepare = |d: Dataset| -> Result<Dataset, DataError> {
        let mut d = d.with_steps(steps, follows)?;
        if let Some(loss) = loss {
            d = d.check_targets(loss, &output.0)?;
        }
        Ok(d)
    };
    let test = test.map(prepare).transpose()?;
    Ok((prepare(train)?, test))
}

/// Loads a data set from a specification, returning the training set and,
/// when the source has one, the test set:
///
/// - a directory holding MNIST-layout IDX files: `train-*` (required) and
///   `t10k-*` (optional), raw or `.gz`;
/// - a directory holding exactly one `*_TRAIN.ts` (or `*_TRAIN.ts.gz`) file
///   (as the UCR archive ships them), loaded as below;
/// - a `.ts` or `.ts.gz` file; when its name ends in `_TRAIN.ts[.gz]` and
///   the sibling `_TEST.ts[.gz]` exists, that is the test set (series of
///   different lengths in either are padded to the longer of the two);
/// - a `.csv` file (header detected, label in the last column);
/// - `x.npy,y.npy`: two `.npy` files separated by a comma.
pub fn load(spec: &str) -> Result<(Dataset, Option<Dataset>), DataError> {
    let not_found =
        |path: &Path, msg: String| DataError::from(DataErrorKind::NotFound(msg)).at(path);
    if let Some((x, y)) = spec.split_once(',') {
        let (x, y) = (Path::new(x.trim()), Path::new(y.trim()));
        for p in [x, y] {
            if !has_ext(p, "npy") {
                return Err(not_found(
                    p,
                    "a two-file data set is 'x.npy,y.npy'; this is not a .npy file".into(),
                ));
            }
        }
        return Ok((load_npy_pair(x, y)?, None));
    }
    let path = Path::new(spec);
    if path.is_dir() {
        if find_mnist_files(path, Split::Train).is_some() {
            let mut train = load_mnist_dir(path, Split::Train)?;
            let mut test = match find_mnist_files(path, Split::Test) {
                Some(_) => Some(load_mnist_dir(path, Split::Test)?),
                None => None,
            };
            if let Some(t) = &mut test {
                if t.example_shape() != train.example_shape() {
                    return Err(DataError::mismatch(format!(
                        "the t10k images have shape {:?} but the train images {:?}",
                        t.example_shape(),
                        train.example_shape()
                    ))
                    .at(path));
                }
                // One class count for both (a class may be absent from one split).
                let k = train.classes.max(t.classes);
                train.classes = k;
                t.classes = k;
            }
            return Ok((train, test));
        }
        let ts = ts_train_files(path);
        if let [one] = ts.as_slice() {
            return load_ts(one);
        }
        let msg = if ts.len() > 1 {
            format!(
                "the directory holds {} *_TRAIN.ts[.gz] files; name the one to load",
                ts.len()
            )
        } else {
            "the directory holds neither train-images-idx3-ubyte[.gz] + \
             train-labels-idx1-ubyte[.gz], a *_TRAIN.ts[.gz] file, nor a folder of \
             .png/.jpg images per class"
                .to_string()
        };
        return Err(not_found(path, msg));
    }
    if !path.exists() {
        return Err(not_found(path, "no such file or directory".into()));
    }
    if ts_suffix(path).is_some() {
        return load_ts(path);
    }
    if has_ext(path, "csv") {
        return Ok((load_csv(path, &CsvOptions::default())?, None));
    }
    if has_ext(path, "npy") {
        return Err(not_found(
            path,
            "a .npy data set needs the labels too: give 'x.npy,y.npy'".into(),
        ));
    }
    Err(not_found(
        path,
        "unknown data format; netc loads a directory of IDX files, a .ts[.gz] file, a .csv \
         file or 'x.npy,y.npy'"
            .into(),
    ))
}

fn has_ext(p: &Path, ext: &str) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// `.ts` or `.ts.gz` (any case) when `p` names a `.ts` file, else `None`.
fn ts_suffix(p: &Path) -> Option<&'static str> {
    let name = p.file_name()?.to_str()?.to_ascii_lowercase();
    [".ts", ".ts.gz"]
        .into_iter()
        .find(|s| name.len() > s.len() && name.ends_with(s))
}

/// The name before `_TRAIN.ts[.gz]` and the suffix after `_TRAIN`.
fn ts_train_stem(p: &Path) -> Option<(&str, &str)> {
    let name = p.file_name()?.to_str()?;
    let suffix = &name[name.len() - ts_suffix(p)?.len()..];
    let stem = name.strip_suffix(suffix)?.strip_suffix("_TRAIN")?;
    Some((stem, suffix))
}

fn ts_train_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && ts_train_stem(p).is_some())
        .collect();
    v.sort();
    v
}

fn load_ts(path: &Path) -> Result<(Dataset, Option<Dataset>), DataError> {
    let train = read_ucr(path)?;
    let Some((stem, suffix)) = ts_train_stem(path) else {
        return Ok((train.data, None));
    };
    let test_path = path.with_file_name(format!("{stem}_TEST{suffix}"));
    if !test_path.is_file() {
        return Ok((train.data, None));
    }
    let mut test = read_ucr(&test_path)?;
    let mut train = train;
    // Series of different lengths: both files padded to the longer one.
    if train.data.lengths.is_some() || test.data.lengths.is_some() {
        let steps = |d: &Dataset| d.x.shape.get(1).copied().unwrap_or(0);
        let longest = steps(&train.data).max(steps(&test.data));
        train.data = train.data.pad_steps(longest)?;
        test.data = test.data.pad_steps(longest)?;
    }
    if test.labels != train.labels {
        return Err(DataError::mismatch(format!(
            "its labels {} differ from {}'s {}",
            label_list(&test.labels),
            path.display(),
            label_list(&train.labels)
        ))
        .at(&test_path));
    }
    if test.data.example_shape() != train.data.example_shape() {
        return Err(DataError::mismatch(format!(
            "its series have shape {:?} but {}'s have {:?}",
            test.data.example_shape(),
            path.display(),
            train.data.example_shape()
        ))
        .at(&test_path));
    }
    Ok((train.data, Some(test.data)))
}

fn label_list(l: &Option<Vec<String>>) -> String {
    match l {
        Some(v) => format!("[{}]", v.join(" ")),
        None => "(regression targets)".into(),
    }
}
