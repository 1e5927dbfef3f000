//! Text data sets: tokenizers ([`tokenize`](mod@tokenize)), the vocabulary
//! ([`vocab`]), and loaders for four line formats — classification
//! ([`classify`]), tagging ([`tagging`]), language modelling ([`lm`]) and
//! question/answer pairs ([`pairs`]) —
//! into a [`Dataset`] whose examples are token ids stored as `f32` (exact
//! below 2^24), `[N, T]` with `T` the model input's length.
//!
//! [`load_text`] reads the training file (and an optional test file),
//! builds the vocabulary and the label names **from the training file
//! only** (the vocabulary from the tokens the examples keep: a token past
//! an example's length would never be trained) — or takes them from a [`TextInfo`] saved with the weights — and
//! returns both data sets with that [`TextInfo`], which training stores in
//! the weights' and checkpoints' metadata ([`saved`]).
//!
//! Padding: token id 0 (`<pad>`) in the examples. Classification pads at
//! the **start** by default (Keras `pad_sequences`' default `pre`): without
//! masking, a recurrent layer's last step — what a classifier reads — then
//! follows the real tokens instead of a run of padding;
//! `classification(pad: end)` pads at the end, as masked references do. Tagging and language models pad
//! at the **end**, so position `i` is the `i`-th token; every format keeps
//! the first `T` tokens of a longer line. Per-position targets (tagging,
//! language models, answers) hold [`PAD_LABEL`] (−1) where the position is padding:
//! the compiled cross-entropy, its gradient and the accuracy leave those
//! out, and [`Dataset::target_mask`] gives the mask.

pub mod classify;
pub mod lines;
pub mod lm;
pub mod pairs;
pub mod saved;
pub mod shape;
pub mod tagging;
pub mod tokenize;
pub mod vocab;

use std::path::Path;
use std::sync::Arc;

pub use netc_compiler::train::Pad;
use netc_compiler::train::{TextConfig, TextFormat, Tokenizer};

use super::dataset::{Dataset, Truncated};
use super::error::DataError;
use crate::tensor::Tensor;

pub use super::dataset::PAD_LABEL;
pub use lines::{read_lines, Line};
pub use saved::{TextInfo, TextInfoError};
pub use tokenize::tokenize;
pub use vocab::{VocabError, Vocabulary, BOS, EOS, PAD, PAD_ID, UNK, UNK_ID};

/// The training set, the test set when a test file was given, and the
/// vocabulary and names both were encoded with.
#[derive(Clone, Debug)]
pub struct TextData {
    /// From the training file.
    pub train: Dataset,
    /// From the test file.
    pub test: Option<Dataset>,
    /// The vocabulary, format and label names.
    pub info: TextInfo,
}

/// The first `length` ids, padded with `<pad>` to `length`, as `f32`.
pub(crate) fn fit(ids: &[u32], length: usize, pad: Pad) -> Vec<f32> {
    let kept = &ids[..ids.len().min(length)];
    let fill = std::iter::repeat_n(PAD_ID as f32, length - kept.len());
    let real = kept.iter().map(|&i| i as f32);
    match pad {
        Pad::Start => fill.chain(real).collect(),
        Pad::End => real.chain(fill).collect(),
    }
}

/// The first `n` tokens: those an example keeps, the only ones the
/// vocabulary counts.
fn kept(tokens: &[String], n: usize) -> &[String] {
    &tokens[..tokens.len().min(n)]
}

/// "line 3: class `x` does not occur in the training file (classes: a, b)".
pub(crate) fn unknown_name(
    (what, plural): (&str, &str),
    name: &str,
    line: u64,
    known: &[String],
) -> DataError {
    let shown: Vec<&str> = known.iter().take(12).map(String::as_str).collect();
    let more = if known.len() > 12 { ", …" } else { "" };
    DataError::line(
        line,
        format!(
            "{what} `{name}` does not occur in the training file ({plural}: {}{more})",
            shown.join(", ")
        ),
    )
}

/// A data set from the loaders' flat ids and targets.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish(
    x: Vec<f32>,
    y: Vec<f32>,
    target_shape: Vec<usize>,
    classes: usize,
    length: usize,
    path: &Path,
    lines: Vec<u64>,
    names: &[String],
) -> Result<Dataset, DataError> {
    let n = lines.len();
    let x = Tensor::new(vec![n, length], x).map_err(|e| DataError::shape(e.to_string()))?;
    let d = Dataset::with_targets(x, y, target_shape, Some(classes))
        .map_err(|e| e.at(path))?
        .located(path, Some(lines));
    Ok(if names.is_empty() {
        d
    } else {
        d.with_class_names(names.to_vec())
    })
}

/// Reads a text data set (see the module doc): `train` and optionally
/// `test`, as `cfg` says, each example `length` tokens long (and a pair's
/// answer too: [`load_text_sized`] sets its length apart). With `saved`
/// (weights trained on text), its vocabulary, tokenizer and names are used
/// and nothing is built; its format must be `cfg`'s.
pub fn load_text(
    train: &Path,
    test: Option<&Path>,
    cfg: &TextConfig,
    length: usize,
    saved: Option<&TextInfo>,
) -> Result<TextData, DataError> {
    let lengths = Lengths {
        input: length,
        target: length,
    };
    load_text_sized(train, test, cfg, lengths, saved)
}

/// Example lengths in tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lengths {
    /// Of the model's input, `T`.
    pub input: usize,
    /// Of a pair's answer (`format: pairs`): the model's output steps.
    pub target: usize,
}

/// [`load_text`] with the answer's length of `format: pairs` given apart.
pub fn load_text_sized(
    train: &Path,
    test: Option<&Path>,
    cfg: &TextConfig,
    lengths: Lengths,
    saved: Option<&TextInfo>,
) -> Result<TextData, DataError> {
    let length = lengths.input;
    if length == 0 {
        return Err(DataError::shape(
            "a text model's input length must be at least 1",
        ));
    }
    if let Some(s) = saved {
        if s.format != cfg.format {
            return Err(DataError::mismatch(format!(
                "the weights were trained on `{}` data ({:?}), but this data is read as `{}` \
                 ({:?})",
                s.format.name(),
                s.format,
                cfg.format.name(),
                cfg.format
            ))
            .at(train));
        }
    }
    let tokenizer = saved.map_or(cfg.options.tokenizer, |s| s.vocabulary.tokenizer());
    let read = |p: &Path| -> Result<Vec<Line>, DataError> {
        let l = read_lines(p)?;
        if l.is_empty() {
            return Err(DataError::invalid(
                "no examples: the file is empty or holds only blank lines",
            )
            .at(p));
        }
        Ok(l)
    };
    let train_lines = read(train)?;
    let test_lines = test.map(read).transpose()?;
    let build = |specials: &[&str], seqs: &mut dyn Iterator<Item = &[String]>| match saved {
        Some(s) => Ok(s.vocabulary.clone()),
        None => Vocabulary::build(
            tokenizer,
            specials,
            seqs,
            cfg.options.max_vocab,
            cfg.options.min_count,
            cfg.options.unknown,
        )
        .map_err(|e| DataError::invalid(e.to_string()).at(train)),
    };
    let saved_labels = saved.and_then(|s| s.labels.clone());
    let (train_set, test_set, vocabulary, labels) = match cfg.format {
        TextFormat::Classification { pad } => {
            let ex = classify::parse(&train_lines, tokenizer).map_err(|e| e.at(train))?;
            let vocab = build(&[PAD, UNK], &mut ex.iter().map(|e| kept(&e.tokens, length)))?;
            let classes = saved_labels.unwrap_or_else(|| classify::classes(&ex));
            let cut = |ex: &[classify::Example]| {
                Truncated::count(ex.iter().map(|e| e.tokens.len()), length, false)
            };
            let d = classify::dataset(&ex, &vocab, &classes, length, pad, train)?
                .with_truncated(cut(&ex));
            let t = match (test, &test_lines) {
                (Some(p), Some(l)) => {
                    let ex = classify::parse(l, tokenizer).map_err(|e| e.at(p))?;
                    Some(
                        classify::dataset(&ex, &vocab, &classes, length, pad, p)?
                            .with_truncated(cut(&ex)),
                    )
                }
                _ => None,
            };
            (d, t, vocab, Some(classes))
        }
        TextFormat::Tagging => {
            if let Tokenizer::Char { .. } = tokenizer {
                return Err(DataError::invalid(
                    "tagging reads word/TAG tokens; it needs `text: word(...)`, not `char`",
                )
                .at(train));
            }
            let s = tagging::parse(&train_lines).map_err(|e| e.at(train))?;
            let vocab = build(&[PAD, UNK], &mut s.iter().map(|s| kept(&s.words, length)))?;
            let tags = saved_labels.unwrap_or_else(|| tagging::tags(&s));
            let cut = |s: &[tagging::Sentence]| {
                Truncated::count(s.iter().map(|s| s.words.len()), length, true)
            };
            let d = tagging::dataset(&s, &vocab, &tags, length, train)?.with_truncated(cut(&s));
            let t = match (test, &test_lines) {
                (Some(p), Some(l)) => {
                    let s = tagging::parse(l).map_err(|e| e.at(p))?;
                    Some(tagging::dataset(&s, &vocab, &tags, length, p)?.with_truncated(cut(&s)))
                }
                _ => None,
            };
            (d, t, vocab, Some(tags))
        }
        TextFormat::LanguageModel { stream, bos } => {
            let toks = |l: &[Line]| -> Vec<(u64, Vec<String>)> {
                l.iter()
                    .map(|l| (l.number, tokenize(tokenizer, &l.text)))
                    .collect()
            };
            let lines = toks(&train_lines);
            // A line's sequence keeps T + 1 ids, `<bos>` among them; the
            // stream keeps (nearly) everything.
            let room = if stream {
                usize::MAX
            } else {
                length + 1 - usize::from(bos)
            };
            let vocab = build(
                &[PAD, UNK, BOS, EOS],
                &mut lines.iter().map(|(_, t)| kept(t, room)),
            )?;
            let make = |l: &[(u64, Vec<String>)], p: &Path| {
                if stream {
                    lm::stream_dataset(l, &vocab, length, p)
                } else {
                    // A line of ids <bos>? tokens <eos> makes one position
                    // fewer than it has ids; T positions fit.
                    let positions = l.iter().map(|(_, t)| t.len() + usize::from(bos));
                    Ok(lm::lines_dataset(l, &vocab, bos, length, p)?
                        .with_truncated(Truncated::count(positions, length, true)))
                }
            };
            let d = make(&lines, train)?;
            let t = match (test, &test_lines) {
                (Some(p), Some(l)) => Some(make(&toks(l), p)?),
                _ => None,
            };
            (d, t, vocab, None)
        }
        TextFormat::Pairs => {
            let target = lengths.target.max(1);
            let ps = pairs::parse(&train_lines, tokenizer).map_err(|e| e.at(train))?;
            let vocab = build(
                &[PAD, UNK],
                &mut ps.iter().flat_map(|p| pairs::kept(p, length, target)),
            )?;
            let d = pairs::dataset(&ps, &vocab, length, target, train)?;
            let t = match (test, &test_lines) {
                (Some(p), Some(l)) => {
                    let ps = pairs::parse(l, tokenizer).map_err(|e| e.at(p))?;
                    Some(pairs::dataset(&ps, &vocab, length, target, p)?)
                }
                _ => None,
            };
            (d, t, vocab, None)
        }
    };
    let info = TextInfo {
        vocabulary,
        format: cfg.format,
        labels,
    };
    let shared = Arc::new(info.clone());
    Ok(TextData {
        train: train_set.with_text(shared.clone()),
        test: test_set.map(|t| t.with_text(shared)),
        info,
    })
}
