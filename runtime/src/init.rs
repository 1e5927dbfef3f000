//! Deterministic parameter initialization from a `u64` seed.
//!
//! # Rules (Keras-like)
//!
//! | parameter | initializer |
//! |---|---|
//! | conv2d / dense `weight`, layer output feeds `relu` or `leaky_relu` directly | He normal, std = √(2 / fan_in) |
//! | other conv2d / dense `weight` | Glorot uniform, limit = √(6 / (fan_in + fan_out)) |
//! | recurrent `weight`, `recurrent_weight` `[rows, cols]` | Glorot uniform, fan_in = rows, fan_out = cols |
//! | biases | zeros; LSTM `bias` has its forget-gate block `[U, 2U)` set to 1 (Keras `unit_forget_bias`; gates i, f, c, o) |
//! | batchnorm `gamma`, `moving_var` | ones |
//! | batchnorm `beta`, `moving_mean` | zeros |
//! | embedding `weight` `[vocab, dim]` | uniform on `[-0.05, 0.05)` (Keras's default), the padding id's row zero |
//!
//! Fans: conv weight `[KH, KW, C, F]` has fan_in = KH·KW·C and
//! fan_out = KH·KW·F; dense weight `[F, U]` has fan_in = F, fan_out = U.
//! He normal is the plain normal distribution of He et al. (2015); Keras's
//! `he_normal` truncates at two standard deviations and rescales to the same
//! standard deviation, which netc does not do.
//!
//! # Random numbers
//!
//! Each parameter has its own stream, keyed by the seed and the parameter's
//! name: `key = mix(mix(seed) ^ fnv1a64(name))`, where `mix` is the
//! SplitMix64 finalizer and `fnv1a64` the 64-bit FNV-1a hash of the name's
//! UTF-8 bytes. Draw `k` of the stream is `mix(key + (k + 1) · φ)` with
//! φ = 0x9E3779B97F4A7C15 — SplitMix64 in counter form. Element `i` of a
//! Glorot tensor uses draw `i`; element `i` of a He tensor uses draws `2i`
//! and `2i + 1` (Box–Muller, cosine branch). So:
//!
//! - the same seed gives bitwise-equal weights on every run, platform and
//!   thread count (every element is a pure function of seed, name and index;
//!   `log`, `cos` and `sqrt` come from the pure-Rust `libm` crate rather than
//!   the platform's C library, and all arithmetic is in `f64` rounded once
//!   to `f32`);
//! - adding, removing or reordering other layers does not change a layer's
//!   weights, as long as its name and shape stay the same.
//!
//! The generator is implemented here (about ten lines) rather than taken
//! from `rand`, whose value streams are allowed to change between versions.

use crate::tensor::{Tensor, TensorError};
use crate::weights::{param_nodes, Weights};
use netc_compiler::graph::{Graph, NodeId};
use netc_compiler::op::{Activation, CellKind, Op, ParamRole};
use thiserror::Error;

/// Why a graph's parameters could not be initialized.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InitError {
    /// Shape inference did not give the parameter a shape (the model has
    /// errors).
    #[error("parameter `{name}` has no known shape (the model has errors)")]
    NoShape {
        /// The parameter.
        name: String,
    },
    /// The parameter feeds no layer, or several.
    #[error("parameter `{name}` is used by {users} layers; expected exactly one")]
    Users {
        /// The parameter.
        name: String,
        /// How many consumers it has.
        users: usize,
    },
    /// The parameter's layer or shape is not one this module knows.
    #[error("parameter `{name}` (shape {shape:?}) of a {layer} layer has no initialization rule")]
    NoRule {
        /// The parameter.
        name: String,
        /// Its layer's op name.
        layer: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// The parameters together do not fit in memory.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    /// The shape's element count overflows, or its buffer was refused.
    #[error("parameter `{name}`: {error}")]
    Tensor {
        /// The parameter.
        name: String,
        /// Why.
        error: TensorError,
    },
}

/// Bound of the uniform embedding initializer (Keras's `Embedding`).
pub const EMBEDDING_LIMIT: f64 = 0.05;

/// How one parameter is initialized.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Normal with mean 0 and std √(2 / fan_in).
    HeNormal {
        /// Inputs per output unit.
        fan_in: usize,
    },
    /// Uniform on `[-limit, limit)`, limit = √(6 / (fan_in + fan_out)).
    GlorotUniform {
        /// Inputs per output unit.
        fan_in: usize,
        /// Outputs per input unit.
        fan_out: usize,
    },
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Uniform on `[-0.05, 0.05)` (Keras's `Embedding` default), element
    /// `i` from draw `i`, with the padding row `[padding·dim, (padding +
    /// 1)·dim)` zero: that id then contributes nothing, and its gradient is
    /// zero, so it stays zero.
    Embedding {
        /// Columns of the table.
        dim: usize,
        /// The id whose row is zero.
        padding: Option<usize>,
    },
    /// Zeros except the LSTM forget-gate block `[units, 2·units)`, which is 1.
    LstmBias {
        /// The LSTM's hidden size.
        units: usize,
    },
}

impl Init {
    /// He normal's standard deviation.
    pub fn he_std(fan_in: usize) -> f64 {
        (2.0 / fan_in.max(1) as f64).sqrt()
    }

    /// Glorot uniform's bound.
    pub fn glorot_limit(fan_in: usize, fan_out: usize) -> f64 {
        (6.0 / (fan_in + fan_out).max(1) as f64).sqrt()
    }

    /// A tensor of `shape` for parameter `name` under `seed`.
    pub fn fill(&self, name: &str, shape: Vec<usize>, seed: u64) -> Result<Tensor, TensorError> {
        let mut t = Tensor::zeros(shape)?;
        let stream = Stream::new(seed, name);
        match *self {
            Init::HeNormal { fan_in } => {
                let std = Init::he_std(fan_in);
                for (i, v) in t.data.iter_mut().enumerate() {
                    *v = (std * stream.normal(i as u64)) as f32;
                }
            }
            Init::GlorotUniform { fan_in, fan_out } => {
                let limit = Init::glorot_limit(fan_in, fan_out);
                for (i, v) in t.data.iter_mut().enumerate() {
                    *v = (limit * (2.0 * stream.uniform(i as u64) - 1.0)) as f32;
                }
            }
            Init::Embedding { dim, padding } => {
                for (i, v) in t.data.iter_mut().enumerate() {
                    *v = (EMBEDDING_LIMIT * (2.0 * stream.uniform(i as u64) - 1.0)) as f32;
                }
                if let Some(p) = padding {
                    let start = p.saturating_mul(dim).min(t.data.len());
                    let end = start.saturating_add(dim).min(t.data.len());
                    t.data[start..end].fill(0.0);
                }
            }
            Init::Zeros => {}
            Init::Ones => t.data.fill(1.0),
            Init::LstmBias { units } => {
                let end = (2 * units).min(t.data.len());
                let start = units.min(end);
                t.data[start..end].fill(1.0);
            }
        }
        Ok(t)
    }
}

/// Every parameter's name, shape and initializer, in topological order.
pub fn init_plan(graph: &Graph) -> Result<Vec<(String, Vec<usize>, Init)>, InitError> {
    param_nodes(graph)
        .into_iter()
        .map(|id| {
            let node = graph.node(id);
            let shape =
                node.shape
                    .as_ref()
                    .map(|s| s.0.clone())
                    .ok_or_else(|| InitError::NoShape {
                        name: node.name.clone(),
                    })?;
            let role = match node.op {
                Op::Param { role } => role,
                _ => ParamRole::Weight,
            };
            let init = rule(graph, id, role, &shape)?;
            Ok((node.name.clone(), shape, init))
        })
        .collect()
}

/// Initializes every parameter of `graph` from `seed` (see the module
/// documentation for the rules and the random streams).
pub fn init_weights(graph: &Graph, seed: u64) -> Result<Weights, InitError> {
    let plan = init_plan(graph)?;
    check_memory(&graph.name, &plan)?;
    let mut w = Weights::new(graph.name.clone());
    for (name, shape, init) in plan {
        let t = init
            .fill(&name, shape, seed)
            .map_err(|error| InitError::Tensor {
                name: name.clone(),
                error,
            })?;
        w.insert(name, t);
    }
    Ok(w)
}

/// Refuses, before allocating anything, parameters that together exceed
/// the memory available (a 256 GiB dense passes the shape checker).
fn check_memory(model: &str, plan: &[(String, Vec<usize>, Init)]) -> Result<(), InitError> {
    let parts: Vec<(String, u64)> = plan
        .iter()
        .map(|(name, shape, _)| {
            let n = crate::tensor::element_count(shape).unwrap_or(usize::MAX);
            (format!("`{name}` {shape:?}"), crate::memory::f32_bytes(n))
        })
        .collect();
    let needed = parts.iter().fold(0u64, |a, (_, b)| a.saturating_add(*b));
    crate::memory::check_fits(&format!("the weights of model `{model}`"), needed, &parts)?;
    Ok(())
}

fn rule(graph: &Graph, param: NodeId, role: ParamRole, shape: &[usize]) -> Result<Init, InitError> {
    let node = graph.node(param);
    match role {
        ParamRole::Gamma | ParamRole::MovingVar => return Ok(Init::Ones),
        ParamRole::Beta | ParamRole::MovingMean => return Ok(Init::Zeros),
        ParamRole::Weight | ParamRole::Bias => {}
    }
    let users = graph.users_of(param);
    let [layer] = users.as_slice() else {
        return Err(InitError::Users {
            name: node.name.clone(),
            users: users.len(),
        });
    };
    let op = &graph.node(*layer).op;
    let no_rule = || InitError::NoRule {
        name: node.name.clone(),
        layer: op.name().to_string(),
        shape: shape.to_vec(),
    };
    if role == ParamRole::Bias {
        return Ok(match op {
            Op::Recurrent {
                cell: CellKind::Lstm,
                units,
                ..
            } if shape == [4 * units] => Init::LstmBias { units: *units },
            _ => Init::Zeros,
        });
    }
    let Some((fan_in, fan_out)) = netc_compiler::ops::fans(op, shape) else {
        return Err(no_rule());
    };
    let feeds_relu = graph.users_of(*layer).iter().any(|&u| {
        matches!(
            graph.node(u).op,
            Op::Activation(Activation::Relu | Activation::LeakyRelu(_))
        )
    });
    Ok(match op {
        Op::Embedding { dim, padding, .. } => Init::Embedding {
            dim: *dim,
            padding: *padding,
        },
        Op::Conv2d { .. } | Op::Dense { .. } if feeds_relu => Init::HeNormal { fan_in },
        _ => Init::GlorotUniform { fan_in, fan_out },
    })
}

// ---------------------------------------------------------------------------
// Random streams: SplitMix64 in counter form, keyed by seed and name.

const PHI: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64-bit FNV-1a.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

struct Stream {
    key: u64,
}

impl Stream {
    fn new(seed: u64, name: &str) -> Stream {
        Stream {
            key: mix(mix(seed) ^ fnv1a64(name.as_bytes())),
        }
    }

    /// Draw `k`.
    fn draw(&self, k: u64) -> u64 {
        mix(self.key.wrapping_add(k.wrapping_add(1).wrapping_mul(PHI)))
    }

    /// Element `i`'s uniform number in `[0, 1)` (53 random bits).
    fn uniform(&self, i: u64) -> f64 {
        (self.draw(i) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Element `i`'s standard normal number (Box–Muller on draws 2i, 2i+1).
    fn normal(&self, i: u64) -> f64 {
        let scale = 1.0 / (1u64 << 53) as f64;
        let u1 = ((self.draw(2 * i) >> 11) + 1) as f64 * scale; // (0, 1]
        let u2 = (self.draw(2 * i + 1) >> 11) as f64 * scale; // [0, 1)
        libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(2.0 * std::f64::consts::PI * u2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values_are_stable() {
        // Pins the streams: a change here changes every model's initial
        // weights and must be deliberate.
        assert_eq!(fnv1a64(b""), 0xCBF2_9CE4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xAF63_DC4C_8601_EC8C);
        // SplitMix64 seeded with 0: first output.
        assert_eq!(mix(PHI), 0xE220_A839_7B1D_CDAF);
        let s = Stream::new(42, "fc1.weight");
        let u: Vec<f64> = (0..1000).map(|i| s.uniform(i)).collect();
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let bits = |t: Tensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let g = Init::GlorotUniform {
            fan_in: 3,
            fan_out: 4,
        }
        .fill("fc1.weight", vec![4], 42)
        .unwrap();
        assert_eq!(bits(g), [0x3f4defbd, 0x3e17c36e, 0xbec22b05, 0xbd3fb6b1]);
        let h = Init::HeNormal { fan_in: 8 }
            .fill("conv1.weight", vec![4], 42)
            .unwrap();
        assert_eq!(bits(h), [0xbd9b6e27, 0xbe0876fd, 0x3ec0e29f, 0x3f249994]);
    }

    #[test]
    fn lstm_bias_sets_the_forget_block() {
        let t = Init::LstmBias { units: 3 }
            .fill("l.bias", vec![12], 0)
            .unwrap();
        assert_eq!(
            t.data,
            [0., 0., 0., 1., 1., 1., 0., 0., 0., 0., 0., 0.].to_vec()
        );
    }
}
