//! `dconv bench`: end-to-end and per-layer times of a model on one input, as a table and
//! optionally as JSON, with the process's peak memory.

use crate::measure::{measure, ms, Measurement};
use crate::memory::peak_rss_mb;
use crate::model_input::InputArgs;
use crate::progress::Progress;
use crate::session_args::{tell_budget_notes, SessionArgs};
use crate::Failure;
use dconv::{Model, Policy, Session};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The ONNX model.
    model: PathBuf,
    #[command(flatten)]
    input: InputArgs,
    /// Threads (0: all cores).
    #[arg(long, value_name = "T", default_value_t = 0)]
    threads: usize,
    /// How each convolution picks its method: auto, or a method name.
    #[arg(long, value_name = "P", default_value = "auto")]
    policy: Policy,
    /// Timed runs (the per-layer times come from as many profiled runs more).
    #[arg(long, value_name = "R", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Untimed runs first.
    #[arg(long, value_name = "W", default_value_t = 1)]
    warmup: u32,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    #[command(flatten)]
    session: SessionArgs,
}

/// The JSON report.
#[derive(Serialize)]
struct Report {
    model: String,
    threads: usize,
    policy: String,
    median_ms: f64,
    min_ms: f64,
    /// The median run's time outside its steps: inputs and outputs, the plan's lookup, the
    /// hand-off to the session's threads.
    outside_steps_ms: f64,
    runs: u32,
    peak_rss_mb: Option<f64>,
    layers: Vec<LayerRow>,
}

#[derive(Serialize)]
struct LayerRow {
    name: String,
    op: String,
    /// The convolution method; null for other operators.
    algorithm: Option<String>,
    input_sparsity: f64,
    /// Null for operators without weights.
    weight_sparsity: Option<f64>,
    macs: u64,
    median_ms: f64,
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let model = Model::load(&args.model).map_err(Failure::from)?;
    let input = args.input.load(&model)?;
    let options = args.session.options(args.threads, args.policy)?;
    let session = Session::new(&model, options).map_err(Failure::from)?;
    let (warmup, runs) = (args.warmup as usize, args.runs as usize);
    let progress = Progress::new((warmup + 2 * runs) as u64, "bench");
    let measured = measure(&session, &input, warmup, runs, &progress)?;
    drop(progress);
    args.session.tell_profile("bench", &session);
    tell_budget_notes("bench", &session, input.1.shape())?;
    let report = report(args, &measured);
    print_report(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::Run(format!("cannot encode the report: {e}")))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| Failure::Run(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

fn report(args: &Args, measured: &Measurement) -> Report {
    Report {
        model: args.model.display().to_string(),
        threads: args.threads,
        policy: args.policy.to_string(),
        median_ms: ms(measured.median),
        min_ms: ms(measured.min),
        outside_steps_ms: ms(measured.outside_steps),
        runs: args.runs,
        peak_rss_mb: peak_rss_mb(),
        layers: measured
            .layers
            .iter()
            .map(|l| LayerRow {
                name: l.step.name.clone(),
                op: l.step.op.clone(),
                algorithm: l.step.method.map(|m| m.name().to_string()),
                input_sparsity: l.step.input_sparsity,
                weight_sparsity: l.step.weight_sparsity,
                macs: l.step.macs,
                median_ms: ms(l.median),
            })
            .collect(),
    }
}

fn print_report(r: &Report) {
    let width = r
        .layers
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let op_width = r
        .layers
        .iter()
        .map(|l| l.op.len())
        .max()
        .unwrap_or(0)
        .max(10);
    println!(
        "{:<width$}  {:<op_width$}  {:<13}  {:>8}  {:>8}  {:>8}  {:>9}",
        "layer", "op", "method", "in zeros", "w zeros", "GMACs", "median ms"
    );
    let percent = |f: f64| format!("{:.1} %", 100.0 * f);
    for l in &r.layers {
        println!(
            "{:<width$}  {:<op_width$}  {:<13}  {:>8}  {:>8}  {:>8}  {:>9.3}",
            l.name,
            l.op,
            l.algorithm.as_deref().unwrap_or("-"),
            percent(l.input_sparsity),
            l.weight_sparsity.map_or("-".into(), percent),
            if l.macs > 0 {
                format!("{:.3}", l.macs as f64 / 1e9)
            } else {
                "-".into()
            },
            l.median_ms
        );
    }
    println!(
        "{}: policy {}, {} threads: median {:.2} ms, min {:.2} ms over {} runs; peak memory {}",
        r.model,
        r.policy,
        if r.threads == 0 {
            "all".to_string()
        } else {
            r.threads.to_string()
        },
        r.median_ms,
        r.min_ms,
        r.runs,
        r.peak_rss_mb
            .map_or("unknown".into(), |mb| format!("{mb:.0} MB"))
    );
    println!(
        "outside the {} steps (inputs, outputs, the plan's lookup, the threads' hand-off): {:.3} ms",
        r.layers.len(),
        r.outside_steps_ms
    );
}
