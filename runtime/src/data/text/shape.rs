//! Word shapes: the class an unknown word falls into under
//! `text: word(unknown: shape)`. A tagger that sees every unseen word as
//! one `<unk>` can only guess its tag from the context; its spelling says
//! much more (`-ing` → a participle, a capital → a proper noun, a digit →
//! a number). The classes are special tokens of the vocabulary, and a
//! training word too rare for the vocabulary maps to its class, so each
//! class is trained on the rare words it stands for.
//!
//! The rules, first match wins, on the word as written (before
//! lower-casing): a digit anywhere → `<unk-num>`; an upper-case first
//! letter → `<unk-cap>`; a hyphen → `<unk-hyphen>`; then the first of
//! [`SUFFIXES`] that ends the word and leaves at least three letters
//! before it → `<unk-SUFFIX>` (`-s` not after another `s`); else `<unk>`.
//! `benches/reference/textdata.py` states the same rules for the JAX
//! reference.

/// The suffixes, tried in this order (a longer one before a suffix of it).
pub const SUFFIXES: [&str; 23] = [
    "ing", "ed", "ly", "ion", "ness", "ment", "ity", "ism", "ist", "ous", "ive", "able", "ible",
    "al", "ful", "less", "ic", "est", "er", "ize", "ise", "ian", "s",
];

/// The classes' token names other than `<unk>`, in vocabulary order.
pub fn classes() -> Vec<String> {
    ["<unk-num>", "<unk-cap>", "<unk-hyphen>"]
        .into_iter()
        .map(String::from)
        .chain(SUFFIXES.iter().map(|s| format!("<unk-{s}>")))
        .collect()
}

/// The class of `word` as written: a name from [`classes`], or `None`
/// for plain `<unk>`.
pub fn class(word: &str) -> Option<String> {
    if word.chars().any(|c| c.is_ascii_digit()) {
        return Some("<unk-num>".into());
    }
    if word.chars().next().is_some_and(char::is_uppercase) {
        return Some("<unk-cap>".into());
    }
    if word.contains('-') {
        return Some("<unk-hyphen>".into());
    }
    let lower = word.to_lowercase();
    let n = lower.chars().count();
    SUFFIXES
        .iter()
        .find(|s| lower.ends_with(*s) && n >= s.len() + 3 && !(**s == "s" && lower.ends_with("ss")))
        .map(|s| format!("<unk-{s}>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_by_the_first_rule_that_matches() {
        for (word, want) in [
            ("1960s", Some("<unk-num>")),
            ("Kennedy's", Some("<unk-cap>")),
            ("well-known", Some("<unk-hyphen>")),
            ("glorified", Some("<unk-ed>")),
            ("Glorified", Some("<unk-cap>")),
            ("sprawling", Some("<unk-ing>")),
            ("sadness", Some("<unk-ness>")),
            ("tables", Some("<unk-s>")),
            ("class", None),
            // Too short a stem: `red` is not a past tense.
            ("red", None),
            ("zyzzyva", None),
        ] {
            assert_eq!(class(word).as_deref(), want, "{word}");
        }
        assert_eq!(classes().len(), 3 + SUFFIXES.len());
        for w in ["1960s", "sadness", "tables"] {
            assert!(classes().contains(&class(w).unwrap()), "{w}");
        }
    }
}
