//! The decode cache of image folders: decoding 70,000 PNGs takes seconds
//! on every run, reading back their pixels a fraction of one.
//!
//! One cache file per (split folder, input shape) holds the pixels of every
//! image as bytes, in the loader's file order, after a manifest that names
//! what they were decoded from: the shape and, for every file, its path,
//! class, size and modification time. A cache file is used only when its
//! manifest equals the one built from the folder now and its pixels pass
//! their CRC-32, so an added, removed, renamed, relabelled or rewritten
//! image, a different input shape or a damaged cache file all mean
//! decoding again (and rewriting the cache), never stale pixels. Cache
//! files are written to a temporary file and renamed into place, so a run
//! killed while writing leaves no partial file behind.
//!
//! The cache directory is the caller's choice ([`LoadOptions::image_cache`]
//! (super::LoadOptions)); the CLI uses the user's cache directory. A cache
//! that cannot be read or written never fails a run: the images are
//! decoded as without one, and the caller is told why.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// What loading did with the decode cache, for the caller to report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheUse {
    /// The pixels were read from this cache file; nothing was decoded.
    Read(PathBuf),
    /// The images were decoded and their pixels written to this file.
    Written(PathBuf),
    /// The images were decoded; the cache could not be written (why).
    Unwritable(String),
}

/// First bytes of a cache file (the format's version is in it).
const MAGIC: &[u8; 8] = b"NETCIMG1";

/// The manifest of `files` (path, class) under `root` for images decoded
/// to `shape`, or `None` when a file's metadata cannot be read (then the
/// decoder reports it).
pub(super) fn manifest(
    root: &Path,
    files: &[(PathBuf, usize)],
    shape: [usize; 3],
) -> Option<String> {
    let mut m = format!(
        "netc image cache\nroot {}\nshape {} {} {}\n",
        root.display(),
        shape[0],
        shape[1],
        shape[2]
    );
    for (path, class) in files {
        let meta = std::fs::metadata(path).ok()?;
        let modified = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos();
        m.push_str(&format!(
            "{class}\t{}\t{modified}\t{}\n",
            meta.len(),
            path.display()
        ));
    }
    Some(m)
}

/// The cache file of `manifest` in `dir`.
fn file_for(dir: &Path, manifest: &str) -> PathBuf {
    // Only a name: the manifest inside the file is what is compared.
    let mut h = DefaultHasher::new();
    h.write(manifest.lines().take(3).collect::<String>().as_bytes());
    dir.join(format!("{:016x}.pixels", h.finish()))
}

/// The `len` pixel bytes cached for `manifest`, if `dir` holds a valid
/// cache file for exactly it.
pub(super) fn read(dir: &Path, manifest: &str, len: usize) -> Option<(Vec<u8>, PathBuf)> {
    let path = file_for(dir, manifest);
    let mut f = std::fs::File::open(&path).ok()?;
    let mut head = [0u8; 8 + 8 + 8 + 4];
    f.read_exact(&mut head).ok()?;
    let word = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
    let (mlen, plen) = (word(8) as usize, word(16) as usize);
    let crc = u32::from_le_bytes(head[24..28].try_into().expect("4 bytes"));
    if &head[..8] != MAGIC || mlen != manifest.len() || plen != len {
        return None;
    }
    let mut stored = vec![0u8; mlen];
    f.read_exact(&mut stored).ok()?;
    if stored != manifest.as_bytes() {
        return None;
    }
    let mut pixels = vec![0u8; plen];
    f.read_exact(&mut pixels).ok()?;
    // Nothing may follow: a longer file is not one this code wrote.
    if f.read(&mut [0u8; 1]).ok()? != 0 || crc32fast::hash(&pixels) != crc {
        return None;
    }
    Some((pixels, path))
}

/// Writes `pixels` as the cache of `manifest` in `dir` (created if
/// needed), atomically; returns the file written.
pub(super) fn write(dir: &Path, manifest: &str, pixels: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = file_for(dir, manifest);
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        w.write_all(MAGIC)?;
        w.write_all(&(manifest.len() as u64).to_le_bytes())?;
        w.write_all(&(pixels.len() as u64).to_le_bytes())?;
        w.write_all(&crc32fast::hash(pixels).to_le_bytes())?;
        w.write_all(manifest.as_bytes())?;
        w.write_all(pixels)?;
        w.flush()?;
    }
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, n: usize) -> Vec<(PathBuf, usize)> {
        (0..n)
            .map(|i| {
                let p = dir.join(format!("{i}.png"));
                std::fs::write(&p, vec![i as u8; 10 + i]).unwrap();
                (p, i % 2)
            })
            .collect()
    }

    #[test]
    fn round_trip_and_every_mismatch_misses() {
        let data = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let fs = files(data.path(), 3);
        let m = manifest(data.path(), &fs, [2, 2, 1]).unwrap();
        let pixels: Vec<u8> = (0..12).collect();
        let written = write(cache.path(), &m, &pixels).unwrap();
        let (got, path) = read(cache.path(), &m, 12).unwrap();
        assert_eq!((got, path), (pixels.clone(), written.clone()));
        // Another shape, label or file set: another manifest, no hit.
        let other = manifest(data.path(), &fs, [2, 2, 3]).unwrap();
        assert!(read(cache.path(), &other, 12).is_none());
        let mut relabelled = fs.clone();
        relabelled[0].1 = 1;
        let other = manifest(data.path(), &relabelled, [2, 2, 1]).unwrap();
        assert!(read(cache.path(), &other, 12).is_none());
        assert!(read(cache.path(), &m, 13).is_none());
        // A file rewritten with another size.
        std::fs::write(&fs[1].0, b"different").unwrap();
        let changed = manifest(data.path(), &fs, [2, 2, 1]).unwrap();
        assert_ne!(changed, m);
        assert!(read(cache.path(), &changed, 12).is_none());
        // A damaged pixel byte fails the checksum.
        let mut bytes = std::fs::read(&written).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&written, &bytes).unwrap();
        assert!(read(cache.path(), &m, 12).is_none());
        // A missing file has no manifest (the decoder reports it).
        std::fs::remove_file(&fs[2].0).unwrap();
        assert!(manifest(data.path(), &fs, [2, 2, 1]).is_none());
    }
}
