//! Graph → kernel IR for one batch size. Every forward op becomes one or
//! more kernels: matrix-shaped work (conv2d, dense, the recurrent matrix
//! products) as contractions, everything else as loop nests. Recurrent
//! layers must be unrolled into cells first (see `crate::pipeline`). Flatten,
//! reshape and inference-time dropout are free: their output aliases
//! their input's buffer.

mod batchnorm;
mod cell_grad;
mod grad;
use super::ir::*;
use crate::graph::{Graph, NodeId};
use crate::op::{Activation, CellKind, MapBinary, MapExpr, MapUnary, Op, Padding, PoolKind};
use crate::shape::same_out;
use std::collections::HashMap;
// `Expr` implements these; the method form reads better in long chains.
use std::ops::{Add, Mul};
use thiserror::Error;

/// Why a graph could not be lowered.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LowerError {
    /// Shape inference did not succeed for a node (check first).
    #[error("node `{0}` has no inferred shape; the model must check without errors first")]
    NoShape(String),
    /// The batch size is zero or absurdly large.
    #[error("the batch size must be between 1 and {}", crate::shape::MAX_DIM)]
    BadBatch,
    /// The graph has a cycle.
    #[error("the graph has a cycle")]
    Cycle,
    /// A whole recurrent layer: only its unrolled cells have kernels
    /// (`pipeline::Compilation` unrolls before lowering).
    #[error("recurrent layer `{0}` must be unrolled over time before it can be lowered")]
    NotUnrolled(String),
}

/// Lowers a checked graph for batch size `batch`.
pub fn lower(g: &Graph, batch: usize) -> Result<Program, LowerError> {
    if batch == 0 || batch > crate::shape::MAX_DIM {
        return Err(LowerError::BadBatch);
    }
    let mut l = Lowering {
        g,
        n: batch,
        p: Program {
            name: g.name.clone(),
            batch,
            buffers: vec![],
            kernels: vec![],
            inputs: vec![],
            params: vec![],
            outputs: vec![],
        },
        value: HashMap::new(),
        views: HashMap::new(),
        batched: crate::infer::batched(g),
        products: HashMap::new(),
        gates: HashMap::new(),
        transposes: HashMap::new(),
    };
    for id in g.topo_order().ok_or(LowerError::Cycle)? {
        l.node(id)?;
    }
    for (name, id) in &g.outputs {
        let buf = l.value[id];
        let shape = l.full_shape(*id)?;
        l.p.outputs.push(Binding {
            name: name.clone(),
            buf,
            shape,
        });
    }
    Ok(l.p)
}

struct Lowering<'g> {
    g: &'g Graph,
    n: usize,
    p: Program,
    /// The buffer holding each node's value.
    value: HashMap<NodeId, BufId>,
    /// Nodes read in place (time steps, state slices): no kernel of their own.
    views: HashMap<NodeId, View>,
    /// Whether each node has the batch axis (folded weights do not).
    batched: Vec<bool>,
    /// `h·U (+ b_r)` products already computed, by (state, U, recurrent
    /// bias): a training step's cell gradients reuse the forward step's
    /// product instead of recomputing it (buffers are written once, so the
    /// value is still there; the memory plan keeps it alive).
    products: HashMap<(BufId, BufId, Option<BufId>), BufId>,
    /// Each unrolled step's activated gates `[N, G·U]` (an RNN's: its new
    /// state), by the step's operands: a cell gradient reads them instead of
    /// recomputing the gates' transcendentals.
    gates: HashMap<StepKey, BufId>,
    /// Transposed parameters already computed, by (parameter, rows, cols):
    /// every unrolled step's `dh = dz·Uᵀ` reads one `Uᵀ`.
    transposes: HashMap<(BufId, usize, usize), BufId>,
}

/// Rows of another buffer read in place: row `n`, element `j` of the view
/// is `buf[offset + n·row_stride + j]`.
#[derive(Clone, Copy, Debug)]
struct View {
    buf: BufId,
    offset: usize,
    row_stride: usize,
}

/// Builds a loop nest over `dims`, handing the body builder one variable per dim.
fn nest(dims: &[usize], scalars: usize, body: impl FnOnce(&[Var]) -> Vec<Stmt>) -> LoopKernel {
    let vars: Vec<Var> = (0..dims.len()).collect();
    let mut stmts = body(&vars);
    for (v, d) in vars.iter().zip(dims).rev() {
        stmts = vec![Stmt::Loop {
            var: *v,
            extent: *d,
            body: stmts,
        }];
    }
    LoopKernel {
        vars: dims.len(),
        scalars,
        body: stmts,
    }
}

/// Row-major linear index of `vars` over `dims`.
fn linear(vars: &[Var], dims: &[usize]) -> Index {
    let mut stride = 1i64;
    let mut terms = Vec::new();
    for (v, d) in vars.iter().zip(dims).rev() {
        terms.push((*v, stride));
        stride *= *d as i64;
    }
    terms.reverse();
    Index::new(terms, 0)
}

fn act_expr(a: Activation, x: Expr) -> Expr {
    match a {
        Activation::Relu => x.un(UnOp::Relu),
        Activation::Sigmoid => x.un(UnOp::Sigmoid),
        Activation::Tanh => x.un(UnOp::Tanh),
        Activation::LeakyRelu(alpha) => x.clone().select(
            Cmp::Gt,
            Expr::Const(0.0),
            x.clone(),
            Expr::Const(alpha).mul(x),
        ),
        // Softmax is not elementwise; lowered separately.
        Activation::Softmax => x,
    }
}

impl Lowering<'_> {
    fn shape(&self, id: NodeId) -> Result<Vec<usize>, LowerError> {
        let n = self.g.node(id);
        n.shape
            .as_ref()
            .map(|s| s.0.clone())
            .ok_or_else(|| LowerError::NoShape(n.name.clone()))
    }

    fn full_shape(&self, id: NodeId) -> Result<Vec<usize>, LowerError> {
        if !self.batched[id.index()] {
            return self.shape(id);
        }
        let mut s = vec![self.n];
        s.extend(self.shape(id)?);
        Ok(s)
    }

    /// Node `id`'s value as rows of a buffer (a registered view, or its
    /// own buffer with one row per example).
    fn view_of(&self, id: NodeId) -> Result<View, LowerError> {
        if let Some(v) = self.views.get(&id) {
            return Ok(*v);
        }
        Ok(View {
            buf: self.value[&id],
            offset: 0,
            row_stride: self.shape(id)?.iter().product(),
        })
    }

    /// Whether every consumer of `id` reads it through a view (cells read
    /// their time step in place, stacks read every input in place).
    fn only_viewed(&self, id: NodeId) -> bool {
        if self.g.outputs.iter().any(|(_, o)| *o == id) {
            return false;
        }
        self.g
            .g
            .edges_directed(id, petgraph::Direction::Outgoing)
            .all(|e| {
                use petgraph::visit::EdgeRef;
                match self.g.node(e.target()).op {
                    Op::Stack => true,
                    Op::Cell { .. } | Op::Grad(crate::op::GradOp::CellGrad { .. }) => {
                        *e.weight() == 0
                    }
                    _ => false,
                }
            })
    }

    fn buffer(&mut self, name: String, len: usize, kind: BufKind) -> BufId {
        self.p.buffers.push(Buffer { name, len, kind });
        self.p.buffers.len() - 1
    }

    fn temp(&mut self, name: String, len: usize) -> BufId {
        self.buffer(name, len, BufKind::Temp)
    }

    fn kernel(&mut self, name: String, body: KernelBody) {
        self.p.kernels.push(Kernel { name, body });
    }

    fn looped(&mut self, name: String, k: LoopKernel) {
        self.kernel(name, KernelBody::Loop(k));
    }

    fn node(&mut self, id: NodeId) -> Result<(), LowerError> {
        let node = self.g.node(id);
        let name = node.name.clone();
        let ins: Vec<NodeId> = self.g.inputs_of(id);
        let ib: Vec<BufId> = ins.iter().map(|i| self.value[i]).collect();
        let out_len = self.full_shape(id)?.iter().product();
        let buf = match &node.op {
            Op::Input => {
                let shape = self.full_shape(id)?;
                let b = self.buffer(name.clone(), out_len, BufKind::Input(name.clone()));
                self.p.inputs.push(Binding {
                    name,
                    buf: b,
                    shape,
                });
                b
            }
            Op::Param { .. } => {
                let shape = self.shape(id)?;
                let len = shape.iter().product();
                let b = self.buffer(name.clone(), len, BufKind::Param(name.clone()));
                self.p.params.push(Binding {
                    name,
                    buf: b,
                    shape,
                });
                b
            }
            Op::Flatten | Op::Reshape { .. } | Op::Dropout { .. } => ib[0],
            Op::Conv2d {
                kernel,
                stride,
                padding,
                filters,
                activation,
            } => {
                let x = self.full_shape(ins[0])?;
                let out = self.temp(name.clone(), out_len);
                let (xb, hp, wp) = self.pad(&name, ib[0], &x, *kernel, *stride, *padding);
                let [n, _, _, c] = [x[0], x[1], x[2], x[3]];
                let o = self.full_shape(id)?;
                self.kernel(
                    name,
                    KernelBody::Contraction(Contraction {
                        m_dims: [n, o[1], o[2]],
                        m_strides: [hp * wp * c, stride.0 * wp * c, stride.1 * c],
                        n: *filters,
                        k_dims: [kernel.0, kernel.1, c],
                        k_strides: [wp * c, c],
                        a: (xb, 0),
                        b: (ib[1], 0),
                        ldb: *filters,
                        c: (out, 0),
                        ldc: *filters,
                        bias: ib.get(2).map(|b| (*b, 0)),
                        epilogue: epilogue(*activation),
                        accumulate: false,
                    }),
                );
                out
            }
            Op::Dense { units, activation } => {
                let x = self.full_shape(ins[0])?;
                let f = *x.last().unwrap_or(&1);
                let rows = x.iter().product::<usize>() / f.max(1);
                let out = self.temp(name.clone(), out_len);
                let mut c = dense(rows, f, *units, ib[0], ib[1], ib.get(2).copied(), out);
                c.epilogue = epilogue(*activation);
                self.kernel(name, KernelBody::Contraction(c));
                out
            }
            Op::Map { expr } => {
                let out = self.temp(name.clone(), out_len);
                let own = self.shape(id)?;
                let c = own.last().copied().unwrap_or(1).max(1);
                let per: usize = own.iter().product();
                let n = out_len / per.max(1);
                let mut loads = Vec::new();
                for (i, b) in ib.iter().enumerate() {
                    let len = self.p.buffers[*b].len;
                    // vars: 0 example, 1 row within the example, 2 channel
                    let at = if len == out_len {
                        Index::new([(0, per as i64), (1, c as i64), (2, 1)], 0)
                    } else if len == per {
                        Index::new([(1, c as i64), (2, 1)], 0)
                    } else if len == c {
                        Index::var(2, 1)
                    } else {
                        return Err(LowerError::NoShape(self.g.node(ins[i]).name.clone()));
                    };
                    loads.push(Expr::load(*b, at));
                }
                let mut pre = Vec::new();
                let mut scalars = 0;
                let value = map_expr(expr, &loads, &mut pre, &mut scalars);
                pre.push(Stmt::Store {
                    buf: out,
                    index: Index::new([(0, per as i64), (1, c as i64), (2, 1)], 0),
                    value,
                });
                let k = nest(&[n, per / c, c], scalars, |_| pre);
                self.looped(name, k);
                out
            }
            Op::TimeSlice { step } => {
                let x = self.full_shape(ins[0])?;
                let (n, t, f) = (x[0], x[1], x[2]);
                let v = View {
                    buf: ib[0],
                    offset: step * f,
                    row_stride: t * f,
                };
                self.view_or_copy(id, &name, v, n, f)?
            }
            Op::Slice { start, len } => {
                let x = self.full_shape(ins[0])?;
                let d = *x.last().unwrap_or(&1);
                let rows = x.iter().product::<usize>() / d.max(1);
                if x.len() == 2 {
                    let v = View {
                        buf: ib[0],
                        offset: *start,
                        row_stride: d,
                    };
                    self.view_or_copy(id, &name, v, rows, *len)?
                } else {
                    let out = self.temp(name.clone(), out_len);
                    let (start, len) = (*start, *len);
                    let k = nest(&[rows, len], 0, |v| {
                        vec![Stmt::Store {
                            buf: out,
                            index: linear(v, &[rows, len]),
                            value: Expr::load(
                                ib[0],
                                Index::new([(v[0], d as i64), (v[1], 1)], start as i64),
                            ),
                        }]
                    });
                    self.looped(name, k);
                    out
                }
            }
            Op::Grad(g) => self.grad(id, g, &ins, &ib)?,
            Op::Stack => {
                let o = self.full_shape(id)?;
                let (n, t, f) = (o[0], o[1], o[2]);
                let out = self.temp(name.clone(), out_len);
                let views = ins
                    .iter()
                    .map(|i| self.view_of(*i))
                    .collect::<Result<Vec<_>, _>>()?;
                let k = nest(&[n, f], 0, |v| {
                    views
                        .iter()
                        .enumerate()
                        .map(|(step, w)| Stmt::Store {
                            buf: out,
                            index: Index::new(
                                [(v[0], (t * f) as i64), (v[1], 1)],
                                (step * f) as i64,
                            ),
                            value: Expr::load(
                                w.buf,
                                Index::new(
                                    [(v[0], w.row_stride as i64), (v[1], 1)],
                                    w.offset as i64,
                                ),
                            ),
                        })
                        .collect()
                });
                self.looped(name, k);
                out
            }
            Op::Cell {
                cell,
                units,
                has_state,
                recurrent_bias,
            } => {
                let xt = self.view_of(ins[0])?;
                let c = StepCell {
                    cell: *cell,
                    n: self.n,
                    u: *units,
                    xt,
                    uw: ib[1],
                    rb: recurrent_bias.then(|| ib[2]),
                    state: has_state.then(|| ib[ib.len() - 1]),
                };
                self.cell_step(&name, &c)
            }
            Op::Pool2d {
                kind,
                size,
                stride,
                padding,
            } => {
                let x = self.full_shape(ins[0])?;
                let o = self.full_shape(id)?;
                let out = self.temp(name.clone(), out_len);
                let k = pool(*kind, &x, &o, *size, *stride, *padding, ib[0], out);
                self.looped(name, k);
                out
            }
            Op::GlobalPool2d { kind } => {
                // One [H, W] window; [N, C] is laid out as [N, 1, 1, C].
                let x = self.full_shape(ins[0])?;
                let o = [x[0], 1, 1, x[3]];
                let out = self.temp(name.clone(), out_len);
                let whole = (x[1], x[2]);
                let k = pool(*kind, &x, &o, whole, whole, Padding::Valid, ib[0], out);
                self.looped(name, k);
                out
            }
            Op::Activation(Activation::Softmax) => {
                let x = self.full_shape(id)?;
                let c = *x.last().unwrap_or(&1);
                let out = self.temp(name.clone(), out_len);
                self.looped(name, softmax(out_len / c, c, ib[0], out));
                out
            }
            Op::Activation(a) => {
                let out = self.temp(name.clone(), out_len);
                let a = *a;
                let k = nest(&[out_len], 0, |v| {
                    vec![Stmt::Store {
                        buf: out,
                        index: Index::var(v[0], 1),
                        value: act_expr(a, Expr::load(ib[0], Index::var(v[0], 1))),
                    }]
                });
                self.looped(name, k);
                out
            }
            Op::BatchNorm { epsilon, .. } => {
                let x = self.full_shape(id)?;
                let c = *x.last().unwrap_or(&1);
                let out = self.temp(name.clone(), out_len);
                let eps = *epsilon;
                let k = nest(&[out_len / c, c], 0, |v| {
                    let at = linear(v, &[out_len / c, c]);
                    let ch = Index::var(v[1], 1);
                    // (x - mean) * gamma / sqrt(var + eps) + beta
                    let inv = Expr::load(ib[1], ch.clone()).bin(
                        BinOp::Div,
                        Expr::load(ib[4], ch.clone())
                            .add(Expr::Const(eps))
                            .un(UnOp::Sqrt),
                    );
                    let value = Expr::load(ib[0], at.clone())
                        .bin(BinOp::Sub, Expr::load(ib[3], ch.clone()))
                        .mul(inv)
                        .add(Expr::load(ib[2], ch));
                    vec![Stmt::Store {
                        buf: out,
                        index: at,
                        value,
                    }]
                });
                self.looped(name, k);
                out
            }
            Op::Add | Op::Mul | Op::Average => {
                let out = self.temp(name.clone(), out_len);
                let op = if matches!(node.op, Op::Mul) {
                    BinOp::Mul
                } else {
                    BinOp::Add
                };
                let avg = matches!(node.op, Op::Average);
                let count = ib.len() as f32;
                let k = nest(&[out_len], 0, |v| {
                    let at = Index::var(v[0], 1);
                    let mut e = Expr::load(ib[0], at.clone());
                    for b in &ib[1..] {
                        e = e.bin(op, Expr::load(*b, at.clone()));
                    }
                    if avg {
                        e = e.bin(BinOp::Div, Expr::Const(count));
                    }
                    vec![Stmt::Store {
                        buf: out,
                        index: at,
                        value: e,
                    }]
                });
                self.looped(name, k);
                out
            }
            Op::Concat { axis } => {
                let o = self.full_shape(id)?;
                let rank = o.len() as i64 - 1;
                let ax = (if *axis < 0 { axis + rank } else { *axis }) as usize + 1;
                let out = self.temp(name.clone(), out_len);
                let outer: usize = o[..ax].iter().product();
                let inner: usize = o[ax + 1..].iter().product();
                let mut off = 0;
                for (i, src) in ins.iter().enumerate() {
                    let d = self.full_shape(*src)?[ax];
                    let k = nest(&[outer, d, inner], 0, |v| {
                        vec![Stmt::Store {
                            buf: out,
                            index: linear(v, &[outer, o[ax], inner]).shift((off * inner) as i64),
                            value: Expr::load(ib[i], linear(v, &[outer, d, inner])),
                        }]
                    });
                    self.looped(format!("{name}.part{i}"), k);
                    off += d;
                }
                out
            }
            Op::Recurrent { .. } => {
                return Err(LowerError::NotUnrolled(self.g.node(id).name.clone()));
            }
        };
        self.value.insert(id, buf);
        Ok(())
    }

    /// Zero-pads an NHWC input for a window op; returns the (possibly
    /// unchanged) buffer and the padded height and width.
    fn pad(
        &mut self,
        name: &str,
        xb: BufId,
        x: &[usize],
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: Padding,
    ) -> (BufId, usize, usize) {
        let [n, h, w, c] = [x[0], x[1], x[2], x[3]];
        let ((pt, pb), (pl, pr)) = pads(h, w, kernel, stride, padding);
        if pt + pb + pl + pr == 0 {
            return (xb, h, w);
        }
        let (hp, wp) = (h + pt + pb, w + pl + pr);
        let len = n * hp * wp * c;
        let xp = self.temp(format!("{name}.padded"), len);
        let zero = nest(&[len], 0, |v| {
            vec![Stmt::Store {
                buf: xp,
                index: Index::var(v[0], 1),
                value: Expr::Const(0.0),
            }]
        });
        self.looped(format!("{name}.zero"), zero);
        let copy = nest(&[n, h, w, c], 0, |v| {
            vec![Stmt::Store {
                buf: xp,
                index: linear(v, &[n, hp, wp, c]).shift(((pt * wp + pl) * c) as i64),
                value: Expr::load(xb, linear(v, &[n, h, w, c])),
            }]
        });
        self.looped(format!("{name}.pad"), copy);
        (xp, hp, wp)
    }
}

/// Padding (top, bottom), (left, right) of a window op.
fn pads(
    h: usize,
    w: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: Padding,
) -> ((usize, usize), (usize, usize)) {
    match padding {
        Padding::Valid => ((0, 0), (0, 0)),
        Padding::Explicit(ph, pw) => ((ph, ph), (pw, pw)),
        Padding::Same => {
            let (_, t, b) = same_out(h, kernel.0, stride.0);
            let (_, l, r) = same_out(w, kernel.1, stride.1);
            ((t, b), (l, r))
        }
    }
}

/// `out[rows, units] = x[rows, f] · w[f, units] + bias`.
fn dense(
    rows: usize,
    f: usize,
    units: usize,
    x: BufId,
    w: BufId,
    bias: Option<BufId>,
    out: BufId,
) -> Contraction {
    Contraction {
        m_dims: [1, 1, rows],
        m_strides: [0, 0, f],
        n: units,
        k_dims: [1, 1, f],
        k_strides: [0, 0],
        a: (x, 0),
        b: (w, 0),
        ldb: units,
        c: (out, 0),
        ldc: units,
        bias: bias.map(|b| (b, 0)),
        epilogue: Epilogue::None,
        accumulate: false,
    }
}

/// Loop variables of one window position over an NHWC input.
struct WindowVars {
    n: Var,
    oh: Var,
    ow: Var,
    kh: Var,
    kw: Var,
    c: Var,
}

/// For a window op over input `[n, h, w, c]` zero-padded by `pt` rows and
/// `pl` columns: the guards keeping the window's input row and column
/// inside the unpadded input, and the input element's index.
fn window_at(
    x: [usize; 4],
    stride: (usize, usize),
    (pt, pl): (usize, usize),
    v: WindowVars,
) -> (Vec<(Index, usize)>, Index) {
    let [_, h, w, c] = x;
    let ih = Index::new([(v.oh, stride.0 as i64), (v.kh, 1)], -(pt as i64));
    let iw = Index::new([(v.ow, stride.1 as i64), (v.kw, 1)], -(pl as i64));
    let at = Index::new(
        [
            (v.n, (h * w * c) as i64),
            (v.oh, (stride.0 * w * c) as i64),
            (v.kh, (w * c) as i64),
            (v.ow, (stride.1 * c) as i64),
            (v.kw, c as i64),
            (v.c, 1),
        ],
        -((pt * w * c + pl * c) as i64),
    );
    (vec![(ih, h), (iw, w)], at)
}

#[allow(clippy::too_many_arguments)]
fn pool(
    kind: PoolKind,
    x: &[usize],
    o: &[usize],
    size: (usize, usize),
    stride: (usize, usize),
    padding: Padding,
    xb: BufId,
    out: BufId,
) -> LoopKernel {
    let [n, h, w, c] = [x[0], x[1], x[2], x[3]];
    let (oh, ow) = (o[1], o[2]);
    let ((pt, _), (pl, _)) = pads(h, w, size, stride, padding);
    // vars: 0 n, 1 oh, 2 ow, 3 c, 4 kh, 5 kw; scalars: 0 acc, 1 count
    let mut k = nest(&[n, oh, ow, c], 2, |v| {
        let (guards, at) = window_at(
            [n, h, w, c],
            stride,
            (pt, pl),
            WindowVars {
                n: v[0],
                oh: v[1],
                ow: v[2],
                kh: 4,
                kw: 5,
                c: v[3],
            },
        );
        let x = Expr::load(xb, at);
        let (init, update) = match kind {
            PoolKind::Max => (f32::NEG_INFINITY, Expr::Get(0).bin(BinOp::Max, x)),
            PoolKind::Avg => (0.0, Expr::Get(0).add(x)),
        };
        let mut inner = vec![Stmt::Set {
            scalar: 0,
            value: update,
        }];
        if kind == PoolKind::Avg {
            inner.push(Stmt::Set {
                scalar: 1,
                value: Expr::Get(1) + Expr::Const(1.0),
            });
        }
        let window = vec![Stmt::Loop {
            var: 4,
            extent: size.0,
            body: vec![Stmt::Loop {
                var: 5,
                extent: size.1,
                body: vec![Stmt::IfInBounds {
                    conds: guards,
                    body: inner,
                }],
            }],
        }];
        let result = match kind {
            PoolKind::Max => Expr::Get(0),
            // Padding is excluded from the mean, as in Keras/TensorFlow.
            PoolKind::Avg => Expr::Get(0).bin(BinOp::Div, Expr::Get(1)),
        };
        let mut body = vec![Stmt::Set {
            scalar: 0,
            value: Expr::Const(init),
        }];
        if kind == PoolKind::Avg {
            body.push(Stmt::Set {
                scalar: 1,
                value: Expr::Const(0.0),
            });
        }
        body.extend(window);
        body.push(Stmt::Store {
            buf: out,
            index: linear(v, &[n, oh, ow, c]),
            value: result,
        });
        body
    });
    k.vars = 6;
    k
}

/// Numerically stable softmax over the last axis of `[rows, c]`.
fn softmax(rows: usize, c: usize, x: BufId, out: BufId) -> LoopKernel {
    // vars: 0 row, 1 col; scalars: 0 max, 1 sum, 2 e
    let mut k = nest(&[rows], 3, |v| {
        let at = Index::new([(v[0], c as i64), (1, 1)], 0);
        let col = |body| Stmt::Loop {
            var: 1,
            extent: c,
            body,
        };
        vec![
            Stmt::Set {
                scalar: 0,
                value: Expr::Const(f32::NEG_INFINITY),
            },
            col(vec![Stmt::Set {
                scalar: 0,
                value: Expr::Get(0).bin(BinOp::Max, Expr::load(x, at.clone())),
            }]),
            Stmt::Set {
                scalar: 1,
                value: Expr::Const(0.0),
            },
            col(vec![
                Stmt::Set {
                    scalar: 2,
                    value: Expr::load(x, at.clone())
                        .bin(BinOp::Sub, Expr::Get(0))
                        .un(UnOp::Exp),
                },
                Stmt::Store {
                    buf: out,
                    index: at.clone(),
                    value: Expr::Get(2),
                },
                Stmt::Set {
                    scalar: 1,
                    value: Expr::Get(1).add(Expr::Get(2)),
                },
            ]),
            col(vec![Stmt::Store {
                buf: out,
                index: at.clone(),
                value: Expr::load(out, at.clone()).bin(BinOp::Div, Expr::Get(1)),
            }]),
        ]
    });
    k.vars = 2;
    k
}

/// The contraction epilogue of a fused activation.
fn epilogue(a: Option<Activation>) -> Epilogue {
    match a {
        None | Some(Activation::Softmax) => Epilogue::None,
        Some(Activation::Relu) => Epilogue::Relu,
        Some(Activation::LeakyRelu(alpha)) => Epilogue::LeakyRelu(alpha),
        Some(Activation::Sigmoid) => Epilogue::Sigmoid,
        Some(Activation::Tanh) => Epilogue::Tanh,
    }
}

/// A map expression as a kernel IR expression over `loads` (one per
/// input); subexpressions used more than once (a leaky ReLU's argument)
/// go through a scalar register set in `pre`.
fn map_expr(e: &MapExpr, loads: &[Expr], pre: &mut Vec<Stmt>, scalars: &mut usize) -> Expr {
    match e {
        MapExpr::Input(i) => loads[*i].clone(),
        MapExpr::Const(c) => Expr::Const(*c),
        MapExpr::Unary(MapUnary::Sqrt, x) => map_expr(x, loads, pre, scalars).un(UnOp::Sqrt),
        MapExpr::Unary(MapUnary::Act(a), x) => {
            let mut x = map_expr(x, loads, pre, scalars);
            if matches!(a, Activation::LeakyRelu(_)) && !matches!(x, Expr::Load(..) | Expr::Get(_))
            {
                let s = *scalars;
                *scalars += 1;
                pre.push(Stmt::Set {
                    scalar: s,
                    value: x,
                });
                x = Expr::Get(s);
            }
            act_expr(*a, x)
        }
        MapExpr::Binary(op, a, b) => {
            let op = match op {
                MapBinary::Add => BinOp::Add,
                MapBinary::Sub => BinOp::Sub,
                MapBinary::Mul => BinOp::Mul,
                MapBinary::Div => BinOp::Div,
            };
            let a = map_expr(a, loads, pre, scalars);
            a.bin(op, map_expr(b, loads, pre, scalars))
        }
    }
}

/// What identifies one unrolled step's values: its input projection
/// (buffer, offset, row stride), recurrent weight and bias, and previous
/// state.
type StepKey = (BufId, usize, usize, BufId, Option<BufId>, Option<BufId>);

/// Operands of one unrolled cell step.
struct StepCell {
    cell: CellKind,
    n: usize,
    u: usize,
    /// The step's input projection `[N, G·U]` (read in place).
    xt: View,
    uw: BufId,
    rb: Option<BufId>,
    /// The previous state `[N, S]`; zero when absent.
    state: Option<BufId>,
}

impl StepCell {
    fn key(&self) -> StepKey {
        (
            self.xt.buf,
            self.xt.offset,
            self.xt.row_stride,
            self.uw,
            self.rb,
            self.state,
        )
    }
}

impl Lowering<'_> {
    /// A view when every consumer reads in place, else a copy kernel of
    /// `rows × len` elements.
    fn view_or_copy(
        &mut self,
        id: NodeId,
        name: &str,
        v: View,
        rows: usize,
        len: usize,
    ) -> Result<BufId, LowerError> {
        if self.only_viewed(id) {
            self.views.insert(id, v);
            return Ok(v.buf);
        }
        let out = self.temp(name.to_string(), rows * len);
        let k = nest(&[rows, len], 0, |w| {
            vec![Stmt::Store {
                buf: out,
                index: linear(w, &[rows, len]),
                value: Expr::load(
                    v.buf,
                    Index::new([(w[0], v.row_stride as i64), (w[1], 1)], v.offset as i64),
                ),
            }]
        });
        self.looped(name.to_string(), k);
        Ok(out)
    }

    /// `h·U (+ recurrent bias)` of step `c` for all gates, as one
    /// contraction into `<name>.hu`; `None` on the first step (h = 0).
    fn state_product(&mut self, name: &str, c: &StepCell) -> Option<BufId> {
        let (n, u) = (c.n, c.u);
        let gu = c.cell.gates() * u;
        let s_len = if c.cell == CellKind::Lstm { 2 * u } else { u };
        let state = c.state?;
        let key = (state, c.uw, c.rb);
        if let Some(hu) = self.products.get(&key) {
            return Some(*hu);
        }
        let hu = self.temp(format!("{name}.hu"), n * gu);
        self.kernel(
            format!("{name}.hu"),
            KernelBody::Contraction(Contraction {
                m_dims: [1, 1, n],
                m_strides: [0, 0, s_len],
                n: gu,
                k_dims: [1, 1, u],
                k_strides: [0, 0],
                a: (state, 0),
                b: (c.uw, 0),
                ldb: gu,
                c: (hu, 0),
                ldc: gu,
                bias: c.rb.map(|b| (b, 0)),
                epilogue: Epilogue::None,
                accumulate: false,
            }),
        );
        self.products.insert(key, hu);
        Some(hu)
    }

    /// One recurrent step: `h·U (+ recurrent bias)` as one contraction for
    /// all gates (skipped on the first step, where h = 0), then the gate
    /// math in one loop kernel.
    fn cell_step(&mut self, name: &str, c: &StepCell) -> BufId {
        let (n, u) = (c.n, c.u);
        let gu = c.cell.gates() * u;
        let s_len = if c.cell == CellKind::Lstm { 2 * u } else { u };
        let out = self.temp(name.to_string(), n * s_len);
        let hu = self.state_product(name, c);
        // Activated gates go to a [N, G·U] buffer of their own (h·U stays
        // intact for the gradient, see `state_product`): one loop per gate,
        // each with one transcendental call, keeps the calls of neighbouring
        // elements independent (a single loop with all five calls is about
        // twice as slow), and it is still one kernel.
        let gz = if c.cell == CellKind::Rnn {
            out
        } else {
            self.temp(format!("{name}.gates"), n * gu)
        };
        self.gates.insert(c.key(), gz);
        let (xt, rb, state) = (c.xt, c.rb, c.state);
        let (vn, vu) = (0, 1);
        let x_at = |g: usize| {
            Expr::load(
                xt.buf,
                Index::new(
                    [(vn, xt.row_stride as i64), (vu, 1)],
                    (xt.offset + g * u) as i64,
                ),
            )
        };
        let g_at = |g: usize| Index::new([(vn, gu as i64), (vu, 1)], (g * u) as i64);
        // h₋₁·U + b_r for gate g (just b_r, or 0, on the first step).
        let h_at = |g: usize| match (hu, rb) {
            (Some(hu), _) => Expr::load(hu, g_at(g)),
            (None, Some(rb)) => Expr::load(rb, Index::var(vu, 1).shift((g * u) as i64)),
            (None, None) => Expr::Const(0.0),
        };
        let z = |g: usize| x_at(g).add(h_at(g));
        let gate = |g: usize| Expr::load(gz, g_at(g));
        let prev = |off: usize| match state {
            Some(sb) => Expr::load(sb, Index::new([(vn, s_len as i64), (vu, 1)], off as i64)),
            None => Expr::Const(0.0),
        };
        let h_out = Index::new([(vn, s_len as i64), (vu, 1)], 0);
        let per_unit = |body: Vec<Stmt>| Stmt::Loop {
            var: vu,
            extent: u,
            body,
        };
        let set_gate = |g: usize, value: Expr| {
            per_unit(vec![Stmt::Store {
                buf: gz,
                index: g_at(g),
                value,
            }])
        };
        let body = match c.cell {
            CellKind::Rnn => vec![per_unit(vec![Stmt::Store {
                buf: out,
                index: h_out,
                value: z(0).un(UnOp::Tanh),
            }])],
            CellKind::Lstm => vec![
                set_gate(0, z(0).un(UnOp::Sigmoid)), // i
                set_gate(1, z(1).un(UnOp::Sigmoid)), // f
                set_gate(2, z(2).un(UnOp::Tanh)),    // candidate
                set_gate(3, z(3).un(UnOp::Sigmoid)), // o
                per_unit(vec![
                    // c = f·c₋₁ + i·c̃; h = o·tanh(c)
                    Stmt::Set {
                        scalar: 0,
                        value: gate(1).mul(prev(u)).add(gate(0).mul(gate(2))),
                    },
                    Stmt::Store {
                        buf: out,
                        index: h_out.clone().shift(u as i64),
                        value: Expr::Get(0),
                    },
                    Stmt::Store {
                        buf: out,
                        index: h_out,
                        value: gate(3).mul(Expr::Get(0).un(UnOp::Tanh)),
                    },
                ]),
            ],
            CellKind::Gru => vec![
                set_gate(0, z(0).un(UnOp::Sigmoid)), // z
                set_gate(1, z(1).un(UnOp::Sigmoid)), // r
                // Keras reset_after: h̃ = tanh(x·W_h + b_h + r ∘ (h·U_h + b_rh)).
                set_gate(2, x_at(2).add(gate(1).mul(h_at(2))).un(UnOp::Tanh)),
                // h = z·h₋₁ + (1 − z)·h̃
                per_unit(vec![Stmt::Store {
                    buf: out,
                    index: h_out,
                    value: gate(0)
                        .mul(prev(0))
                        .add(Expr::Const(1.0).bin(BinOp::Sub, gate(0)).mul(gate(2))),
                }]),
            ],
        };
        let k = LoopKernel::outer_loop(2, 1, vn, n, body);
        self.looped(name.to_string(), k);
        out
    }
}
