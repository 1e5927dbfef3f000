//! Generation with a sequence model: the model's single-step form
//! ([`netc_compiler::step`]) compiled once, run one token at a time for a
//! batch of samples, each recurrent layer's state carried from one call to
//! the next (a prompt is read once, never re-run per generated token), and
//! the next token drawn from the output distribution with a temperature
//! and an optional top-k cut.
//!
//! Tokens are ids as `f32`, the way token inputs hold them. The text side
//! (vocabulary, prompt encoding, stopping at an end token) belongs to the
//! caller.

use crate::exec::{ExecError, Executable};
use crate::tensor::Tensor;
use crate::train::TrainError;
use crate::weights::Weights;
use netc_compiler::codegen::cpu::KernelPath;
use netc_compiler::op::{Activation, Op};
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};
use netc_compiler::step::{step_graph, StepError, StepGraph};
use netc_compiler::Graph;

/// Why generation could not run.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The model has no single-step form.
    #[error(transparent)]
    Step(#[from] StepError),
    /// The step input is not one token per step.
    #[error("generation feeds one token id per step; the model's input `{input}` takes {shape:?} per step")]
    NotTokens {
        /// The input.
        input: String,
        /// Its per-step shape.
        shape: Vec<usize>,
    },
    /// Compiling or running the step failed.
    #[error(transparent)]
    Run(#[from] TrainError),
    /// A setting is out of range.
    #[error("{0}")]
    Setting(String),
}

impl From<ExecError> for GenerateError {
    fn from(e: ExecError) -> Self {
        GenerateError::Run(e.into())
    }
}

/// A compiled single-step model for `samples` sequences at once, with their
/// recurrent states.
pub struct Generator {
    exe: Executable,
    step: StepGraph,
    samples: usize,
    /// The model's output is a distribution (a final softmax), not logits.
    probabilities: bool,
    /// Each state input's buffer and the matching output's, with the state.
    states: Vec<(usize, usize, Vec<f32>)>,
    input: String,
    /// The input's shape, `[samples, 1]` or `[samples, 1, 1]`.
    input_shape: Vec<usize>,
    classes: usize,
}

impl Generator {
    /// Compiles `g`'s single-step form for `samples` sequences with
    /// `weights`; the states start at zero, as the trained model's do.
    pub fn new(
        g: &Graph,
        weights: &Weights,
        samples: usize,
        threads: usize,
    ) -> Result<Generator, GenerateError> {
        Self::new_with(g, weights, samples, threads, KernelPath::Auto)
    }

    /// [`Self::new`] with the contractions built by `kernels`.
    pub fn new_with(
        g: &Graph,
        weights: &Weights,
        samples: usize,
        threads: usize,
        kernels: KernelPath,
    ) -> Result<Generator, GenerateError> {
        if samples == 0 {
            return Err(GenerateError::Setting(
                "at least one sample is needed".into(),
            ));
        }
        let step = step_graph(g)?;
        let x = step.graph.node(step.graph.inputs[0]);
        let per_step = x.shape.as_ref().map_or(vec![], |s| s.0[1..].to_vec());
        if per_step.iter().product::<usize>() != 1 {
            return Err(GenerateError::NotTokens {
                input: x.name.clone(),
                shape: per_step,
            });
        }
        let input = x.name.clone();
        let out = step.graph.node(step.graph.outputs[0].1);
        let probabilities = matches!(out.op, Op::Activation(Activation::Softmax));
        let classes = out
            .shape
            .as_ref()
            .and_then(|s| s.0.last().copied())
            .unwrap_or(1);
        let p = Compilation::new(&step.graph, CompileOptions::at(OptLevel::O0))
            .program(samples)
            .map_err(TrainError::from)?;
        let buf = |list: &[netc_compiler::kernel::ir::Binding], name: &str| {
            list.iter().find(|b| b.name == name).map(|b| b.buf)
        };
        let mut states = Vec::new();
        for s in &step.states {
            let (Some(i), Some(o)) = (buf(&p.inputs, &s.name), buf(&p.outputs, &s.name)) else {
                return Err(GenerateError::Run(TrainError::Model(format!(
                    "the step program lost the state `{}`",
                    s.name
                ))));
            };
            states.push((i, o, vec![0.0; samples * s.len]));
        }
        let input_shape = p
            .inputs
            .iter()
            .find(|b| b.name == input)
            .map_or(vec![samples, 1], |b| b.shape.clone());
        let mut exe = Executable::compile_with(p, threads.max(1), kernels)?;
        exe.set_weights(weights)?;
        Ok(Generator {
            exe,
            step,
            samples,
            probabilities,
            states,
            input,
            input_shape,
            classes,
        })
    }

    /// The number of classes (tokens) each step's distribution covers.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The recurrent layers whose state is carried, in order.
    pub fn state_layers(&self) -> Vec<&str> {
        self.step.states.iter().map(|s| s.layer.as_str()).collect()
    }

    /// Sets every state back to zero (a new sequence).
    pub fn reset(&mut self) {
        for (_, _, s) in &mut self.states {
            s.iter_mut().for_each(|v| *v = 0.0);
        }
    }

    /// Feeds one token per sample and returns each sample's next-token
    /// distribution (`samples × classes`, rows summing to 1), advancing
    /// the states.
    pub fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, GenerateError> {
        if tokens.len() != self.samples {
            return Err(GenerateError::Setting(format!(
                "{} tokens for {} samples",
                tokens.len(),
                self.samples
            )));
        }
        let x = Tensor::new(
            self.input_shape.clone(),
            tokens.iter().map(|&t| t as f32).collect(),
        )
        .map_err(|e| GenerateError::Setting(e.to_string()))?;
        self.exe.set_input(&self.input, &x)?;
        for (i, _, s) in &self.states {
            self.exe.write_buffer(*i, s)?;
        }
        self.exe.run()?;
        for (_, o, s) in &mut self.states {
            s.copy_from_slice(self.exe.buffer(*o));
        }
        let out = self
            .exe
            .output(0)
            .ok_or_else(|| TrainError::Model("the step program has no output".into()))?;
        let c = self.classes;
        Ok(out
            .data
            .chunks(c)
            .map(|row| {
                if self.probabilities {
                    row.to_vec()
                } else {
                    softmax(row)
                }
            })
            .collect())
    }
}

fn softmax(row: &[f32]) -> Vec<f32> {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// How the next token is drawn from a distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Divides the log-probabilities: below 1 sharpens towards the most
    /// likely tokens, above 1 flattens; 0 always takes the most likely.
    pub temperature: f32,
    /// Only the `k` most likely tokens are candidates (`None`: all).
    pub top_k: Option<usize>,
}

impl Sampling {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), GenerateError> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(GenerateError::Setting(format!(
                "--temperature must be a finite number >= 0, not {}",
                self.temperature
            )));
        }
        if self.top_k == Some(0) {
            return Err(GenerateError::Setting("--top-k must be at least 1".into()));
        }
        Ok(())
    }

    /// Draws a token from `probs` with uniform random number `u` in
    /// `[0, 1)`. Tokens in `banned` are never drawn (e.g. padding).
    pub fn draw(&self, probs: &[f32], u: f64, banned: &[usize]) -> usize {
        let mut order: Vec<usize> = (0..probs.len()).filter(|i| !banned.contains(i)).collect();
        // Most likely first; ties by id, so the draw is deterministic.
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        if let Some(k) = self.top_k {
            order.truncate(k.max(1));
        }
        let Some(&best) = order.first() else {
            return 0;
        };
        if self.temperature == 0.0 {
            return best;
        }
        // p^(1/T), renormalized over the candidates: logits divided by T.
        let inv = 1.0 / self.temperature as f64;
        let w: Vec<f64> = order
            .iter()
            .map(|&i| (probs[i].max(0.0) as f64).powf(inv))
            .collect();
        let total: f64 = w.iter().sum();
        if !(total > 0.0 && total.is_finite()) {
            return best;
        }
        let mut acc = 0.0;
        for (&i, wi) in order.iter().zip(&w) {
            acc += wi / total;
            if u < acc {
                return i;
            }
        }
        *order.last().unwrap_or(&best)
    }
}

/// A small deterministic generator (SplitMix64) for sampling: the same
/// seed gives the same samples on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_and_temperature() {
        let p = [0.1, 0.6, 0.3];
        let greedy = Sampling {
            temperature: 0.0,
            top_k: None,
        };
        assert_eq!(greedy.draw(&p, 0.99, &[]), 1);
        assert_eq!(greedy.draw(&p, 0.99, &[1]), 2);
        let one = Sampling {
            temperature: 1.0,
            top_k: None,
        };
        // Candidates by probability: 1 (0.6), 2 (0.3), 0 (0.1).
        assert_eq!(one.draw(&p, 0.59, &[]), 1);
        assert_eq!(one.draw(&p, 0.61, &[]), 2);
        assert_eq!(one.draw(&p, 0.95, &[]), 0);
        let top2 = Sampling {
            temperature: 1.0,
            top_k: Some(2),
        };
        // Renormalized over {1, 2}: 2/3 and 1/3.
        assert_eq!(top2.draw(&p, 0.66, &[]), 1);
        assert_eq!(top2.draw(&p, 0.67, &[]), 2);
        assert_eq!(top2.draw(&p, 0.999, &[]), 2);
        // T = 0.5 squares: 0.36, 0.09, 0.01 of 0.46.
        let sharp = Sampling {
            temperature: 0.5,
            top_k: None,
        };
        assert_eq!(sharp.draw(&p, 0.78, &[]), 1);
        assert_eq!(sharp.draw(&p, 0.79, &[]), 2);
        assert_eq!(sharp.draw(&p, 0.98, &[]), 0);
    }

    #[test]
    fn settings_are_checked() {
        for (t, k) in [(-1.0, None), (f32::NAN, None), (1.0, Some(0))] {
            let s = Sampling {
                temperature: t,
                top_k: k,
            };
            assert!(s.validate().is_err(), "{s:?}");
        }
    }

    #[test]
    fn rng_is_uniform_and_seeded() {
        let mut a = Rng::new(5);
        let v: Vec<f64> = (0..1000).map(|_| a.uniform()).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = v.iter().sum::<f64>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
        assert_eq!(Rng::new(5).uniform(), v[0]);
    }
}
