//! Weights packed as panels for the sparse-activation methods.

use super::select::WeightZeros;
use super::ConvSpec;
use crate::cache::CacheSizes;
use crate::kernels::aligned::CacheAligned;
use crate::limits::saturating_product;
use std::sync::Arc;

/// The weights of each group as `W^T` (K x M/G), cut into blocks of `16 * NB` output
/// channels. Each block is stored contiguously row by row (K rows, zero-padded to full
/// width), so a sparse row reads whole rows of one block, and the rows a block of k touches
/// sit together in cache. Row `k` is the lowered column `(r * S + s) * C/G + c`.
pub(crate) struct WeightPanels<const NB: usize> {
    rows: usize,
    blocks: usize,
    data: CacheAligned,
}

impl<const NB: usize> WeightPanels<NB> {
    pub const WIDTH: usize = 16 * NB;

    /// Packs `[M][C/G][R][S]` weights.
    pub fn pack(spec: &ConvSpec, weights: &[f32]) -> Self {
        let (cg, mg) = (spec.channels_per_group(), spec.filters_per_group());
        let [kr, ks] = spec.kernel;
        let rows = spec.lowered_cols();
        let blocks = mg.div_ceil(Self::WIDTH);
        let taps = kr * ks;
        let mut data = CacheAligned::zeroed(spec.groups * blocks * rows * Self::WIDTH);
        let panels = data.as_mut_slice();
        let filters: Vec<&[f32]> = weights.chunks_exact(cg * taps).collect();
        // Block by block, channel by channel: the taps of one channel of the block's filters
        // (a line of each) are read once, and each panel row is written whole, rather than
        // each filter scattering its weights over every row of the panel.
        for (gb, panel) in panels.chunks_exact_mut(rows * Self::WIDTH).enumerate() {
            let (g, block) = (gb / blocks, gb % blocks);
            let first = g * mg + block * Self::WIDTH;
            let block_filters = &filters[first..g * mg + mg.min((block + 1) * Self::WIDTH)];
            for c in 0..cg {
                for tap in 0..taps {
                    let row = &mut panel[(tap * cg + c) * Self::WIDTH..][..Self::WIDTH];
                    for (w, filter) in row.iter_mut().zip(block_filters) {
                        *w = filter[c * taps + tap];
                    }
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
        &self.data.as_slice()[(g * self.blocks + block) * self.rows * Self::WIDTH..]
            [..self.rows * Self::WIDTH]
    }

    /// Whether rows `rows` of a panel are all zero (a block of weights pruning emptied).
    pub fn is_zero(&self, g: usize, block: usize, rows: std::ops::Range<usize>) -> bool {
        self.panel(g, block)[rows.start * Self::WIDTH..rows.end * Self::WIDTH]
            .iter()
            .all(|&w| w == 0.0)
    }
}

/// The panels of one layer's weights, packed once for every method that reads them
/// (im2csr, lowered-csr and im2csoa pack exactly the same panels): a layer that prepares
/// several of them keeps one copy. One slot per panel width the kernels use.
#[derive(Default)]
pub(crate) struct SharedPanels {
    /// 8 blocks of 16 output channels: the AVX-512 kernels.
    pub wide: Option<Arc<WeightPanels<8>>>,
    /// 4 blocks: the AVX2, NEON and portable kernels.
    pub narrow: Option<Arc<WeightPanels<4>>>,
}

/// At most how many bytes the panels of `spec` take (saturating): each group's filters are
/// padded to whole blocks of the widest panel, 128 output channels, so a depthwise layer
/// grows a hundredfold. The same whatever the non-zeros: panels are dense.
pub(crate) fn prepared_bytes(spec: &ConvSpec, _nonzeros: usize, _zeros: WeightZeros) -> usize {
    const WIDEST_PANEL: usize = 128;
    let blocks = spec.filters_per_group().div_ceil(WIDEST_PANEL);
    saturating_product(&[spec.groups, blocks, spec.lowered_cols(), WIDEST_PANEL, 4])
}

/// The `prepare` of a method's table entry that multiplies by the shared panels: 8 blocks
/// of 16 output channels wide on AVX-512 and 4 elsewhere, packed once for every method
/// that reads them.
macro_rules! prepare_over_panels {
    ($method:ident) => {
        |spec, weights, epilogue, isa, shared| {
            use $crate::conv::panels::packed_once;
            Ok(match isa {
                $crate::kernels::Isa::Avx512 => Box::new($method::<8>::new(
                    *spec,
                    packed_once(&mut shared.wide, spec, weights),
                    epilogue,
                    isa,
                )) as Box<dyn $crate::conv::ConvKernel>,
                _ => Box::new($method::<4>::new(
                    *spec,
                    packed_once(&mut shared.narrow, spec, weights),
                    epilogue,
                    isa,
                )),
            })
        }
    };
}
pub(crate) use prepare_over_panels;

/// The panels in `slot`, packed from `weights` on the first call. `spec` and `weights` must
/// be the same on every call.
pub(crate) fn packed_once<const NB: usize>(
    slot: &mut Option<Arc<WeightPanels<NB>>>,
    spec: &ConvSpec,
    weights: &[f32],
) -> Arc<WeightPanels<NB>> {
    slot.get_or_insert_with(|| Arc::new(WeightPanels::pack(spec, weights)))
        .clone()
}

/// Rows of a panel that fit in L1 next to the outputs they update (two thirds of the L1d:
/// 32 KB of 48): a block of k this tall is reused by every row of a tile before the next
/// block is read.
pub(crate) fn l1_slab_rows(width: usize) -> usize {
    (CacheSizes::detect().l1d_share(2, 3) / (4 * width)).max(1)
}

/// Panel rows, of all `blocks` blocks, that stay in L2 while every tile of an image walks
/// them: the loaded slice of the weights is then read from memory once per image rather
/// than once per tile. Half of the L2, a whole number of L1 slabs, at least one.
pub(crate) fn l2_chunk_rows(width: usize, blocks: usize) -> usize {
    let slab = l1_slab_rows(width);
    let rows = CacheSizes::detect().l2_share(1, 2) / (4 * width * blocks) / slab * slab;
    rows.max(slab)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_packs_once_and_then_shares() {
        // 3 channels, 20 filters of 2 x 2: the 4-block panel (64 wide) holds all 20.
        let spec = ConvSpec::new(3, 4, 4, 20, [2, 2]);
        let weights: Vec<f32> = (0..spec.weight_len().unwrap()).map(|i| i as f32).collect();
        let mut shared = SharedPanels::default();
        let first = packed_once(&mut shared.narrow, &spec, &weights);
        // Other weights on a second call would be the caller's error; they show that the
        // slot is not packed again.
        let second = packed_once(&mut shared.narrow, &spec, &vec![0.0; weights.len()]);
        assert!(Arc::ptr_eq(&first, &second));
        assert!(shared.wide.is_none());
        // Row (tap 3, channel 2) holds, at column 17, filter 17's weight of that tap.
        let (c, tap, m) = (2, 3, 17);
        let row = tap * spec.channels_per_group() + c;
        assert_eq!(
            first.panel(0, 0)[row * 64 + m],
            (m * 12 + c * 4 + tap) as f32
        );
    }
}
