//! The plan layer: what operators build at plan time and the runtime runs. Values (constants
//! or tensors known at run time) and their storage layouts, the steps that compute them, the
//! [`Kernel`](kernel::Kernel) trait and the copy kernels every operator shares, the convolution step with its
//! method choice, and the memory budget a plan must fit.
//!
//! Operators (`crate::ops`) import this layer and nothing above it; the runtime
//! (`crate::runtime`) walks a model's graph, asks the operators for steps and runs the plan.

pub(crate) mod budget;
pub(crate) mod builder;
pub(crate) mod conv_step;
pub(crate) mod copy;
pub(crate) mod kernel;
pub(crate) mod layout;
pub(crate) mod policy;

pub use policy::Policy;
