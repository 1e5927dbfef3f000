//! `netc predict -o FILE.txt` on a text model writes its predictions in the
//! data's own layout: `label<TAB>text` for a classifier, `word/TAG ...` for
//! a tagger, with the class and tag names the weights carry.

mod common;
use common::netc;

fn train_and_predict(model: &str, data: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("m.net");
    std::fs::write(&net, model).unwrap();
    let file = dir.path().join("data.txt");
    std::fs::write(&file, data).unwrap();
    let w = dir.path().join("w.safetensors");
    let (net, w, file) = (
        net.to_str().unwrap(),
        w.to_str().unwrap(),
        file.to_str().unwrap(),
    );
    let (code, out, err) = netc(&["train", net, "-o", w, "--threads", "1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let txt = dir.path().join("pred.txt");
    let (code, out, err) = netc(&[
        "predict",
        net,
        "--weights",
        w,
        "--input",
        file,
        "-o",
        txt.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    (out, std::fs::read_to_string(txt).unwrap())
}

#[test]
fn a_classifier_writes_label_and_text() {
    let model = "model m {
  input words: tokens[4]
  words -> embedding(12, 8) -> lstm(8) -> dense(2) -> softmax -> y
  output y
}
train m {
  loss: cross_entropy  optimizer: adam(lr: 0.05)  batch: 4  epochs: 30  seed: 2
  data: \"data.txt\"  text: word()  format: classification
}
";
    let data = "spam\twin cash now\nham\tsee you at lunch\nspam\twin a prize\nham\tlunch at noon\n";
    let (out, text) = train_and_predict(model, data);
    assert!(out.contains("wrote 4 predicted labels"), "{out}");
    // Padding (at the start) is left out; the text reads as the vocabulary
    // has it, each text its first 4 tokens.
    assert_eq!(text, data);
}

#[test]
fn a_tagger_writes_word_tag_pairs() {
    let model = "model m {
  input words: tokens[4]
  words -> embedding(10, 8) -> lstm(8, return_sequences: true) -> dense(3) -> softmax -> y
  output y
}
train m {
  loss: cross_entropy  optimizer: adam(lr: 0.05)  batch: 2  epochs: 40  seed: 2
  data: \"data.txt\"  text: word()  format: tagging
}
";
    let data = "the/DT cat/NN sat/VB\nthe/DT dog/NN ran/VB\na/DT cat/NN ran/VB\n";
    let (out, text) = train_and_predict(model, data);
    assert!(out.contains("wrote 3 predicted tag sequences"), "{out}");
    assert_eq!(
        text,
        "the/DT cat/NN sat/VB\nthe/DT dog/NN ran/VB\na/DT cat/NN ran/VB\n"
    );
}
