//! Classification scores computed on the GPU: for cross-entropy training,
//! one thread per row of `classes` predictions compares the row's argmax
//! with its label, so a training step sends back one value per row instead
//! of the whole prediction.
//!
//! Entry `score_argmax(pred, target, out)` writes `out[r]` for each row
//! `r < rows`: `-1` where the label is negative (padding,
//! `netc_runtime::data::PAD_LABEL`), else `1` if the row's first largest
//! value is at the label's index and `0` if not. This is the trainer's
//! host scoring (`train::score`) exactly: the argmax keeps the first
//! maximum and never moves to a NaN (`>` is false), and the label is
//! truncated to an integer as Rust's `as usize` does (a NaN label is 0,
//! one beyond the classes matches nothing).

use super::module::{PTX_TARGET, PTX_VERSION};
use super::PtxError;
use std::fmt::Write;

/// Threads per block of the score entry.
pub const SCORE_BLOCK: u32 = 256;
/// The entry's name.
pub const SCORE_ENTRY: &str = "score_argmax";

/// The score entry for `rows` rows of `classes` values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScoreModule {
    /// The module's text.
    pub text: String,
    /// Rows scored (one thread each).
    pub rows: usize,
    /// Values per row.
    pub classes: usize,
    /// Blocks of [`SCORE_BLOCK`] threads.
    pub grid: u32,
}

/// The PTX of the argmax score of `rows` rows of `classes` values.
pub fn score_ptx(rows: usize, classes: usize) -> Result<ScoreModule, PtxError> {
    let grid = u32::try_from(rows.div_ceil(SCORE_BLOCK as usize).max(1))
        .map_err(|_| PtxError::TooLarge)?;
    // Row and class numbers are 32-bit; byte offsets 64-bit.
    if u32::try_from(rows).is_err() || u32::try_from(4 * classes).is_err() || classes == 0 {
        return Err(PtxError::TooLarge);
    }
    let name = SCORE_ENTRY;
    let mut text = String::new();
    let _ = writeln!(text, "// netc: argmax scores of {rows} rows of {classes}");
    let _ = writeln!(
        text,
        ".version {PTX_VERSION}\n.target {PTX_TARGET}\n.address_size 64\n"
    );
    let _ = writeln!(
        text,
        "// launch {name}: grid ({grid}, 1, 1), block ({SCORE_BLOCK}, 1, 1)\n\
         .visible .entry {name}(\n\t.param .u64 {name}_param_0,\n\t.param .u64 {name}_param_1,\n\
         \t.param .u64 {name}_param_2\n)\n.maxntid {SCORE_BLOCK}, 1, 1\n{{"
    );
    let body = [
        ".reg .pred %p<4>".to_string(),
        ".reg .b32 %r<8>".to_string(),
        ".reg .f32 %f<6>".to_string(),
        ".reg .b64 %rd<12>".to_string(),
        format!("ld.param.u64 %rd1, [{name}_param_0]"),
        "cvta.to.global.u64 %rd1, %rd1".to_string(),
        format!("ld.param.u64 %rd2, [{name}_param_1]"),
        "cvta.to.global.u64 %rd2, %rd2".to_string(),
        format!("ld.param.u64 %rd3, [{name}_param_2]"),
        "cvta.to.global.u64 %rd3, %rd3".to_string(),
        // r = ctaid·ntid + tid.
        "mov.u32 %r1, %ctaid.x".to_string(),
        "mov.u32 %r2, %ntid.x".to_string(),
        "mov.u32 %r3, %tid.x".to_string(),
        "mad.lo.u32 %r4, %r1, %r2, %r3".to_string(),
        format!("setp.ge.u32 %p1, %r4, {rows}"),
        "@%p1 ret".to_string(),
        // The label, and the row's first value.
        "mul.wide.u32 %rd4, %r4, 4".to_string(),
        "add.s64 %rd5, %rd2, %rd4".to_string(),
        "ld.global.f32 %f1, [%rd5]".to_string(),
        format!("mul.wide.u32 %rd6, %r4, {}", 4 * classes),
        "add.s64 %rd6, %rd1, %rd6".to_string(),
        "ld.global.f32 %f2, [%rd6]".to_string(),
        "mov.u32 %r5, 0".to_string(),
        "mov.u32 %r6, 1".to_string(),
        // First maximum: move only on a strictly larger value.
        "SCORE_LOOP:".to_string(),
        format!("setp.ge.u32 %p2, %r6, {classes}"),
        "@%p2 bra SCORE_DONE".to_string(),
        "add.s64 %rd6, %rd6, 4".to_string(),
        "ld.global.f32 %f3, [%rd6]".to_string(),
        "setp.gt.f32 %p3, %f3, %f2".to_string(),
        "@%p3 mov.f32 %f2, %f3".to_string(),
        "@%p3 mov.u32 %r5, %r6".to_string(),
        "add.s32 %r6, %r6, 1".to_string(),
        "bra SCORE_LOOP".to_string(),
        "SCORE_DONE:".to_string(),
        // Truncated like `as usize` (NaN → 0; saturating).
        "cvt.rzi.s32.f32 %r7, %f1".to_string(),
        "setp.eq.s32 %p2, %r7, %r5".to_string(),
        "selp.f32 %f4, 0f3F800000, 0f00000000, %p2".to_string(),
        "setp.lt.f32 %p1, %f1, 0f00000000".to_string(),
        "selp.f32 %f4, 0fBF800000, %f4, %p1".to_string(),
        "add.s64 %rd7, %rd3, %rd4".to_string(),
        "st.global.f32 [%rd7], %f4".to_string(),
        "ret".to_string(),
    ];
    for l in body {
        if l.ends_with(':') {
            let _ = writeln!(text, "{l}");
        } else {
            let _ = writeln!(text, "\t{l};");
        }
    }
    let _ = writeln!(text, "}}\n");
    Ok(ScoreModule {
        text,
        rows,
        classes,
        grid,
    })
}

/// What the entry writes, computed on the host (for a CPU run that
/// accounts its steps as a GPU run does).
pub fn score_rows(pred: &[f32], labels: &[f32], classes: usize) -> Vec<f32> {
    labels
        .iter()
        .enumerate()
        .map(|(r, &label)| {
            if label < 0.0 {
                return -1.0;
            }
            let row = pred.get(r * classes..(r + 1) * classes).unwrap_or(&[]);
            let arg = row
                .iter()
                .enumerate()
                .fold(0, |b, (j, v)| if *v > row[b] { j } else { b });
            if !row.is_empty() && label as usize == arg {
                1.0
            } else {
                0.0
            }
        })
        .collect()
}

/// Correct and scored rows from the entry's output (what the trainer adds
/// to its running counts).
pub fn count(out: &[f32]) -> (usize, usize) {
    let correct = out.iter().filter(|v| **v == 1.0).count();
    let scored = out.iter().filter(|v| **v >= 0.0).count();
    (correct, scored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_and_counts() {
        let m = score_ptx(1000, 10).unwrap();
        assert_eq!(m.grid, 4);
        assert!(m.text.contains(".visible .entry score_argmax("));
        assert!(!m.text.contains("div."));
        assert_eq!(count(&[1.0, 0.0, -1.0, 1.0]), (2, 3));
        assert_eq!(score_ptx(10, 0), Err(PtxError::TooLarge));
    }
}
