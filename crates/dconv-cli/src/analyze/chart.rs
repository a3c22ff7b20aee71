//! The SVG chart of `dconv analyze`: input and weight sparsity by layer above, each
//! method's time by layer (log scale, `auto`'s picks marked) below.

use crate::Failure;
use dconv::conv::select::MODELED;
use dconv::runtime::LayerAnalysis;
use plotters::prelude::*;
use std::path::Path;

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 800;

/// One colour per modeled method, in [`MODELED`] order.
const METHOD_COLOURS: [RGBColor; MODELED.len()] = [
    RGBColor(31, 119, 180),
    RGBColor(127, 127, 127),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

pub fn draw(path: &Path, layers: &[LayerAnalysis]) -> Result<(), Failure> {
    if layers.is_empty() {
        return Err(Failure::Usage(
            "the model has no convolutions to chart".into(),
        ));
    }
    let failed =
        |e: &dyn std::fmt::Display| Failure::Run(format!("cannot draw {}: {e}", path.display()));
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let (top, bottom) = root.split_vertically(HEIGHT * 2 / 5);
    sparsity_panel(&top, layers).map_err(|e| failed(&e))?;
    time_panel(&bottom, layers).map_err(|e| failed(&e))?;
    root.present().map_err(|e| failed(&e))?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// Layer index as x, labelled by the layer's name.
fn layer_label(layers: &[LayerAnalysis]) -> impl Fn(&f64) -> String + '_ {
    move |x| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            layers
                .get(i as usize)
                .map(|l| short_name(&l.name))
                .unwrap_or_default()
        } else {
            String::new()
        }
    }
}

/// The last path component of a node name (tf2onnx names are long paths).
fn short_name(name: &str) -> String {
    let parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [.., block, _] if block.contains("conv") => block.to_string(),
        [.., last] => last.to_string(),
        [] => name.to_string(),
    }
}

fn x_range(layers: &[LayerAnalysis]) -> std::ops::Range<f64> {
    -0.5..layers.len() as f64 - 0.5
}

fn sparsity_panel(area: &Area, layers: &[LayerAnalysis]) -> DrawResult {
    let mut chart = ChartBuilder::on(area)
        .caption("Sparsity by layer", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range(layers), 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_labels(layers.len())
        .x_label_formatter(&layer_label(layers))
        .y_desc("zeros (%)")
        .draw()?;
    let series = [
        ("input", RGBColor(44, 160, 44), 0usize),
        ("weights", RGBColor(148, 103, 189), 1),
    ];
    for (label, colour, which) in series {
        let points: Vec<(f64, f64)> = layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let s = if which == 0 {
                    l.input_sparsity
                } else {
                    l.weights.sparsity
                };
                (i as f64, s * 100.0)
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, colour.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
}

fn time_panel(area: &Area, layers: &[LayerAnalysis]) -> DrawResult {
    let times = layers
        .iter()
        .flat_map(|l| l.methods.iter().map(|m| m.measured.as_secs_f64() * 1e3));
    let (low, high) = times.fold((f64::INFINITY, 0.0f64), |(lo, hi), t| {
        (lo.min(t), hi.max(t))
    });
    let low = (low * 0.8).max(1e-3);
    let high = (high * 1.25).max(low * 10.0);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Time per method by layer (filled: auto's pick)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range(layers), (low..high).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(layers.len())
        .x_label_formatter(&layer_label(layers))
        .y_desc("ms (log)")
        .draw()?;
    for (method, colour) in MODELED.into_iter().zip(METHOD_COLOURS) {
        let points: Vec<(f64, f64, bool)> = layers
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                l.time_of(method)
                    .map(|t| (i as f64, t.as_secs_f64() * 1e3, l.auto == method))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|&(x, y, _)| (x, y)),
                colour.stroke_width(2),
            ))?
            .label(method.name())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour));
        chart.draw_series(points.into_iter().map(|(x, y, picked)| {
            let style = if picked {
                colour.filled()
            } else {
                colour.stroke_width(1)
            };
            Circle::new((x, y), if picked { 5 } else { 3 }, style)
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
}
