//! The model runtime: plan a loaded [`Model`](crate::onnx::Model) once per set of input
//! shapes, then run it many times.
//!
//! ```
//! use dconv::runtime::{Policy, Session, SessionOptions};
//! use dconv::{Model, Tensor};
//!
//! // A tiny model: Conv 1 -> 2 channels (3x3, pad 1) + Relu; `Model::load` reads a file.
//! # let onnx_bytes = dconv::runtime::example_model(); // built in code (feature `testing`)
//! let model = Model::from_bytes(&onnx_bytes, None).unwrap();
//! let session = Session::new(&model, SessionOptions { threads: 1, policy: Policy::Auto, ..Default::default() }).unwrap();
//! let input = Tensor::from_f32(vec![1, 1, 4, 4], vec![1.0; 16]).unwrap();
//! let outputs = session.run(&[("x", input)]).unwrap();
//! let (name, y) = &outputs[0];
//! assert_eq!(name, "y");
//! assert_eq!(y.shape(), &[1, 2, 4, 4]);
//! // Filter 0 sums the 3x3 window (9 at the centre), filter 1 negates it (ReLU makes 0).
//! assert_eq!(y.as_f32().unwrap()[5], 9.0);
//! assert_eq!(y.as_f32().unwrap()[16 + 5], 0.0);
//! ```

mod analysis;
#[cfg(any(test, feature = "testing"))]
pub(crate) mod example;
mod fuse;
pub(crate) mod planner;
mod profile;
mod session;

pub use crate::plan::Policy;
pub use analysis::{LayerAnalysis, MethodTime, OnLayer};
#[cfg(any(test, feature = "testing"))]
pub use example::example_model;
pub use profile::{Profile, StepProfile};
pub use session::{Session, SessionOptions};
