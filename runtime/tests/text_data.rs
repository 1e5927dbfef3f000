//! Text data sets through the runtime API: classification, tagging and
//! language-model files written to a temporary directory, the exact ids,
//! padding and targets they give, each hostile input's one-line error, and
//! the vocabulary kept with weights and checkpoints.

use std::path::{Path, PathBuf};

use netc_compiler::train::{Loss, Pad, TextConfig, TextFormat, TextOptions, Tokenizer};
use netc_runtime::checkpoint::{Checkpoint, Position};
use netc_runtime::data::{load_text, load_text_for_model, TextData, TextInfo, PAD_LABEL};
use netc_runtime::{Tensor, Weights};

const WORD: Tokenizer = Tokenizer::Word { lowercase: true };
const CHAR: Tokenizer = Tokenizer::Char { lowercase: false };

fn cfg(tokenizer: Tokenizer, format: TextFormat, max: Option<usize>, min: usize) -> TextConfig {
    TextConfig {
        options: TextOptions {
            tokenizer,
            max_vocab: max,
            min_count: min,
            unknown: netc_compiler::train::UnknownWords::Single,
        },
        format,
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Word-level classification, padded at the start.
fn classes(max: Option<usize>, min: usize) -> TextConfig {
    cfg(
        WORD,
        TextFormat::Classification { pad: Pad::Start },
        max,
        min,
    )
}

fn lm_format(stream: bool, bos: bool) -> TextFormat {
    TextFormat::LanguageModel { stream, bos }
}

/// Writes each case's bytes to its own file `bad<i>.<ext>` and checks that
/// loading it as `c` fails with the case's message.
fn assert_errors(dir: &Path, ext: &str, c: &TextConfig, cases: &[(&[u8], &str)]) {
    for (i, (bytes, want)) in cases.iter().enumerate() {
        let p = write(dir, &format!("bad{i}.{ext}"), bytes);
        assert_eq!(error(&p, None, c, 4), *want);
    }
}

/// The error of loading the test file `test` beside the training text
/// `train` (written as `train.<ext>` and `test.<ext>`) as `c`.
fn test_file_error(dir: &Path, ext: &str, train: &str, test: &[u8], c: &TextConfig) -> String {
    let train = write(dir, &format!("train.{ext}"), train.as_bytes());
    let test = write(dir, &format!("test.{ext}"), test);
    error(&train, Some(&test), c, 4)
}

/// The error of loading `train` (and `test`) as `c`, checked to be one
/// line starting with the file's path; returned without the path.
fn error(train: &Path, test: Option<&Path>, c: &TextConfig, length: usize) -> String {
    let e = load_text(train, test, c, length, None)
        .unwrap_err()
        .to_string();
    assert!(!e.contains('\n'), "{e}");
    let file = test.unwrap_or(train).display().to_string();
    e.strip_prefix(&format!("{file}: "))
        .unwrap_or_else(|| panic!("`{e}` does not start with {file}"))
        .to_string()
}

const SPAM: &str = "spam\tWin cash now!\nham\tSee you at lunch\nspam\twin a free prize, win now\n\nham\tlunch now?\n";

#[test]
fn classification_ids_padding_and_classes() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(dir.path(), "train.tsv", SPAM.as_bytes());
    let test = write(dir.path(), "test.tsv", b"ham\tFree lunch\r\n");
    let c = classes(None, 1);
    let TextData {
        train: d,
        test: t,
        info,
    } = load_text(&train, Some(&test), &c, 5, None).unwrap();
    // win 3, now 3 (win first), lunch 2, then the singletons in file order.
    assert_eq!(
        info.vocabulary.tokens(),
        [
            "<pad>", "<unk>", "win", "now", "lunch", "cash", "!", "see", "you", "at", "a", "free",
            "prize", ",", "?"
        ]
    );
    assert_eq!(
        info.labels.as_deref(),
        Some(&["ham".to_string(), "spam".to_string()][..])
    );
    assert_eq!(d.x.shape, vec![4, 5]);
    #[rustfmt::skip]
    assert_eq!(d.x.data, vec![
        0., 2., 5., 3., 6.,     // pre-padded: win cash now !
        0., 7., 8., 9., 4.,     // see you at lunch
        2., 10., 11., 12., 13., // the first 5 of 7 tokens
        0., 0., 4., 3., 14.,    // lunch now ?
    ]);
    assert_eq!(d.y, vec![1., 0., 1., 0.]);
    assert_eq!((d.classes, d.target_shape.clone()), (Some(2), vec![]));
    assert_eq!(d.origin.as_ref().unwrap().lines, Some(vec![1, 2, 3, 5]));
    assert!(d.text.is_some());
    let t = t.unwrap();
    assert_eq!(
        (t.x.data.clone(), t.y.clone()),
        (vec![0., 0., 0., 11., 4.], vec![0.])
    );

    // min_count 2 keeps win, now, lunch; everything else is <unk> = 1.
    let c2 = classes(None, 2);
    let d2 = load_text(&train, None, &c2, 5, None).unwrap();
    assert_eq!(
        d2.info.vocabulary.tokens(),
        ["<pad>", "<unk>", "win", "now", "lunch"]
    );
    assert_eq!(d2.train.x.data[..5], [0., 2., 1., 3., 1.]);
    // max_vocab counts the specials: 4 leaves win and now.
    let c3 = classes(Some(4), 1);
    let d3 = load_text(&train, None, &c3, 5, None).unwrap();
    assert_eq!(
        d3.info.vocabulary.tokens(),
        ["<pad>", "<unk>", "win", "now"]
    );
    assert_eq!(d3.info.vocabulary.encode("WIN lunch"), [2, 1]);
    // Only the tokens the examples keep are counted: with T = 2, `now`
    // (3 times in the file, once in the first two tokens) ranks last, and
    // `!`, `at`, `free`, ... get no id.
    let d2 = load_text(&train, None, &c, 2, None).unwrap();
    assert_eq!(
        d2.info.vocabulary.tokens(),
        ["<pad>", "<unk>", "win", "cash", "see", "you", "a", "lunch", "now"]
    );
}

#[test]
fn classification_hostile_lines() {
    let dir = tempfile::tempdir().unwrap();
    let c = classes(None, 1);
    let cases: [(&[u8], &str); 6] = [
        (
            b"spam\tok\nspam win\n",
            "line 2: no TAB between the label and the text (expected `label<TAB>text`)",
        ),
        (b"\twin\n", "line 1: empty label before the TAB"),
        (b"spam\t  \n", "line 1: no text after the label `spam`"),
        (
            b"spam\twin\nham\t\xff\n",
            "line 2: not UTF-8 text (byte 0xff at column 5)",
        ),
        (
            b"",
            "no examples: the file is empty or holds only blank lines",
        ),
        (
            b"\n \n\t\n",
            "no examples: the file is empty or holds only blank lines",
        ),
    ];
    assert_errors(dir.path(), "tsv", &c, &cases);
    assert_eq!(
        test_file_error(dir.path(), "tsv", SPAM, b"ham\tlunch\neggs\tlunch\n", &c),
        "line 2: class `eggs` does not occur in the training file (classes: ham, spam)"
    );
    let train = dir.path().join("train.tsv");
    let c = classes(Some(2), 1);
    assert_eq!(
        error(&train, None, &c, 4),
        "max_vocab 2 leaves no room for tokens: the special tokens <pad> <unk> alone take 2 ids"
    );
}

const BROWN: &str = "The/AT dog/NN barks/VBZ ./.\n\nthe/AT 1/2/CD cup/NN\n";

#[test]
fn tagging_per_token_targets_with_padding_marked() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(dir.path(), "train.txt", BROWN.as_bytes());
    let test = write(dir.path(), "test.txt", b"a/AT dog/NN\n");
    let c = cfg(WORD, TextFormat::Tagging, None, 1);
    let TextData {
        train: d,
        test: t,
        info,
    } = load_text(&train, Some(&test), &c, 4, None).unwrap();
    assert_eq!(
        info.vocabulary.tokens(),
        ["<pad>", "<unk>", "the", "dog", "barks", ".", "1/2", "cup"]
    );
    // By count (AT 2, NN 2), then first appearance.
    let tags = ["AT", "NN", "VBZ", ".", "CD"].map(String::from);
    assert_eq!(info.labels.as_deref(), Some(&tags[..]));
    assert_eq!(d.x.data, vec![2., 3., 4., 5., 2., 6., 7., 0.]);
    // The tag after the last `/`: 1/2/CD is `1/2` tagged CD.
    assert_eq!(d.y, vec![0., 1., 2., 3., 0., 4., 1., PAD_LABEL]);
    assert_eq!((d.target_shape.clone(), d.classes), (vec![4], Some(5)));
    assert_eq!(
        d.target_mask(),
        [true, true, true, true, true, true, true, false]
    );
    assert_eq!(d.origin.as_ref().unwrap().lines, Some(vec![1, 3]));
    let t = t.unwrap();
    assert_eq!(t.x.data, vec![1., 3., 0., 0.]);
    assert_eq!(t.y, vec![0., 1., PAD_LABEL, PAD_LABEL]);
    // A sentence longer than T keeps its first T words and tags.
    let d3 = load_text(&train, None, &c, 3, None).unwrap().train;
    assert_eq!(
        (d3.x.data[..3].to_vec(), d3.y[..3].to_vec()),
        (vec![2., 3., 4.], vec![0., 1., 2.])
    );
    // ... and says so, since its last tag is then never scored.
    assert_eq!(d.truncation_note(), None);
    let note = d3.truncation_note().unwrap();
    assert!(
        note.ends_with(
            "1 of 2 examples are longer than the model's 3 tokens; their 1 later tokens are \
             not read and not scored"
        ),
        "{note}"
    );
    // cross_entropy on a [4, 5] output takes the per-token targets,
    // padding included (it leaves padded positions out).
    let c = d.check_targets(Loss::CrossEntropy, &[4, 5]).unwrap();
    assert_eq!((c.classes, c.y[7]), (Some(5), PAD_LABEL));
    // One tag per sentence is not what a tagger's targets are.
    let e = load_text(
        &train,
        None,
        &cfg(WORD, TextFormat::Tagging, None, 1),
        4,
        None,
    )
    .unwrap()
    .train
    .check_targets(Loss::CrossEntropy, &[5])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("the data has 4 target values per example"),
        "{e}"
    );
}

#[test]
fn tagging_hostile_lines() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(WORD, TextFormat::Tagging, None, 1);
    let cases: [(&[u8], &str); 3] = [
        (
            b"the/AT dog\n",
            "line 1: token 2 `dog` has no `/TAG` (expected word/TAG)",
        ),
        (
            b"/NN\n",
            "line 1: token 1 `/NN` has an empty word (expected word/TAG)",
        ),
        (
            b"ok/NN\ndog/\n",
            "line 2: token 1 `dog/` has an empty tag (expected word/TAG)",
        ),
    ];
    assert_errors(dir.path(), "txt", &c, &cases);
    assert_eq!(
        test_file_error(dir.path(), "txt", BROWN, b"a/AT dog/JJ\n", &c),
        "line 1: tag `JJ` does not occur in the training file (tags: AT, NN, VBZ, ., CD)"
    );
    let train = dir.path().join("train.txt");
    let c = cfg(CHAR, TextFormat::Tagging, None, 1);
    assert_eq!(
        error(&train, None, &c, 4),
        "tagging reads word/TAG tokens; it needs `text: word(...)`, not `char`"
    );
}

#[test]
fn language_model_lines_and_stream() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(dir.path(), "words.txt", b"ab\nba\nabc\n");
    let lines = lm_format(false, true);
    let d = load_text(&train, None, &cfg(CHAR, lines, None, 1), 4, None).unwrap();
    assert_eq!(
        d.info.vocabulary.tokens(),
        ["<pad>", "<unk>", "<bos>", "<eos>", "a", "b", "c"]
    );
    assert_eq!(d.info.labels, None);
    let t = d.train;
    #[rustfmt::skip]
    assert_eq!(t.x.data, vec![
        2., 4., 5., 3., // <bos> a b <eos>
        2., 5., 4., 3.,
        2., 4., 5., 6., // <bos> a b c (its <eos> is the last target)
    ]);
    #[rustfmt::skip]
    assert_eq!(t.y, vec![
        4., 5., 3., PAD_LABEL,
        5., 4., 3., PAD_LABEL,
        4., 5., 6., 3.,
    ]);
    assert_eq!((t.target_shape.clone(), t.classes), (vec![4], Some(7)));
    // Without <bos>: the first input is the first character.
    let no_bos = lm_format(false, false);
    let t = load_text(&train, None, &cfg(CHAR, no_bos, None, 1), 3, None)
        .unwrap()
        .train;
    assert_eq!(
        (t.x.data[..3].to_vec(), t.y[..3].to_vec()),
        (vec![4., 5., 3.], vec![5., 3., PAD_LABEL])
    );

    assert_eq!(t.truncation_note(), None);
    // T = 2 with <bos>: a line keeps <bos> and two characters, so `c`
    // (third in `abc`) gets no id, and every line loses targets: ab<eos>
    // and ba<eos> one each, abc<eos> two.
    let cut = load_text(&train, None, &cfg(CHAR, lines, None, 1), 2, None).unwrap();
    let note = cut.train.truncation_note().unwrap();
    assert!(
        note.contains("3 of 3 examples are longer than the model's 2 tokens; their 4 later"),
        "{note}"
    );
    let v = cut.info.vocabulary;
    assert_eq!(v.tokens(), ["<pad>", "<unk>", "<bos>", "<eos>", "a", "b"]);

    // Stream: a b <eos> b a <eos> a b c <eos>, windows of 4 overlapping by one.
    let stream = lm_format(true, true);
    let t = load_text(&train, None, &cfg(CHAR, stream, None, 1), 3, None)
        .unwrap()
        .train;
    assert_eq!(t.x.data, vec![4., 5., 3., 5., 4., 3., 4., 5., 6.]);
    assert_eq!(t.y, vec![5., 3., 5., 4., 3., 4., 5., 6., 3.]);
    assert!(t.target_mask().iter().all(|&m| m));
    assert_eq!(t.origin.as_ref().unwrap().lines, Some(vec![1, 2, 3]));
    assert_eq!(
        error(&train, None, &cfg(CHAR, stream, None, 1), 20),
        "the text holds 10 tokens (with one <eos> per line), too few for one window of 21 (the model's input length 20 plus the next token)"
    );
}

#[test]
fn vocabulary_and_names_travel_with_weights_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(dir.path(), "train.tsv", SPAM.as_bytes());
    let c = classes(None, 2);
    let info = load_text(&train, None, &c, 5, None).unwrap().info;

    let mut w = Weights::new("m");
    w.insert(
        "fc.weight",
        Tensor::new(vec![1, 2], vec![0.5, -0.5]).unwrap(),
    );
    info.attach(&mut w);
    let path = dir.path().join("w.safetensors");
    w.save(&path).unwrap();
    let loaded = Weights::load(&path).unwrap();
    assert_eq!(TextInfo::from_weights(&loaded).unwrap(), Some(info.clone()));
    assert_eq!(
        loaded.metadata("data.vocabulary"),
        Some(
            r#"{"tokenizer":"word","lowercase":true,"specials":2,"tokens":["<pad>","<unk>","win","now","lunch"]}"#
        )
    );
    assert_eq!(loaded.metadata("data.labels"), Some(r#"["ham","spam"]"#));
    assert_eq!(TextInfo::from_weights(&Weights::new("m")).unwrap(), None);

    let ck = Checkpoint {
        model: "m".into(),
        weights: w.clone(),
        state: vec![],
        position: Position::default(),
        settings: vec![],
    };
    let ckdir = dir.path().join("ck");
    ck.save(&ckdir).unwrap();
    let back = Checkpoint::load(&ckdir).unwrap();
    assert_eq!(
        TextInfo::from_weights(&back.weights).unwrap(),
        Some(info.clone())
    );
    let copy = Weights::load(ckdir.join("weights.safetensors")).unwrap();
    assert_eq!(TextInfo::from_weights(&copy).unwrap(), Some(info.clone()));

    // Another file read with the saved vocabulary: the same ids, nothing
    // rebuilt from it.
    let other = write(dir.path(), "other.tsv", b"spam\tlunch lunch zebra\n");
    let d = load_text(&other, None, &c, 4, Some(&info)).unwrap();
    assert_eq!(d.train.x.data, vec![0., 4., 4., 1.]);
    assert_eq!(d.info.vocabulary, info.vocabulary);
    let lm = cfg(WORD, lm_format(true, true), None, 1);
    let e = load_text(&other, None, &lm, 4, Some(&info))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "{}: the weights were trained on `classification` data (Classification {{ pad: Start }}), but this data \
             is read as `language_model` (LanguageModel {{ stream: true, bos: true }})",
            other.display()
        )
    );
}

fn graph(src: &str) -> netc_compiler::Graph {
    let ast = netc_lang::parse(src).unwrap_or_else(|d| panic!("{:?}", d.0));
    let c = netc_compiler::check(&ast);
    assert!(!c.has_errors(), "{:?}", c.diagnostics);
    c.graphs.into_iter().next().unwrap()
}

#[test]
fn load_for_model_takes_t_from_the_input_and_checks_targets() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(dir.path(), "train.tsv", SPAM.as_bytes());
    let c = classes(None, 1);
    let g = graph("model m { input w: [6]\n w -> dense(2) -> softmax -> y\n output y }");
    let (d, test, info) =
        load_text_for_model(&g, &train, None, &c, None, Some(Loss::CrossEntropy)).unwrap();
    assert_eq!((d.x.shape.clone(), test.is_none()), (vec![4, 6], true));
    assert_eq!(info.labels.unwrap().len(), 2);
    let g3 = graph("model m { input w: [6]\n w -> dense(3) -> softmax -> y\n output y }");
    // Two classes in the data, three outputs: allowed (a class may be absent).
    assert!(load_text_for_model(&g3, &train, None, &c, None, Some(Loss::CrossEntropy)).is_ok());
    let g1 = graph("model m { input w: [6]\n w -> dense(1) -> softmax -> y\n output y }");
    assert!(load_text_for_model(&g1, &train, None, &c, None, Some(Loss::CrossEntropy)).is_err());
    let gi =
        graph("model m { input w: [6, 1]\n w -> flatten -> dense(2) -> softmax -> y\n output y }");
    let e = load_text_for_model(&gi, &train, None, &c, None, None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "a text data set gives each example as a sequence of token ids, so the model's input must have shape [T] (T tokens); `w` has shape [6, 1]"
    );
}

fn tiny(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/text/tiny")
        .join(name)
}

/// The shipped fixtures give the ids that `benches/reference/textdata.py`
/// (the JAX references' data rules) gives them: the same word vocabulary
/// (count ≥ 2, at most 20,000, ties by first appearance), the same tag
/// order, the same padding at the end. The expected values were printed by
/// that script on `data/text/tiny`.
#[test]
fn shipped_fixtures_match_the_reference_rules() {
    let words = |min| TextOptions {
        tokenizer: WORD,
        max_vocab: Some(20000),
        min_count: min,
        unknown: netc_compiler::train::UnknownWords::Single,
    };
    let spam = TextConfig {
        options: words(2),
        format: TextFormat::Classification { pad: Pad::End },
    };
    let d = load_text(
        &tiny("spam_train.tsv"),
        Some(&tiny("spam_test.tsv")),
        &spam,
        200,
        None,
    )
    .unwrap();
    let v = &d.info.vocabulary;
    assert_eq!(v.len(), 177);
    assert_eq!(
        v.tokens()[..12],
        ["<pad>", "<unk>", ".", ":", ",", "/", "-", "the", "!", "to", ">", "\""]
    );
    // The first mail: 82 tokens, then padding.
    let x0 = &d.train.x.data[..200];
    assert_eq!(
        x0[..12],
        [34., 34., 42., 4., 4., 4., 4., 4., 4., 4., 4., 4.]
    );
    assert!(x0[81] != 0.0 && x0[82..].iter().all(|&i| i == 0.0));
    assert_eq!((d.train.len(), d.test.as_ref().unwrap().len()), (30, 10));
    assert_eq!(d.info.labels.as_deref().unwrap(), ["ham", "spam"]);
    let mut w = Weights::new("m");
    d.info.attach(&mut w);
    assert_eq!(
        w.metadata("data.format"),
        Some(r#"{"format":"classification","stream":false,"bos":false,"pad":"end"}"#)
    );
    assert_eq!(TextInfo::from_weights(&w).unwrap().unwrap(), d.info);

    let brown = TextConfig {
        options: words(2),
        format: TextFormat::Tagging,
    };
    let d = load_text(&tiny("brown_train.txt"), None, &brown, 48, None).unwrap();
    assert_eq!(d.info.vocabulary.len(), 62);
    assert_eq!(
        d.info.vocabulary.tokens()[..8],
        ["<pad>", "<unk>", "the", ".", ",", "of", "a", "said"]
    );
    let tags = d.info.labels.as_ref().unwrap();
    assert_eq!(tags.len(), 47);
    assert_eq!(tags[..8], ["NN", "IN", "AT", "NP", ".", "JJ", "NNS", "VBD"]);
    assert_eq!(
        d.train.x.data[..10],
        [2., 17., 35., 36., 15., 7., 37., 38., 1., 5.]
    );
    assert_eq!(d.train.y[..10], [2., 3., 0., 5., 0., 7., 19., 2., 0., 1.]);
    // The tiny test split has tags its training split lacks; the reference
    // appends them, netc refuses (a model cannot have learned them).
    let e = error(
        &tiny("brown_train.txt"),
        Some(&tiny("brown_test.txt")),
        &brown,
        48,
    );
    assert!(
        e.starts_with("line 3: tag `BEG` does not occur in the training file (tags: NN, IN, AT,"),
        "{e}"
    );
}

/// The compressed corpora read as their plain text (README counts).
#[test]
fn shipped_gzip_corpus_reads() {
    let words = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/text/words_test.txt.gz");
    let lm = TextConfig {
        options: TextOptions {
            tokenizer: CHAR,
            max_vocab: None,
            min_count: 1,
            unknown: netc_compiler::train::UnknownWords::Single,
        },
        format: lm_format(false, true),
    };
    let d = load_text(&words, None, &lm, 23, None).unwrap();
    // 6,463 words of a-z: 26 letters after the 4 specials.
    assert_eq!((d.train.len(), d.info.vocabulary.len()), (6463, 30));
}
