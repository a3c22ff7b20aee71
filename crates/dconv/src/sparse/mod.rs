//! Sparse types with checked constructors: [`CsrMatrix`] (the lowered matrix, compressed by
//! rows), [`Csoa`] (each non-zero activation of an NHWC tensor stored once, with its
//! position) and [`BlockSparseWeights`] (weights kept as their non-zero blocks of 16 output
//! channels).

mod blocks;
mod csoa;
mod csr;

pub use blocks::{BlockShape, BlockSparseWeights, BLOCK_WIDTH};
pub use csoa::Csoa;
pub use csr::CsrMatrix;
