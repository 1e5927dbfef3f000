//! Cranelift code generation for loop kernels.
//!
//! A [`LoopKernel`] becomes one native function
//!
//! ```text
//! extern "C" fn(bufs: *const *mut f32, begin: i64, end: i64)
//! ```
//!
//! that reads the base pointer of every buffer it uses from `bufs` once at
//! entry. When the kernel body is a single loop, that outermost loop runs
//! over `begin..end` only, so the runtime can hand disjoint ranges to
//! different threads; otherwise `begin` and `end` are ignored.
//!
//! # Memory safety
//!
//! Generated loads and stores are unchecked, so [`CompiledLoop::compile`]
//! first *proves* that every access is in bounds for every iteration: each
//! affine index is bounded by interval arithmetic over the loop extents,
//! refined inside `IfInBounds` guards by rewriting the index as a
//! combination of the guarded indices (whose ranges the guard establishes)
//! plus a remainder. A data-dependent row (`Expr::Gather`,
//! `Stmt::ScatterAdd`) is checked in the generated code (an id outside
//! `0..rows` reads 0 or writes nothing, and the address uses row 0), and
//! the proof covers the affine part for every row in range. A kernel whose
//! bound cannot be proven is rejected with [`CodegenError::OutOfBounds`].
//! The same machinery decides whether the outermost loop may be split
//! across threads: every buffer written inside it must be accessed in
//! per-iteration bands that cannot overlap (or, for a buffer written
//! through data-dependent rows, in per-iteration residues modulo the row
//! stride that cannot coincide), and no scalar register may carry a value
//! from one iteration to the next.
//!
//! # Vectorization
//!
//! A loop that runs over consecutive elements (see `super::vectorize` for
//! the exact conditions: unit-stride or loop-invariant accesses, no
//! register carried between iterations, no overlap between neighbouring
//! iterations' writes) runs four iterations per step in f32x4 lanes, with
//! a scalar loop for the last `extent % 4` iterations. This covers
//! elementwise kernels, the gate kernels of recurrent cells, softmax rows
//! and pooling windows (the window loops nest inside the channel loop).
//!
//! # Scalar semantics
//!
//! `max`/`min` follow `f32::max`/`f32::min` (a NaN operand yields the other
//! operand), `relu(x)` is `0 < x ? x : 0` (one `maxss`), `log` calls the
//! same libm routine as `f32::ln`, and `exp`, `tanh` and `sigmoid(x) =
//! 1/(1+e^-x)` are inline polynomials (see `super::vmath`; within a few
//! ulp of libm, `sigmoid` never NaN for non-NaN `x`). Every other
//! operation is evaluated like the interpreter does (same order, no fused
//! multiply-add), so results equal `kernel::interp` up to those few ulp,
//! NaN payloads and the sign of zero when `max`/`min` compare `+0` with
//! `-0`. Scalar and vector paths compute the same function, so the result
//! does not depend on how the iterations were split between threads.
//! Scalar registers start at `0.0`.

use std::fmt::{self, Write as _};

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, Block, FuncRef, Function, InstBuilder, MemFlagsData, Signature, UserFuncName,
    Value,
};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};

use super::jit::{native_isa, OptLevel};
use super::vectorize::{no_carried_scalars, vectorizable, LANES};
use super::{vmath, CodegenError};
use crate::kernel::ir::{BinOp, BufId, Cmp, Expr, Index, LoopKernel, Row, Stmt, UnOp};

/// The level [`CompiledLoop::compile`] uses.
pub const DEFAULT_OPT_LEVEL: OptLevel = OptLevel::Speed;

/// Name of the generated function, in its module and in errors.
const KERNEL_SYMBOL: &str = "netc_loop_kernel";

fn compile_error(message: String) -> CodegenError {
    CodegenError::Compile {
        function: KERNEL_SYMBOL.to_string(),
        message,
    }
}

type KernelFn = unsafe extern "C" fn(*const *mut f32, i64, i64);

/// A loop kernel compiled to native code.
///
/// Owns the JIT module that holds the machine code; the code is freed on
/// drop.
pub struct CompiledLoop {
    module: Option<JITModule>,
    func: KernelFn,
    /// Extent of the outermost loop when the body is a single loop.
    outer: Option<usize>,
    /// Whether the outermost loop's iterations provably touch disjoint
    /// memory and carry no scalar state.
    parallel: bool,
    /// How many buffer pointers a call passes.
    buffer_count: usize,
    /// `(buffer, length)` of each buffer the kernel touches. Only these:
    /// a program of n kernels over n buffers would otherwise hold n²
    /// lengths (gigabytes for a 30,000-layer model).
    touched_lens: Vec<(usize, usize)>,
    clif: String,
    /// Machine-code disassembly, when requested at compile time.
    disasm: String,
}

// SAFETY: after `finalize_definitions` the module is only touched by `Drop`
// (which has exclusive access); the machine code is immutable and the
// function has no shared state, so any thread may call it.
unsafe impl Send for CompiledLoop {}
// SAFETY: see above; `&CompiledLoop` exposes the code pointer and plain data.
unsafe impl Sync for CompiledLoop {}

impl fmt::Debug for CompiledLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledLoop")
            .field("outer", &self.outer)
            .field("parallel", &self.parallel)
            .field("buffer_count", &self.buffer_count)
            .field("touched_lens", &self.touched_lens)
            .finish_non_exhaustive()
    }
}

impl Drop for CompiledLoop {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: the only pointer into the module's code is `self.func`,
            // which dies with `self`.
            unsafe { module.free_memory() };
        }
    }
}

impl CompiledLoop {
    /// Compiles `k`. `buffer_lens[i]` is the length (in f32) of buffer `i`
    /// of the program.
    ///
    /// Fails with [`CodegenError::OutOfBounds`] unless every load and store
    /// is proven in bounds for every iteration, so running the result with
    /// buffers of these lengths never touches memory outside them.
    pub fn compile(k: &LoopKernel, buffer_lens: &[usize]) -> Result<Self, CodegenError> {
        Self::compile_with_opt_level(k, buffer_lens, DEFAULT_OPT_LEVEL)
    }

    /// [`compile`](Self::compile) with an explicit Cranelift optimization
    /// level (for measurements).
    pub fn compile_with_opt_level(
        k: &LoopKernel,
        buffer_lens: &[usize],
        opt: OptLevel,
    ) -> Result<Self, CodegenError> {
        Self::compile_inner(k, buffer_lens, opt, false)
    }

    fn compile_inner(
        k: &LoopKernel,
        buffer_lens: &[usize],
        opt: OptLevel,
        want_disasm: bool,
    ) -> Result<Self, CodegenError> {
        let plan = analyze(k, buffer_lens)?;
        let mut module = new_module(opt)?;
        let (func, clif, id) = match build(k, &plan, &mut module) {
            Ok(built) => built,
            Err(e) => {
                // SAFETY: nothing was compiled into the module.
                unsafe { module.free_memory() };
                return Err(e);
            }
        };
        let mut ctx = module.make_context();
        ctx.func = func;
        ctx.set_disasm(want_disasm);
        let result = module
            .define_function(id, &mut ctx)
            .map_err(|e| match &e {
                cranelift_module::ModuleError::Compilation(
                    cranelift_codegen::CodegenError::Verifier(errors),
                ) => compile_error(format!("verifier errors:\n{errors}\n{clif}")),
                other => compile_error(other.to_string()),
            })
            .and_then(|()| {
                module
                    .finalize_definitions()
                    .map_err(|e| compile_error(e.to_string()))
            });
        if let Err(e) = result {
            // SAFETY: no pointer into the module has been handed out.
            unsafe { module.free_memory() };
            return Err(e);
        }
        let disasm = ctx
            .compiled_code()
            .and_then(|c| c.vcode.clone())
            .unwrap_or_default();
        let ptr = module.get_finalized_function(id);
        // SAFETY: the function was built with exactly this signature and the
        // default (C) calling convention of the host.
        let func = unsafe { std::mem::transmute::<*const u8, KernelFn>(ptr) };
        Ok(CompiledLoop {
            module: Some(module),
            func,
            outer: plan.outer.map(|(_, extent)| extent),
            parallel: plan.parallel,
            buffer_count: buffer_lens.len(),
            touched_lens: plan
                .used
                .iter()
                .enumerate()
                .filter(|(_, &used)| used)
                .map(|(i, _)| (i, buffer_lens[i]))
                .collect(),
            clif,
            disasm,
        })
    }

    /// Extent of the outermost loop when the body is a single `Stmt::Loop`
    /// whose iterations may run concurrently, else `None`.
    ///
    /// Besides the shape, the compiler checks that the iterations are
    /// independent: each buffer written in the loop is accessed in bands
    /// that cannot overlap between iterations (or, through data-dependent
    /// rows, in residues modulo the row stride that cannot coincide), and
    /// no scalar register is read before being set in an iteration.
    pub fn parallel_extent(&self) -> Option<usize> {
        self.outer.filter(|_| self.parallel)
    }

    /// `(buffer, length)` of every buffer the kernel reads or writes, as
    /// compiled for; the others' pointers are passed but never used.
    pub fn touched_lens(&self) -> &[(usize, usize)] {
        &self.touched_lens
    }

    /// Runs iterations `[begin, end)` (clamped to the extent) of the
    /// outermost loop, or the whole body if the body is not a single loop.
    ///
    /// # Safety
    ///
    /// `bufs` must point to one pointer per buffer the kernel was compiled
    /// for, and each pointer in [`touched_lens`](Self::touched_lens) must be
    /// valid for reads and writes of its length in f32 elements. Concurrent calls must use disjoint
    /// ranges, and only on kernels with a
    /// [`parallel_extent`](Self::parallel_extent); no other code may access
    /// the buffers meanwhile.
    pub unsafe fn run_range(&self, bufs: *const *mut f32, begin: usize, end: usize) {
        match self.outer {
            Some(extent) => {
                let end = end.min(extent);
                if begin < end {
                    // Extents are checked to fit in i64 at compile time.
                    (self.func)(bufs, begin as i64, end as i64);
                }
            }
            None => (self.func)(bufs, 0, 0),
        }
    }

    /// Runs the whole kernel over `bufs` (one slice per buffer, each at least
    /// as long as compiled for), splitting the outermost loop across
    /// `threads` threads when
    /// [`parallel_extent`](Self::parallel_extent) is at least `2 * threads`.
    pub fn run(&self, bufs: &mut [&mut [f32]], threads: usize) -> Result<(), CodegenError> {
        if bufs.len() != self.buffer_count {
            return Err(CodegenError::BufferCount {
                expected: self.buffer_count,
                got: bufs.len(),
            });
        }
        for &(buf, expected) in &self.touched_lens {
            let b = &bufs[buf];
            if b.len() < expected {
                return Err(CodegenError::LoopBufferTooSmall {
                    buf,
                    expected,
                    got: b.len(),
                });
            }
        }
        let ptrs: Vec<*mut f32> = bufs.iter_mut().map(|b| b.as_mut_ptr()).collect();
        let table = BufTable(ptrs.as_ptr());
        let threads = threads.max(1);
        match self.parallel_extent() {
            Some(n) if threads >= 2 && n >= 2 * threads => {
                let bounds = |t: usize| t * n / threads;
                super::parallel::parallel_for(threads, &|t| {
                    // SAFETY: lengths checked above; the ranges are disjoint
                    // and the iterations independent (parallel_extent is Some).
                    unsafe { self.run_range(table.get(), bounds(t), bounds(t + 1)) }
                })
                .map_err(CodegenError::Thread)
            }
            // SAFETY: lengths checked above; single caller.
            _ => unsafe {
                self.run_range(table.get(), 0, usize::MAX);
                Ok(())
            },
        }
    }

    /// Cranelift IR text of the generated function, before optimization.
    pub fn clif(&self) -> &str {
        &self.clif
    }
}

/// Disassembly of the machine code generated for `k` (Cranelift's VCode
/// listing), for inspecting code quality.
pub fn disassembly(
    k: &LoopKernel,
    buffer_lens: &[usize],
    opt: OptLevel,
) -> Result<String, CodegenError> {
    CompiledLoop::compile_inner(k, buffer_lens, opt, true)
        .map(|mut c| std::mem::take(&mut c.disasm))
}

/// The buffer-pointer table, shareable with worker threads.
#[derive(Clone, Copy)]
struct BufTable(*const *mut f32);

// SAFETY: the table and the buffers outlive the parallel call, and the
// kernel's iterations touch disjoint memory (checked by `analyze`).
unsafe impl Send for BufTable {}
// SAFETY: as above; workers only read the table pointer.
unsafe impl Sync for BufTable {}

impl BufTable {
    fn get(self) -> *const *mut f32 {
        self.0
    }
}

/// Cranelift IR text of the function generated for `k`, before
/// optimization. Performs the same checks as [`CompiledLoop::compile`].
pub fn compile_clif_text(k: &LoopKernel, buffer_lens: &[usize]) -> Result<String, CodegenError> {
    let plan = analyze(k, buffer_lens)?;
    let mut module = new_module(DEFAULT_OPT_LEVEL)?;
    let text = build(k, &plan, &mut module).map(|(_, clif, _)| clif);
    // SAFETY: nothing was compiled into the module.
    unsafe { module.free_memory() };
    text
}

/// Formats an index as `offset + c·v` terms, e.g. `13*v0 + v1 - 2`.
fn show_index(idx: &Index) -> String {
    let mut s = String::new();
    for &(v, c) in &idx.terms {
        let sep = if s.is_empty() {
            if c < 0 {
                "-"
            } else {
                ""
            }
        } else if c < 0 {
            " - "
        } else {
            " + "
        };
        s.push_str(sep);
        match c.unsigned_abs() {
            1 => write!(s, "v{v}"),
            a => write!(s, "{a}*v{v}"),
        }
        .expect("writing to a String cannot fail");
    }
    if s.is_empty() {
        return idx.offset.to_string();
    }
    if idx.offset != 0 {
        let sign = if idx.offset < 0 { '-' } else { '+' };
        write!(s, " {sign} {}", idx.offset.unsigned_abs())
            .expect("writing to a String cannot fail");
    }
    s
}

// ---------------------------------------------------------------------------
// Analysis: bounds proofs and parallel safety
// ---------------------------------------------------------------------------

/// Largest magnitude an index may reach: leaves room for the ×4 byte
/// scaling and pointer addition in 64-bit arithmetic.
const INDEX_LIMIT: i128 = 1 << 60;

/// An affine form over loop variables with dense coefficients.
#[derive(Clone, Debug)]
struct Lin {
    coefs: Vec<i128>,
    offset: i128,
}

/// What the analysis found out about a kernel.
struct Plan {
    /// `(variable, extent)` of the outermost loop when the body is a single
    /// loop.
    outer: Option<(usize, usize)>,
    /// Whether that loop's iterations may run concurrently.
    parallel: bool,
    /// Which buffers the kernel touches.
    used: Vec<bool>,
}

/// One access inside the outermost loop, for the parallel-safety check.
struct Access {
    buf: BufId,
    store: bool,
    /// Coefficient of the outermost loop variable.
    coef: i128,
    /// Range of the rest of the index (data-dependent rows included).
    lo: i128,
    hi: i128,
    /// The row stride of a data-dependent row access, else 0.
    row_stride: i128,
    /// The affine index without the outermost variable's term.
    rest: Lin,
    /// The largest value of each loop variable where the access is.
    var_max: Vec<Option<i128>>,
}

struct Analyzer<'a> {
    lens: &'a [usize],
    vars: usize,
    scalars: usize,
    /// Largest value of each bound loop variable (`None`: not bound).
    var_max: Vec<Option<i128>>,
    /// Guarded indices in scope and their largest allowed value.
    guards: Vec<(Lin, i128)>,
    /// The outermost loop's variable when it is a candidate for splitting.
    outer: Option<usize>,
    accesses: Vec<Access>,
    used: Vec<bool>,
}

fn analyze(k: &LoopKernel, lens: &[usize]) -> Result<Plan, CodegenError> {
    let outer = match k.body.as_slice() {
        [Stmt::Loop { var, extent, .. }] => Some((*var, *extent)),
        _ => None,
    };
    let mut a = Analyzer {
        lens,
        vars: k.vars,
        scalars: k.scalars,
        var_max: vec![None; k.vars],
        guards: vec![],
        outer: outer.map(|(v, _)| v),
        accesses: vec![],
        used: vec![false; lens.len()],
    };
    a.stmts(&k.body, true)?;
    let parallel = outer.is_some_and(|(_, extent)| a.bands_disjoint(extent)) && {
        let mut assigned = vec![false; k.scalars];
        no_carried_scalars(&k.body[0], &mut assigned)
    };
    Ok(Plan {
        outer,
        parallel,
        used: a.used,
    })
}

impl Analyzer<'_> {
    fn stmts(&mut self, body: &[Stmt], live: bool) -> Result<(), CodegenError> {
        body.iter().try_for_each(|s| self.stmt(s, live))
    }

    fn stmt(&mut self, s: &Stmt, live: bool) -> Result<(), CodegenError> {
        match s {
            Stmt::Loop { var, extent, body } => {
                let var = *var;
                if var >= self.vars {
                    return Err(CodegenError::UnknownVar {
                        var,
                        declared: self.vars,
                    });
                }
                if self.var_max[var].is_some() {
                    return Err(CodegenError::ReboundVar { var });
                }
                let extent_i = i128::try_from(*extent).unwrap_or(i128::MAX);
                if extent_i > INDEX_LIMIT {
                    return Err(CodegenError::IndexOverflow {
                        index: format!("extent {extent} of v{var}"),
                    });
                }
                self.var_max[var] = Some((extent_i - 1).max(0));
                let r = self.stmts(body, live && *extent > 0);
                self.var_max[var] = None;
                r
            }
            Stmt::Store { buf, index, value } => {
                self.expr(value, live)?;
                self.access(*buf, index, true, live)
            }
            Stmt::ScatterAdd {
                buf,
                row,
                index,
                value,
            } => {
                self.expr(&row.value, live)?;
                self.expr(value, live)?;
                self.row_access(*buf, row, index, true, live)
            }
            Stmt::Set { scalar, value } => {
                self.scalar(*scalar)?;
                self.expr(value, live)
            }
            Stmt::IfInBounds { conds, body } => {
                let mut guards = Vec::with_capacity(conds.len());
                for (idx, bound) in conds {
                    let lin = self.lin(idx)?;
                    if live {
                        self.check_magnitude(&lin, idx)?;
                    }
                    let max = i128::try_from(*bound).unwrap_or(i128::MAX) - 1;
                    guards.push((lin, max));
                }
                let body_live = live && conds.iter().all(|(_, b)| *b > 0);
                let depth = self.guards.len();
                self.guards.extend(guards);
                let r = self.stmts(body, body_live);
                self.guards.truncate(depth);
                r
            }
        }
    }

    fn expr(&mut self, e: &Expr, live: bool) -> Result<(), CodegenError> {
        match e {
            Expr::Const(_) => Ok(()),
            Expr::Load(buf, idx) => self.access(*buf, idx, false, live),
            Expr::Gather { buf, row, index } => {
                self.expr(&row.value, live)?;
                self.row_access(*buf, row, index, false, live)
            }
            Expr::Get(s) => self.scalar(*s),
            // A loop variable read as a value must exist and be bound.
            Expr::Iter(v) => self.lin(&Index::var(*v, 1)).map(|_| ()),
            Expr::Un(_, x) => self.expr(x, live),
            Expr::Bin(_, a, b) => {
                self.expr(a, live)?;
                self.expr(b, live)
            }
            Expr::Select(a, _, b, t, f) => {
                self.expr(a, live)?;
                self.expr(b, live)?;
                self.expr(t, live)?;
                self.expr(f, live)
            }
        }
    }

    fn scalar(&self, scalar: usize) -> Result<(), CodegenError> {
        if scalar < self.scalars {
            Ok(())
        } else {
            Err(CodegenError::UnknownScalar {
                scalar,
                declared: self.scalars,
            })
        }
    }

    /// Converts an index, checking that its variables exist and are bound.
    fn lin(&self, idx: &Index) -> Result<Lin, CodegenError> {
        let mut coefs = vec![0i128; self.vars];
        for &(var, c) in &idx.terms {
            if var >= self.vars {
                return Err(CodegenError::UnknownVar {
                    var,
                    declared: self.vars,
                });
            }
            if self.var_max[var].is_none() {
                return Err(CodegenError::UnboundVar { var });
            }
            coefs[var] += i128::from(c);
        }
        Ok(Lin {
            coefs,
            offset: i128::from(idx.offset),
        })
    }

    /// Every partial sum of the index's evaluation stays within
    /// [`INDEX_LIMIT`].
    fn check_magnitude(&self, lin: &Lin, idx: &Index) -> Result<(), CodegenError> {
        let mut total = lin.offset.abs();
        for &(var, c) in &idx.terms {
            let max = self.var_max[var].unwrap_or(0);
            total = total.saturating_add(i128::from(c).abs().saturating_mul(max));
        }
        if total > INDEX_LIMIT {
            return Err(CodegenError::IndexOverflow {
                index: show_index(idx),
            });
        }
        Ok(())
    }

    fn access(
        &mut self,
        buf: BufId,
        idx: &Index,
        store: bool,
        live: bool,
    ) -> Result<(), CodegenError> {
        self.access_rows(buf, idx, 0, 0, store, live)
    }

    /// An access `buf[row·stride + idx]` with a data-dependent `row` in
    /// `0..rows`: the generated code checks the row at run time (an id out
    /// of range reads 0 or writes nothing), so the proof covers the affine
    /// part for every row in range.
    fn row_access(
        &mut self,
        buf: BufId,
        row: &Row,
        idx: &Index,
        store: bool,
        live: bool,
    ) -> Result<(), CodegenError> {
        if row.rows == 0 {
            // No id is in range: the access never happens.
            return self.access_rows(buf, idx, 0, 0, store, false);
        }
        let stride = i128::try_from(row.stride).unwrap_or(i128::MAX);
        let span = i128::try_from(row.rows - 1)
            .unwrap_or(i128::MAX)
            .saturating_mul(stride);
        if span > INDEX_LIMIT {
            return Err(CodegenError::IndexOverflow {
                index: format!("row(.., {}) * {}", row.rows, row.stride),
            });
        }
        self.access_rows(buf, idx, span, stride, store, live)
    }

    /// [`Analyzer::access`] widened by `span` (rows of `stride` elements
    /// after the first) beyond the affine index.
    fn access_rows(
        &mut self,
        buf: BufId,
        idx: &Index,
        span: i128,
        stride: i128,
        store: bool,
        live: bool,
    ) -> Result<(), CodegenError> {
        let Some(&len) = self.lens.get(buf) else {
            return Err(CodegenError::UnknownBuffer {
                buf,
                count: self.lens.len(),
            });
        };
        self.used[buf] = true;
        let lin = self.lin(idx)?;
        if !live {
            return Ok(());
        }
        self.check_magnitude(&lin, idx)?;
        let (min, max) = self.range(&lin);
        let max = max.saturating_add(span);
        if max > INDEX_LIMIT {
            return Err(CodegenError::IndexOverflow {
                index: show_index(idx),
            });
        }
        if min < 0 || max >= len as i128 {
            return Err(CodegenError::OutOfBounds {
                access: if store { "store" } else { "load" },
                buf,
                index: show_index(idx),
                min,
                max,
                len,
            });
        }
        if let Some(o) = self.outer {
            let mut rest = lin;
            let coef = std::mem::take(&mut rest.coefs[o]);
            let (lo, hi) = self.range(&rest);
            self.accesses.push(Access {
                buf,
                store,
                coef,
                lo,
                hi: hi.saturating_add(span),
                row_stride: stride,
                rest,
                var_max: self.var_max.clone(),
            });
        }
        Ok(())
    }

    /// Range of `lin` over the bound variables, ignoring guards.
    fn plain_range(&self, lin: &Lin) -> Option<(i128, i128)> {
        let (mut lo, mut hi) = (lin.offset, lin.offset);
        for (v, &c) in lin.coefs.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let t = c.checked_mul(self.var_max[v]?)?;
            if t < 0 {
                lo = lo.checked_add(t)?;
            } else {
                hi = hi.checked_add(t)?;
            }
        }
        Some((lo, hi))
    }

    /// Range of `lin` as `Σ a_g·guard_g + rest`, each guarded index within
    /// its guard's bounds.
    fn guarded_range(&self, lin: &Lin) -> Option<(i128, i128)> {
        let mut rest = lin.clone();
        let (mut lo, mut hi) = (0i128, 0i128);
        for (g, gmax) in self.guards.iter().rev() {
            let Some(a) = elimination_factor(&rest, g) else {
                continue;
            };
            for (r, &gc) in rest.coefs.iter_mut().zip(&g.coefs) {
                *r = r.checked_sub(a.checked_mul(gc)?)?;
            }
            rest.offset = rest.offset.checked_sub(a.checked_mul(g.offset)?)?;
            let t = a.checked_mul(*gmax)?;
            if t < 0 {
                lo = lo.checked_add(t)?;
            } else {
                hi = hi.checked_add(t)?;
            }
        }
        let (rlo, rhi) = self.plain_range(&rest)?;
        Some((lo.checked_add(rlo)?, hi.checked_add(rhi)?))
    }

    /// The tightest proven range of `lin` in the current scope.
    fn range(&self, lin: &Lin) -> (i128, i128) {
        let plain = self.plain_range(lin).unwrap_or((i128::MIN, i128::MAX));
        match self.guarded_range(lin) {
            Some((lo, hi)) if !self.guards.is_empty() => (plain.0.max(lo), plain.1.min(hi)),
            _ => plain,
        }
    }

    /// Each buffer written inside the outermost loop is accessed, in
    /// iteration `i`, only within `coef·i + [lo, hi]` with one common
    /// `coef` and `hi - lo < |coef|`: iterations touch disjoint memory.
    fn bands_disjoint(&self, extent: usize) -> bool {
        let written: Vec<BufId> = self
            .accesses
            .iter()
            .filter(|a| a.store)
            .map(|a| a.buf)
            .collect();
        written.iter().all(|&buf| {
            if self.residues_disjoint(buf, extent) {
                return true;
            }
            let mut accs = self.accesses.iter().filter(|a| a.buf == buf);
            let Some(first) = accs.next() else {
                return true;
            };
            let (coef, mut lo, mut hi) = (first.coef, first.lo, first.hi);
            for a in accs {
                if a.coef != coef {
                    return false;
                }
                lo = lo.min(a.lo);
                hi = hi.max(a.hi);
            }
            coef != 0 && hi.saturating_sub(lo) < coef.abs()
        })
    }

    /// A buffer accessed through data-dependent rows of stride `m` (an
    /// embedding gradient, one block of columns per outer iteration):
    /// modulo `m` the rows vanish, and every access of iteration `o` lies
    /// in the window `coef·o + [lo, hi]` (the offset and the terms that are
    /// not multiples of `m`, over their loops' ranges). Iterations are
    /// disjoint, whatever rows the data picks, when all accesses share one
    /// `coef`, a window is narrower than `|coef|`, and the windows of all
    /// iterations together span less than `m`, so none wraps onto another.
    fn residues_disjoint(&self, buf: BufId, extent: usize) -> bool {
        let accs: Vec<&Access> = self.accesses.iter().filter(|a| a.buf == buf).collect();
        let Some(m) = accs.iter().map(|a| a.row_stride).find(|s| *s > 0) else {
            return false;
        };
        let coef = accs[0].coef;
        let (mut lo, mut hi) = (i128::MAX, i128::MIN);
        for a in &accs {
            if a.coef != coef || (a.row_stride != 0 && a.row_stride != m) {
                return false;
            }
            let Some((l, h)) = residue_window(a, m) else {
                return false;
            };
            lo = lo.min(l);
            hi = hi.max(h);
        }
        let reach = coef
            .checked_abs()
            .and_then(|c| c.checked_mul(i128::try_from(extent).ok()?.saturating_sub(1)))
            .and_then(|r| r.checked_add(hi - lo));
        coef != 0 && hi - lo < coef.abs() && reach.is_some_and(|x| x < m)
    }
}

/// The range `[lo, hi]` of `a`'s index modulo `m` without the outer
/// variable: its offset's residue plus the terms whose coefficients are
/// not multiples of `m`, over their variables' ranges; `None` when such a
/// variable is unbounded or the sum overflows.
fn residue_window(a: &Access, m: i128) -> Option<(i128, i128)> {
    let base = a.rest.offset.rem_euclid(m);
    let (mut lo, mut hi) = (base, base);
    for (v, &c) in a.rest.coefs.iter().enumerate() {
        if c % m == 0 {
            continue;
        }
        let t = c.checked_mul((*a.var_max.get(v)?)?)?;
        if t < 0 {
            lo = lo.checked_add(t)?;
        } else {
            hi = hi.checked_add(t)?;
        }
    }
    Some((lo, hi))
}

/// The multiple `a ≠ 0` of guard `g` whose subtraction from `r` removes
/// `g`'s first variable from `r`, if there is one. Any multiple is sound
/// (`r = a·g + (r − a·g)` whatever `a` is, and the caller intersects the
/// result with the unguarded range); this one is exact when `r` holds `g`
/// whole, and still tight when `r` adds more of `g`'s other variables, as
/// a gather through a strided window does (`o = q + lead − j` guarded,
/// `k = base + s·j` alongside).
fn elimination_factor(r: &Lin, g: &Lin) -> Option<i128> {
    let (pivot, &gc) = g.coefs.iter().enumerate().find(|(_, c)| **c != 0)?;
    let rc = r.coefs[pivot];
    if rc == 0 || rc % gc != 0 {
        return None;
    }
    Some(rc / gc)
}

// ---------------------------------------------------------------------------
// Code generation
// ---------------------------------------------------------------------------

extern "C" fn netc_logf(x: f32) -> f32 {
    x.ln()
}

/// Host functions the generated code calls, by symbol name.
const LIBCALLS: [(&str, extern "C" fn(f32) -> f32); 1] = [("netc_logf", netc_logf)];

#[derive(Clone, Copy)]
enum Libcall {
    Log = 0,
}

fn new_module(opt: OptLevel) -> Result<JITModule, CodegenError> {
    let mut builder = JITBuilder::with_isa(native_isa(opt)?, default_libcall_names());
    for (name, f) in LIBCALLS {
        builder.symbol(name, f as *const u8);
    }
    Ok(JITModule::new(builder))
}

/// Declares the kernel function in `module` (so it is `u0:0` and the
/// libcalls follow in order of first use) and builds its CLIF and text.
fn build(
    k: &LoopKernel,
    plan: &Plan,
    module: &mut JITModule,
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
    // Lane registers of the scalar registers, for vectorized loops.
    let vscalars: Vec<Variable> = (0..k.scalars)
        .map(|_| {
            let v = b.declare_var(types::F32X4);
            let zero = vmath::splat_f(&mut b, 0.0);
            b.def_var(v, zero);
            v
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
        iota,
    };
    match (plan.outer, k.body.as_slice()) {
        (Some((var, extent)), [Stmt::Loop { body, .. }]) => {
            if vectorizable(var, extent, body, k.scalars) {
                g.lane_loop(var, begin, LoopEnd::Dynamic(end), body)?;
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

struct Gen<'a, 'f> {
    b: &'a mut FunctionBuilder<'f>,
    module: &'a mut JITModule,
    call_conv: cranelift_codegen::isa::CallConv,
    libcalls: [Option<FuncRef>; LIBCALLS.len()],
    /// Base pointer of each used buffer.
    bases: Vec<Option<Value>>,
    loop_vars: Vec<Variable>,
    /// Nesting depth of the loop binding each variable.
    depth: Vec<usize>,
    level: usize,
    scalars: Vec<Variable>,
    /// F32X4 registers standing for `scalars` inside a vectorized loop.
    vscalars: Vec<Variable>,
    /// The loop variable being vectorized, while generating its body.
    lane_var: Option<usize>,
    /// `[0, 1, 2, 3]`.
    iota: Value,
}

/// A guard bound as an i64 immediate. Live indices stay within
/// ±[`INDEX_LIMIT`], so clamping larger bounds changes no outcome.
fn guard_bound(bound: usize) -> i64 {
    i64::try_from(bound).map_or(i64::MAX, |b| b.min(1 << 62))
}

fn mem() -> MemFlagsData {
    // In bounds (proven by `analyze`) and naturally aligned f32 accesses.
    MemFlagsData::trusted()
}

/// Vector accesses: in bounds, but only 4-byte aligned.
fn vmem() -> MemFlagsData {
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
fn coefficient(idx: &Index, var: usize) -> i64 {
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
                let zero = self.b.ins().iconst(types::I64, 0);
                let n = *extent as i64;
                if self.lane_var.is_none() && vectorizable(*var, *extent, body, self.scalars.len())
                {
                    let whole = n - n % LANES as i64;
                    self.lane_loop(*var, zero, LoopEnd::Const(whole), body)?;
                    if whole < n {
                        let rest = self.b.ins().iconst(types::I64, whole);
                        self.counted_loop(*var, rest, LoopEnd::Const(n), body)?;
                    }
                } else {
                    self.counted_loop(*var, zero, LoopEnd::Const(n), body)?;
                }
            }
            Stmt::Store { buf, index, value } => {
                let (x, flags) = match self.lane_var {
                    Some(_) => (self.vexpr(value)?, vmem()),
                    None => (self.expr(value)?, mem()),
                };
                let (addr, off) = self.address(*buf, index);
                self.b.ins().store(flags, x, addr, off);
            }
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
                    let x = self.vexpr(value)?;
                    self.b.def_var(self.vscalars[*scalar], x);
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
        self.stepped_loop(var, start, end, body, false)
    }

    /// Runs `body` for iterations `start, start + 4, ...` as long as all four
    /// lanes are below `end` (a multiple of four past `start` when constant),
    /// each statement for four consecutive iterations at once; leaves `var`
    /// at the first iteration not run. Registers set in the body end up
    /// holding their last lane, as after the scalar loop.
    fn lane_loop(
        &mut self,
        var: usize,
        start: Value,
        end: LoopEnd,
        body: &[Stmt],
    ) -> Result<(), CodegenError> {
        self.stepped_loop(var, start, end, body, true)
    }

    /// The rotated loop of [`Self::counted_loop`], stepping by one
    /// iteration or (with `lanes`) by a vector of them while a whole vector
    /// fits before `end`.
    fn stepped_loop(
        &mut self,
        var: usize,
        start: Value,
        end: LoopEnd,
        body: &[Stmt],
        lanes: bool,
    ) -> Result<(), CodegenError> {
        // Iterate while `i + step - 1 < end`.
        let reach = if lanes { LANES as i64 - 1 } else { 0 };
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
        let outer_lanes = self.lane_var;
        if lanes {
            self.lane_var = Some(var);
        }
        self.stmts(body)?;
        self.lane_var = outer_lanes;
        self.level -= 1;
        if lanes {
            let mut set = vec![false; self.scalars.len()];
            body.iter().for_each(|s| sets(s, &mut set));
            for (r, _) in set.iter().enumerate().filter(|(_, s)| **s) {
                let x = self.b.use_var(self.vscalars[r]);
                let last = self.b.ins().extractlane(x, (LANES - 1) as u8);
                self.b.def_var(self.scalars[r], last);
            }
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

    /// `x + c`, without an instruction for `c = 0`.
    fn plus(&mut self, x: Value, c: i64) -> Value {
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
    fn address(&mut self, buf: BufId, idx: &Index) -> (Value, i32) {
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

    fn libcall(&mut self, which: Libcall, x: Value) -> Result<Value, CodegenError> {
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
    fn row_offset(&mut self, row: &Row) -> Result<(Value, Value), CodegenError> {
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

    fn expr(&mut self, e: &Expr) -> Result<Value, CodegenError> {
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
                // For max/min, put a non-NaN constant second: then one
                // compare gives f32::max/min semantics.
                let swap = matches!(op, BinOp::Max | BinOp::Min)
                    && matches!(**a, Expr::Const(c) if !c.is_nan())
                    && !matches!(**b, Expr::Const(c) if !c.is_nan());
                let (a, b) = if swap { (b, a) } else { (a, b) };
                let b_is_number = matches!(**b, Expr::Const(c) if !c.is_nan());
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
        match op {
            UnOp::Exp => vmath::exp(self.b, v),
            UnOp::Tanh => vmath::tanh(self.b, v),
            _ => vmath::sigmoid(self.b, v),
        }
    }

    /// `e` for the four iterations of the vectorized loop starting at its
    /// variable's current value, as an f32x4.
    fn vexpr(&mut self, e: &Expr) -> Result<Value, CodegenError> {
        let lane_var = self.lane_var.expect("vexpr runs inside a vectorized loop");
        Ok(match e {
            Expr::Const(c) => vmath::splat_f(self.b, *c),
            Expr::Gather { .. } => {
                return Err(compile_error(
                    "a data-dependent row in a vectorized loop".into(),
                ))
            }
            Expr::Load(buf, idx) => {
                let (addr, off) = self.address(*buf, idx);
                if coefficient(idx, lane_var) == 0 {
                    let x = self.b.ins().load(types::F32, mem(), addr, off);
                    self.b.ins().splat(types::F32X4, x)
                } else {
                    self.b.ins().load(types::F32X4, vmem(), addr, off)
                }
            }
            Expr::Get(s) => self.b.use_var(self.vscalars[*s]),
            Expr::Iter(v) => {
                let i = self.b.use_var(self.loop_vars[*v]);
                let x = self.b.ins().fcvt_from_sint(types::F32, i);
                let x = self.b.ins().splat(types::F32X4, x);
                if *v == lane_var {
                    self.b.ins().fadd(x, self.iota)
                } else {
                    x
                }
            }
            Expr::Un(op, x) => {
                let x = self.vexpr(x)?;
                match op {
                    UnOp::Neg => self.b.ins().fneg(x),
                    UnOp::Sqrt => self.b.ins().sqrt(x),
                    UnOp::Relu => {
                        let zero = vmath::splat_f(self.b, 0.0);
                        vmath::max(self.b, x, zero)
                    }
                    UnOp::Log => {
                        let mut v = x;
                        for l in 0..LANES as u8 {
                            let xl = self.b.ins().extractlane(x, l);
                            let y = self.libcall(Libcall::Log, xl)?;
                            v = self.b.ins().insertlane(v, y, l);
                        }
                        v
                    }
                    UnOp::Exp | UnOp::Tanh | UnOp::Sigmoid => self.vunary_math(*op, x),
                }
            }
            Expr::Bin(op, a, b) => {
                // The same operand order and NaN rules as `expr`.
                let swap = matches!(op, BinOp::Max | BinOp::Min)
                    && matches!(**a, Expr::Const(c) if !c.is_nan())
                    && !matches!(**b, Expr::Const(c) if !c.is_nan());
                let (a, b) = if swap { (b, a) } else { (a, b) };
                let b_is_number = matches!(**b, Expr::Const(c) if !c.is_nan());
                let x = self.vexpr(a)?;
                let y = self.vexpr(b)?;
                match op {
                    BinOp::Add => self.b.ins().fadd(x, y),
                    BinOp::Sub => self.b.ins().fsub(x, y),
                    BinOp::Mul => self.b.ins().fmul(x, y),
                    BinOp::Div => self.b.ins().fdiv(x, y),
                    BinOp::Max | BinOp::Min => {
                        let r = if *op == BinOp::Max {
                            vmath::max(self.b, x, y)
                        } else {
                            vmath::min(self.b, x, y)
                        };
                        if b_is_number {
                            r
                        } else {
                            vmath::select(self.b, FloatCC::Unordered, y, y, x, r)
                        }
                    }
                }
            }
            Expr::Select(a, cmp, b, t, f) => {
                let x = self.vexpr(a)?;
                let y = self.vexpr(b)?;
                let t = self.vexpr(t)?;
                let f = self.vexpr(f)?;
                let cc = match cmp {
                    Cmp::Gt => FloatCC::GreaterThan,
                    Cmp::Ge => FloatCC::GreaterThanOrEqual,
                    Cmp::Lt => FloatCC::LessThan,
                };
                vmath::select(self.b, cc, x, y, t, f)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lk(vars: usize, scalars: usize, body: Vec<Stmt>) -> LoopKernel {
        LoopKernel {
            vars,
            scalars,
            body,
        }
    }

    fn lp(var: usize, extent: usize, body: Vec<Stmt>) -> Stmt {
        Stmt::Loop { var, extent, body }
    }

    fn store(buf: BufId, index: Index, value: Expr) -> Stmt {
        Stmt::Store { buf, index, value }
    }

    #[test]
    fn shows_indices() {
        assert_eq!(
            show_index(&Index::new([(0, 13), (1, 1)], -2)),
            "13*v0 + v1 - 2"
        );
        assert_eq!(show_index(&Index::new([(2, -1)], 5)), "-v2 + 5");
        assert_eq!(show_index(&Index::constant(7)), "7");
    }

    #[test]
    fn plain_ranges_are_exact() {
        // out[3*i - j + 2] for i < 4, j < 3: [0, 11].
        let k = lk(
            2,
            0,
            vec![lp(
                0,
                4,
                vec![lp(
                    1,
                    3,
                    vec![store(0, Index::new([(0, 3), (1, -1)], 2), Expr::Const(0.0))],
                )],
            )],
        );
        assert!(analyze(&k, &[12]).is_ok());
        let err = analyze(&k, &[11]).err().expect("must fail");
        assert!(
            matches!(
                err,
                CodegenError::OutOfBounds {
                    min: 0,
                    max: 11,
                    len: 11,
                    ..
                }
            ),
            "{err}"
        );
        let k2 = lk(
            2,
            0,
            vec![lp(
                0,
                4,
                vec![lp(
                    1,
                    3,
                    vec![store(0, Index::new([(0, 3), (1, -1)], 1), Expr::Const(0.0))],
                )],
            )],
        );
        let err = analyze(&k2, &[100]).err().expect("must fail");
        assert!(
            matches!(err, CodegenError::OutOfBounds { min: -1, .. }),
            "{err}"
        );
    }

    #[test]
    fn guards_bound_linear_combinations() {
        // 2-D padded window: in[(oh + kh - 1) * 5 + (ow + kw - 1)], guarded
        // on both coordinates, over a 5x5 input.
        let row = Index::new([(0, 1), (2, 1)], -1);
        let col = Index::new([(1, 1), (3, 1)], -1);
        let load = Index::new([(0, 5), (2, 5), (1, 1), (3, 1)], -6);
        let body = vec![Stmt::IfInBounds {
            conds: vec![(row, 5), (col, 5)],
            body: vec![store(
                1,
                Index::new([(0, 5), (1, 1)], 0),
                Expr::load(0, load),
            )],
        }];
        let k = lk(
            4,
            0,
            vec![lp(
                0,
                5,
                vec![lp(1, 5, vec![lp(2, 3, vec![lp(3, 3, body)])])],
            )],
        );
        assert!(analyze(&k, &[25, 25]).is_ok());
        // One element short is caught.
        assert!(analyze(&k, &[24, 25]).is_err());
        // Without the guard the same kernel is rejected.
        let unguarded = lk(
            4,
            0,
            vec![lp(
                0,
                5,
                vec![lp(
                    1,
                    5,
                    vec![lp(
                        2,
                        3,
                        vec![lp(
                            3,
                            3,
                            vec![store(
                                1,
                                Index::new([(0, 5), (1, 1)], 0),
                                Expr::load(0, Index::new([(0, 5), (2, 5), (1, 1), (3, 1)], -6)),
                            )],
                        )],
                    )],
                )],
            )],
        );
        assert!(matches!(
            analyze(&unguarded, &[25, 25]),
            Err(CodegenError::OutOfBounds { min: -6, .. })
        ));
    }

    #[test]
    fn structural_errors() {
        let unbound = lk(1, 0, vec![store(0, Index::var(0, 1), Expr::Const(1.0))]);
        assert!(matches!(
            analyze(&unbound, &[4]),
            Err(CodegenError::UnboundVar { var: 0 })
        ));
        let rebound = lk(1, 0, vec![lp(0, 2, vec![lp(0, 2, vec![])])]);
        assert!(matches!(
            analyze(&rebound, &[]),
            Err(CodegenError::ReboundVar { var: 0 })
        ));
        let bad_buf = lk(0, 0, vec![store(3, Index::constant(0), Expr::Const(1.0))]);
        assert!(matches!(
            analyze(&bad_buf, &[4]),
            Err(CodegenError::UnknownBuffer { buf: 3, count: 1 })
        ));
        let bad_scalar = lk(0, 1, vec![store(0, Index::constant(0), Expr::Get(1))]);
        assert!(matches!(
            analyze(&bad_scalar, &[4]),
            Err(CodegenError::UnknownScalar { scalar: 1, .. })
        ));
        let huge = lk(
            1,
            0,
            vec![lp(
                0,
                2,
                vec![store(0, Index::var(0, i64::MAX / 2), Expr::Const(1.0))],
            )],
        );
        assert!(matches!(
            analyze(&huge, &[4]),
            Err(CodegenError::IndexOverflow { .. })
        ));
    }

    #[test]
    fn dead_code_is_not_bounds_checked() {
        let k = lk(
            1,
            0,
            vec![lp(
                0,
                0,
                vec![store(0, Index::var(0, 1).shift(100), Expr::Const(1.0))],
            )],
        );
        assert!(analyze(&k, &[1]).is_ok());
    }

    #[test]
    fn parallel_safety() {
        // Row-wise reduction into a scalar: parallel.
        let rows = lk(
            2,
            1,
            vec![lp(
                0,
                4,
                vec![
                    Stmt::Set {
                        scalar: 0,
                        value: Expr::Const(0.0),
                    },
                    lp(
                        1,
                        3,
                        vec![Stmt::Set {
                            scalar: 0,
                            value: Expr::Get(0)
                                .bin(BinOp::Add, Expr::load(0, Index::new([(0, 3), (1, 1)], 0))),
                        }],
                    ),
                    store(1, Index::var(0, 1), Expr::Get(0)),
                ],
            )],
        );
        assert!(analyze(&rows, &[12, 4]).unwrap().parallel);
        // A scalar carried across outer iterations: not parallel.
        let carried = lk(
            1,
            1,
            vec![lp(
                0,
                4,
                vec![
                    Stmt::Set {
                        scalar: 0,
                        value: Expr::Get(0).bin(BinOp::Add, Expr::load(0, Index::var(0, 1))),
                    },
                    store(1, Index::var(0, 1), Expr::Get(0)),
                ],
            )],
        );
        assert!(!analyze(&carried, &[4, 4]).unwrap().parallel);
        // Every iteration writes the same element: not parallel.
        let shared = lk(
            1,
            0,
            vec![lp(
                0,
                4,
                vec![store(0, Index::constant(0), Expr::Const(1.0))],
            )],
        );
        assert!(!analyze(&shared, &[1]).unwrap().parallel);
        // Iteration i reads what iteration i+1 writes: not parallel.
        let shifted = lk(
            1,
            0,
            vec![lp(
                0,
                4,
                vec![store(
                    0,
                    Index::var(0, 1),
                    Expr::load(0, Index::var(0, 1).shift(1)),
                )],
            )],
        );
        assert!(!analyze(&shifted, &[5]).unwrap().parallel);
    }
}
