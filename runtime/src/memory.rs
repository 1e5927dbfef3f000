//! Host memory: how much is available, and allocation that fails with an
//! error instead of aborting the process.
//!
//! The shape checker accepts tensors of up to 2^36 elements (256 GiB of
//! `f32`), far past most machines. Rust's `vec![0.0; n]` aborts when the
//! allocator refuses, and on Linux a large allocation that overcommit lets
//! through is killed by the OOM killer once touched. So sizes are compared
//! with the memory available before anything is allocated, and buffers are
//! allocated with `try_reserve`, which reports a refusal as an error.

use thiserror::Error;

/// A model or tensor that does not fit in memory.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MemoryError {
    /// The sizes, added up before allocating, exceed the memory available.
    #[error(
        "{what} need {} ({needed} bytes; largest: {largest}), but only {} of memory is available",
        bytes(*needed),
        bytes(*available)
    )]
    TooLarge {
        /// What needs the memory, in the plural: "the weights of model `m`".
        what: String,
        /// Bytes needed in all.
        needed: u64,
        /// The largest part with its size, e.g.
        /// "`dense_1.weight` [16777216, 4096], 256.0 GiB".
        largest: String,
        /// Bytes available (see [`available_bytes`]).
        available: u64,
    },
    /// The allocator refused a buffer (the check passed, but memory ran
    /// out meanwhile, or the address space is fragmented or limited).
    #[error("could not allocate {} for {what}", bytes(*needed))]
    Refused {
        /// What the buffer is for.
        what: String,
        /// Its size in bytes.
        needed: u64,
    },
}

/// A byte count the way people read it: `256.0 GiB`, `12.5 MiB`, `812 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Bytes of memory this process can still use, if the system says:
/// `MemAvailable` of `/proc/meminfo`, lowered to the room left under the
/// cgroup's `memory.max` (a container's limit, which `/proc/meminfo` does
/// not show). `None` where neither can be read (not Linux).
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| mem_available(&s));
    let cgroup = cgroup_room();
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `MemAvailable` in bytes from the text of `/proc/meminfo`.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `memory.max − memory.current` of this process's cgroup (v2), when it
/// has a limit.
fn cgroup_room() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // cgroup v2: the single line `0::/path`.
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let max: u64 = read("memory.max")?.trim().parse().ok()?; // "max": no limit
    let current: u64 = read("memory.current")?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

/// Checks that `needed` bytes fit in the memory available; `parts` are
/// the (name, bytes) that make up `needed`, the largest of which the
/// error names. Passes when the available memory cannot be read.
pub fn check_fits(what: &str, needed: u64, parts: &[(String, u64)]) -> Result<(), MemoryError> {
    let Some(available) = available_bytes() else {
        return Ok(());
    };
    check_against(what, needed, parts, available)
}

fn check_against(
    what: &str,
    needed: u64,
    parts: &[(String, u64)],
    available: u64,
) -> Result<(), MemoryError> {
    if needed <= available {
        return Ok(());
    }
    let largest = parts
        .iter()
        .max_by_key(|(_, b)| *b)
        .map_or_else(String::new, |(name, b)| format!("{name}, {}", bytes(*b)));
    Err(MemoryError::TooLarge {
        what: what.to_string(),
        needed,
        largest,
        available,
    })
}

/// `n` copies of `value`, or an error naming `what` when the allocator
/// refuses (where `vec![value; n]` would abort the process).
pub fn try_filled(n: usize, value: f32, what: &str) -> Result<Vec<f32>, MemoryError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| MemoryError::Refused {
        what: what.to_string(),
        needed: (n as u64).saturating_mul(4),
    })?;
    v.resize(n, value);
    Ok(v)
}

/// The bytes of `n` `f32`s, saturating (sizes past `u64` do not fit anyway).
pub fn f32_bytes(n: usize) -> u64 {
    (n as u64).saturating_mul(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available() {
        let text = "MemTotal:       16318480 kB\nMemFree:  1 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(mem_available(text), Some(12_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn too_large_names_the_largest_part_and_both_sizes() {
        let parts = vec![
            ("`d.weight` [16777216, 4096]".to_string(), 1u64 << 38),
            ("`d.bias` [4096]".to_string(), 16384),
        ];
        let e = check_against(
            "the weights of model `m`",
            (1 << 38) + 16384,
            &parts,
            8 << 30,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the weights of model `m` need 256.0 GiB (274877923328 bytes; largest: `d.weight` [16777216, 4096], 256.0 GiB), but only 8.0 GiB of memory is available"
        );
        assert!(check_against("x", 10, &parts, 10).is_ok());
    }

    #[test]
    fn refused_allocation_is_an_error() {
        let e = try_filled(usize::MAX / 4, 0.0, "buffer `x`").unwrap_err();
        assert!(e.to_string().starts_with("could not allocate"), "{e}");
        assert_eq!(try_filled(3, 1.5, "y").unwrap(), vec![1.5; 3]);
    }
}
