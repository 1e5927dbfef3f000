//! Running the independent pieces of one kernel on several threads.
//!
//! Kernels are short (tens of microseconds for a recurrent step), so the
//! threads come from rayon's persistent pool instead of being spawned per
//! call, and the calling thread runs the first piece itself: a two-way
//! split wakes one worker, nothing more.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f(0)`, ..., `f(n - 1)`, concurrently where threads are free, and
/// returns when all have finished. `Err` when one of them panicked (a bug
/// in netc: generated code does not panic).
pub fn parallel_for(n: usize, f: &(dyn Fn(usize) + Sync)) -> Result<(), String> {
    match n {
        0 => Ok(()),
        1 => {
            f(0);
            Ok(())
        }
        _ => catch_unwind(AssertUnwindSafe(|| {
            rayon::in_place_scope(|s| {
                for i in 1..n {
                    s.spawn(move |_| f(i));
                }
                f(0);
            })
        }))
        .map_err(|p| {
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a worker panicked".into())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn runs_every_piece_once() {
        for n in 0..9 {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            parallel_for(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
        }
    }

    #[test]
    fn a_panicking_piece_is_an_error() {
        let r = parallel_for(3, &|i| assert!(i != 2, "piece two"));
        assert!(r.unwrap_err().contains("piece two"));
    }
}
