//! dconv: convolution on CPUs that turns the zeros a network already has into speed.
//!
//! The heart is [`conv`]: one [`conv::ConvSpec`] describes a 2-D (or 1-D, as height 1)
//! convolution, and [`conv::Conv::prepare`] packs its weights once for one of six
//! [`conv::Method`]s — the naive `reference` oracle, the conventional `dense` im2col + GEMM,
//! the conventional sparse `lowered-csr`, the two Direct Conversion methods `im2csr` and
//! `im2csoa`, and the direct `sparse-weight` convolution.
//!
//! Activations are channels-last (NHWC) inside the engine; weights are given in ONNX's
//! `[M][C/G][R][S]` layout and repacked by each method.
//!
//! ```
//! use dconv::conv::{Conv, ConvSpec, Method, Workspace};
//!
//! let spec = ConvSpec::new(8, 10, 10, 16, [3, 3]).with_padding([1, 1, 1, 1]);
//! let weights = vec![0.5f32; spec.weight_len().unwrap()];
//! let conv = Conv::prepare(&spec, &weights, None, Method::Im2Csr).unwrap();
//! let input = vec![1.0f32; spec.input_len().unwrap()];
//! let mut output = vec![0.0f32; spec.output_len().unwrap()];
//! conv.run(&input, &mut output, &mut Workspace::default()).unwrap();
//! // The centre pixel sees all 3 x 3 x 8 inputs: 72 x 0.5.
//! assert_eq!(output[(5 * 10 + 5) * 16], 36.0);
//! ```

// `unsafe` lives in the kernels alone (each block with its SAFETY note); the compiler keeps
// it there.
#![deny(unsafe_code)]

pub mod cache;
pub mod conv;
pub mod error;
pub mod io;
pub mod kernels;
pub mod limits;
#[cfg(any(test, feature = "testing"))]
pub mod models;
pub mod onnx;
mod ops;
mod plan;
pub mod prune;
pub mod runtime;
pub mod sparse;
#[cfg(any(test, feature = "testing"))]
pub mod synth;
pub mod tensor;
pub mod timing;

pub use error::{Error, Result};
pub use onnx::Model;
pub use runtime::{Policy, Session, SessionOptions};
pub use tensor::{AsTensorView, Tensor, TensorData, TensorView};
