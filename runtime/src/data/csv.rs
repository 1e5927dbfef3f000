//! Numeric CSV: one example per row, one column holding the label (by
//! default the last), every other column a feature. The first row is a
//! header when it is not all numbers (or as [`CsvOptions::header`] says).
//! Labels may be numbers or names; names map to class indices in sorted
//! order.

use std::path::Path;

use crate::tensor::Tensor;

use super::dataset::{infer_classes, Dataset};
use super::error::{DataError, DataErrorKind};

/// Which column holds the label.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum LabelColumn {
    /// The last column.
    #[default]
    Last,
    /// A 0-based column index.
    Index(usize),
    /// The column with this header name (requires a header row).
    Name(String),
}

/// Whether the labels are class indices or regression targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LabelKind {
    /// Classes when every label is a non-negative integer or any label is a
    /// name; regression targets otherwise.
    #[default]
    Auto,
    /// Class indices `0..k` (numbers) or class names.
    Classes,
    /// Regression targets (numbers).
    Targets,
}

/// How to read a CSV file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvOptions {
    /// `Some(true)`: the first row is a header; `Some(false)`: it is data;
    /// `None`: a header when any of its fields is not a number.
    pub header: Option<bool>,
    /// The label column.
    pub label: LabelColumn,
    /// How to interpret the labels.
    pub kind: LabelKind,
    /// The field delimiter (default `,`).
    pub delimiter: u8,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            header: None,
            label: LabelColumn::Last,
            kind: LabelKind::Auto,
            delimiter: b',',
        }
    }
}

/// A loaded CSV file: the data set, the feature column names (from the
/// header, or `col0`, `col1`, ...) and, when labels were names, the class
/// names in class-index order.
#[derive(Clone, Debug, PartialEq)]
pub struct CsvFile {
    /// Features `[N, F]` and labels.
    pub data: Dataset,
    /// The names of the `F` feature columns.
    pub features: Vec<String>,
    /// Class names when the labels were text; class `i` is `class_names[i]`.
    pub class_names: Option<Vec<String>>,
}

/// Loads a CSV file as a data set.
pub fn load_csv(path: impl AsRef<Path>, options: &CsvOptions) -> Result<Dataset, DataError> {
    read_csv(path, options).map(|f| f.data)
}

/// Loads a CSV file with its column and class names.
pub fn read_csv(path: impl AsRef<Path>, options: &CsvOptions) -> Result<CsvFile, DataError> {
    let path = path.as_ref();
    let bytes =
        std::fs::read(path).map_err(|e| DataError::from(DataErrorKind::Read(e)).at(path))?;
    parse_csv_at(&bytes, options, Some(path)).map_err(|e| e.at(path))
}

fn line_of(rec: &::csv::ByteRecord) -> u64 {
    rec.position().map_or(0, |p| p.line())
}

/// Parses CSV bytes.
pub fn parse_csv(bytes: &[u8], options: &CsvOptions) -> Result<CsvFile, DataError> {
    parse_csv_at(bytes, options, None)
}

/// The field delimiters a CSV file is commonly written with besides `,`.
const OTHER_DELIMITERS: [(u8, &str); 3] = [(b';', "';'"), (b'\t', "tabs"), (b'|', "'|'")];

/// Parses CSV bytes read from `path` (remembered for label messages).
fn parse_csv_at(
    bytes: &[u8],
    options: &CsvOptions,
    path: Option<&Path>,
) -> Result<CsvFile, DataError> {
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(options.delimiter)
        .flexible(false)
        .trim(::csv::Trim::All)
        .from_reader(bytes);
    let mut records = Vec::new();
    for r in reader.byte_records() {
        let rec = r.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            let msg = match e.kind() {
                ::csv::ErrorKind::UnequalLengths {
                    expected_len, len, ..
                } => format!("{len} fields but the first row has {expected_len}"),
                _ => e.to_string(),
            };
            DataError::line(line, msg)
        })?;
        // Skip blank lines (a single empty field).
        if rec.len() == 1 && rec[0].is_empty() {
            continue;
        }
        records.push(rec);
    }
    let Some(first) = records.first() else {
        return Err(DataError::format("the file holds no rows"));
    };
    let numeric = |f: &[u8]| {
        std::str::from_utf8(f)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .is_some()
    };
    if first.len() == 1 {
        // One field per row is a label without features; usually the file
        // separates its fields with something else than the delimiter.
        let used = OTHER_DELIMITERS
            .iter()
            .find(|(d, _)| *d != options.delimiter && first[0].contains(d));
        let msg = match used {
            Some((_, name)) => format!(
                "the row reads as a single column: the file seems to separate its fields with \
                 {name}, but netc reads comma-separated values (write ',' between fields)"
            ),
            None => "the row has a single column: a label and no features".to_string(),
        };
        return Err(DataError::line(line_of(first), msg));
    }
    let has_header = options.header.unwrap_or_else(|| !first.iter().all(numeric));
    let ncols = first.len();
    let names: Vec<String> = if has_header {
        first
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect()
    } else {
        (0..ncols).map(|i| format!("col{i}")).collect()
    };
    let label_col = match &options.label {
        LabelColumn::Last => ncols
            .checked_sub(1)
            .ok_or_else(|| DataError::format("empty rows"))?,
        LabelColumn::Index(i) if *i < ncols => *i,
        LabelColumn::Index(i) => {
            return Err(DataError::invalid(format!(
                "label column {i} does not exist; the rows have {ncols} columns (0..{ncols})"
            )))
        }
        LabelColumn::Name(n) => {
            if !has_header {
                return Err(DataError::invalid(format!(
                    "label column '{n}' is named but the file has no header row"
                )));
            }
            names.iter().position(|c| c == n).ok_or_else(|| {
                DataError::invalid(format!(
                    "no column named '{n}'; the header has {}",
                    names.join(", ")
                ))
            })?
        }
    };
    let rows = &records[usize::from(has_header)..];
    if rows.is_empty() {
        return Err(DataError::format(
            "the file holds a header but no data rows",
        ));
    }
    let nfeat = ncols - 1;
    let mut x = Vec::with_capacity(rows.len().saturating_mul(nfeat));
    let mut raw_labels: Vec<(u64, String)> = Vec::with_capacity(rows.len());
    for rec in rows {
        let line = line_of(rec);
        for (c, field) in rec.iter().enumerate() {
            let text = String::from_utf8_lossy(field);
            if c == label_col {
                if text.is_empty() {
                    return Err(DataError::line(
                        line,
                        format!("the label ('{}') is empty", names[c]),
                    ));
                }
                raw_labels.push((line, text.into_owned()));
                continue;
            }
            if text.is_empty() {
                return Err(DataError::line(
                    line,
                    format!("column '{}' is empty (missing value)", names[c]),
                ));
            }
            let v: f32 = text.parse().map_err(|_| {
                DataError::line(
                    line,
                    format!("column '{}': '{text}' is not a number", names[c]),
                )
            })?;
            if !v.is_finite() {
                return Err(DataError::line(
                    line,
                    format!("column '{}': '{text}' is not a finite number", names[c]),
                ));
            }
            x.push(v);
        }
    }
    let numbers: Option<Vec<f32>> = raw_labels
        .iter()
        .map(|(_, s)| s.parse::<f32>().ok())
        .collect();
    // `nan` among numbers is a missing value, not a class named "nan".
    if let Some((line, s)) = numbers.as_ref().and_then(|y| {
        raw_labels
            .iter()
            .zip(y)
            .find(|(_, v)| !v.is_finite())
            .map(|(l, _)| l)
    }) {
        return Err(DataError::line(
            *line,
            format!("label '{s}' is not a finite number"),
        ));
    }
    let (y, classes, class_names) = match (numbers, options.kind) {
        (Some(y), LabelKind::Targets) => (y, None, None),
        (Some(y), LabelKind::Auto) => {
            let k = infer_classes(&y);
            (y, k, None)
        }
        (Some(y), LabelKind::Classes) => {
            let k = infer_classes(&y).ok_or_else(|| {
                let (line, s) = raw_labels
                    .iter()
                    .zip(&y)
                    .find(|(_, v)| infer_classes(&[**v]).is_none())
                    .map(|(l, _)| l.clone())
                    .unwrap_or_default();
                DataError::line(
                    line,
                    format!("label '{s}' is not a class index (0, 1, 2, ...)"),
                )
            })?;
            (y, Some(k), None)
        }
        (None, LabelKind::Targets) => {
            let (line, s) = raw_labels
                .iter()
                .find(|(_, s)| s.parse::<f32>().map_or(true, |v| !v.is_finite()))
                .cloned()
                .unwrap_or_default();
            return Err(DataError::line(
                line,
                format!("target '{s}' is not a number"),
            ));
        }
        (None, _) => {
            let mut names: Vec<String> = raw_labels.iter().map(|(_, s)| s.clone()).collect();
            names.sort();
            names.dedup();
            let y = raw_labels
                .iter()
                .map(|(_, s)| names.binary_search(s).unwrap_or(0) as f32)
                .collect();
            let k = names.len();
            (y, Some(k), Some(names))
        }
    };
    let mut features = names;
    features.remove(label_col);
    let x =
        Tensor::new(vec![rows.len(), nfeat], x).map_err(|e| DataError::format(e.to_string()))?;
    let mut data = Dataset::new(x, y, classes)?;
    if let Some(p) = path {
        data = data.located(p, Some(raw_labels.iter().map(|(l, _)| *l).collect()));
        if let Some(names) = &class_names {
            data = data.with_class_names(names.clone());
        }
    }
    Ok(CsvFile {
        data,
        features,
        class_names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_labels_map_sorted() {
        let f = parse_csv(
            b"a,b,kind\n1,2,dog\n3,4,cat\n5,6,dog\n",
            &CsvOptions::default(),
        )
        .unwrap();
        assert_eq!(f.data.y, vec![1.0, 0.0, 1.0]);
        assert_eq!(f.class_names, Some(vec!["cat".into(), "dog".into()]));
        assert_eq!(f.features, vec!["a".to_string(), "b".into()]);
    }

    #[test]
    fn errors() {
        let o = CsvOptions::default();
        let e = parse_csv(b"1,2,0\n1,2\n", &o).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = parse_csv(b"a,b,c\n1,x,0\n", &o).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("'b'"), "{e}");
        let e = parse_csv(b"a,b,c\n1,,0\n", &o).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        assert!(parse_csv(b"", &o).is_err());
        assert!(parse_csv(b"a,b\n", &o).is_err());
        let t = CsvOptions {
            kind: LabelKind::Targets,
            ..CsvOptions::default()
        };
        assert!(parse_csv(b"1,dog\n", &t).is_err());
        let c = CsvOptions {
            kind: LabelKind::Classes,
            ..CsvOptions::default()
        };
        assert!(parse_csv(b"1,0.5\n", &c).is_err());
        let n = CsvOptions {
            label: LabelColumn::Name("z".into()),
            ..CsvOptions::default()
        };
        assert!(parse_csv(b"a,b\n1,2\n", &n).is_err());
        assert!(parse_csv(b"1,2\n", &n).is_err());
        let i = CsvOptions {
            label: LabelColumn::Index(5),
            ..CsvOptions::default()
        };
        assert!(parse_csv(b"1,2\n", &i).is_err());
    }
}
