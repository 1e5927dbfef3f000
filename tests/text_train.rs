//! `netc train` on a text classification file named in the train section
//! (with a separate test file), the vocabulary and class names it writes
//! into the weights, `netc eval` reading text with them, and a hostile
//! text file's one-line error.

mod common;
use common::netc;
use netc_runtime::data::TextInfo;
use netc_runtime::Weights;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// A temporary folder holding the model source `model` as `net_name` and
/// each `(name, contents)` of `files`; returns it with the model's path.
fn fixture(net_name: &str, model: &str, files: &[(&str, &str)]) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join(net_name);
    std::fs::write(&net, model).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    (dir, net)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `netc <command> <net> <extra...> --threads 1`.
fn netc1(command: &str, net: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![command, s(net)];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--threads", "1"]);
    netc(&args)
}

/// `netc train <net> -o <w> --threads 1`, which must succeed; returns its
/// (stdout, stderr).
fn train_to(net: &Path, w: &Path) -> (String, String) {
    let (code, out, err) = netc1("train", net, &["-o", s(w)]);
    assert_eq!(code, 0, "{out}\n{err}");
    (out, err)
}

/// The text metadata in the weights file `w`.
fn text_info(w: &Path) -> TextInfo {
    TextInfo::from_weights(&Weights::load(w).unwrap())
        .unwrap()
        .expect("text metadata")
}

const MODEL: &str = "model spam {
  input words: [6]
  words -> dense(8) as h -> relu -> dense(2) as out -> softmax -> probs
  output probs
}

train spam {
  loss: cross_entropy
  optimizer: adam(lr: 0.01)
  batch: 4
  epochs: 2
  metrics: [accuracy]
  data: \"train.tsv\"
  test: \"test.tsv\"
  text: word(min_count: 2)
  format: classification
}
";

const TRAIN: &str = "spam\tWin cash now!\nham\tSee you at lunch\nspam\twin a free prize, win now\n\nham\tlunch now?\nspam\tWIN WIN WIN\nham\tlunch at noon\n";

#[test]
fn train_writes_the_vocabulary_and_eval_reads_text_with_it() {
    let (dir, net) = fixture(
        "spam.net",
        MODEL,
        &[
            ("train.tsv", TRAIN),
            ("test.tsv", "ham\tlunch\nspam\twin now\n"),
        ],
    );
    let w = dir.path().join("w.safetensors");
    let ck = dir.path().join("ck");
    let (code, out, err) = netc1("train", &net, &["-o", s(&w), "--checkpoint", s(&ck)]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("training `spam` on 6 examples"), "{err}");
    assert!(
        out.contains("test: loss") && out.contains("on 2 examples"),
        "{out}"
    );

    let weights = Weights::load(&w).unwrap();
    let info = text_info(&w);
    // Counted over the 6 tokens each example keeps: win 6, lunch 3, now 2
    // (its third is the 7th token of line 3), at 2; the rest once.
    assert_eq!(
        info.vocabulary.tokens(),
        ["<pad>", "<unk>", "win", "lunch", "now", "at"]
    );
    assert_eq!(info.labels.unwrap(), ["ham", "spam"]);
    for f in ["weights.safetensors", "checkpoint.safetensors"] {
        let copy = Weights::load(ck.join(f)).unwrap();
        assert_eq!(
            copy.metadata("data.vocabulary"),
            weights.metadata("data.vocabulary"),
            "{f}"
        );
    }

    // Resuming re-reads the text into the same ids (the checkpoint's data
    // hash agrees) and trains on.
    let (code, out, err) = netc1(
        "train",
        &net,
        &["--checkpoint", s(&ck), "--resume", "--epochs", "3"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("epoch 3/3") && !err.contains("epoch 2/3"),
        "{err}"
    );

    // Fine-tuning from those weights on another file keeps their ids.
    std::fs::write(
        dir.path().join("other.tsv"),
        "ham\tat at at at noon\nspam\tprize prize now\n",
    )
    .unwrap();
    let w2 = dir.path().join("w2.safetensors");
    let other = dir.path().join("other.tsv");
    let (code, out, err) = netc1(
        "train",
        &net,
        &["--data", s(&other), "--init-from", s(&w), "-o", s(&w2)],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let tuned = Weights::load(&w2).unwrap();
    assert_eq!(
        tuned.metadata("data.vocabulary"),
        weights.metadata("data.vocabulary")
    );

    let test = dir.path().join("test.tsv");
    let (code, out, err) = netc1("eval", &net, &["--weights", s(&w), "--data", s(&test)]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.starts_with("2 examples: loss"), "{out}");
}

#[test]
fn a_hostile_text_file_is_one_line_naming_file_and_line() {
    let (dir, net) = fixture(
        "spam.net",
        MODEL,
        &[
            ("train.tsv", "spam\twin\nham lunch\n"),
            ("test.tsv", "ham\tlunch\n"),
        ],
    );
    let (code, out, err) = netc1("train", &net, &[]);
    assert_ne!(code, 0, "{out}\n{err}");
    let train = dir.path().join("train.tsv");
    let want = format!(
        "{}: line 2: no TAB between the label and the text (expected `label<TAB>text`)",
        train.display()
    );
    assert!(err.contains(&want), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("line 2")).count(),
        1,
        "{err}"
    );
}

/// A model `name` scoring each of 4 tokens over `classes` classes, trained
/// for `epochs` epochs with the train section's remaining `lines` (data,
/// text and format).
fn per_token_model(name: &str, classes: usize, epochs: usize, lines: &str) -> String {
    format!(
        "model {name} {{
  input w: [4]
  w -> reshape([4, 1]) -> dense({classes}) as out -> softmax -> probs
  output probs
}}

train {name} {{
  loss: cross_entropy
  optimizer: adam(lr: 0.05)
  batch: 2
  epochs: {epochs}
  metrics: [accuracy]
{lines}}}
"
    )
}

fn lm_model() -> String {
    per_token_model(
        "lm",
        16,
        3,
        "  data: \"lm.txt\"
  text: word(max_vocab: 16)
  format: language_model(stream: true)
",
    )
}

#[test]
fn a_language_model_trains_on_next_token_targets_of_a_stream() {
    let (dir, net) = fixture(
        "lm.net",
        &lm_model(),
        &[(
            "lm.txt",
            "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n",
        )],
    );
    let text = dir.path().join("lm.txt");
    let w = dir.path().join("w.safetensors");
    let (out, err) = train_to(&net, &w);
    // 17 word ids + 3 <eos> = 20; (20 - 1) / 4 = 4 windows.
    assert!(err.contains("training `lm` on 4 examples"), "{err}");
    assert!(err.contains("epoch 3/3  loss"), "{out}\n{err}");
    let info = text_info(&w);
    // 9 distinct words + 4 specials, under max_vocab.
    assert_eq!(info.vocabulary.len(), 13);
    assert_eq!(info.vocabulary.tokens()[4..6], ["the", "cat"]);
    let p = dir.path().join("p.npy");
    let (code, out, err) = netc(&[
        "predict",
        s(&net),
        "--weights",
        s(&w),
        "--input",
        s(&text),
        "-o",
        s(&p),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("wrote predictions [4, 4, 16]"), "{out}");
}

fn tagger_model() -> String {
    per_token_model(
        "tagger",
        5,
        2,
        "  data: \"brown.txt\"
  test: \"brown_test.txt\"
  text: word()
  format: tagging
",
    )
}

#[test]
fn a_tagger_trains_on_padded_per_token_targets() {
    let (dir, net) = fixture(
        "tagger.net",
        &tagger_model(),
        &[
            (
                "brown.txt",
                "The/AT dog/NN barks/VBZ ./.\n\nthe/AT 1/2/CD cup/NN\nA/AT cup/NN\n",
            ),
            ("brown_test.txt", "the/AT dog/NN\n"),
        ],
    );
    let w = dir.path().join("w.safetensors");
    let (out, err) = train_to(&net, &w);
    assert!(err.contains("training `tagger` on 3 examples"), "{err}");
    assert!(
        out.contains("test: loss") && out.contains("on 1 examples"),
        "{out}"
    );
    let info = text_info(&w);
    // AT 3, NN 3, then VBZ, ., CD in order of appearance.
    assert_eq!(info.labels.unwrap(), ["AT", "NN", "VBZ", ".", "CD"]);
}

/// A tagger over sentences of any length (`tokens[*]`): nothing is cut
/// (no truncation note), the targets follow each batch's own length, and
/// eval and predict read the test file at its own longest length.
#[test]
fn a_tagger_over_sentences_of_any_length() {
    let model = "model tagger {
  input w: tokens[*]
  w -> embedding(50, 8) as emb
    -> gru(8, return_sequences: true, bidirectional: true) as bi
    -> dense(5) as out -> softmax -> tags
  output tags
}

train tagger {
  loss: cross_entropy
  optimizer: adam(lr: 0.05)
  batch: 2
  epochs: 3
  bucket: true
  data: \"brown.txt\"
  test: \"brown_test.txt\"
  text: word()
  format: tagging
}
";
    let long: Vec<String> = (0..40).map(|i| format!("w{}/NN", i % 7)).collect();
    let (dir, net) = fixture(
        "tagger.net",
        model,
        &[
            (
                "brown.txt",
                &format!(
                    "The/AT dog/NN barks/VBZ ./.\nthe/AT cup/NN\nA/AT cup/NN\n{}\n",
                    long.join(" ")
                ),
            ),
            ("brown_test.txt", "the/AT dog/NN barks/VBZ\nA/AT dog/NN\n"),
        ],
    );
    let w = dir.path().join("w.safetensors");
    let (out, err) = train_to(&net, &w);
    assert!(!err.contains("longer than the model"), "{err}");
    let acc = |text: &str| {
        let l = text
            .lines()
            .find(|l| l.contains("accuracy"))
            .unwrap_or_else(|| panic!("{text}"));
        l.split("accuracy")
            .nth(1)
            .unwrap()
            .trim()
            .split('%')
            .next()
            .unwrap()
            .to_string()
    };
    let trained = acc(&out);
    let test = dir.path().join("brown_test.txt");
    let (code, eout, eerr) = netc1("eval", &net, &["--weights", s(&w), "--data", s(&test)]);
    assert_eq!(code, 0, "{eout}{eerr}");
    assert_eq!(acc(&eout), trained, "{eout}");
    let tagged = dir.path().join("tags.txt");
    let (code, pout, perr) = netc1(
        "predict",
        &net,
        &["--weights", s(&w), "--input", s(&test), "-o", s(&tagged)],
    );
    assert_eq!(code, 0, "{pout}{perr}");
    let text = std::fs::read_to_string(&tagged).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // One tag per word of each sentence, padding not written.
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0].split_whitespace().count(), 3, "{text}");
    assert_eq!(lines[1].split_whitespace().count(), 2, "{text}");
}
