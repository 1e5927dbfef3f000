//! Expressions of a loop kernel as Cranelift values: scalar ones, and
//! f32x4 ones for the four iterations of a vectorized loop. Both compute
//! the same function (see the module docs of `loops`).

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;

use super::emit::{coefficient, mem, vmem, Gen, Libcall};
use super::vectorize::LANES;
use super::{compile_error, CodegenError};
use crate::codegen::cpu::vmath;
use crate::kernel::ir::{BinOp, Cmp, Expr, UnOp};

impl Gen<'_, '_> {
    pub(super) fn expr(&mut self, e: &Expr) -> Result<Value, CodegenError> {
        Ok(match e {
            Expr::Const(c) => self.b.ins().f32const(*c),
            Expr::Load(buf, idx) => {
                let (addr, off) = self.address(*buf, idx);
                self.b.ins().load(types::F32, mem(), addr, off)
            }
            Expr::Gather { buf, row, index } => {
                let (at, ok) = self.row_offset(row)?;
                let (addr, off) = self.address(*buf, index);
                let addr = self.b.ins().iadd(addr, at);
                let x = self.b.ins().load(types::F32, mem(), addr, off);
                let zero = self.b.ins().f32const(0.0);
                self.b.ins().select(ok, x, zero)
            }
            Expr::Get(s) => self.b.use_var(self.scalars[*s]),
            Expr::Iter(v) => {
                let i = self.b.use_var(self.loop_vars[*v]);
                self.b.ins().fcvt_from_sint(types::F32, i)
            }
            Expr::Un(op, x) => {
                let x = self.expr(x)?;
                self.unary(*op, x)?
            }
            Expr::Bin(op, a, b) => {
                let (a, b, b_is_number) = operands(*op, a, b);
                let x = self.expr(a)?;
                let y = self.expr(b)?;
                let ins = self.b.ins();
                match op {
                    BinOp::Add => ins.fadd(x, y),
                    BinOp::Sub => ins.fsub(x, y),
                    BinOp::Mul => ins.fmul(x, y),
                    BinOp::Div => ins.fdiv(x, y),
                    BinOp::Max => self.pick(true, x, y, b_is_number),
                    BinOp::Min => self.pick(false, x, y, b_is_number),
                }
            }
            Expr::Select(a, cmp, b, t, f) => {
                let x = self.expr(a)?;
                let y = self.expr(b)?;
                let t = self.expr(t)?;
                let f = self.expr(f)?;
                let cc = match cmp {
                    Cmp::Gt => FloatCC::GreaterThan,
                    Cmp::Ge => FloatCC::GreaterThanOrEqual,
                    Cmp::Lt => FloatCC::LessThan,
                };
                let c = self.b.ins().fcmp(cc, x, y);
                self.b.ins().select(c, t, f)
            }
        })
    }

    /// `f32::max(x, y)` (`max`) or `f32::min(x, y)`: `y < x ? x : y` (or
    /// `x < y ? x : y`), which x86 lowers to one `maxss`/`minss`, and which
    /// already returns `y` when `x` is NaN. When `y` may be NaN, a second,
    /// well-predicted select returns `x` instead.
    fn pick(&mut self, max: bool, x: Value, y: Value, y_is_number: bool) -> Value {
        let c = if max {
            self.b.ins().fcmp(FloatCC::LessThan, y, x)
        } else {
            self.b.ins().fcmp(FloatCC::LessThan, x, y)
        };
        let r = self.b.ins().select(c, x, y);
        if y_is_number {
            return r;
        }
        let y_nan = self.b.ins().fcmp(FloatCC::Unordered, y, y);
        self.b.ins().select(y_nan, x, r)
    }

    fn unary(&mut self, op: UnOp, x: Value) -> Result<Value, CodegenError> {
        Ok(match op {
            UnOp::Neg => self.b.ins().fneg(x),
            UnOp::Sqrt => self.b.ins().sqrt(x),
            UnOp::Relu => {
                // `0 < x ? x : 0`: one `maxss`; NaN gives 0 like f32::max.
                let zero = self.b.ins().f32const(0.0);
                self.pick(true, x, zero, true)
            }
            UnOp::Log => self.libcall(Libcall::Log, x)?,
            UnOp::Exp | UnOp::Tanh | UnOp::Sigmoid => {
                // Lane 0 of the vector function, so scalar tails and
                // unvectorized loops give the same bits as vector lanes.
                let v = self.b.ins().splat(types::F32X4, x);
                let y = self.vunary_math(op, v);
                self.b.ins().extractlane(y, 0)
            }
        })
    }

    /// `exp`, `tanh` or `sigmoid` of every lane.
    fn vunary_math(&mut self, op: UnOp, v: Value) -> Value {
        self.vunary_math_n(op, &[v])[0]
    }

    /// `exp`, `tanh` or `sigmoid` of every lane of every vector of `vs`,
    /// their chains interleaved.
    fn vunary_math_n(&mut self, op: UnOp, vs: &[Value]) -> Vec<Value> {
        match op {
            UnOp::Exp => vmath::exp_n(self.b, vs),
            UnOp::Tanh => vmath::tanh_n(self.b, vs),
            _ => vmath::sigmoid_n(self.b, vs),
        }
    }

    /// `e` for the iterations of the vectorized loop starting at its
    /// variable's current value: one f32x4 for each of the step's
    /// [`Gen::group`] vectors (iterations `4j..4j + 4` past the start in
    /// vector `j`). Every operation is emitted for all vectors before the
    /// next one, so their dependency chains overlap.
    pub(super) fn vexpr(&mut self, e: &Expr) -> Result<Vec<Value>, CodegenError> {
        let lane_var = self.lane_var.expect("vexpr runs inside a vectorized loop");
        let group = self.group;
        Ok(match e {
            Expr::Const(c) => vec![vmath::splat_f(self.b, *c); group],
            Expr::Gather { .. } => {
                return Err(compile_error(
                    "a data-dependent row in a vectorized loop".into(),
                ))
            }
            Expr::Load(buf, idx) => {
                let (addr, off) = self.address(*buf, idx);
                if coefficient(idx, lane_var) == 0 {
                    let x = self.b.ins().load(types::F32, mem(), addr, off);
                    vec![self.b.ins().splat(types::F32X4, x); group]
                } else {
                    (0..group)
                        .map(|j| {
                            let (addr, off) = self.vector_at(addr, off, j);
                            self.b.ins().load(types::F32X4, vmem(), addr, off)
                        })
                        .collect()
                }
            }
            Expr::Get(s) => (0..group)
                .map(|j| self.b.use_var(self.vscalars[*s][j]))
                .collect(),
            Expr::Iter(v) => {
                let i = self.b.use_var(self.loop_vars[*v]);
                if *v == lane_var {
                    (0..group)
                        .map(|j| {
                            let i = self.plus(i, (LANES * j) as i64);
                            let x = self.b.ins().fcvt_from_sint(types::F32, i);
                            let x = self.b.ins().splat(types::F32X4, x);
                            self.b.ins().fadd(x, self.iota)
                        })
                        .collect()
                } else {
                    let x = self.b.ins().fcvt_from_sint(types::F32, i);
                    vec![self.b.ins().splat(types::F32X4, x); group]
                }
            }
            Expr::Un(op, x) => {
                let xs = self.vexpr(x)?;
                match op {
                    UnOp::Neg => vmath::neg_n(self.b, &xs),
                    UnOp::Sqrt => self.map(&xs, |b, x| b.ins().sqrt(x)),
                    UnOp::Relu => {
                        let zero = vmath::splat_f(self.b, 0.0);
                        self.map(&xs, |b, x| vmath::max(b, x, zero))
                    }
                    UnOp::Log => {
                        let mut out = Vec::with_capacity(group);
                        for &x in &xs {
                            let mut v = x;
                            for l in 0..LANES as u8 {
                                let xl = self.b.ins().extractlane(x, l);
                                let y = self.libcall(Libcall::Log, xl)?;
                                v = self.b.ins().insertlane(v, y, l);
                            }
                            out.push(v);
                        }
                        out
                    }
                    UnOp::Exp | UnOp::Tanh | UnOp::Sigmoid => self.vunary_math_n(*op, &xs),
                }
            }
            Expr::Bin(op, a, b) => {
                let (a, b, b_is_number) = operands(*op, a, b);
                let xs = self.vexpr(a)?;
                let ys = self.vexpr(b)?;
                let op = *op;
                self.zip(&xs, &ys, |b, x, y| match op {
                    BinOp::Add => b.ins().fadd(x, y),
                    BinOp::Sub => b.ins().fsub(x, y),
                    BinOp::Mul => b.ins().fmul(x, y),
                    BinOp::Div => b.ins().fdiv(x, y),
                    BinOp::Max | BinOp::Min => {
                        let r = if op == BinOp::Max {
                            vmath::max(b, x, y)
                        } else {
                            vmath::min(b, x, y)
                        };
                        if b_is_number {
                            r
                        } else {
                            vmath::select(b, FloatCC::Unordered, y, y, x, r)
                        }
                    }
                })
            }
            Expr::Select(a, cmp, b, t, f) => {
                let xs = self.vexpr(a)?;
                let ys = self.vexpr(b)?;
                let ts = self.vexpr(t)?;
                let fs = self.vexpr(f)?;
                let cc = match cmp {
                    Cmp::Gt => FloatCC::GreaterThan,
                    Cmp::Ge => FloatCC::GreaterThanOrEqual,
                    Cmp::Lt => FloatCC::LessThan,
                };
                (0..group)
                    .map(|j| vmath::select(self.b, cc, xs[j], ys[j], ts[j], fs[j]))
                    .collect()
            }
        })
    }

    /// `f` of every vector of `xs`.
    fn map(
        &mut self,
        xs: &[Value],
        mut f: impl FnMut(&mut FunctionBuilder, Value) -> Value,
    ) -> Vec<Value> {
        xs.iter().map(|&x| f(self.b, x)).collect()
    }

    /// `f` of every pair of vectors of `xs` and `ys`.
    fn zip(
        &mut self,
        xs: &[Value],
        ys: &[Value],
        mut f: impl FnMut(&mut FunctionBuilder, Value, Value) -> Value,
    ) -> Vec<Value> {
        xs.iter().zip(ys).map(|(&x, &y)| f(self.b, x, y)).collect()
    }
}

/// The operands of `a op b` in evaluation order, and whether the second is
/// a number (a non-NaN constant). For max/min a non-NaN constant goes
/// second: then one compare gives `f32::max`/`f32::min` semantics. The
/// scalar and the vector paths both use this, so they agree lane for lane.
pub(super) fn operands<'e>(op: BinOp, a: &'e Expr, b: &'e Expr) -> (&'e Expr, &'e Expr, bool) {
    let number = |e: &Expr| matches!(e, Expr::Const(c) if !c.is_nan());
    let swap = matches!(op, BinOp::Max | BinOp::Min) && number(a) && !number(b);
    let (a, b) = if swap { (b, a) } else { (a, b) };
    (a, b, number(b))
}
