//! The vocabulary: token strings ↔ ids, built from the training file only.
//!
//! Ids: the special tokens first — `<pad>` = 0 (the padding id, which an
//! embedding layer reserves), `<unk>` = 1, and for language models
//! `<bos>` = 2, `<eos>` = 3 — then the tokens of the training file by
//! descending count, ties broken by first appearance in the file (as
//! Keras's `Tokenizer` orders them: the same file always gives the same
//! ids, and reordering equal-count tokens needs reordering the file).
//! Tokens seen fewer than `min_count` times are dropped, then the list is
//! cut so that the vocabulary, specials included, holds at most
//! `max_size` entries; every dropped or unseen token encodes as `<unk>` —
//! or, with [`UnknownWords::Shape`], as its shape class ([`super::shape`],
//! special tokens after the others). A lower-casing tokenizer's vocabulary
//! counts and looks tokens up lower-cased, so a tagger's words can be
//! given as written and their shape still sees the capital.
//!
//! A vocabulary carries its tokenizer, so [`Vocabulary::encode`] turns text
//! into exactly the ids the model was trained on. It serializes to one
//! compact JSON object ([`Vocabulary::to_json`]),
//! `{"tokenizer":"word","lowercase":true,"specials":2,"tokens":["<pad>","<unk>","the",...]}`
//! (token `i` has id `i`), which netc stores in the weights' metadata.

use std::collections::HashMap;

use std::borrow::Cow;

use netc_compiler::train::{Tokenizer, UnknownWords};
use serde::{Deserialize, Serialize};

use super::shape;
use super::tokenize::tokenize;

/// The padding token; its id is [`PAD_ID`].
pub const PAD: &str = "<pad>";
/// The unknown token; its id is [`UNK_ID`].
pub const UNK: &str = "<unk>";
/// The beginning-of-sequence token of language models (id 2).
pub const BOS: &str = "<bos>";
/// The end-of-sequence token of language models (id 3).
pub const EOS: &str = "<eos>";
/// The id of `<pad>`: 0, the id an embedding layer keeps for padding.
pub const PAD_ID: u32 = 0;
/// The id of `<unk>`.
pub const UNK_ID: u32 = 1;
/// The largest vocabulary: ids are stored as `f32`, exact below 2^24.
pub const MAX_VOCAB: usize = 1 << 24;

/// Token strings and their ids, with the tokenizer that made them.
#[derive(Clone, Debug, PartialEq)]
pub struct Vocabulary {
    tokenizer: Tokenizer,
    tokens: Vec<String>,
    specials: usize,
    unknown: UnknownWords,
    index: HashMap<String, u32>,
}

/// Why a vocabulary could not be built or read back.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VocabError {
    /// `max_size` leaves no room for a real token.
    #[error("max_vocab {max} leaves no room for tokens: the special tokens {specials} alone take {n} ids", n = .specials.len(), specials = .specials.join(" "))]
    TooSmall {
        /// The limit.
        max: usize,
        /// The special tokens.
        specials: Vec<String>,
    },
    /// More distinct tokens than f32 ids can hold exactly.
    #[error("the vocabulary would hold {0} tokens, more than the 2^24 ids that f32 holds exactly; set text: ...(max_vocab: N)")]
    TooLarge(usize),
    /// The serialized form does not parse or is inconsistent.
    #[error("invalid vocabulary: {0}")]
    Invalid(String),
}

#[derive(Serialize, Deserialize)]
struct Stored {
    tokenizer: String,
    lowercase: bool,
    specials: usize,
    /// `"shape"` for [`UnknownWords::Shape`]; absent for `<unk>` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unknown: Option<String>,
    tokens: Vec<String>,
}

impl Vocabulary {
    /// Builds a vocabulary from the token sequences of the training file,
    /// in file order: `specials` first (and the shape classes, with
    /// [`UnknownWords::Shape`]), then tokens by descending count (ties:
    /// first appearance), without those seen fewer than `min_count` times,
    /// at most `max_size` entries in all.
    pub fn build<'a>(
        tokenizer: Tokenizer,
        specials: &[&str],
        sequences: impl IntoIterator<Item = &'a [String]>,
        max_size: Option<usize>,
        min_count: usize,
        unknown: UnknownWords,
    ) -> Result<Vocabulary, VocabError> {
        let mut specials: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
        if unknown == UnknownWords::Shape {
            specials.extend(shape::classes());
        }
        if let Some(max) = max_size.filter(|&m| m <= specials.len()) {
            return Err(VocabError::TooSmall { max, specials });
        }
        // token → (count, first appearance)
        let mut counts: HashMap<Cow<str>, (usize, usize)> = HashMap::new();
        for t in sequences.into_iter().flatten() {
            let next = counts.len();
            counts.entry(normalize(tokenizer, t)).or_insert((0, next)).0 += 1;
        }
        let mut ranked: Vec<(Cow<str>, usize, usize)> = counts
            .into_iter()
            .filter(|(_, (c, _))| *c >= min_count.max(1))
            .map(|(t, (c, first))| (t, c, first))
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
        let room = max_size.unwrap_or(usize::MAX) - specials.len();
        ranked.truncate(room);
        let n = specials.len();
        let tokens: Vec<String> = specials
            .into_iter()
            .chain(ranked.into_iter().map(|(t, _, _)| t.into_owned()))
            .collect();
        Vocabulary::from_parts(tokenizer, tokens, n, unknown)
    }

    fn from_parts(
        tokenizer: Tokenizer,
        tokens: Vec<String>,
        specials: usize,
        unknown: UnknownWords,
    ) -> Result<Vocabulary, VocabError> {
        if tokens.len() > MAX_VOCAB {
            return Err(VocabError::TooLarge(tokens.len()));
        }
        if specials < 2 || specials > tokens.len() || tokens[0] != PAD || tokens[1] != UNK {
            return Err(VocabError::Invalid(format!(
                "it must start with {PAD} and {UNK} among {specials} special tokens"
            )));
        }
        let mut index = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            if index.insert(t.clone(), i as u32).is_some() {
                return Err(VocabError::Invalid(format!("token `{t}` appears twice")));
            }
        }
        if unknown == UnknownWords::Shape {
            if let Some(c) = shape::classes().iter().find(|c| !index.contains_key(*c)) {
                return Err(VocabError::Invalid(format!(
                    "it classes unknown words by shape but lacks the class `{c}`"
                )));
            }
        }
        Ok(Vocabulary {
            tokenizer,
            tokens,
            specials,
            unknown,
            index,
        })
    }

    /// The number of ids (special tokens included): an embedding layer's
    /// `vocab`, and a language model's number of output classes.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the vocabulary holds no tokens (never: it has its specials).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The tokenizer [`Vocabulary::encode`] uses.
    pub fn tokenizer(&self) -> Tokenizer {
        self.tokenizer
    }

    /// All tokens; token `i` has id `i`.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// How many of the first ids are special tokens.
    pub fn specials(&self) -> usize {
        self.specials
    }

    /// The id of `token` (lower-cased first if the tokenizer lower-cases);
    /// for a token not in the vocabulary, its shape class's or `<unk>`'s.
    pub fn id(&self, token: &str) -> u32 {
        if let Some(&i) = self.index.get(normalize(self.tokenizer, token).as_ref()) {
            return i;
        }
        match self.unknown {
            UnknownWords::Single => UNK_ID,
            UnknownWords::Shape => shape::class(token)
                .and_then(|c| self.index.get(&c).copied())
                .unwrap_or(UNK_ID),
        }
    }

    /// Whether `token` has an id of its own.
    pub fn contains(&self, token: &str) -> bool {
        self.index
            .contains_key(normalize(self.tokenizer, token).as_ref())
    }

    /// What unknown words become.
    pub fn unknown_words(&self) -> UnknownWords {
        self.unknown
    }

    /// The token of `id`; `None` past the end.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of `<bos>`, for a language model's vocabulary (where a
    /// generator starts); `None` for other vocabularies.
    pub fn bos(&self) -> Option<u32> {
        self.index.get(BOS).copied()
    }

    /// The id of `<eos>`, for a language model's vocabulary (where a
    /// generator stops); `None` for other vocabularies.
    pub fn eos(&self) -> Option<u32> {
        self.index.get(EOS).copied()
    }

    /// The ids of `tokens` (unknown ones as `<unk>`).
    pub fn ids(&self, tokens: &[String]) -> Vec<u32> {
        tokens.iter().map(|t| self.id(t)).collect()
    }

    /// Tokenizes `text` with the vocabulary's tokenizer and maps the tokens
    /// to ids (unknown ones to `<unk>` = 1). No `<bos>`/`<eos>` is added.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.ids(&tokenize(self.tokenizer, text))
    }

    /// Text for `ids`: `<pad>` ids are left out, other special tokens are
    /// written as their names; characters are concatenated, words joined
    /// with single spaces. An id past the end is written `<unk>`.
    pub fn decode(&self, ids: &[u32]) -> String {
        let sep = match self.tokenizer {
            Tokenizer::Char { .. } => "",
            Tokenizer::Word { .. } => " ",
        };
        ids.iter()
            .filter(|&&i| i != PAD_ID)
            .map(|&i| self.token(i).unwrap_or(UNK))
            .collect::<Vec<_>>()
            .join(sep)
    }

    /// The compact JSON form (see the module doc).
    pub fn to_json(&self) -> String {
        let s = Stored {
            tokenizer: self.tokenizer.name().to_string(),
            lowercase: self.tokenizer.lowercase(),
            specials: self.specials,
            unknown: (self.unknown == UnknownWords::Shape).then(|| "shape".to_string()),
            tokens: self.tokens.clone(),
        };
        // Serializing strings, numbers and a bool cannot fail.
        serde_json::to_string(&s).unwrap_or_default()
    }

    /// Reads the form [`Vocabulary::to_json`] writes.
    pub fn from_json(json: &str) -> Result<Vocabulary, VocabError> {
        let s: Stored =
            serde_json::from_str(json).map_err(|e| VocabError::Invalid(e.to_string()))?;
        let tokenizer = match s.tokenizer.as_str() {
            "word" => Tokenizer::Word {
                lowercase: s.lowercase,
            },
            "char" => Tokenizer::Char {
                lowercase: s.lowercase,
            },
            t => return Err(VocabError::Invalid(format!("unknown tokenizer `{t}`"))),
        };
        let unknown = match s.unknown.as_deref() {
            None => UnknownWords::Single,
            Some("shape") => UnknownWords::Shape,
            Some(u) => return Err(VocabError::Invalid(format!("unknown `unknown` mode `{u}`"))),
        };
        Vocabulary::from_parts(tokenizer, s.tokens, s.specials, unknown)
    }
}

/// `token` as the vocabulary keys it: lower-cased when the tokenizer
/// lower-cases (a no-op for tokens the tokenizer made; tagging words
/// arrive as written).
fn normalize(tokenizer: Tokenizer, token: &str) -> Cow<'_, str> {
    if tokenizer.lowercase() && token.chars().any(char::is_uppercase) {
        Cow::Owned(token.to_lowercase())
    } else {
        Cow::Borrowed(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORD: Tokenizer = Tokenizer::Word { lowercase: true };

    fn seqs(lines: &[&str]) -> Vec<Vec<String>> {
        lines.iter().map(|l| tokenize(WORD, l)).collect()
    }

    fn build(lines: &[&str], max: Option<usize>, min: usize) -> Vocabulary {
        let s = seqs(lines);
        Vocabulary::build(
            WORD,
            &[PAD, UNK],
            s.iter().map(Vec::as_slice),
            max,
            min,
            UnknownWords::Single,
        )
        .unwrap()
    }

    #[test]
    fn order_is_count_then_first_appearance() {
        let v = build(&["b a c", "a c d", "a"], None, 1);
        // a: 3, c: 2, b: 1 (first), d: 1.
        assert_eq!(v.tokens(), ["<pad>", "<unk>", "a", "c", "b", "d"]);
        assert_eq!(v.encode("A c, e"), [2, 3, UNK_ID, UNK_ID]);
        assert_eq!(v.decode(&[2, 0, 3, 1, 99]), "a c <unk> <unk>");
    }

    #[test]
    fn min_count_and_max_size() {
        let v = build(&["b a c", "a c d", "a"], None, 2);
        assert_eq!(v.tokens(), ["<pad>", "<unk>", "a", "c"]);
        let v = build(&["b a c", "a c d", "a"], Some(3), 1);
        assert_eq!(v.tokens(), ["<pad>", "<unk>", "a"]);
        let s = seqs(&["a"]);
        let e = Vocabulary::build(
            WORD,
            &[PAD, UNK],
            s.iter().map(Vec::as_slice),
            Some(2),
            1,
            UnknownWords::Single,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "max_vocab 2 leaves no room for tokens: the special tokens <pad> <unk> alone take 2 ids"
        );
    }

    #[test]
    fn json_round_trip() {
        let v = build(&["the cat", "the dog"], None, 1);
        let j = v.to_json();
        assert_eq!(
            j,
            r#"{"tokenizer":"word","lowercase":true,"specials":2,"tokens":["<pad>","<unk>","the","cat","dog"]}"#
        );
        assert_eq!(Vocabulary::from_json(&j).unwrap(), v);
        assert!(Vocabulary::from_json("{").is_err());
        let dup = r#"{"tokenizer":"word","lowercase":true,"specials":2,"tokens":["<pad>","<unk>","a","a"]}"#;
        assert_eq!(
            Vocabulary::from_json(dup).unwrap_err().to_string(),
            "invalid vocabulary: token `a` appears twice"
        );
    }

    #[test]
    fn char_vocabulary_decodes_to_text() {
        let c = Tokenizer::Char { lowercase: false };
        let s: Vec<Vec<String>> = vec![tokenize(c, "abba")];
        let v = Vocabulary::build(
            c,
            &[PAD, UNK, BOS, EOS],
            s.iter().map(Vec::as_slice),
            None,
            1,
            UnknownWords::Single,
        )
        .unwrap();
        assert_eq!(v.tokens(), ["<pad>", "<unk>", "<bos>", "<eos>", "a", "b"]);
        assert_eq!(v.encode("abc"), [4, 5, UNK_ID]);
        assert_eq!(v.decode(&[4, 5, 5, 4]), "abba");
        assert_eq!((v.bos(), v.eos()), (Some(2), Some(3)));
        let w = build(&["a"], None, 1);
        assert_eq!((w.bos(), w.eos()), (None, None));
    }

    #[test]
    fn shape_classes_for_unknown_words() {
        // Words as a tagger reads them: as written, counted lower-cased.
        let words: Vec<String> = "The cat sat . the cats glorified Smith"
            .split(' ')
            .map(String::from)
            .collect();
        let v = Vocabulary::build(
            WORD,
            &[PAD, UNK],
            [words.as_slice()],
            None,
            2,
            UnknownWords::Shape,
        )
        .unwrap();
        let n = 2 + shape::classes().len();
        assert_eq!(v.specials(), n);
        assert_eq!(&v.tokens()[n..], ["the"]);
        let id = |w: &str| v.token(v.id(w)).unwrap().to_string();
        assert_eq!(id("The"), "the");
        assert_eq!(id("glorified"), "<unk-ed>");
        assert_eq!(id("Smith"), "<unk-cap>");
        assert_eq!(id("cats"), "<unk-s>");
        assert_eq!(id("sat"), UNK);
        // The mode travels with the vocabulary.
        let j = v.to_json();
        assert!(j.contains(r#""unknown":"shape""#), "{j}");
        let back = Vocabulary::from_json(&j).unwrap();
        assert_eq!(back.token(back.id("Jones")), Some("<unk-cap>"));
        // Too small for the classes.
        let e = Vocabulary::build(
            WORD,
            &[PAD, UNK],
            [words.as_slice()],
            Some(n),
            1,
            UnknownWords::Shape,
        )
        .unwrap_err();
        assert!(e.to_string().contains("<unk-num>"), "{e}");
    }
}
