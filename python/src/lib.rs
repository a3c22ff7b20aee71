//! Python bindings of dconv, shaped like ONNX Runtime's Python API so that
//! `import dconv as ort` runs the common calls: `SessionOptions`, `InferenceSession` with
//! `get_inputs`, `get_outputs` and `run`. The Python package `dconv` (python/dconv)
//! re-exports this module, `dconv._dconv`.

mod errors;
mod feed;
mod prune;
mod session;

use pyo3::prelude::*;

/// The execution providers dconv has: ONNX Runtime's CPU provider's name, for code that asks.
#[pyfunction]
fn get_available_providers() -> Vec<&'static str> {
    vec![session::CPU_PROVIDER]
}

#[pymodule]
fn _dconv(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "InvalidArgument",
        m.py().get_type::<errors::InvalidArgument>(),
    )?;
    m.add_class::<session::SessionOptions>()?;
    m.add_class::<session::InferenceSession>()?;
    m.add_class::<session::NodeArg>()?;
    m.add_function(wrap_pyfunction!(get_available_providers, m)?)?;
    m.add_function(wrap_pyfunction!(prune::prune, m)?)?;
    Ok(())
}
