//! `dconv prune`: magnitude pruning of an ONNX model's weights into a new ONNX file, and,
//! with `--report`, what the pruning costs on one input: how far each pruned layer's output
//! and the model's outputs move, and whether the top class stays.

use crate::model_input::{FeedArgs, Source};
use crate::run::top_class;
use crate::Failure;
use dconv::conv::Method;
use dconv::prune::{prune_model, PruneOptions, PrunedLayer, Target};
use dconv::{Model, Policy, Session, SessionOptions, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["sparsity", "profile", "per_layer"])))]
pub struct Args {
    /// The ONNX model to prune.
    model: PathBuf,
    /// Where to write the pruned model.
    #[arg(short, long, value_name = "OUT.onnx")]
    output: PathBuf,
    /// The fraction of weights to zero in every layer (0 to 1).
    #[arg(long, value_name = "F")]
    sparsity: Option<f64>,
    /// A known per-layer profile: deep-compression-vgg16 (the densities Deep Compression
    /// reached on VGG-16's 13 convolutions).
    #[arg(long, value_name = "NAME", value_parser = ["deep-compression-vgg16"])]
    profile: Option<String>,
    /// A JSON object mapping Conv node names (or weight initializer names) to the fraction
    /// of weights to zero; other layers are left as they are.
    #[arg(long, value_name = "FILE.json")]
    per_layer: Option<PathBuf>,
    /// Leave the first convolution dense.
    #[arg(long)]
    skip_first: bool,
    /// Also prune the weights of Gemm and MatMul nodes (element by element).
    #[arg(long)]
    include_gemm: bool,
    /// Zero Conv weights in whole blocks of B consecutive output channels of one group at
    /// one input channel and kernel tap, those of smallest L2 norm; the sparsity is then the fraction
    /// of blocks zeroed.
    #[arg(long, value_name = "B")]
    block: Option<usize>,
    /// Also run the model and the pruned model on this input, a .npy tensor or else a
    /// photograph (preprocessed as the options below say), and print the relative L2 error
    /// of each pruned layer's output and of the model's outputs, and their top classes.
    #[arg(long, value_name = "X.npy|PHOTO")]
    report: Option<PathBuf>,
    #[command(flatten, next_help_heading = "Report input")]
    feed: FeedArgs,
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let target = match (&args.sparsity, &args.profile, &args.per_layer) {
        (Some(f), _, _) => Target::Uniform(*f),
        (_, Some(_), _) => Target::DeepCompressionVgg16,
        (_, _, Some(path)) => Target::PerLayer(read_per_layer(path)?),
        (None, None, None) => {
            return Err(Failure::Usage(
                "give one of --sparsity, --profile, --per-layer".into(),
            ))
        }
    };
    let options = PruneOptions {
        target,
        skip_first: args.skip_first,
        include_gemm: args.include_gemm,
        block: args.block,
    };
    let bytes = std::fs::read(&args.model)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", args.model.display())))?;
    let base = args.model.parent().unwrap_or(Path::new("."));
    // The report's input is read before pruning, and both models run before the pruned one
    // is written, so that an input the model refuses stops the command with nothing written.
    let report_input = match &args.report {
        Some(path) => {
            let dense = Model::from_bytes(&bytes, Some(base))
                .map_err(|e| Failure::from(e).in_file(&args.model))?;
            let tensor = args.feed.load(&dense, Source::by_extension(path))?;
            Some((path, dense, tensor))
        }
        None => None,
    };
    let (pruned, layers) = prune_model(&bytes, Some(base), &options)
        .map_err(|e| Failure::from(e).in_file(&args.model))?;
    let report = report_input
        .map(|(path, dense, tensor)| Report::new(path, dense, &pruned, &layers, &tensor))
        .transpose()?;
    std::fs::write(&args.output, pruned)
        .map_err(|e| Failure::Run(format!("cannot write {}: {e}", args.output.display())))?;
    print_table(&layers);
    eprintln!(
        "dconv prune: wrote {} ({} layers pruned)",
        args.output.display(),
        layers.len()
    );
    if let Some(report) = report {
        println!();
        report.print(&layers);
    }
    Ok(())
}

fn read_per_layer(path: &Path) -> Result<HashMap<String, f64>, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        Failure::Usage(format!(
            "{}: expected a JSON object of layer name to sparsity: {e}",
            path.display()
        ))
    })
}

fn print_table(layers: &[PrunedLayer]) {
    let width = layers
        .iter()
        .map(|l| l.node.len())
        .max()
        .unwrap_or(0)
        .max(5);
    println!(
        "{:<width$}  {:<6}  {:>10}  sparsity before -> after",
        "layer", "op", "weights"
    );
    for l in layers {
        println!(
            "{:<width$}  {:<6}  {:>10}  {:>6.1} % -> {:>5.1} %",
            l.node,
            l.op,
            l.weights,
            100.0 * l.sparsity_before,
            100.0 * l.sparsity_after
        );
    }
}

/// What pruning did to one input: the tensors of the dense and the pruned model (each
/// model output and each pruned layer's output), by name.
struct Report<'a> {
    input: &'a Path,
    outputs: Vec<String>,
    dense: HashMap<String, Tensor>,
    pruned: HashMap<String, Tensor>,
}

impl<'a> Report<'a> {
    /// Runs `dense` and the `pruned` model (serialized) on `tensor`, read from `input`, under
    /// the dense method.
    fn new(
        input: &'a Path,
        dense: Model,
        pruned: &[u8],
        layers: &[PrunedLayer],
        tensor: &(String, Tensor),
    ) -> Result<Report<'a>, Failure> {
        let outputs = dense.outputs().to_vec();
        let tensors: Vec<&str> = layers.iter().map(|l| l.output.as_str()).collect();
        let run = |model: Model| -> Result<HashMap<String, Tensor>, Failure> {
            let model = model.with_outputs(&tensors)?;
            let options = SessionOptions {
                policy: Policy::Force(Method::Dense),
                ..Default::default()
            };
            let session = Session::new(&model, options)?;
            Ok(session
                .run(&[(tensor.0.as_str(), tensor.1.clone())])?
                .into_iter()
                .collect())
        };
        // External weight data was inlined into the pruned model.
        let pruned = Model::from_bytes(pruned, None)?;
        Ok(Report {
            input,
            outputs,
            dense: run(dense)?,
            pruned: run(pruned)?,
        })
    }

    /// A row per pruned layer and per model output: ||pruned - dense|| / ||dense||; then the
    /// top class of each model output under both models.
    fn print(&self, layers: &[PrunedLayer]) {
        let rows: Vec<(&str, &str, &str)> = layers
            .iter()
            .map(|l| (l.node.as_str(), l.op.as_str(), l.output.as_str()))
            .chain(self.outputs.iter().map(|o| ("output", "", o.as_str())))
            .collect();
        let width = |column: fn(&(&str, &str, &str)) -> usize, title: &str| {
            rows.iter().map(column).max().unwrap_or(0).max(title.len())
        };
        let (layer_w, tensor_w) = (
            width(|r| r.0.len(), "layer"),
            width(|r| r.2.len(), "tensor"),
        );
        println!(
            "on {}: relative L2 error ||pruned - dense|| / ||dense||",
            self.input.display()
        );
        println!(
            "{:<layer_w$}  {:<6}  {:<tensor_w$}  {:>9}",
            "layer", "op", "tensor", "error"
        );
        for (layer, op, tensor) in &rows {
            let error = relative_error(&self.dense[*tensor], &self.pruned[*tensor]);
            println!(
                "{layer:<layer_w$}  {op:<6}  {tensor:<tensor_w$}  {:>7.3} %",
                100.0 * error
            );
        }
        for name in &self.outputs {
            let describe = |top: Option<(usize, f32)>| match top {
                Some((class, score)) => format!("{class} ({score:.4})"),
                None => "- (empty)".into(),
            };
            let (d, p) = (top_class(&self.dense[name]), top_class(&self.pruned[name]));
            let verdict = match (d, p) {
                (Some(d), Some(p)) if d.0 == p.0 => "agrees",
                _ => "differs",
            };
            println!(
                "top class of '{name}': dense {}, pruned {}: {verdict}",
                describe(d),
                describe(p)
            );
        }
    }
}

/// ||pruned - dense|| / ||dense|| over all elements: 0 when both are equal, infinite when
/// only the dense tensor is all zeros.
fn relative_error(dense: &Tensor, pruned: &Tensor) -> f64 {
    let (dense, pruned) = (dense.to_f32_vec(), pruned.to_f32_vec());
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&d, &p) in dense.iter().zip(&pruned) {
        diff += (f64::from(p) - f64::from(d)).powi(2);
        norm += f64::from(d).powi(2);
    }
    if diff == 0.0 {
        0.0
    } else {
        (diff / norm).sqrt()
    }
}
