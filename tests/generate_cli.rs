//! `netc generate`: a character language model trained through the CLI
//! completes a prompt with the word it learned, reproducibly for a seed,
//! and bad settings or a model without a vocabulary are one-line errors.

mod common;
use common::netc;

const LM: &str = "model lm {
  input chars: tokens[6]
  chars -> embedding(12, 8) as emb -> lstm(16, return_sequences: true) as l
        -> dense(12) as next -> softmax -> probs
  output probs
}

train lm {
  loss: cross_entropy
  optimizer: adam(lr: 0.02)
  batch: 8
  epochs: 40
  seed: 1
  data: \"words.txt\"
  text: char()
  format: language_model
}
";

/// Trains `model` through the CLI on two words: after "d" comes "deep",
/// after "l" comes "learn". Returns the directory, the `.net` file and the
/// weights file.
fn train_two_words(model: &str) -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("lm.net");
    std::fs::write(&net, model).unwrap();
    let words: String = (0..16)
        .map(|i| if i % 2 == 0 { "deep\n" } else { "learn\n" })
        .collect();
    std::fs::write(dir.path().join("words.txt"), words).unwrap();
    let w = dir.path().join("w.safetensors").display().to_string();
    let net = net.display().to_string();
    let (code, out, err) = netc(&["train", &net, "-o", &w, "--threads", "1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    (dir, net, w)
}

#[test]
fn a_character_model_completes_the_word_it_learned() {
    let (_dir, net, w) = train_two_words(LM);
    let (net, w) = (net.as_str(), w.as_str());
    let gen = |prompt: &str, extra: &[&str]| {
        let mut args = vec![
            "generate",
            net,
            "--weights",
            w,
            "--prompt",
            prompt,
            "--threads",
            "1",
        ];
        args.extend(extra);
        netc(&args)
    };
    let (code, out, err) = gen("d", &["--temperature", "0", "--samples", "2"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out, "deep\ndeep\n", "{err}");
    let (code, out, _) = gen("le", &["--temperature", "0", "--samples", "1"]);
    assert_eq!(code, 0);
    assert_eq!(out, "learn\n");
    // A length limit cuts the completion and marks it.
    let (_, out, _) = gen(
        "l",
        &["--temperature", "0", "--samples", "1", "--max-len", "2"],
    );
    assert_eq!(out, "lea …\n");
    // Sampling: the same seed, the same completions.
    let sampled = |seed: &str| gen("", &["--samples", "6", "--seed", seed, "--top-k", "3"]);
    let (code, a, err) = sampled("5");
    assert_eq!(code, 0, "{err}");
    assert_eq!(a, sampled("5").1);
    assert_eq!(a.lines().count(), 6, "{a}");
    for line in a.lines() {
        assert!(line.chars().all(|c| "delanrp …".contains(c)), "{a}");
    }
    // Bad settings.
    let (code, _, err) = gen("d", &["--temperature=-1"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--temperature must be a finite number >= 0"),
        "{err}"
    );
    let (code, _, err) = gen("d", &["--top-k", "0"]);
    assert_eq!(code, 1);
    assert!(err.contains("--top-k must be at least 1"), "{err}");
}

#[test]
fn a_model_without_a_vocabulary_cannot_generate() {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("m.net");
    std::fs::write(
        &net,
        "model m { input x: tokens[4]  x -> embedding(5, 2) -> lstm(3, return_sequences: true) -> dense(5) -> softmax -> y  output y }",
    )
    .unwrap();
    let w = dir.path().join("w.safetensors");
    let (code, out, err) = netc(&["init", net.to_str().unwrap(), "-o", w.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, _, err) = netc(&[
        "generate",
        net.to_str().unwrap(),
        "--weights",
        w.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the weights carry no vocabulary"), "{err}");
}

/// The same language model over words of any length (`tokens[*]`): it
/// trains on each batch at its own length and generates step by step.
#[test]
fn a_character_model_of_any_length_completes_the_word() {
    let (_dir, net, w) = train_two_words(&LM.replace("tokens[6]", "tokens[*]"));
    for (prompt, want) in [("d", "deep\n"), ("le", "learn\n")] {
        let (code, out, err) = netc(&[
            "generate",
            &net,
            "--weights",
            &w,
            "--prompt",
            prompt,
            "--temperature",
            "0",
            "--samples",
            "1",
            "--threads",
            "1",
        ]);
        assert_eq!(code, 0, "{out}\n{err}");
        assert_eq!(out, want, "{err}");
    }
}
