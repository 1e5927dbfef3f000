//! Language-model data: plain text, the target of each position the next
//! token.
//!
//! - **Lines** (`language_model`, the default): each non-blank line is one
//!   sequence `<bos> tokens… <eos>` (`<bos>` only with `bos: true`, the
//!   default), cut to its first `T + 1` ids or padded with `<pad>` at the
//!   end to `T + 1`. The input is the first `T` ids, the target of
//!   position `i` is id `i + 1`; a target that is padding is
//!   [`PAD_LABEL`] (−1), which cross-entropy and accuracy leave out. For
//!   word lists and names (one item per line).
//! - **Stream** (`language_model(stream: true)`): the file is one stream,
//!   each non-blank line's tokens followed by `<eos>` (so line ends survive
//!   for both tokenizers), cut into consecutive windows of `T + 1` ids that
//!   overlap by one (window `k` starts at id `k·T`): input the first `T`,
//!   target the last `T`; no padding. Ids after the last full window are
//!   dropped. For running text.

use std::path::Path;

use super::super::dataset::Dataset;
use super::super::error::DataError;
use super::vocab::{BOS, EOS, PAD_ID};
use super::{Vocabulary, PAD_LABEL};

/// The sequence of line `tokens` in lines mode: `<bos>? ids <eos>`.
fn sequence(vocab: &Vocabulary, tokens: &[String], bos: bool) -> Vec<u32> {
    let mut s = Vec::with_capacity(tokens.len() + 2);
    if bos {
        s.push(vocab.id(BOS));
    }
    s.extend(vocab.ids(tokens));
    s.push(vocab.id(EOS));
    s
}

/// Lines mode: one example per line (see the module doc).
pub fn lines_dataset(
    lines: &[(u64, Vec<String>)],
    vocab: &Vocabulary,
    bos: bool,
    length: usize,
    path: &Path,
) -> Result<Dataset, DataError> {
    let mut x = Vec::with_capacity(lines.len() * length);
    let mut y = Vec::with_capacity(lines.len() * length);
    for (_, tokens) in lines {
        let mut s = sequence(vocab, tokens, bos);
        s.resize(length + 1, PAD_ID);
        x.extend(s[..length].iter().map(|&i| i as f32));
        y.extend(
            s[1..]
                .iter()
                .map(|&i| if i == PAD_ID { PAD_LABEL } else { i as f32 }),
        );
    }
    let numbers = lines.iter().map(|(n, _)| *n).collect();
    super::finish(x, y, vec![length], vocab.len(), length, path, numbers, &[])
}

/// Stream mode: consecutive windows over the whole file (see the module
/// doc).
pub fn stream_dataset(
    lines: &[(u64, Vec<String>)],
    vocab: &Vocabulary,
    length: usize,
    path: &Path,
) -> Result<Dataset, DataError> {
    let eos = vocab.id(EOS);
    // The id stream, and the line each id came from (for messages).
    let mut ids = Vec::new();
    let mut from = Vec::new();
    for (n, tokens) in lines {
        ids.extend(vocab.ids(tokens));
        ids.push(eos);
        from.resize(ids.len(), *n);
    }
    let windows = ids.len().saturating_sub(1) / length;
    if windows == 0 {
        return Err(DataError::invalid(format!(
            "the text holds {} tokens (with one <eos> per line), too few for one window of {} \
             (the model's input length {length} plus the next token)",
            ids.len(),
            length + 1
        ))
        .at(path));
    }
    let mut x = Vec::with_capacity(windows * length);
    let mut y = Vec::with_capacity(windows * length);
    let mut numbers = Vec::with_capacity(windows);
    for k in 0..windows {
        let w = &ids[k * length..k * length + length + 1];
        x.extend(w[..length].iter().map(|&i| i as f32));
        y.extend(w[1..].iter().map(|&i| i as f32));
        numbers.push(from[k * length]);
    }
    super::finish(x, y, vec![length], vocab.len(), length, path, numbers, &[])
}
