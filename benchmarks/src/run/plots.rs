//! PNG plots of a job: per-class IoU bars per algorithm run, mIoU against upload ratio (the trade-off curve),
//! each lifelong accuracy matrix as a heatmap, and side-by-side frames (image, ground truth, edge, result).
//! Text uses the DejaVu Sans font compiled in (the `dejavu` crate), so plots look the same on any machine.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use image::imageops::{FilterType, resize};
use image::{Rgb, RgbImage};
use models::image_ops::overlay;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::lifelong::AccuracyMatrix;
use super::{OverlayFrame, RunResult};

const FONT: &str = "sans-serif";
/// Bars of more runs than this would be too thin to read; the best-ranked ones are drawn.
const MAX_BAR_RUNS: usize = 8;
/// Weight of the class colour over the frame in the side-by-side panels (unlabelled pixels show the frame).
const OVERLAY_ALPHA: f32 = 0.6;

fn register_font() -> Result<()> {
    static REGISTER: Once = Once::new();
    let mut result = Ok(());
    REGISTER.call_once(|| {
        result = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| anyhow!("the embedded DejaVu font is not a valid font"));
    });
    result
}

fn plot_error<E: std::fmt::Debug>(error: E) -> anyhow::Error {
    anyhow!("drawing a plot: {error:?}")
}

/// Writes every plot for `results` (in rank order) into `dir`.
pub fn write(dir: &Path, results: &[RunResult]) -> Result<()> {
    register_font()?;
    std::fs::create_dir_all(dir)?;
    if !results.is_empty() {
        per_class_bars(&dir.join("per_class_iou.png"), results)?;
        trade_off(&dir.join("miou_vs_upload_ratio.png"), results)?;
    }
    for run in results {
        if let Some(matrix) = &run.lifelong {
            heatmap(&dir.join(format!("accuracy_matrix-{}.png", run.id)), matrix)?;
        }
        if !run.overlays.is_empty() {
            side_by_side(
                &dir.join(format!("frames-{}.png", run.id)),
                &run.overlays,
                &run.palette,
                run.paradigm.name(),
            )?;
        }
    }
    Ok(())
}

fn save(path: &Path, buffer: Vec<u8>, (width, height): (u32, u32)) -> Result<()> {
    let image =
        RgbImage::from_raw(width, height, buffer).ok_or_else(|| anyhow!("plot buffer size"))?;
    std::fs::write(path, models::image_ops::encode_png(&image)?)?;
    Ok(())
}

fn run_colour(i: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(i).rgb();
    RGBColor(r, g, b)
}

fn per_class_bars(path: &Path, results: &[RunResult]) -> Result<()> {
    let size = (1200u32, 600u32);
    let mut buffer = vec![0u8; (size.0 * size.1 * 3) as usize];
    let runs = &results[..results.len().min(MAX_BAR_RUNS)];
    let names = &runs[0].class_names;
    let classes = names.len();
    {
        let root = BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Per-class IoU", (FONT, 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.5f64..(classes as f64 - 0.5), 0f64..1f64)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(classes)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("IoU")
            .label_style((FONT, 13))
            .draw()
            .map_err(plot_error)?;
        let width = 0.8 / runs.len() as f64;
        for (r, run) in runs.iter().enumerate() {
            let colour = run_colour(r);
            chart
                .draw_series(run.per_class_iou.iter().enumerate().map(|(c, iou)| {
                    let left = c as f64 - 0.4 + r as f64 * width;
                    Rectangle::new(
                        [(left, 0.0), (left + width, iou.unwrap_or(0.0))],
                        colour.filled(),
                    )
                }))
                .map_err(plot_error)?
                .label(format!("{} ({})", run.id, run.paradigm.name()))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    save(path, buffer, size)
}

/// One line per algorithm through its runs' (upload ratio, mIoU); edge-only sits at 0, cloud-only at 1.
fn trade_off(path: &Path, results: &[RunResult]) -> Result<()> {
    let size = (900u32, 600u32);
    let mut buffer = vec![0u8; (size.0 * size.1 * 3) as usize];
    let mut series: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for run in results {
        if let (Some(ratio), Some(miou)) = (
            run.metrics.get("samples_transfer_ratio"),
            run.metrics.get("miou"),
        ) {
            series
                .entry(&run.algorithm)
                .or_default()
                .push((*ratio, *miou));
        }
    }
    let values: Vec<f64> = series.values().flatten().map(|(_, m)| *m).collect();
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((high - low) * 0.15).max(0.01);
    let (low, high) = if values.is_empty() {
        (0.0, 1.0)
    } else {
        ((low - pad).max(0.0), (high + pad).min(1.0))
    };
    {
        let root = BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("mIoU against upload ratio", (FONT, 24))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.02f64..1.02f64, low..high)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("samples transfer ratio (frames sent to the cloud)")
            .y_desc("mIoU")
            .label_style((FONT, 13))
            .draw()
            .map_err(plot_error)?;
        for (i, (algorithm, points)) in series.iter_mut().enumerate() {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let colour = run_colour(i);
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(*algorithm)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 5, colour.filled())))
                .map_err(plot_error)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    save(path, buffer, size)
}

fn heatmap(path: &Path, matrix: &AccuracyMatrix) -> Result<()> {
    let (columns, rows) = (matrix.tasks.len(), matrix.rows.len());
    let size = (200 + 180 * columns as u32, 120 + 70 * rows as u32);
    let mut buffer = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("mIoU; BWT {:+.3}, FWT {:+.3}", matrix.bwt(), matrix.fwt()),
                (FONT, 20),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(150)
            .build_cartesian_2d(0f64..columns as f64, 0f64..rows as f64)
            .map_err(plot_error)?;
        let task_names = matrix.tasks.clone();
        let row_names = matrix.rows.clone();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(columns * 2 + 1)
            .y_labels(rows * 2 + 1)
            .x_label_formatter(&|x| centred_label(*x, &task_names))
            .y_label_formatter(&|y| centred_label(rows as f64 - *y, &row_names))
            .label_style((FONT, 14))
            .draw()
            .map_err(plot_error)?;
        for (r, row) in matrix.miou.iter().enumerate() {
            for (c, value) in row.iter().enumerate() {
                let y = (rows - 1 - r) as f64;
                let shade = (255.0 * (1.0 - value.clamp(0.0, 1.0))) as u8;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(c as f64, y), (c as f64 + 1.0, y + 1.0)],
                        RGBColor(shade, shade, 255).filled(),
                    )))
                    .map_err(plot_error)?;
                chart
                    .draw_series(std::iter::once(Text::new(
                        format!("{value:.3}"),
                        (c as f64 + 0.38, y + 0.55),
                        (FONT, 18).into_font().color(&BLACK),
                    )))
                    .map_err(plot_error)?;
            }
        }
        root.present().map_err(plot_error)?;
    }
    save(path, buffer, size)
}

/// The name of the cell whose centre is at `position` (cells are one unit wide), or nothing between centres.
fn centred_label(position: f64, names: &[String]) -> String {
    let cell = position - 0.5;
    if (cell - cell.round()).abs() < 1e-6 && cell >= 0.0 {
        names
            .get(cell.round() as usize)
            .cloned()
            .unwrap_or_default()
    } else {
        String::new()
    }
}

/// Rows of (image, ground truth, edge, result) panels at half resolution with captions.
fn side_by_side(
    path: &Path,
    frames: &[OverlayFrame],
    palette: &[[u8; 3]],
    paradigm: &str,
) -> Result<()> {
    let (panel_w, panel_h) = (frames[0].image.width() / 2, frames[0].image.height() / 2);
    let caption = 26u32;
    let with_edge = frames.iter().all(|f| !f.edge.is_empty());
    let titles: Vec<String> = if with_edge {
        vec![
            "image".into(),
            "ground truth".into(),
            "edge".into(),
            paradigm.into(),
        ]
    } else {
        vec!["image".into(), "ground truth".into(), paradigm.into()]
    };
    let size = (
        panel_w * titles.len() as u32,
        caption + panel_h * frames.len() as u32,
    );
    let mut canvas = RgbImage::from_pixel(size.0, size.1, Rgb([255, 255, 255]));
    for (row, frame) in frames.iter().enumerate() {
        let mut panels = vec![
            frame.image.clone(),
            overlay(&frame.image, frame.truth.as_raw(), palette, OVERLAY_ALPHA),
        ];
        if with_edge {
            panels.push(overlay(&frame.image, &frame.edge, palette, OVERLAY_ALPHA));
        }
        panels.push(overlay(&frame.image, &frame.result, palette, OVERLAY_ALPHA));
        for (column, panel) in panels.iter().enumerate() {
            let small = resize(panel, panel_w, panel_h, FilterType::Nearest);
            image::imageops::overlay(
                &mut canvas,
                &small,
                i64::from(column as u32 * panel_w),
                i64::from(caption + row as u32 * panel_h),
            );
        }
    }
    let mut buffer = canvas.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area();
        for (column, title) in titles.iter().enumerate() {
            root.draw(&Text::new(
                title.clone(),
                ((column as u32 * panel_w + 8) as i32, 4),
                (FONT, 18).into_font().color(&BLACK),
            ))
            .map_err(plot_error)?;
        }
        for (row, frame) in frames.iter().enumerate() {
            root.draw(&Text::new(
                frame.name.clone(),
                (6, (caption + row as u32 * panel_h + 4) as i32),
                (FONT, 14).into_font().color(&WHITE),
            ))
            .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    save(path, buffer, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_labels_sit_at_cell_centres() {
        let names = vec!["day".to_string(), "dusk".to_string()];
        assert_eq!(centred_label(0.5, &names), "day");
        assert_eq!(centred_label(1.5, &names), "dusk");
        assert_eq!(centred_label(1.0, &names), "");
        assert_eq!(centred_label(2.5, &names), "");
    }
}
