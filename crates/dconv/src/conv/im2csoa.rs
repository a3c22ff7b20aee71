//! im2CSOA: Direct Conversion of the input to Compressed Sparse Overlapped Activations, then
//! sparse activations x sparse weights.
//!
//! The input is compressed once: each non-zero activation is stored once, in its pixel's
//! list ([`Csoa`]); nothing is copied per receptive field. The multiply resolves the overlap:
//! for each output pixel and each kernel tap it reads the list of the input pixel under
//! that tap, and each activation `a` of channel `c` meets the weights of `(c, tap)` for a
//! block of output channels. Weights are kept as panels of blocks of output channels; a
//! block of weights that pruning left all zero is skipped, so the work is the
//! (non-zero activation, non-zero weight block) pairs that meet.

use super::panels::{l1_slab_rows, WeightPanels};
use super::tiles::{
    ensure_tiles, multiply_tasks, task_tiles, tile_rows, tiles_scratch, walk_bytes, Tile, TileSums,
};
use super::{ConvKernel, ConvSpec, Epilogue, Timing, Workspace};
use crate::kernels::sparse_row_panel::{accumulate_ranges, Entries, RowCursor};
use crate::kernels::Isa;
use crate::limits::saturating_product;
use crate::sparse::Csoa;
use rayon::prelude::*;
use std::mem::size_of;
use std::sync::Arc;
use std::time::Instant;

/// Marks a tap that falls into the padding.
const PADDING: u32 = u32::MAX;

pub(crate) struct Im2Csoa<const NB: usize> {
    spec: ConvSpec,
    panels: Arc<WeightPanels<NB>>,
    /// Channels per chunk of a tap: the panel rows of one chunk stay in L1.
    chunk: usize,
    /// Per (group, block, tap, chunk): whether its weights are all non-zero-free.
    zero_chunks: Vec<bool>,
    isa: Isa,
    epilogue: Epilogue,
}

impl<const NB: usize> Im2Csoa<NB> {
    pub fn new(
        spec: ConvSpec,
        panels: Arc<WeightPanels<NB>>,
        epilogue: Epilogue,
        isa: Isa,
    ) -> Self {
        let cg = spec.channels_per_group();
        let chunk = l1_slab_rows(WeightPanels::<NB>::WIDTH).min(cg);
        let taps = spec.kernel[0] * spec.kernel[1];
        let mut zero_chunks = Vec::new();
        for g in 0..spec.groups {
            for block in 0..panels.blocks() {
                for tap in 0..taps {
                    for c0 in (0..cg).step_by(chunk) {
                        let rows = tap * cg + c0..tap * cg + (c0 + chunk).min(cg);
                        zero_chunks.push(panels.is_zero(g, block, rows));
                    }
                }
            }
        }
        Im2Csoa {
            spec,
            panels,
            chunk,
            zero_chunks,
            isa,
            epilogue,
        }
    }

    /// Multiplies group `g` of one image from its CSOA into `out`, then applies the
    /// epilogue to the group's channels.
    ///
    /// Loops, outside in: tasks of tiles, in parallel ([`multiply_tasks`]); kernel taps (a
    /// tap's panel rows stay in L2 while every tile of the task uses them); tiles, each row
    /// reading the list of the pixel under the tap; chunks of channels; blocks of output
    /// channels, whose panel rows of the chunk stay in L1. Blocks come last so that the
    /// entries of a chunk, scattered over the pixel lists, are fetched once and re-read
    /// from L1 by every block.
    fn multiply(
        &self,
        tiles: &mut [CsoaTile],
        split: (usize, usize),
        csoa: &Csoa,
        g: usize,
        out: &mut [f32],
    ) -> usize {
        let s = &self.spec;
        let cg = s.channels_per_group();
        let taps = s.kernel[0] * s.kernel[1];
        let (width, blocks) = (WeightPanels::<NB>::WIDTH, self.panels.blocks());
        let chunks = cg.div_ceil(self.chunk);
        assert_eq!(
            csoa.chunk(),
            self.chunk,
            "the CSOA is cut into this method's chunks"
        );
        let (chans, vals) = csoa.entries();
        let epilogue = (g, &self.epilogue);
        multiply_tasks(s, epilogue, &self.panels, tiles, split, out, |task| {
            for tap in 0..taps {
                for t in task.iter_mut() {
                    let rows = t.pixels.len() / taps;
                    for chunk in 0..chunks {
                        // Each row walks the chunk's sub-list of the pixel under the tap,
                        // whose length the CSOA recorded.
                        t.walks.clear();
                        t.walks
                            .extend(t.pixels[tap * rows..(tap + 1) * rows].iter().map(|&pixel| {
                                if pixel == PADDING {
                                    RowCursor::default()
                                } else {
                                    let range = csoa.chunk_range(pixel as usize, g, chunk);
                                    RowCursor {
                                        next: range.start,
                                        end: range.end,
                                    }
                                }
                            }));
                        for block in 0..blocks {
                            let flag = ((g * blocks + block) * taps + tap) * chunks + chunk;
                            if self.zero_chunks[flag] {
                                continue;
                            }
                            accumulate_ranges::<NB>(
                                self.isa,
                                Entries::new(chans, vals),
                                &t.walks,
                                &self.panels.panel(g, block)[tap * cg * width..],
                                t.sums.block_mut(block),
                                width,
                            );
                        }
                    }
                }
            }
        })
    }
}

/// Per tile of output rows: the input pixel under each (tap, row), and the scratch of the
/// multiply.
#[derive(Default)]
pub(crate) struct CsoaTile {
    pixels: Vec<u32>,
    /// Each row's walk of the current tap and chunk of channels: the sub-list it reads.
    walks: Vec<RowCursor>,
    sums: TileSums,
}

impl Tile for CsoaTile {
    fn sums(&mut self) -> &mut TileSums {
        &mut self.sums
    }
}

impl CsoaTile {
    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        self.pixels.len() * size_of::<u32>()
            + self.walks.len() * size_of::<RowCursor>()
            + self.sums.bytes()
    }

    /// Records, tap by tap, the input pixel each output row of `rows` reads.
    fn locate(&mut self, spec: &ConvSpec, rows: std::ops::Range<usize>) {
        let ow = spec.out_width();
        let [kr, ks] = spec.kernel;
        self.pixels.clear();
        for r in 0..kr {
            for s in 0..ks {
                self.pixels.extend(rows.clone().map(|p| {
                    let iy = (p / ow * spec.stride[0] + r * spec.dilation[0])
                        .checked_sub(spec.padding.top);
                    let ix = (p % ow * spec.stride[1] + s * spec.dilation[1])
                        .checked_sub(spec.padding.left);
                    match (iy, ix) {
                        (Some(iy), Some(ix)) if iy < spec.height && ix < spec.width => {
                            (iy * spec.width + ix) as u32
                        }
                        _ => PADDING,
                    }
                }));
            }
        }
    }
}

impl<const NB: usize> ConvKernel for Im2Csoa<NB> {
    fn scratch_bytes(&self) -> usize {
        let s = &self.spec;
        let pixels = s.height * s.width;
        let chunks = s.channels_per_group().div_ceil(self.chunk);
        let lists = saturating_product(&[pixels, s.groups, chunks]);
        let csoa = Csoa::bytes_for(pixels, s.channels, lists);
        let (taps, blocks) = (s.kernel[0] * s.kernel[1], self.panels.blocks());
        let tiles = tiles_scratch::<CsoaTile>(s.out_pixels(), |rows| {
            let located = saturating_product(&[taps, rows, size_of::<u32>()]);
            located.saturating_add(walk_bytes(rows, blocks, WeightPanels::<NB>::WIDTH))
        });
        csoa.saturating_add(tiles)
    }

    fn run(&self, input: &[f32], output: &mut [f32], ws: &mut Workspace) -> Timing {
        let s = &self.spec;
        let image_len = s.height * s.width * s.channels;
        let rows = s.out_pixels();
        let (tile, per_task) = task_tiles(rows);
        let tiles = rows.div_ceil(tile);
        ensure_tiles(&mut ws.csoa_tiles, tiles);
        let mut timing = Timing::default();
        for (image, out) in input
            .chunks_exact(image_len)
            .zip(output.chunks_exact_mut(rows * s.filters))
        {
            let start = Instant::now();
            ws.csoa
                .fill(image, [s.height, s.width, s.channels], s.groups, self.chunk);
            let converted = Instant::now();
            timing.convert += converted - start;
            ws.csoa_tiles
                .par_iter_mut()
                .take(tiles)
                .enumerate()
                .for_each(|(t, csoa_tile)| {
                    csoa_tile.locate(s, tile_rows(t, tile, rows));
                });
            for g in 0..s.groups {
                let zeros = self.multiply(
                    &mut ws.csoa_tiles[..tiles],
                    (tile, per_task),
                    &ws.csoa,
                    g,
                    out,
                );
                timing.output_zeros = Some(timing.output_zeros.unwrap_or(0) + zeros);
            }
            timing.multiply += converted.elapsed();
        }
        timing
    }
}
