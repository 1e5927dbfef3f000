//! The native kernels of one contraction: assembling them for an
//! [`IsaLevel`] (the `ymm` emitter of `avx2` or the `zmm` one of
//! `avx512`, which builds on the former's spec and loop nest) into one
//! executable buffer, and handing the driver their entry points.

use dynasmrt::{x64::Assembler, AssemblyOffset};

use super::avx2::{self, block_steps, AsmSpec, BlockKernel, BlockSteps, MicroKernel, MR};
use super::avx512;
use super::IsaLevel;

/// The panel counts the AVX-512 block kernels come for: one, a pair and
/// the widest tile ([`avx512::WIDEST`]).
pub(super) const BLOCK_WIDTHS: [usize; 3] = [1, 2, avx512::WIDEST];
use crate::codegen::cpu::CodegenError;

/// The kernels of one contraction, one entry per tile height `1..=MR`.
pub(super) struct AsmKernels {
    /// Read + execute only once assembled.
    code: dynasmrt::ExecutableBuffer,
    entries: Vec<AssemblyOffset>,
    /// Block kernels (heights `1..=MR` for blocks of `len` steps, then for
    /// the `rest`), where [`block_steps`] allows them.
    blocks: Vec<AssemblyOffset>,
    steps: Option<BlockSteps>,
    /// Whether the kernels compute two neighbouring panels at once (the
    /// `zmm` kernels' 6 x 32 tile), so the driver hands them pairs.
    pairs: bool,
}

impl AsmKernels {
    /// The kernel for tiles of `rows` rows (`1..=MR`).
    pub fn kernel(&self, rows: usize) -> MicroKernel {
        let ptr = self.code.ptr(self.entries[rows - 1]);
        // SAFETY: every entry was assembled as a complete sysv64 function
        // with this signature; the buffer lives as long as `self`.
        unsafe { std::mem::transmute::<*const u8, MicroKernel>(ptr) }
    }

    /// The block kernel for tiles of `rows` rows and a block of `len`
    /// steps (`BlockSteps::len` or `rest`) over `panels` neighbouring
    /// panels (1, or where [`Self::pairs`] one of [`BLOCK_WIDTHS`]).
    pub fn block_kernel(&self, rows: usize, len: usize, panels: usize) -> BlockKernel {
        let steps = self.steps.expect("block kernels");
        let variant = usize::from(len != steps.len);
        let (per_variant, width) = if self.pairs {
            let width = BLOCK_WIDTHS.iter().position(|&w| w == panels);
            (
                BLOCK_WIDTHS.len() * MR,
                width.expect("a block kernel width"),
            )
        } else {
            debug_assert_eq!(panels, 1);
            (MR, 0)
        };
        let ptr = self
            .code
            .ptr(self.blocks[variant * per_variant + width * MR + rows - 1]);
        // SAFETY: as in `kernel`, for the block kernels' signature.
        unsafe { std::mem::transmute::<*const u8, BlockKernel>(ptr) }
    }

    /// Whether the kernels compute two panels per tile ([`avx512`]): the
    /// driver then calls them with pairs of full panels where it can.
    pub fn pairs(&self) -> bool {
        self.pairs
    }

    /// Machine code size in bytes (for diagnostics).
    pub fn code_len(&self) -> usize {
        self.code.len()
    }
}

/// Whether `spec` can be assembled for `isa`: the epilogue is one the
/// kernels fuse (sigmoid and tanh stay on Cranelift, whose polynomial `exp`
/// they would have to duplicate) and every constant fits an `i32`
/// immediate.
pub(super) fn supports(spec: &AsmSpec, isa: IsaLevel) -> bool {
    match isa {
        IsaLevel::Avx2Fma => avx2::supports(spec),
        IsaLevel::Avx512 => avx2::supports(spec) && avx512::supports(spec),
    }
}

/// Assembles the kernels of `spec` for tile heights `1..=MR`: the `ymm`
/// kernels, or on [`IsaLevel::Avx512`] the `zmm` ones of [`avx512`] (whose
/// block kernels come for each of [`BLOCK_WIDTHS`]).
pub(super) fn assemble(spec: &AsmSpec, isa: IsaLevel) -> Result<AsmKernels, CodegenError> {
    let mut ops = Assembler::new().map_err(|e| CodegenError::Assemble(e.to_string()))?;
    let entries = (1..=MR)
        .map(|mr| match isa {
            IsaLevel::Avx2Fma => avx2::emit_kernel(&mut ops, spec, mr),
            IsaLevel::Avx512 => avx512::emit_kernel(&mut ops, spec, mr),
        })
        .collect();
    let steps = block_steps(spec);
    let mut blocks = Vec::new();
    if let Some(st) = steps {
        for len in [st.len, st.rest] {
            if len == 0 {
                continue;
            }
            match isa {
                IsaLevel::Avx2Fma => {
                    blocks.extend(
                        (1..=MR).map(|mr| avx2::emit_block_kernel(&mut ops, spec, mr, len)),
                    );
                }
                IsaLevel::Avx512 => {
                    for panels in BLOCK_WIDTHS {
                        blocks.extend(
                            (1..=MR).map(|mr| {
                                avx512::emit_block_kernel(&mut ops, spec, mr, len, panels)
                            }),
                        );
                    }
                }
            }
        }
    }
    let code = ops.finalize().map_err(|_| {
        CodegenError::Assemble("could not map the native kernels executable".into())
    })?;
    Ok(AsmKernels {
        code,
        entries,
        blocks,
        steps,
        pairs: isa == IsaLevel::Avx512,
    })
}
