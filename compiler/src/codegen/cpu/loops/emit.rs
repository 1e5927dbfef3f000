//! The Cranelift function of a loop kernel: its signature and entry (the
//! buffer table read once), the loop nest (scalar and f32x4 lane loops),
//! statements, guards, addresses and data-dependent rows. Expressions are
//! in `expr`.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, Block, FuncRef, Function, InstBuilder, MemFlagsData, Signature, UserFuncName,
    Value,
};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};

use super::analysis::Plan;
use super::unroll;
use super::vectorize::{lane_group, LANES};
use super::{compile_error, CodegenError, KERNEL_SYMBOL};
use crate::codegen::cpu::jit::{native_isa, OptLevel};
use crate::codegen::cpu::vmath;
use crate::kernel::ir::{BufId, Index, LoopKernel, Row, Stmt};

extern "C" fn netc_logf(x: f32) -> f32 {
    x.ln()
}

/// Host functions the generated code calls, by symbol name.
const LIBCALLS: [(&str, extern "C" fn(f32) -> f32); 1] = [("netc_logf", netc_logf)];

#[derive(Clone, Copy)]
pub(super) enum Libcall {
    Log = 0,
}

pub(super) fn new_module(opt: OptLevel) -> Result<JITModule, CodegenError> {
    let mut builder = JITBuilder::with_isa(native_isa(opt)?, default_libcall_names());
    for (name, f) in LIBCALLS {
        builder.symbol(name, f as *const u8);
    }
    Ok(JITModule::new(builder))
}

/// Declares the kernel function in `module` (so it is `u0:0` and the
/// libcalls follow in order of first use) and builds its CLIF and text.
/// Vectorized loops run up to `max_group` f32x4 vectors a step (see
/// `vectorize::lane_group`).
pub(super) fn build(
    k: &LoopKernel,
    plan: &Plan,
    module: &mut JITModule,
    max_group: usize,
) -> Result<(Function, String, FuncId), CodegenError> {
    let call_conv = module.isa().default_call_conv();
    let mut sig = Signature::new(call_conv);
    sig.params.extend([
        AbiParam::new(types::I64),
        AbiParam::new(types::I64),
        AbiParam::new(types::I64),
    ]);
    let id = module
        .declare_function(KERNEL_SYMBOL, Linkage::Export, &sig)
        .map_err(|e| compile_error(e.to_string()))?;
    let mut func = Function::with_name_signature(UserFuncName::user(0, id.as_u32()), sig);
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut func, &mut fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let params = b.block_params(entry).to_vec();
    let (table, begin, end) = (params[0], params[1], params[2]);

    let scalars: Vec<Variable> = (0..k.scalars)
        .map(|_| {
            let v = b.declare_var(types::F32);
            let zero = b.ins().f32const(0.0);
            b.def_var(v, zero);
            v
        })
        .collect();
    // Lane registers of the scalar registers, for vectorized loops: one
    // f32x4 for each vector of a step.
    let vscalars: Vec<Vec<Variable>> = (0..k.scalars)
        .map(|_| {
            (0..max_group)
                .map(|_| {
                    let v = b.declare_var(types::F32X4);
                    let zero = vmath::splat_f(&mut b, 0.0);
                    b.def_var(v, zero);
                    v
                })
                .collect()
        })
        .collect();
    let iota = {
        let mut v = vmath::splat_f(&mut b, 0.0);
        for l in 1..LANES as u8 {
            let x = b.ins().f32const(f32::from(l));
            v = b.ins().insertlane(v, x, l);
        }
        v
    };
    let loop_vars: Vec<Variable> = (0..k.vars).map(|_| b.declare_var(types::I64)).collect();
    let table_flags = MemFlagsData::trusted().with_readonly();
    let bases: Vec<Option<Value>> = plan
        .used
        .iter()
        .enumerate()
        .map(|(i, &used)| used.then(|| b.ins().load(types::I64, table_flags, table, 8 * i as i32)))
        .collect();

    let mut g = Gen {
        b: &mut b,
        module,
        call_conv,
        libcalls: [None; LIBCALLS.len()],
        bases,
        loop_vars,
        depth: vec![0; k.vars],
        level: 0,
        scalars,
        vscalars,
        lane_var: None,
        group: 1,
        max_group,
        iota,
        ranges: vec![(0, 0); k.vars],
    };
    match (plan.outer, k.body.as_slice()) {
        (Some((var, extent)), [Stmt::Loop { body, .. }]) => {
            // `analyze` checked that extents fit in i64.
            g.ranges[var] = (0, extent as i64 - 1);
            if let Some(group) = lane_group(var, extent, body, k.scalars, max_group) {
                g.lane_loop(var, begin, LoopEnd::Dynamic(end), body, group)?;
                if group > 1 {
                    // At most `group - 1` whole vectors are left.
                    let next = g.b.use_var(g.loop_vars[var]);
                    g.lane_loop(var, next, LoopEnd::Dynamic(end), body, 1)?;
                }
                let next = g.b.use_var(g.loop_vars[var]);
                g.counted_loop(var, next, LoopEnd::Dynamic(end), body)?;
            } else {
                g.counted_loop(var, begin, LoopEnd::Dynamic(end), body)?;
            }
        }
        _ => g.stmts(&k.body)?,
    }
    b.ins().return_(&[]);
    b.seal_all_blocks();
    b.finalize(module.isa().frontend_config());
    let text = func.display().to_string();
    Ok((func, text, id))
}

enum LoopEnd {
    Const(i64),
    Dynamic(Value),
}

pub(super) struct Gen<'a, 'f> {
    pub(super) b: &'a mut FunctionBuilder<'f>,
    pub(super) module: &'a mut JITModule,
    pub(super) call_conv: cranelift_codegen::isa::CallConv,
    pub(super) libcalls: [Option<FuncRef>; LIBCALLS.len()],
    /// Base pointer of each used buffer.
    pub(super) bases: Vec<Option<Value>>,
    pub(super) loop_vars: Vec<Variable>,
    /// Nesting depth of the loop binding each variable.
    pub(super) depth: Vec<usize>,
    pub(super) level: usize,
    pub(super) scalars: Vec<Variable>,
    /// F32X4 registers standing for `scalars` inside a vectorized loop,
    /// `max_group` per register (one per vector of a step).
    pub(super) vscalars: Vec<Vec<Variable>>,
    /// The loop variable being vectorized, while generating its body.
    pub(super) lane_var: Option<usize>,
    /// How many f32x4 vectors of consecutive iterations a step of the
    /// vectorized loop runs (`vexpr` gives one value per vector).
    pub(super) group: usize,
    /// The most vectors a step may run (`vectorize::MAX_GROUP` but in tests).
    pub(super) max_group: usize,
    /// `[0, 1, 2, 3]`.
    pub(super) iota: Value,
    /// The values each bound loop variable takes, `[first, last]`: a
    /// single value in an unrolled copy of its loop's body. Guards proven
    /// by these ranges emit no test.
    pub(super) ranges: Vec<(i64, i64)>,
}

/// A guard bound as an i64 immediate. Live indices stay within
/// ±[`INDEX_LIMIT`], so clamping larger bounds changes no outcome.
fn guard_bound(bound: usize) -> i64 {
    i64::try_from(bound).map_or(i64::MAX, |b| b.min(1 << 62))
}

pub(super) fn mem() -> MemFlagsData {
    // In bounds (proven by `analyze`) and naturally aligned f32 accesses.
    MemFlagsData::trusted()
}

/// Vector accesses: in bounds, but only 4-byte aligned.
pub(super) fn vmem() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Marks the registers `s` assigns.
fn sets(s: &Stmt, set: &mut [bool]) {
    match s {
        Stmt::Loop { body, .. } | Stmt::IfInBounds { body, .. } => {
            body.iter().for_each(|s| sets(s, set))
        }
        Stmt::Set { scalar, .. } => set[*scalar] = true,
        Stmt::Store { .. } | Stmt::ScatterAdd { .. } => {}
    }
}

/// The coefficient of `var` in `idx`.
pub(super) fn coefficient(idx: &Index, var: usize) -> i64 {
    idx.terms
        .iter()
        .filter(|(v, _)| *v == var)
        .fold(0i64, |acc, (_, c)| acc.wrapping_add(*c))
}

impl Gen<'_, '_> {
    fn stmts(&mut self, body: &[Stmt]) -> Result<(), CodegenError> {
        body.iter().try_for_each(|s| self.stmt(s))
    }

    fn stmt(&mut self, s: &Stmt) -> Result<(), CodegenError> {
        match s {
            Stmt::Loop { var, extent, body } => {
                // A zero-trip loop is dead code (and unchecked by `analyze`).
                if *extent == 0 {
                    return Ok(());
                }
                let n = *extent as i64;
                self.ranges[*var] = (0, n - 1);
                let group = match self.lane_var {
                    None => lane_group(*var, *extent, body, self.scalars.len(), self.max_group),
                    Some(_) => None,
                };
                if let Some(group) = group {
                    let step = (group * LANES) as i64;
                    let wide = n - n % step;
                    let whole = n - n % LANES as i64;
                    if unroll::unrolls_lanes((whole as usize) / LANES, body) {
                        self.unrolled(*var, 0, wide, body, Some(group))?;
                    } else {
                        let zero = self.b.ins().iconst(types::I64, 0);
                        self.lane_loop(*var, zero, LoopEnd::Const(wide), body, group)?;
                    }
                    if wide < whole {
                        // Fewer than `group` vectors left: one at a time.
                        self.unrolled(*var, wide, whole, body, Some(1))?;
                    }
                    if whole < n {
                        self.tail(*var, whole, n, body)?;
                    }
                } else if unroll::unrolls(*extent, body) {
                    self.unrolled(*var, 0, n, body, None)?;
                } else {
                    let zero = self.b.ins().iconst(types::I64, 0);
                    self.counted_loop(*var, zero, LoopEnd::Const(n), body)?;
                }
            }
            Stmt::Store { buf, index, value } => match self.lane_var {
                Some(_) => {
                    let xs = self.vexpr(value)?;
                    let (addr, off) = self.address(*buf, index);
                    for (j, x) in xs.into_iter().enumerate() {
                        let (addr, off) = self.vector_at(addr, off, j);
                        self.b.ins().store(vmem(), x, addr, off);
                    }
                }
                None => {
                    let x = self.expr(value)?;
                    let (addr, off) = self.address(*buf, index);
                    self.b.ins().store(mem(), x, addr, off);
                }
            },
            Stmt::ScatterAdd {
                buf,
                row,
                index,
                value,
            } => {
                if self.lane_var.is_some() {
                    return Err(compile_error(
                        "a data-dependent row in a vectorized loop".into(),
                    ));
                }
                let (at, ok) = self.row_offset(row)?;
                let then = self.b.create_block();
                let merge = self.b.create_block();
                self.b.ins().brif(ok, then, &[], merge, &[]);
                self.b.switch_to_block(then);
                let x = self.expr(value)?;
                let (addr, off) = self.address(*buf, index);
                let addr = self.b.ins().iadd(addr, at);
                let old = self.b.ins().load(types::F32, mem(), addr, off);
                let new = self.b.ins().fadd(old, x);
                self.b.ins().store(mem(), new, addr, off);
                self.b.ins().jump(merge, &[]);
                self.b.switch_to_block(merge);
            }
            Stmt::Set { scalar, value } => match self.lane_var {
                Some(_) => {
                    let xs = self.vexpr(value)?;
                    for (j, x) in xs.into_iter().enumerate() {
                        self.b.def_var(self.vscalars[*scalar][j], x);
                    }
                }
                None => {
                    let x = self.expr(value)?;
                    self.b.def_var(self.scalars[*scalar], x);
                }
            },
            Stmt::IfInBounds { conds, body } => {
                if conds.iter().any(|(_, bound)| *bound == 0) {
                    return Ok(());
                }
                let mut all: Option<Value> = None;
                for (idx, bound) in conds {
                    if self.always_within(idx, *bound) {
                        continue;
                    }
                    let x = self.int_index(idx);
                    // One unsigned compare checks both `0 <= x` and `x < bound`.
                    let ok =
                        self.b
                            .ins()
                            .icmp_imm_u(IntCC::UnsignedLessThan, x, guard_bound(*bound));
                    all = Some(match all {
                        Some(a) => self.b.ins().band(a, ok),
                        None => ok,
                    });
                }
                let Some(all) = all else {
                    return self.stmts(body);
                };
                let then = self.b.create_block();
                let merge = self.b.create_block();
                self.b.ins().brif(all, then, &[], merge, &[]);
                self.b.switch_to_block(then);
                self.stmts(body)?;
                self.b.ins().jump(merge, &[]);
                self.b.switch_to_block(merge);
            }
        }
        Ok(())
    }

    /// `body` once for each `var` in `start..end`, with `var` a constant
    /// in each copy (so its index terms fold into address offsets); with
    /// `lanes: Some(g)`, once per step of `g` vectors of iterations (`end -
    /// start` a multiple of `4g`), as [`Self::lane_loop`] would run them.
    fn unrolled(
        &mut self,
        var: usize,
        start: i64,
        end: i64,
        body: &[Stmt],
        lanes: Option<usize>,
    ) -> Result<(), CodegenError> {
        let step = lanes.map_or(1, |g| (g * LANES) as i64);
        let range = self.ranges[var];
        self.level += 1;
        self.depth[var] = self.level;
        let (outer_lanes, outer_group) = (self.lane_var, self.group);
        if let Some(g) = lanes {
            self.lane_var = Some(var);
            self.group = g;
        }
        for i in (start..end).step_by(step as usize) {
            let v = self.b.ins().iconst(types::I64, i);
            self.b.def_var(self.loop_vars[var], v);
            self.ranges[var] = (i, i + step - 1);
            self.stmts(body)?;
        }
        self.lane_var = outer_lanes;
        self.group = outer_group;
        self.level -= 1;
        self.ranges[var] = range;
        if let Some(g) = lanes {
            if start < end {
                self.last_lanes(body, g);
            }
        }
        Ok(())
    }

    /// After a vectorized loop of `group` vectors a step, the registers its
    /// body sets hold their last lane, as after the scalar loop.
    fn last_lanes(&mut self, body: &[Stmt], group: usize) {
        let mut set = vec![false; self.scalars.len()];
        body.iter().for_each(|s| sets(s, &mut set));
        for (r, _) in set.iter().enumerate().filter(|(_, s)| **s) {
            let x = self.b.use_var(self.vscalars[r][group - 1]);
            let last = self.b.ins().extractlane(x, (LANES - 1) as u8);
            self.b.def_var(self.scalars[r], last);
        }
    }

    /// The iterations `start..end` (fewer than [`LANES`]) left after a
    /// vectorized loop with a constant extent, one by one.
    fn tail(
        &mut self,
        var: usize,
        start: i64,
        end: i64,
        body: &[Stmt],
    ) -> Result<(), CodegenError> {
        if unroll::unrolls((end - start) as usize, body) {
            self.unrolled(var, start, end, body, None)
        } else {
            let rest = self.b.ins().iconst(types::I64, start);
            self.counted_loop(var, rest, LoopEnd::Const(end), body)
        }
    }

    /// Whether `0 <= idx < bound` holds for every value the loop variables
    /// take here, so a guard need not test it.
    fn always_within(&self, idx: &Index, bound: usize) -> bool {
        let (mut lo, mut hi) = (i128::from(idx.offset), i128::from(idx.offset));
        for &(v, c) in &idx.terms {
            let (first, last) = self.ranges[v];
            let (a, b) = (
                i128::from(c) * i128::from(first),
                i128::from(c) * i128::from(last),
            );
            lo += a.min(b);
            hi += a.max(b);
        }
        lo >= 0 && hi < bound as i128
    }

    /// `for var in start..end { body }` as a rotated loop: a test before the
    /// first iteration (skipped when the trip count is a positive constant)
    /// and one at the bottom.
    fn counted_loop(
        &mut self,
        var: usize,
        start: Value,
        end: LoopEnd,
        body: &[Stmt],
    ) -> Result<(), CodegenError> {
        self.stepped_loop(var, start, end, body, None)
    }

    /// Runs `body` for iterations `start, start + 4g, ...` as long as all
    /// `4g` lanes of the step are below `end` (a multiple of `4g` past
    /// `start` when constant), each statement for `4g` consecutive
    /// iterations at once (`g = group` f32x4 vectors); leaves `var` at the
    /// first iteration not run. Registers set in the body end up holding
    /// their last lane, as after the scalar loop.
    fn lane_loop(
        &mut self,
        var: usize,
        start: Value,
        end: LoopEnd,
        body: &[Stmt],
        group: usize,
    ) -> Result<(), CodegenError> {
        self.stepped_loop(var, start, end, body, Some(group))
    }

    /// The rotated loop of [`Self::counted_loop`], stepping by one
    /// iteration or (with `lanes: Some(g)`) by `g` vectors of them while
    /// they fit before `end`.
    fn stepped_loop(
        &mut self,
        var: usize,
        start: Value,
        end: LoopEnd,
        body: &[Stmt],
        lanes: Option<usize>,
    ) -> Result<(), CodegenError> {
        // Iterate while `i + step - 1 < end`.
        let reach = lanes.map_or(0, |g| (g * LANES) as i64 - 1);
        let v = self.loop_vars[var];
        self.b.def_var(v, start);
        let body_block: Block = self.b.create_block();
        let exit = self.b.create_block();
        match end {
            LoopEnd::Const(_) => {
                self.b.ins().jump(body_block, &[]);
            }
            LoopEnd::Dynamic(e) => {
                let last = self.plus(start, reach);
                let go = self.b.ins().icmp(IntCC::SignedLessThan, last, e);
                self.b.ins().brif(go, body_block, &[], exit, &[]);
            }
        }
        self.b.switch_to_block(body_block);
        self.level += 1;
        self.depth[var] = self.level;
        let (outer_lanes, outer_group) = (self.lane_var, self.group);
        if let Some(g) = lanes {
            self.lane_var = Some(var);
            self.group = g;
        }
        self.stmts(body)?;
        self.lane_var = outer_lanes;
        self.group = outer_group;
        self.level -= 1;
        if let Some(g) = lanes {
            self.last_lanes(body, g);
        }
        let i = self.b.use_var(v);
        let next = self.b.ins().iadd_imm_s(i, reach + 1);
        self.b.def_var(v, next);
        let more = match end {
            LoopEnd::Const(e) => self
                .b
                .ins()
                .icmp_imm_s(IntCC::SignedLessThan, next, e - reach),
            LoopEnd::Dynamic(e) => {
                let last = self.plus(next, reach);
                self.b.ins().icmp(IntCC::SignedLessThan, last, e)
            }
        };
        self.b.ins().brif(more, body_block, &[], exit, &[]);
        self.b.switch_to_block(exit);
        Ok(())
    }

    /// The address of vector `j` of a step whose first vector is at
    /// `addr + off`: [`LANES`] floats further per vector.
    pub(super) fn vector_at(&mut self, addr: Value, off: i32, j: usize) -> (Value, i32) {
        let bytes = (4 * LANES * j) as i32;
        match off.checked_add(bytes) {
            Some(off) => (addr, off),
            None => (self.b.ins().iadd_imm_s(addr, i64::from(bytes)), off),
        }
    }

    /// `x + c`, without an instruction for `c = 0`.
    pub(super) fn plus(&mut self, x: Value, c: i64) -> Value {
        if c == 0 {
            x
        } else {
            self.b.ins().iadd_imm_s(x, c)
        }
    }

    /// Terms of `idx` with duplicate variables merged, outermost loop first
    /// (so that loop-invariant partial sums form a prefix).
    fn terms(&self, idx: &Index) -> Vec<(usize, i64)> {
        let mut terms: Vec<(usize, i64)> = Vec::with_capacity(idx.terms.len());
        for &(v, c) in &idx.terms {
            match terms.iter_mut().find(|(w, _)| *w == v) {
                Some((_, d)) => *d = d.wrapping_add(c),
                None => terms.push((v, c)),
            }
        }
        terms.retain(|(_, c)| *c != 0);
        terms.sort_by_key(|(v, _)| (self.depth[*v], *v));
        terms
    }

    /// `Σ scale·c·v`, or `None` without terms.
    fn scaled_sum(&mut self, terms: &[(usize, i64)], scale: i64) -> Option<Value> {
        let mut acc: Option<Value> = None;
        for &(v, c) in terms {
            let x = self.b.use_var(self.loop_vars[v]);
            let c = c.wrapping_mul(scale);
            let t = if c == 1 {
                x
            } else {
                self.b.ins().imul_imm_s(x, c)
            };
            acc = Some(match acc {
                Some(a) => self.b.ins().iadd(a, t),
                None => t,
            });
        }
        acc
    }

    /// The index as an i64 value.
    fn int_index(&mut self, idx: &Index) -> Value {
        let terms = self.terms(idx);
        match self.scaled_sum(&terms, 1) {
            Some(s) if idx.offset == 0 => s,
            Some(s) => self.b.ins().iadd_imm_s(s, idx.offset),
            None => self.b.ins().iconst(types::I64, idx.offset),
        }
    }

    /// Address of `buf[idx]` as a base value and a constant byte offset.
    pub(super) fn address(&mut self, buf: BufId, idx: &Index) -> (Value, i32) {
        let base = self.bases[buf].expect("analyze marks every accessed buffer as used");
        let terms = self.terms(idx);
        let addr = match self.scaled_sum(&terms, 4) {
            Some(off) => self.b.ins().iadd(base, off),
            None => base,
        };
        let off = idx.offset.wrapping_mul(4);
        match i32::try_from(off) {
            Ok(off) => (addr, off),
            Err(_) => (self.b.ins().iadd_imm_s(addr, off), 0),
        }
    }

    pub(super) fn libcall(&mut self, which: Libcall, x: Value) -> Result<Value, CodegenError> {
        let f = match self.libcalls[which as usize] {
            Some(f) => f,
            None => {
                let mut sig = Signature::new(self.call_conv);
                sig.params.push(AbiParam::new(types::F32));
                sig.returns.push(AbiParam::new(types::F32));
                let id: FuncId = self
                    .module
                    .declare_function(LIBCALLS[which as usize].0, Linkage::Import, &sig)
                    .map_err(|e| compile_error(e.to_string()))?;
                let f = self.module.declare_func_in_func(id, self.b.func);
                self.libcalls[which as usize] = Some(f);
                f
            }
        };
        let call = self.b.ins().call(f, &[x]);
        Ok(self.b.inst_results(call)[0])
    }

    /// The byte offset `row·stride·4` of a data-dependent row (row 0 when
    /// the id is out of range, so the address stays proven) and whether
    /// the id is in range: `0 <= v < rows` as floats (false for NaN) and
    /// the saturated integer below `rows`, as [`Row::select`] says.
    pub(super) fn row_offset(&mut self, row: &Row) -> Result<(Value, Value), CodegenError> {
        let v = self.expr(&row.value)?;
        let zero = self.b.ins().f32const(0.0);
        let top = self.b.ins().f32const(row.rows as f32);
        let ge = self.b.ins().fcmp(FloatCC::GreaterThanOrEqual, v, zero);
        let lt = self.b.ins().fcmp(FloatCC::LessThan, v, top);
        let r = self.b.ins().fcvt_to_sint_sat(types::I64, v);
        let rows = i64::try_from(row.rows).unwrap_or(i64::MAX);
        let below = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, r, rows);
        let ok = self.b.ins().band(ge, lt);
        let ok = self.b.ins().band(ok, below);
        let none = self.b.ins().iconst(types::I64, 0);
        let r = self.b.ins().select(ok, r, none);
        // `analyze` bounded (rows − 1)·stride, so this cannot overflow.
        let stride = i64::try_from(row.stride).unwrap_or(i64::MAX);
        let at = self.b.ins().imul_imm_s(r, stride.wrapping_mul(4));
        Ok((at, ok))
    }
}
