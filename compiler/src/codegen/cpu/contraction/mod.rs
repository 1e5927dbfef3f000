//! JIT code generator for contraction kernels: a strided, register-tiled
//! SGEMM that covers dense layers and valid NHWC convolution (implicit GEMM)
//! with a fused bias + activation epilogue.
//!
//! # Files
//!
//! - `mod.rs` (this file): the public spec types and
//!   [`CompiledContraction`] (compile, pack, run, thread launch);
//! - `plan`: checking a spec and normalizing it into a `Plan`, the choice
//!   between the native and the Cranelift kernels ([`KernelPath`]), and
//!   the split of rows / panels over threads;
//! - `pack`: B packing into zero-padded column panels ([`PackedB`]), from
//!   a row-major or a transposed B;
//! - `cranelift`: the Cranelift emitter (`f32x4` tiles, the whole loop
//!   nest in one function);
//! - `avx2` (x86-64 only): run-time assembled AVX2 + FMA micro-kernels
//!   (6 x 16 `ymm` tiles, plus block kernels for one reduction block of a
//!   tile whose running totals live in C); `avx512`, their AVX-512
//!   counterparts (6 x 32 `zmm` tiles over two neighbouring panels,
//!   and, for calls over four or more panels, 6 x 64; hand-encoded EVEX
//!   from `codegen::cpu::evex`), taken where the host has AVX-512F
//!   ([`IsaLevel::Avx512`]); `native`, which assembles either level into
//!   one executable buffer; and `driver`, the Rust loop
//!   nest that calls them per tile and, when [`CompiledContraction::run`]
//!   is handed an unpacked B it will use once, packs B inside the nest
//!   (panel by panel for a transposed B, reduction block by reduction
//!   block, outermost, for a long row-major one; see
//!   [`CompiledContraction::packs_per_panel`]).
//!
//! What follows describes the index space both share and the Cranelift
//! kernels' structure; `avx2` and `avx512` document the native ones.
//!
//! # Index space
//!
//! Output row `m` is decomposed as `m = (m2 * M1 + m1) * M0 + m0`; the
//! reduction index as `k = (k1 * K2 + k2) * K3 + k3`.  Then
//!
//! ```text
//! A[m, k]  = a[m2*sa2 + m1*sa1 + m0*sa0 + k1*sk1 + k2*sk2 + k3*sk3]
//! B[k, n]  = b[k*ldb + n]        (or b[n*ldb + k], transposed)
//! C[m, n]  = c[m*ldc + n]
//! C[m, n] (+)= act(sum_k A[m, k] * B[k, n] + bias[n])
//! ```
//!
//! Dense `A[m*K + k]` is `M = (1, 1, M)` with `sa0 = K`, `sk3 = 1`.  A
//! transposed A (`xᵀ` of a weight gradient, stored `[K, M]`) is `sa0 = 1`,
//! `sk3 = M`: the kernels read it in place, each reduction step's rows
//! of a tile lying side by side in one row of the stored matrix (the
//! layout a BLIS-style packed A panel has, so it needs no packing). A
//! transposed B (`Wᵀ` of an input gradient) is transposed by the packing,
//! which copies every element anyway.  A stride-`S`
//! convolution over a pre-padded `[N, Hp, Wp, C]` input with `[KH, KW, C, OC]`
//! weights is `M = (N, OH, OW)`, `sa = (Hp*Wp*C, S*Wp*C, S*C)`,
//! `K = (KH, KW, C)`, `sk = (Wp*C, C)`.
//!
//! # Kernel structure
//!
//! B is packed into `NR`-column panels (`NR = 4 * nr_vecs`, zero padded), so
//! the micro-kernel streams one contiguous panel.  A `mr x NR` tile of C lives
//! in `mr * nr_vecs` `f32x4` registers; every reduction step loads `nr_vecs`
//! B vectors, broadcasts `mr` A scalars and issues `mr * nr_vecs` FMAs.
//! Rows left over at the end of a row range use the same micro-kernel with a
//! smaller `mr`; columns past `N` in the last panel are computed on padding and
//! stored lane by lane, so nothing outside the caller's buffers is touched.
//! Reduction dimensions that are contiguous in A (the `KW x C` run of NHWC
//! convolution, all of dense) are merged at compile time into one inner loop.

use std::ops::Range;

use super::jit::{isa_flag, native_isa, JitCode, OptLevel};
use super::parallel::parallel_for;
use super::vmath;
use super::CodegenError;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod blocking;
mod cranelift;
#[cfg(target_arch = "x86_64")]
mod driver;
#[cfg(target_arch = "x86_64")]
mod native;
mod pack;
mod plan;

use cranelift::{build_function, FUNC_NAME};
pub use pack::PackedB;
use pack::{pack_panels, TransposedA};
use plan::{split_work, Plan};

/// Activation applied to each output in registers before the store.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Epilogue {
    /// Identity.
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// `x` if `x > 0`, else `alpha * x`.
    LeakyRelu(f32),
    /// `1 / (1 + exp(-x))`, polynomial `exp` (about 1e-7 relative error).
    Sigmoid,
    /// Hyperbolic tangent, odd polynomial near 0 and `exp` elsewhere.
    Tanh,
}

/// Loop nest order around the micro-kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LoopOrder {
    /// `RowOuter` when the packed B fits comfortably in L2, else
    /// `PanelOuter`.
    #[default]
    Auto,
    /// For each B panel, sweep all row tiles: the panel stays in L1 while A
    /// streams (best when B is large, e.g. dense layers).
    PanelOuter,
    /// For each row tile, sweep all B panels: the A rows stay in L1 while B
    /// streams from L2 (best when all of B fits in L2, e.g. convolutions).
    RowOuter,
}

/// Register-tiling and code-generation knobs; the defaults are the measured
/// best on the development machine (see `examples/gemm_speed.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuning {
    /// Rows per register tile (1..=16; above about 12 the row pointers spill).
    pub mr: usize,
    /// `f32x4` vectors per tile row, i.e. `NR / 4` (1..=4).
    pub nr_vecs: usize,
    /// Unroll factor of the innermost reduction loop (1..=16).
    pub k_unroll: usize,
    /// Cranelift optimization level.
    pub opt_level: OptLevel,
    /// Loop order around the micro-kernel.
    pub order: LoopOrder,
    /// Re-broadcast the A element from memory for every FMA instead of
    /// once per tile row.
    pub broadcast_per_fma: bool,
    /// How the kernel reads B.
    pub b_layout: BLayout,
    /// Which code generator builds the kernel.
    pub kernels: KernelPath,
}

/// Which code generator builds a contraction's kernel. The choice is made
/// per spec at [`CompiledContraction::compile`]; the library reads no
/// environment (the CLI maps `--kernels` / `NETC_KERNELS` onto this).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// Run-time assembled native micro-kernels of the best [`IsaLevel`]
    /// the host has, where the spec is one they handle (no sigmoid / tanh
    /// epilogue; row-major B only with `N` a multiple of 16), else
    /// Cranelift. The native tile (6 x 16) then replaces `mr` and
    /// `nr_vecs`, and `opt_level` / `broadcast_per_fma` do not apply;
    /// `k_unroll`, `order` and `b_layout` still do.
    #[default]
    Auto,
    /// Always the Cranelift kernels (`f32x4`); the differential tests run
    /// every path.
    Cranelift,
    /// Like [`KernelPath::Auto`], but at most the 256-bit
    /// [`IsaLevel::Avx2Fma`] kernels, also on an AVX-512 host: so the
    /// `ymm` kernels stay tested (and comparable) on machines that would
    /// otherwise always pick the `zmm` ones.
    Avx2,
}

impl KernelPath {
    /// The native kernels' level this path takes on this host, if any
    /// (`None` for Cranelift).
    pub fn native_level(self) -> Option<IsaLevel> {
        match self {
            KernelPath::Auto => IsaLevel::detect(),
            KernelPath::Avx2 => IsaLevel::detect().map(|l| l.min(IsaLevel::Avx2Fma)),
            KernelPath::Cranelift => None,
        }
    }
}

/// Instruction-set levels with run-time assembled kernels, ordered: a host
/// with a level runs every lower one too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IsaLevel {
    /// 256-bit `ymm` registers and `vfmadd231ps` (x86-64 with AVX2 + FMA).
    Avx2Fma,
    /// 512-bit `zmm` registers (AVX-512F, with AVX2 + FMA): the
    /// contraction kernels' two-panel `6 x 32` tile (`avx512`), and the
    /// loop kernels' 16-lane steps (`loops::avx2`).
    Avx512,
}

impl IsaLevel {
    /// The best level the host supports, if any (never on non-x86-64).
    /// Detected at run time (the standard library also checks that the OS
    /// saves the `zmm` and opmask state).
    pub fn detect() -> Option<IsaLevel> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    return Some(IsaLevel::Avx512);
                }
                return Some(IsaLevel::Avx2Fma);
            }
        }
        None
    }
}

/// How a contraction kernel reads B.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BLayout {
    /// From zero-padded `NR`-column panels ([`CompiledContraction::pack_b`]):
    /// every reduction step's B vectors are contiguous. Best when B is a
    /// weight packed once and reused.
    #[default]
    Packed,
    /// Straight from the caller's row-major `[K, ldb]` B: no packing pass,
    /// at the price of a strided walk down each panel. For a B that changes
    /// on every call (a gradient, a weight during training), where packing
    /// would cost a full extra pass over it. Needs `N` to be a multiple of
    /// `NR`, so no panel reads past a row's end.
    RowMajor,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            mr: 8,
            nr_vecs: 1,
            k_unroll: 8,
            opt_level: OptLevel::None,
            order: LoopOrder::Auto,
            broadcast_per_fma: true,
            b_layout: BLayout::Packed,
            kernels: KernelPath::Auto,
        }
    }
}

/// Shape, addressing and epilogue of one contraction kernel (see the module
/// documentation for the index space).  All sizes are in `f32` elements.
#[derive(Clone, Debug, PartialEq)]
pub struct ContractionSpec {
    /// Row index extents `[M2, M1, M0]`; `M` is their product.
    pub m_dims: [usize; 3],
    /// A strides of `m2, m1, m0`.
    pub m_strides: [usize; 3],
    /// Output columns.
    pub n: usize,
    /// Reduction extents `[K1, K2, K3]`.
    pub k_dims: [usize; 3],
    /// A strides of `k1, k2, k3` (`k3`'s is 1 unless A is read transposed).
    pub k_strides: [usize; 3],
    /// Row stride of B as stored (`>= n`, or `>= K` when `b_transposed`).
    pub ldb: usize,
    /// B is stored transposed, `[N, ldb]`: `B[k, n] = b[n*ldb + k]`. The
    /// packing transposes it, so it needs [`BLayout::Packed`].
    pub b_transposed: bool,
    /// Row stride of C (`>= n`).
    pub ldc: usize,
    /// Whether a per-column bias of length `n` is added.
    pub bias: bool,
    /// Activation applied before the store.
    pub epilogue: Epilogue,
    /// Store `C += act(...)` instead of `C = act(...)`.
    pub accumulate: bool,
    /// Code-generation knobs.
    pub tuning: Tuning,
}

/// Geometry of a valid (already padded) NHWC convolution with `[KH, KW, C,
/// OC]` weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    /// Batch size.
    pub batch: usize,
    /// Input height including padding.
    pub in_h: usize,
    /// Input width including padding.
    pub in_w: usize,
    /// Input channels.
    pub in_c: usize,
    /// Kernel height.
    pub kernel_h: usize,
    /// Kernel width.
    pub kernel_w: usize,
    /// Output channels.
    pub out_c: usize,
    /// Vertical stride.
    pub stride_h: usize,
    /// Horizontal stride.
    pub stride_w: usize,
}

impl Conv2dGeometry {
    /// Output height `(Hp - KH) / S + 1`, or `None` if the kernel does not fit.
    pub fn out_h(&self) -> Option<usize> {
        out_extent(self.in_h, self.kernel_h, self.stride_h)
    }

    /// Output width `(Wp - KW) / S + 1`, or `None` if the kernel does not fit.
    pub fn out_w(&self) -> Option<usize> {
        out_extent(self.in_w, self.kernel_w, self.stride_w)
    }
}

fn out_extent(input: usize, kernel: usize, stride: usize) -> Option<usize> {
    if kernel == 0 || stride == 0 || input < kernel {
        return None;
    }
    Some((input - kernel) / stride + 1)
}

fn invalid(msg: impl Into<String>) -> CodegenError {
    CodegenError::InvalidSpec(msg.into())
}

fn overflow() -> CodegenError {
    invalid("sizes overflow the address space")
}

impl ContractionSpec {
    /// `C[M, N] = A[M, K] x B[K, N]`, all row-major and dense.
    pub fn dense(m: usize, k: usize, n: usize) -> Self {
        ContractionSpec {
            m_dims: [1, 1, m],
            m_strides: [0, 0, k],
            n,
            k_dims: [1, 1, k],
            k_strides: [0, 0, 1],
            ldb: n,
            b_transposed: false,
            ldc: n,
            bias: false,
            epilogue: Epilogue::None,
            accumulate: false,
            tuning: Tuning::default(),
        }
    }

    /// Valid NHWC cross-correlation; C is `[N, OH, OW, OC]`.
    pub fn conv2d_nhwc(g: &Conv2dGeometry) -> Result<Self, CodegenError> {
        let (oh, ow) = match (g.out_h(), g.out_w()) {
            (Some(oh), Some(ow)) => (oh, ow),
            _ => {
                return Err(invalid(format!(
                    "a {}x{} kernel with stride {}x{} does not fit a {}x{} input",
                    g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.in_h, g.in_w
                )))
            }
        };
        let mul = |a: usize, b: usize| a.checked_mul(b).ok_or_else(overflow);
        let row = mul(g.in_w, g.in_c)?;
        Ok(ContractionSpec {
            m_dims: [g.batch, oh, ow],
            m_strides: [
                mul(g.in_h, row)?,
                mul(g.stride_h, row)?,
                mul(g.stride_w, g.in_c)?,
            ],
            n: g.out_c,
            k_dims: [g.kernel_h, g.kernel_w, g.in_c],
            k_strides: [row, g.in_c, 1],
            ldb: g.out_c,
            b_transposed: false,
            ldc: g.out_c,
            bias: false,
            epilogue: Epilogue::None,
            accumulate: false,
            tuning: Tuning::default(),
        })
    }

    /// Sets whether a bias is added.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Sets the activation.
    pub fn with_epilogue(mut self, epilogue: Epilogue) -> Self {
        self.epilogue = epilogue;
        self
    }

    /// Sets whether the result is added to C.
    pub fn with_accumulate(mut self, accumulate: bool) -> Self {
        self.accumulate = accumulate;
        self
    }

    /// Sets the code-generation knobs.
    pub fn with_tuning(mut self, tuning: Tuning) -> Self {
        self.tuning = tuning;
        self
    }

    /// Number of output rows `M`, if it does not overflow.
    pub fn m(&self) -> Option<usize> {
        self.m_dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Reduction length `K`, if it does not overflow.
    pub fn k(&self) -> Option<usize> {
        self.k_dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Floating-point operations of one full run (`2 M N K`).
    pub fn flops(&self) -> f64 {
        2.0 * self.m().unwrap_or(0) as f64 * self.n as f64 * self.k().unwrap_or(0) as f64
    }

    /// Minimum lengths of the A, B (unpacked) and C buffers for this spec.
    pub fn operand_lens(&self) -> Result<OperandLens, CodegenError> {
        if self.m_dims.contains(&0) || self.k_dims.contains(&0) || self.n == 0 {
            return Err(invalid(format!(
                "zero extent: m_dims={:?} k_dims={:?} n={}",
                self.m_dims, self.k_dims, self.n
            )));
        }
        let span = |dims: &[usize], strides: &[usize]| -> Option<usize> {
            dims.iter().zip(strides).try_fold(0usize, |acc, (&e, &s)| {
                acc.checked_add((e - 1).checked_mul(s)?)
            })
        };
        let a = span(&self.m_dims, &self.m_strides)
            .and_then(|x| x.checked_add(span(&self.k_dims, &self.k_strides)?))
            .and_then(|x| x.checked_add(1))
            .ok_or_else(overflow)?;
        let k = self.k().ok_or_else(overflow)?;
        let m = self.m().ok_or_else(overflow)?;
        let (rows, cols) = if self.b_transposed {
            (self.n, k)
        } else {
            (k, self.n)
        };
        let b = (rows - 1)
            .checked_mul(self.ldb)
            .and_then(|x| x.checked_add(cols))
            .ok_or_else(overflow)?;
        let c = (m - 1)
            .checked_mul(self.ldc)
            .and_then(|x| x.checked_add(self.n))
            .ok_or_else(overflow)?;
        Ok(OperandLens { a, b, c })
    }
}

/// Minimum operand lengths in elements (the bias always has `n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OperandLens {
    /// A: the largest offset any row reads, plus one.
    pub a: usize,
    /// B: `(K - 1) * ldb + n`, or `(n - 1) * ldb + K` transposed.
    pub b: usize,
    /// C: `(M - 1) * ldc + n`.
    pub c: usize,
}

/// `fn(a, packed_b, bias, c, m_begin, m_end, panel_begin, panel_end)`.
type KernelFn =
    unsafe extern "C" fn(*const f32, *const f32, *const f32, *mut f32, usize, usize, usize, usize);

/// A compiled contraction kernel, callable from any number of threads.
pub struct CompiledContraction {
    spec: ContractionSpec,
    plan: Plan,
    lens: OperandLens,
    code: Code,
    /// A transposed A the native kernels read from a row-major copy made
    /// at every call (the plan and kernels are the copy's).
    a_copy: Option<TransposedA>,
}

thread_local! {
    /// The calling thread's copy of a transposed A ([`TransposedA`]), kept
    /// between calls so it is not faulted in again on every run.
    static A_COPY: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The machine code of a contraction.
enum Code {
    /// One Cranelift function that walks its share of rows and panels.
    Cranelift(Box<JitCode>),
    /// Native micro-kernels, one per tile height; [`driver`] walks the
    /// tiles and calls them.
    #[cfg(target_arch = "x86_64")]
    Native(native::AsmKernels),
}

impl std::fmt::Debug for CompiledContraction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledContraction")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl CompiledContraction {
    /// Validates `spec` and JIT-compiles its kernel for the host CPU.
    pub fn compile(spec: &ContractionSpec) -> Result<Self, CodegenError> {
        Self::compile_inner(spec, false)
    }

    fn compile_inner(spec: &ContractionSpec, disasm: bool) -> Result<Self, CodegenError> {
        let mut plan = spec.plan()?;
        let lens = spec.operand_lens()?;
        // Only the native kernels copy a transposed A: the Cranelift path
        // keeps reading it in place.
        let mut a_copy = None;
        if plan.native.is_some() {
            if let Some(t) = TransposedA::worth_packing(spec) {
                let copied = t.packed_spec(spec).plan()?;
                if copied.native.is_some() {
                    (plan, a_copy) = (copied, Some(t));
                }
            }
        }
        let code = match plan.native {
            #[cfg(target_arch = "x86_64")]
            Some(isa) => Code::Native(native::assemble(&plan.asm_spec(), isa)?),
            _ => {
                let isa = native_isa(spec.tuning.opt_level)?;
                let func = build_function(&plan, &isa);
                Code::Cranelift(Box::new(JitCode::compile(isa, FUNC_NAME, func, disasm)?))
            }
        };
        Ok(CompiledContraction {
            spec: spec.clone(),
            plan,
            lens,
            code,
            a_copy,
        })
    }

    /// Calls `f` with the A the kernels read: `a` itself, or its row-major
    /// copy ([`TransposedA`]) in this thread's buffer.
    // Only the native (x86-64) kernels call it.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn with_a<R>(&self, a: &[f32], f: impl FnOnce(&[f32]) -> R) -> R {
        let Some(t) = self.a_copy else {
            return f(a);
        };
        A_COPY.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < t.m * t.k {
                buf.resize(t.m * t.k, 0.0);
            }
            t.pack(a, &mut buf);
            f(&buf[..t.m * t.k])
        })
    }

    /// Whether every call copies a transposed A into row-major order
    /// before the native kernels read it (see `pack::TransposedA`).
    pub fn copies_a(&self) -> bool {
        self.a_copy.is_some()
    }

    /// The spec this kernel was compiled from.
    pub fn spec(&self) -> &ContractionSpec {
        &self.spec
    }

    /// The instruction set of the native kernels this contraction runs, or
    /// `None` when it runs Cranelift's.
    pub fn native_isa(&self) -> Option<IsaLevel> {
        self.plan.native
    }

    /// The layout of this kernel's packed B and how it reads the stored B,
    /// `(K, N, NR, transposed)`: two kernels with the same packing and
    /// `ldb` pack the same B identically, so they can share one
    /// [`PackedB`].
    pub fn packing(&self) -> (usize, usize, usize, bool) {
        let p = &self.plan;
        (p.k, p.n, p.nr, p.b_transposed)
    }

    /// Packs B (`[K, ldb]` row-major, or `[N, ldb]` when the spec says
    /// `b_transposed`) into panels for this kernel.
    pub fn pack_b(&self, b: &[f32], threads: usize) -> Result<PackedB, CodegenError> {
        let mut packed = PackedB {
            data: Vec::new(),
            skew: 0,
            k: 0,
            n: 0,
            nr: 0,
        };
        self.pack_b_into(b, threads, &mut packed)?;
        Ok(packed)
    }

    /// Like [`Self::pack_b`], but reuses `out`'s allocation: a B that changes
    /// on every call (a gradient, a transposed activation, a weight during
    /// training) is repacked without a fresh allocation, whose page faults
    /// cost as much as the packing itself at a few hundred KiB.
    pub fn pack_b_into(
        &self,
        b: &[f32],
        threads: usize,
        out: &mut PackedB,
    ) -> Result<(), CodegenError> {
        check_len("b", self.lens.b, b.len())?;
        let p = &self.plan;
        if p.b_layout == BLayout::RowMajor {
            return Err(invalid(
                "this kernel reads B row-major; it takes no packed B",
            ));
        }
        let panel_len = p.panel_len();
        // Every element is written below (padding columns as zeros), so a
        // reused buffer needs no clearing.
        (out.k, out.n, out.nr) = (p.k, p.n, p.nr);
        let data = out.resize_aligned(p.panels * panel_len);
        let threads = threads.clamp(1, p.panels);
        let ldb = self.spec.ldb;
        if threads == 1 {
            pack_panels(p, b, ldb, 0, data);
        } else {
            let per = p.panels.div_ceil(threads);
            let chunks: Vec<std::sync::Mutex<&mut [f32]>> = data
                .chunks_mut(per * panel_len)
                .map(std::sync::Mutex::new)
                .collect();
            parallel_for(chunks.len(), &|t| {
                if let Ok(mut chunk) = chunks[t].lock() {
                    pack_panels(p, b, ldb, t * per, &mut chunk);
                }
            })
            .map_err(CodegenError::Thread)?;
        }
        Ok(())
    }

    /// Computes `C (+)= act(A x B + bias)` on `threads` threads (B is packed
    /// on the fly, unless the kernel reads it row-major; use
    /// [`Self::pack_b`] + [`Self::run_packed`] to reuse a packing).
    pub fn run(
        &self,
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
        c: &mut [f32],
        threads: usize,
    ) -> Result<(), CodegenError> {
        self.check_operands(a, bias, c)?;
        if self.plan.b_layout == BLayout::RowMajor {
            check_len("b", self.lens.b, b.len())?;
            return self.launch(a, b, bias, c, threads);
        }
        #[cfg(target_arch = "x86_64")]
        if let Code::Native(k) = &self.code {
            if driver::packs_per_panel(&self.plan, threads) {
                check_len("b", self.lens.b, b.len())?;
                let b = driver::BSource::PerPanel {
                    b,
                    ldb: self.spec.ldb,
                };
                return self.with_a(a, |a| driver::launch(&self.plan, k, a, b, bias, c, threads));
            }
        }
        let packed = self.pack_b(b, threads)?;
        self.launch(a, packed.as_slice(), bias, c, threads)
    }

    /// Whether [`Self::run`] packs B panel by panel as the loop nest
    /// reaches it, on `threads` threads, rather than all of B before it:
    /// then handing `run` the unpacked B beats [`Self::pack_b`] +
    /// [`Self::run_packed`] unless the packing is reused by later calls.
    pub fn packs_per_panel(&self, threads: usize) -> bool {
        match &self.code {
            #[cfg(target_arch = "x86_64")]
            Code::Native(_) => driver::packs_per_panel(&self.plan, threads),
            _ => {
                let _ = threads;
                false
            }
        }
    }

    /// Like [`Self::run`] with B already packed by this kernel's `pack_b`.
    pub fn run_packed(
        &self,
        a: &[f32],
        b: &PackedB,
        bias: Option<&[f32]>,
        c: &mut [f32],
        threads: usize,
    ) -> Result<(), CodegenError> {
        self.check_operands(a, bias, c)?;
        let p = &self.plan;
        if p.b_layout == BLayout::RowMajor {
            return Err(invalid(
                "this kernel reads B row-major; pass B itself to `run`, not a packing",
            ));
        }
        if b.k != p.k
            || b.n != p.n
            || b.nr != p.nr
            || b.as_slice().len() != p.panels * p.panel_len()
        {
            return Err(CodegenError::PackedMismatch(format!(
                "packed for K={} N={} NR={}, kernel has K={} N={} NR={}",
                b.k, b.n, b.nr, p.k, p.n, p.nr
            )));
        }
        self.launch(a, b.as_slice(), bias, c, threads)
    }

    fn check_operands(
        &self,
        a: &[f32],
        bias: Option<&[f32]>,
        c: &[f32],
    ) -> Result<(), CodegenError> {
        check_len("a", self.lens.a, a.len())?;
        check_len("c", self.lens.c, c.len())?;
        match (self.plan.bias, bias) {
            (true, Some(bias)) => check_len("bias", self.plan.n, bias.len()),
            (false, None) => Ok(()),
            (compiled, supplied) => Err(CodegenError::BiasMismatch {
                compiled,
                supplied: supplied.is_some(),
            }),
        }
    }

    /// Splits the work and calls the kernel; operands are already checked.
    fn launch(
        &self,
        a: &[f32],
        packed: &[f32],
        bias: Option<&[f32]>,
        c: &mut [f32],
        threads: usize,
    ) -> Result<(), CodegenError> {
        let code = match &self.code {
            Code::Cranelift(code) => code,
            #[cfg(target_arch = "x86_64")]
            Code::Native(k) => {
                let b = driver::BSource::Ready(packed);
                return self.with_a(a, |a| driver::launch(&self.plan, k, a, b, bias, c, threads));
            }
        };
        // SAFETY: `code` was compiled from a function with exactly this
        // signature under the host's default (C) calling convention.
        let f: KernelFn = unsafe { std::mem::transmute(code.ptr()) };
        let a = SendPtr(a.as_ptr() as *mut f32);
        let packed = SendPtr(packed.as_ptr() as *mut f32);
        let bias = SendPtr(bias.map_or(std::ptr::null(), |b| b.as_ptr()) as *mut f32);
        let cp = SendPtr(c.as_mut_ptr());
        // SAFETY (both calls below): the lengths of a, bias and c were checked
        // against the maxima of every address the kernel forms, `packed` has
        // the layout the kernel was compiled for (panels of the checked
        // length, or a row-major B checked against `lens.b`, whose panels
        // all lie within a row as N is a multiple of NR), and each call writes
        // only the rows `m` and panels in its own ranges, which are disjoint
        // between threads.
        let call = move |rows: Range<usize>, panels: Range<usize>| unsafe {
            f(
                a.get(),
                packed.get(),
                bias.get(),
                cp.get(),
                rows.start,
                rows.end,
                panels.start,
                panels.end,
            )
        };
        let p = &self.plan;
        let work = split_work(p, threads);
        if work.len() <= 1 {
            call(0..p.m, 0..p.panels);
            return Ok(());
        }
        parallel_for(work.len(), &|t| call(work[t].0.clone(), work[t].1.clone()))
            .map_err(CodegenError::Thread)
    }
}

/// A raw pointer that may cross into scoped worker threads.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(*mut f32);

// SAFETY: the pointee buffers outlive the thread scope and the kernels
// partition the writes (see `launch`).
unsafe impl Send for SendPtr {}
// SAFETY: as above; workers only read the pointer value.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Accessor so closures capture the whole (Send) wrapper, not the field.
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

fn check_len(name: &'static str, needed: usize, got: usize) -> Result<(), CodegenError> {
    if got < needed {
        Err(CodegenError::BufferTooSmall { name, needed, got })
    } else {
        Ok(())
    }
}

/// The Cranelift IR text of the kernel generated for `spec` on the
/// Cranelift path (native kernels have no IR; [`disassembly`] describes them).
pub fn clif_text(spec: &ContractionSpec) -> Result<String, CodegenError> {
    let mut spec = spec.clone();
    spec.tuning.kernels = KernelPath::Cranelift;
    let plan = spec.plan()?;
    let isa = native_isa(spec.tuning.opt_level)?;
    Ok(build_function(&plan, &isa).display().to_string())
}

/// The machine-code disassembly (Cranelift VCode) of the kernel for `spec`;
/// useful for checking that a tile shape does not spill.
pub fn disassembly(spec: &ContractionSpec) -> Result<String, CodegenError> {
    let compiled = CompiledContraction::compile_inner(spec, true)?;
    Ok(match &compiled.code {
        Code::Cranelift(code) => code.disasm().unwrap_or_default().to_string(),
        #[cfg(target_arch = "x86_64")]
        Code::Native(k) => format!(
            "native {:?} micro-kernels, {} bytes of machine code\n",
            compiled.plan.native,
            k.code_len()
        ),
    })
}

/// Whether the host ISA executes `fma.f32x4` natively (otherwise the kernels
/// still work, through a scalar libcall per lane, but slowly).
pub fn host_has_fma() -> bool {
    native_isa(OptLevel::None).is_ok_and(|isa| isa_flag(&isa, "has_fma"))
}
