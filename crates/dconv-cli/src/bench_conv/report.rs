//! What `bench-conv` prints and writes: a header describing the run, an aligned table, and
//! the same results as JSON.

use super::{Args, DataSparsity, Measurement};
use crate::measure::ms;
use crate::Failure;
use dconv::cache::CacheSizes;
use dconv::conv::{ConvSpec, Method};
use dconv::kernels::Isa;
use dconv::timing::median;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// The summary of one method's runs, as reported.
#[derive(Serialize)]
pub struct AlgorithmResult {
    algorithm: &'static str,
    median_ms: f64,
    min_ms: f64,
    convert_ms: f64,
    multiply_ms: f64,
    /// 2 x the dense multiply-adds per median run: comparable across methods.
    gflops_dense_equivalent: f64,
    /// 2 x the multiply-adds this method needs given the zeros, per median run.
    gflops_effective: f64,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    spec: SpecReport,
    input_sparsity: f64,
    weight_sparsity: f64,
    /// Output channels per block of zero weights; null when zeros were placed one by one.
    weight_block: Option<usize>,
    /// The fraction of weight blocks measured all zero; null without a block.
    weight_zero_blocks: Option<f64>,
    zeros: &'static str,
    /// Whether a residual tensor was added to the sums.
    residual: bool,
    threads: usize,
    runs: usize,
    isa: &'static str,
    /// The cache sizes the methods blocked for, in bytes.
    l1d_bytes: usize,
    l2_bytes: usize,
    results: &'a [AlgorithmResult],
}

#[derive(Serialize)]
struct SpecReport {
    batch: usize,
    channels: usize,
    height: usize,
    width: usize,
    filters: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    /// `[top, left, bottom, right]`.
    padding: [usize; 4],
    groups: usize,
    bias: bool,
    activation: &'static str,
    out_height: usize,
    out_width: usize,
    macs: u64,
}

impl SpecReport {
    fn new(spec: &ConvSpec) -> Self {
        let p = &spec.padding;
        SpecReport {
            batch: spec.batch,
            channels: spec.channels,
            height: spec.height,
            width: spec.width,
            filters: spec.filters,
            kernel: spec.kernel,
            stride: spec.stride,
            dilation: spec.dilation,
            padding: [p.top, p.left, p.bottom, p.right],
            groups: spec.groups,
            bias: spec.bias,
            activation: spec.activation.name(),
            out_height: spec.out_height(),
            out_width: spec.out_width(),
            macs: dense_macs(spec),
        }
    }
}

/// Multiply-adds of a validated spec.
fn dense_macs(spec: &ConvSpec) -> u64 {
    spec.macs().expect("validated spec")
}

/// The multiply-adds `method` needs once the zeros it skips are skipped.
fn effective_macs(method: Method, dense: f64, measured: &DataSparsity) -> f64 {
    let skips = method.skips();
    let density = |skipped: bool, sparsity: f64| if skipped { 1.0 - sparsity } else { 1.0 };
    dense
        * density(skips.input_zeros, measured.input)
        * density(skips.weight_zeros, measured.weights)
}

pub fn summarize(
    spec: &ConvSpec,
    measurements: &[Measurement],
    measured: &DataSparsity,
) -> Vec<AlgorithmResult> {
    let dense = dense_macs(spec) as f64;
    measurements
        .iter()
        .map(|m| {
            let median = median_ms(&m.totals);
            let gflops = |macs: f64| 2.0 * macs / (median * 1e6);
            AlgorithmResult {
                algorithm: m.method.name(),
                median_ms: median,
                min_ms: m.totals.iter().min().map_or(0.0, |d| ms(*d)),
                convert_ms: median_ms(&m.converts),
                multiply_ms: median_ms(&m.multiplies),
                gflops_dense_equivalent: gflops(dense),
                gflops_effective: gflops(effective_macs(m.method, dense, measured)),
            }
        })
        .collect()
}

/// The median in milliseconds.
fn median_ms(durations: &[Duration]) -> f64 {
    ms(median(durations))
}

pub fn print_header(
    args: &Args,
    spec: &ConvSpec,
    input_sparsity: f64,
    measured: &DataSparsity,
    isa: Isa,
) {
    let p = &spec.padding;
    let layer = args
        .layer
        .as_deref()
        .map_or(String::new(), |l| format!("{l}: "));
    println!(
        "{layer}{}x{}x{}x{} (NHWC) -> {} filters {}x{}, stride {}x{}, dilation {}x{}, \
         pad {},{},{},{}, groups {} -> output {}x{}",
        spec.batch,
        spec.height,
        spec.width,
        spec.channels,
        spec.filters,
        spec.kernel[0],
        spec.kernel[1],
        spec.stride[0],
        spec.stride[1],
        spec.dilation[0],
        spec.dilation[1],
        p.top,
        p.left,
        p.bottom,
        p.right,
        spec.groups,
        spec.out_height(),
        spec.out_width(),
    );
    let weights = match (args.weight_block, measured.weight_blocks) {
        (Some(block), Some(blocks)) => format!(
            "weights {:.1}% zero in blocks of {block} output channels (measured {:.1}% of \
             blocks, {:.1}% of weights)",
            args.weight_sparsity * 100.0,
            blocks * 100.0,
            measured.weights * 100.0,
        ),
        _ => format!(
            "weights {:.1}% zero (measured {:.1}%)",
            args.weight_sparsity * 100.0,
            measured.weights * 100.0,
        ),
    };
    println!(
        "{} dense multiply-adds; input {:.1}% zero ({} pattern, measured {:.1}%), {weights}",
        with_unit(dense_macs(spec) as f64),
        input_sparsity * 100.0,
        args.zeros,
        measured.input * 100.0,
    );
    println!(
        "isa {isa}, caches blocked for {}, {} thread(s), {} warm-up + {} timed runs per \
         method, seed {}{}",
        CacheSizes::detect(),
        args.threads,
        args.warmup,
        args.runs,
        args.seed,
        if args.residual {
            "; a residual added to the sums"
        } else {
            ""
        }
    );
}

/// `1.85 G`, `103.7 k`: a count with an SI prefix, for people to read.
fn with_unit(count: f64) -> String {
    let (scaled, prefix) = [(1e9, "G"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|(scale, _)| count >= *scale)
        .map_or((count, ""), |(scale, prefix)| (count / scale, prefix));
    format!("{scaled:.3} {prefix}")
}

pub fn print_table(results: &[AlgorithmResult]) {
    let dense_median = results
        .iter()
        .find(|r| r.algorithm == Method::Dense.name())
        .map(|r| r.median_ms);
    let mut header = format!(
        "{:<14} {:>10} {:>10} {:>11} {:>12} {:>14} {:>14}",
        "algorithm",
        "median ms",
        "min ms",
        "convert ms",
        "multiply ms",
        "GFLOP/s dense",
        "GFLOP/s eff."
    );
    if dense_median.is_some() {
        header.push_str(&format!(" {:>10}", "vs dense"));
    }
    println!();
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for r in results {
        let mut line = format!(
            "{:<14} {:>10.3} {:>10.3} {:>11.3} {:>12.3} {:>14.2} {:>14.2}",
            r.algorithm,
            r.median_ms,
            r.min_ms,
            r.convert_ms,
            r.multiply_ms,
            r.gflops_dense_equivalent,
            r.gflops_effective
        );
        if let Some(dense) = dense_median {
            line.push_str(&format!(" {:>9.2}x", dense / r.median_ms));
        }
        println!("{line}");
    }
}

pub fn write_json(
    path: &Path,
    args: &Args,
    spec: &ConvSpec,
    input_sparsity: f64,
    measured: &DataSparsity,
    isa: Isa,
    results: &[AlgorithmResult],
) -> Result<(), Failure> {
    let report = JsonReport {
        spec: SpecReport::new(spec),
        input_sparsity,
        weight_sparsity: args.weight_sparsity,
        weight_block: args.weight_block,
        weight_zero_blocks: measured.weight_blocks,
        zeros: args.zeros.name(),
        residual: args.residual,
        threads: args.threads,
        runs: args.runs,
        isa: isa.name(),
        l1d_bytes: CacheSizes::detect().l1d,
        l2_bytes: CacheSizes::detect().l2,
        results,
    };
    let text = serde_json::to_string_pretty(&report)
        .map_err(|e| Failure::Run(format!("cannot encode the results: {e}")))?;
    std::fs::write(path, text + "\n")
        .map_err(|e| Failure::Run(format!("cannot write {}: {e}", path.display())))
}
