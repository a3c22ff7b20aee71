//! How dconv's failures reach Python: the caller's mistakes as `InvalidArgument` (a
//! `ValueError`), dconv's own as `RuntimeError`, and a panic as `RuntimeError` rather than
//! pyo3's `PanicException`, which is not an `Exception` and would escape `except Exception`.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::{create_exception, PyErr};
use std::panic::{catch_unwind, AssertUnwindSafe};

create_exception!(
    dconv,
    InvalidArgument,
    PyValueError,
    "A bad model, input name, shape, type or option: the message is the dconv CLI's one-line error."
);

/// The Python exception for a library error.
pub fn to_py(e: dconv::Error) -> PyErr {
    if e.is_bad_input() {
        InvalidArgument::new_err(e.to_string())
    } else {
        PyRuntimeError::new_err(e.to_string())
    }
}

/// An `InvalidArgument` with `message`.
pub fn invalid(message: impl Into<String>) -> PyErr {
    InvalidArgument::new_err(message.into())
}

/// Runs `work`, turning a library error or a panic into the Python exception for it. Safe
/// to call without the GIL: the exception is built lazily.
pub fn guarded<T>(work: impl FnOnce() -> dconv::Result<T>) -> Result<T, PyErr> {
    match catch_unwind(AssertUnwindSafe(work)) {
        Ok(result) => result.map_err(to_py),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(PyRuntimeError::new_err(format!(
                "internal error in dconv (please report it): {what}"
            )))
        }
    }
}
