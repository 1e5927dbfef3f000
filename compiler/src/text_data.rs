//! The text-data settings of a training section: `text: word(...)` /
//! `text: char(...)` (the tokenizer and the vocabulary's limits) and
//! `format: classification | tagging | language_model(...) | pairs` (how the file's
//! lines become examples and targets), checked into a [`TextConfig`].
//!
//! This module only checks and types the settings; the runtime's
//! `data::text` reads the files. It knows nothing of the rest of the
//! training section (`train` calls it), so that module stays one concept.

use crate::args::{setting_type_error, Args};
use netc_lang::ast::{Arg, Value, ValueKind};
use netc_lang::{did_you_mean, Diagnostic, Span};

/// How text is cut into tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokenizer {
    /// One token per Unicode scalar value (`char`), whitespace included.
    Char {
        /// Lower-case the text first (off by default for characters).
        lowercase: bool,
    },
    /// Words: maximal runs of letters, digits and apostrophes; every other
    /// non-whitespace character is a token of its own; whitespace only
    /// separates.
    Word {
        /// Lower-case the text first (on by default for words).
        lowercase: bool,
    },
}

impl Tokenizer {
    /// `word` or `char`.
    pub fn name(&self) -> &'static str {
        match self {
            Tokenizer::Char { .. } => "char",
            Tokenizer::Word { .. } => "word",
        }
    }

    /// Whether the text is lower-cased before tokenizing.
    pub fn lowercase(&self) -> bool {
        match *self {
            Tokenizer::Char { lowercase } | Tokenizer::Word { lowercase } => lowercase,
        }
    }
}

/// What a word outside the vocabulary becomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownWords {
    /// `<unk>`, one id for every unknown word.
    #[default]
    Single,
    /// One of a few `<unk-...>` classes by the word's shape as written —
    /// a digit, a capital letter, a hyphen, or a common suffix (`-ing`,
    /// `-ed`, `-ly`, `-s`, ...) — else `<unk>`: the classic signature
    /// trick of taggers, which makes an unseen `glorified` look like a
    /// participle. Rare training words map to their class too, so the
    /// classes are trained.
    Shape,
}

/// The `text:` setting: the tokenizer and the vocabulary's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextOptions {
    /// How lines are cut into tokens.
    pub tokenizer: Tokenizer,
    /// The largest vocabulary, special tokens included (so it is the
    /// `vocab` an embedding layer needs); `None` for no limit.
    pub max_vocab: Option<usize>,
    /// Tokens seen fewer times than this in the training file map to
    /// `<unk>`.
    pub min_count: usize,
    /// What unknown words become (words only).
    pub unknown: UnknownWords,
}

/// Where a classification example's padding goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pad {
    /// Before the tokens (Keras `pad_sequences`' default): without masking,
    /// a recurrent layer's last step comes right after the real tokens.
    #[default]
    Start,
    /// After the tokens (position `i` is the `i`-th token).
    End,
}

/// The `format:` setting: what a line of the file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextFormat {
    /// `label<TAB>text`, one example per line; one class per example.
    Classification {
        /// Where the padding of a short text goes.
        pad: Pad,
    },
    /// `word/TAG word/TAG ...`, one sentence per line; one tag per token.
    Tagging,
    /// Plain text; the target of each position is the next token.
    LanguageModel {
        /// `false`: each line is one sequence `<bos>? tokens <eos>`;
        /// `true`: the whole file is one stream cut into windows.
        stream: bool,
        /// Start each line's sequence with `<bos>` (lines mode only).
        bos: bool,
    },
    /// `question<TAB>answer`, one pair per line (sequence to sequence):
    /// the question's ids in, one answer token per output step as the
    /// target, both over one vocabulary.
    Pairs,
}

impl TextFormat {
    /// `classification`, `tagging`, `language_model` or `pairs`.
    pub fn name(&self) -> &'static str {
        match self {
            TextFormat::Classification { .. } => "classification",
            TextFormat::Tagging => "tagging",
            TextFormat::LanguageModel { .. } => "language_model",
            TextFormat::Pairs => "pairs",
        }
    }

    /// Whether the targets are token ids of the vocabulary (a language
    /// model's next tokens, a pair's answer) rather than named classes.
    pub fn targets_are_tokens(&self) -> bool {
        matches!(self, TextFormat::LanguageModel { .. } | TextFormat::Pairs)
    }
}

/// A checked text data set: the `text` and `format` settings together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextConfig {
    /// Tokenizer and vocabulary limits.
    pub options: TextOptions,
    /// What a line is.
    pub format: TextFormat,
}

/// The smallest `max_vocab`: `<pad>`, `<unk>` and one real token.
pub const MIN_VOCAB: usize = 3;

fn unknown(key: &str, name: &str, span: Span, options: &[&str]) -> Diagnostic {
    let mut d = Diagnostic::error("E0304", format!("unknown {key} `{name}`"), span)
        .with_label(format!("expected one of {}", options.join(", ")));
    if let Some(m) = did_you_mean(name, options.iter().copied()) {
        d = d.with_note(format!("help: did you mean `{m}`?"));
    }
    d
}

/// A call such as `word(min_count: 2)` or a bare name `word`.
fn call(v: &Value) -> Option<(&str, Span, &[Arg])> {
    match &v.kind {
        ValueKind::Call { name, args } => Some((&name.name, name.span, args)),
        ValueKind::Ident(s) => Some((s, v.span, &[])),
        _ => None,
    }
}

/// Checks `text: word(max_vocab: N, min_count: M, lowercase: B,
/// unknown: single|shape)` or `text: char(...)`.
pub fn check_text(v: &Value, diags: &mut Vec<Diagnostic>) -> Option<TextOptions> {
    const TOKENIZERS: &[&str] = &["word", "char"];
    let Some((name, span, args)) = call(v) else {
        diags.push(setting_type_error(
            "text",
            "a tokenizer such as word(max_vocab: 20000, min_count: 2) or char()",
            v,
        ));
        return None;
    };
    if !TOKENIZERS.contains(&name) {
        diags.push(unknown("tokenizer", name, span, TOKENIZERS));
        return None;
    }
    let params: &[&str] = if name == "word" {
        &["max_vocab", "min_count", "lowercase", "unknown"]
    } else {
        &["max_vocab", "min_count", "lowercase"]
    };
    let mut a = Args::bind(name, v.span, params, false, args, diags);
    let max_vocab = a
        .raw("max_vocab")
        .is_some()
        .then(|| a.count("max_vocab", None, MIN_VOCAB, diags));
    let min_count = a.count("min_count", Some(1), 1, diags);
    let mut unknown = UnknownWords::Single;
    let tokenizer = if name == "word" {
        if a.choice("unknown", &["single", "shape"], "single", diags) == "shape" {
            unknown = UnknownWords::Shape;
        }
        Tokenizer::Word {
            lowercase: a.flag("lowercase", true, diags),
        }
    } else {
        Tokenizer::Char {
            lowercase: a.flag("lowercase", false, diags),
        }
    };
    Some(TextOptions {
        tokenizer,
        max_vocab,
        min_count,
        unknown,
    })
}

/// Checks `format: classification(pad: start) | tagging |
/// language_model(stream: false, bos: true) | pairs`.
pub fn check_format(v: &Value, diags: &mut Vec<Diagnostic>) -> Option<TextFormat> {
    const FORMATS: &[&str] = &["classification", "tagging", "language_model", "pairs"];
    let Some((name, span, args)) = call(v) else {
        diags.push(setting_type_error(
            "format",
            "one of classification(pad: start), tagging, language_model(stream: false, bos: true), pairs",
            v,
        ));
        return None;
    };
    let params: &[&'static str] = match name {
        "classification" => &["pad"],
        "tagging" | "pairs" => &[],
        "language_model" => &["stream", "bos"],
        _ => {
            diags.push(unknown("format", name, span, FORMATS));
            return None;
        }
    };
    let mut a = Args::bind(name, v.span, params, false, args, diags);
    Some(match name {
        "classification" => TextFormat::Classification {
            pad: match a.choice("pad", &["start", "end"], "start", diags) {
                "end" => Pad::End,
                _ => Pad::Start,
            },
        },
        "tagging" => TextFormat::Tagging,
        "pairs" => TextFormat::Pairs,
        _ => TextFormat::LanguageModel {
            stream: a.flag("stream", false, diags),
            bos: a.flag("bos", true, diags),
        },
    })
}
