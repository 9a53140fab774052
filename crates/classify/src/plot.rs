//! The layer-sweep line plot as PNG bytes: plotters renders into memory, `png` encodes (the way
//! crates/evaluate draws its confusion matrices; text needs a system font through fontconfig).

use llmembed_core::{Error, Result};
use plotters::prelude::*;

const FONT: &str = "sans-serif";

fn draw_err(e: impl std::fmt::Debug) -> Error {
    Error::compute(
        "draw layer sweep",
        format!("{e:?} (text needs a system font through fontconfig, e.g. fonts-dejavu-core)"),
    )
}

/// CV and test accuracy against layer index; `points` are `(layer, cv, test)` sorted or not,
/// `chosen` is marked with a vertical line.
pub(crate) fn sweep_png(
    title: &str,
    points: &[(usize, f64, f64)],
    chosen: usize,
    folds: usize,
) -> Result<Vec<u8>> {
    let (w, h) = (900u32, 540u32);
    let mut pts = points.to_vec();
    pts.sort_by_key(|p| p.0);
    let x_min = pts.first().map_or(0, |p| p.0) as f64;
    let x_max = pts.last().map_or(1, |p| p.0) as f64;
    let (x_lo, x_hi) = if x_max > x_min {
        (x_min - 0.5, x_max + 0.5)
    } else {
        (x_min - 1.0, x_min + 1.0)
    };
    let all = pts.iter().flat_map(|p| [p.1, p.2]);
    let lo = all.clone().fold(f64::INFINITY, f64::min);
    let hi = all.fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.1).max(0.01);
    let (y_lo, y_hi) = ((lo - pad).max(0.0), (hi + pad).min(1.0));

    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
            .map_err(draw_err)?;
        let n_layers = pts.len();
        chart
            .configure_mesh()
            .x_desc("layer")
            .y_desc("accuracy")
            .x_labels(n_layers.clamp(2, 20))
            .x_label_formatter(&|v| {
                if (v - v.round()).abs() < 1e-9 {
                    format!("{}", v.round() as i64)
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| format!("{v:.3}"))
            .light_line_style(BLACK.mix(0.04))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .draw()
            .map_err(draw_err)?;

        let chosen_x = chosen as f64;
        let chosen_colour = RGBColor(44, 160, 44).mix(0.7);
        chart
            .draw_series(LineSeries::new(
                [(chosen_x, y_lo), (chosen_x, y_hi)],
                chosen_colour.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label(format!("chosen by CV: layer {chosen}"))
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], chosen_colour.stroke_width(2))
            });

        let cv_colour = RGBColor(31, 119, 180);
        let test_colour = RGBColor(255, 127, 14);
        let cv: Vec<(f64, f64)> = pts.iter().map(|p| (p.0 as f64, p.1)).collect();
        let test: Vec<(f64, f64)> = pts.iter().map(|p| (p.0 as f64, p.2)).collect();
        for (series, colour, name) in [
            (cv, cv_colour, format!("CV accuracy ({folds}-fold, train)")),
            (test, test_colour, "test accuracy (reported)".to_string()),
        ] {
            chart
                .draw_series(LineSeries::new(series.clone(), colour.stroke_width(2)))
                .map_err(draw_err)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(
                    series
                        .into_iter()
                        .map(|(x, y)| Circle::new((x, y), 3, colour.filled())),
                )
                .map_err(draw_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font((FONT, 15))
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }

    llmembed_core::image::rgb_to_png(&buf, w, h, "encode layer sweep png")
}
