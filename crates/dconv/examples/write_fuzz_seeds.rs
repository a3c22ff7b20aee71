//! Writes the seeds of the fuzz targets (scripts/fuzz): the example model as
//! MODEL_DIR/example.onnx and its input as NPY_DIR/example.npy.
//! `cargo run --release -p dconv --example write_fuzz_seeds -- MODEL_DIR NPY_DIR`

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut dirs = std::env::args_os().skip(1).map(PathBuf::from);
    let (Some(models), Some(tensors)) = (dirs.next(), dirs.next()) else {
        return Err("usage: write_fuzz_seeds MODEL_DIR NPY_DIR".into());
    };
    std::fs::write(models.join("example.onnx"), dconv::runtime::example_model())?;
    let input: Vec<f32> = (0..16).map(|i| i as f32 - 8.0).collect();
    dconv::io::npy::write_npy(&tensors.join("example.npy"), &[1, 1, 4, 4], &input)?;
    Ok(())
}
