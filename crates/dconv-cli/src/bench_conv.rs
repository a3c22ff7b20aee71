//! `dconv bench-conv`: times convolution methods on one layer shape with synthetic data.
//!
//! Each method is prepared once, warmed up, then timed over several rounds (each method once
//! per round, so that drift in the machine's speed hits all alike) inside a rayon pool
//! of the asked size, reusing one workspace. Every method's output is checked against the
//! dense method's (or the first method's) before anything is reported as a result.

mod report;
mod shape_args;

use crate::Failure;
use dconv::conv::{Conv, ConvSpec, Method, Workspace};
use dconv::kernels::aligned::CacheAligned;
use dconv::kernels::Isa;
use dconv::models::{self, ConvLayer};
use dconv::synth::{self, Rng, ZeroPattern};
use dconv::timing::{Protocol, Stage};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Take the shape, and the default input sparsity, of a known layer (e.g. vgg16.conv4_2);
    /// shape flags given as well override it.
    #[arg(long, value_name = "MODEL.LAYER")]
    layer: Option<String>,
    /// Input channels.
    #[arg(long, value_name = "C")]
    channels: Option<usize>,
    /// Input height.
    #[arg(long, value_name = "H")]
    height: Option<usize>,
    /// Input width.
    #[arg(long, value_name = "W")]
    width: Option<usize>,
    /// Output channels.
    #[arg(long, value_name = "M")]
    filters: Option<usize>,
    /// Kernel size: K, or RxS.
    #[arg(long, value_name = "K", value_parser = shape_args::pair)]
    kernel: Option<[usize; 2]>,
    /// Stride: S, or SHxSW [default: 1].
    #[arg(long, value_name = "S", value_parser = shape_args::pair)]
    stride: Option<[usize; 2]>,
    /// Dilation: D, or DHxDW [default: 1].
    #[arg(long, value_name = "D", value_parser = shape_args::pair)]
    dilation: Option<[usize; 2]>,
    /// Padding: P on all sides, PHxPW, or TOP,LEFT,BOTTOM,RIGHT [default: 0].
    #[arg(long, value_name = "P", value_parser = shape_args::padding)]
    pad: Option<[usize; 4]>,
    /// Groups [default: 1].
    #[arg(long, value_name = "G")]
    groups: Option<usize>,
    /// Images per run [default: 1].
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
    /// Fraction of zero input activations, in [0, 1] (default with --layer: the sparsity
    /// measured on that layer).
    #[arg(long, value_name = "F", value_parser = shape_args::fraction)]
    input_sparsity: Option<f64>,
    /// Fraction of zero weights, in [0, 1]; with --weight-block, the fraction of blocks.
    #[arg(long, value_name = "F", value_parser = shape_args::fraction, default_value_t = 0.0)]
    weight_sparsity: f64,
    /// Zero the weights in whole blocks of B consecutive output channels (within a group) at
    /// one input channel and kernel tap, as block pruning leaves them [default: element by
    /// element].
    #[arg(long, value_name = "B", value_parser = shape_args::positive)]
    weight_block: Option<usize>,
    /// Where the input's zeros lie: random (independent) or relu (clustered in blobs).
    #[arg(long, value_name = "PATTERN", default_value_t = ZeroPattern::Random)]
    zeros: ZeroPattern,
    /// Comma-separated methods to time [default: every method but reference].
    #[arg(long, value_name = "A,B,...", value_delimiter = ',')]
    algorithms: Option<Vec<Method>>,
    /// Threads of the rayon pool the runs execute in.
    #[arg(long, value_name = "T", value_parser = shape_args::positive, default_value_t = 1)]
    threads: usize,
    /// Timed runs per method.
    #[arg(long, value_name = "R", value_parser = shape_args::positive, default_value_t = 7)]
    runs: usize,
    /// Untimed runs per method before the timed ones.
    #[arg(long, value_name = "W", default_value_t = 2)]
    warmup: usize,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Seed of the synthetic input and weights.
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Add a residual tensor of the output's shape to the sums, as a ResNet block's last
    /// convolution does (its Add fused into the epilogue).
    #[arg(long)]
    residual: bool,
}

/// Every method is checked against the dense one (or the first) to this relative tolerance.
const RELATIVE_TOLERANCE: f32 = 1e-4;
const ABSOLUTE_TOLERANCE: f32 = 1e-5;

/// The timed runs of one method and the output of its last run.
struct Measurement {
    method: Method,
    totals: Vec<Duration>,
    converts: Vec<Duration>,
    multiplies: Vec<Duration>,
    output: Vec<f32>,
}

/// What the synthetic data turned out to be: sparsities measured on the actual tensors.
struct DataSparsity {
    input: f64,
    weights: f64,
    /// The fraction of all-zero weight blocks, with --weight-block.
    weight_blocks: Option<f64>,
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let layer = args
        .layer
        .as_deref()
        .map(models::conv_layer)
        .transpose()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let spec = spec_from(args, layer)?;
    spec.validate().map_err(|e| Failure::Usage(e.to_string()))?;
    let input_sparsity = args
        .input_sparsity
        .or(layer.map(|l| l.input_sparsity))
        .ok_or_else(|| Failure::Usage("--input-sparsity is required without --layer".into()))?;
    let methods = args.algorithms.clone().unwrap_or_else(|| {
        Method::ALL
            .into_iter()
            .filter(|&m| m != Method::Reference)
            .collect()
    });
    if methods.is_empty() {
        return Err(Failure::Usage("--algorithms lists no method".into()));
    }

    let mut rng = Rng::new(args.seed);
    let input = synth::activations(
        [spec.batch, spec.height, spec.width, spec.channels],
        input_sparsity,
        args.zeros,
        &mut rng,
    );
    let weight_len = spec
        .weight_len()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let blocks = args
        .weight_block
        .map(|block| {
            dconv::prune::WeightBlocks::new(
                spec.filters,
                spec.groups,
                weight_len / spec.filters,
                block,
            )
        })
        .transpose()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let weights = match &blocks {
        Some(blocks) => synth::block_sparse_weights(blocks, args.weight_sparsity, &mut rng),
        None => synth::random_sparse(weight_len, args.weight_sparsity, &mut rng),
    };
    let measured = DataSparsity {
        input: synth::sparsity(&input),
        weights: synth::sparsity(&weights),
        weight_blocks: blocks.map(|b| b.zero_fraction(&weights)),
    };
    let convs = methods
        .iter()
        .map(|&method| {
            Conv::prepare(&spec, &weights, None, method)
                .map_err(|e| Failure::Usage(format!("cannot prepare {method}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let isa = Isa::detect();
    report::print_header(args, &spec, input_sparsity, &measured, isa);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .map_err(|e| Failure::Run(format!("cannot start {} threads: {e}", args.threads)))?;
    let mut workspace = Workspace::default();
    let measurements = pool.install(|| measure(&convs, &input, args, &mut workspace))?;

    let results = report::summarize(&spec, &measurements, &measured);
    report::print_table(&results);
    check_agreement(&measurements)?;
    if let Some(path) = &args.json {
        report::write_json(path, args, &spec, input_sparsity, &measured, isa, &results)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The spec the flags describe: the layer's shape if one is named, each flag overriding.
fn spec_from(args: &Args, layer: Option<&ConvLayer>) -> Result<ConvSpec, Failure> {
    let base = layer.map(|l| l.spec);
    let mut missing = Vec::new();
    let mut required = |flag: &'static str, given: Option<usize>, from_layer: Option<usize>| {
        given.or(from_layer).unwrap_or_else(|| {
            missing.push(flag);
            1
        })
    };
    let channels = required("--channels", args.channels, base.map(|s| s.channels));
    let height = required("--height", args.height, base.map(|s| s.height));
    let width = required("--width", args.width, base.map(|s| s.width));
    let filters = required("--filters", args.filters, base.map(|s| s.filters));
    let kernel = args.kernel.or(base.map(|s| s.kernel));
    if kernel.is_none() {
        missing.push("--kernel");
    }
    if !missing.is_empty() {
        return Err(Failure::Usage(format!(
            "missing {} (give them, or --layer MODEL.LAYER)",
            missing.join(", ")
        )));
    }
    let base = base.unwrap_or_else(|| ConvSpec::new(channels, height, width, filters, [1, 1]));
    let padding = &base.padding;
    Ok(ConvSpec::new(
        channels,
        height,
        width,
        filters,
        kernel.unwrap_or(base.kernel),
    )
    .with_stride(args.stride.unwrap_or(base.stride))
    .with_dilation(args.dilation.unwrap_or(base.dilation))
    .with_padding(
        args.pad
            .unwrap_or([padding.top, padding.left, padding.bottom, padding.right]),
    )
    .with_groups(args.groups.unwrap_or(base.groups))
    .with_batch(args.batch.unwrap_or(base.batch)))
}

/// Times every method by the [`Protocol`]: `args.warmup` warm-up runs of each, then
/// `args.runs` rounds, with a progress line on stderr before each. Input and outputs start
/// on a cache line, as the buffers of a model run do.
fn measure(
    convs: &[Conv],
    input: &[f32],
    args: &Args,
    workspace: &mut Workspace,
) -> Result<Vec<Measurement>, Failure> {
    let mut aligned_input = CacheAligned::default();
    aligned_input.reset(input.len());
    aligned_input.as_mut_slice().copy_from_slice(input);
    let input = aligned_input.as_slice();
    let run_failed = |conv: &Conv| {
        let method = conv.method();
        move |e: dconv::Error| Failure::Run(format!("{method} failed: {e}"))
    };
    let residual = match args.residual {
        true => {
            let len = convs[0]
                .spec()
                .output_len()
                .map_err(run_failed(&convs[0]))?;
            Some(synth::random_sparse(len, 0.0, &mut Rng::new(args.seed ^ 1)))
        }
        false => None,
    };
    let mut outputs = convs
        .iter()
        .map(|conv| {
            let mut output = CacheAligned::default();
            output.reset(conv.spec().output_len().map_err(run_failed(conv))?);
            Ok(output)
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    let protocol = Protocol {
        warmup: args.warmup,
        rounds: args.runs,
    };
    let samples = protocol.time_reporting(
        convs.len(),
        |i| {
            let output = outputs[i].as_mut_slice();
            convs[i]
                .run_adding(input, residual.as_deref(), output, workspace)
                .map_err(run_failed(&convs[i]))
        },
        |stage| match stage {
            Stage::WarmUp { candidate } => {
                eprintln!("warming up {} ...", convs[candidate].method())
            }
            Stage::Round { round } => eprintln!("round {} of {} ...", round + 1, args.runs),
        },
    )?;
    Ok(convs
        .iter()
        .zip(samples)
        .zip(&outputs)
        .map(|((conv, samples), output)| Measurement {
            method: conv.method(),
            converts: samples.values.iter().map(|t| t.convert).collect(),
            multiplies: samples.values.iter().map(|t| t.multiply).collect(),
            totals: samples.times,
            output: output.as_slice().to_vec(),
        })
        .collect())
}

/// Checks every method's output against the dense method's, or the first method's.
fn check_agreement(measurements: &[Measurement]) -> Result<(), Failure> {
    let reference = measurements
        .iter()
        .find(|m| m.method == Method::Dense)
        .unwrap_or(&measurements[0]);
    let scale = reference
        .output
        .iter()
        .fold(0.0f32, |max, v| max.max(v.abs()));
    let tolerance = RELATIVE_TOLERANCE * scale + ABSOLUTE_TOLERANCE;
    let disagreements: Vec<String> = measurements
        .iter()
        .filter_map(|m| {
            let diff = max_abs_diff(&m.output, &reference.output);
            // A NaN difference counts as a disagreement.
            (diff.is_nan() || diff > tolerance).then(|| {
                format!(
                    "{} differs from {} by up to {diff:e} (tolerance {tolerance:e})",
                    m.method, reference.method
                )
            })
        })
        .collect();
    if disagreements.is_empty() {
        Ok(())
    } else {
        Err(Failure::Run(format!(
            "methods disagree: {}",
            disagreements.join("; ")
        )))
    }
}

/// The largest absolute difference; NaN if either side has a NaN where the other differs.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    let mut max = 0.0f32;
    for d in a.iter().zip(b).map(|(x, y)| (x - y).abs()) {
        if d.is_nan() {
            return f32::NAN;
        }
        max = max.max(d);
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(method: Method, output: Vec<f32>) -> Measurement {
        Measurement {
            method,
            totals: vec![],
            converts: vec![],
            multiplies: vec![],
            output,
        }
    }

    #[test]
    fn methods_are_checked_against_dense_within_tolerance() {
        let dense = vec![100.0, -50.0, 0.0];
        let close = vec![100.005, -50.0, 0.0];
        let far = vec![100.0, -50.0, 0.1];
        let nan = vec![100.0, f32::NAN, 0.0];
        let check = |first: Method, others: Vec<Vec<f32>>| {
            let mut all = vec![measurement(first, dense.clone())];
            all.extend(others.into_iter().map(|o| measurement(Method::Dense, o)));
            check_agreement(&all)
        };
        assert!(check(Method::Im2Csr, vec![close]).is_ok());
        assert!(matches!(
            check(Method::Im2Csr, vec![far.clone()]),
            Err(Failure::Run(_))
        ));
        assert!(check(Method::Im2Csr, vec![nan]).is_err());
        // Dense is the reference wherever it is in the list: here the first method is the
        // odd one out.
        let all = [
            measurement(Method::Im2Csr, far),
            measurement(Method::Dense, dense.clone()),
        ];
        let message = match check_agreement(&all) {
            Err(Failure::Run(message)) => message,
            other => panic!("expected a disagreement, got {other:?}"),
        };
        assert!(message.contains("im2csr differs from dense"), "{message}");
    }
}
