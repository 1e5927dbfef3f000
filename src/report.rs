//! `netc eval`'s per-class figures: a confusion matrix and, per class (or
//! tag), precision, recall, F1 and support, like scikit-learn's
//! `classification_report`. Predictions are scored per row of the output's
//! last axis, so a tagger's `[T, C]` output is scored per token, and
//! padding (a negative label) is left out, as in the loss and accuracy.
//! For per-token outputs, [`sequence_accuracy`] also scores whole
//! sequences (a sequence-to-sequence model's whole answers).

/// The index of the largest value (the first of equal ones).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |b, (j, v)| if *v > row[b] { j } else { b })
}

/// Whole sequences right: of the examples with at least one scored
/// position (`labels`: `steps` per example, negative for padding; `p`:
/// `classes` values per position), how many have every scored position's
/// most likely class equal to its label. `(right, scored)`.
pub fn sequence_accuracy(
    p: &[f32],
    labels: &[f32],
    classes: usize,
    steps: usize,
) -> (usize, usize) {
    let (mut right, mut scored) = (0, 0);
    let rows = p.chunks(classes.max(1)).collect::<Vec<_>>();
    for (rows, labels) in rows.chunks(steps.max(1)).zip(labels.chunks(steps.max(1))) {
        let mut positions = rows
            .iter()
            .zip(labels)
            .filter(|(_, l)| **l >= 0.0)
            .peekable();
        if positions.peek().is_none() {
            continue;
        }
        scored += 1;
        if positions.all(|(row, l)| argmax(row) == *l as usize) {
            right += 1;
        }
    }
    (right, scored)
}

/// How many classes a confusion matrix is printed for; past it the table
/// would not fit a terminal, and the per-class rows say more.
const MAX_MATRIX_CLASSES: usize = 32;

/// How many classes get a row of their own in the per-class table.
const MAX_REPORT_CLASSES: usize = 200;

/// Counts of (true class, predicted class) pairs.
pub struct Confusion {
    counts: Vec<Vec<usize>>,
}

impl Confusion {
    /// Scores predictions `p` (rows of `classes` values; one value per row
    /// means a sigmoid output, class 1 above 0.5) against one label per row.
    /// Rows whose label is negative are padding and are skipped.
    pub fn new(p: &[f32], labels: &[f32], classes: usize) -> Confusion {
        let width = if classes == 2 && p.len() == labels.len() {
            1
        } else {
            classes
        };
        let mut counts = vec![vec![0usize; classes]; classes];
        for (row, &label) in p.chunks(width.max(1)).zip(labels) {
            if label < 0.0 {
                continue;
            }
            let predicted = if width == 1 {
                usize::from(row[0] > 0.5)
            } else {
                argmax(row)
            };
            let truth = if width == 1 {
                usize::from(label > 0.5)
            } else {
                (label as usize).min(classes - 1)
            };
            counts[truth][predicted] += 1;
        }
        Confusion { counts }
    }

    /// The matrix (rows: true class, columns: predicted), or nothing for
    /// more than [`MAX_MATRIX_CLASSES`] classes.
    pub fn matrix(&self) -> String {
        let classes = self.counts.len();
        if classes > MAX_MATRIX_CLASSES {
            return String::new();
        }
        let mut out =
            String::from("confusion matrix (rows: true class, columns: predicted)\n     ");
        for c in 0..classes {
            out.push_str(&format!("{c:>6}"));
        }
        out.push('\n');
        for (c, row) in self.counts.iter().enumerate() {
            out.push_str(&format!("{c:>4} "));
            for v in row {
                out.push_str(&format!("{v:>6}"));
            }
            out.push('\n');
        }
        out
    }

    /// Precision, recall, F1 and support per class (named by `names` where
    /// the data had names), then their unweighted (macro) means over the
    /// classes that occur. Classes past [`MAX_REPORT_CLASSES`] are summed
    /// into the means only.
    pub fn per_class(&self, names: Option<&[String]>) -> String {
        let classes = self.counts.len();
        let name = |c: usize| {
            names
                .and_then(|n| n.get(c).cloned())
                .unwrap_or_else(|| c.to_string())
        };
        let width = (0..classes.min(MAX_REPORT_CLASSES))
            .map(|c| name(c).chars().count())
            .max()
            .unwrap_or(5)
            .max(9);
        let mut out = format!(
            "{:>width$} {:>9} {:>9} {:>9} {:>9}\n",
            "class", "precision", "recall", "f1", "support"
        );
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let (mut sum, mut present) = ([0.0f64; 3], 0usize);
        for c in 0..classes {
            let tp = self.counts[c][c];
            let support: usize = self.counts[c].iter().sum();
            let predicted: usize = self.counts.iter().map(|r| r[c]).sum();
            let (p, r) = (ratio(tp, predicted), ratio(tp, support));
            let f1 = if p + r > 0.0 {
                2.0 * p * r / (p + r)
            } else {
                0.0
            };
            if support > 0 {
                present += 1;
                for (s, v) in sum.iter_mut().zip([p, r, f1]) {
                    *s += v;
                }
            }
            if c < MAX_REPORT_CLASSES {
                out.push_str(&format!(
                    "{:>width$} {p:>9.4} {r:>9.4} {f1:>9.4} {support:>9}\n",
                    name(c)
                ));
            }
        }
        if classes > MAX_REPORT_CLASSES {
            out.push_str(&format!(
                "{:>width$} ({} more classes)\n",
                "...",
                classes - MAX_REPORT_CLASSES
            ));
        }
        let total: usize = self.counts.iter().flatten().sum();
        let m = |i: usize| sum[i] / present.max(1) as f64;
        out.push_str(&format!(
            "{:>width$} {:>9.4} {:>9.4} {:>9.4} {total:>9}\n",
            "macro avg",
            m(0),
            m(1),
            m(2)
        ));
        out
    }
}

/// The mean negative log-likelihood (nats) per scored row of `p` (rows of
/// `classes` probabilities) against one label per row, padding (a negative
/// label) left out; `None` when no row is scored. Probabilities are clamped
/// at 1e-7, as the compiled loss clamps them.
pub fn token_nll(p: &[f32], labels: &[f32], classes: usize) -> Option<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for (row, &label) in p.chunks(classes.max(1)).zip(labels) {
        if label < 0.0 {
            continue;
        }
        let q = row.get(label as usize).copied().unwrap_or(0.0).max(1e-7);
        sum -= (q as f64).ln();
        n += 1;
    }
    (n > 0).then(|| sum / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_sequences_count_only_when_every_scored_step_is_right() {
        // Two classes, two steps per example: example 0 right at both,
        // example 1 wrong at step 1, example 2 right where not padding,
        // example 3 all padding (not scored).
        let p = [
            0.9, 0.1, 0.2, 0.8, //
            0.9, 0.1, 0.6, 0.4, //
            0.3, 0.7, 0.5, 0.5, //
            0.5, 0.5, 0.5, 0.5,
        ];
        let labels = [0.0, 1.0, 0.0, 1.0, 1.0, -1.0, -1.0, -1.0];
        assert_eq!(sequence_accuracy(&p, &labels, 2, 2), (2, 3));
    }

    #[test]
    fn token_nll_weighs_every_scored_token_alike() {
        // Rows: p(label) = 0.5, padding, 0.25.
        let p = [0.5, 0.5, 0.9, 0.1, 0.75, 0.25];
        let got = token_nll(&p, &[1.0, -1.0, 1.0], 2).unwrap();
        let want = (2f64.ln() + 4f64.ln()) / 2.0;
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        assert_eq!(token_nll(&p, &[-1.0; 3], 2), None);
    }

    #[test]
    fn per_token_rows_skip_padding() {
        // Three rows of 3 classes; the middle one is padding.
        let p = [0.7, 0.2, 0.1, 0.0, 0.0, 1.0, 0.1, 0.3, 0.6];
        let c = Confusion::new(&p, &[0.0, -1.0, 1.0], 3);
        assert_eq!(c.counts, vec![vec![1, 0, 0], vec![0, 0, 1], vec![0, 0, 0]]);
        let names = ["nn".to_string(), "vb".into(), "jj".into()];
        let text = c.per_class(Some(&names));
        assert!(
            text.contains("       nn    1.0000    1.0000    1.0000         1"),
            "{text}"
        );
        assert!(
            text.contains("       vb    0.0000    0.0000    0.0000         1"),
            "{text}"
        );
        assert!(
            text.contains("       jj    0.0000    0.0000    0.0000         0"),
            "{text}"
        );
        // Macro means over the classes that occur (nn, vb), 2 rows scored.
        assert!(
            text.contains("macro avg    0.5000    0.5000    0.5000         2"),
            "{text}"
        );
    }

    #[test]
    fn sigmoid_output_is_two_classes() {
        let c = Confusion::new(&[0.9, 0.2, 0.6], &[1.0, 0.0, 0.0], 2);
        assert_eq!(c.counts, vec![vec![1, 1], vec![0, 1]]);
        assert!(c.matrix().contains("   0      1     1"), "{}", c.matrix());
    }
}
