//! Sparse types with checked constructors: [`CsrMatrix`] (the lowered matrix, compressed by
//! rows) and [`Csoa`] (each non-zero activation of an NHWC tensor stored once, with its
//! position).

mod csoa;
mod csr;

pub use csoa::Csoa;
pub use csr::CsrMatrix;
