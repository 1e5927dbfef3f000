//! Atomic file replacement: write a temporary file in the destination's
//! directory, flush it to disk, rename it over the destination, then flush
//! the directory so the rename itself survives a power cut. A reader sees
//! either the old file or the complete new one, never a half-written file,
//! and a crash or a full disk leaves the old file intact (and at worst a
//! `.NAME.XXXXXX.tmp` file beside it, which [`remove_leftovers`] cleans).
//!
//! Every step goes through [`crate::fault::fs_step`], so tests can kill
//! the process between any two of them.

use crate::fault::fs_step;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The directory `path` is in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `path` atomically (temporary file + fsync + rename +
/// fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent_dir(path);
    let prefix = format!(
        ".{}.",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // tempfile creates files 0600; ask for 0666 so the process umask decides,
    // as it does for a file created by `File::create`.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    // On error the temporary file is removed when `tmp` drops.
    let mut tmp = builder.tempfile_in(dir)?;
    fs_step("write", path, || tmp.write_all(bytes))?;
    fs_step("fsync", path, || tmp.as_file().sync_all())?;
    fs_step("rename", path, || {
        tmp.persist(path).map(drop).map_err(|e| e.error)
    })?;
    fs_step("fsync dir", dir, || sync_dir(dir))
}

/// Flushes a directory's entries (a rename into it) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Whether a file could be created in `path`'s directory, checked by
/// creating (and removing) a temporary file there. Names the problem in
/// one line: a missing directory, a directory that is a file, no
/// permission.
pub fn check_writable(path: &Path) -> Result<(), String> {
    let dir = parent_dir(path);
    let what = || format!("cannot write `{}`", path.display());
    if path.is_dir() {
        return Err(format!("{}: it is a directory", what()));
    }
    match std::fs::metadata(dir) {
        Err(_) => Err(format!(
            "{}: directory `{}` does not exist",
            what(),
            dir.display()
        )),
        Ok(m) if !m.is_dir() => Err(format!(
            "{}: `{}` is not a directory",
            what(),
            dir.display()
        )),
        // Named as write_atomic names its temporary file, so that a kill
        // right here leaves nothing remove_leftovers_of misses.
        Ok(_) => tempfile::Builder::new()
            .prefix(&format!(
                ".{}.",
                path.file_name().unwrap_or_default().to_string_lossy()
            ))
            .suffix(".tmp")
            .tempfile_in(dir)
            .map(drop)
            .map_err(|e| format!("{}: {e}", what())),
    }
}

/// Removes the temporary files an interrupted [`write_atomic`] of `path`
/// left beside it (`.NAME.XXXXXX.tmp`).
pub fn remove_leftovers_of(path: &Path) -> io::Result<()> {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(());
    };
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(parent_dir(path)) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let n = entry.file_name();
        let n = n.to_string_lossy();
        // tempfile's random part is 6 characters.
        let ours = n
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".tmp"))
            .is_some_and(|r| r.len() == 6 && !r.contains('.'));
        if ours && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Removes the temporary files an interrupted [`write_atomic`] (or plot)
/// left in `dir`; returns what it removed.
pub fn remove_leftovers(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = (name.starts_with('.') && name.ends_with(".tmp"))
            || (name.starts_with(".netc-plot.") && name.ends_with(".png"));
        if ours && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    removed.sort();
    Ok(removed)
}
