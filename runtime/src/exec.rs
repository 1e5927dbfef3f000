//! The CPU executor: a lowered program compiled to machine code, its
//! buffers allocated once (temporaries in one arena laid out by the memory
//! plan), run on any number of threads.

use crate::tensor::Tensor;
use crate::weights::{Weights, WeightsError};
use netc_compiler::codegen::cpu::contraction::clif_text;
use netc_compiler::codegen::cpu::contraction::{
    BLayout, CompiledContraction, ContractionSpec, Epilogue as JitEpilogue, KernelPath, PackedB,
    Tuning,
};
use netc_compiler::codegen::cpu::loops::{compile_clif_text, CompiledLoop};
use netc_compiler::codegen::cpu::parallel::parallel_for;
use netc_compiler::codegen::cpu::CodegenError;
use netc_compiler::kernel::plan::{plan, MemoryPlan};
use netc_compiler::kernel::{
    BufKind, Contraction, Epilogue, KernelBody, LoopKernel, Program, Stmt,
};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a program could not be compiled or run.
#[derive(Debug, Error)]
pub enum ExecError {
    /// Code generation or a kernel run failed (a netc bug, or an
    /// unsupported host).
    #[error("kernel `{kernel}`: {source}")]
    Codegen {
        /// The kernel.
        kernel: String,
        /// What went wrong (boxed: the kernel-checking variants are large,
        /// and every `Result` of the runtime would carry their size).
        #[source]
        source: Box<CodegenError>,
    },
    /// A contraction's output is one of its operands; the kernels read
    /// their operands while writing the output, so they must not alias.
    #[error("kernel `{kernel}`: a contraction may not write one of its operands")]
    AliasedOperands {
        /// The kernel.
        kernel: String,
    },
    /// An input was missing or had the wrong shape.
    #[error("{0}")]
    Input(String),
    /// The weights do not fit the model.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The GPU could not be used or a GPU operation failed.
    #[error(transparent)]
    Cuda(#[from] crate::cuda::CudaError),
    /// The program's buffers do not fit in host memory.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
}

// One per kernel, built once per program: the size difference between
// the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Compiled {
    Loop {
        k: Box<CompiledLoop>,
        /// Iterations × body size, to decide whether threads pay off.
        work: usize,
    },
    Contraction {
        k: Box<CompiledContraction>,
        ir: Contraction,
        /// Index into `Executable::packs` of the slot holding B packed;
        /// `None` when the kernel reads B in place.
        pack: Option<usize>,
    },
}

/// B of one or more contractions, packed into panels. Kernels whose B is the
/// same parameter packed the same way share one slot (the ten `h·U`
/// products of an unrolled LSTM pack `U` once); any other B (a temporary)
/// has a slot of its own that is repacked on every call into the same
/// allocation.
struct PackSlot {
    /// Whether B is a parameter, so the packing stays valid until
    /// `params_version` changes.
    param: bool,
    /// Whether a packing can be reused by later runs: B is a parameter no
    /// kernel of the program writes (inference). A training step updates
    /// its parameters, so their packings serve one run, and a kernel that
    /// packs panel by panel as it goes is handed the unpacked B instead.
    reusable: bool,
    /// The `params_version` the packing was made for.
    version: Option<u64>,
    packed: Option<PackedB>,
}

/// A compiled program with its memory.
pub struct Executable {
    program: Program,
    plan: MemoryPlan,
    kernels: Vec<Compiled>,
    packs: Vec<PackSlot>,
    /// Storage of inputs and parameters (empty for temporaries).
    own: Vec<Vec<f32>>,
    arena: Vec<f32>,
    threads: usize,
    /// Bumped whenever a parameter changes, invalidating packed weights.
    params_version: u64,
    /// Whether each kernel writes a parameter (a training step's updates):
    /// after it runs, packed copies of parameters are stale.
    writes_params: Vec<bool>,
    /// Time spent in each kernel over all runs since the last reset.
    pub timings: Vec<Duration>,
}

/// Loop kernels with fewer statement executions than this run on one
/// thread. Handing a piece to the worker pool costs well under a
/// microsecond (`cargo bench --bench kernels -- split`: about 0.2 µs), but
/// the two halves must also each be worth a few microseconds of cache
/// traffic.
const PARALLEL_WORK: usize = 1 << 12;

/// Contractions with fewer floating-point operations than this run on one
/// thread (about 4 µs of work on one core).
const PARALLEL_FLOPS: f64 = 2.5e5;

fn loop_work(body: &[Stmt]) -> usize {
    body.iter()
        .map(|s| match s {
            Stmt::Loop { extent, body, .. } => extent.saturating_mul(loop_work(body).max(1)),
            Stmt::IfInBounds { body, .. } => loop_work(body),
            _ => 1,
        })
        .fold(0usize, |a, b| a.saturating_add(b))
}

fn epilogue(e: Epilogue) -> JitEpilogue {
    match e {
        Epilogue::None => JitEpilogue::None,
        Epilogue::Relu => JitEpilogue::Relu,
        Epilogue::LeakyRelu(a) => JitEpilogue::LeakyRelu(a),
        Epilogue::Sigmoid => JitEpilogue::Sigmoid,
        Epilogue::Tanh => JitEpilogue::Tanh,
    }
}

/// Whether a contraction whose B changes on every run (a temporary) reads
/// it in place rather than packing it first. Packing costs a pass over B;
/// reading in place walks each panel with a stride of `ldb`, which pays off
/// when the walk is short (K ≤ 512) or B is narrow (N ≤ 64, so the panels
/// share cache lines), unless the stride is a multiple of 2 KiB: then the
/// walk's rows fall into two or fewer L1 sets and evict each other.
/// Measured on 2 threads, in place against packing on every call: the conv
/// weight gradient 9×43264×32 (ldb 32) 1.66× faster, an LSTM's dz·Uᵀ
/// 32×512×128 1.26×, 64×128×5408 1.09×; 64×5408×128 0.66×, 64×1024×1024
/// 0.46× and an LSTM's dU 128×32×512 (ldb 512) 0.6×, so those keep packing.
/// At most 12 rows are one register tile (see [`contraction_spec`]), which
/// walks each panel once: a packing would be read back once, so B is read
/// in place whatever its stride (an LSTM's input-weight gradient
/// 1×320×512, ldb 512: 70 → 38 µs on one thread).
fn reads_b_row_major(c: &Contraction) -> bool {
    let k: usize = c.k_dims.iter().product();
    let one_tile = c.m() <= 12;
    // A transposed B is transposed by its packing.
    !c.b_transposed
        && c.n % 4 == 0
        && (one_tile || ((c.ldb * 4) % 2048 != 0 && (k <= 512 || c.n <= 64)))
}

/// The JIT spec the executor compiles for contraction `c` of `program`:
/// [`contraction_spec`], reading B in place where `reads_b_row_major`
/// says so (B is a temporary). Should the kernel not be able to address
/// that layout, the executor compiles [`contraction_spec`] instead.
pub fn jit_spec(program: &Program, c: &Contraction) -> ContractionSpec {
    let mut spec = contraction_spec(c);
    let param = matches!(program.buffers[c.b.0].kind, BufKind::Param(_));
    if !param && reads_b_row_major(c) {
        spec.tuning.b_layout = BLayout::RowMajor;
    }
    spec
}

/// The JIT spec of a contraction of the kernel IR.
pub fn contraction_spec(c: &Contraction) -> ContractionSpec {
    let mut tuning = Tuning::default();
    // 9 to 12 rows fit one register tile (the accumulators and row
    // pointers still fit the 16 vector registers): one pass over B instead
    // of a full tile plus a tile of 1–4 rows that streams all of B again.
    // Measured (row-major B, one thread): 9×43264×32, the course CNN's
    // conv weight gradient, 28 → 48 GFLOP/s; 10×20000×64 33 → 50.
    let m = c.m();
    if (tuning.mr + 1..=12).contains(&m) {
        tuning.mr = m;
    }
    ContractionSpec {
        m_dims: c.m_dims,
        m_strides: c.m_strides,
        n: c.n,
        k_dims: c.k_dims,
        k_strides: c.k_strides,
        ldb: c.ldb,
        b_transposed: c.b_transposed,
        ldc: c.ldc,
        bias: c.bias.is_some(),
        epilogue: epilogue(c.epilogue),
        accumulate: c.accumulate,
        tuning,
    }
}

/// Cranelift IR of every kernel of `program`, as [`Executable::compile`]
/// would generate it (each contraction with the tuning it would get).
pub fn program_clif(program: &Program) -> Result<String, CodegenError> {
    let lens: Vec<usize> = program.buffers.iter().map(|b| b.len).collect();
    let mut out = String::new();
    for k in &program.kernels {
        out.push_str(&format!("; kernel {}\n", k.name));
        let text = match &k.body {
            KernelBody::Loop(l) => compile_clif_text(l, &lens)?,
            KernelBody::Contraction(c) => {
                clif_text(&jit_spec(program, c)).or_else(|_| clif_text(&contraction_spec(c)))?
            }
        };
        out.push_str(&text);
        out.push('\n');
    }
    Ok(out)
}

impl Executable {
    /// Compiles every kernel of `program` and allocates its memory, with
    /// the native contraction and loop kernels where the host has them.
    pub fn compile(program: Program, threads: usize) -> Result<Self, ExecError> {
        Self::compile_with(program, threads, KernelPath::Auto)
    }

    /// Like [`Self::compile`], with the contractions and loop kernels built
    /// by `kernels` ([`KernelPath::Cranelift`] forces the portable kernels).
    pub fn compile_with(
        program: Program,
        threads: usize,
        kernel_path: KernelPath,
    ) -> Result<Self, ExecError> {
        let plan = plan(&program);
        check_memory(&program, &plan)?;
        let lens: Vec<usize> = program.buffers.iter().map(|b| b.len).collect();
        let mut kernels = Vec::with_capacity(program.kernels.len());
        let mut packs: Vec<PackSlot> = Vec::new();
        // (B buffer, offset, ldb, K, N, NR, transposed) of each parameter slot.
        let mut param_slots = std::collections::HashMap::new();
        // Parameters some kernel writes (a training step's updates).
        let written: std::collections::HashSet<usize> = program
            .kernels
            .iter()
            .flat_map(|k| match &k.body {
                KernelBody::Loop(l) => stores(&l.body).collect::<Vec<_>>(),
                KernelBody::Contraction(c) => vec![c.c.0],
            })
            .collect();
        for k in &program.kernels {
            let err = |source: CodegenError| ExecError::Codegen {
                kernel: k.name.clone(),
                source: Box::new(source),
            };
            kernels.push(match &k.body {
                KernelBody::Loop(l) => Compiled::Loop {
                    k: Box::new(CompiledLoop::compile_with(l, &lens, kernel_path).map_err(err)?),
                    work: loop_work(&l.body),
                },
                KernelBody::Contraction(c) => {
                    let distinct =
                        c.c.0 != c.a.0 && c.c.0 != c.b.0 && c.bias.is_none_or(|b| b.0 != c.c.0);
                    if !distinct {
                        return Err(ExecError::AliasedOperands {
                            kernel: k.name.clone(),
                        });
                    }
                    let param = matches!(program.buffers[c.b.0].kind, BufKind::Param(_));
                    let on_path = |mut spec: ContractionSpec| {
                        spec.tuning.kernels = kernel_path;
                        spec
                    };
                    let k = CompiledContraction::compile(&on_path(jit_spec(&program, c)))
                        .or_else(|_| CompiledContraction::compile(&on_path(contraction_spec(c))))
                        .map_err(err)?;
                    let key = (c.b, c.ldb, k.packing());
                    let new_slot = |packs: &mut Vec<PackSlot>| {
                        packs.push(PackSlot {
                            param,
                            reusable: param && !written.contains(&c.b.0),
                            version: None,
                            packed: None,
                        });
                        packs.len() - 1
                    };
                    let pack = if k.spec().tuning.b_layout == BLayout::RowMajor {
                        None
                    } else if param {
                        Some(
                            *param_slots
                                .entry(key)
                                .or_insert_with(|| new_slot(&mut packs)),
                        )
                    } else {
                        Some(new_slot(&mut packs))
                    };
                    Compiled::Contraction {
                        k: Box::new(k),
                        ir: c.clone(),
                        pack,
                    }
                }
            });
        }
        let own = program
            .buffers
            .iter()
            .map(|b| match b.kind {
                BufKind::Temp => Ok(Vec::new()),
                _ => crate::memory::try_filled(b.len, 0.0, &format!("buffer `{}`", b.name)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let arena = crate::memory::try_filled(
            plan.arena_len,
            0.0,
            &format!("the temporaries of model `{}`", program.name),
        )?;
        let n = kernels.len();
        let writes_params = program
            .kernels
            .iter()
            .map(|k| match &k.body {
                KernelBody::Loop(l) => {
                    stores(&l.body).any(|b| matches!(program.buffers[b].kind, BufKind::Param(_)))
                }
                KernelBody::Contraction(c) => {
                    matches!(program.buffers[c.c.0].kind, BufKind::Param(_))
                }
            })
            .collect();
        Ok(Executable {
            writes_params,
            arena,
            plan,
            kernels,
            packs,
            own,
            program,
            threads: threads.max(1),
            params_version: 0,
            timings: vec![Duration::ZERO; n],
        })
    }

    /// The program being run.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The memory plan.
    pub fn plan(&self) -> &MemoryPlan {
        &self.plan
    }

    /// Copies all parameters from `weights`, which must match exactly.
    pub fn set_weights(&mut self, weights: &Weights) -> Result<(), ExecError> {
        for (buf, t) in crate::bind::weight_buffers(&self.program, weights)? {
            self.own[buf].copy_from_slice(&t.data);
        }
        self.params_version += 1;
        Ok(())
    }

    /// Sets input `name` (shape must be `[batch, ...]` as lowered).
    pub fn set_input(&mut self, name: &str, t: &Tensor) -> Result<(), ExecError> {
        let buf = crate::bind::input_buffer(&self.program, name, t).map_err(ExecError::Input)?;
        self.own[buf].copy_from_slice(&t.data);
        Ok(())
    }

    /// Buffer `b`'s own storage (an input, parameter or state, not a
    /// temporary), to fill in place.
    pub fn own_buffer_mut(&mut self, b: usize) -> Option<&mut [f32]> {
        match self.plan.offsets.get(b)? {
            Some(_) => None,
            None => Some(&mut self.own[b]),
        }
    }

    /// Runs every kernel; outputs are then available through [`Self::output`].
    /// Kernels run with subnormals flushed to zero (see
    /// `netc_compiler::codegen::cpu::subnormal`); the caller's mode is
    /// restored on return.
    pub fn run(&mut self) -> Result<(), ExecError> {
        let _flush = netc_compiler::codegen::cpu::subnormal::FlushSubnormals::begin();
        let ptrs = self.pointers();
        for i in 0..self.kernels.len() {
            let start = Instant::now();
            self.run_kernel(i, &ptrs)?;
            self.timings[i] += start.elapsed();
            if self.writes_params[i] {
                // Packed copies of the parameters are stale from here on,
                // also for kernels later in this run.
                self.params_version += 1;
            }
        }
        Ok(())
    }

    /// Output `i` as a tensor.
    pub fn output(&self, i: usize) -> Option<Tensor> {
        let o = self.program.outputs.get(i)?;
        let data = self.buffer(o.buf).to_vec();
        Tensor::new(o.shape.clone(), data).ok()
    }

    /// Overwrites buffer `b` (a parameter or optimizer state) with `data`.
    pub fn write_buffer(&mut self, b: usize, data: &[f32]) -> Result<(), ExecError> {
        let len = self.program.buffers.get(b).map_or(0, |x| x.len);
        if data.len() != len || self.plan.offsets[b].is_some() {
            return Err(ExecError::Input(format!(
                "buffer {b} holds {len} values; {} given",
                data.len()
            )));
        }
        self.own[b].copy_from_slice(data);
        self.params_version += 1;
        Ok(())
    }

    /// Exchanges the storage of buffer `b` with buffer `ob` of `other`
    /// (both held outside the arena, of one length): how two programs of
    /// one model hand their parameters and optimizer state over without a
    /// copy.
    pub fn swap_buffer(
        &mut self,
        b: usize,
        other: &mut Executable,
        ob: usize,
    ) -> Result<(), ExecError> {
        match (
            self.plan.own_len(&self.program, b),
            other.plan.own_len(&other.program, ob),
        ) {
            (Some(x), Some(y)) if x == y => {
                std::mem::swap(&mut self.own[b], &mut other.own[ob]);
                self.params_version += 1;
                other.params_version += 1;
                Ok(())
            }
            (x, y) => Err(ExecError::Input(format!(
                "cannot exchange buffers of {x:?} and {y:?} values"
            ))),
        }
    }

    /// The contents of buffer `b`.
    pub fn buffer(&self, b: usize) -> &[f32] {
        match self.plan.offsets[b] {
            Some(off) => &self.arena[off..off + self.program.buffers[b].len],
            None => &self.own[b],
        }
    }

    fn pointers(&mut self) -> Vec<*mut f32> {
        let arena = self.arena.as_mut_ptr();
        (0..self.program.buffers.len())
            .map(|b| match self.plan.offsets[b] {
                // SAFETY: the offset plus the buffer's length lies inside the arena.
                Some(off) => unsafe { arena.add(off) },
                None => self.own[b].as_mut_ptr(),
            })
            .collect()
    }

    fn run_kernel(&mut self, i: usize, ptrs: &[*mut f32]) -> Result<(), ExecError> {
        let threads = self.threads;
        let name = &self.program.kernels[i].name;
        let bufs = &self.program.buffers;
        let version = self.params_version;
        let err = |source: CodegenError| ExecError::Codegen {
            kernel: name.clone(),
            source: Box::new(source),
        };
        match &mut self.kernels[i] {
            Compiled::Loop { k, work } => {
                let ext = k
                    .parallel_extent()
                    .filter(|e| threads > 1 && *e >= 2 * threads && *work >= PARALLEL_WORK);
                match ext {
                    None => {
                        // SAFETY: every buffer has the length the kernel was
                        // compiled (and bounds-checked) against.
                        unsafe { k.run_range(ptrs.as_ptr(), 0, usize::MAX) }
                    }
                    Some(ext) => {
                        let per = ext.div_ceil(threads);
                        let table = PtrTable(ptrs.as_ptr());
                        let k = &*k;
                        parallel_for(threads, &|t| {
                            // SAFETY: every buffer has the length the kernel
                            // was compiled against; the kernel proved its
                            // outer iterations write disjoint memory.
                            unsafe { k.run_range(table.get(), t * per, ((t + 1) * per).min(ext)) }
                        })
                        .map_err(|e| err(CodegenError::Thread(e)))?;
                    }
                }
            }
            Compiled::Contraction { k, ir, pack } => {
                let threads = if ir.flops() < PARALLEL_FLOPS {
                    1
                } else {
                    threads
                };
                let slice = |(b, off): (usize, usize)| -> &[f32] {
                    // SAFETY: buffer b has bufs[b].len elements at ptrs[b]; the
                    // operands of one kernel are distinct live buffers, which
                    // the memory plan keeps disjoint.
                    unsafe {
                        std::slice::from_raw_parts(
                            ptrs[b].add(off),
                            bufs[b].len.saturating_sub(off),
                        )
                    }
                };
                let a = slice(ir.a);
                let bias = ir.bias.map(slice);
                // SAFETY: as above; C is not one of the other operands.
                let c = unsafe {
                    std::slice::from_raw_parts_mut(
                        ptrs[ir.c.0].add(ir.c.1),
                        bufs[ir.c.0].len.saturating_sub(ir.c.1),
                    )
                };
                let Some(pack) = *pack else {
                    // Row-major B: read in place.
                    k.run(a, slice(ir.b), bias, c, threads).map_err(err)?;
                    return Ok(());
                };
                let slot = &mut self.packs[pack];
                if !slot.reusable && k.packs_per_panel(threads) {
                    k.run(a, slice(ir.b), bias, c, threads).map_err(err)?;
                    return Ok(());
                }
                let fresh = slot.param && slot.version == Some(version);
                let packed = match &mut slot.packed {
                    Some(pb) if fresh => pb,
                    Some(pb) => {
                        k.pack_b_into(slice(ir.b), threads, pb).map_err(err)?;
                        pb
                    }
                    None => slot
                        .packed
                        .insert(k.pack_b(slice(ir.b), threads).map_err(err)?),
                };
                slot.version = Some(version);
                k.run_packed(a, packed, bias, c, threads).map_err(err)?;
            }
        }
        Ok(())
    }
}

/// Refuses, before allocating, a program whose buffers (the memory plan's
/// peak) exceed the memory available, naming its largest buffer.
fn check_memory(program: &Program, plan: &MemoryPlan) -> Result<(), ExecError> {
    let parts: Vec<(String, u64)> = program
        .buffers
        .iter()
        .map(|b| {
            let what = format!("`{}` of {} floats", b.name, b.len);
            (what, crate::memory::f32_bytes(b.len))
        })
        .collect();
    let what = format!(
        "the buffers of model `{}` at batch {}",
        program.name, program.batch
    );
    let needed = plan.peak_bytes(program) as u64;
    crate::memory::check_fits(&what, needed, &parts)?;
    Ok(())
}

/// Buffers stored to by a loop body.
fn stores(body: &[Stmt]) -> impl Iterator<Item = usize> + '_ {
    let mut out = Vec::new();
    fn walk(body: &[Stmt], out: &mut Vec<usize>) {
        for s in body {
            match s {
                Stmt::Loop { body, .. } | Stmt::IfInBounds { body, .. } => walk(body, out),
                Stmt::Store { buf, .. } | Stmt::ScatterAdd { buf, .. } => out.push(*buf),
                Stmt::Set { .. } => {}
            }
        }
    }
    walk(body, &mut out);
    out.into_iter()
}

struct PtrTable(*const *mut f32);
// SAFETY: the table is only read, and the pointed-to buffers are written by
// disjoint iteration ranges (proven by the loop compiler).
unsafe impl Sync for PtrTable {}

impl PtrTable {
    /// Accessor so closures capture the whole (Sync) wrapper, not the field.
    fn get(&self) -> *const *mut f32 {
        self.0
    }
}

/// Total work of a loop kernel (for tests and reports).
pub fn loop_kernel_work(k: &LoopKernel) -> usize {
    loop_work(&k.body)
}
