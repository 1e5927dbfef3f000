//! Training curves as a PNG: loss (left) and accuracy (right) per epoch,
//! training and validation, drawn with `plotters`' bitmap backend.
//!
//! Text is rendered by `ab_glyph` from DejaVu Sans embedded in the binary
//! (the `dejavu` crate), so neither building nor running needs fontconfig or
//! any system font. The file is written to a temporary name in the same
//! directory and renamed over the destination, so a reader (or an image
//! viewer refreshing it after every epoch) never sees half a PNG.

use crate::train::EpochStats;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use thiserror::Error;

/// Width of the PNG in pixels.
pub const WIDTH: u32 = 1200;
/// Height of the PNG in pixels.
pub const HEIGHT: u32 = 450;

/// The family name the embedded font is registered under.
const FAMILY: &str = "sans-serif";

/// Why the plot could not be written.
#[derive(Debug, Error)]
pub enum PlotError {
    /// The embedded font did not load (a build problem, not user input).
    #[error("the embedded plot font could not be loaded")]
    Font,
    /// Drawing or encoding failed.
    #[error("cannot draw the training plot `{path}`: {message}")]
    Draw {
        /// Destination.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The file could not be created or renamed.
    #[error("cannot write the training plot `{path}`: {source}")]
    Io {
        /// Destination.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

fn register_font() -> Result<(), PlotError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// One panel's curves: (label, colour, points).
type Series = (String, RGBColor, Vec<(f64, f64)>);

/// Writes the loss and accuracy curves of `history` to `path` as a
/// [`WIDTH`] × [`HEIGHT`] PNG titled `title`. `held_out` names the set the
/// per-epoch evaluation figures come from (`val` or `test`) in the legend.
/// Metrics a run does not have (validation, or accuracy for a regression)
/// are left out; with no epochs the axes are drawn empty.
pub fn write_training_plot(
    path: &Path,
    title: &str,
    held_out: &str,
    history: &[EpochStats],
) -> Result<(), PlotError> {
    register_font()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let io = |source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    };
    // The `.png` suffix tells the encoder the format.
    let mut builder = tempfile::Builder::new();
    builder.prefix(".netc-plot.").suffix(".png");
    // tempfile creates files 0600; let the umask decide, as for File::create.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let tmp = builder.tempfile_in(dir).map_err(io)?;
    draw(tmp.path(), title, held_out, history).map_err(|message| PlotError::Draw {
        path: path.to_path_buf(),
        message,
    })?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

fn draw(path: &Path, title: &str, held_out: &str, history: &[EpochStats]) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root.titled(title, (FAMILY, 22)).map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(WIDTH / 2);
    let epoch = |s: &EpochStats| s.epoch as f64;
    let pick = |f: fn(&EpochStats) -> Option<f64>| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|s| f(s).filter(|v| v.is_finite()).map(|v| (epoch(s), v)))
            .collect()
    };
    let loss: Vec<Series> = vec![
        ("train loss".into(), BLUE, pick(|s| Some(s.loss))),
        (format!("{held_out} loss"), RED, pick(|s| s.val_loss)),
    ];
    panel(&left, "loss", loss, false, SeriesLabelPosition::UpperRight).map_err(|e| err(&e))?;
    let acc: Vec<Series> = vec![
        (
            "train accuracy".into(),
            BLUE,
            pick(|s| s.accuracy.map(|a| 100.0 * a)),
        ),
        (
            format!("{held_out} accuracy"),
            RED,
            pick(|s| s.val_accuracy.map(|a| 100.0 * a)),
        ),
    ];
    panel(
        &right,
        "accuracy (%)",
        acc,
        true,
        SeriesLabelPosition::LowerRight,
    )
    .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// The y range of `series` with a margin, or `fallback` when empty.
fn y_range(series: &[Series], fallback: Range<f64>) -> Range<f64> {
    let ys = series
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y));
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    if lo > hi {
        return fallback;
    }
    let pad = ((hi - lo) * 0.08).max(1e-3);
    (lo - pad)..(hi + pad)
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    y_label: &str,
    series: Vec<Series>,
    percent: bool,
    legend: SeriesLabelPosition,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let last = series
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|(x, _)| *x))
        .fold(1.0, f64::max);
    let fallback = if percent { 0.0..100.0 } else { 0.0..1.0 };
    let mut yr = y_range(&series, fallback);
    if percent {
        yr = yr.start.max(0.0)..yr.end.min(100.5);
    }
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.8..last + 0.2, yr)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_label)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .x_labels((last as usize).clamp(2, 12))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    let mut any = false;
    for (label, colour, points) in series {
        if points.is_empty() {
            continue;
        }
        any = true;
        let style = ShapeStyle::from(&colour).stroke_width(2);
        chart
            .draw_series(LineSeries::new(points.clone(), style))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(
            points
                .into_iter()
                .map(move |p| Circle::new(p, 3, colour.filled())),
        )?;
    }
    if any {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FAMILY, 14))
            .position(legend)
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(epoch: usize, val: bool) -> EpochStats {
        EpochStats {
            epoch,
            loss: 1.0 / epoch as f64,
            accuracy: Some(0.5 + 0.1 * epoch as f64),
            val_loss: val.then_some(1.2 / epoch as f64),
            val_accuracy: val.then_some(0.45 + 0.1 * epoch as f64),
            lr: 0.001,
            seconds: 1.0,
        }
    }

    /// Width and height from a PNG's IHDR chunk, after checking the signature.
    fn png_size(bytes: &[u8]) -> (u32, u32) {
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert_eq!(&bytes[12..16], b"IHDR");
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        (be(&bytes[16..20]), be(&bytes[20..24]))
    }

    #[test]
    fn writes_a_png_of_the_documented_size() {
        let dir = tempfile::tempdir().unwrap();
        for (name, history) in [
            (
                "full.png",
                (1..=5).map(|e| stats(e, true)).collect::<Vec<_>>(),
            ),
            ("no_val.png", vec![stats(1, false), stats(2, false)]),
            ("empty.png", vec![]),
        ] {
            let path = dir.path().join(name);
            write_training_plot(&path, "model", "val", &history).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(png_size(&bytes), (WIDTH, HEIGHT), "{name}");
        }
        // Only the plots are left: the temporary files were renamed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/plot.png");
        let e = write_training_plot(&path, "m", "val", &[stats(1, true)]).unwrap_err();
        assert!(e.to_string().contains("plot.png"), "{e}");
    }
}
