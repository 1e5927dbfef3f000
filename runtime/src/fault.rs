//! Fault injection for the crash-consistency tests. Environment variables
//! make this process kill itself, fail a filesystem step, or act as if
//! Ctrl-C was pressed, at a chosen point, so that a test can stop training
//! at every step of writing a checkpoint instead of hoping a random kill
//! lands there. Unset (the normal case) each hook costs one lookup of a
//! value read once.
//!
//! - `NETC_FAULT_KILL_AFTER=N`: SIGKILL this process right after the N-th
//!   filesystem step (1-based; each write, fsync and rename of a checkpoint,
//!   the weights, the metrics log counts as one).
//! - `NETC_FAULT_FAIL_AT=N`: the N-th filesystem step fails with "no space
//!   left on device" instead of running.
//! - `NETC_FAULT_SIGINT_AT_STEP=N`: training stops as on Ctrl-C just before
//!   the step that would make N steps done in total.
//! - `NETC_FAULT_TRACE=1`: prints every filesystem step to stderr as
//!   `fault: step N: WHAT PATH`.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

#[derive(Default)]
struct Plan {
    kill_after: Option<usize>,
    fail_at: Option<usize>,
    sigint_at_step: Option<usize>,
    trace: bool,
}

fn plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| {
        let num = |k: &str| std::env::var(k).ok().and_then(|v| v.trim().parse().ok());
        Plan {
            kill_after: num("NETC_FAULT_KILL_AFTER"),
            fail_at: num("NETC_FAULT_FAIL_AT"),
            sigint_at_step: num("NETC_FAULT_SIGINT_AT_STEP"),
            trace: std::env::var_os("NETC_FAULT_TRACE").is_some_and(|v| v == "1"),
        }
    })
}

static FS_STEPS: AtomicUsize = AtomicUsize::new(0);

/// Runs `op`, one filesystem step (`what`: "write", "fsync", "rename",
/// "fsync dir", ...) on `path`, under the fault plan.
pub fn fs_step<T>(what: &str, path: &Path, op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let p = plan();
    if p.kill_after.is_none() && p.fail_at.is_none() && !p.trace {
        return op();
    }
    let n = FS_STEPS.fetch_add(1, Ordering::SeqCst) + 1;
    if p.trace {
        eprintln!("fault: step {n}: {what} {}", path.display());
    }
    if p.fail_at == Some(n) {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            "No space left on device (injected by NETC_FAULT_FAIL_AT)",
        ));
    }
    let r = op();
    if p.kill_after == Some(n) {
        kill_self();
    }
    r
}

/// Whether training should stop as on Ctrl-C before the step that makes
/// `steps_done + 1` steps.
pub fn interrupt_before(steps_done: usize) -> bool {
    plan().sigint_at_step == Some(steps_done)
}

/// Dies as `kill -9` would kill it: no destructors, no buffered output,
/// no temporary files removed.
fn kill_self() -> ! {
    #[cfg(unix)]
    // SAFETY: kill(2) on our own pid with a valid signal number has no
    // memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}
