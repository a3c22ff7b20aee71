//! `dconv run`: runs an ONNX model on a .npy input or a photograph, writes the chosen output
//! as .npy and, for a classifier, prints its top classes.

use crate::model_input::InputArgs;
use crate::session_args::{tell_budget_notes, SessionArgs};
use crate::Failure;
use dconv::io::npy::write_npy;
use dconv::{Model, Policy, Session, Tensor};
use std::path::PathBuf;

/// The most classes listed for a classifier output.
const TOP_CLASSES: usize = 5;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The ONNX model.
    model: PathBuf,
    #[command(flatten)]
    input: InputArgs,
    /// Where to write the output tensor (.npy, float32).
    #[arg(long, value_name = "Y.npy")]
    output: Option<PathBuf>,
    /// The model output to write [default: the first].
    #[arg(long, value_name = "NAME")]
    output_name: Option<String>,
    /// How each convolution picks its method: auto, or a method name (dense, lowered-csr,
    /// im2csr, im2csoa, sparse-weight, reference).
    #[arg(long, value_name = "P", default_value = "auto")]
    policy: Policy,
    /// Threads (0: all cores).
    #[arg(long, value_name = "T", default_value_t = 0)]
    threads: usize,
    #[command(flatten)]
    session: SessionArgs,
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let model = Model::load(&args.model).map_err(Failure::from)?;
    let (input_name, tensor) = args.input.load(&model)?;
    let options = args.session.options(args.threads, args.policy)?;
    let session = Session::new(&model, options).map_err(Failure::from)?;
    let shape = tensor.shape().to_vec();
    let outputs = session
        .run(&[(input_name.as_str(), tensor)])
        .map_err(Failure::from)?;
    args.session.tell_profile("run", &session);
    tell_budget_notes("run", &session, &shape)?;
    let (name, output) = match &args.output_name {
        Some(wanted) => outputs
            .iter()
            .find(|(n, _)| n == wanted)
            .ok_or_else(|| Failure::Usage(format!("the model has no output '{wanted}'")))?,
        None => outputs
            .first()
            .ok_or_else(|| Failure::Usage("the model has no outputs".into()))?,
    };
    print_top_classes(name, output);
    if let Some(path) = &args.output {
        write_npy(path, output.shape(), &output.to_f32_vec())
            .map_err(|e| Failure::Usage(e.to_string()))?;
        eprintln!(
            "dconv run: wrote '{name}' {:?} to {}",
            output.shape(),
            path.display()
        );
    }
    Ok(())
}

/// For a classifier's `[1, K]` output, the highest-scoring classes, best first.
pub fn top_classes(output: &Tensor) -> Option<Vec<(usize, f32)>> {
    let [1, _] = output.shape() else { return None };
    let mut scored: Vec<(usize, f32)> = output.to_f32_vec().into_iter().enumerate().collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.truncate(TOP_CLASSES);
    Some(scored)
}

/// The highest-scoring entry of the first image's output (of all of it when the output has
/// one axis) and its score; None for an empty output.
pub fn top_class(output: &Tensor) -> Option<(usize, f32)> {
    let data = output.to_f32_vec();
    let per_image = match output.shape() {
        [n, _, ..] => data.len().checked_div(*n).unwrap_or(0),
        _ => data.len(),
    };
    data[..per_image]
        .iter()
        .copied()
        .enumerate()
        .fold(None, |best, (i, v)| match best {
            Some((_, b)) if b.total_cmp(&v).is_ge() => best,
            _ => Some((i, v)),
        })
}

fn print_top_classes(name: &str, output: &Tensor) {
    if let Some(top) = top_classes(output) {
        println!("top classes of '{name}':");
        for (class, score) in top {
            println!("  class {class:>5}  {score:.6}");
        }
    }
}
