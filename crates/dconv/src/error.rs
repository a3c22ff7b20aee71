//! The error type of the library: every failure a caller can cause is one of these,
//! never a panic.

use std::path::PathBuf;
use thiserror::Error;

/// What went wrong, with enough context to act on it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// A convolution description that cannot be computed (zero stride, groups that do not
    /// divide the channels, a kernel larger than the padded input, ...).
    #[error("invalid convolution: {0}")]
    InvalidSpec(String),
    /// A buffer whose length does not match what the description needs.
    #[error("{what} has {actual} elements, expected {expected}")]
    BufferLength {
        what: &'static str,
        expected: usize,
        actual: usize,
    },
    /// Size arithmetic that does not fit in memory addresses.
    #[error("size overflow while computing {0}")]
    Overflow(&'static str),
    /// A name (method, zero pattern, ...) that is not known.
    #[error("unknown {kind} '{name}' (expected one of: {expected})")]
    UnknownName {
        kind: &'static str,
        name: String,
        expected: String,
    },
    /// A parameter outside the values it can take (a zero standard deviation, a size of 0).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A file given to read (tensor, image) that cannot be opened or is not what it claims:
    /// the caller's data is at fault.
    #[error("{}: {msg}", path.display())]
    Input { path: PathBuf, msg: String },
    /// A file that cannot be written.
    #[error("cannot write {}: {msg}", path.display())]
    Output { path: PathBuf, msg: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
