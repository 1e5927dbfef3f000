//! The IDX format of MNIST and Fashion-MNIST, raw or gzip-compressed.
//!
//! An IDX file is a 4-byte magic `00 00 TT NN` (`TT` the element type,
//! `NN` the number of dimensions), `NN` big-endian `u32` dimensions, then the
//! elements in row-major order, big-endian. Types: `0x08` u8, `0x09` i8,
//! `0x0B` i16, `0x0C` i32, `0x0D` f32, `0x0E` f64. Labels are `00 00 08 01`
//! (`[N]` u8), images `00 00 08 03` (`[N, rows, cols]` u8).
//!
//! A file that starts with the gzip magic `1f 8b` is decompressed on the
//! fly. The data is read incrementally, never allocated from the header's
//! claims up front, so a corrupt header cannot exhaust memory; every size is
//! computed with checked arithmetic.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::tensor::Tensor;

use super::dataset::{check_finite, infer_classes, Dataset};
use super::error::{DataError, DataErrorKind};

/// An IDX element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdxDtype {
    /// `0x08`, unsigned byte.
    U8,
    /// `0x09`, signed byte.
    I8,
    /// `0x0B`, big-endian i16.
    I16,
    /// `0x0C`, big-endian i32.
    I32,
    /// `0x0D`, big-endian f32.
    F32,
    /// `0x0E`, big-endian f64.
    F64,
}

impl IdxDtype {
    /// The type for a magic's third byte.
    pub fn from_code(code: u8) -> Option<IdxDtype> {
        Some(match code {
            0x08 => IdxDtype::U8,
            0x09 => IdxDtype::I8,
            0x0B => IdxDtype::I16,
            0x0C => IdxDtype::I32,
            0x0D => IdxDtype::F32,
            0x0E => IdxDtype::F64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            IdxDtype::U8 | IdxDtype::I8 => 1,
            IdxDtype::I16 => 2,
            IdxDtype::I32 | IdxDtype::F32 => 4,
            IdxDtype::F64 => 8,
        }
    }

    /// Whether the type holds integers.
    pub fn is_integer(self) -> bool {
        !matches!(self, IdxDtype::F32 | IdxDtype::F64)
    }

    /// The type's name (`u8`, `i16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            IdxDtype::U8 => "u8",
            IdxDtype::I8 => "i8",
            IdxDtype::I16 => "i16",
            IdxDtype::I32 => "i32",
            IdxDtype::F32 => "f32",
            IdxDtype::F64 => "f64",
        }
    }

    fn decode(self, b: &[u8]) -> f32 {
        match self {
            IdxDtype::U8 => f32::from(b[0]),
            IdxDtype::I8 => f32::from(b[0] as i8),
            IdxDtype::I16 => f32::from(i16::from_be_bytes([b[0], b[1]])),
            IdxDtype::I32 => i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f32,
            IdxDtype::F32 => f32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            IdxDtype::F64 => {
                f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }
        }
    }
}

/// Which half of an MNIST-layout directory to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// `train-images-idx3-ubyte` / `train-labels-idx1-ubyte`.
    Train,
    /// `t10k-images-idx3-ubyte` / `t10k-labels-idx1-ubyte`.
    Test,
}

impl Split {
    /// The file-name prefix of the split (`train` or `t10k`).
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Reads an IDX file (raw or gzip) as an `f32` tensor.
pub fn read_idx(path: impl AsRef<Path>) -> Result<Tensor, DataError> {
    read_idx_with_dtype(path).map(|(t, _)| t)
}

/// Reads an IDX file (raw or gzip) as an `f32` tensor, with its element type.
pub fn read_idx_with_dtype(path: impl AsRef<Path>) -> Result<(Tensor, IdxDtype), DataError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| DataError::from(DataErrorKind::Read(e)).at(path))?;
    decode_idx(BufReader::new(file)).map_err(|e| e.at(path))
}

/// Parses an IDX stream (raw or gzip; the gzip magic is detected).
pub fn decode_idx(mut reader: impl Read) -> Result<(Tensor, IdxDtype), DataError> {
    let mut head = [0u8; 2];
    let got = read_full(&mut reader, &mut head).map_err(read_err)?;
    let prefix = io::Cursor::new(head[..got].to_vec());
    if got == 2 && head == [0x1f, 0x8b] {
        let gz = MultiGzDecoder::new(prefix.chain(reader));
        decode_raw(gz, true)
    } else {
        decode_raw(prefix.chain(reader), false)
    }
}

fn read_err(e: io::Error) -> DataError {
    DataErrorKind::Read(e).into()
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn decode_raw(mut r: impl Read, gzip: bool) -> Result<(Tensor, IdxDtype), DataError> {
    let io_err = |e: io::Error| -> DataError {
        if gzip {
            DataErrorKind::Gzip(e).into()
        } else {
            DataErrorKind::Read(e).into()
        }
    };
    let mut magic = [0u8; 4];
    let got = read_full(&mut r, &mut magic).map_err(io_err)?;
    if got < 4 {
        return Err(DataErrorKind::Truncated(format!(
            "it ends after {got} bytes, inside the 4-byte IDX magic"
        ))
        .into());
    }
    if magic[0] != 0 || magic[1] != 0 {
        return Err(DataError::format(format!(
            "not an IDX file: it starts with {:02x} {:02x} {:02x} {:02x}, not 00 00 <type> <dims>",
            magic[0], magic[1], magic[2], magic[3]
        )));
    }
    let dtype = IdxDtype::from_code(magic[2]).ok_or_else(|| {
        DataError::format(format!(
            "not an IDX file: magic {:02x} {:02x} {:02x} {:02x} names unknown element type \
             0x{:02x} (known: 0x08 u8, 0x09 i8, 0x0b i16, 0x0c i32, 0x0d f32, 0x0e f64)",
            magic[0], magic[1], magic[2], magic[3], magic[2]
        ))
    })?;
    let ndims = usize::from(magic[3]);
    let mut dim_bytes = vec![0u8; 4 * ndims];
    let got = read_full(&mut r, &mut dim_bytes).map_err(io_err)?;
    if got < dim_bytes.len() {
        return Err(DataErrorKind::Truncated(format!(
            "the header declares {ndims} dimensions but the file ends inside them"
        ))
        .into());
    }
    let shape: Vec<usize> = dim_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let magic_text = format!(
        "magic {:02x} {:02x} {:02x} {:02x} ({}, {ndims} dimensions)",
        magic[0],
        magic[1],
        magic[2],
        magic[3],
        dtype.name()
    );
    let too_large = || {
        DataError::format(format!(
            "not an IDX file: its {magic_text} declares shape {shape:?}, too large to load"
        ))
    };
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(too_large)?;
    let bytes = count.checked_mul(dtype.size()).ok_or_else(too_large)?;
    // Bounded read: grows with the data actually present, never trusting the
    // header for the allocation.
    let mut data = Vec::new();
    (&mut r)
        .take(bytes as u64)
        .read_to_end(&mut data)
        .map_err(io_err)?;
    if data.len() < bytes {
        return Err(DataErrorKind::Truncated(format!(
            "its {magic_text} declares shape {shape:?} ({bytes} bytes of data) but only {} \
             bytes follow",
            data.len()
        ))
        .into());
    }
    // Bytes beyond the declared data mean the header does not describe the
    // file (a wrong dimension count reads pixels as sizes, often giving a
    // 0-sized shape): count them to say by how much.
    let extra = io::copy(&mut r, &mut io::sink()).map_err(io_err)?;
    if extra > 0 {
        return Err(DataError::format(format!(
            "not an IDX file (or a corrupt one): its {magic_text} declares shape {shape:?}, \
             {bytes} bytes of data, but {extra} unexpected bytes follow"
        )));
    }
    let values: Vec<f32> = data
        .chunks_exact(dtype.size())
        .map(|c| dtype.decode(c))
        .collect();
    Ok((
        Tensor {
            shape,
            data: values,
        },
        dtype,
    ))
}

/// Loads an images file and a labels file as a classification data set:
/// images `[N, ...]` (any IDX type; values as stored, e.g. 0–255) and
/// integer labels `[N]`. `classes` is `max label + 1`.
pub fn load_idx_pair(
    images: impl AsRef<Path>,
    labels: impl AsRef<Path>,
) -> Result<Dataset, DataError> {
    let (images, labels) = (images.as_ref(), labels.as_ref());
    let (x, _) = read_idx_with_dtype(images)?;
    let (y, ydt) = read_idx_with_dtype(labels)?;
    if x.shape.is_empty() {
        return Err(DataError::shape(
            "the images file holds a scalar; it needs a leading example axis",
        )
        .at(images));
    }
    if y.shape.len() != 1 {
        return Err(DataError::shape(format!(
            "a labels file holds one dimension [N]; this one has shape {:?}",
            y.shape
        ))
        .at(labels));
    }
    if !ydt.is_integer() {
        return Err(DataError::format(format!(
            "labels must be integers; this file holds {}",
            ydt.name()
        ))
        .at(labels));
    }
    if x.shape[0] != y.shape[0] {
        return Err(DataError::mismatch(format!(
            "{} labels but {} holds {} images",
            y.shape[0],
            images.display(),
            x.shape[0]
        ))
        .at(labels));
    }
    if let Some((i, l)) = y.data.iter().enumerate().find(|(_, &l)| l < 0.0) {
        return Err(
            DataError::format(format!("row {i} (counting from 0): label {l} is negative"))
                .at(labels),
        );
    }
    check_finite(&x).map_err(|e| e.at(images))?;
    let classes = infer_classes(&y.data);
    Dataset::new(x, y.data, classes)
        .map(|d| d.located(labels, None))
        .map_err(|e| e.at(labels))
}

/// The images and labels file of one split in an MNIST-layout directory,
/// raw or `.gz` (also the `train-images.idx3-ubyte` spelling); `None` when
/// neither file of the pair is there.
pub fn find_mnist_files(dir: &Path, split: Split) -> Option<(PathBuf, PathBuf)> {
    let find = |kind: &str, rank: u8| -> Option<PathBuf> {
        let p = split.prefix();
        [
            format!("{p}-{kind}-idx{rank}-ubyte"),
            format!("{p}-{kind}-idx{rank}-ubyte.gz"),
            format!("{p}-{kind}.idx{rank}-ubyte"),
            format!("{p}-{kind}.idx{rank}-ubyte.gz"),
        ]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
    };
    Some((find("images", 3)?, find("labels", 1)?))
}

/// Loads one split of an MNIST / Fashion-MNIST directory
/// (`train-images-idx3-ubyte[.gz]` + `train-labels-idx1-ubyte[.gz]`, or the
/// `t10k-` pair). Pixel values stay 0–255; see [`Dataset::scale`].
pub fn load_mnist_dir(dir: impl AsRef<Path>, split: Split) -> Result<Dataset, DataError> {
    let dir = dir.as_ref();
    let (images, labels) = find_mnist_files(dir, split).ok_or_else(|| {
        let p = split.prefix();
        DataError::from(DataErrorKind::NotFound(format!(
            "no {p}-images-idx3-ubyte[.gz] and {p}-labels-idx1-ubyte[.gz] pair in this directory"
        )))
        .at(dir)
    })?;
    load_idx_pair(images, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(code: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, code, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn all_dtypes() {
        let (t, d) = decode_idx(&idx(0x08, &[2], &[0, 255])[..]).unwrap();
        assert_eq!((t.data, d), (vec![0.0, 255.0], IdxDtype::U8));
        let (t, _) = decode_idx(&idx(0x09, &[2], &[0xff, 0x7f])[..]).unwrap();
        assert_eq!(t.data, vec![-1.0, 127.0]);
        let (t, _) = decode_idx(&idx(0x0B, &[1], &(-300i16).to_be_bytes())[..]).unwrap();
        assert_eq!(t.data, vec![-300.0]);
        let (t, _) = decode_idx(&idx(0x0C, &[1], &70000i32.to_be_bytes())[..]).unwrap();
        assert_eq!(t.data, vec![70000.0]);
        let (t, _) = decode_idx(&idx(0x0D, &[1, 1], &1.5f32.to_be_bytes())[..]).unwrap();
        assert_eq!((t.shape, t.data), (vec![1, 1], vec![1.5]));
        let (t, _) = decode_idx(&idx(0x0E, &[1], &(-2.25f64).to_be_bytes())[..]).unwrap();
        assert_eq!(t.data, vec![-2.25]);
    }

    #[test]
    fn bad_headers() {
        for bytes in [
            vec![],
            vec![0, 0],
            vec![1, 2, 3, 4],
            vec![0, 0, 0x07, 1, 0, 0, 0, 1, 5],
            vec![0, 0, 0x08, 2, 0, 0, 0],
            idx(0x08, &[3], &[1, 2]),
            idx(0x08, &[1], &[1, 2]),
            idx(0x0E, &[u32::MAX, u32::MAX, u32::MAX], &[]),
            vec![0x1f, 0x8b, 0, 0, 1, 2, 3],
            vec![0x1f],
        ] {
            assert!(decode_idx(&bytes[..]).is_err(), "{bytes:?}");
        }
    }
}
