//! Running the independent pieces of one kernel on several threads.
//!
//! Kernels are short (a recurrent step's products take tens of
//! microseconds), so the threads are started once and kept: after a job
//! they spin for a while (a training step launches the next kernel within
//! microseconds) and only then sleep. Waking a sleeping thread, or
//! spawning one, costs about 15 µs, as much as a small kernel; a spinning
//! worker picks a job up in well under one. The calling thread takes
//! pieces too, so a two-way split on two cores uses one worker.
//!
//! Workers are started on demand: a job of `n` pieces makes sure `n − 1`
//! exist (at most one fewer than the machine has cores), so `--threads 2`
//! on a 64-core machine keeps one worker spinning, not 63.
//!
//! One job runs at a time. A call made while another thread's job is
//! running (tests run in parallel) runs all its pieces on the calling
//! thread instead of waiting.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

/// Bits of the job word: `epoch | pieces | next piece`.
const IDX_BITS: u32 = 20;
const MAX_PIECES: usize = (1 << IDX_BITS) - 1;

fn pack(epoch: u64, n: usize, next: usize) -> u64 {
    (epoch << (2 * IDX_BITS)) | ((n as u64) << IDX_BITS) | next as u64
}

fn unpack(w: u64) -> (u64, usize, usize) {
    let mask = (1u64 << IDX_BITS) - 1;
    (
        w >> (2 * IDX_BITS),
        ((w >> IDX_BITS) & mask) as usize,
        (w & mask) as usize,
    )
}

type Piece = dyn Fn(usize) + Sync;

struct Pool {
    /// The current job: its epoch, piece count and next unclaimed piece.
    /// A piece is claimed by one compare-exchange on this word, so a
    /// claim also proves which job (and so which `job` closure) it is for.
    word: AtomicU64,
    /// Pieces of the current job that have finished.
    done: AtomicUsize,
    /// Whether a piece of the current job panicked.
    panicked: AtomicBool,
    /// The current job's closure. Written only while no piece of any job
    /// is claimed or running; read only by the holder of a claimed piece.
    job: UnsafeCell<Option<&'static Piece>>,
    /// Held by the thread whose job is running.
    busy: Mutex<()>,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    /// Workers started so far (only grows; changed under `busy`).
    workers: AtomicUsize,
    /// The most workers this pool starts.
    max_workers: usize,
    /// The floating-point mode of the thread that published the current
    /// job (see `super::subnormal`), which its pieces run in.
    mode: AtomicU64,
}

// SAFETY: `job` is only written by the holder of `busy` while every piece
// of the previous job has finished (`done == n`) and before the new job is
// published through `word`; readers hold a claim on the published job.
unsafe impl Sync for Pool {}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        Pool::leaked(std::thread::available_parallelism().map_or(1, |n| n.get()) - 1)
    })
}

impl Pool {
    /// A pool that lives for the rest of the process (its workers hold it).
    fn leaked(max_workers: usize) -> &'static Pool {
        Box::leak(Box::new(Pool {
            word: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            job: UnsafeCell::new(None),
            busy: Mutex::new(()),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            workers: AtomicUsize::new(0),
            max_workers,
            mode: AtomicU64::new(0),
        }))
    }

    /// Starts workers until there are `wanted` (capped at `max_workers`).
    /// Called with `busy` held, before the next job is published, so a new
    /// worker starts out having seen the current epoch.
    fn grow(&'static self, wanted: usize) {
        let wanted = wanted.min(self.max_workers);
        let (seen, _, _) = unpack(self.word.load(Acquire));
        while self.workers.load(Relaxed) < wanted {
            let i = self.workers.load(Relaxed);
            let started = std::thread::Builder::new()
                .name(format!("netc-worker-{i}"))
                .spawn(move || self.work(seen));
            if started.is_err() {
                // The caller and the workers there are take all pieces.
                break;
            }
            self.workers.fetch_add(1, Relaxed);
        }
    }

    /// Claims and runs pieces of job `epoch` until none is left.
    fn run_pieces(&self, epoch: u64) {
        loop {
            let w = self.word.load(Acquire);
            let (e, n, next) = unpack(w);
            if e != epoch || next >= n {
                return;
            }
            if self
                .word
                .compare_exchange_weak(w, w + 1, AcqRel, Relaxed)
                .is_err()
            {
                continue;
            }
            // SAFETY: the claim keeps job `epoch` from finishing, so its
            // closure (written before the job was published) is alive.
            let f = unsafe { (*self.job.get()).expect("a published job has a closure") };
            if catch_unwind(AssertUnwindSafe(|| f(next))).is_err() {
                self.panicked.store(true, Relaxed);
            }
            self.done.fetch_add(1, Release);
        }
    }

    fn work(&self, mut seen: u64) {
        loop {
            let start = Instant::now();
            let mut spins = 0u32;
            let epoch = loop {
                let (e, _, _) = unpack(self.word.load(Acquire));
                if e != seen {
                    break e;
                }
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
                    let guard = self.sleep.lock().unwrap_or_else(|p| p.into_inner());
                    self.sleepers.fetch_add(1, SeqCst);
                    let mut guard = guard;
                    while unpack(self.word.load(SeqCst)).0 == seen {
                        guard = self.wake.wait(guard).unwrap_or_else(|p| p.into_inner());
                    }
                    self.sleepers.fetch_sub(1, SeqCst);
                }
            };
            seen = epoch;
            // Published before the job's word (SeqCst), read after it.
            super::subnormal::set_mode(self.mode.load(Relaxed));
            self.run_pieces(epoch);
        }
    }
}

/// Runs `f(0)`, ..., `f(n - 1)`, concurrently where threads are free, and
/// returns when all have finished. `Err` when one of them panicked (a bug
/// in netc: generated code does not panic).
pub fn parallel_for<'a>(n: usize, f: &'a (dyn Fn(usize) + Sync + 'a)) -> Result<(), String> {
    pool().run(n, f)
}

impl Pool {
    /// [`parallel_for`] on this pool.
    fn run<'a>(&'static self, n: usize, f: &'a (dyn Fn(usize) + Sync + 'a)) -> Result<(), String> {
        let serial = |f: &(dyn Fn(usize) + Sync)| {
            catch_unwind(AssertUnwindSafe(|| (0..n).for_each(f)))
                .map_err(|_| "a kernel piece panicked".to_string())
        };
        if n <= 1 || n > MAX_PIECES {
            return serial(f);
        }
        let Ok(_busy) = self.busy.try_lock() else {
            return serial(f);
        };
        self.grow(n - 1);
        if self.workers.load(Relaxed) == 0 {
            return serial(f);
        }
        // SAFETY: the lifetime is erased only while this call runs: it waits
        // below until every piece has finished, and clears `job` before
        // returning, so no thread uses `f` afterwards.
        let f_static: &'static Piece =
            unsafe { std::mem::transmute::<&'a (dyn Fn(usize) + Sync + 'a), &'static Piece>(f) };
        let (epoch, _, _) = unpack(self.word.load(Acquire));
        let epoch = (epoch + 1) & ((1 << (64 - 2 * IDX_BITS)) - 1);
        // SAFETY: we hold `busy` and the previous job has fully finished.
        unsafe { *self.job.get() = Some(f_static) };
        self.done.store(0, Relaxed);
        self.panicked.store(false, Relaxed);
        self.mode.store(super::subnormal::mode(), Relaxed);
        self.word.store(pack(epoch, n, 0), SeqCst);
        if self.sleepers.load(SeqCst) > 0 {
            let _g = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
        self.run_pieces(epoch);
        while self.done.load(Acquire) < n {
            std::hint::spin_loop();
        }
        // SAFETY: every piece has finished; nothing reads `job` until the
        // next job is published.
        unsafe { *self.job.get() = None };
        if self.panicked.load(Relaxed) {
            Err("a kernel piece panicked".into())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_piece_once() {
        for n in 0..40 {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            parallel_for(n, &|i| {
                hits[i].fetch_add(1, Relaxed);
            })
            .unwrap();
            assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "n = {n}");
        }
    }

    #[test]
    fn pieces_run_in_the_callers_subnormal_mode() {
        use crate::codegen::cpu::subnormal::FlushSubnormals;
        // Whether each piece saw a subnormal product flushed to zero.
        let run = || {
            let flushed: Vec<AtomicBool> = (0..64).map(|_| AtomicBool::new(false)).collect();
            parallel_for(64, &|i| {
                // Long enough pieces that the workers take some.
                std::thread::sleep(Duration::from_micros(50));
                let p = std::hint::black_box(1.0e-30f32) * std::hint::black_box(1.0e-10);
                flushed[i].store(p == 0.0, Relaxed);
            })
            .unwrap();
            flushed.iter().map(|f| f.load(Relaxed)).collect::<Vec<_>>()
        };
        for _ in 0..3 {
            {
                let _flush = FlushSubnormals::begin();
                #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
                assert!(run().iter().all(|f| *f));
            }
            // A worker that ran a flushing job does not flush the next.
            assert!(run().iter().all(|f| !*f));
        }
    }

    #[test]
    fn concurrent_callers_each_get_their_pieces() {
        std::thread::scope(|s| {
            for t in 0..4 {
                s.spawn(move || {
                    for round in 0..200 {
                        let n = 2 + (t + round) % 5;
                        let sum = AtomicUsize::new(0);
                        parallel_for(n, &|i| {
                            sum.fetch_add(i + 1, Relaxed);
                        })
                        .unwrap();
                        assert_eq!(sum.load(Relaxed), n * (n + 1) / 2);
                    }
                });
            }
        });
    }

    #[test]
    fn workers_start_as_jobs_need_them() {
        let p = Pool::leaked(3);
        assert_eq!(p.workers.load(Relaxed), 0);
        let sum = AtomicUsize::new(0);
        p.run(2, &|i| {
            sum.fetch_add(i + 1, Relaxed);
        })
        .unwrap();
        assert_eq!(
            p.workers.load(Relaxed),
            1,
            "a two-way split needs one worker"
        );
        p.run(8, &|i| {
            sum.fetch_add(i + 1, Relaxed);
        })
        .unwrap();
        assert_eq!(p.workers.load(Relaxed), 3, "capped at the pool's maximum");
        p.run(2, &|i| {
            sum.fetch_add(i + 1, Relaxed);
        })
        .unwrap();
        assert_eq!(p.workers.load(Relaxed), 3, "workers are kept");
        assert_eq!(sum.load(Relaxed), 3 + 36 + 3);
    }

    #[test]
    fn a_panicking_piece_is_an_error() {
        let r = parallel_for(3, &|i| assert!(i != 2, "piece two"));
        assert!(r.is_err());
        // The pool still works afterwards.
        let sum = AtomicUsize::new(0);
        parallel_for(3, &|i| {
            sum.fetch_add(i, Relaxed);
        })
        .unwrap();
        assert_eq!(sum.load(Relaxed), 3);
    }
}
