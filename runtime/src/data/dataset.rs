//! An in-memory data set: examples stacked along the first axis of one
//! tensor and their labels (or targets), with the operations the training
//! loop needs — validation split, per-epoch shuffling, batching, one-hot
//! targets, reshaping the examples to the model's input shape, and checking
//! the labels against the loss and the output they will be compared with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use netc_compiler::train::Loss;

use crate::tensor::{element_count, Tensor};

use super::error::DataError;
use super::shuffle;
use super::text::TextInfo;

/// The largest class count [`infer_classes`] accepts (a bigger "class index"
/// is far more likely a regression target than a label).
pub const MAX_INFERRED_CLASSES: usize = 65_536;

/// Where a data set's labels came from, kept so that a label the model
/// cannot use is reported at its file and row rather than as a bare number.
#[derive(Clone, Debug, PartialEq)]
pub struct Origin {
    /// The file holding the labels.
    pub path: PathBuf,
    /// The 1-based line of each example in a text file; `None` when rows are
    /// counted from 0 (binary formats).
    pub lines: Option<Vec<u64>>,
    /// The names the file gave its classes, when its labels were names:
    /// class `i` is `class_names[i]`.
    pub class_names: Option<Vec<String>>,
    /// Examples the file held longer than the model reads (text data).
    pub truncated: Option<Truncated>,
    /// Files left out because they did not decode, with why, when the
    /// caller asked to skip them (image folders,
    /// [`BadImages::Skip`](super::images::BadImages)); the caller warns.
    pub skipped: Vec<(PathBuf, String)>,
    /// Image folders: whether the pixels came from the decode cache or were
    /// written to it (`None`: no cache in use).
    pub image_cache: Option<super::image_cache::CacheUse>,
}

/// Text examples longer than the model's input: only their first `length`
/// tokens are read. Worth a note, since a per-position score then leaves
/// the later tokens out rather than counting them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated {
    /// How many examples were cut.
    pub examples: usize,
    /// Out of how many.
    pub of: usize,
    /// Tokens dropped from them in all.
    pub tokens: usize,
    /// The model's input length.
    pub length: usize,
    /// Whether the dropped tokens had targets of their own (tagging,
    /// language models), so scores leave them out.
    pub scored: bool,
}

impl Truncated {
    /// Counts the examples of `lens` tokens each that exceed `length`;
    /// `None` when none does.
    pub fn count(lens: impl Iterator<Item = usize>, length: usize, scored: bool) -> Option<Self> {
        let mut t = Truncated {
            examples: 0,
            of: 0,
            tokens: 0,
            length,
            scored,
        };
        for n in lens {
            t.of += 1;
            if n > length {
                t.examples += 1;
                t.tokens += n - length;
            }
        }
        (t.examples > 0).then_some(t)
    }
}

impl std::fmt::Display for Truncated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} examples are longer than the model's {} tokens; their {} later tokens are \
             not read",
            self.examples, self.of, self.length, self.tokens
        )?;
        if self.scored {
            f.write_str(" and not scored")?;
        }
        Ok(())
    }
}

/// The label of a padding position in per-token class targets (`[T]`
/// labels for a `[T, C]` output): the compiled cross-entropy, its gradient
/// and the accuracy all skip it, and an example's loss is the mean over its
/// other positions.
pub const PAD_LABEL: f32 = -1.0;

/// Examples and their labels.
///
/// `x` has shape `[N, ...features]`: example `i` is the `i`-th block of
/// [`example_len`](Dataset::example_len) values. `y` holds
/// [`target_len`](Dataset::target_len) values per example, laid out as
/// `[N, ...target_shape]`: usually one (the class index as `f32`, or a
/// regression target), several for one-hot rows, multi-label or multi-output
/// regression targets. What the values mean is decided by the loss, in
/// [`Dataset::check_targets`]; `classes` is the number of classes when the
/// loader saw class indices (`0..classes`) and is only a hint until then.
///
/// Two data sets are equal when their contents (true lengths included)
/// are; where they came from (`origin`) and their text encoding (`text`)
/// are not compared.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Examples, `[N, ...features]`.
    pub x: Tensor,
    /// Labels or targets, `[N, ...target_shape]` flattened.
    pub y: Vec<f32>,
    /// Number of classes when `y` holds class indices.
    pub classes: Option<usize>,
    /// The shape of one example's target; `[]` for one value per example.
    pub target_shape: Vec<usize>,
    /// The file the labels came from, for messages.
    pub origin: Option<Origin>,
    /// For text data: the vocabulary, format and label names the examples
    /// were encoded with (training stores them with the weights).
    pub text: Option<Arc<TextInfo>>,
    /// For sequences of different lengths stored padded to one length (a
    /// `.ts` file with `@equalLength false`): each example's true number of
    /// time steps. The steps are `x`'s axis 1 and the padding zeros come
    /// first, so example `i`'s real steps are its last `lengths[i]`; a mask
    /// of the padding follows from this alone. `None` when every example
    /// is as long as stored. See [`Dataset::pad_steps`]. For a
    /// variable-length model ([`Dataset::pad_at_end`]) the real steps come
    /// first instead, and `padded_at_end` is set.
    pub lengths: Option<Vec<usize>>,
    /// Whether padding follows the real steps (a variable-length model's
    /// layout, whose masks [`Dataset::masks`] gives) rather than preceding
    /// them.
    pub padded_at_end: bool,
}

impl PartialEq for Dataset {
    fn eq(&self, other: &Dataset) -> bool {
        self.x == other.x
            && self.y == other.y
            && self.classes == other.classes
            && self.target_shape == other.target_shape
            && self.lengths == other.lengths
    }
}

impl Dataset {
    /// A data set from stacked examples and one label per example; checks
    /// that `x` has one example per label, that every value is finite and,
    /// when `classes` is given, that every label is a class index in
    /// `0..classes`.
    pub fn new(x: Tensor, y: Vec<f32>, classes: Option<usize>) -> Result<Dataset, DataError> {
        Dataset::with_targets(x, y, Vec::new(), classes)
    }

    /// A data set whose targets have shape `target_shape` per example (`y`
    /// holds `N × target_len` values); checks as [`Dataset::new`] does.
    pub fn with_targets(
        x: Tensor,
        y: Vec<f32>,
        target_shape: Vec<usize>,
        classes: Option<usize>,
    ) -> Result<Dataset, DataError> {
        let d = Dataset {
            x,
            y,
            classes,
            target_shape,
            origin: None,
            text: None,
            lengths: None,
            padded_at_end: false,
        };
        d.validate()?;
        // Only here, not in `validate` (which every batch runs): one pass
        // over the examples when they enter is enough.
        check_finite(&d.x)?;
        Ok(d)
    }

    /// The same data set, remembering that its labels come from `path` (and,
    /// for a text file, that example `i` is on line `lines[i]`).
    pub fn located(mut self, path: &Path, lines: Option<Vec<u64>>) -> Dataset {
        let lines = lines.filter(|l| l.len() == self.len());
        self.origin = Some(Origin {
            path: path.to_path_buf(),
            lines,
            class_names: None,
            truncated: None,
            skipped: Vec::new(),
            image_cache: None,
        });
        self
    }

    /// The same data set, remembering the names of its classes (class `i`
    /// is `names[i]`) so that messages show a label as the file wrote it.
    /// Needs [`Dataset::located`] first.
    pub fn with_class_names(mut self, names: Vec<String>) -> Dataset {
        if let Some(o) = &mut self.origin {
            o.class_names = Some(names);
        }
        self
    }

    /// The same data set, remembering which examples were cut to the
    /// model's length (see [`Truncated`]). Needs [`Dataset::located`] first.
    pub fn with_truncated(mut self, truncated: Option<Truncated>) -> Dataset {
        if let Some(o) = &mut self.origin {
            o.truncated = truncated;
        }
        self
    }

    /// "FILE: N of M examples are longer than ..." when examples were cut.
    pub fn truncation_note(&self) -> Option<String> {
        let o = self.origin.as_ref()?;
        Some(format!("{}: {}", o.path.display(), o.truncated?))
    }

    /// The same data set, remembering the text encoding of its examples.
    pub fn with_text(mut self, text: Arc<TextInfo>) -> Dataset {
        self.text = Some(text);
        self
    }

    /// Whether each target counts: `false` where a per-token target is
    /// [`PAD_LABEL`] (a padded position), `true` elsewhere; same layout
    /// as `y`.
    pub fn target_mask(&self) -> Vec<bool> {
        self.y.iter().map(|&t| t != PAD_LABEL).collect()
    }

    /// Checks the invariants [`Dataset::new`] establishes (the fields are
    /// public, so a caller that edits them can check again).
    pub fn validate(&self) -> Result<(), DataError> {
        let Some(&n) = self.x.shape.first() else {
            return Err(DataError::shape(
                "the examples tensor is a scalar; it needs a leading example axis [N, ...]",
            ));
        };
        match element_count(&self.x.shape) {
            Some(c) if c == self.x.data.len() => {}
            _ => {
                return Err(DataError::shape(format!(
                    "the examples tensor has shape {:?} but {} values",
                    self.x.shape,
                    self.x.data.len()
                )))
            }
        }
        let w = self.target_len();
        if w == 0 || n.checked_mul(w) != Some(self.y.len()) {
            let per = if self.target_shape.is_empty() {
                String::new()
            } else {
                format!(" of shape {:?}", self.target_shape)
            };
            return Err(DataError::mismatch(format!(
                "{n} examples but {} labels{per}",
                self.y.len() / w.max(1)
            )));
        }
        if let Some((i, l)) = self.y.iter().enumerate().find(|(_, l)| !l.is_finite()) {
            return Err(self.at_row(i / w, format!("label {l} is not a finite number")));
        }
        if let Some(k) = self.classes {
            if k == 0 {
                return Err(DataError::invalid(
                    "a classification data set needs at least one class",
                ));
            }
            if w == 1 {
                if let Some((i, &l)) = self.y.iter().enumerate().find(|(_, &l)| !is_class(l, k)) {
                    return Err(self.at_row(i, format!("label {l} is not a class index in 0..{k}")));
                }
            }
        }
        if let Some(lengths) = &self.lengths {
            let steps = self.x.shape.get(1).copied().unwrap_or(0);
            if lengths.len() != n {
                return Err(DataError::mismatch(format!(
                    "{n} examples but {} sequence lengths",
                    lengths.len()
                )));
            }
            if let Some((i, l)) = lengths.iter().enumerate().find(|(_, &l)| l > steps) {
                return Err(self.at_row(
                    i,
                    format!("the sequence length {l} exceeds the {steps} steps stored"),
                ));
            }
        }
        Ok(())
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        self.x.shape.first().copied().unwrap_or(0)
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape of one example (`x`'s shape without the leading axis).
    pub fn example_shape(&self) -> &[usize] {
        self.x.shape.get(1..).unwrap_or(&[])
    }

    /// The number of values in one example.
    pub fn example_len(&self) -> usize {
        element_count(self.example_shape()).unwrap_or(0)
    }

    /// The number of target values per example (1 for a class index).
    pub fn target_len(&self) -> usize {
        element_count(&self.target_shape).unwrap_or(0)
    }

    /// How many examples each class has (`None` for regression data).
    pub fn class_counts(&self) -> Option<Vec<usize>> {
        let k = self.classes?;
        if self.target_len() != 1 {
            return None;
        }
        let mut counts = vec![0usize; k];
        for &l in &self.y {
            if is_class(l, k) {
                counts[l as usize] += 1;
            }
        }
        Some(counts)
    }

    /// The examples at `indices`, in that order (repeats allowed).
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset, DataError> {
        let (x, y) = self.gather(indices)?;
        let origin = self.origin.as_ref().map(|o| Origin {
            path: o.path.clone(),
            lines: o
                .lines
                .as_ref()
                .map(|l| indices.iter().map(|&i| l[i]).collect()),
            class_names: o.class_names.clone(),
            // The counts are the whole file's, not a subset's.
            truncated: None,
            skipped: Vec::new(),
            image_cache: o.image_cache.clone(),
        });
        Ok(Dataset {
            x,
            y,
            classes: self.classes,
            target_shape: self.target_shape.clone(),
            origin,
            text: self.text.clone(),
            lengths: self
                .lengths
                .as_ref()
                .map(|l| indices.iter().map(|&i| l[i]).collect()),
            padded_at_end: self.padded_at_end,
        })
    }

    /// Splits off a validation set: `round(len × val_fraction)` examples
    /// chosen by a permutation seeded with `seed` go to the second data set,
    /// the rest to the first; both keep the original order of their
    /// examples. The same seed always gives the same split. `val_fraction`
    /// must lie in `[0, 1)` and leave at least one training example.
    pub fn split(&self, val_fraction: f64, seed: u64) -> Result<(Dataset, Dataset), DataError> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(DataError::invalid(format!(
                "validation fraction {val_fraction} is not in [0, 1)"
            )));
        }
        let n = self.len();
        let n_val = ((n as f64) * val_fraction).round() as usize;
        if n_val >= n && n > 0 {
            return Err(DataError::invalid(format!(
                "a validation fraction of {val_fraction} leaves no training examples out of {n}"
            )));
        }
        let perm = shuffle::shuffled_indices(n, seed);
        let mut val = perm[..n_val].to_vec();
        let mut train = perm[n_val..].to_vec();
        val.sort_unstable();
        train.sort_unstable();
        Ok((self.subset(&train)?, self.subset(&val)?))
    }

    /// A permutation of `0..len` for one epoch, determined by `epoch_seed`
    /// (e.g. `seed + epoch`); iterate it in chunks and pass each chunk to
    /// [`Dataset::batch`].
    pub fn shuffled_indices(&self, epoch_seed: u64) -> Vec<usize> {
        shuffle::shuffled_indices(self.len(), epoch_seed)
    }

    /// Gathers the examples at `indices` into a batch: `x` of shape
    /// `[B, ...example_shape]` and the labels as `y` of shape
    /// `[B, ...target_shape]`. Use [`one_hot`] or [`targets_for`] to shape
    /// class indices for a loss.
    pub fn batch(&self, indices: &[usize]) -> Result<(Tensor, Tensor), DataError> {
        let (x, y) = self.gather(indices)?;
        let mut shape = Vec::with_capacity(self.target_shape.len() + 1);
        shape.push(indices.len());
        shape.extend_from_slice(&self.target_shape);
        Ok((x, Tensor { shape, data: y }))
    }

    fn gather(&self, indices: &[usize]) -> Result<(Tensor, Vec<f32>), DataError> {
        self.validate()?;
        let n = self.len();
        let e = self.example_len();
        let w = self.target_len();
        let mut xs = Vec::with_capacity(indices.len().saturating_mul(e));
        let mut ys = Vec::with_capacity(indices.len().saturating_mul(w));
        for &i in indices {
            if i >= n {
                return Err(DataError::invalid(format!(
                    "example index {i} is out of range for a data set of {n} examples"
                )));
            }
            xs.extend_from_slice(&self.x.data[i * e..(i + 1) * e]);
            ys.extend_from_slice(&self.y[i * w..(i + 1) * w]);
        }
        let mut shape = self.x.shape.clone();
        shape[0] = indices.len();
        Ok((Tensor { shape, data: xs }, ys))
    }

    /// The same data with each example reshaped to `input_shape` (the
    /// model's per-example input shape, batch excluded), e.g. IDX images
    /// `[N, 28, 28]` to `[N, 28, 28, 1]` or UCR series `[N, 24]` to
    /// `[N, 24, 1]`. Any shape with the same number of values per example
    /// is accepted (row-major order is kept); otherwise the error names both
    /// shapes.
    pub fn fit_to(&self, input_shape: &[usize]) -> Result<Dataset, DataError> {
        self.clone().into_shape(input_shape)
    }

    /// [`Dataset::fit_to`] without copying the examples.
    pub fn into_shape(mut self, input_shape: &[usize]) -> Result<Dataset, DataError> {
        self.validate()?;
        let have = self.example_shape();
        let have_len = self.example_len();
        let want_len = element_count(input_shape);
        if want_len != Some(have_len) {
            let want = match want_len {
                Some(w) => format!("{w} values"),
                None => "too many values".to_string(),
            };
            return Err(DataError::shape(format!(
                "the data's examples have shape {have:?} ({have_len} values) but the model's \
                 input has shape {input_shape:?} ({want}); the two must hold the same number of \
                 values per example"
            )));
        }
        let mut shape = Vec::with_capacity(input_shape.len() + 1);
        shape.push(self.len());
        shape.extend_from_slice(input_shape);
        // True lengths count steps along axis 1; a reshape that moves that
        // axis leaves them describing nothing.
        if self.x.shape.get(1) != shape.get(1) {
            self.lengths = None;
        }
        self.x.shape = shape;
        Ok(self)
    }

    /// Checks the targets against the loss and the model's per-example
    /// output shape, and brings them to the form the training step takes.
    /// The loss decides what the numbers mean, never the numbers themselves:
    ///
    /// - `cross_entropy`: one class index per example in `0..k` (`k` the
    ///   output's size), or one-hot rows of `k` values, converted to
    ///   indices;
    /// - `binary_cross_entropy`: targets in `[0, 1]`, as many per example
    ///   as the output has values;
    /// - `mse`: finite targets, as many per example as the output has
    ///   values.
    ///
    /// The first label that does not fit is named with its file and row.
    pub fn check_targets(
        mut self,
        loss: Loss,
        output_shape: &[usize],
    ) -> Result<Dataset, DataError> {
        self.validate()?;
        let k = element_count(output_shape)
            .filter(|&k| k > 0)
            .ok_or_else(|| {
                DataError::shape(format!(
                    "the model's output shape {output_shape:?} holds no values"
                ))
            })?;
        let w = self.target_len();
        let per_example = |w: usize| match w {
            1 => "one label per example".to_string(),
            _ => format!("{w} target values per example"),
        };
        match loss {
            Loss::CrossEntropy => {
                // Classes lie along the output's last axis; an output
                // [T, c] takes one class index per row, T per example.
                let c = output_shape.last().copied().unwrap_or(1);
                let rows = k / c;
                let (indices, of) = if rows == 1 {
                    ("one class index".to_string(), String::new())
                } else {
                    (
                        format!("{rows} class indices"),
                        format!(" (shape {:?})", &output_shape[..output_shape.len() - 1]),
                    )
                };
                if w == k && c > 1 {
                    self.y = self.one_hot_to_indices(c, rows)?;
                    self.target_shape = if rows == 1 {
                        Vec::new()
                    } else {
                        output_shape[..output_shape.len() - 1].to_vec()
                    };
                } else if w != rows {
                    return Err(self.at_file(format!(
                        "cross_entropy takes {indices}{of} per example or one-hot rows of {c} \
                         values (the model's output {output_shape:?}); the data has {}",
                        per_example(w)
                    )));
                }
                // Per-token targets mark padding, which no loss or metric
                // counts.
                let ok = |l: f32| is_class(l, c) || (rows > 1 && l == PAD_LABEL);
                if let Some((i, &l)) = self.y.iter().enumerate().find(|(_, &l)| !ok(l)) {
                    let fix = if (l as f64) >= c as f64 && l.fract() == 0.0 {
                        format!("; the data has more classes than the model's {c} outputs")
                    } else {
                        String::new()
                    };
                    return Err(self.at_row(
                        i / rows,
                        format!(
                            "label {} is not a class index of the model: its output \
                             {output_shape:?} has {c} classes (0 to {}){fix}",
                            self.show_label(l),
                            c - 1
                        ),
                    ));
                }
                self.classes = Some(c);
            }
            Loss::BinaryCrossEntropy => {
                if w != k {
                    return Err(self.at_file(format!(
                        "binary_cross_entropy compares each of the model's {k} output values \
                         (shape {output_shape:?}) with a target in [0, 1]; the data has {}",
                        per_example(w)
                    )));
                }
                if let Some((i, &t)) = self
                    .y
                    .iter()
                    .enumerate()
                    .find(|(_, &t)| !(0.0..=1.0).contains(&t))
                {
                    let fix = if self.classes.is_some_and(|c| c > 2) {
                        " (k class labels need a k-way softmax output and cross_entropy)"
                    } else {
                        ""
                    };
                    return Err(self.at_row(
                        i / w,
                        format!(
                            "target {} is outside [0, 1], which binary_cross_entropy needs{fix}",
                            self.show_label(t)
                        ),
                    ));
                }
                self.classes = (k == 1).then_some(2);
            }
            Loss::Mse => {
                if w != k {
                    return Err(self.at_file(format!(
                        "mse compares the model's output (shape {output_shape:?}, {k} values) \
                         with targets of the same size; the data has {}",
                        per_example(w)
                    )));
                }
                // Names numbered in sorted order are no regression targets.
                if let Some(names) = self.origin.as_ref().and_then(|o| o.class_names.as_ref()) {
                    let shown: Vec<String> =
                        names.iter().take(4).map(|n| format!("'{n}'")).collect();
                    return Err(self.at_file(format!(
                        "mse needs numeric targets, but the labels are class names ({}{})",
                        shown.join(", "),
                        if names.len() > 4 { ", …" } else { "" }
                    )));
                }
                self.classes = None;
            }
        }
        Ok(self)
    }

    /// Class indices from one-hot rows of `k` values, `rows` rows per example.
    fn one_hot_to_indices(&self, k: usize, rows: usize) -> Result<Vec<f32>, DataError> {
        self.y
            .chunks_exact(k)
            .enumerate()
            .map(|(i, row)| {
                let ones = row.iter().filter(|&&v| v == 1.0).count();
                let zeros = row.iter().filter(|&&v| v == 0.0).count();
                match row.iter().position(|&v| v == 1.0) {
                    Some(j) if ones == 1 && zeros == k - 1 => Ok(j as f32),
                    _ => Err(self.at_row(
                        i / rows,
                        format!(
                            "{} is not a one-hot row; cross_entropy takes a class index or a row \
                             of {k} values with one 1 and zeros elsewhere",
                            show_row(row)
                        ),
                    )),
                }
            })
            .collect()
    }

    /// Label `l` as the file wrote it: `'dog' (class 2)` when the file named
    /// its classes, else the number.
    fn show_label(&self, l: f32) -> String {
        let names = self.origin.as_ref().and_then(|o| o.class_names.as_ref());
        match names.and_then(|n| n.get(l as usize)) {
            Some(name) if l >= 0.0 && l.fract() == 0.0 => format!("'{name}' (class {l})"),
            _ => l.to_string(),
        }
    }

    /// An error about example `i`, naming the file and the row.
    pub(super) fn at_row(&self, i: usize, msg: String) -> DataError {
        match &self.origin {
            Some(o) => {
                let row = match o.lines.as_ref().and_then(|l| l.get(i)) {
                    Some(line) => format!("line {line}"),
                    None => format!("row {i} (counting from 0)"),
                };
                DataError::invalid(format!("{row}: {msg}")).at(&o.path)
            }
            None => DataError::invalid(format!("example {i} (counting from 0): {msg}")),
        }
    }

    /// An error about the labels as a whole, naming their file.
    fn at_file(&self, msg: String) -> DataError {
        let e = DataError::shape(msg);
        match &self.origin {
            Some(o) => e.at(&o.path),
            None => e,
        }
    }
}

/// Rejects a NaN or infinite value in examples `x` `[N, ...]`, naming the
/// example (counting from 0) and the position within it: such a value would
/// train or evaluate into numbers that look fine and mean nothing.
pub fn check_finite(x: &Tensor) -> Result<(), DataError> {
    let Some(i) = x.data.iter().position(|v| !v.is_finite()) else {
        return Ok(());
    };
    let per = x.shape.get(1..).unwrap_or(&[]);
    let e = element_count(per).unwrap_or(1).max(1);
    Err(DataError::invalid(format!(
        "example {} (counting from 0) holds {} at {}; netc needs finite numbers",
        i / e,
        x.data[i],
        index_in(per, i % e)
    )))
}

/// `[a, b, c]` for a flat index into a tensor of `shape`.
fn index_in(shape: &[usize], mut flat: usize) -> String {
    let mut idx = vec![0; shape.len()];
    for (slot, &d) in idx.iter_mut().zip(shape).rev() {
        if d > 0 {
            *slot = flat % d;
            flat /= d;
        }
    }
    format!("{idx:?}")
}

fn show_row(row: &[f32]) -> String {
    let head: Vec<String> = row.iter().take(8).map(|v| v.to_string()).collect();
    let more = if row.len() > 8 { ", …" } else { "" };
    format!("[{}{more}]", head.join(", "))
}

fn is_class(l: f32, k: usize) -> bool {
    l.is_finite() && l >= 0.0 && l.fract() == 0.0 && (l as f64) < k as f64
}

/// One-hot rows for class indices: shape `[y.len(), classes]`, row `i`
/// holding 1 at column `y[i]`. Every label must be a class index in
/// `0..classes`.
pub fn one_hot(y: &[f32], classes: usize) -> Result<Tensor, DataError> {
    if classes == 0 {
        return Err(DataError::invalid(
            "one-hot encoding needs at least one class",
        ));
    }
    let len = y
        .len()
        .checked_mul(classes)
        .ok_or_else(|| DataError::invalid("the one-hot matrix is too large"))?;
    let mut data = vec![0.0f32; len];
    for (i, &l) in y.iter().enumerate() {
        if !is_class(l, classes) {
            return Err(DataError::invalid(format!(
                "label {l} of example {i} is not a class index in 0..{classes}"
            )));
        }
        data[i * classes + l as usize] = 1.0;
    }
    Ok(Tensor {
        shape: vec![y.len(), classes],
        data,
    })
}

/// Labels shaped for a model whose per-example output shape is
/// `output_shape`: one value per example (sigmoid + binary cross-entropy,
/// or a regression output) gives `[B, ...output_shape]` holding the labels
/// as they are; `k > 1` outputs with `classes == Some(k)` give one-hot rows
/// `[B, ...output_shape]`. Anything else is an error naming both sides.
pub fn targets_for(
    y: &[f32],
    classes: Option<usize>,
    output_shape: &[usize],
) -> Result<Tensor, DataError> {
    let k = element_count(output_shape)
        .ok_or_else(|| DataError::shape(format!("output shape {output_shape:?} is too large")))?;
    let mut shape = Vec::with_capacity(output_shape.len() + 1);
    shape.push(y.len());
    shape.extend_from_slice(output_shape);
    if k == 1 {
        if let Some(c) = classes {
            if c > 2 {
                return Err(DataError::shape(format!(
                    "the model outputs one value per example (shape {output_shape:?}) but the \
                     data has {c} classes; use a {c}-way output with softmax"
                )));
            }
        }
        return Ok(Tensor {
            shape,
            data: y.to_vec(),
        });
    }
    match classes {
        Some(c) if c == k => {
            let t = one_hot(y, c)?;
            Ok(Tensor {
                shape,
                data: t.data,
            })
        }
        Some(c) => Err(DataError::shape(format!(
            "the model outputs {k} values per example (shape {output_shape:?}) but the data \
             has {c} classes"
        ))),
        None => Err(DataError::shape(format!(
            "the model outputs {k} values per example (shape {output_shape:?}) but the data \
             has one target value per example"
        ))),
    }
}

/// `Some(max + 1)` when every label is a non-negative integer below
/// [`MAX_INFERRED_CLASSES`] (class indices), `None` otherwise (regression
/// targets, or no labels).
pub fn infer_classes(y: &[f32]) -> Option<usize> {
    let mut max = None::<f32>;
    for &l in y {
        if !is_class(l, MAX_INFERRED_CLASSES) {
            return None;
        }
        max = Some(max.map_or(l, |m: f32| m.max(l)));
    }
    max.map(|m| m as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        let x = Tensor::new(vec![n, 2], (0..2 * n).map(|v| v as f32).collect()).unwrap();
        let y = (0..n).map(|i| (i % 3) as f32).collect();
        Dataset::new(x, y, Some(3)).unwrap()
    }

    #[test]
    fn batch_gathers_rows() {
        let d = toy(5);
        let (x, y) = d.batch(&[4, 0, 4]).unwrap();
        assert_eq!(x.shape, vec![3, 2]);
        assert_eq!(x.data, vec![8.0, 9.0, 0.0, 1.0, 8.0, 9.0]);
        assert_eq!(y.shape, vec![3]);
        assert_eq!(y.data, vec![1.0, 0.0, 1.0]);
        assert!(d.batch(&[5]).is_err());
        let (x, y) = d.batch(&[]).unwrap();
        assert_eq!((x.shape, y.shape), (vec![0, 2], vec![0]));
    }

    #[test]
    fn split_partitions() {
        let d = toy(10);
        let (t, v) = d.split(0.3, 1).unwrap();
        assert_eq!((t.len(), v.len()), (7, 3));
        let mut all: Vec<f32> = t.x.data.iter().chain(&v.x.data).copied().collect();
        all.sort_by(f32::total_cmp);
        assert_eq!(all, d.x.data);
        assert!(d.split(1.0, 1).is_err());
        assert!(d.split(-0.1, 1).is_err());
        assert!(d.split(f64::NAN, 1).is_err());
        assert!(d.split(0.96, 1).is_err());
        let (t, v) = d.split(0.0, 1).unwrap();
        assert_eq!((t.len(), v.len()), (10, 0));
    }

    #[test]
    fn new_checks_labels() {
        let x = Tensor::new(vec![2, 1], vec![0.0, 1.0]).unwrap();
        assert!(Dataset::new(x.clone(), vec![0.0], None).is_err());
        assert!(Dataset::new(x.clone(), vec![0.0, 2.0], Some(2)).is_err());
        assert!(Dataset::new(x.clone(), vec![0.0, 0.5], Some(2)).is_err());
        assert!(Dataset::new(x, vec![0.5, -3.0], None).is_ok());
        assert!(Dataset::new(Tensor::scalar(1.0), vec![], None).is_err());
    }

    #[test]
    fn targets() {
        let y = [1.0, 0.0];
        let t = targets_for(&y, Some(2), &[1]).unwrap();
        assert_eq!((t.shape, t.data), (vec![2, 1], vec![1.0, 0.0]));
        let t = targets_for(&y, Some(2), &[2]).unwrap();
        assert_eq!((t.shape, t.data), (vec![2, 2], vec![0.0, 1.0, 1.0, 0.0]));
        assert!(targets_for(&y, Some(3), &[2]).is_err());
        assert!(targets_for(&y, None, &[2]).is_err());
        assert!(targets_for(&[0.0, 5.0], Some(10), &[1]).is_err());
    }

    fn labelled(y: Vec<f32>, target_shape: Vec<usize>) -> Dataset {
        let n = 3;
        let x = Tensor::new(vec![n, 1], vec![0.0, 1.0, 2.0]).unwrap();
        Dataset::with_targets(x, y, target_shape, None)
            .unwrap()
            .located(Path::new("f.csv"), Some(vec![2, 3, 5]))
    }

    fn err(d: Dataset, loss: Loss, out: &[usize]) -> String {
        d.check_targets(loss, out).unwrap_err().to_string()
    }

    #[test]
    fn cross_entropy_takes_indices_or_one_hot_rows() {
        let d = labelled(vec![0.0, 2.0, 1.0], vec![]);
        let c = d.clone().check_targets(Loss::CrossEntropy, &[3]).unwrap();
        assert_eq!((c.y, c.classes), (vec![0.0, 2.0, 1.0], Some(3)));
        let e = err(d.clone(), Loss::CrossEntropy, &[2]);
        assert!(
            e.starts_with("f.csv: line 3: label 2 is not a class index"),
            "{e}"
        );
        assert!(e.contains("2 classes (0 to 1)"), "{e}");
        let e = err(
            labelled(vec![0.0, -1.0, 1.0], vec![]),
            Loss::CrossEntropy,
            &[3],
        );
        assert!(e.starts_with("f.csv: line 3: label -1 "), "{e}");

        let hot = vec![0., 1., 1., 0., 0., 1.];
        let c = labelled(hot, vec![2])
            .check_targets(Loss::CrossEntropy, &[2])
            .unwrap();
        assert_eq!((c.target_len(), c.y), (1, vec![1.0, 0.0, 1.0]));
        let e = err(
            labelled(vec![0., 1., 0.5, 0.5, 0., 1.], vec![2]),
            Loss::CrossEntropy,
            &[2],
        );
        assert!(e.contains("line 3: [0.5, 0.5] is not a one-hot row"), "{e}");
        let e = err(labelled(vec![0.0; 9], vec![3]), Loss::CrossEntropy, &[2]);
        assert!(e.contains("3 target values per example"), "{e}");

        // A sequence output [2, 3]: two class indices per example.
        let seq = labelled(vec![0., 1., 2., 2., 1., 3.], vec![2]);
        let e = err(seq, Loss::CrossEntropy, &[2, 3]);
        assert!(e.starts_with("f.csv: line 5: label 3 "), "{e}");
    }

    #[test]
    fn binary_cross_entropy_and_mse_take_targets_of_the_outputs_size() {
        let d = labelled(vec![0.0, 1.0, 0.25], vec![]);
        let b = d
            .clone()
            .check_targets(Loss::BinaryCrossEntropy, &[1])
            .unwrap();
        assert_eq!(b.y, vec![0.0, 1.0, 0.25]);
        let e = err(
            labelled(vec![0.0, 1.0, 9.0], vec![]),
            Loss::BinaryCrossEntropy,
            &[1],
        );
        assert!(
            e.starts_with("f.csv: line 5: target 9 is outside [0, 1]"),
            "{e}"
        );
        let e = err(d.clone(), Loss::BinaryCrossEntropy, &[3]);
        assert!(
            e.contains("3 output values") && e.contains("one label per example"),
            "{e}"
        );

        let rows = vec![1., 0., 0., 1., 0.5, -2.];
        let m = labelled(rows.clone(), vec![2])
            .check_targets(Loss::Mse, &[2])
            .unwrap();
        assert_eq!((m.target_len(), m.y, m.classes), (2, rows, None));
        let e = err(d.clone(), Loss::Mse, &[2]);
        assert!(e.starts_with("f.csv: mse compares"), "{e}");
        let named = d.with_class_names(vec!["a".into(), "b".into()]);
        let e = err(named, Loss::Mse, &[1]);
        assert!(
            e.contains("mse needs numeric targets") && e.contains("('a', 'b')"),
            "{e}"
        );
    }

    #[test]
    fn non_finite_examples_are_refused() {
        let x = Tensor::new(vec![2, 2], vec![0.0, 1.0, 2.0, f32::NAN]).unwrap();
        let e = Dataset::new(x, vec![0.0, 1.0], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("example 1") && e.contains("NaN at [1]"), "{e}");
    }

    #[test]
    fn inferred_classes() {
        assert_eq!(infer_classes(&[0.0, 2.0, 1.0]), Some(3));
        assert_eq!(infer_classes(&[0.0, 0.5]), None);
        assert_eq!(infer_classes(&[-1.0]), None);
        assert_eq!(infer_classes(&[1e9]), None);
        assert_eq!(infer_classes(&[]), None);
    }
}
