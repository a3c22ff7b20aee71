//! `dconv tune`: measures the cost model's coefficients on this machine. A handful of
//! VGG-like layer shapes, each method timed over the sparsities its cost depends on
//! (input sparsity for the lowering and Direct Conversion methods, weight sparsity for
//! sparse-weight; dense alongside both), each layer with a bias and a fused ReLU as in a
//! model, then a least-squares fit per method. Prints the fit quality point by point and
//! writes the profile as JSON.

use crate::Failure;
use dconv::cache::CacheSizes;
use dconv::conv::select::fit::{fit, fit_one, Sample};
use dconv::conv::select::{CostProfile, LayerCosts, WeightZeros, MODELED};
use dconv::conv::{Activation, Conv, ConvSpec, Method, Skips, Workspace};
use dconv::kernels::Isa;
use dconv::synth::{self, Rng, ZeroPattern};
use dconv::timing::Protocol;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to write the profile (JSON) [default: print it].
    #[arg(long, value_name = "PROFILE.json")]
    out: Option<PathBuf>,
    /// Threads of the rayon pool the runs execute in (profiles are per thread count).
    #[arg(long, value_name = "T", default_value_t = 1)]
    threads: usize,
    /// Fewer shapes, sparsities and runs: under 30 s, a rougher fit.
    #[arg(long)]
    quick: bool,
    /// Seed of the synthetic inputs and weights.
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
}

/// How much measuring to do.
struct Plan {
    shapes: Vec<ConvSpec>,
    input_sparsities: &'static [f64],
    weight_sparsities: &'static [f64],
    runs: usize,
}

fn conv3x3(channels: usize, size: usize, filters: usize) -> ConvSpec {
    ConvSpec::new(channels, size, size, filters, [3, 3]).with_padding([1, 1, 1, 1])
}

/// `spec` as a model's convolutions run: with a bias and a fused ReLU, so that the times the
/// fit sees include each method's epilogue.
fn as_in_models(spec: ConvSpec) -> ConvSpec {
    spec.with_bias(true).with_activation(Activation::Relu)
}

fn plan(quick: bool) -> Plan {
    // The VGG-16 blocks (at a quarter of their MACs where they are large), a first layer on
    // an RGB image, and a 1x1 layer.
    let mut shapes = vec![
        conv3x3(3, 120, 64),
        conv3x3(64, 120, 64),
        conv3x3(128, 60, 128),
        conv3x3(256, 30, 256),
        conv3x3(512, 15, 512),
    ];
    if quick {
        return Plan {
            shapes: shapes.into_iter().map(as_in_models).collect(),
            input_sparsities: &[0.0, 0.4, 0.7, 0.9],
            weight_sparsities: &[0.0, 0.6, 0.9],
            runs: 5,
        };
    }
    // And the small layers of MobileNets, EfficientNets and ShuffleNets (0.2-2 M MACs),
    // where a method's fixed cost is most of its time: without them the fit leaves those
    // costs at whatever the large layers imply, and `auto` picks a compressed format
    // where dense is faster.
    shapes.extend([
        conv3x3(64, 60, 128),
        conv3x3(256, 30, 512),
        ConvSpec::new(256, 30, 30, 128, [1, 1]),
        ConvSpec::new(16, 28, 28, 48, [1, 1]),
        ConvSpec::new(96, 14, 14, 32, [1, 1]),
        ConvSpec::new(240, 7, 7, 80, [1, 1]),
        conv3x3(32, 14, 32),
    ]);
    Plan {
        shapes: shapes.into_iter().map(as_in_models).collect(),
        input_sparsities: &[0.0, 0.2, 0.4, 0.55, 0.7, 0.8, 0.9, 0.95],
        weight_sparsities: &[0.0, 0.5, 0.7, 0.8, 0.9, 0.95],
        runs: 9,
    }
}

/// The methods timed at one sweep's points: those of the cost model whose format skips
/// what `sweeps` says, with `dense` beside them (the drift is measured against it).
fn sweep(sweeps: impl Fn(Skips) -> bool) -> Vec<Method> {
    MODELED
        .into_iter()
        .filter(|&m| m == Method::Dense || sweeps(m.skips()))
        .collect()
}

/// The methods whose cost depends on the input's sparsity, timed across it.
fn input_sweep() -> Vec<Method> {
    sweep(|skips| skips.input_zeros)
}

/// The methods whose cost depends on the weights' sparsity alone, timed across it.
fn weight_sweep() -> Vec<Method> {
    sweep(|skips| skips.weight_zeros && !skips.input_zeros)
}
/// The input sparsity of the weight sweep (sparse-weight does not depend on it).
const WEIGHT_SWEEP_INPUT: f64 = 0.5;

pub fn run(args: &Args) -> Result<(), Failure> {
    if args.threads == 0 {
        return Err(Failure::Usage("--threads must be at least 1".into()));
    }
    let plan = plan(args.quick);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .map_err(|e| Failure::Run(format!("cannot start {} threads: {e}", args.threads)))?;
    eprintln!(
        "isa {}, caches blocked for {}, {} thread(s)",
        Isa::detect(),
        CacheSizes::detect(),
        args.threads
    );
    let started = Instant::now();
    let samples = pool.install(|| measure_all(&plan, args.seed))?;
    eprintln!(
        "measured {} points in {:.1} s",
        samples.len(),
        started.elapsed().as_secs_f64()
    );
    let measured = samples.clone();
    let samples = without_drift(samples)?;
    let profile = fit(&samples, args.threads)
        .map_err(|e| Failure::Run(e.to_string()))?
        .measured_with(Isa::detect());
    print_fit(&profile, &samples, &measured);
    print_choices(&profile, &samples);
    match &args.out {
        Some(path) => {
            profile
                .save(path)
                .map_err(|e| Failure::Usage(e.to_string()))?;
            println!("wrote {}", path.display());
        }
        None => println!("{}", profile.to_json()),
    }
    Ok(())
}

fn measure_all(plan: &Plan, seed: u64) -> Result<Vec<Sample>, Failure> {
    let mut rng = Rng::new(seed);
    let mut workspace = Workspace::default();
    let mut samples = Vec::new();
    for spec in &plan.shapes {
        eprintln!(
            "{} -> {} @ {}x{}, {}x{} ...",
            spec.channels, spec.filters, spec.height, spec.width, spec.kernel[0], spec.kernel[1]
        );
        let weight_len = spec.weight_len().map_err(|e| Failure::Run(e.to_string()))?;
        let dense_weights = synth::random_sparse(weight_len, 0.0, &mut rng);
        let convs = prepare(spec, &dense_weights, &input_sweep())?;
        let dense = WeightZeros::of(spec, &dense_weights);
        let runs = plan.runs;
        for &s_in in plan.input_sparsities {
            let input = activations(spec, s_in, &mut rng);
            samples.extend(time_point(&convs, &input, dense, runs, &mut workspace)?);
        }
        let input = activations(spec, WEIGHT_SWEEP_INPUT, &mut rng);
        for &s_w in plan.weight_sparsities {
            let weights = synth::random_sparse(weight_len, s_w, &mut rng);
            let convs = prepare(spec, &weights, &weight_sweep())?;
            let zeros = WeightZeros::of(spec, &weights);
            samples.extend(time_point(&convs, &input, zeros, runs, &mut workspace)?);
        }
    }
    Ok(samples)
}

/// The machine's speed drifts between points (other work shares it), but the methods timed
/// together at one point see the same drift. So: fit dense alone, then scale every point by
/// (fitted dense / dense measured there), keeping the ratios measured within the point.
fn without_drift(samples: Vec<Sample>) -> Result<Vec<Sample>, Failure> {
    let dense_only: Vec<Sample> = samples
        .iter()
        .filter(|s| s.method == Method::Dense)
        .copied()
        .collect();
    let dense_model =
        fit_one(Method::Dense, &dense_only).map_err(|e| Failure::Run(e.to_string()))?;
    let mut out = Vec::with_capacity(samples.len());
    for group in samples.chunk_by(same_point) {
        let dense = group.iter().find(|s| s.method == Method::Dense);
        let factor = dense.map_or(1.0, |d| {
            let fitted: f64 = d.terms().iter().zip(&dense_model).map(|(t, c)| t * c).sum();
            fitted / d.nanos
        });
        out.extend(group.iter().map(|s| Sample {
            nanos: s.nanos * factor,
            ..*s
        }));
    }
    Ok(out)
}

/// Whether two samples were timed together (same layer and sparsities).
fn same_point(a: &Sample, b: &Sample) -> bool {
    a.spec == b.spec && a.input_sparsity == b.input_sparsity && a.weights == b.weights
}

fn prepare(spec: &ConvSpec, weights: &[f32], methods: &[Method]) -> Result<Vec<Conv>, Failure> {
    let bias = vec![0.0; spec.filters];
    methods
        .iter()
        .map(|&m| {
            Conv::prepare(spec, weights, spec.bias.then_some(&bias[..]), m)
                .map_err(|e| Failure::Run(format!("cannot prepare {m}: {e}")))
        })
        .collect()
}

/// ReLU-like activations (zeros in blobs, as real layers have them).
fn activations(spec: &ConvSpec, sparsity: f64, rng: &mut Rng) -> Vec<f32> {
    synth::activations(
        [spec.batch, spec.height, spec.width, spec.channels],
        sparsity,
        ZeroPattern::Relu,
        rng,
    )
}

/// Times `convs` on `input` by the [`Protocol`] (one warm-up run of each, `runs` rounds);
/// a sample of each method's median.
fn time_point(
    convs: &[Conv],
    input: &[f32],
    weights: WeightZeros,
    runs: usize,
    workspace: &mut Workspace,
) -> Result<Vec<Sample>, Failure> {
    let Some(first) = convs.first() else {
        return Ok(Vec::new());
    };
    let spec = *first.spec();
    let failed = |m: Method| move |e: dconv::Error| Failure::Run(format!("{m} failed: {e}"));
    let mut output = vec![0.0f32; spec.output_len().map_err(failed(first.method()))?];
    let protocol = Protocol {
        warmup: 1,
        rounds: runs,
    };
    let samples = protocol.time(convs.len(), |i| {
        convs[i]
            .run(input, &mut output, workspace)
            .map_err(failed(convs[i].method()))
    })?;
    let input_sparsity = synth::sparsity(input);
    Ok(convs
        .iter()
        .zip(&samples)
        .map(|(conv, s)| Sample {
            method: conv.method(),
            spec,
            input_sparsity,
            weights,
            nanos: s.median().as_nanos() as f64,
        })
        .collect())
}

fn describe(spec: &ConvSpec) -> String {
    format!(
        "{}->{}@{}x{} k{}",
        spec.channels, spec.filters, spec.height, spec.width, spec.kernel[0]
    )
}

/// Predicted against measured, point by point, and a summary per method. The other methods
/// are judged on their timings without drift (`samples`); dense, whose fit defines the
/// drift, would match those exactly, so it is judged on its timings as `measured`.
fn print_fit(profile: &CostProfile, samples: &[Sample], measured: &[Sample]) {
    println!(
        "{:<14} {:<20} {:>6} {:>6} {:>10} {:>10} {:>7}",
        "method", "shape", "s_in", "s_w", "measured", "predicted", "error"
    );
    let mut errors: Vec<(Method, f64)> = Vec::new();
    for (corrected, raw) in samples.iter().zip(measured) {
        let s = if corrected.method == Method::Dense {
            raw
        } else {
            corrected
        };
        let predicted = profile
            .predict(s.method, &s.spec, s.input_sparsity, s.weights)
            .unwrap_or(f64::NAN);
        let error = predicted / s.nanos - 1.0;
        errors.push((s.method, error));
        println!(
            "{:<14} {:<20} {:>5.0}% {:>5.0}% {:>8.3}ms {:>8.3}ms {:>+6.1}%",
            s.method.name(),
            describe(&s.spec),
            s.input_sparsity * 100.0,
            s.weights.sparsity * 100.0,
            s.nanos * 1e-6,
            predicted * 1e-6,
            error * 100.0
        );
    }
    println!("\nfit quality (|predicted / measured - 1|):");
    for method in MODELED {
        let mut e: Vec<f64> = errors
            .iter()
            .filter(|(m, _)| *m == method)
            .map(|(_, e)| e.abs())
            .collect();
        if e.is_empty() {
            continue;
        }
        e.sort_by(f64::total_cmp);
        println!(
            "  {:<14} median {:>5.1} %   max {:>5.1} %   ({} points)",
            method.name(),
            e[e.len() / 2] * 100.0,
            e[e.len() - 1] * 100.0,
            e.len()
        );
    }
}

/// At each point where several methods were timed together: does the model's pick match
/// the measured best, and what does a wrong pick cost?
fn print_choices(profile: &CostProfile, samples: &[Sample]) {
    let mut points = 0;
    let mut agree = 0;
    let mut worst: f64 = 0.0;
    for group in samples.chunk_by(same_point) {
        let methods: Vec<Method> = group.iter().map(|s| s.method).collect();
        let costs = LayerCosts::new(profile, &group[0].spec, group[0].weights, &methods);
        let picked = costs.cheapest(group[0].input_sparsity);
        let time = |m: Method| group.iter().find(|s| s.method == m).map(|s| s.nanos);
        let best = group.iter().map(|s| s.nanos).fold(f64::INFINITY, f64::min);
        let loss = time(picked).unwrap_or(f64::NAN) / best - 1.0;
        points += 1;
        if loss <= 0.0 {
            agree += 1;
        }
        worst = worst.max(loss);
    }
    println!(
        "choice: the cheapest predicted method is the fastest measured at {agree} of {points} \
         points; the worst pick is {:.1} % slower than the best",
        worst * 100.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sweeps derived from the method table time what tune always timed.
    #[test]
    fn the_sweeps_time_each_method_across_the_sparsity_it_skips() {
        use Method::*;
        assert_eq!(input_sweep(), [Dense, LoweredCsr, Im2Csr, Im2Csoa]);
        assert_eq!(weight_sweep(), [Dense, SparseWeight]);
    }
}
