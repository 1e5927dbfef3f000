//! Calling a [`CompiledLoop`]: the checks a safe call makes on its buffers
//! and the split of the outermost loop's iterations across threads.

use super::compiled::Entry;
use super::{CodegenError, CompiledLoop};

impl CompiledLoop {
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
                    self.call(bufs, begin as i64, end as i64);
                }
            }
            None => self.call(bufs, 0, 0),
        }
    }

    /// Calls the code.
    ///
    /// # Safety
    ///
    /// As for [`run_range`](Self::run_range), with `begin..end` within the
    /// outermost loop's extent.
    unsafe fn call(&self, bufs: *const *mut f32, begin: i64, end: i64) {
        match self.func {
            Entry::Cranelift(f) => f(bufs, begin, end),
            #[cfg(target_arch = "x86_64")]
            Entry::Native(f) => f(bufs, begin, end),
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
                crate::codegen::cpu::parallel::parallel_for(threads, &|t| {
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
