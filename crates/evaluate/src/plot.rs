//! Confusion-matrix heat map as PNG bytes (plotters, rendered in memory, encoded with `png`).

use llmembed_core::image::rgb_to_png;
use llmembed_core::{Error, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const FONT: &str = "sans-serif";

fn draw_err(e: impl std::fmt::Debug) -> Error {
    Error::compute(
        "draw confusion matrix",
        format!("{e:?} (text needs a system font through fontconfig, e.g. fonts-dejavu-core)"),
    )
}

/// Colour of a cell holding `frac` (0..=1) of its row: white to dark blue.
fn cell_colour(frac: f64) -> RGBColor {
    let f = frac.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    RGBColor(lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0))
}

/// Renders `confusion[true][pred]` with counts and row percentages in each cell, class names on
/// both axes and `title` on top.
pub(crate) fn confusion_png(
    title: &str,
    labels: &[String],
    confusion: &[Vec<u64>],
) -> Result<Vec<u8>> {
    let n = labels.len();
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(1) as u32;
    let cell = (longest * 9 + 16).clamp(72, 160);
    let left = longest * 9 + 60;
    let top = 70u32;
    let bottom = 70u32;
    let right = 30u32;
    let title_width = title.chars().count() as u32 * 10 + 40;
    let w = (left + cell * n as u32 + right).max(title_width);
    let h = top + cell * n as u32 + bottom;

    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let centre = Pos::new(HPos::Center, VPos::Center);
        let title_style = TextStyle::from((FONT, 20).into_font()).pos(centre);
        root.draw(&Text::new(
            title.to_string(),
            ((w / 2) as i32, 25),
            title_style,
        ))
        .map_err(draw_err)?;
        let label_style = TextStyle::from((FONT, 15).into_font());
        let axis_style = TextStyle::from((FONT, 16).into_font().style(FontStyle::Bold)).pos(centre);

        let x0 = left as i32;
        let y0 = top as i32;
        let c = cell as i32;
        for (t, row) in confusion.iter().enumerate() {
            let row_total: u64 = row.iter().sum();
            for (p, &count) in row.iter().enumerate() {
                let frac = if row_total == 0 {
                    0.0
                } else {
                    count as f64 / row_total as f64
                };
                let (cx, cy) = (x0 + p as i32 * c, y0 + t as i32 * c);
                root.draw(&Rectangle::new(
                    [(cx, cy), (cx + c, cy + c)],
                    cell_colour(frac).filled(),
                ))
                .map_err(draw_err)?;
                root.draw(&Rectangle::new(
                    [(cx, cy), (cx + c, cy + c)],
                    BLACK.mix(0.3),
                ))
                .map_err(draw_err)?;
                let ink = if frac > 0.5 { WHITE } else { BLACK };
                let count_style = TextStyle::from((FONT, 17).into_font().style(FontStyle::Bold))
                    .color(&ink)
                    .pos(centre);
                root.draw(&Text::new(
                    count.to_string(),
                    (cx + c / 2, cy + c / 2 - 9),
                    count_style,
                ))
                .map_err(draw_err)?;
                let pct_style = TextStyle::from((FONT, 13).into_font())
                    .color(&ink)
                    .pos(centre);
                root.draw(&Text::new(
                    format!("{:.1}%", frac * 100.0),
                    (cx + c / 2, cy + c / 2 + 11),
                    pct_style,
                ))
                .map_err(draw_err)?;
            }
        }
        // Class names: rows (true) on the left, columns (predicted) below.
        for (i, name) in labels.iter().enumerate() {
            let y = y0 + i as i32 * c + c / 2;
            let style = label_style.clone().pos(Pos::new(HPos::Right, VPos::Center));
            root.draw(&Text::new(name.clone(), (x0 - 8, y), style))
                .map_err(draw_err)?;
            let x = x0 + i as i32 * c + c / 2;
            let style = label_style.clone().pos(Pos::new(HPos::Center, VPos::Top));
            root.draw(&Text::new(name.clone(), (x, y0 + n as i32 * c + 8), style))
                .map_err(draw_err)?;
        }
        let grid_mid_x = x0 + n as i32 * c / 2;
        let grid_mid_y = y0 + n as i32 * c / 2;
        root.draw(&Text::new(
            "predicted",
            (grid_mid_x, y0 + n as i32 * c + 45),
            axis_style.clone(),
        ))
        .map_err(draw_err)?;
        root.draw(&Text::new(
            "true",
            (18, grid_mid_y),
            axis_style.transform(FontTransform::Rotate270),
        ))
        .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }

    rgb_to_png(&buf, w, h, "encode confusion png")
}
