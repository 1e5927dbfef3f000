//! Text classification files: one example per line, `label<TAB>text`.
//!
//! The label is everything before the first TAB (trimmed), the text
//! everything after it. Classes are the training file's labels sorted
//! (byte order), so class `i` is the `i`-th name and the numbering does
//! not depend on line order; a test-file label the training file lacks is
//! an error. A line without a TAB, with an empty label or without any
//! token after the TAB is an error naming the line.

use std::path::Path;

use netc_compiler::train::Tokenizer;

use super::super::dataset::Dataset;
use super::super::error::DataError;
use super::lines::Line;
use super::tokenize::tokenize;
use super::{fit, unknown_name, Pad, Vocabulary};

/// One parsed line.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// 1-based line number.
    pub line: u64,
    /// The class name.
    pub label: String,
    /// The text's tokens.
    pub tokens: Vec<String>,
}

/// Parses the lines of a classification file.
pub fn parse(lines: &[Line], tokenizer: Tokenizer) -> Result<Vec<Example>, DataError> {
    lines
        .iter()
        .map(|l| {
            let Some((label, text)) = l.text.split_once('\t') else {
                return Err(DataError::line(
                    l.number,
                    "no TAB between the label and the text (expected `label<TAB>text`)",
                ));
            };
            let label = label.trim();
            if label.is_empty() {
                return Err(DataError::line(l.number, "empty label before the TAB"));
            }
            let tokens = tokenize(tokenizer, text);
            if tokens.is_empty() {
                return Err(DataError::line(
                    l.number,
                    format!("no text after the label `{label}`"),
                ));
            }
            Ok(Example {
                line: l.number,
                label: label.to_string(),
                tokens,
            })
        })
        .collect()
}

/// The sorted, distinct labels of `examples`.
pub fn classes(examples: &[Example]) -> Vec<String> {
    let mut c: Vec<String> = examples.iter().map(|e| e.label.clone()).collect();
    c.sort();
    c.dedup();
    c
}

/// The examples as a data set: `x` `[N, length]` token ids (padded at the
/// `pad` end, first `length` tokens kept), `y` one class index per example.
pub fn dataset(
    examples: &[Example],
    vocab: &Vocabulary,
    classes: &[String],
    length: usize,
    pad: Pad,
    path: &Path,
) -> Result<Dataset, DataError> {
    let mut x = Vec::with_capacity(examples.len() * length);
    let mut y = Vec::with_capacity(examples.len());
    for e in examples {
        let Ok(c) = classes.binary_search(&e.label) else {
            return Err(unknown_name(("class", "classes"), &e.label, e.line, classes).at(path));
        };
        y.push(c as f32);
        x.extend(fit(&vocab.ids(&e.tokens), length, pad));
    }
    let lines = examples.iter().map(|e| e.line).collect();
    super::finish(x, y, vec![], classes.len(), length, path, lines, classes)
}
