//! Expressions of a vectorized loop's body on `zmm` or `ymm` registers
//! (`g` vectors of 16 or 8 consecutive iterations) or, in the scalar
//! tail, on lane 0 of `xmm` registers: the operations of `loops::expr` in the same operand
//! order, so every lane gets the Cranelift path's bits.

use super::asm::{Fail, Op3, Src, GE_OS, GT_OS, LT_OS, RSP, UNORD_Q, W};
use super::lower::Emitter;
use super::math;
use super::need::need;
use crate::codegen::cpu::loops::expr::operands;
use crate::codegen::cpu::vmath::ExpInput;
use crate::kernel::ir::{BinOp, Cmp, Expr, UnOp};

/// An expression's value for each vector of a step: an operand per
/// vector, and the registers it owns (freed with it). A broadcast owns one
/// register shared by all vectors; loads, constants and scalar registers
/// stay in memory until an instruction needs them in a register.
pub(super) struct Val {
    srcs: Vec<Src>,
    owned: Vec<u8>,
}

impl Val {
    fn regs(regs: Vec<u8>) -> Val {
        Val {
            srcs: regs.iter().map(|&r| Src::R(r)).collect(),
            owned: regs,
        }
    }
}

/// Whether evaluating `e` loads from memory.
fn loads(e: &Expr) -> bool {
    match e {
        Expr::Const(_) | Expr::Get(_) | Expr::Iter(_) => false,
        Expr::Load(..) | Expr::Gather { .. } => true,
        Expr::Un(_, x) => loads(x),
        Expr::Bin(_, a, b) => loads(a) || loads(b),
        Expr::Select(a, _, b, t, f) => [a, b, t, f].iter().any(|x| loads(x)),
    }
}

impl Emitter {
    /// `e` for the current step: `g` vectors of width `w`. `once`: whether
    /// the Cranelift function uses `e`'s value exactly once, directly or
    /// through single-use operations up to a store (see the swap below).
    pub(super) fn expr(&mut self, e: &Expr, w: W, g: usize, once: bool) -> Result<Val, Fail> {
        Ok(match e {
            Expr::Const(c) => Val {
                srcs: vec![self.a.constant(*c); g],
                owned: vec![],
            },
            Expr::Get(s) => Val {
                srcs: match &self.homes[*s] {
                    Some(regs) => regs.iter().map(|&r| Src::R(r)).collect(),
                    None => (0..g)
                        .map(|j| Src::M(RSP, self.slot(*s) + w.bytes() * j as i32))
                        .collect(),
                },
                owned: vec![],
            },
            Expr::Load(buf, idx) => {
                let (p, disp, lane) = self.access(*buf, idx)?;
                if !lane {
                    let d = self.a.vreg()?;
                    self.a.broadcast(w, d, p, disp);
                    Val {
                        srcs: vec![Src::R(d); g],
                        owned: vec![d],
                    }
                } else if w != W::X {
                    Val {
                        srcs: (0..g)
                            .map(|j| Src::M(p, disp + w.bytes() * j as i32))
                            .collect(),
                        owned: vec![],
                    }
                } else {
                    // One element: a 16-byte operand would read past it.
                    let d = self.a.vreg()?;
                    self.a.load(w, d, p, disp);
                    Val::regs(vec![d])
                }
            }
            Expr::Iter(_) | Expr::Gather { .. } => return Err(Fail::Unsupported),
            Expr::Un(op, x) => {
                let x = self.expr(x, w, g, once && matches!(op, UnOp::Neg | UnOp::Sqrt))?;
                let xr = self.owned_regs(x, w)?;
                let a = &mut self.a;
                let out = match op {
                    UnOp::Neg => {
                        let sign = a.constant(-0.0);
                        xr.iter().for_each(|&r| a.op3(w, Op3::Xor, r, r, sign));
                        xr
                    }
                    UnOp::Relu => {
                        // `0 < x ? x : 0`, as `max(x, 0.0)`.
                        let zero = a.constant(0.0);
                        xr.iter().for_each(|&r| a.op3(w, Op3::Max, r, r, zero));
                        xr
                    }
                    UnOp::Sqrt => {
                        xr.iter().for_each(|&r| a.sqrt(w, r, Src::R(r)));
                        xr
                    }
                    UnOp::Exp => {
                        let y = math::exp(a, w, &xr, ExpInput::Any)?;
                        xr.iter().for_each(|&r| a.free(r));
                        y
                    }
                    UnOp::Tanh => math::tanh(a, w, xr)?,
                    UnOp::Sigmoid => math::sigmoid(a, w, xr)?,
                    UnOp::Log => return Err(Fail::Unsupported),
                };
                Val::regs(out)
            }
            Expr::Bin(op, a, b) => {
                let (a, b, b_is_number) = operands(*op, a, b);
                // Max/min use their operands twice (compare and select).
                let inner = once && !matches!(op, BinOp::Max | BinOp::Min);
                let (x, y) = if need(b) > need(a) {
                    let y = self.expr(b, w, g, inner)?;
                    (self.expr(a, w, g, inner)?, y)
                } else {
                    let x = self.expr(a, w, g, inner)?;
                    (x, self.expr(b, w, g, inner)?)
                };
                // Cranelift's x64 lowering folds a load on the left of a
                // commutative `fadd`/`fmul` into the memory operand by
                // swapping the operands, when the load may sink there: its
                // value is used once, transitively (`once`), and no other
                // load comes between the two (the right operand loads
                // nothing; a splat of a load is no load). That decides
                // which NaN comes out when both are NaN, so swap the same
                // way.
                let swap = once
                    && matches!(op, BinOp::Add | BinOp::Mul)
                    && !loads(b)
                    && match a {
                        Expr::Load(buf, idx) => w == W::X || self.access(*buf, idx)?.2,
                        _ => false,
                    };
                let (x, y) = if swap { (y, x) } else { (x, y) };
                let xr = self.owned_regs(x, w)?;
                let op3 = match op {
                    BinOp::Add => Op3::Add,
                    BinOp::Sub => Op3::Sub,
                    BinOp::Mul => Op3::Mul,
                    BinOp::Div => Op3::Div,
                    BinOp::Max => Op3::Max,
                    BinOp::Min => Op3::Min,
                };
                let out = if matches!(op, BinOp::Max | BinOp::Min) && !b_is_number {
                    // `y` may be NaN: `y unordered y ? x : max(x, y)`.
                    let mut out = Vec::with_capacity(g);
                    for (&x, &ys) in xr.iter().zip(&y.srcs) {
                        let r = self.a.vreg()?;
                        self.a.op3(w, op3, r, x, ys);
                        let k = self.a.vreg()?;
                        match ys {
                            Src::R(yr) => self.a.cmp(w, UNORD_Q, k, yr, Src::R(yr)),
                            Src::M(..) => {
                                self.a.mov(w, k, ys);
                                self.a.cmp(w, UNORD_Q, k, k, Src::R(k));
                            }
                        }
                        self.a.blend(w, r, r, Src::R(x), k);
                        self.a.free(k);
                        self.a.free(x);
                        out.push(r);
                    }
                    out
                } else {
                    for (&x, &ys) in xr.iter().zip(&y.srcs) {
                        self.a.op3(w, op3, x, x, ys);
                    }
                    xr
                };
                self.drop_val(y);
                Val::regs(out)
            }
            Expr::Select(a, cmp, b, t, f) => {
                let x = self.expr(a, w, g, once)?;
                let y = self.expr(b, w, g, once)?;
                let t = self.expr(t, w, g, once)?;
                let f = self.expr(f, w, g, once)?;
                let pred = match cmp {
                    Cmp::Gt => GT_OS,
                    Cmp::Ge => GE_OS,
                    Cmp::Lt => LT_OS,
                };
                let xr = self.owned_regs(x, w)?;
                for (&x, &ys) in xr.iter().zip(&y.srcs) {
                    self.a.cmp(w, pred, x, x, ys);
                }
                self.drop_val(y);
                let fr = self.owned_regs(f, w)?;
                for ((&d, &ts), &m) in fr.iter().zip(&t.srcs).zip(&xr) {
                    self.a.blend(w, d, d, ts, m);
                }
                self.drop_val(t);
                xr.iter().for_each(|&r| self.a.free(r));
                Val::regs(fr)
            }
        })
    }

    /// The value in registers of its own, one per vector, that the caller
    /// may overwrite.
    pub(super) fn owned_regs(&mut self, v: Val, w: W) -> Result<Vec<u8>, Fail> {
        let mut owned = v.owned;
        let mut out = Vec::with_capacity(v.srcs.len());
        for s in v.srcs {
            match s {
                Src::R(r) if owned.contains(&r) => {
                    owned.retain(|&o| o != r);
                    out.push(r);
                }
                s => {
                    let d = self.a.vreg()?;
                    self.a.mov(w, d, s);
                    out.push(d);
                }
            }
        }
        owned.into_iter().for_each(|r| self.a.free(r));
        Ok(out)
    }

    fn drop_val(&mut self, v: Val) {
        v.owned.into_iter().for_each(|r| self.a.free(r));
    }
}
