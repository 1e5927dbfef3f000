//! Reading a text data file as numbered lines.
//!
//! A file that starts with the gzip magic `1f 8b` (as the shipped corpora
//! in `data/text/*.gz` do) is decompressed first, whatever its name; a
//! corrupt gzip stream is an error naming the file. The UCR `.ts` loader
//! reads its files through here too.
//!
//! Lines end with `\n` (a `\r` before it is dropped, so CRLF files read
//! the same); a UTF-8 byte order mark at the start is ignored. Every line
//! must be UTF-8: the first that is not is an error naming its line and
//! byte column. Blank lines (empty or whitespace only) are skipped — they
//! separate sentences or paragraphs in many corpora — and the remaining
//! lines keep their 1-based numbers for messages.

use std::io::Read;
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::super::error::{DataError, DataErrorKind};

/// One non-blank line of a text file.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// 1-based line number in the file.
    pub number: u64,
    /// The line without its line end.
    pub text: String,
}

/// The non-blank lines of the file at `path` (see the module doc).
pub fn read_lines(path: &Path) -> Result<Vec<Line>, DataError> {
    let mut bytes =
        std::fs::read(path).map_err(|e| DataError::from(DataErrorKind::Read(e)).at(path))?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut text = Vec::new();
        MultiGzDecoder::new(bytes.as_slice())
            .read_to_end(&mut text)
            .map_err(|e| DataError::from(DataErrorKind::Gzip(e)).at(path))?;
        bytes = text;
    }
    split_lines(&bytes).map_err(|e| e.at(path))
}

/// [`read_lines`] on bytes already read.
pub fn split_lines(bytes: &[u8]) -> Result<Vec<Line>, DataError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let number = i as u64 + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw).map_err(|e| {
            let at = e.valid_up_to();
            DataError::line(
                number,
                format!(
                    "not UTF-8 text (byte 0x{:02x} at column {})",
                    raw[at],
                    at + 1
                ),
            )
        })?;
        if !text.trim().is_empty() {
            out.push(Line {
                number,
                text: text.to_string(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines_are_skipped_and_numbers_kept() {
        let l = split_lines(b"\xEF\xBB\xBFa\r\n\n  \nb c\n").unwrap();
        assert_eq!(
            l,
            [
                Line {
                    number: 1,
                    text: "a".into()
                },
                Line {
                    number: 4,
                    text: "b c".into()
                },
            ]
        );
    }

    #[test]
    fn gzip_is_read_transparently_and_corrupt_gzip_is_an_error() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"a\tb\n\nc\n").unwrap();
        let bytes = gz.finish().unwrap();
        let p = dir.path().join("x.tsv.gz");
        std::fs::write(&p, &bytes).unwrap();
        let l = read_lines(&p).unwrap();
        assert_eq!(l.iter().map(|l| l.number).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(l[0].text, "a\tb");
        let cut = dir.path().join("cut.gz");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = read_lines(&cut).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: the gzip stream is corrupt", cut.display())),
            "{e}"
        );
    }

    #[test]
    fn invalid_utf8_names_line_and_column() {
        let e = split_lines(b"ok\nab\xffc\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 2: not UTF-8 text (byte 0xff at column 3)"
        );
    }
}
