//! `dconv.prune`: the `dconv prune` command as a function.

use crate::errors::{guarded, invalid};
use dconv::prune::{prune_model, PruneOptions, Target};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// prune(in_path, out_path, sparsity, block=None, skip_first=False, include_gemm=False)
///
/// Zeros the weights of smallest magnitude in each convolution of the ONNX model at
/// `in_path` and writes the result, loadable by any ONNX runtime, to `out_path`.
///
/// `sparsity`: the fraction of weights to zero in every layer (a float in [0, 1]), the
/// name "deep-compression-vgg16" (Deep Compression's densities for VGG-16's 13
/// convolutions), or a dict from node (or weight initializer) name to fraction, which
/// leaves other layers alone. `block`: None prunes weight by weight; B zeros a Conv's
/// weights in whole blocks of B consecutive output channels of one group at one input
/// channel and kernel tap (those of smallest L2 norm), `sparsity` then being the fraction of blocks zeroed.
/// `skip_first` leaves the first convolution dense; `include_gemm` also prunes Gemm and
/// MatMul weights (weight by weight).
///
/// Returns one dict per pruned weight tensor: `node`, `op`, `initializer`, `weights`,
/// `sparsity_before`, `sparsity_after`.
#[pyfunction]
#[pyo3(signature = (in_path, out_path, sparsity, block=None, skip_first=false, include_gemm=false))]
pub fn prune<'py>(
    py: Python<'py>,
    in_path: PathBuf,
    out_path: PathBuf,
    sparsity: &Bound<'py, PyAny>,
    block: Option<usize>,
    skip_first: bool,
    include_gemm: bool,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let target = if let Ok(fraction) = sparsity.extract::<f64>() {
        Target::Uniform(fraction)
    } else if let Ok(name) = sparsity.extract::<String>() {
        match name.as_str() {
            "deep-compression-vgg16" => Target::DeepCompressionVgg16,
            other => {
                return Err(invalid(format!(
                    "unknown pruning profile '{other}' (expected: deep-compression-vgg16)"
                )))
            }
        }
    } else if let Ok(per_layer) = sparsity.extract::<HashMap<String, f64>>() {
        Target::PerLayer(per_layer)
    } else {
        return Err(invalid(
            "sparsity must be a fraction, 'deep-compression-vgg16' or a dict of layer name to fraction",
        ));
    };
    let options = PruneOptions {
        target,
        skip_first,
        include_gemm,
        block,
    };
    let layers = py.detach(|| {
        guarded(|| {
            let bytes = std::fs::read(&in_path).map_err(|e| dconv::Error::Io {
                path: in_path.display().to_string(),
                message: e.to_string(),
            })?;
            let base = in_path.parent().unwrap_or(Path::new("."));
            let (pruned, layers) = prune_model(&bytes, Some(base), &options)?;
            std::fs::write(&out_path, pruned).map_err(|e| dconv::Error::Output {
                path: out_path.clone(),
                msg: e.to_string(),
            })?;
            Ok(layers)
        })
    })?;
    layers
        .iter()
        .map(|layer| {
            let row = PyDict::new(py);
            row.set_item("node", &layer.node)?;
            row.set_item("op", &layer.op)?;
            row.set_item("initializer", &layer.initializer)?;
            row.set_item("weights", layer.weights)?;
            row.set_item("sparsity_before", layer.sparsity_before)?;
            row.set_item("sparsity_after", layer.sparsity_after)?;
            Ok(row)
        })
        .collect()
}
