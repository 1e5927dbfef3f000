//! Lowering of the normalization family: `batchnorm` and `dropout`.
//!
//! At inference batchnorm is one loop nest, `(x − μ)·γ/√(var + ε) + β`
//! with the running statistics, and dropout is free (its output aliases
//! its input; see the dispatch in `lower.rs`). Training adds inverted
//! dropout's mask multiply and batchnorm's training form: batch
//! statistics per channel, the backward pass through them, and the
//! running-statistics update. Those batchnorm kernels loop over channels
//! outermost (independent, so split across threads) and over the `M` rows
//! (batch × every other axis) inside.
//!
//! With `x̂ = (x − μ)/σ`, `σ = √(var + ε)`, the gradients are
//!
//! ```text
//! dγ = Σ dy ∘ x̂        dβ = Σ dy
//! dx = γ/(σ·M) · (M·dy − Σ dy − x̂ · Σ dy ∘ x̂)      (batch statistics)
//! dx = γ/σ · dy                                     (running statistics)
//! ```
//!
//! (`dβ` is the shared column sum, `GradOp::BiasGrad`.)

use super::*;

impl Lowering<'_> {
    /// Batchnorm with running statistics (inference).
    pub(super) fn lower_batchnorm(&mut self, cx: NodeCx, eps: f32) -> Result<BufId, LowerError> {
        let NodeCx {
            id,
            name,
            ib,
            out_len,
            ..
        } = cx;
        let x = self.full_shape(id)?;
        let c = *x.last().unwrap_or(&1);
        let out = self.temp(name.clone(), out_len);
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
        Ok(out)
    }

    /// `GradOp::DropoutMask`: inverted dropout, `x · mask / (1 − rate)`.
    pub(super) fn lower_dropout_mask(&mut self, cx: NodeCx, rate: f32) -> BufId {
        let NodeCx {
            name, ib, out_len, ..
        } = cx;
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

    /// `GradOp::BatchMean`.
    pub(super) fn lower_batch_mean(&mut self, cx: NodeCx) -> Result<BufId, LowerError> {
        let NodeCx { name, ins, ib, .. } = cx;
        let a = self.bn_args(ins[0], 0.0)?;
        Ok(self.batch_mean(&name, &a, ib[0]))
    }

    /// `GradOp::BatchVar`.
    pub(super) fn lower_batch_var(&mut self, cx: NodeCx) -> Result<BufId, LowerError> {
        let NodeCx { name, ins, ib, .. } = cx;
        let a = self.bn_args(ins[0], 0.0)?;
        Ok(self.batch_var(&name, &a, ib[0], ib[1]))
    }

    /// `GradOp::BatchNormDgamma`.
    pub(super) fn lower_batchnorm_dgamma(
        &mut self,
        cx: NodeCx,
        epsilon: f32,
    ) -> Result<BufId, LowerError> {
        let NodeCx { name, ins, ib, .. } = cx;
        let a = self.bn_args(ins[0], epsilon)?;
        Ok(self.batchnorm_dgamma(&name, &a, [ib[0], ib[1], ib[2], ib[3]]))
    }

    /// `GradOp::BatchNormDx`.
    pub(super) fn lower_batchnorm_dx(
        &mut self,
        cx: NodeCx,
        epsilon: f32,
        batch_stats: bool,
    ) -> Result<BufId, LowerError> {
        let NodeCx { name, ins, ib, .. } = cx;
        let a = self.bn_args(ins[0], epsilon)?;
        let b = [ib[0], ib[1], ib[2], ib[3], ib[4]];
        Ok(self.batchnorm_dx(&name, &a, b, batch_stats))
    }

    /// `GradOp::MovingAverage`.
    pub(super) fn lower_moving_average(&mut self, cx: NodeCx, momentum: f32) -> BufId {
        let NodeCx {
            name, ib, out_len, ..
        } = cx;
        self.moving_average(&name, out_len, momentum, ib[0], ib[1])
    }
}

/// Operands of the batchnorm kernels, as `[rows, c]` views of row-major buffers.
struct BnArgs {
    rows: usize,
    c: usize,
    epsilon: f32,
}

/// `for ch { s = 0; for r { s += term(r, ch) }; store(ch, s) }`.
fn channel_sum(
    rows: usize,
    c: usize,
    term: impl Fn(Index, Index) -> Expr,
    store: impl Fn(Index, Expr) -> Stmt,
) -> LoopKernel {
    let (vc, vr) = (0, 1);
    let at = Index::new([(vr, c as i64), (vc, 1)], 0);
    LoopKernel {
        vars: 2,
        scalars: 1,
        body: vec![Stmt::Loop {
            var: vc,
            extent: c,
            body: vec![
                Stmt::Set {
                    scalar: 0,
                    value: Expr::Const(0.0),
                },
                Stmt::Loop {
                    var: vr,
                    extent: rows,
                    body: vec![Stmt::Set {
                        scalar: 0,
                        value: Expr::Get(0).add(term(at.clone(), Index::var(vc, 1))),
                    }],
                },
                store(Index::var(vc, 1), Expr::Get(0)),
            ],
        }],
    }
}

fn inv_std(var: BufId, ch: Index, eps: f32) -> Expr {
    Expr::Const(1.0).bin(
        BinOp::Div,
        Expr::load(var, ch).add(Expr::Const(eps)).un(UnOp::Sqrt),
    )
}

impl Lowering<'_> {
    /// `x` as `[rows, c]`.
    fn bn_args(&self, x: NodeId, epsilon: f32) -> Result<BnArgs, LowerError> {
        let s = self.full_shape(x)?;
        let c = s.last().copied().unwrap_or(1).max(1);
        Ok(BnArgs {
            rows: s.iter().product::<usize>() / c,
            c,
            epsilon,
        })
    }

    /// Per-channel mean of `x`.
    fn batch_mean(&mut self, name: &str, a: &BnArgs, x: BufId) -> BufId {
        let out = self.temp(name.to_string(), a.c);
        let m = a.rows as f32;
        let k = channel_sum(
            a.rows,
            a.c,
            |at, _| Expr::load(x, at),
            |ch, s| Stmt::Store {
                buf: out,
                index: ch,
                value: s.bin(BinOp::Div, Expr::Const(m)),
            },
        );
        self.looped(name.to_string(), k);
        out
    }

    /// Per-channel biased variance of `x` around `mean`.
    fn batch_var(&mut self, name: &str, a: &BnArgs, x: BufId, mean: BufId) -> BufId {
        let out = self.temp(name.to_string(), a.c);
        let m = a.rows as f32;
        let k = channel_sum(
            a.rows,
            a.c,
            |at, ch| {
                let d = Expr::load(x, at).bin(BinOp::Sub, Expr::load(mean, ch));
                d.clone().mul(d)
            },
            |ch, s| Stmt::Store {
                buf: out,
                index: ch,
                value: s.bin(BinOp::Div, Expr::Const(m)),
            },
        );
        self.looped(name.to_string(), k);
        out
    }

    /// `dγ` per channel. Buffers: x, mean, var, dy.
    fn batchnorm_dgamma(&mut self, name: &str, a: &BnArgs, b: [BufId; 4]) -> BufId {
        let [x, mean, var, dy] = b;
        let out = self.temp(name.to_string(), a.c);
        let eps = a.epsilon;
        let k = channel_sum(
            a.rows,
            a.c,
            |at, ch| {
                Expr::load(dy, at.clone())
                    .mul(Expr::load(x, at).bin(BinOp::Sub, Expr::load(mean, ch.clone())))
                    .mul(inv_std(var, ch, eps))
            },
            |ch, s| Stmt::Store {
                buf: out,
                index: ch,
                value: s,
            },
        );
        self.looped(name.to_string(), k);
        out
    }

    /// `dx`. Buffers: x, gamma, mean, var, dy.
    fn batchnorm_dx(&mut self, name: &str, a: &BnArgs, b: [BufId; 5], batch_stats: bool) -> BufId {
        let [x, gamma, mean, var, dy] = b;
        let (rows, c, eps) = (a.rows, a.c, a.epsilon);
        let out = self.temp(name.to_string(), rows * c);
        let (vc, vr) = (0, 1);
        let at = Index::new([(vr, c as i64), (vc, 1)], 0);
        let ch = Index::var(vc, 1);
        // s0 = γ/σ, s1 = Σ dy, s2 = Σ dy·x̂
        let xhat = Expr::load(x, at.clone())
            .bin(BinOp::Sub, Expr::load(mean, ch.clone()))
            .mul(inv_std(var, ch.clone(), eps));
        let dyv = Expr::load(dy, at.clone());
        let scale = Expr::load(gamma, ch.clone()).mul(inv_std(var, ch.clone(), eps));
        let mut body = vec![Stmt::Set {
            scalar: 0,
            value: scale,
        }];
        let value = if batch_stats {
            let m = rows as f32;
            body.extend([
                Stmt::Set {
                    scalar: 1,
                    value: Expr::Const(0.0),
                },
                Stmt::Set {
                    scalar: 2,
                    value: Expr::Const(0.0),
                },
                Stmt::Loop {
                    var: vr,
                    extent: rows,
                    body: vec![
                        Stmt::Set {
                            scalar: 1,
                            value: Expr::Get(1).add(dyv.clone()),
                        },
                        Stmt::Set {
                            scalar: 2,
                            value: Expr::Get(2).add(dyv.clone().mul(xhat.clone())),
                        },
                    ],
                },
            ]);
            // γ/(σM) · (M·dy − Σdy − x̂·Σdy·x̂)
            Expr::Get(0).bin(BinOp::Div, Expr::Const(m)).mul(
                Expr::Const(m)
                    .mul(dyv)
                    .bin(BinOp::Sub, Expr::Get(1))
                    .bin(BinOp::Sub, xhat.mul(Expr::Get(2))),
            )
        } else {
            Expr::Get(0).mul(dyv)
        };
        body.push(Stmt::Loop {
            var: vr,
            extent: rows,
            body: vec![Stmt::Store {
                buf: out,
                index: at,
                value,
            }],
        });
        let k = LoopKernel::outer_loop(2, 3, vc, c, body);
        self.looped(name.to_string(), k);
        out
    }

    /// `m·moving + (1 − m)·batch`.
    fn moving_average(
        &mut self,
        name: &str,
        c: usize,
        momentum: f32,
        moving: BufId,
        batch: BufId,
    ) -> BufId {
        let out = self.temp(name.to_string(), c);
        let k = nest(&[c], 0, |v| {
            let at = Index::var(v[0], 1);
            vec![Stmt::Store {
                buf: out,
                index: at.clone(),
                value: Expr::Const(momentum)
                    .mul(Expr::load(moving, at.clone()))
                    .add(Expr::Const(1.0 - momentum).mul(Expr::load(batch, at))),
            }]
        });
        self.looped(name.to_string(), k);
        out
    }
}
