//! The text-data settings of a training section (`text`, `format`,
//! `test`): typed values and one diagnostic per bad value.

use netc_compiler::pipeline::check_source;
use netc_compiler::train::{Pad, TextConfig, TextFormat, TextOptions, Tokenizer};

const MODEL: &str = "model m {\n  input x: [8]\n  x -> dense(2) -> softmax -> y\n  output y\n}\n";

/// The checked section and its diagnostics as `CODE message` lines.
fn check(settings: &str) -> (Option<TextConfig>, Option<String>, Vec<String>) {
    let src = format!("{MODEL}train m {{\n{settings}\n}}\n");
    let c = check_source(&src).expect("parses");
    let diags = c
        .diagnostics
        .iter()
        .map(|d| format!("{} {}", d.code, d.message))
        .collect();
    let t = &c.trains[0];
    (t.text, t.test.clone(), diags)
}

#[test]
fn word_and_char_tokenizers_with_their_defaults() {
    let (t, test, d) = check(
        "data: \"a.tsv\"; test: \"b.tsv\"; text: word(max_vocab: 20000, min_count: 2); format: classification",
    );
    assert_eq!(d, Vec::<String>::new());
    assert_eq!(test.as_deref(), Some("b.tsv"));
    assert_eq!(
        t,
        Some(TextConfig {
            options: TextOptions {
                tokenizer: Tokenizer::Word { lowercase: true },
                max_vocab: Some(20000),
                min_count: 2,
                unknown: netc_compiler::train::UnknownWords::Single,
            },
            format: TextFormat::Classification { pad: Pad::Start },
        })
    );
    let (t, _, d) = check("text: char; format: language_model(stream: true)");
    assert_eq!(d, Vec::<String>::new());
    let t = t.unwrap();
    assert_eq!(
        t.options,
        TextOptions {
            tokenizer: Tokenizer::Char { lowercase: false },
            max_vocab: None,
            min_count: 1,
            unknown: netc_compiler::train::UnknownWords::Single,
        }
    );
    assert_eq!(
        t.format,
        TextFormat::LanguageModel {
            stream: true,
            bos: true
        }
    );
    let (t, _, d) = check("text: char(); format: classification(pad: end)");
    assert_eq!(d, Vec::<String>::new());
    assert_eq!(
        t.unwrap().format,
        TextFormat::Classification { pad: Pad::End }
    );
    let (t, _, _) = check("text: word(lowercase: false); format: tagging");
    let t = t.unwrap();
    assert_eq!(t.options.tokenizer, Tokenizer::Word { lowercase: false });
    assert_eq!(t.format, TextFormat::Tagging);
    let (t, _, d) = check("text: word(unknown: shape); format: tagging");
    assert_eq!(d, Vec::<String>::new());
    assert_eq!(
        t.unwrap().options.unknown,
        netc_compiler::train::UnknownWords::Shape
    );
}

#[test]
fn bad_values_are_diagnostics() {
    let cases = [
        (
            "text: wrod(); format: tagging",
            "E0304 unknown tokenizer `wrod`",
        ),
        (
            "text: \"word\"; format: tagging",
            "E0302 setting `text` must be a tokenizer",
        ),
        (
            "text: word(max_vocab: 2); format: tagging",
            "E0105 invalid `max_vocab` for `word`: 2 is less than 3",
        ),
        (
            "text: word(min_count: 0); format: tagging",
            "E0105 invalid `min_count` for `word`: 0 is less than 1",
        ),
        (
            "text: word(lowercase: 1); format: tagging",
            "E0104 argument `lowercase` of `word` must be `true` or `false`",
        ),
        (
            "text: word(unknown: shapes); format: tagging",
            "E0105 invalid `unknown` for `word`: expected one of single, shape (did you mean `shape`?)",
        ),
        (
            "text: char(unknown: shape); format: language_model",
            "E0102 `char` has no argument `unknown`",
        ),
        (
            "text: char(vocab: 3); format: tagging",
            "E0102 `char` has no argument `vocab`",
        ),
        (
            "text: word(); format: tagger",
            "E0304 unknown format `tagger`",
        ),
        (
            "text: word(); format: language_model(windows: true)",
            "E0102 `language_model` has no argument `windows`",
        ),
        (
            "text: word(); format: tagging(bos: true)",
            "E0102 `tagging` has no argument `bos`",
        ),
        ("text: word()", "E0308 `text` needs `format`"),
        (
            "text: char(); format: tagging",
            "E0308 `format: tagging` reads `word/TAG` tokens",
        ),
        ("format: tagging", "E0308 `format` needs `text`"),
        ("test: \"t.txt\"", "E0308 `test` needs `text`"),
        (
            "text: word(); format: tagging; test: 3",
            "E0302 setting `test` must be a string path",
        ),
    ];
    for (settings, want) in cases {
        let (_, _, d) = check(settings);
        assert!(
            d.iter().any(|m| m.starts_with(want)),
            "{settings}: want `{want}`, got {d:?}"
        );
        assert_eq!(d.len(), 1, "{settings}: one diagnostic, got {d:?}");
    }
}
