//! [`Profile`]: where the time of one run went, step by step, with what each convolution
//! saw (input and weight sparsity) and chose (its method). Only
//! [`Session::run_profiled`](super::Session::run_profiled) records one, so plain runs pay
//! nothing for it.

use crate::conv::Method;
use std::time::Duration;

/// One step of a run: a node of the model (a Conv with the BatchNormalization and ReLU
/// fused into it counts once) or a layout conversion the planner inserted.
#[derive(Debug, Clone, PartialEq)]
pub struct StepProfile {
    /// The node's name (or `#index` when it has none).
    pub name: String,
    /// The ONNX operator, or `Layout` for a conversion between NCHW and channels-last.
    pub op: String,
    /// The method a convolution ran with; `None` for other operators.
    pub method: Option<Method>,
    /// Fraction of zeros in the step's first input.
    pub input_sparsity: f64,
    /// Fraction of zero weights of a convolution; `None` for other operators.
    pub weight_sparsity: Option<f64>,
    /// Multiply-adds of the dense convolution; 0 for other operators.
    pub macs: u64,
    pub time: Duration,
}

/// Every step of one run, in execution order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    pub steps: Vec<StepProfile>,
    /// Time the run spent outside its steps counting the zeros of step inputs that no step
    /// had counted (for `input_sparsity`): the cost of profiling itself, which a plain run
    /// does not pay.
    pub counting: Duration,
}

impl Profile {
    /// The sum of the steps' times (the run's time without copying inputs and outputs).
    pub fn total(&self) -> Duration {
        self.steps.iter().map(|s| s.time).sum()
    }
}
