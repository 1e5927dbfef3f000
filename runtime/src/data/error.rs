//! The one error type of the data loaders: [`DataError`], a
//! [`DataErrorKind`] plus the file it came from. It displays as one line,
//! `PATH: what went wrong`, naming the line or the numbers involved.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::npy::NpyError;

/// What went wrong while loading or preparing a data set.
#[derive(Debug, Error)]
pub enum DataErrorKind {
    /// The file could not be opened or read.
    #[error("cannot read the file: {0}")]
    Read(io::Error),
    /// The file starts with the gzip magic bytes but does not decompress.
    #[error("the gzip stream is corrupt: {0}")]
    Gzip(io::Error),
    /// The file ends before the data its header announces.
    #[error("the file is truncated: {0}")]
    Truncated(String),
    /// The file is not in the expected format (bad magic, bad header, extra bytes).
    #[error("{0}")]
    Format(String),
    /// A problem on one line of a text file (`.ts`, `.csv`); `line` is 1-based.
    #[error("line {line}: {msg}")]
    Line {
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        msg: String,
    },
    /// A `.npy` file could not be read; the inner error names the file.
    #[error("{0}")]
    Npy(NpyError),
    /// Examples and labels (or two files of one data set) do not fit together.
    #[error("{0}")]
    Mismatch(String),
    /// A shape that does not fit the model or the operation.
    #[error("{0}")]
    Shape(String),
    /// A data set specification that names nothing loadable.
    #[error("{0}")]
    NotFound(String),
    /// An invalid argument (split fraction, label, index out of range).
    #[error("{0}")]
    Invalid(String),
}

/// An error from the data loaders; displays as `PATH: what went wrong` when
/// the error concerns a file, otherwise as just the problem.
#[derive(Debug, Error)]
#[error("{}{kind}", path_prefix(.path))]
pub struct DataError {
    /// The file (or directory) the error concerns, when there is one.
    pub path: Option<PathBuf>,
    /// What went wrong.
    pub kind: DataErrorKind,
}

fn path_prefix(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

impl From<DataErrorKind> for DataError {
    fn from(kind: DataErrorKind) -> Self {
        DataError { path: None, kind }
    }
}

impl From<NpyError> for DataError {
    fn from(e: NpyError) -> Self {
        DataErrorKind::Npy(e).into()
    }
}

impl DataError {
    /// Attaches the file the error concerns (keeps an existing one).
    pub(crate) fn at(mut self, path: &Path) -> Self {
        if self.path.is_none() && !matches!(self.kind, DataErrorKind::Npy(_)) {
            self.path = Some(path.to_path_buf());
        }
        self
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        DataErrorKind::Invalid(msg.into()).into()
    }

    pub(crate) fn shape(msg: impl Into<String>) -> Self {
        DataErrorKind::Shape(msg.into()).into()
    }

    pub(crate) fn mismatch(msg: impl Into<String>) -> Self {
        DataErrorKind::Mismatch(msg.into()).into()
    }

    pub(crate) fn format(msg: impl Into<String>) -> Self {
        DataErrorKind::Format(msg.into()).into()
    }

    pub(crate) fn line(line: u64, msg: impl Into<String>) -> Self {
        DataErrorKind::Line {
            line,
            msg: msg.into(),
        }
        .into()
    }
}
