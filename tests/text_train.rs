//! `netc train` on a text classification file named in the train section
//! (with a separate test file), the vocabulary and class names it writes
//! into the weights, `netc eval` reading text with them, and a hostile
//! text file's one-line error.

mod common;
use common::netc;
use netc_runtime::data::TextInfo;
use netc_runtime::Weights;

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
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("spam.net");
    std::fs::write(&net, MODEL).unwrap();
    std::fs::write(dir.path().join("train.tsv"), TRAIN).unwrap();
    std::fs::write(dir.path().join("test.tsv"), "ham\tlunch\nspam\twin now\n").unwrap();
    let w = dir.path().join("w.safetensors");
    let ck = dir.path().join("ck");
    let (code, out, err) = netc(&[
        "train",
        net.to_str().unwrap(),
        "-o",
        w.to_str().unwrap(),
        "--checkpoint",
        ck.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("training `spam` on 6 examples"), "{err}");
    assert!(
        out.contains("test: loss") && out.contains("on 2 examples"),
        "{out}"
    );

    let weights = Weights::load(&w).unwrap();
    let info = TextInfo::from_weights(&weights)
        .unwrap()
        .expect("text metadata");
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
    let (code, out, err) = netc(&[
        "train",
        net.to_str().unwrap(),
        "--checkpoint",
        ck.to_str().unwrap(),
        "--resume",
        "--epochs",
        "3",
        "--threads",
        "1",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("epoch 3/3") && !out.contains("epoch 2/3"),
        "{out}"
    );

    // Fine-tuning from those weights on another file keeps their ids.
    std::fs::write(
        dir.path().join("other.tsv"),
        "ham\tat at at at noon\nspam\tprize prize now\n",
    )
    .unwrap();
    let w2 = dir.path().join("w2.safetensors");
    let (code, out, err) = netc(&[
        "train",
        net.to_str().unwrap(),
        "--data",
        dir.path().join("other.tsv").to_str().unwrap(),
        "--init-from",
        w.to_str().unwrap(),
        "-o",
        w2.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let tuned = Weights::load(&w2).unwrap();
    assert_eq!(
        tuned.metadata("data.vocabulary"),
        weights.metadata("data.vocabulary")
    );

    let test = dir.path().join("test.tsv");
    let (code, out, err) = netc(&[
        "eval",
        net.to_str().unwrap(),
        "--weights",
        w.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.starts_with("2 examples: loss"), "{out}");
}

#[test]
fn a_hostile_text_file_is_one_line_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("spam.net");
    std::fs::write(&net, MODEL).unwrap();
    std::fs::write(dir.path().join("train.tsv"), "spam\twin\nham lunch\n").unwrap();
    std::fs::write(dir.path().join("test.tsv"), "ham\tlunch\n").unwrap();
    let (code, out, err) = netc(&["train", net.to_str().unwrap(), "--threads", "1"]);
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

const LM: &str = "model lm {
  input w: [4]
  w -> reshape([4, 1]) -> dense(16) as out -> softmax -> probs
  output probs
}

train lm {
  loss: cross_entropy
  optimizer: adam(lr: 0.05)
  batch: 2
  epochs: 3
  metrics: [accuracy]
  data: \"lm.txt\"
  text: word(max_vocab: 16)
  format: language_model(stream: true)
}
";

#[test]
fn a_language_model_trains_on_next_token_targets_of_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("lm.net");
    std::fs::write(&net, LM).unwrap();
    let text = dir.path().join("lm.txt");
    std::fs::write(
        &text,
        "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n",
    )
    .unwrap();
    let w = dir.path().join("w.safetensors");
    let (code, out, err) = netc(&[
        "train",
        net.to_str().unwrap(),
        "-o",
        w.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    // 17 word ids + 3 <eos> = 20; (20 - 1) / 4 = 4 windows.
    assert!(err.contains("training `lm` on 4 examples"), "{err}");
    assert!(out.contains("epoch 3/3  loss"), "{out}");
    let info = TextInfo::from_weights(&Weights::load(&w).unwrap())
        .unwrap()
        .unwrap();
    // 9 distinct words + 4 specials, under max_vocab.
    assert_eq!(info.vocabulary.len(), 13);
    assert_eq!(info.vocabulary.tokens()[4..6], ["the", "cat"]);
    let p = dir.path().join("p.npy");
    let (code, out, err) = netc(&[
        "predict",
        net.to_str().unwrap(),
        "--weights",
        w.to_str().unwrap(),
        "--input",
        text.to_str().unwrap(),
        "-o",
        p.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("wrote predictions [4, 4, 16]"), "{out}");
}

const TAGGER: &str = "model tagger {
  input w: [4]
  w -> reshape([4, 1]) -> dense(5) as out -> softmax -> probs
  output probs
}

train tagger {
  loss: cross_entropy
  optimizer: adam(lr: 0.05)
  batch: 2
  epochs: 2
  metrics: [accuracy]
  data: \"brown.txt\"
  test: \"brown_test.txt\"
  text: word()
  format: tagging
}
";

#[test]
fn a_tagger_trains_on_padded_per_token_targets() {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("tagger.net");
    std::fs::write(&net, TAGGER).unwrap();
    std::fs::write(
        dir.path().join("brown.txt"),
        "The/AT dog/NN barks/VBZ ./.\n\nthe/AT 1/2/CD cup/NN\nA/AT cup/NN\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("brown_test.txt"), "the/AT dog/NN\n").unwrap();
    let w = dir.path().join("w.safetensors");
    let (code, out, err) = netc(&[
        "train",
        net.to_str().unwrap(),
        "-o",
        w.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("training `tagger` on 3 examples"), "{err}");
    assert!(
        out.contains("test: loss") && out.contains("on 1 examples"),
        "{out}"
    );
    let info = TextInfo::from_weights(&Weights::load(&w).unwrap())
        .unwrap()
        .unwrap();
    // AT 3, NN 3, then VBZ, ., CD in order of appearance.
    assert_eq!(info.labels.unwrap(), ["AT", "NN", "VBZ", ".", "CD"]);
}
