//! The UCR/UEA time-series archive's `.ts` text format.
//!
//! Header lines start with `#` (comments) or `@` (`@problemName`,
//! `@timeStamps`, `@missing`, `@univariate`, `@dimensions`, `@equalLength`,
//! `@seriesLength`, `@classLabel true a b c` / `@targetLabel true`), then
//! `@data` and one series per line: comma-separated values, dimensions
//! separated by `:`, the label last (`v1,v2,...:label`).
//!
//! Univariate series load as `[N, L]`, multivariate ones as `[N, L, D]`
//! (time-major, channels last, as the recurrent layers read them). Class
//! labels map to `0..k` in the order `@classLabel` lists them, so
//! ItalyPowerDemand's `1`/`2` become classes 0/1. Series must be complete
//! (`?` is an error naming the line).
//!
//! Series have one length unless the header says `@equalLength false`
//! (JapaneseVowels: 7 to 29 steps). Then `L` is the longest, shorter
//! series are padded with zeros **at the start**, and each series' true
//! length is kept ([`Dataset::lengths`]); [`Dataset::pad_steps`] brings
//! them to the model's length (see `pad.rs` for why the start). All
//! dimensions of one series still have one length.
//!
//! The file is read as numbered lines by the text loaders' reader, so a
//! gzip-compressed file (`X_TRAIN.ts.gz`) reads the same as the plain one.

use std::path::Path;

use crate::tensor::Tensor;

use super::dataset::Dataset;
use super::error::DataError;
use super::text::lines::{read_lines, split_lines, Line};

/// A parsed `.ts` file: the data set and, for classification, the label
/// names in class-index order.
#[derive(Clone, Debug, PartialEq)]
pub struct UcrFile {
    /// The series and their labels.
    pub data: Dataset,
    /// `@classLabel`'s names: class `i` is `labels[i]`; `None` for
    /// regression (`@targetLabel true`).
    pub labels: Option<Vec<String>>,
    /// `@problemName`, when given.
    pub problem: Option<String>,
}

/// Loads a `.ts` file as a data set.
pub fn load_ucr(path: impl AsRef<Path>) -> Result<Dataset, DataError> {
    read_ucr(path).map(|f| f.data)
}

/// Loads a `.ts` file (plain or gzip) with its label names.
pub fn read_ucr(path: impl AsRef<Path>) -> Result<UcrFile, DataError> {
    let path = path.as_ref();
    let text = read_lines(path)?;
    let (mut file, lines) = parse_with_lines(&text).map_err(|e| e.at(path))?;
    file.data = file.data.located(path, Some(lines));
    if let Some(names) = &file.labels {
        file.data = file.data.with_class_names(names.clone());
    }
    Ok(file)
}

enum Target {
    Classes(Vec<String>),
    Value,
}

fn parse_bool(line: u64, key: &str, v: Option<&str>) -> Result<bool, DataError> {
    match v.map(str::to_ascii_lowercase).as_deref() {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        _ => Err(DataError::line(line, format!("{key} needs true or false"))),
    }
}

fn parse_count(line: u64, key: &str, v: Option<&str>) -> Result<usize, DataError> {
    v.and_then(|s| s.parse::<usize>().ok())
        .ok_or_else(|| DataError::line(line, format!("{key} needs a whole number")))
}

/// Parses the text of a `.ts` file.
pub fn parse_ucr(text: &str) -> Result<UcrFile, DataError> {
    parse_with_lines(&split_lines(text.as_bytes())?).map(|(f, _)| f)
}

/// Parses the lines of a `.ts` file; also returns each series' line number.
fn parse_with_lines(text: &[Line]) -> Result<(UcrFile, Vec<u64>), DataError> {
    let mut problem = None;
    let mut target: Option<Target> = None;
    let mut univariate: Option<bool> = None;
    let mut dimensions: Option<usize> = None;
    let mut series_length: Option<usize> = None;
    let mut equal_length = true;
    let mut in_data = false;

    // Each series time-major ([len, dims]), padded once all are read.
    let mut series: Vec<Vec<f32>> = Vec::new();
    let mut lengths: Vec<usize> = Vec::new();
    let mut y: Vec<f32> = Vec::new();
    let mut lines: Vec<u64> = Vec::new();
    let mut shape: Option<(usize, usize)> = None; // the first series' (dims, length)

    for Line { number, text: raw } in text {
        let line_no = *number;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !in_data {
            let Some(rest) = line.strip_prefix('@') else {
                return Err(DataError::line(
                    line_no,
                    "data before the @data line (header lines start with # or @)",
                ));
            };
            let mut words = rest.split_whitespace();
            let key = words.next().unwrap_or("").to_ascii_lowercase();
            match key.as_str() {
                "problemname" => problem = words.next().map(str::to_string),
                "timestamps" => {
                    let stamped = parse_bool(line_no, "@timeStamps", words.next())?;
                    if stamped {
                        return Err(DataError::line(
                            line_no,
                            "series with time stamps (@timeStamps true) are not supported",
                        ));
                    }
                }
                "missing" => {
                    parse_bool(line_no, "@missing", words.next())?;
                }
                "univariate" => {
                    univariate = Some(parse_bool(line_no, "@univariate", words.next())?)
                }
                "dimensions" => {
                    dimensions = Some(parse_count(line_no, "@dimensions", words.next())?)
                }
                "equallength" => {
                    equal_length = parse_bool(line_no, "@equalLength", words.next())?;
                }
                "serieslength" => {
                    series_length = Some(parse_count(line_no, "@seriesLength", words.next())?)
                }
                "classlabel" => {
                    let labelled = parse_bool(line_no, "@classLabel", words.next())?;
                    if labelled {
                        let names: Vec<String> = words.map(str::to_string).collect();
                        if names.is_empty() {
                            return Err(DataError::line(
                                line_no,
                                "@classLabel true lists no class labels",
                            ));
                        }
                        if let Some(d) = names
                            .iter()
                            .enumerate()
                            .find_map(|(i, n)| names[..i].contains(n).then_some(n))
                        {
                            return Err(DataError::line(
                                line_no,
                                format!("@classLabel lists label {d} twice"),
                            ));
                        }
                        target = Some(Target::Classes(names));
                    }
                }
                "targetlabel" => {
                    let regression = parse_bool(line_no, "@targetLabel", words.next())?;
                    if regression {
                        target = Some(Target::Value);
                    }
                }
                "data" => {
                    if target.is_none() {
                        return Err(DataError::line(
                            line_no,
                            "the header declares no labels (@classLabel true ... or \
                             @targetLabel true); netc trains on labelled series",
                        ));
                    }
                    in_data = true;
                }
                _ => {} // other keys (@timeStamps-free extensions) carry no data layout
            }
            continue;
        }

        // A data line: dims separated by ':', label last.
        let parts: Vec<&str> = line.split(':').collect();
        if parts.len() < 2 {
            return Err(DataError::line(
                line_no,
                "expected values followed by ':label'",
            ));
        }
        let (dims, label) = parts.split_at(parts.len() - 1);
        let label = label[0].trim();
        let mut rows: Vec<Vec<f32>> = Vec::with_capacity(dims.len());
        for (d, dim) in dims.iter().enumerate() {
            let mut row = Vec::new();
            for (p, v) in dim.split(',').enumerate() {
                let v = v.trim();
                if v == "?" || v.eq_ignore_ascii_case("nan") {
                    return Err(DataError::line(
                        line_no,
                        format!(
                            "missing value at dimension {}, position {}; netc needs complete series",
                            d + 1,
                            p + 1
                        ),
                    ));
                }
                let f: f32 = v.parse().map_err(|_| {
                    DataError::line(
                        line_no,
                        format!(
                            "'{v}' at dimension {}, position {} is not a number",
                            d + 1,
                            p + 1
                        ),
                    )
                })?;
                if !f.is_finite() {
                    return Err(DataError::line(
                        line_no,
                        format!(
                            "value '{v}' at dimension {}, position {} is not finite",
                            d + 1,
                            p + 1
                        ),
                    ));
                }
                row.push(f);
            }
            rows.push(row);
        }
        let len = rows[0].len();
        if let Some((d, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != len) {
            return Err(DataError::line(
                line_no,
                format!(
                    "dimension {} has {} values but dimension 1 has {len}; netc needs equal lengths",
                    d + 1,
                    r.len()
                ),
            ));
        }
        match shape {
            None => {
                if let Some(sl) = series_length.filter(|_| equal_length) {
                    if sl != len {
                        return Err(DataError::line(
                            line_no,
                            format!("the series has {len} values but @seriesLength is {sl}"),
                        ));
                    }
                }
                let want_dims = dimensions.or(match univariate {
                    Some(true) => Some(1),
                    _ => None,
                });
                if let Some(w) = want_dims {
                    if w != rows.len() {
                        return Err(DataError::line(
                            line_no,
                            format!(
                                "the series has {} dimensions but the header declares {w}",
                                rows.len()
                            ),
                        ));
                    }
                }
                shape = Some((rows.len(), len));
            }
            Some((dd, ll)) => {
                if dd != rows.len() {
                    return Err(DataError::line(
                        line_no,
                        format!(
                            "the series has {} dimension(s) but the first series has {dd}",
                            rows.len()
                        ),
                    ));
                }
                if equal_length && ll != len {
                    return Err(DataError::line(
                        line_no,
                        format!(
                            "the series has {len} values per dimension but the first series has \
                             {ll}; a file of series of different lengths says \
                             `@equalLength false` in its header"
                        ),
                    ));
                }
            }
        }
        // Interleave to time-major [L, D].
        let mut values = Vec::with_capacity(len * rows.len());
        for t in 0..len {
            for r in &rows {
                values.push(r[t]);
            }
        }
        series.push(values);
        lengths.push(len);
        let label_value = match target.as_ref() {
            Some(Target::Classes(names)) => class_index(names, label).ok_or_else(|| {
                DataError::line(
                    line_no,
                    format!(
                        "label '{label}' is not one of the @classLabel labels {}",
                        names.join(" ")
                    ),
                )
            })? as f32,
            _ => label
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    DataError::line(line_no, format!("target '{label}' is not a number"))
                })?,
        };
        y.push(label_value);
        lines.push(line_no);
    }
    if !in_data {
        return Err(DataError::format("no @data line; not a UCR/UEA .ts file"));
    }
    let Some((dims, _)) = shape else {
        return Err(DataError::format("the file holds no series after @data"));
    };
    let n = y.len();
    let len = lengths.iter().copied().max().unwrap_or(0);
    // Zeros first: each series' real steps end at step `len`.
    let mut values: Vec<f32> = Vec::with_capacity(n * len * dims);
    for s in &series {
        values.resize(values.len() + len * dims - s.len(), 0.0);
        values.extend_from_slice(s);
    }
    let x_shape = if dims == 1 {
        vec![n, len]
    } else {
        vec![n, len, dims]
    };
    let (labels, classes) = match target {
        Some(Target::Classes(names)) => {
            let k = names.len();
            (Some(names), Some(k))
        }
        _ => (None, None),
    };
    let x = Tensor::new(x_shape, values).map_err(|e| DataError::format(e.to_string()))?;
    let mut data = Dataset::new(x, y, classes)?;
    if !equal_length {
        data.lengths = Some(lengths);
    }
    let file = UcrFile {
        data,
        labels,
        problem,
    };
    Ok((file, lines))
}

/// The class index of `label`: an exact match first, then a numeric one
/// (`1.0` matches a declared `1`).
fn class_index(names: &[String], label: &str) -> Option<usize> {
    if let Some(i) = names.iter().position(|n| n == label) {
        return Some(i);
    }
    let v: f64 = label.parse().ok()?;
    names.iter().position(|n| n.parse::<f64>().ok() == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn univariate_and_multivariate() {
        let f = parse_ucr("#c\n@problemName T\n@classLabel true a b\n@data\n1,2,3:b\n4,5,6:a\n")
            .unwrap();
        assert_eq!(f.data.x.shape, vec![2, 3]);
        assert_eq!(f.data.y, vec![1.0, 0.0]);
        assert_eq!(f.data.classes, Some(2));
        assert_eq!(f.problem.as_deref(), Some("T"));
        let f = parse_ucr(
            "@univariate false\n@dimensions 2\n@classLabel true 1 2\n@data\n1,2:3,4:2.0\n",
        )
        .unwrap();
        assert_eq!(f.data.x.shape, vec![1, 2, 2]);
        assert_eq!(f.data.x.data, vec![1.0, 3.0, 2.0, 4.0]);
        assert_eq!(f.data.y, vec![1.0]);
        let f = parse_ucr("@targetLabel true\n@data\n1,2:0.5\n").unwrap();
        assert_eq!((f.data.y, f.data.classes), (vec![0.5], None));
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("@classLabel true 1 2\n@data\n1,?,3:1\n", "line 3"),
            ("@classLabel true 1 2\n@data\n1,2,3:1\n1,2:1\n", "line 4"),
            ("@classLabel true 1 2\n@data\n1,2,3:7\n", "line 3"),
            ("@classLabel true 1 2\n@data\n1,x,3:1\n", "line 3"),
            ("@classLabel true 1 2\n@data\n1,2,3\n", "line 3"),
            (
                "@seriesLength 4\n@classLabel true 1 2\n@data\n1,2,3:1\n",
                "line 4",
            ),
            ("@classLabel true 1 2\n1,2\n", "line 2"),
            ("@data\n1,2:1\n", "line 1"),
            ("@equalLength maybe\n", "line 1"),
        ];
        for (text, want) in cases {
            let e = parse_ucr(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        assert!(parse_ucr("").is_err());
        assert!(parse_ucr("@classLabel true 1\n@data\n").is_err());
    }

    /// Three univariate series of 2, 4 and 3 steps (lines 5, 6, 8).
    const RAGGED: &str = "@problemName Ragged\n@equalLength false\n@classLabel true x y\n\
                          @data\n1,2:y\n3,4,5,6:x\n\n7,8,9:y\n";

    #[test]
    fn unequal_lengths_pad_at_the_start_and_keep_the_true_lengths() {
        let f = parse_ucr(RAGGED).unwrap();
        let d = &f.data;
        assert_eq!(d.x.shape, vec![3, 4]);
        #[rustfmt::skip]
        assert_eq!(d.x.data, vec![
            0.0, 0.0, 1.0, 2.0,
            3.0, 4.0, 5.0, 6.0,
            0.0, 7.0, 8.0, 9.0,
        ]);
        assert_eq!(d.y, vec![1.0, 0.0, 1.0]);
        assert_eq!(d.lengths, Some(vec![2, 4, 3]));
        // Equal-length files keep no lengths: nothing was padded.
        let f = parse_ucr("@classLabel true 1 2\n@data\n1,2:1\n3,4:2\n").unwrap();
        assert_eq!(f.data.lengths, None);
    }

    #[test]
    fn unequal_multivariate_series_pad_whole_steps() {
        // Two dimensions: the first series has 1 step, the second 3.
        let f = parse_ucr(
            "@dimensions 2\n@equalLength false\n@classLabel true 1 2\n@data\n\
             1:2:1\n3,5,7:4,6,8:2\n",
        )
        .unwrap();
        assert_eq!(f.data.x.shape, vec![2, 3, 2]);
        #[rustfmt::skip]
        assert_eq!(f.data.x.data, vec![
            0.0, 0.0,  0.0, 0.0,  1.0, 2.0,
            3.0, 4.0,  5.0, 6.0,  7.0, 8.0,
        ]);
        assert_eq!(f.data.lengths, Some(vec![1, 3]));
        assert_eq!(f.data.y, vec![0.0, 1.0]);
        // A model of 4 steps: one more zero step in front of each.
        let d = f.data.pad_steps(4).unwrap();
        assert_eq!(d.x.shape, vec![2, 4, 2]);
        #[rustfmt::skip]
        assert_eq!(d.x.data, vec![
            0.0, 0.0,  0.0, 0.0,  0.0, 0.0,  1.0, 2.0,
            0.0, 0.0,  3.0, 4.0,  5.0, 6.0,  7.0, 8.0,
        ]);
    }

    #[test]
    fn unequal_length_errors_name_the_line() {
        let cases = [
            // Different lengths without the header's word for them.
            (
                "@classLabel true 1 2\n@data\n1,2,3:1\n1,2:1\n",
                "line 4: the series has 2 values per dimension but the first series has 3; a \
                 file of series of different lengths says `@equalLength false` in its header",
            ),
            // Dimensions of one series still share a length.
            (
                "@equalLength false\n@classLabel true 1 2\n@data\n1,2:3:1\n",
                "line 4: dimension 2 has 1 values but dimension 1 has 2; netc needs equal lengths",
            ),
            (
                "@equalLength false\n@classLabel true 1 2\n@data\n1,2:3,4:1\n5:2\n",
                "line 5: the series has 1 dimension(s) but the first series has 2",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_ucr(text).unwrap_err().to_string(), want);
        }
        // Longer than the model's input: named with its line.
        let f = read_lines_of(RAGGED);
        let e = f.pad_steps(3).unwrap_err().to_string();
        assert_eq!(
            e,
            "r.ts: line 6: the series has 4 time steps but the model's input has 3; netc pads \
             shorter series with zeros at the start but does not cut longer ones: give the \
             input at least 4 steps, the longest series here"
        );
    }

    /// `text` parsed as the file `r.ts`, with its series' line numbers.
    fn read_lines_of(text: &str) -> Dataset {
        let (f, lines) = parse_with_lines(&split_lines(text.as_bytes()).unwrap()).unwrap();
        f.data.located(Path::new("r.ts"), Some(lines))
    }
}
