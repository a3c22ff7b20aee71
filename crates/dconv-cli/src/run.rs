//! `dconv run`: runs an ONNX model on a .npy input and writes the chosen output as .npy.

use crate::Failure;
use dconv::io::npy::{read_npy, write_npy};
use dconv::{Model, Policy, Session, SessionOptions, Tensor};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The ONNX model.
    model: PathBuf,
    /// The input tensor (.npy, float32 or float64).
    #[arg(long, value_name = "X.npy")]
    input: PathBuf,
    /// The model input to feed [default: the first].
    #[arg(long, value_name = "NAME")]
    input_name: Option<String>,
    /// Where to write the output tensor (.npy, float32).
    #[arg(long, value_name = "Y.npy")]
    output: PathBuf,
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
    /// Refuse a model whose plan would need more memory than this (bytes, or with a K, M
    /// or G suffix).
    #[arg(long, value_name = "BYTES", value_parser = parse_max_memory)]
    max_memory: Option<usize>,
}

fn parse_max_memory(text: &str) -> Result<usize, String> {
    dconv::limits::parse_bytes(text).map_err(|e| e.to_string())
}

/// A library error: the caller's fault (exit 2) or dconv's (exit 1).
fn failure(e: dconv::Error) -> Failure {
    if e.is_bad_input() {
        Failure::Usage(e.to_string())
    } else {
        Failure::Run(e.to_string())
    }
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let model = Model::load(&args.model).map_err(failure)?;
    let input_name = match &args.input_name {
        Some(name) => name.clone(),
        None => model
            .inputs()
            .first()
            .map(|i| i.name.clone())
            .ok_or_else(|| Failure::Usage("the model has no inputs".into()))?,
    };
    if model.inputs().len() > 1 {
        return Err(Failure::Usage(format!(
            "the model has {} inputs; dconv run feeds one",
            model.inputs().len()
        )));
    }
    let (shape, data) = read_npy(&args.input).map_err(|e| Failure::Usage(e.to_string()))?;
    let tensor = Tensor::from_f32(shape, data).map_err(failure)?;
    let options = SessionOptions {
        threads: args.threads,
        policy: args.policy,
        max_memory: args.max_memory,
    };
    let session = Session::new(&model, options).map_err(failure)?;
    let outputs = session
        .run(&[(input_name.as_str(), tensor)])
        .map_err(failure)?;
    let (name, output) = match &args.output_name {
        Some(wanted) => outputs
            .iter()
            .find(|(n, _)| n == wanted)
            .ok_or_else(|| Failure::Usage(format!("the model has no output '{wanted}'")))?,
        None => outputs
            .first()
            .ok_or_else(|| Failure::Usage("the model has no outputs".into()))?,
    };
    write_npy(&args.output, output.shape(), &output.to_f32_vec())
        .map_err(|e| Failure::Usage(e.to_string()))?;
    eprintln!(
        "dconv run: wrote '{name}' {:?} to {}",
        output.shape(),
        args.output.display()
    );
    Ok(())
}
