//! Weights packed as panels for the sparse-activation methods.

use super::ConvSpec;
use crate::kernels::{sparse_row_panel, Isa};

/// The weights of each group as `W^T` (K x M/G), cut into blocks of `16 * NB` output
/// channels. Each block is stored contiguously row by row (K rows, zero-padded to full
/// width), so a sparse row reads whole rows of one block, and the rows a block of k touches
/// sit together in cache. Row `k` is the lowered column `(r * S + s) * C/G + c`.
pub(crate) struct WeightPanels<const NB: usize> {
    rows: usize,
    blocks: usize,
    data: Vec<f32>,
}

impl<const NB: usize> WeightPanels<NB> {
    pub const WIDTH: usize = 16 * NB;

    /// Packs `[M][C/G][R][S]` weights.
    pub fn pack(spec: &ConvSpec, weights: &[f32]) -> Self {
        let (cg, mg) = (spec.channels_per_group(), spec.filters_per_group());
        let [kr, ks] = spec.kernel;
        let rows = spec.lowered_cols();
        let blocks = mg.div_ceil(Self::WIDTH);
        let mut data = vec![0.0; spec.groups * blocks * rows * Self::WIDTH];
        for (m, filter) in weights.chunks_exact(cg * kr * ks).enumerate() {
            let (g, within) = (m / mg, m % mg);
            let (block, lane) = (within / Self::WIDTH, within % Self::WIDTH);
            let panel =
                &mut data[(g * blocks + block) * rows * Self::WIDTH..][..rows * Self::WIDTH];
            for c in 0..cg {
                for tap in 0..kr * ks {
                    panel[((tap * cg) + c) * Self::WIDTH + lane] = filter[c * kr * ks + tap];
                }
            }
        }
        WeightPanels { rows, blocks, data }
    }

    /// Blocks of output channels per group.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// The panel of block `block` of group `g`: `K` rows of `WIDTH` floats.
    pub fn panel(&self, g: usize, block: usize) -> &[f32] {
        &self.data[(g * self.blocks + block) * self.rows * Self::WIDTH..][..self.rows * Self::WIDTH]
    }

    /// Whether rows `rows` of a panel are all zero (a block of weights pruning emptied).
    pub fn is_zero(&self, g: usize, block: usize, rows: std::ops::Range<usize>) -> bool {
        self.panel(g, block)[rows.start * Self::WIDTH..rows.end * Self::WIDTH]
            .iter()
            .all(|&w| w == 0.0)
    }
}

/// Rows of a panel that fit in L1 next to the outputs they update: a block of k this tall
/// is reused by every row of a tile before the next block is read.
pub(crate) const fn l1_slab_rows(width: usize) -> usize {
    const SLAB_BYTES: usize = 32 << 10;
    let rows = SLAB_BYTES / (4 * width);
    if rows == 0 {
        1
    } else {
        rows
    }
}

/// Adds `Σ v · panel[c]` over the entries `(cols, vals)` to `dst`, the outputs of one block
/// (`16 * NB` lanes, or fewer for the last block of a group, which go through a spill).
///
/// # Safety
/// As [`sparse_row_panel::accumulate`]: every column indexes a whole row of `panel`, and
/// `isa` is supported.
#[inline]
pub(crate) unsafe fn accumulate_into<const NB: usize>(
    isa: Isa,
    cols: &[u32],
    vals: &[f32],
    panel: &[f32],
    dst: &mut [f32],
) {
    if dst.len() == 16 * NB {
        // SAFETY: forwarded from the caller.
        unsafe { sparse_row_panel::accumulate::<NB>(isa, cols, vals, panel, dst) };
    } else {
        let mut spill = [0.0f32; 16 * 8];
        spill[..dst.len()].copy_from_slice(dst);
        // SAFETY: forwarded from the caller; `spill` holds at least 16 * NB floats.
        unsafe { sparse_row_panel::accumulate::<NB>(isa, cols, vals, panel, &mut spill) };
        dst.copy_from_slice(&spill[..dst.len()]);
    }
}
