//! im2CSOA on weights pruned in blocks of 16 output channels: each non-zero activation meets
//! only the non-zero blocks of its channel's taps.
//!
//! The input is converted once per image into masks of its non-zeros, 64 channels to a word
//! per pixel: like the CSOA, each activation is recorded once, and the overlap of receptive
//! fields is resolved at the multiply, which reads the pixel under each tap. The weights
//! keep only their non-zero blocks ([`BlockSparseWeights`]). Output pixels go in tiles of
//! [`TILE`]; for each block of output channels, a tile's sums stay in registers over every
//! tap while the kernel ([`MaskedBlockTile`]) walks the channels where the block's mask and
//! the OR of the tile's pixels' masks meet. So the work is the (non-zero activation,
//! non-zero block) pairs, rounded up to whole tiles of pixels: ReLU leaves zeros in patches,
//! and neighbouring pixels share most of theirs.
//!
//! Blocks go outside the tiles: one block's weight rows (a few tens of KB at 70 % zero
//! blocks) stream in order from L2 for every tile of a task, and its sums never leave
//! registers until the tile is done. BENCHMARKS.md (session 26) has the figures.

use super::super::run_loop::over_images;
use super::super::workspace::Scratch;
use super::super::{ConvKernel, ConvSpec, Epilogue, ScratchBytes, Timing, Workspace};
use crate::error::Result;
use crate::kernels::masked_block_tile::{MaskedBlockTile, TileInputs, TileOutput, PADDING, TILE};
use crate::kernels::Isa;
use crate::limits::saturating_product;
use crate::sparse::{BlockShape, BlockSparseWeights, BLOCK_WIDTH};
use rayon::prelude::*;
use std::mem::size_of;

/// The most blocks of [`BLOCK_WIDTH`] not all zero, as a fraction of all, where im2csoa takes
/// its block form. On 512 -> 512 3x3 at 30 x 30 with 80 % zero inputs it beat the panels with
/// 50 % of the blocks zero (3.38x against 2.97x dense's speed; 2.13x against 1.53x at 50 %
/// zero inputs), tied with 49 % and lost with 36 % (weights pruned in blocks of 8 at 70 and 60
/// %; BENCHMARKS.md, session 29).
///
/// The blocks are 16 wide whatever width the weights were pruned in. Narrower forms, whose
/// kernels exist, lost to reading the same weights as blocks of 16 wherever measured on AVX2:
/// weights pruned in blocks of 8 at 76-90 % zero ran 0.71-0.91x as fast read as blocks of 8
/// as read as blocks of 16; those pruned in blocks of 4 at 80-95 %, 0.45-0.59x as fast read
/// as blocks of 4 (AVX2's half vectors). Each non-zero block costs the same bookkeeping
/// (finding its row, broadcasting the tile's inputs) whatever its width, and the narrower
/// blocks are not enough fewer to pay for it.
const MOST_BLOCKS: f64 = 0.5;

/// Whether im2csoa takes its block form for weights of which `blocks_of_16` of the blocks
/// are not all zero.
pub(crate) fn takes_blocks(blocks_of_16: f64) -> bool {
    blocks_of_16 <= MOST_BLOCKS
}

/// The fraction of `weights`' blocks of [`BLOCK_WIDTH`] output channels (at one input channel
/// and tap) not all zero.
pub(crate) fn block_density(spec: &ConvSpec, weights: &[f32]) -> f64 {
    shape(spec, BLOCK_WIDTH).block_density(weights)
}

fn shape(spec: &ConvSpec, block: usize) -> BlockShape {
    BlockShape {
        groups: spec.groups,
        filters: spec.filters_per_group(),
        channels: spec.channels_per_group(),
        taps: spec.kernel[0] * spec.kernel[1],
        block,
    }
}

/// Prepares the block form.
pub(crate) fn prepare(
    spec: &ConvSpec,
    weights: &[f32],
    epilogue: Epilogue,
    isa: Isa,
) -> Result<Box<dyn ConvKernel>> {
    Ok(Box::new(Im2CsoaBlocks::<BLOCK_WIDTH>::new(
        *spec, weights, epilogue, isa,
    )?))
}

struct Im2CsoaBlocks<const B: usize> {
    spec: ConvSpec,
    weights: BlockSparseWeights,
    kernel: MaskedBlockTile<B>,
    epilogue: Epilogue,
}

impl<const B: usize> Im2CsoaBlocks<B> {
    fn new(spec: ConvSpec, weights: &[f32], epilogue: Epilogue, isa: Isa) -> Result<Self> {
        Ok(Im2CsoaBlocks {
            spec,
            weights: BlockSparseWeights::pack(shape(&spec, B), weights)?,
            kernel: MaskedBlockTile::for_isa(isa),
            epilogue,
        })
    }

    fn words(&self) -> usize {
        self.spec.channels_per_group().div_ceil(64)
    }

    fn taps(&self) -> usize {
        self.spec.kernel[0] * self.spec.kernel[1]
    }
}

/// What a run keeps between images and layers: each input pixel's masks (every group's
/// words), the input pixel under each (tile, tap, row), each (tile, tap, word)'s union of
/// masks for the group at hand, and a group's channels of zeros for taps in the padding.
#[derive(Default)]
pub(crate) struct MaskScratch {
    masks: Vec<u64>,
    pixels: Vec<u32>,
    unions: Vec<u64>,
    zeros: Vec<f32>,
}

impl Scratch for MaskScratch {
    fn bytes(&self) -> usize {
        (self.masks.len() + self.unions.len()) * size_of::<u64>()
            + self.pixels.len() * size_of::<u32>()
            + self.zeros.len() * size_of::<f32>()
    }
}

impl MaskScratch {
    /// Sizes every buffer for `spec` (`words` per group and pixel) and records the input
    /// pixel under each tap of each tile's rows.
    fn begin(&mut self, spec: &ConvSpec, words: usize) {
        let taps = spec.kernel[0] * spec.kernel[1];
        let tiles = spec.out_pixels().div_ceil(TILE);
        let pixels = spec.height * spec.width;
        self.masks.resize(pixels * spec.groups * words, 0);
        self.unions.resize(tiles * taps * words, 0);
        self.zeros.clear();
        self.zeros.resize(spec.channels_per_group(), 0.0);
        self.pixels.clear();
        let (ow, p_all) = (spec.out_width(), spec.out_pixels());
        for tile in 0..tiles {
            for r in 0..spec.kernel[0] {
                for s in 0..spec.kernel[1] {
                    self.pixels.extend((0..TILE).map(|i| {
                        let p = tile * TILE + i;
                        if p >= p_all {
                            return PADDING;
                        }
                        match (spec.input_row(p / ow, r), spec.input_col(p % ow, s)) {
                            (Some(iy), Some(ix)) => (iy * spec.width + ix) as u32,
                            _ => PADDING,
                        }
                    }));
                }
            }
        }
    }
}

impl<const B: usize> ConvKernel for Im2CsoaBlocks<B> {
    fn scratch(&self) -> ScratchBytes {
        let s = &self.spec;
        let (taps, words) = (self.taps(), self.words());
        let tiles = s.out_pixels().div_ceil(TILE);
        let masks = saturating_product(&[s.height, s.width, s.groups, words, 8]);
        let unions = saturating_product(&[tiles, taps, words, 8]);
        let pixels = saturating_product(&[tiles, taps, TILE, 4]);
        let zeros = s.channels_per_group().saturating_mul(4);
        ScratchBytes {
            floats: 0,
            kept: [masks, unions, pixels, zeros]
                .into_iter()
                .fold(0, usize::saturating_add),
        }
    }

    fn run(
        &self,
        input: &[f32],
        (output, pitch): (&mut [f32], usize),
        residual: Option<&[f32]>,
        ws: &mut Workspace,
    ) -> Timing {
        let epilogue = self.epilogue.adding(residual, output);
        let s = &self.spec;
        let (taps, words) = (self.taps(), self.words());
        let (cg, mg) = (s.channels_per_group(), s.filters_per_group());
        let tiles = s.out_pixels().div_ceil(TILE);
        // On several threads, two tasks per thread where each still has a few tiles, so that
        // a thread slowed by another process hands work to the others; every task walks all
        // the weights, so one thread takes one task.
        let threads = rayon::current_num_threads().max(1);
        let tasks = if threads > 1 && tiles >= 16 * threads {
            2 * threads
        } else {
            threads
        };
        let per_task = tiles.div_ceil(tasks).max(1);
        let scratch = ws.kept::<MaskScratch>();
        scratch.begin(s, words);
        let MaskScratch {
            masks,
            pixels,
            unions,
            zeros,
        } = scratch;
        let kernel = &self.kernel;
        over_images(s, (input, (output, pitch)), |image, out, clock| {
            clock.convert(|| {
                let per_pixel = s.groups * words;
                masks
                    .par_chunks_mut(per_pixel)
                    .zip(image.par_chunks(s.channels))
                    .for_each(|(masks, pixel)| {
                        for (masks, channels) in masks.chunks_mut(words).zip(pixel.chunks(cg)) {
                            kernel.nonzero_masks(channels, masks);
                        }
                    })
            });
            for g in 0..s.groups {
                let zero_count = clock.multiply(|| {
                    out.par_chunks_mut(per_task * TILE * pitch)
                        .zip(unions.par_chunks_mut(per_task * taps * words))
                        .zip(pixels.par_chunks(per_task * taps * TILE))
                        .map(|((out, unions), pixels)| {
                            // The OR of each tile's pixels' masks, per (tap, word).
                            for (unions, pixels) in
                                unions.chunks_mut(words).zip(pixels.chunks(TILE))
                            {
                                unions.fill(0);
                                for &p in pixels.iter().filter(|&&p| p != PADDING) {
                                    let at = (p as usize * s.groups + g) * words;
                                    for (u, m) in unions.iter_mut().zip(&masks[at..at + words]) {
                                        *u |= m;
                                    }
                                }
                            }
                            for b in 0..self.weights.blocks() {
                                let weights = self.weights.block::<B>(g, b);
                                let first = g * mg + b * B;
                                let width = B.min(mg - b * B);
                                for ((out, unions), pixels) in out
                                    .chunks_mut(TILE * pitch)
                                    .zip(unions.chunks(taps * words))
                                    .zip(pixels.chunks(taps * TILE))
                                {
                                    let inputs = TileInputs {
                                        input: image,
                                        zeros,
                                        pixel_len: s.channels,
                                        first: g * cg,
                                        pixels,
                                        unions,
                                    };
                                    let rows = out.len().div_ceil(pitch);
                                    let output = TileOutput {
                                        out: &mut out[first..],
                                        rows,
                                        pitch,
                                        width,
                                    };
                                    kernel.multiply(&inputs, &weights, output);
                                }
                            }
                            epilogue.apply_rows(&mut out[g * mg..], pitch, mg, g * mg)
                        })
                        .sum::<usize>()
                });
                clock.count_zeros(zero_count);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::WeightBlocks;
    use crate::synth::{block_sparse_weights, Rng};

    /// The block form is taken where half or more of the blocks of 16 are zero, whatever
    /// width the weights were pruned in: at 70 % zero blocks of 16; at 80 % zero blocks of 8
    /// (64 % of the blocks of 16 zero too) and 90 % zero blocks of 4 (66 %); not at 70 % zero
    /// blocks of 4 (24 %) nor on weights zeroed element by element.
    #[test]
    fn takes_blocks_where_half_the_blocks_of_16_are_zero() {
        let spec = ConvSpec::new(64, 5, 5, 64, [3, 3]);
        let filter_len = 64 * 9;
        let takes = |block, sparsity| {
            let blocks = WeightBlocks::new(64, 1, filter_len, block).unwrap();
            let weights = block_sparse_weights(&blocks, sparsity, &mut Rng::new(1));
            takes_blocks(block_density(&spec, &weights))
        };
        assert!(takes(16, 0.7));
        assert!(takes(8, 0.8));
        assert!(takes(4, 0.9));
        assert!(!takes(4, 0.7));
        assert!(!takes(1, 0.9));
    }
}
