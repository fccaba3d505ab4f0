//! PNG line charts: the training curves of a run (`curves.png`), and the panels reports draw.
//!
//! Charts are drawn with plotters into an RGB buffer and encoded with `image`; labels use a
//! subset of DejaVu Sans compiled into the binary (`assets/`), so no system font is needed.

use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;

use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::TrainError;
use crate::history::HistoryRow;
use crate::io::write_durable;

/// The font family plots are labelled with.
pub(crate) const FONT: &str = "mura-sans";
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");

/// Colours of successive series (matplotlib's first five).
pub const PALETTE: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// One line of a panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    /// (x, y); points with a non-finite y are left out (an undefined metric).
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
    /// Dashed (training curves) or solid (validation curves).
    pub dashed: bool,
}

/// One chart of a figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Fixed y range (e.g. 0..1 for AUC); fitted to the data when absent.
    pub y_range: Option<(f64, f64)>,
    /// Where the legend goes: out of the way of the curves (lower right for rising metrics).
    pub legend: Legend,
}

/// The corner of a panel that holds its legend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Legend {
    #[default]
    UpperRight,
    LowerRight,
}

pub(crate) fn plot_error(e: impl std::fmt::Display) -> TrainError {
    TrainError::Plot(e.to_string())
}

pub(crate) fn register_font() -> Result<(), TrainError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(TrainError::Plot("the built-in font does not load".into()))
    }
}

/// The x and y extent of a panel's finite points, padded so that lines do not touch the frame.
fn extent(panel: &Panel) -> ((f64, f64), (f64, f64)) {
    let pts = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        (x0, x1) = (x0 - 0.5, x1 + 0.5);
    }
    let (y0, y1) = panel.y_range.unwrap_or_else(|| {
        let pad = ((y1 - y0) * 0.08).max(1e-6);
        (y0 - pad, y1 + pad)
    });
    ((x0, x1), (y0, y1))
}

/// Draws `panels` in a grid of `columns`, each `panel_size` pixels, and returns the PNG bytes.
pub fn render(
    panels: &[Panel],
    columns: usize,
    panel_size: (u32, u32),
) -> Result<Vec<u8>, TrainError> {
    register_font()?;
    let columns = columns.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(columns).max(1);
    let (w, h) = (panel_size.0 * columns as u32, panel_size.1 * rows as u32);
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let areas = root.split_evenly((rows, columns));
        for (panel, area) in panels.iter().zip(areas.iter()) {
            draw_panel(panel, area)?;
        }
        root.present().map_err(plot_error)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| TrainError::Plot("the image buffer has the wrong size".into()))?;
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(plot_error)?;
    Ok(png)
}

fn draw_panel(
    panel: &Panel,
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
) -> Result<(), TrainError> {
    let ((x0, x1), (y0, y1)) = extent(panel);
    // Whole epochs get one tick each while they fit.
    let span = x1 - x0;
    let x_ticks = if span.fract() == 0.0 && span < 12.0 {
        span as usize + 1
    } else {
        10
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .x_labels(x_ticks)
        .x_label_formatter(&|x| trim_number(*x))
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(plot_error)?;
    for s in &panel.series {
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let style = s.color.stroke_width(2);
        if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(pts, 6, 4, style))
                .map_err(plot_error)?
                .label(&s.label)
                .legend(move |(x, y)| {
                    DashedPathElement::new(vec![(x, y), (x + 20, y)], 6, 4, style)
                });
        } else {
            chart
                .draw_series(LineSeries::new(pts, style))
                .map_err(plot_error)?
                .label(&s.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
    }
    if panel.series.iter().any(|s| !s.label.is_empty()) {
        chart
            .configure_series_labels()
            .label_font((FONT, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .position(match panel.legend {
                Legend::UpperRight => SeriesLabelPosition::UpperRight,
                Legend::LowerRight => SeriesLabelPosition::LowerRight,
            })
            .draw()
            .map_err(plot_error)?;
    }
    Ok(())
}

/// `x` without trailing zeros: `3`, `2.5`, `0.125`.
fn trim_number(x: f64) -> String {
    let t = format!("{x:.3}");
    let t = t.trim_end_matches('0').trim_end_matches('.');
    if t == "-0" { "0".into() } else { t.into() }
}

/// A train (dashed) and validation (solid) pair of curves of one run, by epoch.
pub fn train_val_series(
    history: &[HistoryRow],
    run: &str,
    (train_color, val_color): (RGBColor, RGBColor),
    metric: fn(&HistoryRow) -> (Option<f64>, Option<f64>),
) -> [Series; 2] {
    let pick = |val: bool| -> Vec<(f64, f64)> {
        history
            .iter()
            .map(|r| {
                let (t, v) = metric(r);
                let y = if val { v } else { t };
                (f64::from(r.epoch), y.unwrap_or(f64::NAN))
            })
            .collect()
    };
    let name = |what: &str| {
        if run.is_empty() {
            what.to_string()
        } else {
            format!("{run} {what}")
        }
    };
    [
        Series {
            label: name("train"),
            points: pick(false),
            color: train_color,
            dashed: true,
        },
        Series {
            label: name("val"),
            points: pick(true),
            color: val_color,
            dashed: false,
        },
    ]
}

/// The metrics drawn per epoch: (title, y label, fixed range, train and val values).
pub type CurveMetric = (
    &'static str,
    Option<(f64, f64)>,
    fn(&HistoryRow) -> (Option<f64>, Option<f64>),
);

/// Loss, AUC, accuracy and kappa, train and validation.
pub const CURVE_METRICS: [CurveMetric; 4] = [
    ("loss", None, |r| (Some(r.train_loss), Some(r.val_loss))),
    ("AUC", Some((0.0, 1.0)), |r| (r.train_auc, r.val_auc)),
    ("accuracy", Some((0.0, 1.0)), |r| {
        (r.train_accuracy, r.val_accuracy)
    }),
    ("kappa", Some((-0.2, 1.0)), |r| (r.train_kappa, r.val_kappa)),
];

/// The panels of one or more runs' training curves, overlaid (train dashed, validation solid;
/// one colour per run, or one for train and one for validation when there is a single run).
pub fn curve_panels(runs: &[(&str, &[HistoryRow])]) -> Vec<Panel> {
    let colors = |i: usize| {
        if runs.len() == 1 {
            (PALETTE[0], PALETTE[1])
        } else {
            (PALETTE[i % PALETTE.len()], PALETTE[i % PALETTE.len()])
        }
    };
    CURVE_METRICS
        .iter()
        .map(|&(title, y_range, metric)| Panel {
            title: title.to_string(),
            x_label: "epoch".into(),
            y_label: title.to_string(),
            series: runs
                .iter()
                .enumerate()
                .flat_map(|(i, (name, h))| train_val_series(h, name, colors(i), metric))
                .collect(),
            y_range,
            // Loss falls, so its upper right is free; the other metrics rise towards it.
            legend: if title == "loss" {
                Legend::UpperRight
            } else {
                Legend::LowerRight
            },
        })
        .collect()
}

/// Writes `curves.png` (loss, AUC, accuracy and kappa by epoch) of a run's history to `path`.
pub fn write_curves(path: &Path, history: &[HistoryRow]) -> Result<(), TrainError> {
    let png = render(&curve_panels(&[("", history)]), 2, (520, 360))?;
    write_durable(path, &png)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(epoch: u32, loss: f64, auc: Option<f64>) -> HistoryRow {
        HistoryRow {
            epoch,
            stage: 0,
            train_loss: loss,
            train_auc: auc,
            train_accuracy: Some(0.6),
            train_kappa: Some(0.2),
            val_loss: loss * 1.1,
            val_auc: auc.map(|a| a - 0.05),
            val_accuracy: Some(0.55),
            val_kappa: None,
            lr: 1e-3,
            seconds: 1.0,
            images_per_sec: 10.0,
        }
    }

    #[test]
    fn curves_are_a_png_of_the_expected_size_with_lines_drawn() {
        let h = vec![
            row(1, 0.9, Some(0.6)),
            row(2, 0.7, None),
            row(3, 0.5, Some(0.8)),
        ];
        let png = render(&curve_panels(&[("", &h)]), 2, (300, 200)).unwrap();
        if std::env::var_os("SAVE_RESULT").is_some() {
            let out = std::env::temp_dir().join("mura-curves.png");
            std::fs::write(&out, &png).unwrap();
            println!("wrote {}", out.display());
        }
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (600, 400));
        // Both series colours appear: the curves were drawn, not just the frame.
        for c in [PALETTE[0], PALETTE[1]] {
            let n = img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count();
            assert!(n > 100, "{n} pixels of {c:?}");
        }
        // Text is rendered (dark glyph pixels in the title strip of the first panel).
        let dark = (0..300)
            .flat_map(|x| (0..30).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
            .count();
        assert!(dark > 20, "{dark} title pixels");
    }

    #[test]
    fn tick_labels_drop_trailing_zeros() {
        assert_eq!(trim_number(3.0), "3");
        assert_eq!(trim_number(2.5), "2.5");
        assert_eq!(trim_number(-0.0001), "0");
    }

    #[test]
    fn empty_or_single_point_histories_still_render() {
        assert!(render(&curve_panels(&[("", &[])]), 2, (200, 150)).is_ok());
        let one = [row(1, f64::NAN, None)];
        assert!(render(&curve_panels(&[("a", &one)]), 2, (200, 150)).is_ok());
    }
}
