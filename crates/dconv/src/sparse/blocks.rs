//! Convolution weights whose zeros lie in whole blocks of consecutive output channels at one
//! (input channel, kernel tap), as block pruning leaves them, kept as only their non-zero
//! blocks.

use crate::error::{Error, Result};
use crate::kernels::masked_block_tile::BlockWeights;

/// The output channels per block of both methods' block forms (im2csoa's and sparse-weight's):
/// whole vectors of AVX-512, two of AVX2, four of NEON. The kernels take 8 and 4 as well, but
/// on AVX2 either method ran slower on blocks of 8 or 4 than on the same weights read as
/// blocks of 16 or as lists (BENCHMARKS.md, session 29).
pub const BLOCK_WIDTH: usize = 16;

/// The non-zero blocks of ONNX `[M][C/G][R][S]` weights, per (group, block of B output
/// channels, tap, word of 64 input channels): a mask of the channels whose block is not all
/// zero, and those blocks' B weights in channel order, each block a row of `values` (the
/// last block of a group zero-padded to B). Built only by [`pack`](Self::pack); the kernel's
/// view of each block checks every mask against the rows it names.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSparseWeights {
    shape: BlockShape,
    masks: Vec<u64>,
    /// Per entry, the row of its first non-zero block.
    starts: Vec<u32>,
    values: Vec<f32>,
}

/// The shape of a layer's weights (groups, and per group output channels, input channels
/// and kernel taps) and the width of their blocks of output channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockShape {
    pub groups: usize,
    pub filters: usize,
    pub channels: usize,
    pub taps: usize,
    pub block: usize,
}

impl BlockShape {
    fn blocks(&self) -> usize {
        self.filters.div_ceil(self.block)
    }

    fn words(&self) -> usize {
        self.channels.div_ceil(64)
    }

    /// The weight of filter `m` (within group `g`), channel `c`, tap `t` in ONNX's layout.
    fn at(&self, g: usize, m: usize, c: usize, t: usize) -> usize {
        ((g * self.filters + m) * self.channels + c) * self.taps + t
    }

    /// Whether any weight of block `b` of group `g` at channel `c`, tap `t` is not zero.
    fn is_live(&self, weights: &[f32], (g, b, c, t): (usize, usize, usize, usize)) -> bool {
        let filters = b * self.block..((b + 1) * self.block).min(self.filters);
        filters
            .into_iter()
            .any(|m| weights[self.at(g, m, c, t)] != 0.0)
    }

    /// The fraction of `weights`' blocks (the last of each group shorter) that are not all
    /// zero.
    pub fn block_density(&self, weights: &[f32]) -> f64 {
        let mut live = 0usize;
        for g in 0..self.groups {
            for b in 0..self.blocks() {
                for c in 0..self.channels {
                    for t in 0..self.taps {
                        live += usize::from(self.is_live(weights, (g, b, c, t)));
                    }
                }
            }
        }
        let count = self.groups * self.blocks() * self.channels * self.taps;
        live as f64 / count.max(1) as f64
    }
}

impl BlockSparseWeights {
    /// Keeps the non-zero blocks of `weights`, laid out as `shape` says. Fails when the
    /// weights' length is not the shape's, or there are too many blocks to index in 32 bits.
    pub fn pack(shape: BlockShape, weights: &[f32]) -> Result<Self> {
        let BlockShape {
            groups,
            filters,
            channels,
            taps,
            block,
        } = shape;
        let len = [groups, filters, channels, taps]
            .into_iter()
            .try_fold(1usize, usize::checked_mul);
        if len != Some(weights.len()) || channels == 0 || block == 0 {
            return Err(Error::InvalidArgument(format!(
                "{} weights for {groups} groups of {filters} filters over {channels} channels \
                 and {taps} taps",
                weights.len()
            )));
        }
        let (mut masks, mut starts, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for g in 0..groups {
            for b in 0..shape.blocks() {
                for t in 0..taps {
                    for word in 0..shape.words() {
                        let row = u32::try_from(values.len() / block)
                            .map_err(|_| Error::Overflow("blocks of weights"))?;
                        starts.push(row);
                        let mut mask = 0u64;
                        for c in 64 * word..(64 * word + 64).min(channels) {
                            if !shape.is_live(weights, (g, b, c, t)) {
                                continue;
                            }
                            mask |= 1 << (c - 64 * word);
                            values.extend((b * block..(b + 1) * block).map(|m| {
                                if m < filters {
                                    weights[shape.at(g, m, c, t)]
                                } else {
                                    0.0
                                }
                            }));
                        }
                        masks.push(mask);
                    }
                }
            }
        }
        Ok(BlockSparseWeights {
            shape,
            masks,
            starts,
            values,
        })
    }

    /// Blocks of output channels per group.
    pub fn blocks(&self) -> usize {
        self.shape.blocks()
    }

    /// Block `b` of group `g`, over every tap and word, as the kernel reads it (which checks
    /// it). Panics unless the blocks are `B` wide.
    pub(crate) fn block<const B: usize>(&self, g: usize, b: usize) -> BlockWeights<'_, B> {
        assert_eq!(self.shape.block, B, "blocks of {B} output channels");
        let per_block = self.shape.taps * self.shape.words();
        let at = (g * self.blocks() + b) * per_block;
        BlockWeights::new(
            &self.masks[at..at + per_block],
            &self.starts[at..at + per_block],
            &self.values,
            self.shape.channels,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2 groups of 20 filters (a block and a short one) over 70 channels (two words) and 2
    /// taps; the weights of block 1 of group 1 at channel 65, tap 1, and of block 0 of group
    /// 0 at channel 3, tap 0, are the only non-zeros.
    #[test]
    fn packs_only_the_live_blocks_and_finds_them_by_mask() {
        let shape = BlockShape {
            groups: 2,
            filters: 20,
            channels: 70,
            taps: 2,
            block: 16,
        };
        let mut weights = vec![0.0; 2 * 20 * 70 * 2];
        weights[shape.at(1, 17, 65, 1)] = 2.0;
        weights[shape.at(0, 5, 3, 0)] = 3.0;
        let packed = BlockSparseWeights::pack(shape, &weights).unwrap();
        assert_eq!(packed.values.len(), 2 * 16);
        assert!((shape.block_density(&weights) - 2.0 / (2 * 2 * 70 * 2) as f64).abs() < 1e-12);
        // Block 1 of group 1 starts at entry (1 * 2 + 1) * (2 taps * 2 words).
        let (masks, starts) = (&packed.masks[12..16], &packed.starts[12..16]);
        let live: Vec<_> = masks.iter().map(|m| m.count_ones()).collect();
        assert_eq!(live, [0, 0, 0, 1], "tap 1, word 1");
        assert_eq!(masks[3], 1 << 1);
        let row = starts[3] as usize;
        assert_eq!(packed.values[row * 16 + 1], 2.0, "filter 17 is lane 1");
        assert_eq!(packed.masks[0], 1 << 3);
        assert!(BlockSparseWeights::pack(shape, &weights[1..]).is_err());
    }
}
