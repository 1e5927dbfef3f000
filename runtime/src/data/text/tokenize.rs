//! Tokenizers: text → token strings.
//!
//! - **char**: one token per Unicode scalar value (`char`), spaces
//!   included; `"ab c"` → `a`, `b`, ` `, `c`. Lower-casing is off by
//!   default.
//! - **word**: lower-cases (on by default; `str::to_lowercase`, full
//!   Unicode), then a *word* is a maximal run of characters that are
//!   alphanumeric (`char::is_alphanumeric`: letters and digits of any
//!   script) or the ASCII apostrophe `'`; every other character that is not
//!   whitespace (`char::is_whitespace`) is a token of its own; whitespace
//!   only separates. `"Don't stop--now!"` → `don't`, `stop`, `-`, `-`,
//!   `now`, `!`. Apostrophes stay inside words so that contractions
//!   (`don't`, `o'clock`) are one token, as most word-level vocabularies
//!   treat them.
//!
//! No token is ever empty, and no token can be one of the special tokens
//! (`<pad>`, `<unk>`, ...): `<` and `>` are tokens of their own.

use netc_compiler::train::Tokenizer;

/// Cuts `text` into tokens as `tokenizer` says (see the module doc).
pub fn tokenize(tokenizer: Tokenizer, text: &str) -> Vec<String> {
    let lowered;
    let text = if tokenizer.lowercase() {
        lowered = text.to_lowercase();
        lowered.as_str()
    } else {
        text
    };
    match tokenizer {
        Tokenizer::Char { .. } => text.chars().map(String::from).collect(),
        Tokenizer::Word { .. } => words(text),
    }
}

fn in_word(c: char) -> bool {
    c.is_alphanumeric() || c == '\''
}

fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if in_word(c) {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORD: Tokenizer = Tokenizer::Word { lowercase: true };

    #[test]
    fn words_split_punctuation_and_keep_apostrophes() {
        assert_eq!(
            tokenize(WORD, "Don't stop--now! 3.5\tkm"),
            ["don't", "stop", "-", "-", "now", "!", "3", ".", "5", "km"]
        );
        assert_eq!(tokenize(WORD, "  "), Vec::<String>::new());
        assert_eq!(tokenize(WORD, "<pad>"), ["<", "pad", ">"]);
        // Letters of any script; lower-casing is full Unicode.
        assert_eq!(
            tokenize(WORD, "Ärger ÉTÉ, 東京"),
            ["ärger", "été", ",", "東京"]
        );
        let cased = Tokenizer::Word { lowercase: false };
        assert_eq!(tokenize(cased, "The Cat"), ["The", "Cat"]);
    }

    #[test]
    fn chars_are_scalar_values_with_spaces() {
        let c = Tokenizer::Char { lowercase: false };
        assert_eq!(tokenize(c, "Ab é"), ["A", "b", " ", "é"]);
        // "e" + combining acute accent: two scalar values, two tokens.
        assert_eq!(tokenize(c, "e\u{301}"), ["e", "\u{301}"]);
        let lower = Tokenizer::Char { lowercase: true };
        assert_eq!(tokenize(lower, "AB"), ["a", "b"]);
    }
}
