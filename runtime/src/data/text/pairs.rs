//! Sequence-to-sequence files: one pair per line, `question<TAB>answer`
//! (`535+61 <TAB>596 ` in the addition data of `data/addition/`).
//!
//! The question is everything before the first TAB, the answer everything
//! after it, both tokenized with the training section's tokenizer and not
//! trimmed: with `char()` a space is a token, and padding written into the
//! file (as Keras's addition example pads with spaces) is something the
//! model learns to produce. Question and answer share one vocabulary, so a
//! decoder's `dense(vocab)` + softmax scores answer tokens by id.
//!
//! `x` is the question's ids, `[T]`, padded with `<pad>` at the end (the
//! first `T` kept); the target is the answer's ids, one per output step,
//! `[T_out]` (`T_out` from the model's output `[T_out, vocab]`), with
//! [`PAD_LABEL`] (−1) past the answer's end, which cross-entropy and the
//! accuracy leave out. A line without a TAB, or with nothing before or
//! after it, is an error naming the line.

use std::path::Path;

use netc_compiler::train::Tokenizer;

use super::super::dataset::Dataset;
use super::super::error::DataError;
use super::lines::Line;
use super::tokenize::tokenize;
use super::{fit, Pad, Vocabulary, PAD_LABEL};

/// One parsed line.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    /// 1-based line number.
    pub line: u64,
    /// The question's tokens.
    pub question: Vec<String>,
    /// The answer's tokens.
    pub answer: Vec<String>,
}

/// Parses the lines of a pairs file.
pub fn parse(lines: &[Line], tokenizer: Tokenizer) -> Result<Vec<Pair>, DataError> {
    lines
        .iter()
        .map(|l| {
            let Some((q, a)) = l.text.split_once('\t') else {
                return Err(DataError::line(
                    l.number,
                    "no TAB between the question and the answer (expected `question<TAB>answer`)",
                ));
            };
            let (question, answer) = (tokenize(tokenizer, q), tokenize(tokenizer, a));
            if question.is_empty() {
                return Err(DataError::line(l.number, "no question before the TAB"));
            }
            if answer.is_empty() {
                return Err(DataError::line(l.number, "no answer after the TAB"));
            }
            Ok(Pair {
                line: l.number,
                question,
                answer,
            })
        })
        .collect()
}

/// The tokens of `pair` that an example keeps (the first `length` of the
/// question, the first `target_length` of the answer): the vocabulary is
/// built from these.
pub fn kept(pair: &Pair, length: usize, target_length: usize) -> impl Iterator<Item = &[String]> {
    [
        &pair.question[..pair.question.len().min(length)],
        &pair.answer[..pair.answer.len().min(target_length)],
    ]
    .into_iter()
}

/// The pairs as a data set: `x` `[N, length]` question ids (padded at the
/// end), `y` `[N, target_length]` answer ids with −1 past the answer.
pub fn dataset(
    pairs: &[Pair],
    vocab: &Vocabulary,
    length: usize,
    target_length: usize,
    path: &Path,
) -> Result<Dataset, DataError> {
    let mut x = Vec::with_capacity(pairs.len() * length);
    let mut y = Vec::with_capacity(pairs.len() * target_length);
    for p in pairs {
        x.extend(fit(&vocab.ids(&p.question), length, Pad::End));
        let mut t: Vec<f32> = vocab
            .ids(&p.answer)
            .into_iter()
            .take(target_length)
            .map(|id| id as f32)
            .collect();
        t.resize(target_length, PAD_LABEL);
        y.extend(t);
    }
    let lines = pairs.iter().map(|p| p.line).collect();
    super::finish(
        x,
        y,
        vec![target_length],
        vocab.len(),
        length,
        path,
        lines,
        &[],
    )
}
