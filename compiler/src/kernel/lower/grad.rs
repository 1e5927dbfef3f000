//! Lowering of the autodiff ops (`Op::Grad`): losses and their gradients,
//! activation gradients, and the backward passes of dense, convolution,
//! pooling, dropout and merges. Matrix-shaped work becomes contractions
//! (after a transpose where the operand is laid out the other way);
//! scatters and reductions are loop nests.

use super::*;
use crate::op::GradOp;
use crate::op::{Activation, Padding, PoolKind};
use crate::train::Loss;
use std::ops::{Add, Mul};

/// Smallest probability fed to `log`, so a confident mistake costs a large
/// but finite loss.
const EPS: f32 = 1e-7;

/// Partial sums of a large bias gradient (see `bias_grad`).
const BIAS_BLOCKS: usize = 8;
/// Fewest rows per partial sum worth a kernel of its own.
const BIAS_MIN_BLOCK_ROWS: usize = 64;

/// Columns per block of a transpose: one 64-byte cache line of f32.
const TRANSPOSE_BLOCK: usize = 16;

fn clamp_log(p: Expr) -> Expr {
    p.bin(BinOp::Max, Expr::Const(EPS)).un(UnOp::Log)
}

impl Lowering<'_> {
    /// A transposed copy of `src` viewed as `[rows, cols]`.
    fn transpose(&mut self, name: String, src: BufId, rows: usize, cols: usize) -> BufId {
        // A parameter does not change before the updates at the end of a
        // step, so one transpose serves every reader.
        let param = matches!(self.p.buffers[src].kind, BufKind::Param(_));
        if let Some(t) = self.transposes.get(&(src, rows, cols)).filter(|_| param) {
            return *t;
        }
        let out = self.temp(name.clone(), rows * cols);
        if param {
            self.transposes.insert((src, rows, cols), out);
        }
        // out[c·rows + r] = src[r·cols + c], in blocks of TRANSPOSE_BLOCK
        // columns: each row of src is read a cache line at a time and the
        // block's columns are written as that many sequential streams. (A
        // plain column-by-column walk reads src with a stride of `cols`,
        // which for a wide layer touches a new page on every load.)
        let b = TRANSPOSE_BLOCK;
        let blocks = cols / b;
        if blocks > 0 {
            let k = nest(&[blocks, rows, b], 0, |v| {
                let (cb, r, c) = (v[0], v[1], v[2]);
                vec![Stmt::Store {
                    buf: out,
                    index: Index::new([(cb, (b * rows) as i64), (c, rows as i64), (r, 1)], 0),
                    value: Expr::load(
                        src,
                        Index::new([(r, cols as i64), (cb, b as i64), (c, 1)], 0),
                    ),
                }]
            });
            self.looped(name.clone(), k);
        }
        let (done, rest) = (blocks * b, cols % b);
        if rest > 0 {
            let k = nest(&[rows, rest], 0, |v| {
                let (r, c) = (v[0], v[1]);
                vec![Stmt::Store {
                    buf: out,
                    index: Index::new([(c, rows as i64), (r, 1)], (done * rows) as i64),
                    value: Expr::load(src, Index::new([(r, cols as i64), (c, 1)], done as i64)),
                }]
            });
            let tail = if blocks > 0 {
                format!("{name}.tail")
            } else {
                name
            };
            self.looped(tail, k);
        }
        out
    }

    /// `db[c] = Σ_rows dy[row, c]`, rows outer: contiguous passes over dy.
    /// (Columns outer would stream all of dy once per channel, e.g. 32
    /// passes over 5.5 MB for the course CNN.) Large sums run as
    /// `BIAS_BLOCKS` partial sums over equal blocks of rows, one kernel
    /// whose blocks the backends may run in parallel, then a kernel adding
    /// the partials and any leftover rows; the block count does not depend
    /// on the thread count, so neither do the results.
    fn bias_grad(&mut self, name: String, dy: BufId, rows: usize, c: usize) -> BufId {
        let out = self.temp(name.clone(), c);
        let blocks = if rows >= BIAS_BLOCKS * BIAS_MIN_BLOCK_ROWS {
            BIAS_BLOCKS
        } else {
            0
        };
        let per = rows.checked_div(blocks).unwrap_or(0);
        let partial = (blocks > 0).then(|| {
            let partial = self.temp(format!("{name}.partial"), blocks * c);
            let (vb, vr, vj) = (0, 1, 2);
            let row = Index::new([(vb, c as i64), (vj, 1)], 0);
            let dy_at = Index::new([(vb, (per * c) as i64), (vr, c as i64), (vj, 1)], 0);
            let sum = Expr::load(partial, row.clone()).add(Expr::load(dy, dy_at));
            let k = LoopKernel::outer_loop(
                3,
                0,
                vb,
                blocks,
                vec![
                    Stmt::repeat(
                        vj,
                        c,
                        vec![Stmt::store(partial, row.clone(), Expr::Const(0.0))],
                    ),
                    Stmt::repeat(
                        vr,
                        per,
                        vec![Stmt::repeat(vj, c, vec![Stmt::store(partial, row, sum)])],
                    ),
                ],
            );
            self.looped(format!("{name}.partial"), k);
            partial
        });
        // out[j] = Σ_b partial[b, j] + Σ leftover rows dy[r, j]
        let (vj, vb, vr) = (0, 1, 2);
        let add = |buf, index| Stmt::Set {
            scalar: 0,
            value: Expr::Get(0).add(Expr::load(buf, index)),
        };
        let mut body = vec![Stmt::Set {
            scalar: 0,
            value: Expr::Const(0.0),
        }];
        if let Some(partial) = partial {
            let at = Index::new([(vb, c as i64), (vj, 1)], 0);
            body.push(Stmt::repeat(vb, blocks, vec![add(partial, at)]));
        }
        let done = blocks * per;
        if rows > done {
            let at = Index::new([(vr, c as i64), (vj, 1)], (done * c) as i64);
            body.push(Stmt::repeat(vr, rows - done, vec![add(dy, at)]));
        }
        body.push(Stmt::store(out, Index::var(vj, 1), Expr::Get(0)));
        let k = LoopKernel::outer_loop(3, 1, vj, c, body);
        self.looped(name, k);
        out
    }

    pub(super) fn zero(&mut self, name: String, buf: BufId, len: usize) {
        let k = nest(&[len], 0, |v| {
            vec![Stmt::Store {
                buf,
                index: Index::var(v[0], 1),
                value: Expr::Const(0.0),
            }]
        });
        self.looped(name, k);
    }

    /// Lowers one autodiff op; returns its output buffer.
    pub(super) fn grad(
        &mut self,
        id: NodeId,
        op: &GradOp,
        ins: &[NodeId],
        ib: &[BufId],
    ) -> Result<BufId, LowerError> {
        let name = self.g.node(id).name.clone();
        let out_shape = self.full_shape(id)?;
        let out_len: usize = out_shape.iter().product();
        let n = self.n;
        let out = match op {
            GradOp::Loss(loss) => {
                let p = self.shape(ins[0])?;
                let t = self.shape(ins[1])?;
                let out = self.temp(name.clone(), n);
                let k = loss_kernel(*loss, &p, &t, n, ib[0], ib[1], out);
                self.looped(name, k);
                out
            }
            GradOp::LossGrad { loss, through } => {
                let p = self.shape(ins[0])?;
                let t = self.shape(ins[1])?;
                let out = self.temp(name.clone(), out_len);
                let k = loss_grad_kernel(*loss, *through, &p, &t, n, ib[0], ib[1], out);
                self.looped(name, k);
                out
            }
            GradOp::ActGrad(a) => {
                let out = self.temp(name.clone(), out_len);
                let (y, dy) = (ib[0], ib[1]);
                let k = match a {
                    Activation::Softmax => {
                        let c = *out_shape.last().unwrap_or(&1);
                        softmax_grad(out_len / c, c, y, dy, out)
                    }
                    a => {
                        let a = *a;
                        nest(&[out_len], 0, |v| {
                            let at = Index::var(v[0], 1);
                            let (y, dy) = (Expr::load(y, at.clone()), Expr::load(dy, at.clone()));
                            let value = match a {
                                Activation::Relu => {
                                    y.select(Cmp::Gt, Expr::Const(0.0), dy, Expr::Const(0.0))
                                }
                                Activation::LeakyRelu(alpha) => y.select(
                                    Cmp::Gt,
                                    Expr::Const(0.0),
                                    dy.clone(),
                                    Expr::Const(alpha).mul(dy),
                                ),
                                Activation::Sigmoid => {
                                    dy.mul(y.clone()).mul(Expr::Const(1.0).bin(BinOp::Sub, y))
                                }
                                _ => dy.mul(Expr::Const(1.0).bin(BinOp::Sub, y.clone().mul(y))),
                            };
                            vec![Stmt::Store {
                                buf: out,
                                index: at,
                                value,
                            }]
                        })
                    }
                };
                self.looped(name, k);
                out
            }
            GradOp::DenseDx => {
                // dx[M, F] = dy[M, U] · Wᵀ
                let w = self.shape(ins[1])?;
                let (f, u) = (w[0], w[1]);
                let rows = out_len / f;
                let wt = self.transpose(format!("{name}.wT"), ib[1], f, u);
                let out = self.temp(name.clone(), out_len);
                self.kernel(
                    name,
                    KernelBody::Contraction(dense(rows, u, f, ib[0], wt, None, out)),
                );
                out
            }
            GradOp::DenseDw => {
                // dW[F, U] = xᵀ[F, M] · dy[M, U]
                let x = self.full_shape(ins[0])?;
                let f = *x.last().unwrap_or(&1);
                let rows: usize = x.iter().product::<usize>() / f;
                let u = out_shape[out_shape.len() - 1];
                let xt = self.transpose(format!("{name}.xT"), ib[0], rows, f);
                let out = self.temp(name.clone(), f * u);
                self.kernel(
                    name,
                    KernelBody::Contraction(dense(f, rows, u, xt, ib[1], None, out)),
                );
                out
            }
            GradOp::BiasGrad => {
                let dy = self.full_shape(ins[0])?;
                let c = *dy.last().unwrap_or(&1);
                let rows = dy.iter().product::<usize>() / c;
                self.bias_grad(name, ib[0], rows, c)
            }
            GradOp::ConvDw {
                kernel,
                stride,
                padding,
            } => {
                let x = self.full_shape(ins[0])?;
                let dy = self.full_shape(ins[1])?;
                let geo = ConvGrad::new(&x, &dy, *kernel, *stride, *padding);
                self.conv_dw(&name, &geo, ib[0], ib[1])
            }
            GradOp::ConvDx {
                kernel,
                stride,
                padding,
            } => {
                let dy = self.full_shape(ins[0])?;
                let geo = ConvGrad::new(&out_shape, &dy, *kernel, *stride, *padding);
                self.conv_dx(&name, &geo, ib[0], ib[1])
            }
            GradOp::PoolGrad {
                kind,
                size,
                stride,
                padding,
                relu_mask,
            } => {
                let x = self.full_shape(ins[0])?;
                let dy = self.full_shape(ins[1])?;
                let out = self.temp(name.clone(), out_len);
                let windows = pool_windows(&x, &dy, *size, *stride, *padding);
                // Zero first unless every input element lies in exactly one
                // window and so is stored below.
                if windows != Windows::Tile {
                    self.zero(format!("{name}.zero"), out, out_len);
                }
                let k = pool_grad(
                    *kind,
                    &x,
                    &dy,
                    (*size, *stride, *padding),
                    windows,
                    *relu_mask,
                    [ib[0], ib[1], out],
                );
                self.looped(name, k);
                out
            }
            GradOp::DropoutMask { rate } => {
                let out = self.temp(name.clone(), out_len);
                let keep = 1.0 / (1.0 - rate);
                let (x, m) = (ib[0], ib[1]);
                let k = nest(&[out_len], 0, |v| {
                    let at = Index::var(v[0], 1);
                    vec![Stmt::Store {
                        buf: out,
                        index: at.clone(),
                        value: Expr::load(x, at.clone())
                            .mul(Expr::load(m, at))
                            .mul(Expr::Const(keep)),
                    }]
                });
                self.looped(name, k);
                out
            }
            GradOp::MulGrad | GradOp::Scale(_) => {
                let out = self.temp(name.clone(), out_len);
                let factor = if let GradOp::Scale(s) = op {
                    Some(*s)
                } else {
                    None
                };
                let ib = ib.to_vec();
                let k = nest(&[out_len], 0, |v| {
                    let at = Index::var(v[0], 1);
                    let mut e = Expr::load(ib[0], at.clone());
                    for b in &ib[1..] {
                        e = e.mul(Expr::load(*b, at.clone()));
                    }
                    if let Some(s) = factor {
                        e = e.mul(Expr::Const(s));
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
            GradOp::CellGrad {
                cell,
                units,
                has_state,
                recurrent_bias,
                wrt,
            } => {
                // Operands: x_t, U, [b_r], [state], d(new state), [dh_rec].
                let rbi = recurrent_bias.then_some(2);
                let si = has_state.then_some(2 + usize::from(*recurrent_bias));
                let di = 2 + usize::from(*recurrent_bias) + usize::from(*has_state);
                let args = super::cell_grad::CellGradArgs {
                    step: StepCell {
                        cell: *cell,
                        n,
                        u: *units,
                        xt: self.view_of(ins[0])?,
                        uw: ib[1],
                        rb: rbi.map(|i| ib[i]),
                        state: si.map(|i| ib[i]),
                    },
                    ds: ib[di],
                    dh_rec: ib.get(di + 1).copied(),
                    wrt: *wrt,
                };
                self.cell_grad(&name, &args)
            }
            GradOp::BatchMean => {
                let a = self.bn_args(ins[0], 0.0)?;
                self.batch_mean(&name, &a, ib[0])
            }
            GradOp::BatchVar => {
                let a = self.bn_args(ins[0], 0.0)?;
                self.batch_var(&name, &a, ib[0], ib[1])
            }
            GradOp::BatchNormDgamma { epsilon } => {
                let a = self.bn_args(ins[0], *epsilon)?;
                self.batchnorm_dgamma(&name, &a, [ib[0], ib[1], ib[2], ib[3]])
            }
            GradOp::BatchNormDx {
                epsilon,
                batch_stats,
            } => {
                let a = self.bn_args(ins[0], *epsilon)?;
                let b = [ib[0], ib[1], ib[2], ib[3], ib[4]];
                self.batchnorm_dx(&name, &a, b, *batch_stats)
            }
            GradOp::MovingAverage { momentum } => {
                self.moving_average(&name, out_len, *momentum, ib[0], ib[1])
            }
            GradOp::TimeScatter { step, steps } => {
                let f = *out_shape.last().unwrap_or(&1);
                self.time_scatter(&name, ib[0], *step, *steps, f)
            }
            GradOp::SliceGrad { start, len, total } => {
                let rows = out_len / (*total).max(1);
                self.slice_grad(&name, ib[0], rows, (*start, *len, *total))
            }
            GradOp::Slice { axis, start, len } => {
                let dy = self.full_shape(ins[0])?;
                let ax = axis + 1;
                let outer: usize = dy[..ax].iter().product();
                let inner: usize = dy[ax + 1..].iter().product();
                let out = self.temp(name.clone(), out_len);
                let (src, full, start, len) = (ib[0], dy[ax], *start, *len);
                let k = nest(&[outer, len, inner], 0, |v| {
                    vec![Stmt::Store {
                        buf: out,
                        index: linear(v, &[outer, len, inner]),
                        value: Expr::load(
                            src,
                            linear(v, &[outer, full, inner]).shift((start * inner) as i64),
                        ),
                    }]
                });
                self.looped(name, k);
                out
            }
        };
        Ok(out)
    }

    /// `dW = Σ patchesᵀ · dy`: the patches are written transposed
    /// (`[KH·KW·C, N·OH·OW]`, zero where the window hangs over the padding)
    /// so the sum is one contraction.
    fn conv_dw(&mut self, name: &str, geo: &ConvGrad, xb: BufId, dyb: BufId) -> BufId {
        let ConvGrad {
            x: [n, h, w, c],
            dy: [oh, ow, f],
            kernel,
            stride,
            origin,
            padded,
        } = *geo;
        let rows = kernel.0 * kernel.1 * c;
        let cols = n * oh * ow;
        let pt_buf = self.temp(format!("{name}.patchesT"), rows * cols);
        // Without padding every window lies inside the input, so the
        // gather below writes every element and zeroing first is wasted.
        if padded {
            self.zero(format!("{name}.zero"), pt_buf, rows * cols);
        }
        // vars: kh kw c n oh ow
        let dims = [kernel.0, kernel.1, c, n, oh, ow];
        let k = nest(&dims, 0, |v| {
            let (guards, src) = window_at(
                [n, h, w, c],
                stride,
                origin,
                WindowVars {
                    n: v[3],
                    oh: v[4],
                    ow: v[5],
                    kh: v[0],
                    kw: v[1],
                    c: v[2],
                },
            );
            guarded(
                padded,
                &guards,
                vec![Stmt::Store {
                    buf: pt_buf,
                    index: linear(v, &dims),
                    value: Expr::load(xb, src),
                }],
            )
        });
        self.looped(format!("{name}.im2colT"), k);
        let out = self.temp(name.to_string(), rows * f);
        self.kernel(
            name.to_string(),
            KernelBody::Contraction(dense(rows, cols, f, pt_buf, dyb, None, out)),
        );
        out
    }

    /// `dx`: `G = dy · W_rᵀ` (`[N·OH·OW, KH·KW·C]`, one contraction), then
    /// each row of `G` is added back onto the input positions its window
    /// covered (col2im).
    fn conv_dx(&mut self, name: &str, geo: &ConvGrad, dyb: BufId, wb: BufId) -> BufId {
        let ConvGrad {
            x: [n, h, w, c],
            dy: [oh, ow, f],
            kernel,
            stride,
            origin,
            padded,
        } = *geo;
        let kk = kernel.0 * kernel.1 * c;
        let wt = self.transpose(format!("{name}.wT"), wb, kk, f);
        let g = self.temp(format!("{name}.cols"), n * oh * ow * kk);
        self.kernel(
            format!("{name}.cols"),
            KernelBody::Contraction(dense(n * oh * ow, f, kk, dyb, wt, None, g)),
        );
        let out = self.temp(name.to_string(), n * h * w * c);
        self.zero(format!("{name}.zero"), out, n * h * w * c);
        let dims = [n, oh, ow, kernel.0, kernel.1, c];
        let k = nest(&dims, 0, |v| {
            let (guards, dst) = window_at(
                [n, h, w, c],
                stride,
                origin,
                WindowVars {
                    n: v[0],
                    oh: v[1],
                    ow: v[2],
                    kh: v[3],
                    kw: v[4],
                    c: v[5],
                },
            );
            guarded(
                padded,
                &guards,
                vec![Stmt::Store {
                    buf: out,
                    index: dst.clone(),
                    value: Expr::load(out, dst).add(Expr::load(g, linear(v, &dims))),
                }],
            )
        });
        self.looped(format!("{name}.col2im"), k);
        out
    }
}

/// The geometry both convolution gradients work in: input `[N, H, W, C]`,
/// output gradient `[N, OH, OW, F]`, the window, and where window (0, 0)
/// of output (0, 0) starts (minus the top/left padding).
#[derive(Clone, Copy)]
struct ConvGrad {
    x: [usize; 4],
    dy: [usize; 3],
    kernel: (usize, usize),
    stride: (usize, usize),
    /// Top and left padding.
    origin: (usize, usize),
    /// Whether some window hangs over the input's edge.
    padded: bool,
}

impl ConvGrad {
    fn new(
        x: &[usize],
        dy: &[usize],
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: Padding,
    ) -> Self {
        let ((pt, pb), (pl, pr)) = pads(x[1], x[2], kernel, stride, padding);
        ConvGrad {
            x: [x[0], x[1], x[2], x[3]],
            dy: [dy[1], dy[2], dy[3]],
            kernel,
            stride,
            origin: (pt, pl),
            padded: pt + pb + pl + pr > 0,
        }
    }
}

/// Rows and classes of a prediction `[.., C]` for cross-entropy.
fn rows_classes(p: &[usize]) -> (usize, usize) {
    let c = *p.last().unwrap_or(&1);
    (p.iter().product::<usize>() / c.max(1), c)
}

/// `then` where the label equals the class index held by loop variable
/// `class`, else 0.
fn if_class(label: Expr, class: Var, then: Expr) -> Expr {
    let d = label.bin(BinOp::Sub, Expr::Iter(class));
    d.clone().select(
        Cmp::Lt,
        Expr::Const(0.5),
        d.select(Cmp::Gt, Expr::Const(-0.5), then, Expr::Const(0.0)),
        Expr::Const(0.0),
    )
}

/// Per-example loss into `out[N]`: the mean over the example's elements
/// (mse, bce) or over its rows (cross-entropy).
fn loss_kernel(
    loss: Loss,
    p: &[usize],
    t: &[usize],
    n: usize,
    pb: BufId,
    tb: BufId,
    out: BufId,
) -> LoopKernel {
    let per: usize = p.iter().product();
    let tper: usize = t.iter().product();
    let one_hot = t == p;
    let (rows, c) = rows_classes(p);
    // vars: 0 example, 1 element (or row), 2 class; scalar 0 the sum
    let mut k = nest(&[n], 1, |v| {
        let p_at = Index::new([(v[0], per as i64), (1, 1)], 0);
        let t_at = Index::new([(v[0], tper as i64), (1, 1)], 0);
        let (pe, te) = (Expr::load(pb, p_at), Expr::load(tb, t_at));
        let acc = |term: Expr| Stmt::Set {
            scalar: 0,
            value: Expr::Get(0).add(term),
        };
        let (body, count) = match (loss, one_hot) {
            (Loss::Mse, _) => {
                let d = pe.bin(BinOp::Sub, te);
                (
                    vec![Stmt::Loop {
                        var: 1,
                        extent: per,
                        body: vec![acc(d.clone().mul(d))],
                    }],
                    per,
                )
            }
            (Loss::BinaryCrossEntropy, _) => {
                let term = te.clone().mul(clamp_log(pe.clone())).add(
                    Expr::Const(1.0)
                        .bin(BinOp::Sub, te)
                        .mul(clamp_log(Expr::Const(1.0).bin(BinOp::Sub, pe))),
                );
                (
                    vec![Stmt::Loop {
                        var: 1,
                        extent: per,
                        body: vec![acc(term.un(UnOp::Neg))],
                    }],
                    per,
                )
            }
            (Loss::CrossEntropy, true) => {
                let term = te.mul(clamp_log(pe)).un(UnOp::Neg);
                (
                    vec![Stmt::Loop {
                        var: 1,
                        extent: per,
                        body: vec![acc(term)],
                    }],
                    rows,
                )
            }
            (Loss::CrossEntropy, false) => {
                let label = Expr::load(tb, Index::new([(v[0], tper as i64), (1, 1)], 0));
                let p = Expr::load(
                    pb,
                    Index::new([(v[0], per as i64), (1, c as i64), (2, 1)], 0),
                );
                let term = if_class(label, 2, clamp_log(p)).un(UnOp::Neg);
                let inner = Stmt::Loop {
                    var: 2,
                    extent: c,
                    body: vec![acc(term)],
                };
                (
                    vec![Stmt::Loop {
                        var: 1,
                        extent: rows,
                        body: vec![inner],
                    }],
                    rows,
                )
            }
        };
        let mut stmts = vec![Stmt::Set {
            scalar: 0,
            value: Expr::Const(0.0),
        }];
        stmts.extend(body);
        stmts.push(Stmt::Store {
            buf: out,
            index: Index::var(v[0], 1),
            value: Expr::Get(0).bin(BinOp::Div, Expr::Const(count as f32)),
        });
        stmts
    });
    k.vars = 3;
    k
}

/// The seed of backpropagation: the gradient of the batch-mean loss with
/// respect to the prediction, or to the logits when `through` fuses the
/// final softmax (cross-entropy) or sigmoid (binary cross-entropy), which
/// is both cheaper and numerically stable: `(p − t) / count`.
#[allow(clippy::too_many_arguments)]
fn loss_grad_kernel(
    loss: Loss,
    through: Option<Activation>,
    p: &[usize],
    t: &[usize],
    n: usize,
    pb: BufId,
    tb: BufId,
    out: BufId,
) -> LoopKernel {
    let per: usize = p.iter().product();
    let tper: usize = t.iter().product();
    let one_hot = t == p;
    let (rows, c) = rows_classes(p);
    let count = match loss {
        Loss::CrossEntropy => rows,
        _ => per,
    };
    let scale = Expr::Const(1.0 / (n * count) as f32);
    // vars: 0 example, 1 row, 2 class
    let mut k = nest(&[n], 0, |v| {
        let at = Index::new([(v[0], per as i64), (1, c as i64), (2, 1)], 0);
        let pe = Expr::load(pb, at.clone());
        let target = if one_hot || loss != Loss::CrossEntropy {
            Expr::load(
                tb,
                Index::new([(v[0], tper as i64), (1, c as i64), (2, 1)], 0),
            )
        } else {
            if_class(
                Expr::load(tb, Index::new([(v[0], tper as i64), (1, 1)], 0)),
                2,
                Expr::Const(1.0),
            )
        };
        let value = match (loss, through) {
            (Loss::CrossEntropy, Some(Activation::Softmax))
            | (Loss::BinaryCrossEntropy, Some(Activation::Sigmoid)) => pe.bin(BinOp::Sub, target),
            (Loss::Mse, _) => Expr::Const(2.0).mul(pe.bin(BinOp::Sub, target)),
            (Loss::CrossEntropy, _) => target
                .un(UnOp::Neg)
                .bin(BinOp::Div, pe.bin(BinOp::Max, Expr::Const(EPS))),
            (Loss::BinaryCrossEntropy, _) => {
                // (p − t) / (p (1 − p)), with p kept away from 0 and 1.
                let q = pe
                    .bin(BinOp::Max, Expr::Const(EPS))
                    .bin(BinOp::Min, Expr::Const(1.0 - EPS));
                q.clone().bin(BinOp::Sub, target).bin(
                    BinOp::Div,
                    q.clone().mul(Expr::Const(1.0).bin(BinOp::Sub, q)),
                )
            }
        };
        vec![Stmt::Loop {
            var: 1,
            extent: rows,
            body: vec![Stmt::Loop {
                var: 2,
                extent: c,
                body: vec![Stmt::Store {
                    buf: out,
                    index: at,
                    value: value.mul(scale.clone()),
                }],
            }],
        }]
    });
    k.vars = 3;
    k
}

/// `dx = y ∘ (dy − Σ dy·y)` per row.
fn softmax_grad(rows: usize, c: usize, y: BufId, dy: BufId, out: BufId) -> LoopKernel {
    let mut k = nest(&[rows], 1, |v| {
        let at = Index::new([(v[0], c as i64), (1, 1)], 0);
        let (ye, de) = (Expr::load(y, at.clone()), Expr::load(dy, at.clone()));
        vec![
            Stmt::Set {
                scalar: 0,
                value: Expr::Const(0.0),
            },
            Stmt::Loop {
                var: 1,
                extent: c,
                body: vec![Stmt::Set {
                    scalar: 0,
                    value: Expr::Get(0).add(de.clone().mul(ye.clone())),
                }],
            },
            Stmt::Loop {
                var: 1,
                extent: c,
                body: vec![Stmt::Store {
                    buf: out,
                    index: at,
                    value: ye.mul(de.bin(BinOp::Sub, Expr::Get(0))),
                }],
            },
        ]
    });
    k.vars = 2;
    k
}

/// `body` under the bounds check `guards`, or alone when there is no
/// padding: then every window lies inside the input (output sizes are
/// floored), and the check would cost a compare per element for nothing.
fn guarded(padded: bool, guards: &[(Index, usize)], body: Vec<Stmt>) -> Vec<Stmt> {
    if padded {
        vec![Stmt::IfInBounds {
            conds: guards.to_vec(),
            body,
        }]
    } else {
        body
    }
}

/// How a pooling layer's windows cover its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Windows {
    /// Windows may overlap: gradients are added up.
    Overlap,
    /// No two windows share an element, but some elements are in none.
    Disjoint,
    /// Every element is in exactly one window (e.g. 2×2, stride 2 on an
    /// even size, no padding): the gradient is stored, no zeroing needed.
    Tile,
}

fn pool_windows(
    x: &[usize],
    dy: &[usize],
    size: (usize, usize),
    stride: (usize, usize),
    padding: Padding,
) -> Windows {
    let ((pt, pb), (pl, pr)) = pads(x[1], x[2], size, stride, padding);
    if stride.0 < size.0 || stride.1 < size.1 {
        Windows::Overlap
    } else if stride == size
        && pt + pb + pl + pr == 0
        && dy[1] * size.0 == x[1]
        && dy[2] * size.1 == x[2]
    {
        Windows::Tile
    } else {
        Windows::Disjoint
    }
}

/// Adds each output gradient back onto its window: all of it onto the
/// first maximum (max pooling), or an equal share onto every element
/// inside the input (average pooling, padding excluded as forward). When
/// windows do not overlap each element gets one value, which is stored
/// rather than added (no read of `out`). With `relu_mask` (x is a relu's
/// output), elements where `x ≤ 0` get zero: the relu's gradient in the same
/// pass.
fn pool_grad(
    kind: PoolKind,
    x: &[usize],
    dy: &[usize],
    (size, stride, padding): ((usize, usize), (usize, usize), Padding),
    windows: Windows,
    relu_mask: bool,
    [xb, dyb, out]: [BufId; 3],
) -> LoopKernel {
    let [n, h, w, c] = [x[0], x[1], x[2], x[3]];
    let (oh, ow) = (dy[1], dy[2]);
    let ((pt, pb), (pl, pr)) = pads(h, w, size, stride, padding);
    let padded = pt + pb + pl + pr > 0;
    // vars: 0 n, 1 oh, 2 ow, 3 c, 4 kh, 5 kw; scalars: 0 max or count, 1 taken flag
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
        let g = Expr::load(dyb, linear(v, &[n, oh, ow, c]));
        let window = |body: Vec<Stmt>| Stmt::Loop {
            var: 4,
            extent: size.0,
            body: vec![Stmt::Loop {
                var: 5,
                extent: size.1,
                body: guarded(padded, &guards, body),
            }],
        };
        let xe = Expr::load(xb, at.clone());
        let add = |value: Expr| {
            let value = if windows == Windows::Overlap {
                Expr::load(out, at.clone()).add(value)
            } else {
                value
            };
            Stmt::Store {
                buf: out,
                index: at.clone(),
                value: if relu_mask {
                    xe.clone()
                        .select(Cmp::Gt, Expr::Const(0.0), value, Expr::Const(0.0))
                } else {
                    value
                },
            }
        };
        match kind {
            PoolKind::Max => {
                let is_max = |then: Expr| {
                    xe.clone()
                        .select(Cmp::Ge, Expr::Get(0), then, Expr::Const(0.0))
                };
                let first = |then: Expr| {
                    Expr::Get(1).select(Cmp::Lt, Expr::Const(0.5), then, Expr::Const(0.0))
                };
                vec![
                    Stmt::Set {
                        scalar: 0,
                        value: Expr::Const(f32::NEG_INFINITY),
                    },
                    window(vec![Stmt::Set {
                        scalar: 0,
                        value: Expr::Get(0).bin(BinOp::Max, xe.clone()),
                    }]),
                    Stmt::Set {
                        scalar: 1,
                        value: Expr::Const(0.0),
                    },
                    window(vec![
                        add(is_max(first(g.clone()))),
                        Stmt::Set {
                            scalar: 1,
                            value: Expr::Get(1).add(is_max(Expr::Const(1.0))),
                        },
                    ]),
                ]
            }
            PoolKind::Avg => vec![
                Stmt::Set {
                    scalar: 0,
                    value: Expr::Const(0.0),
                },
                window(vec![Stmt::Set {
                    scalar: 0,
                    value: Expr::Get(0).add(Expr::Const(1.0)),
                }]),
                window(vec![add(g.bin(BinOp::Div, Expr::Get(0)))]),
            ],
        }
    });
    k.vars = 6;
    k
}
