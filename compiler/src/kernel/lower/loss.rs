//! Lowering of the losses (`GradOp::Loss`, per example: the mean over the
//! example's elements, or over its rows for cross-entropy) and of their
//! gradients, the seed of backpropagation (`GradOp::LossGrad`). Both
//! take the prediction and the target (one-hot, or class indices for
//! cross-entropy); `log` only ever sees probabilities clamped away from 0.

use super::*;
use crate::train::Loss;

/// Smallest probability fed to `log`, so a confident mistake costs a large
/// but finite loss.
const EPS: f32 = 1e-7;

fn clamp_log(p: Expr) -> Expr {
    p.bin(BinOp::Max, Expr::Const(EPS)).un(UnOp::Log)
}

impl Lowering<'_> {
    /// `GradOp::Loss`: the per-example loss `[N]`.
    pub(super) fn lower_loss(&mut self, cx: NodeCx, loss: Loss) -> Result<BufId, LowerError> {
        let NodeCx { name, ins, ib, .. } = cx;
        let n = self.n;
        let p = self.shape(ins[0])?;
        let t = self.shape(ins[1])?;
        let out = self.temp(name.clone(), n);
        let k = loss_kernel(loss, &p, &t, n, ib[0], ib[1], out);
        self.looped(name, k);
        Ok(out)
    }

    /// `GradOp::LossGrad`.
    pub(super) fn lower_loss_grad(
        &mut self,
        cx: NodeCx,
        loss: Loss,
        through: Option<Activation>,
    ) -> Result<BufId, LowerError> {
        let NodeCx {
            name,
            ins,
            ib,
            out_len,
            ..
        } = cx;
        let n = self.n;
        let p = self.shape(ins[0])?;
        let t = self.shape(ins[1])?;
        let out = self.temp(name.clone(), out_len);
        let k = loss_grad_kernel(loss, through, &p, &t, n, ib[0], ib[1], out);
        self.looped(name, k);
        Ok(out)
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
    // Per-token class targets may mark padding (see `if_valid`); an
    // example's loss is then the mean over its other rows.
    let masked = loss == Loss::CrossEntropy && !one_hot && rows > 1;
    // vars: 0 example, 1 element (or row), 2 class; scalar 0 the sum,
    // scalar 1 the rows that count
    let mut k = nest(&[n], 1 + usize::from(masked), |v| {
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
                let term = if_class(label.clone(), 2, clamp_log(p)).un(UnOp::Neg);
                let mut row = vec![Stmt::Loop {
                    var: 2,
                    extent: c,
                    body: vec![acc(term)],
                }];
                if masked {
                    // Per-token targets: count the rows that are not padding.
                    row.push(Stmt::Set {
                        scalar: 1,
                        value: Expr::Get(1).add(if_valid(label, Expr::Const(1.0))),
                    });
                }
                (
                    vec![Stmt::Loop {
                        var: 1,
                        extent: rows,
                        body: row,
                    }],
                    rows,
                )
            }
        };
        let mut stmts = vec![Stmt::Set {
            scalar: 0,
            value: Expr::Const(0.0),
        }];
        let divisor = if masked {
            stmts.push(Stmt::Set {
                scalar: 1,
                value: Expr::Const(0.0),
            });
            Expr::Get(1).bin(BinOp::Max, Expr::Const(1.0))
        } else {
            Expr::Const(count as f32)
        };
        stmts.extend(body);
        stmts.push(Stmt::Store {
            buf: out,
            index: Index::var(v[0], 1),
            value: Expr::Get(0).bin(BinOp::Div, divisor),
        });
        stmts
    });
    k.vars = 3;
    k
}

/// `then` when `label` is a class index, 0 when it marks padding (a
/// negative label: a position past the end of a sequence).
fn if_valid(label: Expr, then: Expr) -> Expr {
    label.select(Cmp::Gt, Expr::Const(-0.5), then, Expr::Const(0.0))
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
    // Per-token class targets (`[T]` labels for `[T, C]` predictions) may
    // mark padding with a negative label: such rows get no gradient, and
    // an example's loss is the mean over its other rows.
    let masked = loss == Loss::CrossEntropy && !one_hot && rows > 1;
    let scale = Expr::Const(1.0 / (n * count) as f32);
    // vars: 0 example, 1 row, 2 class; scalar 0 the example's valid rows
    let mut k = nest(&[n], usize::from(masked), |v| {
        let label = || Expr::load(tb, Index::new([(v[0], tper as i64), (1, 1)], 0));
        let at = Index::new([(v[0], per as i64), (1, c as i64), (2, 1)], 0);
        let pe = Expr::load(pb, at.clone());
        let target = if one_hot || loss != Loss::CrossEntropy {
            Expr::load(
                tb,
                Index::new([(v[0], tper as i64), (1, c as i64), (2, 1)], 0),
            )
        } else {
            if_class(label(), 2, Expr::Const(1.0))
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
        let value = if masked {
            if_valid(label(), value)
                .mul(Expr::Const(1.0 / n as f32))
                .bin(BinOp::Div, Expr::Get(0).bin(BinOp::Max, Expr::Const(1.0)))
        } else {
            value.mul(scale.clone())
        };
        let store = Stmt::Loop {
            var: 1,
            extent: rows,
            body: vec![Stmt::Loop {
                var: 2,
                extent: c,
                body: vec![Stmt::Store {
                    buf: out,
                    index: at,
                    value,
                }],
            }],
        };
        if !masked {
            return vec![store];
        }
        vec![
            Stmt::Set {
                scalar: 0,
                value: Expr::Const(0.0),
            },
            Stmt::Loop {
                var: 1,
                extent: rows,
                body: vec![Stmt::Set {
                    scalar: 0,
                    value: Expr::Get(0).add(if_valid(label(), Expr::Const(1.0))),
                }],
            },
            store,
        ]
    });
    k.vars = 3;
    k
}
