//! ONNX export: a checked model's inference graph with its weights as an
//! ONNX `ModelProto` (opset [`OPSET`]), for other runtimes to load.
//!
//! The export reads the checked graph, before the optimizer, so every
//! netc layer becomes the ONNX operator that means the same: `conv1d` /
//! `conv2d` a `Conv`, poolings `MaxPool` / `AveragePool` (`ReduceMax` /
//! `ReduceMean` when global), `dense` a `MatMul` and an `Add` (on any
//! number of leading axes, so per time step too), `batchnorm` a
//! `BatchNormalization` with the running statistics, `dropout` an
//! `Identity`, `embedding` a `Gather`, and `rnn` / `lstm` / `gru` one
//! `RNN` / `LSTM` / `GRU` node per direction and per stacked layer.
//!
//! netc's tensors are channels-last (`[N, H, W, C]`, `[N, T, C]`) and
//! ONNX's convolutions, poolings and batch normalization read the channel
//! at axis 1, so those nodes are wrapped in `Transpose`s; the recurrent
//! nodes read time-major `[T, N, F]` (layout 0, which every runtime
//! implements) and are wrapped likewise. Weights are rearranged once,
//! here: filter banks `[KH, KW, C, F]` become `[F, C, KH, KW]`, and the
//! recurrent matrices `[F, G·U]` become ONNX's `[1, G·U, F]` with the gate
//! blocks in ONNX's order (LSTM i, o, f, c from netc's i, f, c, o; GRU z,
//! r, h as netc, with `linear_before_reset = 1`, which is netc's (Keras's
//! `reset_after`) candidate `tanh(x W_h + b_h + r ∘ (h U_h + r̄_h))`).
//!
//! The batch axis is the symbolic `N`; the time axis of a
//! variable-length input (`[*, F]`, `tokens[*]`) and of every value that
//! carries it is the symbolic `T` (every step real, as `netc run` reads
//! a sequence). Token inputs are `int64` ids. Anything the format cannot
//! say is an [`ExportError`], never a panic.

#[rustfmt::skip]
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
mod proto;
pub mod text;

pub use proto::ModelProto;

use crate::weights::{expected_params, Weights, WeightsError};
use netc_compiler::graph::{Graph, NodeId};
use netc_compiler::masking;
use netc_compiler::op::{Activation, CellKind, Op, Padding, PoolKind, Spatial};
use proto::attribute_proto::AttributeType;
use proto::tensor_proto::DataType;
use proto::tensor_shape_proto::{dimension, Dimension};
use proto::{
    type_proto, AttributeProto, GraphProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The ONNX operator set the export targets (the default domain).
pub const OPSET: i64 = 17;

/// The ONNX IR version of the files written: 8, the one that goes with
/// opset 17.
pub const IR_VERSION: i64 = 8;

/// Why a model could not be exported. Every message is one line.
#[derive(Debug, Error)]
pub enum ExportError {
    /// The weights do not fit the model.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A node has an op that has no ONNX form here (ops that only the
    /// optimizer, unrolling, masking or autodiff create).
    #[error("model `{model}`: layer `{layer}` ({op}) cannot be exported to ONNX: {why}")]
    Unsupported {
        /// The model.
        model: String,
        /// The node's name.
        layer: String,
        /// The op's name.
        op: &'static str,
        /// Why.
        why: &'static str,
    },
    /// A node lacks the operands or the inferred shape its op needs (a
    /// graph that was not checked).
    #[error("model `{model}`: layer `{layer}` {problem}")]
    Malformed {
        /// The model.
        model: String,
        /// The node's name.
        layer: String,
        /// What is missing.
        problem: String,
    },
    /// The graph has a cycle.
    #[error("model `{0}`: the graph has a cycle")]
    Cycle(String),
    /// The model is too large for one protobuf message (2 GiB).
    #[error("model `{model}`: {bytes} bytes do not fit one ONNX file (protobuf's limit is 2 GiB)")]
    TooLarge {
        /// The model.
        model: String,
        /// The encoded size.
        bytes: usize,
    },
    /// The file could not be written.
    #[error("cannot write {}: {error}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

/// `graph` (a checked model, not instantiated) with `weights` as an ONNX
/// model. The weights are validated against the model first.
pub fn export(graph: &Graph, weights: &Weights) -> Result<ModelProto, ExportError> {
    weights.validate(&expected_params(graph))?;
    let mut ex = Exporter::new(graph, weights);
    ex.run()?;
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("netc".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(ex.finish()),
        ..Default::default()
    })
}

/// The protobuf encoding of `model` (what an `.onnx` file holds).
pub fn encode(model: &ModelProto) -> Result<Vec<u8>, ExportError> {
    use prost::Message;
    let bytes = model.encode_to_vec();
    if bytes.len() > i32::MAX as usize {
        let name = model
            .graph
            .as_ref()
            .and_then(|g| g.name.clone())
            .unwrap_or_default();
        return Err(ExportError::TooLarge {
            model: name,
            bytes: bytes.len(),
        });
    }
    Ok(bytes)
}

/// Exports `graph` with `weights` and writes the `.onnx` file atomically.
/// Returns the model.
pub fn write(graph: &Graph, weights: &Weights, path: &Path) -> Result<ModelProto, ExportError> {
    let model = export(graph, weights)?;
    let bytes = encode(&model)?;
    crate::fsutil::write_atomic(path, &bytes).map_err(|error| ExportError::Write {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(model)
}

/// An attribute value.
enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(&'static str),
}

fn attribute(name: &str, value: Attr) -> AttributeProto {
    let mut a = AttributeProto {
        name: Some(name.into()),
        ..Default::default()
    };
    match value {
        Attr::Int(i) => {
            a.r#type = Some(AttributeType::Int as i32);
            a.i = Some(i);
        }
        Attr::Ints(v) => {
            a.r#type = Some(AttributeType::Ints as i32);
            a.ints = v;
        }
        Attr::Float(f) => {
            a.r#type = Some(AttributeType::Float as i32);
            a.f = Some(f);
        }
        Attr::Str(s) => {
            a.r#type = Some(AttributeType::String as i32);
            a.s = Some(s.as_bytes().to_vec());
        }
    }
    a
}

/// A float tensor (raw little-endian data).
fn float_tensor(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Float as i32),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// A 1-D int64 tensor.
fn int64_tensor(name: &str, data: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: vec![data.len() as i64],
        data_type: Some(DataType::Int64 as i32),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// A symbolic or fixed dimension.
enum Dim {
    Fixed(usize),
    Named(&'static str),
}

fn value_info(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                Dim::Named(s) => dimension::Value::DimParam((*s).into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The permutation of `[KH, KW, C, F]` filters (or any `[.., C, F]`
/// tensor) that gives ONNX's `[F, C, ..]`: element `[f, c, k]` of the
/// result is element `[k, c, f]` of `data`, `k` the flat window index.
fn filters_to_onnx(data: &[f32], window: usize, c: usize, f: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for k in 0..window {
        for ci in 0..c {
            for fi in 0..f {
                out[(fi * c + ci) * window + k] = data[(k * c + ci) * f + fi];
            }
        }
    }
    out
}

/// netc's gate block for each of ONNX's, in ONNX's order.
fn gate_order(cell: CellKind) -> &'static [usize] {
    match cell {
        CellKind::Rnn => &[0],
        // ONNX: i, o, f, c; netc: i, f, c, o.
        CellKind::Lstm => &[0, 3, 1, 2],
        // Both z, r, h.
        CellKind::Gru => &[0, 1, 2],
    }
}

/// A recurrent matrix `[rows, G·U]` (`x · W` form) as ONNX's `[G·U, rows]`
/// (`W · xᵀ` form) with the gate blocks in ONNX's order.
fn recurrent_to_onnx(data: &[f32], rows: usize, units: usize, cell: CellKind) -> Vec<f32> {
    let g = cell.gates();
    let mut out = vec![0.0; data.len()];
    for (k, &src) in gate_order(cell).iter().enumerate() {
        for u in 0..units {
            for r in 0..rows {
                out[(k * units + u) * rows + r] = data[r * g * units + src * units + u];
            }
        }
    }
    out
}

/// A bias `[G·U]` with the gate blocks in ONNX's order.
fn bias_to_onnx(data: &[f32], units: usize, cell: CellKind) -> Vec<f32> {
    gate_order(cell)
        .iter()
        .flat_map(|&src| data[src * units..(src + 1) * units].iter().copied())
        .collect()
}

struct Exporter<'a> {
    g: &'a Graph,
    weights: &'a Weights,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    /// The ONNX value holding each exported netc node's result.
    values: HashMap<NodeId, String>,
    /// The initializer of each parameter used unchanged.
    params: HashMap<NodeId, String>,
    /// Every value and node name given out.
    used: HashSet<String>,
    /// Per node index: whether its first per-example axis is a time axis
    /// of any length.
    unfixed: Vec<bool>,
}

impl<'a> Exporter<'a> {
    fn new(g: &'a Graph, weights: &'a Weights) -> Self {
        Exporter {
            g,
            weights,
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            values: HashMap::new(),
            params: HashMap::new(),
            used: HashSet::new(),
            unfixed: masking::unfixed_steps(g),
        }
    }

    fn finish(self) -> GraphProto {
        GraphProto {
            name: Some(self.g.name.clone()),
            node: self.nodes,
            initializer: self.initializers,
            input: self.inputs,
            output: self.outputs,
            doc_string: Some(format!("model `{}` exported by netc", self.g.name)),
            ..Default::default()
        }
    }

    /// `base`, or `base_2`, `base_3`, … if taken.
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 2;
        while self.used.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.used.insert(name.clone());
        name
    }

    fn malformed(&self, id: NodeId, problem: impl Into<String>) -> ExportError {
        ExportError::Malformed {
            model: self.g.name.clone(),
            layer: self.g.node(id).name.clone(),
            problem: problem.into(),
        }
    }

    /// Adds a node named after `label`; returns its first output.
    fn node(
        &mut self,
        op_type: &str,
        label: &str,
        inputs: Vec<String>,
        attrs: Vec<AttributeProto>,
    ) -> String {
        let out = self.fresh(label);
        self.node_with_outputs(op_type, &out, inputs, vec![out.clone()], attrs);
        out
    }

    fn node_with_outputs(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: Vec<String>,
        outputs: Vec<String>,
        attribute: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            name: Some(name.into()),
            op_type: Some(op_type.into()),
            input: inputs,
            output: outputs,
            attribute,
            ..Default::default()
        });
    }

    fn float_init(&mut self, base: &str, dims: &[usize], data: &[f32]) -> String {
        let name = self.fresh(base);
        self.initializers.push(float_tensor(&name, dims, data));
        name
    }

    fn int64_init(&mut self, base: &str, data: &[i64]) -> String {
        let name = self.fresh(base);
        self.initializers.push(int64_tensor(&name, data));
        name
    }

    /// A parameter's tensor (validated against the model in [`export`]).
    fn param(&self, id: NodeId) -> Result<&'a crate::Tensor, ExportError> {
        let name = &self.g.node(id).name;
        self.weights.get(name).ok_or_else(|| {
            ExportError::Weights(WeightsError::Missing {
                path: self.weights.source().map(Path::to_path_buf),
                name: name.clone(),
                shape: self
                    .g
                    .node(id)
                    .shape
                    .as_ref()
                    .map(|s| s.0.clone())
                    .unwrap_or_default(),
            })
        })
    }

    /// A parameter as an initializer, unchanged, under its own name.
    fn param_init(&mut self, id: NodeId) -> Result<String, ExportError> {
        if let Some(name) = self.params.get(&id) {
            return Ok(name.clone());
        }
        let t = self.param(id)?;
        let name = self.g.node(id).name.clone();
        let name = self.float_init(&name, &t.shape, &t.data);
        self.params.insert(id, name.clone());
        Ok(name)
    }

    /// The per-example shape of `id`'s value.
    fn shape(&self, id: NodeId) -> Result<Vec<usize>, ExportError> {
        self.g
            .node(id)
            .shape
            .as_ref()
            .map(|s| s.0.clone())
            .ok_or_else(|| self.malformed(id, "has no inferred shape"))
    }

    /// The value's dims with the batch axis: `N`, then `T` for a time axis
    /// of any length.
    fn dims(&self, id: NodeId) -> Result<Vec<Dim>, ExportError> {
        let shape = self.shape(id)?;
        let unfixed = self.unfixed.get(id.index()).copied().unwrap_or(false);
        let mut dims = vec![Dim::Named("N")];
        for (k, &d) in shape.iter().enumerate() {
            dims.push(if k == 0 && unfixed {
                Dim::Named("T")
            } else {
                Dim::Fixed(d)
            });
        }
        Ok(dims)
    }

    fn transpose(&mut self, x: String, perm: Vec<i64>, label: &str) -> String {
        self.node(
            "Transpose",
            label,
            vec![x],
            vec![attribute("perm", Attr::Ints(perm))],
        )
    }

    fn activation(&mut self, x: String, a: Activation, label: &str) -> String {
        match a {
            Activation::Relu => self.node("Relu", label, vec![x], vec![]),
            Activation::LeakyRelu(alpha) => self.node(
                "LeakyRelu",
                label,
                vec![x],
                vec![attribute("alpha", Attr::Float(alpha))],
            ),
            Activation::Sigmoid => self.node("Sigmoid", label, vec![x], vec![]),
            Activation::Tanh => self.node("Tanh", label, vec![x], vec![]),
            Activation::Softmax => self.node(
                "Softmax",
                label,
                vec![x],
                vec![attribute("axis", Attr::Int(-1))],
            ),
        }
    }

    fn run(&mut self) -> Result<(), ExportError> {
        let order = self
            .g
            .topo_order()
            .ok_or_else(|| ExportError::Cycle(self.g.name.clone()))?;
        // Graph inputs and outputs keep their names: reserve them.
        for &i in &self.g.inputs {
            let name = self.g.node(i).name.clone();
            self.used.insert(name);
        }
        for (name, _) in &self.g.outputs {
            self.used.insert(name.clone());
        }
        for id in order {
            self.export_node(id)?;
        }
        let outputs = self.g.outputs.clone();
        for (name, id) in outputs {
            let value = self
                .values
                .get(&id)
                .cloned()
                .ok_or_else(|| self.malformed(id, "is an output with no value"))?;
            // Rename through an Identity: the value may be an input, or
            // feed several outputs.
            let node_name = self.fresh(&format!("{name}/output"));
            self.node_with_outputs(
                "Identity",
                &node_name,
                vec![value],
                vec![name.clone()],
                vec![],
            );
            let dims = self.dims(id)?;
            self.outputs.push(value_info(&name, DataType::Float, &dims));
        }
        Ok(())
    }

    /// The ONNX values of `id`'s non-parameter operands and its parameter
    /// operands, each in slot order.
    fn operands(&self, id: NodeId) -> Result<(Vec<String>, Vec<NodeId>), ExportError> {
        let mut values = Vec::new();
        let mut params = Vec::new();
        for i in self.g.inputs_of(id) {
            if matches!(self.g.node(i).op, Op::Param { .. }) {
                params.push(i);
            } else {
                values.push(
                    self.values
                        .get(&i)
                        .cloned()
                        .ok_or_else(|| self.malformed(id, "reads a value that was not exported"))?,
                );
            }
        }
        Ok((values, params))
    }

    fn export_node(&mut self, id: NodeId) -> Result<(), ExportError> {
        let node = self.g.node(id);
        let label = node.name.clone();
        let op = node.op.clone();
        let unsupported = |why| ExportError::Unsupported {
            model: self.g.name.clone(),
            layer: label.clone(),
            op: op.name(),
            why,
        };
        let value = match &op {
            Op::Param { .. } => return Ok(()),
            Op::Input { tokens, .. } => {
                let elem = if *tokens {
                    DataType::Int64
                } else {
                    DataType::Float
                };
                let dims = self.dims(id)?;
                self.inputs.push(value_info(&label, elem, &dims));
                label.clone()
            }
            Op::Conv2d {
                spatial,
                filters,
                kernel,
                stride,
                padding,
                activation,
            } => {
                let (xs, ps) = self.operands(id)?;
                let x = self.one(id, &xs)?;
                let w = *ps
                    .first()
                    .ok_or_else(|| self.malformed(id, "has no weight"))?;
                let wt = self.param(w)?;
                let window = kernel.0 * kernel.1;
                let f = *filters;
                let c = wt.len() / (window * f).max(1);
                let data = filters_to_onnx(&wt.data, window, c, f);
                let (wdims, to_first, to_last) = match spatial {
                    Spatial::Image => (
                        vec![f, c, kernel.0, kernel.1],
                        vec![0, 3, 1, 2],
                        vec![0, 2, 3, 1],
                    ),
                    Spatial::Seq => (vec![f, c, kernel.1], vec![0, 2, 1], vec![0, 2, 1]),
                };
                let wname = format!("{}/onnx", self.g.node(w).name);
                let wname = self.float_init(&wname, &wdims, &data);
                let mut ins = vec![self.transpose(x, to_first, &format!("{label}/nchw")), wname];
                if let Some(&b) = ps.get(1) {
                    ins.push(self.param_init(b)?);
                }
                let mut attrs = window_attrs(*spatial, *kernel, *stride, *padding);
                attrs.insert(0, attribute("group", Attr::Int(1)));
                let y = self.node("Conv", &format!("{label}/conv"), ins, attrs);
                let y = self.transpose(y, to_last, &label);
                match activation {
                    Some(a) => self.activation(y, *a, &format!("{label}/{}", a.name())),
                    None => y,
                }
            }
            Op::Pool2d {
                spatial,
                kind,
                size,
                stride,
                padding,
            } => {
                let (xs, _) = self.operands(id)?;
                let x = self.one(id, &xs)?;
                let (to_first, to_last) = match spatial {
                    Spatial::Image => (vec![0, 3, 1, 2], vec![0, 2, 3, 1]),
                    Spatial::Seq => (vec![0, 2, 1], vec![0, 2, 1]),
                };
                let t = self.transpose(x, to_first, &format!("{label}/nchw"));
                let mut attrs = window_attrs(*spatial, *size, *stride, *padding);
                let op_type = match kind {
                    PoolKind::Max => "MaxPool",
                    PoolKind::Avg => {
                        attrs.push(attribute("count_include_pad", Attr::Int(0)));
                        "AveragePool"
                    }
                };
                let y = self.node(op_type, &format!("{label}/pool"), vec![t], attrs);
                self.transpose(y, to_last, &label)
            }
            Op::GlobalPool2d { spatial, kind } => {
                let (xs, _) = self.operands(id)?;
                let x = self.one(id, &xs)?;
                let axes = match spatial {
                    Spatial::Image => vec![1, 2],
                    Spatial::Seq => vec![1],
                };
                let op_type = match kind {
                    PoolKind::Max => "ReduceMax",
                    PoolKind::Avg => "ReduceMean",
                };
                self.node(
                    op_type,
                    &label,
                    vec![x],
                    vec![
                        attribute("axes", Attr::Ints(axes)),
                        attribute("keepdims", Attr::Int(0)),
                    ],
                )
            }
            Op::Embedding { padding, dim, .. } => {
                let (xs, ps) = self.operands(id)?;
                let ids = self.one(id, &xs)?;
                let w = *ps
                    .first()
                    .ok_or_else(|| self.malformed(id, "has no table"))?;
                let t = self.param(w)?;
                let mut data = t.data.clone();
                // The padding id's row reads as zero whatever it holds.
                if let Some(p) = padding {
                    if let Some(row) = data.get_mut(p * dim..(p + 1) * dim) {
                        row.fill(0.0);
                    }
                }
                let wname = self.g.node(w).name.clone();
                let table = self.float_init(&wname, &t.shape, &data);
                self.node(
                    "Gather",
                    &label,
                    vec![table, ids],
                    vec![attribute("axis", Attr::Int(0))],
                )
            }
            Op::Flatten => {
                let (xs, _) = self.operands(id)?;
                let x = self.one(id, &xs)?;
                self.node(
                    "Flatten",
                    &label,
                    vec![x],
                    vec![attribute("axis", Attr::Int(1))],
                )
            }
            Op::Reshape { dims } => {
                let (xs, _) = self.operands(id)?;
                let x = self.one(id, &xs)?;
                // 0 copies the batch axis; -1 is the inferred axis.
                let mut shape = vec![0i64];
                shape.extend(dims.iter().map(|d| d.map_or(-1, |d| d as i64)));
                let s = self.int64_init(&format!("{label}/shape"), &shape);
                self.node("Reshape", &label, vec![x, s], vec![])
            }
            Op::Dense { activation, .. } => {
                let (xs, ps) = self.operands(id)?;
                let x = self.one(id, &xs)?;
                let w = *ps
                    .first()
                    .ok_or_else(|| self.malformed(id, "has no weight"))?;
                let wname = self.param_init(w)?;
                let mut y = match ps.get(1) {
                    Some(&b) => {
                        let bname = self.param_init(b)?;
                        let m =
                            self.node("MatMul", &format!("{label}/matmul"), vec![x, wname], vec![]);
                        self.node("Add", &label, vec![m, bname], vec![])
                    }
                    None => self.node("MatMul", &label, vec![x, wname], vec![]),
                };
                if let Some(a) = activation {
                    y = self.activation(y, *a, &format!("{label}/{}", a.name()));
                }
                y
            }
            Op::Dropout { .. } => {
                let (xs, _) = self.operands(id)?;
                let x = self.one(id, &xs)?;
                self.node("Identity", &label, vec![x], vec![])
            }
            Op::BatchNorm { epsilon, .. } => {
                let (xs, ps) = self.operands(id)?;
                let x = self.one(id, &xs)?;
                if ps.len() != 4 {
                    return Err(self.malformed(id, "needs gamma, beta, moving_mean, moving_var"));
                }
                let mut ins = Vec::new();
                for &p in &ps {
                    ins.push(self.param_init(p)?);
                }
                // Channels last → channels at axis 1, and back.
                let rank = self.shape(id)?.len() as i64 + 1;
                let (mut to_first, mut to_last) = (vec![0, rank - 1], vec![0]);
                to_first.extend(1..rank - 1);
                to_last.extend(2..rank);
                to_last.push(1);
                let xt = if rank > 2 {
                    self.transpose(x, to_first, &format!("{label}/nc"))
                } else {
                    x
                };
                ins.insert(0, xt);
                let bn_label = if rank > 2 {
                    format!("{label}/bn")
                } else {
                    label.clone()
                };
                let y = self.node(
                    "BatchNormalization",
                    &bn_label,
                    ins,
                    vec![attribute("epsilon", Attr::Float(*epsilon))],
                );
                if rank > 2 {
                    self.transpose(y, to_last, &label)
                } else {
                    y
                }
            }
            Op::Activation(a) => {
                let (xs, _) = self.operands(id)?;
                let x = self.one(id, &xs)?;
                self.activation(x, *a, &label)
            }
            Op::Add | Op::Mul | Op::Average => {
                let (xs, _) = self.operands(id)?;
                if xs.is_empty() {
                    return Err(self.malformed(id, "has no operands"));
                }
                let op_type = match op {
                    Op::Add => "Sum",
                    Op::Mul => "Mul",
                    _ => "Mean",
                };
                if op_type == "Mul" {
                    let mut acc = xs[0].clone();
                    for (k, x) in xs.iter().enumerate().skip(1) {
                        let l = if k + 1 == xs.len() {
                            label.clone()
                        } else {
                            format!("{label}/{k}")
                        };
                        acc = self.node("Mul", &l, vec![acc, x.clone()], vec![]);
                    }
                    acc
                } else {
                    self.node(op_type, &label, xs, vec![])
                }
            }
            Op::Concat { axis } => {
                let (xs, _) = self.operands(id)?;
                let axis = if *axis < 0 { *axis } else { axis + 1 };
                self.node(
                    "Concat",
                    &label,
                    xs,
                    vec![attribute("axis", Attr::Int(axis))],
                )
            }
            Op::Repeat { times } => {
                let (xs, _) = self.operands(id)?;
                let x = self.one(id, &xs)?;
                let rank = self.shape(id)?.len() + 1;
                let axes = self.int64_init(&format!("{label}/axes"), &[1]);
                let u = self.node(
                    "Unsqueeze",
                    &format!("{label}/unsqueeze"),
                    vec![x, axes],
                    vec![],
                );
                let mut reps = vec![1i64; rank];
                reps[1] = *times as i64;
                let r = self.int64_init(&format!("{label}/repeats"), &reps);
                self.node("Tile", &label, vec![u, r], vec![])
            }
            Op::Recurrent {
                cell,
                units,
                return_sequences,
                reverse,
                bias,
                return_state,
                initial_state,
                masked,
            } => {
                if *masked {
                    return Err(unsupported(
                        "it reads a mask; export the checked model, whose time axis is `T` \
                         with every step real",
                    ));
                }
                if *return_sequences && *return_state {
                    return Err(unsupported(
                        "a sequence and a final state from one layer (the checker rejects it)",
                    ));
                }
                self.recurrent(
                    id,
                    *cell,
                    *units,
                    *return_sequences,
                    *reverse,
                    *bias,
                    *return_state,
                    *initial_state,
                )?
            }
            Op::Map { .. }
            | Op::TimeSlice { .. }
            | Op::Cell { .. }
            | Op::Slice { .. }
            | Op::Stack
            | Op::MaskStep { .. }
            | Op::MaskedPool { .. }
            | Op::Grad(_) => {
                return Err(unsupported(
                    "the optimizer, unrolling, masking or autodiff makes this op; export the \
                     checked graph",
                ))
            }
        };
        self.values.insert(id, value);
        Ok(())
    }

    /// The single data operand of `id`.
    fn one(&self, id: NodeId, xs: &[String]) -> Result<String, ExportError> {
        match xs {
            [x] => Ok(x.clone()),
            _ => Err(self.malformed(id, format!("has {} data operands, expected 1", xs.len()))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn recurrent(
        &mut self,
        id: NodeId,
        cell: CellKind,
        units: usize,
        return_sequences: bool,
        reverse: bool,
        bias: bool,
        return_state: bool,
        initial_state: bool,
    ) -> Result<String, ExportError> {
        let label = self.g.node(id).name.clone();
        let (xs, ps) = self.operands(id)?;
        let (x, state) = match (xs.as_slice(), initial_state) {
            ([x], false) => (x.clone(), None),
            ([x, s], true) => (x.clone(), Some(s.clone())),
            _ => return Err(self.malformed(id, "has unexpected operands")),
        };
        let want = 2 + usize::from(bias) * if cell == CellKind::Gru { 2 } else { 1 };
        if ps.len() != want {
            return Err(self.malformed(id, format!("has {} parameters, expected {want}", ps.len())));
        }
        let g = cell.gates();
        let w = self.param(ps[0])?;
        let r = self.param(ps[1])?;
        let features = w.len() / (g * units).max(1);
        let w_onnx = recurrent_to_onnx(&w.data, features, units, cell);
        let r_onnx = recurrent_to_onnx(&r.data, units, units, cell);
        let w_name = format!("{}/onnx", self.g.node(ps[0]).name);
        let w_name = self.float_init(&w_name, &[1, g * units, features], &w_onnx);
        let r_name = format!("{}/onnx", self.g.node(ps[1]).name);
        let r_name = self.float_init(&r_name, &[1, g * units, units], &r_onnx);
        let mut ins = vec![String::new(), w_name, r_name];
        if bias {
            // ONNX's B is [Wb ++ Rb]; netc has Rb only for a GRU.
            let mut b = bias_to_onnx(&self.param(ps[2])?.data, units, cell);
            match ps.get(3) {
                Some(&rb) => b.extend(bias_to_onnx(&self.param(rb)?.data, units, cell)),
                None => b.extend(std::iter::repeat_n(0.0, g * units)),
            }
            let b_name = format!("{label}/B");
            ins.push(self.float_init(&b_name, &[1, 2 * g * units], &b));
        } else {
            ins.push(String::new());
        }
        // sequence_lens: every step is real.
        ins.push(String::new());
        // Axis 0 of the state tensors [1, N, U] (made when first needed).
        let mut made = None;
        let mut axes0 = |ex: &mut Self| -> String {
            made.get_or_insert_with(|| ex.int64_init(&format!("{label}/axes0"), &[0]))
                .clone()
        };
        if let Some(s) = state {
            // [N, S] → [1, N, S]; an LSTM's state is h ++ c.
            match cell {
                CellKind::Lstm => {
                    let starts_h = self.int64_init(&format!("{label}/h_start"), &[0]);
                    let mid = self.int64_init(&format!("{label}/c_start"), &[units as i64]);
                    let end = self.int64_init(&format!("{label}/c_end"), &[2 * units as i64]);
                    let axis = self.int64_init(&format!("{label}/state_axis"), &[1]);
                    let h = self.node(
                        "Slice",
                        &format!("{label}/h0_slice"),
                        vec![s.clone(), starts_h, mid.clone(), axis.clone()],
                        vec![],
                    );
                    let c = self.node(
                        "Slice",
                        &format!("{label}/c0_slice"),
                        vec![s, mid, end, axis],
                        vec![],
                    );
                    let axes = axes0(self);
                    let h0 = self.node(
                        "Unsqueeze",
                        &format!("{label}/h0"),
                        vec![h, axes.clone()],
                        vec![],
                    );
                    let c0 = self.node("Unsqueeze", &format!("{label}/c0"), vec![c, axes], vec![]);
                    ins.push(h0);
                    ins.push(c0);
                }
                CellKind::Rnn | CellKind::Gru => {
                    let axes = axes0(self);
                    let h0 = self.node("Unsqueeze", &format!("{label}/h0"), vec![s, axes], vec![]);
                    ins.push(h0);
                }
            }
        }
        while ins.last().is_some_and(String::is_empty) {
            ins.pop();
        }
        ins[0] = self.transpose(x, vec![1, 0, 2], &format!("{label}/time_major"));
        let op_type = match cell {
            CellKind::Rnn => "RNN",
            CellKind::Lstm => "LSTM",
            CellKind::Gru => "GRU",
        };
        let mut attrs = vec![
            attribute(
                "direction",
                Attr::Str(if reverse { "reverse" } else { "forward" }),
            ),
            attribute("hidden_size", Attr::Int(units as i64)),
        ];
        if cell == CellKind::Gru {
            attrs.push(attribute("linear_before_reset", Attr::Int(1)));
        }
        let node_name = self.fresh(&format!("{label}/{}", op_type.to_lowercase()));
        let y = self.fresh(&format!("{label}/Y"));
        let y_h = self.fresh(&format!("{label}/Y_h"));
        let y_c = self.fresh(&format!("{label}/Y_c"));
        let lstm_state = return_state && cell == CellKind::Lstm;
        let outputs = if return_sequences {
            vec![y.clone()]
        } else if lstm_state {
            vec![String::new(), y_h.clone(), y_c.clone()]
        } else {
            vec![String::new(), y_h.clone()]
        };
        self.node_with_outputs(op_type, &node_name, ins, outputs, attrs);
        Ok(if return_sequences {
            // [T, 1, N, U] → [N, T, U].
            let axes1 = self.int64_init(&format!("{label}/axes1"), &[1]);
            let s = self.node(
                "Squeeze",
                &format!("{label}/squeeze"),
                vec![y, axes1],
                vec![],
            );
            self.transpose(s, vec![1, 0, 2], &label)
        } else if lstm_state {
            // [1, N, U] twice → [N, 2U] (h ++ c).
            let hc = self.node(
                "Concat",
                &format!("{label}/state"),
                vec![y_h, y_c],
                vec![attribute("axis", Attr::Int(2))],
            );
            let axes = axes0(self);
            self.node("Squeeze", &label, vec![hc, axes], vec![])
        } else {
            let axes = axes0(self);
            self.node("Squeeze", &label, vec![y_h, axes], vec![])
        })
    }
}

/// `kernel_shape`, `strides` and `pads` (or `auto_pad`) of a window op.
fn window_attrs(
    spatial: Spatial,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: Padding,
) -> Vec<AttributeProto> {
    let pick = |(h, w): (usize, usize)| match spatial {
        Spatial::Image => vec![h as i64, w as i64],
        Spatial::Seq => vec![w as i64],
    };
    let mut attrs = vec![
        attribute("kernel_shape", Attr::Ints(pick(kernel))),
        attribute("strides", Attr::Ints(pick(stride))),
    ];
    match padding {
        Padding::Valid => {}
        // The extra step, if any, after: ONNX's SAME_UPPER.
        Padding::Same => attrs.push(attribute("auto_pad", Attr::Str("SAME_UPPER"))),
        Padding::Explicit(ph, pw) => {
            let p = pick((ph, pw));
            let pads = p.iter().chain(p.iter()).copied().collect();
            attrs.push(attribute("pads", Attr::Ints(pads)));
        }
    }
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lstm_gates_are_reordered_to_iofc() {
        // One feature, one unit: columns i, f, c, o hold 1, 2, 3, 4.
        let w = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(
            recurrent_to_onnx(&w, 1, 1, CellKind::Lstm),
            [1.0, 4.0, 2.0, 3.0]
        );
        assert_eq!(bias_to_onnx(&w, 1, CellKind::Lstm), [1.0, 4.0, 2.0, 3.0]);
    }

    #[test]
    fn recurrent_matrices_are_transposed() {
        // Two features, one unit, GRU: W[f][gate].
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        // ONNX [gate][f].
        assert_eq!(
            recurrent_to_onnx(&w, 2, 1, CellKind::Gru),
            [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
    }

    #[test]
    fn filters_go_to_f_c_window() {
        // Window 2, C 1, F 2: [k][c][f] = 1, 2 / 3, 4.
        let w = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(filters_to_onnx(&w, 2, 1, 2), [1.0, 3.0, 2.0, 4.0]);
    }
}
