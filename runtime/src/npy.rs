//! NumPy `.npy` files: reading arrays into [`Tensor`]s and writing tensors.
//!
//! The format (versions 1.0, 2.0 and 3.0) is a magic string, a version, a
//! little-endian header length, a Python dict literal
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` and the raw
//! elements.
//!
//! **Reading** accepts little-endian, C-order arrays of `float32` and
//! `float64` (converted to `f32` by rounding) and of `bool`, `uint8`, `int8`,
//! `uint16`, `int16`, `uint32`, `int32`, `uint64`, `int64` (converted to the
//! nearest `f32`: exact up to 2^24, plenty for class labels). Fortran order
//! (for arrays of rank 2 or more), big-endian data, other dtypes, truncated
//! files, trailing bytes and garbage are each reported as one clear
//! [`NpyError`]; no input makes the reader panic.
//!
//! **Writing** produces a version 1.0 file (2.0 when the header would not
//! fit, which takes a rank in the thousands) of little-endian `float32` in C
//! order, replaced atomically (temporary file in the same directory, then a
//! rename).
//!
//! The format is parsed here rather than with the `npyz` crate: `npyz` 0.9
//! panics (integer overflow) on a header whose shape product exceeds `u64`,
//! and its errors do not say which of the cases above occurred.

use crate::fsutil::write_atomic;
use crate::tensor::Tensor;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Nesting limit of the header literal (real headers nest two deep).
const MAX_DEPTH: usize = 16;

/// An element type that `.npy` reading accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyDtype {
    /// `|b1`
    Bool,
    /// `|u1`
    U8,
    /// `|i1`
    I8,
    /// `<u2`
    U16,
    /// `<i2`
    I16,
    /// `<u4`
    U32,
    /// `<i4`
    I32,
    /// `<u8`
    U64,
    /// `<i8`
    I64,
    /// `<f4`
    F32,
    /// `<f8`
    F64,
}

impl NpyDtype {
    /// The NumPy name, e.g. `float32`.
    pub fn name(self) -> &'static str {
        match self {
            NpyDtype::Bool => "bool",
            NpyDtype::U8 => "uint8",
            NpyDtype::I8 => "int8",
            NpyDtype::U16 => "uint16",
            NpyDtype::I16 => "int16",
            NpyDtype::U32 => "uint32",
            NpyDtype::I32 => "int32",
            NpyDtype::U64 => "uint64",
            NpyDtype::I64 => "int64",
            NpyDtype::F32 => "float32",
            NpyDtype::F64 => "float64",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            NpyDtype::Bool | NpyDtype::U8 | NpyDtype::I8 => 1,
            NpyDtype::U16 | NpyDtype::I16 => 2,
            NpyDtype::U32 | NpyDtype::I32 | NpyDtype::F32 => 4,
            NpyDtype::U64 | NpyDtype::I64 | NpyDtype::F64 => 8,
        }
    }

    /// Whether the values are integers (or booleans), e.g. class labels.
    pub fn is_integer(self) -> bool {
        !matches!(self, NpyDtype::F32 | NpyDtype::F64)
    }

    fn from_code(kind: char, size: &str) -> Option<NpyDtype> {
        Some(match (kind, size) {
            ('b', "1") | ('?', "") => NpyDtype::Bool,
            ('u', "1") | ('B', "") => NpyDtype::U8,
            ('i', "1") | ('b', "") => NpyDtype::I8,
            ('u', "2") => NpyDtype::U16,
            ('i', "2") => NpyDtype::I16,
            ('u', "4") => NpyDtype::U32,
            ('i', "4") => NpyDtype::I32,
            ('u', "8") => NpyDtype::U64,
            ('i', "8") => NpyDtype::I64,
            ('f', "4") => NpyDtype::F32,
            ('f', "8") => NpyDtype::F64,
            _ => return None,
        })
    }
}

impl fmt::Display for NpyDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong with a `.npy` file.
#[derive(Debug, Error)]
pub enum NpyErrorKind {
    /// The file could not be opened or read.
    #[error("cannot read the file: {0}")]
    Read(io::Error),
    /// The file could not be written.
    #[error("cannot write the file: {0}")]
    Write(io::Error),
    /// The file does not start with `\x93NUMPY`.
    #[error("not a .npy file (it does not start with the .npy magic bytes \\x93NUMPY)")]
    BadMagic,
    /// The file is a `.npz` archive (a zip of `.npy` files).
    #[error(
        "this is an .npz archive, not a .npy file; save each array on its own \
         (e.g. np.save('x.npy', np.load('data.npz')['x']))"
    )]
    Npz,
    /// A format version this reader does not know.
    #[error(
        "unsupported .npy format version {major}.{minor} (netc reads versions 1.0, 2.0 and 3.0)"
    )]
    Version {
        /// Major version byte.
        major: u8,
        /// Minor version byte.
        minor: u8,
    },
    /// The file ends early.
    #[error("the file is truncated: {0}")]
    Truncated(String),
    /// The header is not the dict literal the format prescribes.
    #[error("malformed .npy header: {0}")]
    Header(String),
    /// The array is stored column-major.
    #[error(
        "the array is stored in Fortran (column-major) order; netc reads C order \
         (save it with np.save(path, np.ascontiguousarray(a)))"
    )]
    FortranOrder,
    /// The array is big-endian.
    #[error(
        "the array is big-endian (dtype '{0}'); netc reads little-endian data \
         (convert it with a.astype(a.dtype.newbyteorder('<')))"
    )]
    BigEndian(String),
    /// An element type that cannot become `f32`.
    #[error(
        "unsupported dtype {0}; netc reads float32, float64, bool and 8- to 64-bit integer arrays"
    )]
    Dtype(String),
    /// More bytes than the header accounts for.
    #[error("{extra} unexpected bytes follow the array data; the file is corrupt")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// The element count overflows memory.
    #[error("the array's shape {0:?} is too large")]
    TooLarge(Vec<u64>),
}

/// An error reading or writing a `.npy` file; displays as
/// `PATH: what went wrong` when the file is known.
#[derive(Debug, Error)]
#[error("{}{kind}", path_prefix(.path))]
pub struct NpyError {
    /// The file, when the error came from one.
    pub path: Option<PathBuf>,
    /// What went wrong.
    pub kind: NpyErrorKind,
}

fn path_prefix(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

impl From<NpyErrorKind> for NpyError {
    fn from(kind: NpyErrorKind) -> Self {
        NpyError { path: None, kind }
    }
}

impl NpyError {
    fn at(mut self, path: &Path) -> Self {
        self.path = Some(path.to_path_buf());
        self
    }
}

/// Reads a `.npy` file as an `f32` tensor.
pub fn read_npy(path: impl AsRef<Path>) -> Result<Tensor, NpyError> {
    read_npy_with_dtype(path).map(|(t, _)| t)
}

/// Reads a `.npy` file as an `f32` tensor, with the dtype stored in the file.
pub fn read_npy_with_dtype(path: impl AsRef<Path>) -> Result<(Tensor, NpyDtype), NpyError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| NpyError::from(NpyErrorKind::Read(e)).at(path))?;
    decode_npy(&bytes).map_err(|e| e.at(path))
}

/// Parses the bytes of a `.npy` file.
pub fn decode_npy(bytes: &[u8]) -> Result<(Tensor, NpyDtype), NpyError> {
    use NpyErrorKind as K;
    if bytes.starts_with(b"PK\x03\x04") {
        return Err(K::Npz.into());
    }
    let n = bytes.len().min(MAGIC.len());
    if bytes[..n] != MAGIC[..n] || bytes.is_empty() {
        return Err(K::BadMagic.into());
    }
    let preamble = "it ends inside the .npy preamble";
    let (major, minor) = match bytes.get(6..8) {
        Some(v) => (v[0], v[1]),
        None => return Err(K::Truncated(preamble.into()).into()),
    };
    let (len_size, utf8) = match (major, minor) {
        (1, 0) => (2, false),
        (2, 0) => (4, false),
        (3, 0) => (4, true),
        _ => return Err(K::Version { major, minor }.into()),
    };
    let Some(len_bytes) = bytes.get(8..8 + len_size) else {
        return Err(K::Truncated(preamble.into()).into());
    };
    let header_len = len_bytes
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | b as usize);
    let start = 8 + len_size;
    let rest = &bytes[start..];
    if rest.len() < header_len {
        return Err(K::Truncated(format!(
            "the header is announced as {header_len} bytes but only {} follow",
            rest.len()
        ))
        .into());
    }
    let (header, data) = rest.split_at(header_len);
    let text = if utf8 {
        std::str::from_utf8(header).map_err(|_| K::Header("it is not valid UTF-8".into()))?
    } else {
        if !header.is_ascii() {
            return Err(K::Header("it is not ASCII text".into()).into());
        }
        // ASCII is valid UTF-8.
        std::str::from_utf8(header).map_err(|_| K::Header("it is not ASCII text".into()))?
    };
    let h = parse_header(text)?;
    let count = h
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| {
            usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        })
        .ok_or_else(|| K::TooLarge(h.shape.clone()))?;
    let need = count
        .checked_mul(h.dtype.size())
        .ok_or_else(|| K::TooLarge(h.shape.clone()))?;
    if data.len() < need {
        return Err(K::Truncated(format!(
            "the header describes {count} {} elements ({need} bytes) but only {} bytes of data follow",
            h.dtype,
            data.len()
        ))
        .into());
    }
    if data.len() > need {
        return Err(K::TrailingBytes {
            extra: data.len() - need,
        }
        .into());
    }
    let values = convert(h.dtype, data);
    // `count` fits in usize, so every dimension does too.
    let shape = h.shape.iter().map(|&d| d as usize).collect();
    Ok((
        Tensor {
            shape,
            data: values,
        },
        h.dtype,
    ))
}

fn convert(dtype: NpyDtype, data: &[u8]) -> Vec<f32> {
    macro_rules! le {
        ($t:ty, $n:expr) => {
            data.chunks_exact($n)
                .map(|c| {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(c);
                    <$t>::from_le_bytes(a) as f32
                })
                .collect()
        };
    }
    match dtype {
        NpyDtype::Bool => data.iter().map(|&b| f32::from(u8::from(b != 0))).collect(),
        NpyDtype::U8 => data.iter().map(|&b| f32::from(b)).collect(),
        NpyDtype::I8 => data.iter().map(|&b| f32::from(b as i8)).collect(),
        NpyDtype::U16 => le!(u16, 2),
        NpyDtype::I16 => le!(i16, 2),
        NpyDtype::U32 => le!(u32, 4),
        NpyDtype::I32 => le!(i32, 4),
        NpyDtype::U64 => le!(u64, 8),
        NpyDtype::I64 => le!(i64, 8),
        NpyDtype::F32 => le!(f32, 4),
        NpyDtype::F64 => le!(f64, 8),
    }
}

/// The bytes of a `.npy` file holding `t` as little-endian `float32` in C order.
pub fn encode_npy(t: &Tensor) -> Vec<u8> {
    let shape = match t.shape.as_slice() {
        [d] => format!("({d},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Version 1.0 has a u16 header length; 2.0 a u32. Pad with spaces and a
    // final newline so the data starts on a 64-byte boundary.
    let v1 = 6 + 2 + 2 + header.len() < u16::MAX as usize - 64;
    let preamble = if v1 { 10 } else { 12 };
    let total = (preamble + header.len() + 1).div_ceil(64) * 64;
    while preamble + header.len() + 1 < total {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(total + 4 * t.data.len());
    out.extend_from_slice(MAGIC);
    if v1 {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    for v in &t.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes `t` to `path` as a `.npy` file of `float32`, atomically.
pub fn write_npy(path: impl AsRef<Path>, t: &Tensor) -> Result<(), NpyError> {
    let path = path.as_ref();
    write_atomic(path, &encode_npy(t)).map_err(|e| NpyError::from(NpyErrorKind::Write(e)).at(path))
}

// ---------------------------------------------------------------------------
// The header: a Python dict literal.

struct Header {
    dtype: NpyDtype,
    shape: Vec<u64>,
}

#[derive(Debug)]
enum Py {
    Str(String),
    Bool(bool),
    Int(Option<u64>),
    NegInt,
    None,
    Seq(Vec<Py>),
    Dict(Vec<(Py, Py)>),
}

impl Py {
    fn describe(&self) -> &'static str {
        match self {
            Py::Str(_) => "a string",
            Py::Bool(_) => "a boolean",
            Py::Int(_) | Py::NegInt => "an integer",
            Py::None => "None",
            Py::Seq(_) => "a tuple or list",
            Py::Dict(_) => "a dict",
        }
    }
}

fn parse_header(text: &str) -> Result<Header, NpyError> {
    use NpyErrorKind as K;
    let bad = |m: String| NpyError::from(K::Header(m));
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p.value(0).map_err(bad)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(bad(format!(
            "unexpected text after the dict at byte {}",
            p.i
        )));
    }
    let Py::Dict(entries) = v else {
        return Err(bad(format!("expected a dict, found {}", v.describe())));
    };
    let get = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| matches!(k, Py::Str(s) if s == key))
            .map(|(_, v)| v)
            .ok_or_else(|| bad(format!("it has no '{key}' key")))
    };
    let descr = match get("descr")? {
        Py::Str(s) => s.clone(),
        Py::Seq(_) => {
            return Err(K::Dtype("(a structured record dtype)".into()).into());
        }
        other => {
            return Err(bad(format!("'descr' is {}", other.describe())));
        }
    };
    let fortran = match get("fortran_order")? {
        Py::Bool(b) => *b,
        other => {
            return Err(bad(format!("'fortran_order' is {}", other.describe())));
        }
    };
    let shape = match get("shape")? {
        Py::Seq(items) => items
            .iter()
            .map(|d| match d {
                Py::Int(Some(n)) => Ok(*n),
                Py::Int(None) => Err(bad("a dimension in 'shape' is too large".into())),
                Py::NegInt => Err(bad("a dimension in 'shape' is negative".into())),
                other => Err(bad(format!(
                    "a dimension in 'shape' is {}",
                    other.describe()
                ))),
            })
            .collect::<Result<Vec<u64>, _>>()?,
        other => {
            return Err(bad(format!("'shape' is {}", other.describe())));
        }
    };
    let (order, code) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, &descr[1..]),
        _ => ('|', descr.as_str()),
    };
    let mut chars = code.chars();
    let dtype = chars
        .next()
        .and_then(|k| NpyDtype::from_code(k, chars.as_str()))
        .ok_or_else(|| K::Dtype(format!("'{descr}'")))?;
    let little = match order {
        '<' => true,
        '>' => false,
        '=' => cfg!(target_endian = "little"),
        _ => true,
    };
    if !little && dtype.size() > 1 {
        return Err(K::BigEndian(descr).into());
    }
    // A rank-0 or rank-1 array has the same layout in either order.
    if fortran && shape.len() > 1 {
        return Err(K::FortranOrder.into());
    }
    Ok(Header { dtype, shape })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat_word(&mut self, w: &str) -> bool {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Py, String> {
        if depth > MAX_DEPTH {
            return Err("it is nested too deeply".into());
        }
        self.ws();
        let at = self.i;
        match self.peek() {
            None => Err("it ends in the middle of a value".into()),
            Some(b'{') => {
                self.i += 1;
                let mut entries = Vec::new();
                loop {
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        return Ok(Py::Dict(entries));
                    }
                    let k = self.value(depth + 1)?;
                    self.ws();
                    if self.peek() != Some(b':') {
                        return Err(format!("expected `:` at byte {}", self.i));
                    }
                    self.i += 1;
                    let v = self.value(depth + 1)?;
                    entries.push((k, v));
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {}
                        _ => return Err(format!("expected `,` or `}}` at byte {}", self.i)),
                    }
                }
            }
            Some(open @ (b'(' | b'[')) => {
                let close = if open == b'(' { b')' } else { b']' };
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.ws();
                    if self.peek() == Some(close) {
                        self.i += 1;
                        return Ok(Py::Seq(items));
                    }
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(c) if c == close => {}
                        _ => {
                            return Err(format!(
                                "expected `,` or `{}` at byte {}",
                                close as char, self.i
                            ))
                        }
                    }
                }
            }
            Some(q @ (b'\'' | b'"')) => {
                self.i += 1;
                let mut out = Vec::new();
                loop {
                    match self.peek() {
                        None => return Err(format!("unterminated string at byte {at}")),
                        Some(b'\\') => {
                            self.i += 1;
                            if let Some(c) = self.peek() {
                                out.push(c);
                                self.i += 1;
                            }
                        }
                        Some(c) if c == q => {
                            self.i += 1;
                            break;
                        }
                        Some(c) => {
                            out.push(c);
                            self.i += 1;
                        }
                    }
                }
                String::from_utf8(out)
                    .map(Py::Str)
                    .map_err(|_| "a string is not valid UTF-8".into())
            }
            Some(b'-' | b'0'..=b'9') => {
                let neg = self.peek() == Some(b'-');
                if neg {
                    self.i += 1;
                }
                let start = self.i;
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.i += 1;
                }
                if start == self.i {
                    return Err(format!("expected digits at byte {}", self.i));
                }
                let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                // Python 2 wrote long integers as `3L`.
                if matches!(self.peek(), Some(b'L' | b'l')) {
                    self.i += 1;
                }
                if neg {
                    Ok(Py::NegInt)
                } else {
                    Ok(Py::Int(digits.parse::<u64>().ok()))
                }
            }
            Some(_) => {
                if self.eat_word("True") {
                    Ok(Py::Bool(true))
                } else if self.eat_word("False") {
                    Ok(Py::Bool(false))
                } else if self.eat_word("None") {
                    Ok(Py::None)
                } else {
                    Err(format!("unexpected character at byte {at}"))
                }
            }
        }
    }
}
