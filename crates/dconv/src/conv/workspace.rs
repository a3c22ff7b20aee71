//! The scratch the methods run in, and how much of it they fill.

use super::{im2csoa, im2csr};
use crate::sparse::Csoa;
use std::mem::size_of;

/// Scratch buffers a method needs while it runs, owned by the caller and reused across runs
/// and layers: they grow to the largest need and are never shrunk.
#[derive(Default)]
pub struct Workspace {
    /// The dense lowered matrix (im2col) of one image and group; a transposed convolution's
    /// columns.
    pub(crate) lowered: Vec<f32>,
    /// The current image's non-zeros, pixel by pixel.
    pub(crate) csoa: Csoa,
    /// One CSR block of lowered rows per tile of output rows.
    pub(crate) csr_tiles: Vec<im2csr::CsrTile>,
    /// Per tile of output rows, the dense lowered rows (lowered-csr).
    pub(crate) lowered_tiles: Vec<Vec<f32>>,
    /// Per tile of output rows, where im2CSOA reads its pixel lists.
    pub(crate) csoa_tiles: Vec<im2csoa::CsoaTile>,
    /// Zero-padded input planes of one band of output rows, row by row (sparse-weight).
    pub(crate) planes: Vec<f32>,
    /// A band's sums of every tile and filter, then one input window per thread
    /// (sparse-weight).
    pub(crate) partials: Vec<f32>,
}

impl Workspace {
    /// Bytes the buffers hold (their lengths, not what the allocator reserved beyond).
    pub fn bytes(&self) -> usize {
        let floats = |v: &Vec<f32>| v.len() * size_of::<f32>();
        floats(&self.lowered)
            + self.csoa.bytes()
            + tiles_bytes(&self.csr_tiles, im2csr::CsrTile::bytes)
            + tiles_bytes(&self.lowered_tiles, floats)
            + tiles_bytes(&self.csoa_tiles, im2csoa::CsoaTile::bytes)
            + floats(&self.planes)
            + floats(&self.partials)
    }
}

/// Bytes of a vector of tiles: their structs and what each holds.
fn tiles_bytes<T>(tiles: &[T], bytes: impl Fn(&T) -> usize) -> usize {
    std::mem::size_of_val(tiles) + tiles.iter().map(bytes).sum::<usize>()
}
