//! Lowering of backpropagation through time: the gradients of one
//! unrolled cell step (`GradOp::CellGrad`), of time slices
//! (`GradOp::TimeScatter`) and of state slices (`GradOp::SliceGrad`).
//!
//! A cell-gradient kernel reads the forward step's `h·U` product (the
//! lowering computes each product once, see `state_product`) and its
//! activated gates (kept in a buffer of their own), so a step's gradient
//! costs no matrix work and one transcendental per unit (an LSTM's
//! `tanh c`). Lowered without its forward step, it recomputes the gates.
//! Formulas: `docs/numerics.md`; with `z` the pre-activations,
//!
//! ```text
//! rnn:  dz = dh ∘ (1 − h²)
//! lstm: dc = dc_in + dh ∘ o ∘ (1 − tanh²c)
//!       dz_i = dc ∘ c̃ ∘ i(1−i)   dz_f = dc ∘ c₋₁ ∘ f(1−f)
//!       dz_c = dc ∘ i ∘ (1−c̃²)   dz_o = dh ∘ tanh c ∘ o(1−o)
//!       dc₋₁ = dc ∘ f
//! gru:  da = dh ∘ (1−z) ∘ (1−h̃²)         (a: h̃'s pre-activation)
//!       dz_z = dh ∘ (h₋₁ − h̃) ∘ z(1−z)   dz_r = da ∘ (h₋₁U_h + b̄_h) ∘ r(1−r)
//!       input block h: da; recurrent block h: da ∘ r;  dh₋₁ ⊇ dh ∘ z
//! ```

use super::*;
use crate::op::CellWrt;

/// Operands of a cell-gradient kernel.
pub(super) struct CellGradArgs {
    /// The forward step.
    pub step: StepCell,
    /// `d(new state)` `[N, S]`.
    pub ds: BufId,
    /// `dz_rec · Uᵀ` `[N, U]` (only for [`CellWrt::State`]).
    pub dh_rec: Option<BufId>,
    /// Which gradient.
    pub wrt: CellWrt,
}

fn one_minus(e: Expr) -> Expr {
    Expr::Const(1.0).bin(BinOp::Sub, e)
}

/// `s·(1 − s)`: the logistic's derivative from its value.
fn dsig(s: Expr) -> Expr {
    s.clone().mul(one_minus(s))
}

/// `1 − t²`: tanh's derivative from its value.
fn dtanh(t: Expr) -> Expr {
    one_minus(t.clone().mul(t))
}

impl Lowering<'_> {
    /// One cell step's gradient (see the module docs).
    pub(super) fn cell_grad(&mut self, name: &str, a: &CellGradArgs) -> BufId {
        let c = &a.step;
        let (n, u) = (c.n, c.u);
        let gu = c.cell.gates() * u;
        let s_len = if c.cell == CellKind::Lstm { 2 * u } else { u };
        let out_len = match a.wrt {
            CellWrt::State => n * s_len,
            _ => n * gu,
        };
        let out = self.temp(name.to_string(), out_len);
        // h₋₁·U + b_r: the forward step's product.
        let hu = self.state_product(name, c);
        // The forward step's activated gates, when it was lowered into this
        // program (always, in a training step).
        let saved = self.gates.get(&c.key()).copied();
        let (xt, rb, state, ds, dh_rec, wrt, cell) =
            (c.xt, c.rb, c.state, a.ds, a.dh_rec, a.wrt, c.cell);
        let k = nest(&[n, u], 8, |v| {
            let (vn, vu) = (v[0], v[1]);
            let x_at = |g: usize| {
                Expr::load(
                    xt.buf,
                    Index::new(
                        [(vn, xt.row_stride as i64), (vu, 1)],
                        (xt.offset + g * u) as i64,
                    ),
                )
            };
            let h_at = |g: usize| match (hu, rb) {
                (Some(hu), _) => {
                    Expr::load(hu, Index::new([(vn, gu as i64), (vu, 1)], (g * u) as i64))
                }
                (None, Some(rb)) => Expr::load(rb, Index::var(vu, 1).shift((g * u) as i64)),
                (None, None) => Expr::Const(0.0),
            };
            let z = |g: usize| x_at(g).add(h_at(g));
            // Gate g's activation: saved by the forward step, else recomputed.
            let act = |g: usize, f: UnOp, pre: Expr| match saved {
                Some(b) => Expr::load(b, Index::new([(vn, gu as i64), (vu, 1)], (g * u) as i64)),
                None => pre.un(f),
            };
            let prev = |off: usize| match state {
                Some(sb) => Expr::load(sb, Index::new([(vn, s_len as i64), (vu, 1)], off as i64)),
                None => Expr::Const(0.0),
            };
            let d_in =
                |off: usize| Expr::load(ds, Index::new([(vn, s_len as i64), (vu, 1)], off as i64));
            let dh_r = || match dh_rec {
                Some(b) => Expr::load(b, Index::new([(vn, u as i64), (vu, 1)], 0)),
                None => Expr::Const(0.0),
            };
            let g = Expr::Get;
            let set = |scalar: usize, value: Expr| Stmt::Set { scalar, value };
            let store_gate = |gate: usize, value: Expr| Stmt::Store {
                buf: out,
                index: Index::new([(vn, gu as i64), (vu, 1)], (gate * u) as i64),
                value,
            };
            let store_state = |off: usize, value: Expr| Stmt::Store {
                buf: out,
                index: Index::new([(vn, s_len as i64), (vu, 1)], off as i64),
                value,
            };
            match cell {
                CellKind::Rnn => {
                    // h = tanh(z); dz = dh(1 − h²).
                    let mut b = vec![set(0, act(0, UnOp::Tanh, z(0)))];
                    b.push(match wrt {
                        CellWrt::State => store_state(0, dh_r()),
                        _ => store_gate(0, d_in(0).mul(dtanh(g(0)))),
                    });
                    b
                }
                CellKind::Lstm => {
                    let mut b = vec![
                        set(0, act(0, UnOp::Sigmoid, z(0))),                       // i
                        set(1, act(1, UnOp::Sigmoid, z(1))),                       // f
                        set(2, act(2, UnOp::Tanh, z(2))),                          // c̃
                        set(3, act(3, UnOp::Sigmoid, z(3))),                       // o
                        set(4, prev(u)),                                           // c₋₁
                        set(5, g(1).mul(g(4)).add(g(0).mul(g(2))).un(UnOp::Tanh)), // tanh c
                        set(6, d_in(0)),                                           // dh
                        // dc = dc_in + dh·o·(1 − tanh²c)
                        set(7, d_in(u).add(g(6).mul(g(3)).mul(dtanh(g(5))))),
                    ];
                    match wrt {
                        CellWrt::State => {
                            b.push(store_state(0, dh_r()));
                            b.push(store_state(u, g(7).mul(g(1))));
                        }
                        _ => {
                            b.push(store_gate(0, g(7).mul(g(2)).mul(dsig(g(0)))));
                            b.push(store_gate(1, g(7).mul(g(4)).mul(dsig(g(1)))));
                            b.push(store_gate(2, g(7).mul(g(0)).mul(dtanh(g(2)))));
                            b.push(store_gate(3, g(6).mul(g(5)).mul(dsig(g(3)))));
                        }
                    }
                    b
                }
                CellKind::Gru => {
                    let mut b = vec![
                        set(0, act(0, UnOp::Sigmoid, z(0))),                     // z
                        set(1, act(1, UnOp::Sigmoid, z(1))),                     // r
                        set(2, h_at(2)),                                         // h₋₁·U_h + b̄_h
                        set(3, act(2, UnOp::Tanh, x_at(2).add(g(1).mul(g(2))))), // h̃
                        set(4, prev(0)),                                         // h₋₁
                        set(5, d_in(0)),                                         // dh
                        // da = dh·(1 − z)·(1 − h̃²)
                        set(6, g(5).mul(one_minus(g(0))).mul(dtanh(g(3)))),
                    ];
                    match wrt {
                        CellWrt::State => {
                            b.push(store_state(0, dh_r().add(g(5).mul(g(0)))));
                        }
                        _ => {
                            b.push(store_gate(
                                0,
                                g(5).mul(g(4).bin(BinOp::Sub, g(3))).mul(dsig(g(0))),
                            ));
                            b.push(store_gate(1, g(6).mul(g(2)).mul(dsig(g(1)))));
                            let h = if wrt == CellWrt::Recurrent {
                                g(6).mul(g(1))
                            } else {
                                g(6)
                            };
                            b.push(store_gate(2, h));
                        }
                    }
                    b
                }
            }
        });
        self.looped(name.to_string(), k);
        out
    }

    /// `dy` `[N, F]` at step `step` of a `[N, steps, F]` zero tensor.
    pub(super) fn time_scatter(
        &mut self,
        name: &str,
        dy: BufId,
        step: usize,
        steps: usize,
        f: usize,
    ) -> BufId {
        let n = self.n;
        let out = self.temp(name.to_string(), n * steps * f);
        self.zero(format!("{name}.zero"), out, n * steps * f);
        let k = nest(&[n, f], 0, |v| {
            vec![Stmt::Store {
                buf: out,
                index: Index::new([(v[0], (steps * f) as i64), (v[1], 1)], (step * f) as i64),
                value: Expr::load(dy, linear(v, &[n, f])),
            }]
        });
        self.looped(name.to_string(), k);
        out
    }

    /// `dy` `[rows, len]` at column `start` of a `[rows, total]` zero tensor.
    pub(super) fn slice_grad(
        &mut self,
        name: &str,
        dy: BufId,
        rows: usize,
        (start, len, total): (usize, usize, usize),
    ) -> BufId {
        let out = self.temp(name.to_string(), rows * total);
        self.zero(format!("{name}.zero"), out, rows * total);
        let k = nest(&[rows, len], 0, |v| {
            vec![Stmt::Store {
                buf: out,
                index: Index::new([(v[0], total as i64), (v[1], 1)], start as i64),
                value: Expr::load(dy, linear(v, &[rows, len])),
            }]
        });
        self.looped(name.to_string(), k);
        out
    }
}
