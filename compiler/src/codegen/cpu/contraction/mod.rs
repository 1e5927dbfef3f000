//! JIT code generator for contraction kernels: a strided, register-tiled
//! SGEMM that covers dense layers and valid NHWC convolution (implicit GEMM)
//! with a fused bias + activation epilogue.
//!
//! # Index space
//!
//! Output row `m` is decomposed as `m = (m2 * M1 + m1) * M0 + m0`; the
//! reduction index as `k = (k1 * K2 + k2) * K3 + k3`.  Then
//!
//! ```text
//! A[m, k]  = a[m2*sa2 + m1*sa1 + m0*sa0 + k1*sk1 + k2*sk2 + k3]
//! B[k, n]  = b[k*ldb + n]
//! C[m, n]  = c[m*ldc + n]
//! C[m, n] (+)= act(sum_k A[m, k] * B[k, n] + bias[n])
//! ```
//!
//! Dense `A[m*K + k]` is `M = (1, 1, M)` with `sa0 = K`.  A stride-`S`
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

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, Function, InstBuilder, MemFlagsData, Signature, Value,
};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};

use super::jit::{isa_flag, native_isa, JitCode, OptLevel};
use super::parallel::parallel_for;
use super::vmath;
use super::CodegenError;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod driver;

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
    /// Run-time assembled native micro-kernels where the host has an
    /// [`IsaLevel`] and the spec is one they handle (no sigmoid / tanh
    /// epilogue; row-major B only with `N` a multiple of 16), else
    /// Cranelift. `mr`, `nr_vecs` and `order`-independent knobs of
    /// [`Tuning`] are then replaced by the native tile (6 x 16).
    #[default]
    Auto,
    /// Always the Cranelift kernels (`f32x4`); the differential tests run
    /// both paths.
    Cranelift,
}

/// Instruction-set levels with run-time assembled kernels. Only AVX2 + FMA
/// is implemented; AVX-512 (a `zmm` tile, e.g. 14 x 32) would be another
/// variant with its own emitter and tile width behind the same driver,
/// enabled once a machine can test it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IsaLevel {
    /// 256-bit `ymm` registers and `vfmadd231ps` (x86-64 with AVX2 + FMA).
    Avx2Fma,
}

impl IsaLevel {
    /// The best level the host supports, if any (never on non-x86-64).
    pub fn detect() -> Option<IsaLevel> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
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
    /// Reduction extents `[K1, K2, K3]`; `k3` has A stride 1.
    pub k_dims: [usize; 3],
    /// A strides of `k1, k2`.
    pub k_strides: [usize; 2],
    /// Row stride of B (`>= n`).
    pub ldb: usize,
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
            k_strides: [0, 0],
            ldb: n,
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
            k_strides: [row, g.in_c],
            ldb: g.out_c,
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

    /// Checks the spec and derives everything code generation needs,
    /// choosing the native kernels where [`KernelPath::Auto`] allows.
    fn plan(&self) -> Result<Plan, CodegenError> {
        let cranelift = self.plan_tiled(self.tuning.mr, self.tuning.nr_vecs)?;
        if self.tuning.kernels == KernelPath::Cranelift {
            return Ok(cranelift);
        }
        Ok(self.plan_native().unwrap_or(cranelift))
    }

    /// The plan for the host's native kernels, if it has some and they can
    /// compute this spec.
    #[cfg(target_arch = "x86_64")]
    fn plan_native(&self) -> Option<Plan> {
        let isa = IsaLevel::detect()?;
        let mut plan = self.plan_tiled(avx2::MR, avx2::NR / 4).ok()?;
        if !avx2::supports(&plan.asm_spec()) {
            return None;
        }
        plan.native = Some(isa);
        Some(plan)
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn plan_native(&self) -> Option<Plan> {
        None
    }

    /// The plan for register tiles of `mr` rows by `nr_vecs` `f32x4`
    /// vectors (Cranelift's kernels; the native ones use the same plan with
    /// their tile).
    fn plan_tiled(&self, mr: usize, nr_vecs: usize) -> Result<Plan, CodegenError> {
        let t = &self.tuning;
        if !(1..=16).contains(&t.mr)
            || !(1..=4).contains(&t.nr_vecs)
            || !(1..=16).contains(&t.k_unroll)
        {
            return Err(invalid(format!(
                "tuning out of range: mr={} (1..=16), nr_vecs={} (1..=4), k_unroll={} (1..=16)",
                t.mr, t.nr_vecs, t.k_unroll
            )));
        }
        if self.ldb < self.n || self.ldc < self.n {
            return Err(invalid(format!(
                "ldb={} and ldc={} must be at least n={}",
                self.ldb, self.ldc, self.n
            )));
        }
        if let Epilogue::LeakyRelu(alpha) = self.epilogue {
            if !alpha.is_finite() {
                return Err(invalid(format!("leaky_relu alpha {alpha} is not finite")));
            }
        }
        let m = self.m().ok_or_else(overflow)?;
        let k = self.k().ok_or_else(overflow)?;
        let lens = self.operand_lens()?;
        // Every byte offset the kernel forms must be a valid `i64`, and the
        // largest one is below 4 * max(len).
        let limit = (i64::MAX / 8) as usize;
        let nr = 4 * nr_vecs;
        let panels = self.n.div_ceil(nr);
        let packed = panels
            .checked_mul(nr)
            .and_then(|x| x.checked_mul(k))
            .ok_or_else(overflow)?;
        if lens.a > limit || lens.b > limit || lens.c > limit || packed > limit {
            return Err(overflow());
        }
        let bytes = |x: usize| (x as i64) * 4;
        if t.b_layout == BLayout::RowMajor && !self.n.is_multiple_of(nr) {
            return Err(invalid(format!(
                "row-major B needs N ({}) to be a multiple of NR ({nr})",
                self.n
            )));
        }
        if t.b_layout == BLayout::RowMajor
            && bytes(self.ldb).saturating_mul(t.k_unroll as i64) > i32::MAX as i64
        {
            // Unrolled steps address B with i32 immediates.
            return Err(overflow());
        }
        let (b_panel_bytes, b_step_bytes) = match t.b_layout {
            BLayout::Packed => (bytes(packed / panels.max(1)), bytes(nr)),
            BLayout::RowMajor => (bytes(nr), bytes(self.ldb)),
        };

        // Merge row dimensions that are affine in each other (dense layers
        // collapse to one), innermost first.
        let mut m_dims: Vec<(usize, i64)> = Vec::new();
        for l in (0..3).rev() {
            let (e, s) = (self.m_dims[l], bytes(self.m_strides[l]));
            if e == 1 {
                continue;
            }
            match m_dims.last_mut() {
                Some(last) if s == last.1 * last.0 as i64 => last.0 *= e,
                _ => m_dims.push((e, s)),
            }
        }
        if m_dims.is_empty() {
            m_dims.push((1, 0));
        }

        // Fold reduction dimensions into the contiguous inner run while they
        // continue it (NHWC: `kw` and `c` always do).
        let mut k_inner = self.k_dims[2];
        let mut k_outer: Vec<(usize, i64)> = Vec::new();
        for l in (0..2).rev() {
            let (e, s) = (self.k_dims[l], self.k_strides[l]);
            if e == 1 {
                continue;
            }
            if k_outer.is_empty() && s == k_inner {
                k_inner *= e;
            } else {
                k_outer.push((e, bytes(s)));
            }
        }
        k_outer.reverse();

        Ok(Plan {
            m,
            m_dims,
            n: self.n,
            k,
            k_outer,
            k_inner,
            ldc_bytes: bytes(self.ldc),
            mr,
            nrv: nr_vecs,
            nr,
            unroll: t.k_unroll.min(k_inner),
            panels,
            full_panels: self.n / nr,
            tail_cols: self.n % nr,
            bias: self.bias,
            accumulate: self.accumulate,
            epilogue: self.epilogue,
            order: match t.order {
                LoopOrder::Auto if packed * 4 <= ROW_OUTER_MAX_B_BYTES => LoopOrder::RowOuter,
                LoopOrder::Auto => LoopOrder::PanelOuter,
                o => o,
            },
            broadcast_per_fma: t.broadcast_per_fma,
            b_layout: t.b_layout,
            b_panel_bytes,
            b_step_bytes,
            native: None,
        })
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
            .and_then(|x| x.checked_add(span(&self.k_dims[..2], &self.k_strides)?))
            .and_then(|x| x.checked_add(self.k_dims[2]))
            .ok_or_else(overflow)?;
        let k = self.k().ok_or_else(overflow)?;
        let m = self.m().ok_or_else(overflow)?;
        let b = (k - 1)
            .checked_mul(self.ldb)
            .and_then(|x| x.checked_add(self.n))
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
    /// B: `(K - 1) * ldb + n`.
    pub b: usize,
    /// C: `(M - 1) * ldc + n`.
    pub c: usize,
}

/// A validated, normalized spec.
#[derive(Clone, Debug)]
struct Plan {
    m: usize,
    /// `(extent, A stride in bytes)`, innermost first; never empty.
    m_dims: Vec<(usize, i64)>,
    n: usize,
    k: usize,
    /// Non-contiguous reduction loops `(extent, A stride in bytes)`,
    /// outermost first.
    k_outer: Vec<(usize, i64)>,
    /// Length of the contiguous innermost reduction run.
    k_inner: usize,
    ldc_bytes: i64,
    mr: usize,
    nrv: usize,
    nr: usize,
    unroll: usize,
    panels: usize,
    full_panels: usize,
    tail_cols: usize,
    bias: bool,
    accumulate: bool,
    epilogue: Epilogue,
    order: LoopOrder,
    broadcast_per_fma: bool,
    b_layout: BLayout,
    /// Byte distance between the starts of two neighbouring B panels.
    b_panel_bytes: i64,
    /// Byte distance between two reduction steps within a B panel.
    b_step_bytes: i64,
    /// The native kernels' instruction set, or `None` for Cranelift.
    native: Option<IsaLevel>,
}

impl Plan {
    fn panel_len(&self) -> usize {
        self.k * self.nr
    }

    fn m_tiles(&self) -> usize {
        self.m.div_ceil(self.mr)
    }

    /// What the native kernels are specialized on.
    #[cfg(target_arch = "x86_64")]
    fn asm_spec(&self) -> avx2::AsmSpec {
        avx2::AsmSpec {
            k_outer: self.k_outer.clone(),
            k_inner: self.k_inner,
            unroll: self.unroll,
            b_step: self.b_step_bytes,
            bias: self.bias,
            epilogue: self.epilogue,
            accumulate: self.accumulate,
        }
    }
}

/// `fn(a, packed_b, bias, c, m_begin, m_end, panel_begin, panel_end)`.
type KernelFn =
    unsafe extern "C" fn(*const f32, *const f32, *const f32, *mut f32, usize, usize, usize, usize);

/// B repacked into the zero-padded column panels a kernel streams; pack once
/// and reuse it when B is a weight that does not change between calls.
#[derive(Clone, Debug)]
pub struct PackedB {
    data: Vec<f32>,
    k: usize,
    n: usize,
    nr: usize,
}

impl PackedB {
    /// The packed elements, panel by panel.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }
}

/// A compiled contraction kernel, callable from any number of threads.
pub struct CompiledContraction {
    spec: ContractionSpec,
    plan: Plan,
    lens: OperandLens,
    code: Code,
}

/// The machine code of a contraction.
enum Code {
    /// One Cranelift function that walks its share of rows and panels.
    Cranelift(Box<JitCode>),
    /// Native micro-kernels, one per tile height; [`driver`] walks the
    /// tiles and calls them.
    #[cfg(target_arch = "x86_64")]
    Native(avx2::AsmKernels),
}

impl std::fmt::Debug for CompiledContraction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledContraction")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// Largest packed B (bytes) for which `LoopOrder::Auto` picks `RowOuter`:
/// B is re-streamed from L2 for every row tile, so it must stay resident
/// (L2 is 1-2 MiB on current x86 cores).
const ROW_OUTER_MAX_B_BYTES: usize = 512 * 1024;

const FUNC_NAME: &str = "netc_contraction";

impl CompiledContraction {
    /// Validates `spec` and JIT-compiles its kernel for the host CPU.
    pub fn compile(spec: &ContractionSpec) -> Result<Self, CodegenError> {
        Self::compile_inner(spec, false)
    }

    fn compile_inner(spec: &ContractionSpec, disasm: bool) -> Result<Self, CodegenError> {
        let plan = spec.plan()?;
        let lens = spec.operand_lens()?;
        let code = match plan.native {
            #[cfg(target_arch = "x86_64")]
            Some(isa) => Code::Native(avx2::assemble(&plan.asm_spec(), isa)?),
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
        })
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

    /// The layout of this kernel's packed B, `(K, N, NR)`: two kernels with
    /// the same layout and `ldb` pack the same B identically, so they can
    /// share one [`PackedB`].
    pub fn packing(&self) -> (usize, usize, usize) {
        (self.plan.k, self.plan.n, self.plan.nr)
    }

    /// Packs B (`[K, ldb]` row-major) into panels for this kernel.
    pub fn pack_b(&self, b: &[f32], threads: usize) -> Result<PackedB, CodegenError> {
        let mut packed = PackedB {
            data: Vec::new(),
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
        out.data.resize(p.panels * panel_len, 0.0);
        (out.k, out.n, out.nr) = (p.k, p.n, p.nr);
        let data = &mut out.data;
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
        let packed = self.pack_b(b, threads)?;
        self.launch(a, &packed.data, bias, c, threads)
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
        if b.k != p.k || b.n != p.n || b.nr != p.nr || b.data.len() != p.panels * p.panel_len() {
            return Err(CodegenError::PackedMismatch(format!(
                "packed for K={} N={} NR={}, kernel has K={} N={} NR={}",
                b.k, b.n, b.nr, p.k, p.n, p.nr
            )));
        }
        self.launch(a, &b.data, bias, c, threads)
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
                return driver::launch(&self.plan, k, a, packed, bias, c, threads);
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

/// Packs the panels `first..` that `dst` holds: for every panel, `NR`
/// floats per reduction step, zero-filling columns past `N`.
///
/// Works in blocks of `PACK_ROWS` rows of B: within a block every panel
/// receives whole cache lines (`PACK_ROWS * NR` floats), and the block's rows
/// are read left to right as a few sequential streams.  Walking a whole panel
/// at a time reads B with a stride of `ldb`, and scattering one row over all
/// panels writes with a stride of `K * NR`; for power-of-two layer widths
/// both map every access to the same L1 set.
fn pack_panels(p: &Plan, b: &[f32], ldb: usize, first: usize, dst: &mut [f32]) {
    match p.nr {
        4 => pack_panels_nr::<4>(p, b, ldb, first, dst),
        8 => pack_panels_nr::<8>(p, b, ldb, first, dst),
        12 => pack_panels_nr::<12>(p, b, ldb, first, dst),
        _ => pack_panels_nr::<16>(p, b, ldb, first, dst),
    }
}

const PACK_ROWS: usize = 8;

/// `pack_panels` with `NR` known, so each copy is a fixed-size move rather
/// than a `memcpy` call.
fn pack_panels_nr<const NR: usize>(p: &Plan, b: &[f32], ldb: usize, first: usize, dst: &mut [f32]) {
    let panel_len = p.k * NR;
    for k0 in (0..p.k).step_by(PACK_ROWS) {
        let k1 = (k0 + PACK_ROWS).min(p.k);
        for (i, panel) in dst.chunks_exact_mut(panel_len).enumerate() {
            let n0 = (first + i) * NR;
            let cols = NR.min(p.n - n0);
            for k in k0..k1 {
                let d = &mut panel[k * NR..(k + 1) * NR];
                let src = &b[k * ldb + n0..];
                if cols == NR {
                    d.copy_from_slice(&src[..NR]);
                } else {
                    d[..cols].copy_from_slice(&src[..cols]);
                    d[cols..].fill(0.0);
                }
            }
        }
    }
}

/// Splits rows (in whole tiles) or panels across threads, whichever divides
/// more evenly; on a near tie, the split that makes the threads share the
/// smaller operand (A when splitting panels, B when splitting rows), so each
/// thread streams only its part of the larger one.
fn split_work(p: &Plan, threads: usize) -> Vec<(Range<usize>, Range<usize>)> {
    let threads = threads.max(1);
    let balance = |units: usize| {
        let t = threads.min(units);
        units as f64 / (threads * units.div_ceil(t)) as f64
    };
    let chunks = |units: usize| -> Vec<Range<usize>> {
        let t = threads.min(units);
        (0..t).map(|i| units * i / t..units * (i + 1) / t).collect()
    };
    let tiles = p.m_tiles();
    let (rows, cols) = (balance(tiles), balance(p.panels));
    let split_rows = if (rows - cols).abs() < 0.05 {
        // A holds about m*k elements, packed B panels*nr*k.
        p.m >= p.panels * p.nr
    } else {
        rows > cols
    };
    if split_rows {
        chunks(tiles)
            .into_iter()
            .map(|r| (r.start * p.mr..(r.end * p.mr).min(p.m), 0..p.panels))
            .collect()
    } else {
        chunks(p.panels).into_iter().map(|r| (0..p.m, r)).collect()
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

fn build_function(plan: &Plan, isa: &OwnedTargetIsa) -> Function {
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
        let koff = self.iconst(0);
        self.k_level(0, koff, &rowptrs, &accs, bptr);
        let vals: Vec<Vec<Value>> = accs
            .iter()
            .map(|row| row.iter().map(|&v| self.b.use_var(v)).collect())
            .collect();
        self.epilogue(prm, panel, mt, &vals);
    }

    /// Reduction loop level `level` (outer, non-contiguous) or the inner run.
    fn k_level(
        &mut self,
        level: usize,
        koff: Value,
        rowptrs: &[Value],
        accs: &[Vec<Variable>],
        bptr: Variable,
    ) {
        let Some(&(extent, stride)) = self.p.k_outer.get(level) else {
            let bases: Vec<Value> = rowptrs
                .iter()
                .map(|&r| self.b.ins().iadd(r, koff))
                .collect();
            self.k_inner(&bases, accs, bptr);
            return;
        };
        // Count down so zero strides cannot confuse the exit test.
        let count = self.iconst(extent as i64);
        let count = self.var(self.ptr, count);
        let off = self.var(self.ptr, koff);
        self.top_tested_loop(
            |g| g.b.use_var(count),
            |g| {
                let o = g.b.use_var(off);
                g.k_level(level + 1, o, rowptrs, accs, bptr);
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

    /// The contiguous reduction run: `k_inner` steps, unrolled.
    fn k_inner(&mut self, bases: &[Value], accs: &[Vec<Variable>], bptr: Variable) {
        let p = self.p;
        let u = p.unroll;
        let iters = p.k_inner / u;
        let rem = p.k_inner % u;
        let step_bytes = p.b_step_bytes;
        if iters == 1 {
            let bp = self.b.use_var(bptr);
            self.k_steps(bases, None, 0, u, bp, accs);
            let bp = self.b.ins().iadd_imm_s(bp, u as i64 * step_bytes);
            self.b.def_var(bptr, bp);
        } else if iters > 1 {
            let zero = self.iconst(0);
            let kv = self.var(self.ptr, zero);
            let limit = 4 * (iters * u) as i64;
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
                    let k = g.b.ins().iadd_imm_s(k, 4 * u as i64);
                    g.b.def_var(kv, k);
                },
            );
        }
        if rem > 0 {
            // Rebase rather than use large immediates: load offsets are i32.
            let done = (4 * iters * u) as i64;
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
                let off = ((first + s) * 4) as i32;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (row, panel) cell is covered by exactly one work item, and row
    /// ranges start on tile boundaries (the kernel's tail logic assumes it).
    #[test]
    fn split_work_partitions_rows_and_panels() {
        for (m, n) in [(1, 1), (7, 5), (64, 1024), (3136, 64), (9, 300), (100, 4)] {
            for threads in 1..=5 {
                let plan = ContractionSpec::dense(m, 3, n).plan().expect("plan");
                let mut cover = vec![0u8; plan.m * plan.panels];
                let work = split_work(&plan, threads);
                assert!(!work.is_empty() && work.len() <= threads);
                for (rows, panels) in work {
                    assert_eq!(rows.start % plan.mr, 0);
                    for r in rows {
                        for p in panels.clone() {
                            cover[r * plan.panels + p] += 1;
                        }
                    }
                }
                assert!(
                    cover.iter().all(|&c| c == 1),
                    "m={m} n={n} threads={threads}"
                );
            }
        }
    }

    #[test]
    fn reduction_dims_fold_into_contiguous_runs() {
        let conv = ContractionSpec::conv2d_nhwc(&Conv2dGeometry {
            batch: 2,
            in_h: 10,
            in_w: 10,
            in_c: 3,
            kernel_h: 3,
            kernel_w: 3,
            out_c: 4,
            stride_h: 1,
            stride_w: 2,
        })
        .expect("conv");
        let plan = conv.plan().expect("plan");
        // kw x c is one contiguous run of 9; kh stays a loop with stride Wp*C.
        assert_eq!(plan.k_inner, 9);
        assert_eq!(plan.k_outer, vec![(3, 30 * 4)]);
        // Rows: ow (stride S*C), oh, batch; none merge.
        assert_eq!(plan.m_dims, vec![(4, 6 * 4), (8, 30 * 4), (2, 300 * 4)]);
        let dense = ContractionSpec::dense(5, 7, 3).plan().expect("plan");
        assert_eq!((dense.k_inner, dense.k_outer.len()), (7, 0));
        assert_eq!(dense.m_dims, vec![(5, 28)]);
    }
}
