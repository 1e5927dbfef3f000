//! Cranelift emission: the whole loop nest of a contraction (row sweep,
//! panels, reduction levels, `f32x4` register tile, epilogue) as one
//! function over a range of rows and panels.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, Function, InstBuilder, MemFlagsData, Signature, Value,
};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};

use super::blocking::KBlocking;
use super::plan::Plan;
use super::{vmath, Epilogue, LoopOrder};

pub(super) const FUNC_NAME: &str = "netc_contraction";

// ---------------------------------------------------------------------------
// Code generation
// ---------------------------------------------------------------------------

/// Loads and stores in generated code: in bounds by construction (checked by
/// `run`), but only 4-byte aligned, so not `aligned`.
fn mem() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

struct Params {
    a: Value,
    bp: Value,
    bias: Value,
    c: Value,
    m_begin: Value,
    m_end: Value,
    p_begin: Value,
    p_end: Value,
}

/// Running position in the row decomposition: the A byte offset of the
/// current row and the mixed-radix digits needed to detect carries.
struct RowState {
    off: Variable,
    /// Digits of all but the outermost row dimension, innermost first.
    digits: Vec<Variable>,
}

struct Gen<'a, 'f> {
    b: &'a mut FunctionBuilder<'f>,
    p: &'a Plan,
    ptr: types::Type,
}

pub(super) fn build_function(plan: &Plan, isa: &OwnedTargetIsa) -> Function {
    let ptr = isa.pointer_type();
    let mut sig = Signature::new(isa.default_call_conv());
    sig.params.extend((0..8).map(|_| AbiParam::new(ptr)));
    let mut func = Function::with_name_signature(Default::default(), sig);
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut func, &mut fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let v = b.block_params(entry).to_vec();
    let params = Params {
        a: v[0],
        bp: v[1],
        bias: v[2],
        c: v[3],
        m_begin: v[4],
        m_end: v[5],
        p_begin: v[6],
        p_end: v[7],
    };
    let mut g = Gen {
        b: &mut b,
        p: plan,
        ptr,
    };
    g.body(&params);
    g.b.ins().return_(&[]);
    b.seal_all_blocks();
    b.finalize(isa.frontend_config());
    func
}

/// Emits one tile: `(generator, rows, first row, A byte offset of each row)`.
/// A tile's register accumulators and, when the reduction is blocked,
/// the running totals they are flushed into.
struct Accumulators<'v> {
    accs: &'v [Vec<Variable>],
    totals: &'v [Vec<Variable>],
}

type TileEmitter<'t, 'a, 'f> = dyn FnMut(&mut Gen<'a, 'f>, usize, Value, &[Value]) + 't;

impl<'a, 'f> Gen<'a, 'f> {
    fn iconst(&mut self, x: i64) -> Value {
        self.b.ins().iconst(self.ptr, x)
    }

    fn var(&mut self, ty: types::Type, init: Value) -> Variable {
        let v = self.b.declare_var(ty);
        self.b.def_var(v, init);
        v
    }

    fn body(&mut self, prm: &Params) {
        match self.p.order {
            // `plan` resolves `Auto`; treat a stray one as the safe default.
            LoopOrder::PanelOuter | LoopOrder::Auto => {
                let pv = self.var(self.ptr, prm.p_begin);
                self.counted_loop(pv, prm.p_end, |g| {
                    let panel = g.b.use_var(pv);
                    g.row_sweep(prm, &mut |g, rows, mt, offs| {
                        g.tile(prm, rows, panel, mt, offs)
                    });
                });
            }
            LoopOrder::RowOuter => {
                self.row_sweep(prm, &mut |g, rows, mt, offs| {
                    let pv = g.var(g.ptr, prm.p_begin);
                    g.counted_loop(pv, prm.p_end, |g| {
                        let panel = g.b.use_var(pv);
                        g.tile(prm, rows, panel, mt, offs);
                    });
                });
            }
        }
    }

    /// `while var < end { body; var += 1 }`.
    fn counted_loop(&mut self, var: Variable, end: Value, body: impl FnOnce(&mut Self)) {
        let head = self.b.create_block();
        let blk = self.b.create_block();
        let exit = self.b.create_block();
        self.b.ins().jump(head, &[]);
        self.b.switch_to_block(head);
        let i = self.b.use_var(var);
        let more = self.b.ins().icmp(IntCC::UnsignedLessThan, i, end);
        self.b.ins().brif(more, blk, &[], exit, &[]);
        self.b.switch_to_block(blk);
        body(self);
        let i = self.b.use_var(var);
        let i = self.b.ins().iadd_imm_s(i, 1);
        self.b.def_var(var, i);
        self.b.ins().jump(head, &[]);
        self.b.switch_to_block(exit);
    }

    /// Walks the rows `[m_begin, m_end)` in tiles of `mr` and then one
    /// smaller tile, calling `tile(rows, first_row, a_row_offsets)`.
    fn row_sweep(&mut self, prm: &Params, tile: &mut TileEmitter<'_, 'a, 'f>) {
        let mr = self.p.mr;
        let state = self.row_state_from(prm.m_begin);
        let mt = self.var(self.ptr, prm.m_begin);

        let head = self.b.create_block();
        let full = self.b.create_block();
        let tail = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().jump(head, &[]);

        self.b.switch_to_block(head);
        let m = self.b.use_var(mt);
        let last = self.b.ins().iadd_imm_s(m, mr as i64);
        let fits = self
            .b
            .ins()
            .icmp(IntCC::UnsignedLessThanOrEqual, last, prm.m_end);
        self.b.ins().brif(fits, full, &[], tail, &[]);

        self.b.switch_to_block(full);
        let m = self.b.use_var(mt);
        let (offs, next) = self.row_offsets(&state, mr);
        tile(self, mr, m, &offs);
        self.store_row_state(&state, next);
        let m = self.b.use_var(mt);
        let m = self.b.ins().iadd_imm_s(m, mr as i64);
        self.b.def_var(mt, m);
        self.b.ins().jump(head, &[]);

        // Fewer than `mr` rows remain: dispatch on their count.
        self.b.switch_to_block(tail);
        let m = self.b.use_var(mt);
        let left = self.b.ins().isub(prm.m_end, m);
        for rows in 1..mr {
            let this = self.b.create_block();
            let next = self.b.create_block();
            let is = self.b.ins().icmp_imm_s(IntCC::Equal, left, rows as i64);
            self.b.ins().brif(is, this, &[], next, &[]);
            self.b.switch_to_block(this);
            let (offs, _) = self.row_offsets(&state, rows);
            tile(self, rows, m, &offs);
            self.b.ins().jump(done, &[]);
            self.b.switch_to_block(next);
        }
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
    }

    /// Decomposes row `m` into the row state (two divisions per dimension,
    /// once per sweep; rows then advance by carries).
    fn row_state_from(&mut self, m: Value) -> RowState {
        let dims = self.p.m_dims.clone();
        let mut t = m;
        let mut off = self.iconst(0);
        let mut digits = Vec::new();
        for (l, &(extent, stride)) in dims.iter().enumerate() {
            let digit = if l + 1 < dims.len() {
                let e = self.iconst(extent as i64);
                let q = self.b.ins().udiv(t, e);
                let r = self.b.ins().urem(t, e);
                t = q;
                let d = self.var(self.ptr, r);
                digits.push(d);
                r
            } else {
                t
            };
            let term = self.b.ins().imul_imm_s(digit, stride);
            off = self.b.ins().iadd(off, term);
        }
        let off = self.var(self.ptr, off);
        RowState { off, digits }
    }

    /// A byte offsets of `rows` consecutive rows starting at the state's
    /// row, plus the state of the row after them.
    fn row_offsets(&mut self, st: &RowState, rows: usize) -> (Vec<Value>, (Value, Vec<Value>)) {
        let mut off = self.b.use_var(st.off);
        let mut digits: Vec<Value> = st.digits.iter().map(|&d| self.b.use_var(d)).collect();
        let mut offs = Vec::with_capacity(rows);
        for _ in 0..rows {
            offs.push(off);
            (off, digits) = self.advance_row(off, &digits);
        }
        (offs, (off, digits))
    }

    fn store_row_state(&mut self, st: &RowState, (off, digits): (Value, Vec<Value>)) {
        self.b.def_var(st.off, off);
        for (&var, val) in st.digits.iter().zip(digits) {
            self.b.def_var(var, val);
        }
    }

    /// Moves to the next row: bump the innermost digit and propagate carries
    /// with selects (no branches, no divisions).
    fn advance_row(&mut self, off: Value, digits: &[Value]) -> (Value, Vec<Value>) {
        let dims = self.p.m_dims.clone();
        let mut off = self.b.ins().iadd_imm_s(off, dims[0].1);
        let mut out = Vec::with_capacity(digits.len());
        let mut carry: Option<Value> = None;
        for (l, &d) in digits.iter().enumerate() {
            let d = match carry {
                None => self.b.ins().iadd_imm_s(d, 1),
                Some(c) => {
                    let c = self.b.ins().uextend(self.ptr, c);
                    self.b.ins().iadd(d, c)
                }
            };
            let (extent, stride) = dims[l];
            let wrap = self.b.ins().icmp_imm_s(IntCC::Equal, d, extent as i64);
            let zero = self.iconst(0);
            out.push(self.b.ins().select(wrap, zero, d));
            // On wrap, move from the end of this dimension to the next step
            // of the outer one.
            let jump = dims[l + 1]
                .1
                .wrapping_sub(stride.wrapping_mul(extent as i64));
            let jump = self.iconst(jump);
            let delta = self.b.ins().select(wrap, jump, zero);
            off = self.b.ins().iadd(off, delta);
            carry = Some(wrap);
        }
        (off, out)
    }

    /// One `rows x NR` tile of C at rows `[mt, mt + rows)` and panel `panel`.
    fn tile(&mut self, prm: &Params, rows: usize, panel: Value, mt: Value, offs: &[Value]) {
        let p = self.p;
        let zero = self.b.ins().f32const(0.0);
        let zero = self.b.ins().splat(types::F32X4, zero);
        let accs: Vec<Vec<Variable>> = (0..rows)
            .map(|_| (0..p.nrv).map(|_| self.var(types::F32X4, zero)).collect())
            .collect();
        let panel_off = self.b.ins().imul_imm_s(panel, p.b_panel_bytes);
        let bstart = self.b.ins().iadd(prm.bp, panel_off);
        let bptr = self.var(self.ptr, bstart);
        let rowptrs: Vec<Value> = offs.iter().map(|&o| self.b.ins().iadd(prm.a, o)).collect();
        // Running totals of the flushed blocks (see `blocking`).
        let totals: Vec<Vec<Variable>> = if p.k_blocking().flushes() {
            (0..rows)
                .map(|_| (0..p.nrv).map(|_| self.var(types::F32X4, zero)).collect())
                .collect()
        } else {
            Vec::new()
        };
        let acc = Accumulators {
            accs: &accs,
            totals: &totals,
        };
        let koff = self.iconst(0);
        self.k_level(0, koff, &rowptrs, &acc, bptr);
        let vals: Vec<Vec<Value>> = if totals.is_empty() {
            accs.iter()
                .map(|row| row.iter().map(|&v| self.b.use_var(v)).collect())
                .collect()
        } else {
            // Every block was flushed: `0 + total`, as the AVX2 kernels do.
            accs.iter()
                .zip(&totals)
                .map(|(row, trow)| {
                    row.iter()
                        .zip(trow)
                        .map(|(&a, &t)| {
                            let (a, t) = (self.b.use_var(a), self.b.use_var(t));
                            self.b.ins().fadd(a, t)
                        })
                        .collect()
                })
                .collect()
        };
        self.epilogue(prm, panel, mt, &vals);
    }

    /// Reduction loop level `level` (outer, non-contiguous) or the inner run.
    fn k_level(
        &mut self,
        level: usize,
        koff: Value,
        rowptrs: &[Value],
        acc: &Accumulators<'_>,
        bptr: Variable,
    ) {
        let Some(&(extent, stride)) = self.p.k_outer.get(level) else {
            let bases: Vec<Value> = rowptrs
                .iter()
                .map(|&r| self.b.ins().iadd(r, koff))
                .collect();
            self.k_inner(&bases, acc, bptr);
            return;
        };
        let flush_here = self.p.k_blocking() == KBlocking::AfterLevel(level);
        // Count down so zero strides cannot confuse the exit test.
        let count = self.iconst(extent as i64);
        let count = self.var(self.ptr, count);
        let off = self.var(self.ptr, koff);
        self.top_tested_loop(
            |g| g.b.use_var(count),
            |g| {
                let o = g.b.use_var(off);
                g.k_level(level + 1, o, rowptrs, acc, bptr);
                if flush_here {
                    g.flush(acc);
                }
                let o = g.b.ins().iadd_imm_s(o, stride);
                g.b.def_var(off, o);
                let c = g.b.use_var(count);
                let c = g.b.ins().iadd_imm_s(c, -1);
                g.b.def_var(count, c);
            },
        );
    }

    /// `while cond() { body() }` with the test at the top and an
    /// unconditional back edge.
    ///
    /// The shape matters for load sinking: Cranelift's lowering marks every
    /// value feeding (transitively, through pure ops) a value used twice as
    /// "multiple use" and then refuses to fold loads into their users.  A
    /// bottom-tested `brif` would use each accumulator twice (back edge and
    /// exit), poisoning every `splat(load)` in the FMA chain; here the body's
    /// results feed only the back edge and the exit reads the header's block
    /// parameters, where that propagation stops.
    fn top_tested_loop(
        &mut self,
        cond: impl FnOnce(&mut Self) -> Value,
        body: impl FnOnce(&mut Self),
    ) {
        let head = self.b.create_block();
        let blk = self.b.create_block();
        let exit = self.b.create_block();
        self.b.ins().jump(head, &[]);
        self.b.switch_to_block(head);
        let c = cond(self);
        self.b.ins().brif(c, blk, &[], exit, &[]);
        self.b.switch_to_block(blk);
        body(self);
        self.b.ins().jump(head, &[]);
        self.b.switch_to_block(exit);
    }

    /// The contiguous reduction run: `k_inner` steps, in blocked runs if it
    /// is long.
    fn k_inner(&mut self, bases: &[Value], acc: &Accumulators<'_>, bptr: Variable) {
        let KBlocking::InnerRuns { len, full, rest } = self.p.k_blocking() else {
            self.k_run(bases, acc.accs, bptr, self.p.k_inner);
            return;
        };
        let run_bytes = self.p.a_step_bytes * len as i64;
        let mut bases = bases.to_vec();
        if full > 0 {
            let vars: Vec<Variable> = bases.iter().map(|&b| self.var(self.ptr, b)).collect();
            let count = self.iconst(full as i64);
            let count = self.var(self.ptr, count);
            self.top_tested_loop(
                |g| g.b.use_var(count),
                |g| {
                    let cur: Vec<Value> = vars.iter().map(|&v| g.b.use_var(v)).collect();
                    g.k_run(&cur, acc.accs, bptr, len);
                    g.flush(acc);
                    for (&v, &c) in vars.iter().zip(&cur) {
                        let next = g.b.ins().iadd_imm_s(c, run_bytes);
                        g.b.def_var(v, next);
                    }
                    let c = g.b.use_var(count);
                    let c = g.b.ins().iadd_imm_s(c, -1);
                    g.b.def_var(count, c);
                },
            );
            bases = vars.iter().map(|&v| self.b.use_var(v)).collect();
        }
        if rest > 0 {
            self.k_run(&bases, acc.accs, bptr, rest);
            self.flush(acc);
        }
    }

    /// `total = acc + total; acc = 0` for every accumulator of the tile.
    fn flush(&mut self, acc: &Accumulators<'_>) {
        let zero = self.b.ins().f32const(0.0);
        let zero = self.b.ins().splat(types::F32X4, zero);
        for (row, trow) in acc.accs.iter().zip(acc.totals) {
            for (&a, &t) in row.iter().zip(trow) {
                let (av, tv) = (self.b.use_var(a), self.b.use_var(t));
                let sum = self.b.ins().fadd(av, tv);
                self.b.def_var(t, sum);
                self.b.def_var(a, zero);
            }
        }
    }

    /// `steps` contiguous reduction steps from `bases`, unrolled.
    fn k_run(&mut self, bases: &[Value], accs: &[Vec<Variable>], bptr: Variable, steps: usize) {
        let p = self.p;
        let u = p.unroll.clamp(1, steps);
        let iters = steps / u;
        let rem = steps % u;
        let step_bytes = p.b_step_bytes;
        if iters == 1 {
            let bp = self.b.use_var(bptr);
            self.k_steps(bases, None, 0, u, bp, accs);
            let bp = self.b.ins().iadd_imm_s(bp, u as i64 * step_bytes);
            self.b.def_var(bptr, bp);
        } else if iters > 1 {
            let zero = self.iconst(0);
            let kv = self.var(self.ptr, zero);
            let limit = p.a_step_bytes * (iters * u) as i64;
            self.top_tested_loop(
                |g| {
                    let k = g.b.use_var(kv);
                    g.b.ins().icmp_imm_s(IntCC::SignedLessThan, k, limit)
                },
                |g| {
                    let k = g.b.use_var(kv);
                    let bp = g.b.use_var(bptr);
                    g.k_steps(bases, Some(k), 0, u, bp, accs);
                    let bp = g.b.ins().iadd_imm_s(bp, u as i64 * step_bytes);
                    g.b.def_var(bptr, bp);
                    let k = g.b.ins().iadd_imm_s(k, p.a_step_bytes * u as i64);
                    g.b.def_var(kv, k);
                },
            );
        }
        if rem > 0 {
            // Rebase rather than use large immediates: load offsets are i32.
            let done = p.a_step_bytes * (iters * u) as i64;
            let bases: Vec<Value> = bases
                .iter()
                .map(|&r| self.b.ins().iadd_imm_s(r, done))
                .collect();
            let bp = self.b.use_var(bptr);
            self.k_steps(&bases, None, 0, rem, bp, accs);
            let bp = self.b.ins().iadd_imm_s(bp, rem as i64 * step_bytes);
            self.b.def_var(bptr, bp);
        }
    }

    /// `count` reduction steps starting at element `first` of the run (plus
    /// the byte offset `k`, if in a loop); B is read from `bp`.
    fn k_steps(
        &mut self,
        bases: &[Value],
        k: Option<Value>,
        first: usize,
        count: usize,
        bp: Value,
        accs: &[Vec<Variable>],
    ) {
        let p = self.p;
        let addrs: Vec<Value> = match k {
            Some(k) => bases.iter().map(|&r| self.b.ins().iadd(r, k)).collect(),
            None => bases.to_vec(),
        };
        for s in 0..count {
            let bvec: Vec<Value> = (0..p.nrv)
                .map(|j| {
                    let off = s as i64 * p.b_step_bytes + 16 * j as i64;
                    self.b.ins().load(types::F32X4, mem(), bp, off as i32)
                })
                .collect();
            for (i, &addr) in addrs.iter().enumerate() {
                let off = ((first + s) as i64 * p.a_step_bytes) as i32;
                let mut shared = None;
                for (j, &bv) in bvec.iter().enumerate() {
                    // A single-use `splat(load)` lowers to `vbroadcastss mem`
                    // (load port only) into a register the FMA may clobber;
                    // a shared splat costs a shuffle uop on an FMA port plus
                    // a register copy per FMA.
                    let x = match shared {
                        Some(x) if !p.broadcast_per_fma => x,
                        _ => {
                            let x = self.b.ins().load(types::F32, mem(), addr, off);
                            let x = self.b.ins().splat(types::F32X4, x);
                            shared = Some(x);
                            x
                        }
                    };
                    let acc = self.b.use_var(accs[i][j]);
                    let r = self.b.ins().fma(x, bv, acc);
                    self.b.def_var(accs[i][j], r);
                }
            }
        }
    }

    /// Bias, activation, optional accumulation and the store of one tile.
    fn epilogue(&mut self, prm: &Params, panel: Value, mt: Value, vals: &[Vec<Value>]) {
        let p = self.p;
        let col = self.b.ins().imul_imm_s(panel, (p.nr * 4) as i64);
        let row = self.b.ins().imul_imm_s(mt, p.ldc_bytes);
        let cbase = self.b.ins().iadd(prm.c, row);
        let cbase = self.b.ins().iadd(cbase, col);
        let bias = self.b.ins().iadd(prm.bias, col);
        let crows: Vec<Value> = (0..vals.len())
            .map(|i| self.b.ins().iadd_imm_s(cbase, i as i64 * p.ldc_bytes))
            .collect();
        if p.tail_cols == 0 {
            self.store_cols(bias, &crows, vals, p.nr);
            return;
        }
        let full = self.b.create_block();
        let part = self.b.create_block();
        let done = self.b.create_block();
        let is_tail = self
            .b
            .ins()
            .icmp_imm_s(IntCC::Equal, panel, p.full_panels as i64);
        self.b.ins().brif(is_tail, part, &[], full, &[]);
        self.b.switch_to_block(full);
        self.store_cols(bias, &crows, vals, p.nr);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(part);
        self.store_cols(bias, &crows, vals, p.tail_cols);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
    }

    /// Finishes and stores the first `cols` columns of the tile.
    fn store_cols(&mut self, bias: Value, crows: &[Value], vals: &[Vec<Value>], cols: usize) {
        let p = self.p;
        // `j` picks the column vector in every row of `vals`.
        #[allow(clippy::needless_range_loop)]
        for j in 0..cols.div_ceil(4) {
            let lanes = (cols - 4 * j).min(4);
            let off = (16 * j) as i32;
            let bvec = p.bias.then(|| self.load_partial(bias, off, lanes));
            for (i, &crow) in crows.iter().enumerate() {
                let mut v = vals[i][j];
                if let Some(bv) = bvec {
                    v = self.b.ins().fadd(v, bv);
                }
                v = self.activation(v);
                if p.accumulate {
                    let old = self.load_partial(crow, off, lanes);
                    v = self.b.ins().fadd(v, old);
                }
                if lanes == 4 {
                    self.b.ins().store(mem(), v, crow, off);
                } else {
                    for l in 0..lanes {
                        let x = self.b.ins().extractlane(v, l as u8);
                        self.b.ins().store(mem(), x, crow, off + 4 * l as i32);
                    }
                }
            }
        }
    }

    /// Loads `lanes` floats into a vector without touching memory past them.
    fn load_partial(&mut self, base: Value, off: i32, lanes: usize) -> Value {
        if lanes == 4 {
            return self.b.ins().load(types::F32X4, mem(), base, off);
        }
        let zero = self.b.ins().f32const(0.0);
        let mut v = self.b.ins().splat(types::F32X4, zero);
        for l in 0..lanes {
            let x = self
                .b
                .ins()
                .load(types::F32, mem(), base, off + 4 * l as i32);
            v = self.b.ins().insertlane(v, x, l as u8);
        }
        v
    }

    fn splat_f(&mut self, x: f32) -> Value {
        vmath::splat_f(self.b, x)
    }

    fn activation(&mut self, v: Value) -> Value {
        match self.p.epilogue {
            Epilogue::None => v,
            Epilogue::Relu => {
                let zero = self.splat_f(0.0);
                vmath::max(self.b, v, zero)
            }
            Epilogue::LeakyRelu(alpha) => {
                let zero = self.splat_f(0.0);
                let a = self.splat_f(alpha);
                let scaled = self.b.ins().fmul(v, a);
                vmath::select_lt(self.b, zero, v, v, scaled)
            }
            Epilogue::Sigmoid => vmath::sigmoid(self.b, v),
            Epilogue::Tanh => vmath::tanh(self.b, v),
        }
    }
}
