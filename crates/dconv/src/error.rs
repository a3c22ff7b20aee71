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
    /// Size arithmetic that does not fit in memory addresses (the sizes came from the caller).
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
    /// A cost profile (`dconv tune`'s JSON) that is malformed or incomplete.
    #[error("invalid cost profile: {0}")]
    InvalidProfile(String),
    /// A file given to read (tensor, image) that cannot be opened or is not what it claims:
    /// the caller's data is at fault.
    #[error("{}: {msg}", path.display())]
    Input { path: PathBuf, msg: String },
    /// A file that cannot be written.
    #[error("cannot write {}: {msg}", path.display())]
    Output { path: PathBuf, msg: String },
    /// A model or tensor file that is malformed or inconsistent (truncated data, a size that
    /// does not match, a dangling tensor name, an external-data path outside the model folder).
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// A valid model that uses an operator, attribute value or opset dconv does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A tensor given to a model whose shape does not fit the model's declared input.
    #[error("tensor '{tensor}' has shape {actual:?}, expected {expected}")]
    ShapeMismatch {
        tensor: String,
        expected: String,
        actual: Vec<usize>,
    },
    /// A file that cannot be read.
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    /// A plan that would need more memory than the session's budget (or than the limit on
    /// folded constants).
    #[error("{what} needs {needed} bytes, over the memory budget of {budget} bytes")]
    OverBudget {
        what: String,
        needed: usize,
        budget: usize,
    },
    /// A failure while planning or running one node of a model: names the node and its op.
    #[error("node '{node}' ({op}): {source}")]
    Node {
        node: String,
        op: String,
        source: Box<Error>,
    },
}

impl Error {
    /// Whether the caller's input (model, tensor, option) caused the error, rather than dconv.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Error::Node { source, .. } => source.is_bad_input(),
            Error::BufferLength { .. } => false,
            _ => true,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
