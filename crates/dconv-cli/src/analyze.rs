//! `dconv analyze`: for each convolution of a model, on the input it sees when the model
//! runs on the given tensor, the time of every method, the one `auto` picks, sparsities and
//! MACs, and whether `auto` is within 5 % of the best method; optionally an SVG chart.

mod chart;

use crate::model_input::InputArgs;
use crate::session_args::SessionArgs;
use crate::Failure;
use dconv::conv::select::MODELED;
use dconv::runtime::LayerAnalysis;
use dconv::{Model, Policy, Session};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `auto` passes on a layer when its pick is at most this much slower than the best.
const AUTO_TOLERANCE: f64 = 0.05;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The ONNX model.
    model: PathBuf,
    #[command(flatten)]
    input: InputArgs,
    /// Threads (0: all cores).
    #[arg(long, value_name = "T", default_value_t = 1)]
    threads: usize,
    /// Timed runs of each method on each layer (the median is reported).
    #[arg(long, value_name = "R", default_value_t = 5)]
    runs: usize,
    /// Also draw per-layer sparsity and per-method time as an SVG chart.
    #[arg(long, value_name = "PATH")]
    svg: Option<PathBuf>,
    #[command(flatten)]
    session: SessionArgs,
}

pub fn run(args: &Args) -> Result<(), Failure> {
    if args.runs == 0 {
        return Err(Failure::Usage("--runs must be at least 1".into()));
    }
    let model = Model::load(&args.model).map_err(Failure::from)?;
    let (input_name, tensor) = args.input.load(&model)?;
    let options = args.session.options(args.threads, Policy::Auto)?;
    let session = Session::new(&model, options).map_err(Failure::from)?;
    eprintln!("timing every method on each convolution ...");
    let started = Instant::now();
    let mut progress = |layer: &LayerAnalysis, done: usize, convs: usize| {
        let elapsed = started.elapsed().as_secs_f64();
        eprintln!("  [{done}/{convs}] {} ({elapsed:.1} s)", layer.name);
    };
    let layers = session
        .analyze_reporting(&[(input_name.as_str(), tensor)], args.runs, &mut progress)
        .map_err(Failure::from)?;
    args.session.tell_profile("analyze", &session);
    print_table(&layers);
    if let Some(path) = &args.svg {
        chart::draw(path, &layers)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_table(layers: &[LayerAnalysis]) {
    let name_width = layers
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    // "pairs": where sparse-weight keeps one list per pair of filters (their zeros
    // coincide), the places of those lists per non-zero weight. "blk16 0s": the fraction of
    // blocks of 16 output channels (at one input channel and tap) all zero, which the block
    // forms of im2csoa and sparse-weight skip.
    print!(
        "{:<name_width$} {:>8} {:>7} {:>7} {:>5} {:>8}",
        "layer", "GMAC", "in 0s", "w 0s", "pairs", "blk16 0s"
    );
    for m in MODELED {
        print!(" {:>13}", m.name());
    }
    println!(" {:>13} {:>13} {:>13}", "best", "auto", "auto vs best");
    let mut passed = 0;
    let (mut auto_total, mut best_total, mut dense_total) = (0.0, 0.0, 0.0);
    for layer in layers {
        let pairs = layer
            .weights
            .twin_share
            .map_or("-".to_string(), |u| format!("{u:.2}"));
        let blocks = (1.0 - layer.weights.blocks_of_16) * 100.0;
        print!(
            "{:<name_width$} {:>8.3} {:>6.1}% {:>6.1}% {pairs:>5} {blocks:>7.1}%",
            layer.name,
            layer.macs as f64 * 1e-9,
            layer.input_sparsity * 100.0,
            layer.weights.sparsity * 100.0
        );
        for m in MODELED {
            match layer.time_of(m) {
                Some(t) => print!(" {:>10.3} ms", ms(t)),
                None => print!(" {:>13}", "-"),
            }
        }
        let best = layer.best();
        let verdict = layer.auto_vs_best().map(|r| {
            if r <= AUTO_TOLERANCE {
                passed += 1;
            }
            let mark = if r <= AUTO_TOLERANCE { "ok" } else { "SLOW" };
            format!("{:+.1} % {mark}", r * 100.0)
        });
        println!(
            " {:>13} {:>13} {:>13}",
            best.map_or("-", |b| b.method.name()),
            layer.auto.name(),
            verdict.unwrap_or_else(|| "-".into())
        );
        auto_total += layer.time_of(layer.auto).map_or(0.0, ms);
        best_total += best.map_or(0.0, |b| ms(b.measured));
        dense_total += layer.time_of(dconv::conv::Method::Dense).map_or(0.0, ms);
    }
    println!(
        "\nauto within {:.0} % of the best method on {passed} of {} layers; convolutions in \
         total: auto {auto_total:.2} ms, best per layer {best_total:.2} ms, dense \
         {dense_total:.2} ms",
        AUTO_TOLERANCE * 100.0,
        layers.len()
    );
}
