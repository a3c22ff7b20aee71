//! Reading `run`'s `input_feed`: float32 C-contiguous numpy arrays are read in place; other
//! real-number arrays (float64, integers, bools) and array-likes are converted to float32
//! first; anything else is refused with `InvalidArgument`.

use crate::errors::invalid;
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The numpy kinds converted to float32: floats, signed and unsigned integers, booleans.
const CONVERTIBLE_KINDS: &str = "fiub";

/// `value` as a readable float32 C-contiguous array; a copy only when it is not one already.
pub fn float_array<'py>(
    py: Python<'py>,
    name: &str,
    value: &Bound<'py, PyAny>,
) -> PyResult<PyReadonlyArrayDyn<'py, f32>> {
    if let Ok(array) = value.cast::<PyArrayDyn<f32>>() {
        if array.is_c_contiguous() && array.is_aligned() {
            return Ok(array.readonly());
        }
    }
    let numpy = py.import("numpy")?;
    let array = numpy
        .call_method1("asarray", (value,))
        .map_err(|e| invalid(format!("input '{name}' is not an array: {e}")))?;
    let dtype = array.getattr("dtype")?;
    let kind: String = dtype.getattr("kind")?.extract()?;
    if !CONVERTIBLE_KINDS.contains(kind.as_str()) {
        return Err(invalid(format!(
            "input '{name}' has dtype {}; dconv takes float32 (or real numbers, which it converts)",
            dtype.str()?
        )));
    }
    let kwargs = PyDict::new(py);
    kwargs.set_item("dtype", numpy.getattr("float32")?)?;
    let converted = numpy.call_method("ascontiguousarray", (array,), Some(&kwargs))?;
    Ok(converted.cast_into::<PyArrayDyn<f32>>()?.readonly())
}
