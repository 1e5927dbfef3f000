//! Tagging files: one sentence per line, tokens separated by whitespace,
//! each written `word/TAG` (the Brown corpus layout). The tag is what
//! follows the *last* `/`, so `1/2/CD` is the word `1/2` tagged `CD`.
//! Words are taken as written (the word tokenizer's punctuation splitting
//! does not apply: the file is already tokenized) and kept so: the
//! vocabulary lower-cases them for lookup when the tokenizer lower-cases,
//! and a shape class (`unknown: shape`) sees their capitals. A token without `/`, with an empty word or an
//! empty tag is an error naming the line and the token.
//!
//! Tags are the training file's tags by descending count, ties broken by
//! first appearance — the rule `benches/reference/textdata.py` states for
//! the shipped Brown corpus (`NN` = 0, `IN` = 1, `AT` = 2, ...), so tag
//! ids and confusion matrices line up with the references. A test-file tag
//! the training file lacks is an error. Targets are one tag index per
//! position, `[T]` per example; positions past the sentence's end hold
//! [`PAD_LABEL`] (−1), which cross-entropy and accuracy leave out.

use std::collections::HashMap;
use std::path::Path;

use super::super::dataset::Dataset;
use super::super::error::DataError;
use super::lines::Line;
use super::{fit, unknown_name, Pad, Vocabulary, PAD_LABEL};

/// One parsed sentence.
#[derive(Clone, Debug, PartialEq)]
pub struct Sentence {
    /// 1-based line number.
    pub line: u64,
    /// The words.
    pub words: Vec<String>,
    /// One tag per word.
    pub tags: Vec<String>,
}

/// Parses the lines of a tagging file.
pub fn parse(lines: &[Line]) -> Result<Vec<Sentence>, DataError> {
    lines
        .iter()
        .map(|l| {
            let mut s = Sentence {
                line: l.number,
                words: Vec::new(),
                tags: Vec::new(),
            };
            for (i, tok) in l.text.split_whitespace().enumerate() {
                let bad = |what: &str| {
                    DataError::line(
                        l.number,
                        format!("token {} `{tok}` {what} (expected word/TAG)", i + 1),
                    )
                };
                let Some((word, tag)) = tok.rsplit_once('/') else {
                    return Err(bad("has no `/TAG`"));
                };
                if word.is_empty() {
                    return Err(bad("has an empty word"));
                }
                if tag.is_empty() {
                    return Err(bad("has an empty tag"));
                }
                // As written: the vocabulary lower-cases for lookup, and a
                // word's shape class needs its capital.
                s.words.push(word.to_string());
                s.tags.push(tag.to_string());
            }
            Ok(s)
        })
        .collect()
}

/// The distinct tags of `sentences` by descending count, ties by first
/// appearance.
pub fn tags(sentences: &[Sentence]) -> Vec<String> {
    // tag → (count, first appearance)
    let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
    for t in sentences.iter().flat_map(|s| &s.tags) {
        let next = counts.len();
        counts.entry(t.as_str()).or_insert((0, next)).0 += 1;
    }
    let mut ranked: Vec<(&str, (usize, usize))> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.1 .1.cmp(&b.1 .1)));
    ranked.into_iter().map(|(t, _)| t.to_string()).collect()
}

/// The sentences as a data set: `x` `[N, length]` word ids (padded at the
/// end, first `length` words kept), `y` `[N, length]` tag indices with
/// −1 at padded positions.
pub fn dataset(
    sentences: &[Sentence],
    vocab: &Vocabulary,
    tags: &[String],
    length: usize,
    path: &Path,
) -> Result<Dataset, DataError> {
    let index: HashMap<&str, usize> = tags
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut x = Vec::with_capacity(sentences.len() * length);
    let mut y = Vec::with_capacity(sentences.len() * length);
    for s in sentences {
        x.extend(fit(&vocab.ids(&s.words), length, Pad::End));
        let mut t = Vec::with_capacity(length);
        for tag in s.tags.iter().take(length) {
            let Some(&k) = index.get(tag.as_str()) else {
                return Err(unknown_name(("tag", "tags"), tag, s.line, tags).at(path));
            };
            t.push(k as f32);
        }
        t.resize(length, PAD_LABEL);
        y.extend(t);
    }
    let lines = sentences.iter().map(|s| s.line).collect();
    super::finish(x, y, vec![length], tags.len(), length, path, lines, tags)
}
