//! A model's parameters: named `f32` tensors in a deterministic order,
//! saved and loaded as safetensors.
//!
//! Names are `<layer>.<param>`, exactly the `name` of the graph's
//! `Op::Param` nodes (`conv1.weight`, `encoder.forward.recurrent_weight`).
//! [`expected_params`] lists what a graph needs; [`Weights::validate`]
//! checks a set against it and names the first problem in one line.
//!
//! Files carry `"format": "netc"` and `"model": <name>` in the safetensors
//! header metadata, plus any `data.*` entries the set carries
//! ([`Weights::set_metadata`]): what the training data was encoded with,
//! such as a text vocabulary (`data::text::saved`). Every tensor is stored as `F32`; loading any other dtype
//! is an error that names the tensor and its dtype, and so is a NaN or an
//! infinity (naming the tensor and the element). Saving replaces the file
//! atomically (temporary file in the same directory, then a rename).

use crate::fsutil::write_atomic;
use crate::tensor::Tensor;
use netc_compiler::graph::{Graph, NodeId};
use netc_compiler::op::Op;
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The metadata key and value that mark a netc weights file.
pub const FORMAT_KEY: &str = "format";
/// See [`FORMAT_KEY`].
pub const FORMAT_VALUE: &str = "netc";
/// The metadata key holding the model's name.
pub const MODEL_KEY: &str = "model";
/// The prefix of the metadata a set of weights carries besides `format`
/// and `model` ([`Weights::set_metadata`]): what the training data was
/// encoded with, such as a text vocabulary (`data.vocabulary`).
pub const DATA_PREFIX: &str = "data.";

/// A problem with a set of weights or a weights file. Every message is one
/// line.
#[derive(Debug, Error)]
pub enum WeightsError {
    /// The file could not be read.
    #[error("cannot read weights file {}: {error}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file could not be written.
    #[error("cannot write weights file {}: {error}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not a (complete) safetensors file.
    #[error("{} not a valid safetensors file: {reason}", subject_is(.path))]
    Corrupt {
        /// The file, if the bytes came from one.
        path: Option<PathBuf>,
        /// The safetensors parser's explanation.
        reason: String,
    },
    /// A tensor is stored with a dtype other than F32.
    #[error("{}tensor `{name}` has dtype {dtype}, but netc weights are F32", source_prefix(.path))]
    Dtype {
        /// The file, if the weights came from one.
        path: Option<PathBuf>,
        /// The tensor.
        name: String,
        /// Its dtype, as safetensors names it (`F64`, `BF16`, ...).
        dtype: String,
    },
    /// A parameter the model needs is absent.
    #[error("{} no tensor `{name}` (expected shape {shape:?})", subject(.path))]
    Missing {
        /// The file, if the weights came from one.
        path: Option<PathBuf>,
        /// The parameter.
        name: String,
        /// The shape the model expects.
        shape: Vec<usize>,
    },
    /// A parameter has the wrong shape.
    #[error("{}tensor `{name}` has shape {found:?} but the model expects {expected:?}", source_prefix(.path))]
    Shape {
        /// The file, if the weights came from one.
        path: Option<PathBuf>,
        /// The parameter.
        name: String,
        /// Its shape in the weights.
        found: Vec<usize>,
        /// The shape the model expects.
        expected: Vec<usize>,
    },
    /// A tensor the model does not have (usually: weights of another model).
    #[error(
        "{} tensor `{name}` (shape {shape:?}) that the model does not have; are these weights for another model?",
        subject(.path)
    )]
    Unexpected {
        /// The file, if the weights came from one.
        path: Option<PathBuf>,
        /// The tensor.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A tensor holds NaN or an infinity: weights like that evaluate to
    /// numbers that look plausible and mean nothing, so loading refuses them.
    #[error(
        "{}tensor `{name}` holds {value} at {index:?}; netc loads only finite weights (were they saved from a diverged run?)",
        source_prefix(.path)
    )]
    NonFinite {
        /// The file, if the weights came from one.
        path: Option<PathBuf>,
        /// The tensor.
        name: String,
        /// The first non-finite element's index.
        index: Vec<usize>,
        /// Its value (`NaN`, `inf` or `-inf`).
        value: f32,
    },
    /// The safetensors serializer failed.
    #[error("cannot encode weights: {0}")]
    Encode(String),
}

fn subject(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("weights file {} has", p.display()),
        None => "the weights have".to_string(),
    }
}

fn subject_is(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("weights file {} is", p.display()),
        None => "the weights are".to_string(),
    }
}

fn source_prefix(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("weights file {}: ", p.display()),
        None => String::new(),
    }
}

/// Named `f32` tensors, kept in insertion order (for loaded files: the
/// file's storage order, which is by name).
#[derive(Clone, Debug, Default)]
pub struct Weights {
    model: String,
    source: Option<PathBuf>,
    entries: Vec<(String, Tensor)>,
    index: HashMap<String, usize>,
    /// `data.*` metadata, saved and loaded with the tensors.
    metadata: BTreeMap<String, String>,
}

impl Weights {
    /// An empty set for model `model`.
    pub fn new(model: impl Into<String>) -> Weights {
        Weights {
            model: model.into(),
            ..Weights::default()
        }
    }

    /// The model's name (from the file's metadata when loaded; empty if the
    /// file had none).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Sets a `data.*` metadata entry (see [`DATA_PREFIX`]), saved with the
    /// tensors and read back by [`Weights::load`]; a key without the
    /// prefix gets it.
    pub fn set_metadata(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let key = if key.starts_with(DATA_PREFIX) {
            key
        } else {
            format!("{DATA_PREFIX}{key}")
        };
        self.metadata.insert(key, value.into());
    }

    /// The value of metadata entry `key` (a `data.*` key).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// Every `data.*` metadata entry, by key.
    pub fn metadata_entries(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The file these weights were loaded from or last saved to, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Adds `tensor` under `name`, or replaces the tensor of that name in
    /// place (keeping its position); returns the replaced tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) -> Option<Tensor> {
        let name = name.into();
        if let Some(&i) = self.index.get(&name) {
            return Some(std::mem::replace(&mut self.entries[i].1, tensor));
        }
        self.index.insert(name.clone(), self.entries.len());
        self.entries.push((name, tensor));
        None
    }

    /// The tensor named `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    /// The tensor named `name`, mutably.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        self.index.get(name).map(|&i| &mut self.entries[i].1)
    }

    /// Names and tensors, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// Names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.entries.iter().map(|(_, t)| t.len()).sum()
    }

    /// Checks the set against a model's parameters (see [`expected_params`]):
    /// every expected tensor present with its shape, nothing else. Returns
    /// the first problem: missing and misshapen tensors in the model's order,
    /// then unexpected tensors in this set's order.
    pub fn validate(&self, expected: &[(String, Vec<usize>)]) -> Result<(), WeightsError> {
        let path = self.source.clone();
        for (name, shape) in expected {
            match self.get(name) {
                None => {
                    return Err(WeightsError::Missing {
                        path,
                        name: name.clone(),
                        shape: shape.clone(),
                    })
                }
                Some(t) if &t.shape != shape => {
                    return Err(WeightsError::Shape {
                        path,
                        name: name.clone(),
                        found: t.shape.clone(),
                        expected: shape.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        for (name, t) in &self.entries {
            if !expected.iter().any(|(n, _)| n == name) {
                return Err(WeightsError::Unexpected {
                    path,
                    name: name.clone(),
                    shape: t.shape.clone(),
                });
            }
        }
        Ok(())
    }

    /// The safetensors bytes of this set, with `format`, `model` and the
    /// `data.*` metadata. The same set always gives the same bytes (see
    /// `encode`).
    pub fn to_bytes(&self) -> Result<Vec<u8>, WeightsError> {
        let mut meta = self.metadata.clone();
        meta.extend([
            (FORMAT_KEY.to_string(), FORMAT_VALUE.to_string()),
            (MODEL_KEY.to_string(), self.model.clone()),
        ]);
        let tensors: Vec<(&str, &Tensor)> = self.iter().collect();
        encode(&meta, &tensors)
    }

    /// Saves the set as a safetensors file, atomically; later errors about
    /// these weights name `path`.
    pub fn save(&mut self, path: impl AsRef<Path>) -> Result<(), WeightsError> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        write_atomic(path, &bytes).map_err(|error| WeightsError::Write {
            path: path.to_path_buf(),
            error,
        })?;
        self.source = Some(path.to_path_buf());
        Ok(())
    }

    /// Loads a safetensors file. Tensors keep the file's storage order.
    pub fn load(path: impl AsRef<Path>) -> Result<Weights, WeightsError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|error| WeightsError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        decode(&bytes, Some(path)).map(|(w, _)| w)
    }

    /// Parses the bytes of a safetensors file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Weights, WeightsError> {
        decode(bytes, None).map(|(w, _)| w)
    }
}

/// Serializes F32 tensors and string metadata as safetensors, byte for
/// byte the same for the same input: metadata keys in sorted order (the
/// `safetensors` crate takes a `HashMap` and writes its keys in a random
/// order, so identical runs gave different files), tensors sorted by name.
pub(crate) fn encode(
    meta: &BTreeMap<String, String>,
    tensors: &[(&str, &Tensor)],
) -> Result<Vec<u8>, WeightsError> {
    let mut sorted = tensors.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let enc = |e: serde_json::Error| WeightsError::Encode(e.to_string());
    let mut header = format!(
        "{{\"__metadata__\":{}",
        serde_json::to_string(meta).map_err(enc)?
    );
    let mut offset = 0usize;
    for (name, t) in &sorted {
        let numel = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n == t.data.len())
            .ok_or_else(|| {
                WeightsError::Encode(format!(
                    "tensor `{name}` has shape {:?} but {} values",
                    t.shape,
                    t.data.len()
                ))
            })?;
        let end = offset + 4 * numel;
        header.push_str(&format!(
            ",{}:{{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
            serde_json::to_string(name).map_err(enc)?,
            serde_json::to_string(&t.shape).map_err(enc)?
        ));
        offset = end;
    }
    header.push('}');
    // The data section starts 8-byte aligned, as the safetensors crate
    // writes it (padding with spaces is valid JSON whitespace).
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for (_, t) in &sorted {
        for v in &t.data {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(out)
}

/// A safetensors parse error in words a user can act on.
fn explain(e: &SafeTensorError) -> String {
    use SafeTensorError as E;
    match e {
        E::HeaderTooSmall | E::HeaderTooLarge | E::InvalidHeaderLength => {
            "its header length is wrong (truncated, or not a safetensors file)".into()
        }
        E::InvalidHeader(_) | E::InvalidHeaderStart => {
            "its header is not JSON text (not a safetensors file)".into()
        }
        E::MetadataIncompleteBuffer => {
            "its data section does not match its header (truncated or corrupt)".into()
        }
        other => format!("{other}"),
    }
}

/// A tensor whose data offsets point past the end of the file, if any.
///
/// safetensors 0.6 adds the offsets to the header size unchecked, which
/// overflows (a panic in debug builds) on a crafted header; this check runs
/// first so such a file is reported as corrupt. Anything else wrong with the
/// header is left to safetensors to report.
fn offsets_beyond_end(bytes: &[u8]) -> Option<String> {
    let len: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let n = usize::try_from(u64::from_le_bytes(len)).ok()?;
    let header = bytes.get(8..n.checked_add(8)?)?;
    let data_len = (bytes.len() - 8 - n) as u64;
    let json: serde_json::Value = serde_json::from_slice(header).ok()?;
    json.as_object()?.iter().find_map(|(name, info)| {
        let offsets = info.get("data_offsets")?.as_array()?;
        offsets
            .iter()
            .any(|o| o.as_u64().is_some_and(|o| o > data_len))
            .then(|| {
                format!("the file ends before the data of tensor `{name}` (truncated or corrupt)")
            })
    })
}

/// Parses safetensors bytes into their tensors and header metadata.
pub(crate) fn decode(
    bytes: &[u8],
    path: Option<&Path>,
) -> Result<(Weights, BTreeMap<String, String>), WeightsError> {
    let path = path.map(Path::to_path_buf);
    let corrupt = |e: SafeTensorError| WeightsError::Corrupt {
        path: path.clone(),
        reason: explain(&e),
    };
    if let Some(reason) = offsets_beyond_end(bytes) {
        return Err(WeightsError::Corrupt { path, reason });
    }
    let (_, meta): (usize, Metadata) = SafeTensors::read_metadata(bytes).map_err(corrupt)?;
    let st = SafeTensors::deserialize(bytes).map_err(corrupt)?;
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let model = metadata.get(MODEL_KEY).cloned().unwrap_or_default();
    let mut w = Weights::new(model);
    w.metadata = metadata
        .iter()
        .filter(|(k, _)| k.starts_with(DATA_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for name in meta.offset_keys() {
        let view = st.tensor(&name).map_err(corrupt)?;
        if view.dtype() != Dtype::F32 {
            return Err(WeightsError::Dtype {
                path,
                name,
                dtype: view.dtype().to_string(),
            });
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        // safetensors has checked that the byte length matches the shape.
        let tensor = Tensor {
            shape: view.shape().to_vec(),
            data,
        };
        if let Some(i) = tensor.data.iter().position(|v| !v.is_finite()) {
            return Err(WeightsError::NonFinite {
                path,
                index: unflatten(&tensor.shape, i),
                value: tensor.data[i],
                name,
            });
        }
        // Names are unique: they are the keys of the header's JSON object.
        w.insert(name, tensor);
    }
    w.source = path;
    Ok((w, metadata))
}

/// The multi-index of element `flat` of a row-major tensor of `shape`.
fn unflatten(shape: &[usize], mut flat: usize) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (slot, &d) in idx.iter_mut().zip(shape).rev() {
        if d > 0 {
            *slot = flat % d;
            flat /= d;
        }
    }
    idx
}

/// Every `Op::Param` node's name and shape, in the graph's topological
/// order (node order if the graph has a cycle). Parameters whose shape is
/// unknown are left out: that only happens when checking the model reported
/// errors, and such a model must not be run.
pub fn expected_params(graph: &Graph) -> Vec<(String, Vec<usize>)> {
    param_nodes(graph)
        .into_iter()
        .filter_map(|id| {
            let n = graph.node(id);
            n.shape.as_ref().map(|s| (n.name.clone(), s.0.clone()))
        })
        .collect()
}

/// The graph's `Op::Param` nodes in topological order.
pub(crate) fn param_nodes(graph: &Graph) -> Vec<NodeId> {
    let order = graph
        .topo_order()
        .unwrap_or_else(|| graph.g.node_indices().collect());
    order
        .into_iter()
        .filter(|&id| matches!(graph.node(id).op, Op::Param { .. }))
        .collect()
}
