//! A PTX function body under construction: virtual registers, labels and
//! the translation of kernel-IR statements and expressions into
//! instructions.
//!
//! Index arithmetic (loop variables, affine indices, thread numbers) is
//! 32-bit (`.s32`/`.u32`, `mad.lo.s32`) in every kernel whose sizes fit
//! ([`launch::fits_32`](super::launch::fits_32) — all examples' kernels
//! do), and 64-bit only in kernels that touch a buffer of 2^31 elements or
//! more (VGG-16's first dense layer at large batches). 64-bit integer
//! division has no hardware instruction: ptxas turns each `div.u64` or
//! `rem.u64` into a call of ~65 instructions, even by a constant, while
//! 32-bit multiplies are single instructions. An element index becomes a
//! byte address with one `mad.wide.s32` onto the 64-bit base. Divisions by
//! constants are shifts and masks for powers of two and a multiply-high
//! by a magic number otherwise ([`launch::magic`](super::launch::magic),
//! [`launch::magic64`](super::launch::magic64) in the 64-bit fallback), so
//! no kernel contains an integer `div` or `rem`. These divisions happen
//! once per thread, before any loop: loops advance their variables by
//! adding and carrying ([`launch::advance`](super::launch::advance)).

use crate::kernel::ir::*;
use std::collections::HashMap;
use std::fmt::Write;

/// Instructions and register counts of one `.entry`.
#[derive(Default)]
pub(crate) struct Asm {
    body: String,
    f: usize,
    rd: usize,
    r: usize,
    p: usize,
    labels: usize,
    /// Global base address register of each buffer parameter.
    pub(crate) bases: HashMap<BufId, String>,
    /// Register of each loop variable (an index register, see [`Self::ix`]).
    pub(crate) vars: HashMap<Var, String>,
    /// Whether index arithmetic is 64-bit (the kernel's sizes do not fit
    /// 32 bits); 32-bit otherwise.
    pub(crate) wide: bool,
    /// Register of each scalar (f32).
    pub(crate) scalars: HashMap<Scalar, String>,
}

/// An f32 constant as PTX's exact hexadecimal form.
pub(crate) fn f32_hex(x: f32) -> String {
    format!("0f{:08X}", x.to_bits())
}

impl Asm {
    /// An empty body whose index arithmetic is 32-bit when `index32`.
    pub(crate) fn new(index32: bool) -> Self {
        Asm {
            wide: !index32,
            ..Asm::default()
        }
    }

    /// The width of index arithmetic in bits: `32` or `64`.
    pub(crate) fn w(&self) -> u32 {
        if self.wide {
            64
        } else {
            32
        }
    }

    /// A fresh index register (32- or 64-bit, as the kernel's index width).
    pub(crate) fn ix(&mut self) -> String {
        if self.wide {
            self.rd()
        } else {
            self.r()
        }
    }

    /// An index register holding the unsigned 32-bit value of `r32`.
    pub(crate) fn ix_from_u32(&mut self, r32: &str) -> String {
        if self.wide {
            let d = self.rd();
            self.ins(format!("cvt.u64.u32 {d}, {r32}"));
            d
        } else {
            r32.to_string()
        }
    }

    /// `dst = x / d` for an unsigned index value `x` (below 2^31 when
    /// 32-bit, 2^63 when 64-bit): a copy, a shift, or a multiply-high by a
    /// magic number ([`launch::magic`](super::launch::magic),
    /// [`launch::magic64`](super::launch::magic64)).
    pub(crate) fn udiv(&mut self, dst: &str, x: &str, d: u64) {
        let w = self.w();
        if d == 1 {
            self.ins(format!("mov.b{w} {dst}, {x}"));
        } else if d.is_power_of_two() {
            self.ins(format!("shr.u{w} {dst}, {x}, {}", d.trailing_zeros()));
        } else if self.wide {
            let (m, s) = super::launch::magic64(d);
            self.ins(format!("mul.hi.u64 {dst}, {x}, {m}"));
            if s > 0 {
                self.ins(format!("shr.u64 {dst}, {dst}, {s}"));
            }
        } else {
            let (m, s) = super::launch::magic(d as u32);
            self.ins(format!("mul.hi.u32 {dst}, {x}, {m}"));
            if s > 0 {
                self.ins(format!("shr.u32 {dst}, {dst}, {s}"));
            }
        }
    }

    /// `dst = x % d` (as [`Self::udiv`]): a mask for a power of two,
    /// else `x − (x / d)·d`.
    pub(crate) fn urem(&mut self, dst: &str, x: &str, d: u64) {
        let w = self.w();
        if d == 1 {
            self.ins(format!("mov.b{w} {dst}, 0"));
        } else if d.is_power_of_two() {
            self.ins(format!("and.b{w} {dst}, {x}, {}", d - 1));
        } else {
            let q = self.ix();
            let w = self.w();
            self.udiv(&q, x, d);
            self.ins(format!("mul.lo.u{w} {q}, {q}, {d}"));
            self.ins(format!("sub.u{w} {dst}, {x}, {q}"));
        }
    }

    /// Sets `regs` to the digits of `x` over `extents` as
    /// [`launch::digits`](super::launch::digits) defines them (once per
    /// thread, outside every loop).
    pub(crate) fn digits(&mut self, regs: &[String], x: &str, extents: &[u64]) {
        let mut div = 1u64;
        for i in (0..extents.len()).rev() {
            if i == 0 {
                self.udiv(&regs[i], x, div);
            } else if extents[i] == 1 {
                let w = self.w();
                self.ins(format!("mov.b{w} {}, 0", regs[i]));
            } else {
                let q = self.ix();
                self.udiv(&q, x, div);
                self.urem(&regs[i], &q, extents[i]);
            }
            div *= extents[i];
        }
    }

    /// Adds the number with digits `step` (registers or literals) to the
    /// one in registers `d` by carrying, as
    /// [`launch::advance`](super::launch::advance) does; with `offset`,
    /// also keeps `offset = Σ d_i·strides_i` (the caller adds the step's
    /// own `Σ step_i·strides_i`). Digits of extent 1 stay 0 and pass a
    /// carry straight on.
    pub(crate) fn advance(
        &mut self,
        d: &[String],
        extents: &[u64],
        step: &[String],
        offset: Option<(&str, &[i64])>,
    ) {
        let w = self.w();
        for i in (1..d.len()).rev() {
            if extents[i] == 1 {
                continue;
            }
            if step[i] != "0" {
                self.ins(format!("add.s{w} {}, {}, {}", d[i], d[i], step[i]));
            }
            let p = self.p();
            self.ins(format!("setp.ge.u{w} {p}, {}, {}", d[i], extents[i]));
            self.ins(format!("@{p} sub.s{w} {}, {}, {}", d[i], d[i], extents[i]));
            // The carry goes to the next digit out that is not always 0.
            let j = (0..i)
                .rev()
                .find(|j| *j == 0 || extents[*j] > 1)
                .unwrap_or(0);
            self.ins(format!("@{p} add.s{w} {}, {}, 1", d[j], d[j]));
            if let Some((off, strides)) = offset {
                let delta = strides[j] - extents[i] as i64 * strides[i];
                if delta != 0 {
                    self.ins(format!("@{p} add.s{w} {off}, {off}, {delta}"));
                }
            }
        }
        if step[0] != "0" {
            self.ins(format!("add.s{w} {}, {}, {}", d[0], d[0], step[0]));
        }
    }

    /// Appends one instruction (or label line).
    pub(crate) fn ins(&mut self, line: impl AsRef<str>) {
        let line = line.as_ref();
        if line.ends_with(':') {
            let _ = writeln!(self.body, "{line}");
        } else {
            let _ = writeln!(self.body, "\t{line};");
        }
    }

    /// A fresh f32 register.
    pub(crate) fn f(&mut self) -> String {
        self.f += 1;
        format!("%f{}", self.f)
    }

    /// A fresh 64-bit integer register.
    pub(crate) fn rd(&mut self) -> String {
        self.rd += 1;
        format!("%rd{}", self.rd)
    }

    /// A fresh 32-bit integer register.
    pub(crate) fn r(&mut self) -> String {
        self.r += 1;
        format!("%r{}", self.r)
    }

    /// A fresh predicate register.
    pub(crate) fn p(&mut self) -> String {
        self.p += 1;
        format!("%p{}", self.p)
    }

    /// A fresh label name.
    pub(crate) fn label(&mut self, what: &str) -> String {
        self.labels += 1;
        format!("$L_{what}_{}", self.labels)
    }

    /// The register declarations followed by the instructions.
    pub(crate) fn finish(self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\t.reg .pred %p<{}>;", self.p + 1);
        let _ = writeln!(out, "\t.reg .b32 %r<{}>;", self.r + 1);
        let _ = writeln!(out, "\t.reg .f32 %f<{}>;", self.f + 1);
        let _ = writeln!(out, "\t.reg .b64 %rd<{}>;", self.rd + 1);
        out.push_str(&self.body);
        out
    }

    /// Registers for every loop variable and scalar of a loop kernel.
    pub(crate) fn declare_loop_state(&mut self, vars: usize, scalars: usize) {
        for v in 0..vars {
            let r = self.ix();
            self.vars.insert(v, r);
        }
        for s in 0..scalars {
            let r = self.f();
            self.scalars.insert(s, r);
        }
    }

    /// `offset + Σ coef·var` into a fresh index register.
    pub(crate) fn index(&mut self, ix: &Index) -> String {
        let out = self.ix();
        let w = self.w();
        self.ins(format!("mov.s{w} {out}, {}", ix.offset));
        for (v, c) in &ix.terms {
            let var = self.vars[v].clone();
            self.ins(format!("mad.lo.s{w} {out}, {var}, {c}, {out}"));
        }
        out
    }

    /// The address of element `ix` (an index register) of `buf`: one
    /// widening multiply-add onto the 64-bit base for a 32-bit index.
    pub(crate) fn address(&mut self, buf: BufId, ix: &str) -> String {
        let a = self.rd();
        let base = self.bases[&buf].clone();
        if self.wide {
            self.ins(format!("mad.lo.s64 {a}, {ix}, 4, {base}"));
        } else {
            self.ins(format!("mad.wide.s32 {a}, {ix}, 4, {base}"));
        }
        a
    }

    /// The address of `buf[row·stride + index]`, after branching to `skip`
    /// when the id is outside `0..rows` (NaN included), as
    /// [`Row::select`] says: an out-of-range id never forms an address.
    fn row_address(&mut self, buf: BufId, row: &Row, index: &Index, skip: &str) -> String {
        let v = self.expr(&row.value);
        let (lo, hi) = (self.p(), self.p());
        self.ins(format!("setp.ge.f32 {lo}, {v}, {}", f32_hex(0.0)));
        self.ins(format!(
            "setp.lt.f32 {hi}, {v}, {}",
            f32_hex(row.rows as f32)
        ));
        self.ins(format!("and.pred {lo}, {lo}, {hi}"));
        self.ins(format!("@!{lo} bra {skip}"));
        let r = self.ix();
        let w = self.w();
        // Truncation toward zero of a value already known to be >= 0.
        self.ins(format!("cvt.rzi.s{w}.f32 {r}, {v}"));
        let big = self.p();
        self.ins(format!("setp.ge.s{w} {big}, {r}, {}", row.rows));
        self.ins(format!("@{big} bra {skip}"));
        let i = self.index(index);
        self.ins(format!("mad.lo.s{w} {i}, {r}, {}, {i}", row.stride));
        self.address(buf, &i)
    }

    /// Evaluates `e` into an f32 register.
    pub(crate) fn expr(&mut self, e: &Expr) -> String {
        match e {
            Expr::Const(c) => {
                let r = self.f();
                self.ins(format!("mov.f32 {r}, {}", f32_hex(*c)));
                r
            }
            Expr::Load(b, ix) => {
                let i = self.index(ix);
                let a = self.address(*b, &i);
                let r = self.f();
                self.ins(format!("ld.global.f32 {r}, [{a}]"));
                r
            }
            Expr::Gather { buf, row, index } => {
                // 0.0 unless the id selects a row; the load runs only then.
                let r = self.f();
                self.ins(format!("mov.f32 {r}, {}", f32_hex(0.0)));
                let skip = self.label("norow");
                let a = self.row_address(*buf, row, index, &skip);
                self.ins(format!("ld.global.f32 {r}, [{a}]"));
                self.ins(format!("{skip}:"));
                r
            }
            Expr::Get(s) => self.scalars[s].clone(),
            Expr::Iter(v) => {
                let r = self.f();
                let var = self.vars[v].clone();
                let w = self.w();
                self.ins(format!("cvt.rn.f32.s{w} {r}, {var}"));
                r
            }
            Expr::Un(op, x) => {
                let x = self.expr(x);
                self.unary(*op, &x)
            }
            Expr::Bin(op, a, b) => {
                let a = self.expr(a);
                let b = self.expr(b);
                let r = self.f();
                self.binary(&r, *op, &a, &b);
                r
            }
            Expr::Select(a, cmp, b, t, f) => {
                // Branches, not `selp`: only the chosen side is evaluated,
                // as in the interpreter, so its loads stay in bounds.
                let a = self.expr(a);
                let b = self.expr(b);
                let p = self.p();
                let c = match cmp {
                    Cmp::Gt => "gt",
                    Cmp::Ge => "ge",
                    Cmp::Lt => "lt",
                };
                self.ins(format!("setp.{c}.f32 {p}, {a}, {b}"));
                let (other, done) = (self.label("else"), self.label("endif"));
                let r = self.f();
                self.ins(format!("@!{p} bra {other}"));
                let tv = self.expr(t);
                self.ins(format!("mov.f32 {r}, {tv}"));
                self.ins(format!("bra.uni {done}"));
                self.ins(format!("{other}:"));
                let fv = self.expr(f);
                self.ins(format!("mov.f32 {r}, {fv}"));
                self.ins(format!("{done}:"));
                r
            }
        }
    }

    /// `dst = a op b`.
    pub(crate) fn binary(&mut self, dst: &str, op: BinOp, a: &str, b: &str) {
        let ins = match op {
            BinOp::Add => "add.rn.f32",
            BinOp::Sub => "sub.rn.f32",
            BinOp::Mul => "mul.rn.f32",
            BinOp::Div => "div.rn.f32",
            BinOp::Max => "max.f32",
            BinOp::Min => "min.f32",
        };
        self.ins(format!("{ins} {dst}, {a}, {b}"));
    }

    /// `e^x` through `ex2` (the hardware exponential is base 2).
    fn exp(&mut self, x: &str) -> String {
        let t = self.f();
        self.ins(format!(
            "mul.rn.f32 {t}, {x}, {}",
            f32_hex(std::f32::consts::LOG2_E)
        ));
        let r = self.f();
        self.ins(format!("ex2.approx.f32 {r}, {t}"));
        r
    }

    /// `op(x)` into a fresh register.
    pub(crate) fn unary(&mut self, op: UnOp, x: &str) -> String {
        match op {
            UnOp::Neg => {
                let r = self.f();
                self.ins(format!("neg.f32 {r}, {x}"));
                r
            }
            UnOp::Exp => self.exp(x),
            UnOp::Log => {
                let t = self.f();
                self.ins(format!("lg2.approx.f32 {t}, {x}"));
                let r = self.f();
                self.ins(format!(
                    "mul.rn.f32 {r}, {t}, {}",
                    f32_hex(std::f32::consts::LN_2)
                ));
                r
            }
            UnOp::Sqrt => {
                let r = self.f();
                self.ins(format!("sqrt.rn.f32 {r}, {x}"));
                r
            }
            UnOp::Relu => {
                let r = self.f();
                self.ins(format!("max.f32 {r}, {x}, {}", f32_hex(0.0)));
                r
            }
            UnOp::Sigmoid => {
                // 1 / (1 + e^-x)
                let n = self.f();
                self.ins(format!("neg.f32 {n}, {x}"));
                let e = self.exp(&n);
                let d = self.f();
                self.ins(format!("add.rn.f32 {d}, {e}, {}", f32_hex(1.0)));
                let r = self.f();
                self.ins(format!("div.rn.f32 {r}, {}, {d}", f32_hex(1.0)));
                r
            }
            UnOp::Tanh => {
                // sign(x)·(1 − e)/(1 + e) with e = e^(−2|x|): exact to a few
                // ulp, unlike `tanh.approx` (about 2^-11 relative).
                let a = self.f();
                self.ins(format!("abs.f32 {a}, {x}"));
                let m = self.f();
                self.ins(format!("mul.rn.f32 {m}, {a}, {}", f32_hex(-2.0)));
                let e = self.exp(&m);
                let num = self.f();
                self.ins(format!("sub.rn.f32 {num}, {}, {e}", f32_hex(1.0)));
                let den = self.f();
                self.ins(format!("add.rn.f32 {den}, {e}, {}", f32_hex(1.0)));
                let q = self.f();
                self.ins(format!("div.rn.f32 {q}, {num}, {den}"));
                let r = self.f();
                self.ins(format!("copysign.f32 {r}, {x}, {q}"));
                r
            }
        }
    }

    /// The statements, run sequentially by the current thread.
    pub(crate) fn stmts(&mut self, body: &[Stmt]) {
        for s in body {
            self.stmt(s);
        }
    }

    fn stmt(&mut self, s: &Stmt) {
        match s {
            Stmt::Loop { var, extent, body } => {
                let v = self.vars[var].clone();
                // ptxas fully unrolls loops with constant trip counts,
                // which took 15 s per module on col2im nests (a 384-trip
                // innermost loop under a guard); only short innermost
                // loops may be unrolled.
                let unroll = *extent <= 8
                    && !body.iter().any(|s| matches!(s, Stmt::Loop { .. }))
                    && !body.iter().any(|s| match s {
                        Stmt::IfInBounds { body, .. } => {
                            body.iter().any(|s| matches!(s, Stmt::Loop { .. }))
                        }
                        _ => false,
                    });
                if unroll {
                    self.counted_loop(&v, "0", "1", *extent as u64, |a| a.stmts(body));
                } else {
                    self.counted_loop_no_unroll(&v, "0", "1", *extent as u64, |a| a.stmts(body));
                }
            }
            Stmt::Store { buf, index, value } => {
                let v = self.expr(value);
                let i = self.index(index);
                let a = self.address(*buf, &i);
                self.ins(format!("st.global.f32 [{a}], {v}"));
            }
            Stmt::ScatterAdd {
                buf,
                row,
                index,
                value,
            } => {
                // A plain read-add-write: the lowering gives each thread
                // its own columns (checked by `parallel::disjoint`).
                let skip = self.label("norow");
                let a = self.row_address(*buf, row, index, &skip);
                let v = self.expr(value);
                let old = self.f();
                self.ins(format!("ld.global.f32 {old}, [{a}]"));
                self.ins(format!("add.rn.f32 {old}, {old}, {v}"));
                self.ins(format!("st.global.f32 [{a}], {old}"));
                self.ins(format!("{skip}:"));
            }
            Stmt::Set { scalar, value } => {
                let v = self.expr(value);
                let dst = self.scalars[scalar].clone();
                self.ins(format!("mov.f32 {dst}, {v}"));
            }
            Stmt::IfInBounds { conds, body } => {
                let skip = self.label("out");
                for (ix, bound) in conds {
                    let i = self.index(ix);
                    let p = self.p();
                    // One unsigned compare covers both 0 <= i and i < bound.
                    let w = self.w();
                    self.ins(format!("setp.ge.u{w} {p}, {i}, {bound}"));
                    self.ins(format!("@{p} bra {skip}"));
                }
                self.stmts(body);
                self.ins(format!("{skip}:"));
            }
        }
    }

    /// `for (var = start; var < extent; var += step) body`, where `var` is
    /// an index register and `start` and `step` are index registers or
    /// literals.
    pub(crate) fn counted_loop(
        &mut self,
        var: &str,
        start: &str,
        step: &str,
        extent: u64,
        body: impl FnOnce(&mut Asm),
    ) {
        self.emit_loop(var, start, step, extent, true, body)
    }

    /// [`Self::counted_loop`] that ptxas must not unroll.
    pub(crate) fn counted_loop_no_unroll(
        &mut self,
        var: &str,
        start: &str,
        step: &str,
        extent: u64,
        body: impl FnOnce(&mut Asm),
    ) {
        self.emit_loop(var, start, step, extent, false, body)
    }

    fn emit_loop(
        &mut self,
        var: &str,
        start: &str,
        step: &str,
        extent: u64,
        unroll: bool,
        body: impl FnOnce(&mut Asm),
    ) {
        let (top, end) = (self.label("loop"), self.label("done"));
        let p = self.p();
        let w = self.w();
        self.ins(format!("mov.s{w} {var}, {start}"));
        self.ins(format!("{top}:"));
        if !unroll {
            self.ins(".pragma \"nounroll\"");
        }
        self.ins(format!("setp.ge.s{w} {p}, {var}, {extent}"));
        self.ins(format!("@{p} bra {end}"));
        body(self);
        self.ins(format!("add.s{w} {var}, {var}, {step}"));
        self.ins(format!("bra.uni {top}"));
        self.ins(format!("{end}:"));
    }

    /// Loads each buffer parameter and converts it to a global address.
    pub(crate) fn load_params(&mut self, entry: &str, params: &[BufId]) {
        for (i, b) in params.iter().enumerate() {
            let r = self.rd();
            self.ins(format!("ld.param.u64 {r}, [{entry}_param_{i}]"));
            self.ins(format!("cvta.to.global.u64 {r}, {r}"));
            self.bases.insert(*b, r);
        }
    }
}

/// The parameter list of an entry with `n` pointer parameters.
pub(crate) fn param_list(entry: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("\t.param .u64 {entry}_param_{i}"))
        .collect::<Vec<_>>()
        .join(",\n")
}
