//! Graph → kernel IR for one batch size. Every forward op becomes one or
//! more kernels: matrix-shaped work (conv2d, dense, the recurrent matrix
//! products) as contractions, everything else as loop nests. Flatten,
//! reshape and inference-time dropout are free: their output aliases
//! their input's buffer.

use super::ir::*;
use crate::graph::{Graph, NodeId};
use crate::op::{Activation, CellKind, Op, Padding, PoolKind};
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
        let mut s = vec![self.n];
        s.extend(self.shape(id)?);
        Ok(s)
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
                        epilogue: Epilogue::None,
                        accumulate: false,
                    }),
                );
                out
            }
            Op::Dense { units } => {
                let x = self.full_shape(ins[0])?;
                let f = *x.last().unwrap_or(&1);
                let rows = x.iter().product::<usize>() / f.max(1);
                let out = self.temp(name.clone(), out_len);
                self.kernel(
                    name,
                    KernelBody::Contraction(dense(
                        rows,
                        f,
                        *units,
                        ib[0],
                        ib[1],
                        ib.get(2).copied(),
                        out,
                    )),
                );
                out
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
            Op::Recurrent {
                cell,
                units,
                return_sequences,
                reverse,
                bias,
            } => {
                let x = self.full_shape(ins[0])?;
                let r = Recurrent {
                    cell: *cell,
                    n: x[0],
                    t: x[1],
                    f: x[2],
                    u: *units,
                    reverse: *reverse,
                    x: ib[0],
                    w: ib[1],
                    uw: ib[2],
                    b: if *bias { ib.get(3).copied() } else { None },
                    rb: if *bias && *cell == CellKind::Gru {
                        ib.get(4).copied()
                    } else {
                        None
                    },
                };
                self.recurrent(&name, &r, *return_sequences)
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
        let ih = Index::new([(v[1], stride.0 as i64), (4, 1)], -(pt as i64));
        let iw = Index::new([(v[2], stride.1 as i64), (5, 1)], -(pl as i64));
        let at = Index::new(
            [
                (v[0], (h * w * c) as i64),
                (v[1], (stride.0 * w * c) as i64),
                (4, (w * c) as i64),
                (v[2], (stride.1 * c) as i64),
                (5, c as i64),
                (v[3], 1),
            ],
            -((pt * w * c + pl * c) as i64),
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
                    conds: vec![(ih, h), (iw, w)],
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

/// Operands of one recurrent layer.
struct Recurrent {
    cell: CellKind,
    n: usize,
    t: usize,
    f: usize,
    u: usize,
    reverse: bool,
    x: BufId,
    w: BufId,
    uw: BufId,
    b: Option<BufId>,
    rb: Option<BufId>,
}

impl Lowering<'_> {
    /// A time loop over the cell, unrolled: one input projection for all
    /// steps, then per step one recurrent matrix product and one cell kernel.
    fn recurrent(&mut self, name: &str, r: &Recurrent, return_sequences: bool) -> BufId {
        let (n, t, u) = (r.n, r.t, r.u);
        let gu = r.cell.gates() * u;
        let xw = self.temp(format!("{name}.xw"), n * t * gu);
        self.kernel(
            format!("{name}.input"),
            KernelBody::Contraction(dense(n * t, r.f, gu, r.x, r.w, r.b, xw)),
        );
        let hs = self.temp(format!("{name}.h"), n * t * u);
        let hu = self.temp(format!("{name}.hu"), n * gu);
        let cs = (r.cell == CellKind::Lstm).then(|| self.temp(format!("{name}.c"), n * u));
        for s in 0..t {
            let step = if r.reverse { t - 1 - s } else { s };
            let prev = if r.reverse {
                step + 1
            } else {
                step.wrapping_sub(1)
            };
            if s == 0 {
                // h₋₁ = 0, so h·U is just the recurrent bias (or zero).
                let rb = r.rb;
                let k = nest(&[n, gu], 0, |v| {
                    vec![Stmt::Store {
                        buf: hu,
                        index: linear(v, &[n, gu]),
                        value: rb.map_or(Expr::Const(0.0), |b| Expr::load(b, Index::var(v[1], 1))),
                    }]
                });
                self.looped(format!("{name}.t{step}.hu"), k);
            } else {
                self.kernel(
                    format!("{name}.t{step}.hu"),
                    KernelBody::Contraction(Contraction {
                        m_dims: [1, 1, n],
                        m_strides: [0, 0, t * u],
                        n: gu,
                        k_dims: [1, 1, u],
                        k_strides: [0, 0],
                        a: (hs, prev * u),
                        b: (r.uw, 0),
                        ldb: gu,
                        c: (hu, 0),
                        ldc: gu,
                        bias: r.rb.map(|b| (b, 0)),
                        epilogue: Epilogue::None,
                        accumulate: false,
                    }),
                );
            }
            let first = s == 0;
            let k = nest(&[n, u], 6, |v| {
                let (vn, vu) = (v[0], v[1]);
                // Pre-activation of gate g: xw[n, step, g·U + u] + hu[n, g·U + u].
                let z = |g: usize| {
                    Expr::load(
                        xw,
                        Index::new([(vn, (t * gu) as i64), (vu, 1)], (step * gu + g * u) as i64),
                    )
                    .add(Expr::load(
                        hu,
                        Index::new([(vn, gu as i64), (vu, 1)], (g * u) as i64),
                    ))
                };
                let h_at = Index::new([(vn, (t * u) as i64), (vu, 1)], (step * u) as i64);
                let h_prev = if first {
                    Expr::Const(0.0)
                } else {
                    Expr::load(
                        hs,
                        Index::new([(vn, (t * u) as i64), (vu, 1)], (prev * u) as i64),
                    )
                };
                match r.cell {
                    CellKind::Rnn => vec![Stmt::Store {
                        buf: hs,
                        index: h_at,
                        value: z(0).un(UnOp::Tanh),
                    }],
                    CellKind::Lstm => {
                        let c_at = Index::new([(vn, u as i64), (vu, 1)], 0);
                        let cb = cs.unwrap_or(hs);
                        let c_prev = if first {
                            Expr::Const(0.0)
                        } else {
                            Expr::load(cb, c_at.clone())
                        };
                        vec![
                            Stmt::Set {
                                scalar: 0,
                                value: z(0).un(UnOp::Sigmoid),
                            }, // i
                            Stmt::Set {
                                scalar: 1,
                                value: z(1).un(UnOp::Sigmoid),
                            }, // f
                            Stmt::Set {
                                scalar: 2,
                                value: z(2).un(UnOp::Tanh),
                            }, // candidate
                            Stmt::Set {
                                scalar: 3,
                                value: z(3).un(UnOp::Sigmoid),
                            }, // o
                            Stmt::Set {
                                scalar: 4,
                                value: Expr::Get(1).mul(c_prev).add(Expr::Get(0).mul(Expr::Get(2))),
                            },
                            Stmt::Store {
                                buf: cb,
                                index: c_at,
                                value: Expr::Get(4),
                            },
                            Stmt::Store {
                                buf: hs,
                                index: h_at,
                                value: Expr::Get(3).mul(Expr::Get(4).un(UnOp::Tanh)),
                            },
                        ]
                    }
                    CellKind::Gru => {
                        // Keras reset_after: h̃ = tanh(x·W_h + b_h + r ∘ (h·U_h + b_rh)).
                        let xh = Expr::load(
                            xw,
                            Index::new(
                                [(vn, (t * gu) as i64), (vu, 1)],
                                (step * gu + 2 * u) as i64,
                            ),
                        );
                        let hh =
                            Expr::load(hu, Index::new([(vn, gu as i64), (vu, 1)], (2 * u) as i64));
                        vec![
                            Stmt::Set {
                                scalar: 0,
                                value: z(0).un(UnOp::Sigmoid),
                            }, // z
                            Stmt::Set {
                                scalar: 1,
                                value: z(1).un(UnOp::Sigmoid),
                            }, // r
                            Stmt::Set {
                                scalar: 2,
                                value: xh.add(Expr::Get(1).mul(hh)).un(UnOp::Tanh),
                            },
                            Stmt::Set {
                                scalar: 3,
                                value: h_prev,
                            },
                            // h = z·h₋₁ + (1 − z)·h̃
                            Stmt::Store {
                                buf: hs,
                                index: h_at,
                                value: Expr::Get(0).mul(Expr::Get(3)).add(
                                    Expr::Const(1.0)
                                        .bin(BinOp::Sub, Expr::Get(0))
                                        .mul(Expr::Get(2)),
                                ),
                            },
                        ]
                    }
                }
            });
            self.looped(format!("{name}.t{step}.cell"), k);
        }
        if return_sequences {
            return hs;
        }
        let last = if r.reverse { 0 } else { t - 1 };
        let out = self.temp(name.to_string(), n * u);
        let k = nest(&[n, u], 0, |v| {
            vec![Stmt::Store {
                buf: out,
                index: linear(v, &[n, u]),
                value: Expr::load(
                    hs,
                    Index::new([(v[0], (t * u) as i64), (v[1], 1)], (last * u) as i64),
                ),
            }]
        });
        self.looped(format!("{name}.last"), k);
        out
    }
}
