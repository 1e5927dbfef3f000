//! `netc generate`: completions of a prompt from a language model trained
//! on text. The weights carry the vocabulary they were trained with; the
//! prompt is encoded with it (after `<bos>` when the model was trained
//! with one), read once through the model's single-step form, and then
//! each sample draws one token at a time until `<eos>` or `--max-len`.

use netc_compiler::train::{TextFormat, Tokenizer};
use netc_compiler::Graph;
use netc_runtime::data::text::{TextInfo, Vocabulary, BOS, EOS, PAD_ID};
use netc_runtime::generate::{Generator, Rng, Sampling};
use netc_runtime::Weights;
use std::path::Path;

/// What `netc generate` was asked for.
pub struct Request<'a> {
    /// The prompt text.
    pub prompt: &'a str,
    /// New tokens at most per sample.
    pub max_len: usize,
    /// How tokens are drawn.
    pub sampling: Sampling,
    /// Completions.
    pub samples: usize,
    /// Seed of the draws.
    pub seed: u64,
    /// Worker threads.
    pub threads: usize,
    /// `--kernels` / `NETC_KERNELS`.
    pub kernels: netc_compiler::codegen::cpu::KernelPath,
}

/// One completion: the generated text and whether it ended at `<eos>`.
pub struct Completion {
    /// The prompt followed by the generated tokens, decoded.
    pub text: String,
    /// Stopped at the end token (not at the length limit).
    pub ended: bool,
}

/// Generates `req.samples` completions of `req.prompt` with model `g`.
pub fn generate(g: &Graph, weights: &Path, req: &Request) -> Result<Vec<Completion>, String> {
    req.sampling.validate().map_err(|e| e.to_string())?;
    let w = Weights::load(weights).map_err(|e| e.to_string())?;
    let info = TextInfo::from_weights(&w)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "{}: the weights carry no vocabulary; `generate` needs a model trained on text \
                 (a `text:` setting in its train section)",
                weights.display()
            )
        })?;
    let vocab = &info.vocabulary;
    let mut gen = Generator::new_with(g, &w, req.samples, req.threads, req.kernels)
        .map_err(|e| e.to_string())?;
    if gen.classes() < vocab.len() {
        return Err(format!(
            "the model predicts {} classes but its vocabulary has {} tokens: generation needs \
             an output over the vocabulary (a language model)",
            gen.classes(),
            vocab.len()
        ));
    }
    let prompt = prompt_ids(&info, req.prompt);
    if prompt.is_empty() {
        return Err("the prompt is empty and the model has no <bos> to start from".into());
    }
    let eos = vocab.contains(EOS).then(|| vocab.id(EOS));
    // Never drawn: padding, <bos> (it only ever starts a sequence), and
    // outputs past the vocabulary (a model may have more than it needs).
    let mut banned: Vec<usize> = std::iter::once(PAD_ID as usize)
        .chain(vocab.len()..gen.classes())
        .collect();
    if vocab.contains(BOS) {
        banned.push(vocab.id(BOS) as usize);
    }
    let mut rng = Rng::new(req.seed);
    let mut probs = Vec::new();
    for &t in &prompt {
        probs = gen.step(&vec![t; req.samples]).map_err(|e| e.to_string())?;
    }
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); req.samples];
    let mut done = vec![false; req.samples];
    for _ in 0..req.max_len {
        let next: Vec<u32> = probs
            .iter()
            .zip(&done)
            .map(|(p, d)| {
                if *d {
                    PAD_ID
                } else {
                    req.sampling.draw(p, rng.uniform(), &banned) as u32
                }
            })
            .collect();
        for (s, &t) in next.iter().enumerate() {
            if done[s] {
                continue;
            }
            if Some(t) == eos {
                done[s] = true;
            } else {
                out[s].push(t);
            }
        }
        if done.iter().all(|d| *d) {
            break;
        }
        probs = gen.step(&next).map_err(|e| e.to_string())?;
    }
    Ok(out
        .into_iter()
        .zip(done)
        .map(|(ids, ended)| Completion {
            text: join(vocab, req.prompt, &ids),
            ended,
        })
        .collect())
}

/// The ids the model reads before generating: `<bos>` when the model was
/// trained with it, then the prompt's tokens.
fn prompt_ids(info: &TextInfo, prompt: &str) -> Vec<u32> {
    let v = &info.vocabulary;
    let mut ids = Vec::new();
    let bos = matches!(
        info.format,
        TextFormat::LanguageModel {
            bos: true,
            stream: false
        }
    );
    if bos && v.contains(BOS) {
        ids.push(v.id(BOS));
    }
    ids.extend(v.encode(prompt));
    ids
}

/// The prompt followed by the generated tokens, joined the way the
/// vocabulary decodes (characters directly, words with a space).
fn join(v: &Vocabulary, prompt: &str, ids: &[u32]) -> String {
    let tail = v.decode(ids);
    let sep = match v.tokenizer() {
        Tokenizer::Word { .. } if !prompt.is_empty() && !tail.is_empty() => " ",
        _ => "",
    };
    format!("{prompt}{sep}{tail}")
}
