//! Lowering of the activation family: the elementwise activations and the
//! maps the optimizer fuses from elementwise chains (`Op::Map`), one loop
//! nest each; softmax over the last axis; and their gradients, which read
//! the activation's output `y` rather than its input (`σ' = y(1 − y)`,
//! `tanh' = 1 − y²`, relu's mask is `y > 0`).

use super::*;
use crate::op::{MapBinary, MapExpr, MapUnary};

impl Lowering<'_> {
    /// Numerically stable softmax over the last axis.
    pub(super) fn lower_softmax(&mut self, cx: NodeCx) -> Result<BufId, LowerError> {
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
        self.looped(name, softmax(out_len / c, c, ib[0], out));
        Ok(out)
    }

    /// An elementwise activation (softmax excepted).
    pub(super) fn lower_activation(&mut self, cx: NodeCx, a: Activation) -> BufId {
        let NodeCx {
            name, ib, out_len, ..
        } = cx;
        let out = self.temp(name.clone(), out_len);
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

    /// A fused elementwise map; an operand is the full tensor, one example's
    /// worth (broadcast over the batch) or one value per channel.
    pub(super) fn lower_map(&mut self, cx: NodeCx, expr: &MapExpr) -> Result<BufId, LowerError> {
        let NodeCx {
            id,
            name,
            ins,
            ib,
            out_len,
        } = cx;
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
        Ok(out)
    }

    /// `dx` of an activation from its output `y` and `dy`.
    pub(super) fn lower_act_grad(
        &mut self,
        cx: NodeCx,
        a: Activation,
    ) -> Result<BufId, LowerError> {
        let NodeCx {
            id,
            name,
            ib,
            out_len,
            ..
        } = cx;
        let out_shape = self.full_shape(id)?;
        let out = self.temp(name.clone(), out_len);
        let (y, dy) = (ib[0], ib[1]);
        let k = match a {
            Activation::Softmax => {
                let c = *out_shape.last().unwrap_or(&1);
                softmax_grad(out_len / c, c, y, dy, out)
            }
            a => nest(&[out_len], 0, |v| {
                let at = Index::var(v[0], 1);
                let (y, dy) = (Expr::load(y, at.clone()), Expr::load(dy, at.clone()));
                let value = match a {
                    Activation::Relu => y.select(Cmp::Gt, Expr::Const(0.0), dy, Expr::Const(0.0)),
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
            }),
        };
        self.looped(name, k);
        Ok(out)
    }
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
