//! Atomic file replacement: write a temporary file in the destination's
//! directory, flush it to disk, then rename it over the destination. A
//! reader sees either the old file or the complete new one, never a
//! half-written file, and a crash or a full disk leaves the old file intact.

use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` atomically (temporary file + rename).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
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
    let mut tmp = builder.tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    // On error the temporary file is removed when the returned value drops.
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
