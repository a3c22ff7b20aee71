//! `dconv prune`: magnitude pruning of an ONNX model's weights into a new ONNX file.

use crate::Failure;
use dconv::prune::{prune_model, PruneOptions, PrunedLayer, Target};
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
    /// Zero Conv weights in whole blocks of B consecutive output channels at one input
    /// channel and kernel tap, those of smallest L2 norm; the sparsity is then the fraction
    /// of blocks zeroed.
    #[arg(long, value_name = "B")]
    block: Option<usize>,
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
    let (pruned, layers) = prune_model(&bytes, Some(base), &options)
        .map_err(|e| Failure::from(e).in_file(&args.model))?;
    std::fs::write(&args.output, pruned)
        .map_err(|e| Failure::Run(format!("cannot write {}: {e}", args.output.display())))?;
    print_table(&layers);
    eprintln!(
        "dconv prune: wrote {} ({} layers pruned)",
        args.output.display(),
        layers.len()
    );
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
