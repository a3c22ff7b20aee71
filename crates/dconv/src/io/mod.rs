//! Reading tensors from the files users hand to dconv, and writing results back: `.npy`
//! tensors and photographs. Every file is untrusted: sizes are checked before allocating.

pub mod image;
pub mod npy;
