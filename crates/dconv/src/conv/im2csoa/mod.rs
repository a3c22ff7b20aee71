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
//!
//! Weights pruned in blocks of output channels take another form ([`blocks`]), chosen when
//! the layer is prepared: with panels of 64 or 128 channels, a non-zero activation meets
//! every weight of its panel rows, however many of their blocks are zero.

mod blocks;

use super::im2csr::{direct_conversion_terms, direct_conversion_values};
use super::method::{MethodEntry, Prepare, Skips};
use super::panels::{self, prepare_over_panels};
use super::panels::{l1_slab_rows, SharedPanels, WeightPanels};
use super::run_loop::over_groups;
use super::select::{LayerSize, WeightZeros, MAX_TERMS};
use super::tiles::{
    ensure_tiles, multiply_tasks, task_tiles, tile_rows, tiles_scratch, walk_bytes, Tile, TileSums,
};
use super::workspace::Scratch;
use super::{ConvKernel, ConvSpec, Epilogue, RunEpilogue, ScratchBytes, Timing, Workspace};
use crate::cache::CacheSizes;
use crate::error::Result;
use crate::kernels::sparse_row_panel::{Entries, RowCursor, SparseRowPanel};
use crate::kernels::Isa;
use crate::limits::saturating_product;
use crate::sparse::Csoa;
use rayon::prelude::*;
use std::mem::size_of;
use std::sync::Arc;

/// Marks a tap that falls into the padding.
const PADDING: u32 = u32::MAX;

/// im2csoa's place in the method table. Its cost: fixed + input · |X| + pixel_tap · P·R·S +
/// nz_input · d·|X| (non-zeros stored) + nz_mac · d·PMACs + nz_mac_squared · d²·PMACs.
pub(super) const ENTRY: MethodEntry = MethodEntry {
    name: "im2csoa",
    skips: Skips {
        input_zeros: true,
        weight_zeros: true,
    },
    terms: &direct_conversion_terms("nz_input"),
    term_values,
    prepared_bytes: panels::prepared_bytes,
    reads_panels: true,
    prepare,
};

/// The block form where the weights' zeros lie in blocks of 16 output channels, else panels.
fn prepare(
    spec: &ConvSpec,
    weights: &[f32],
    epilogue: Epilogue,
    isa: Isa,
    shared: &mut SharedPanels,
) -> Result<Box<dyn ConvKernel>> {
    if blocks::takes_blocks(blocks::block_density(spec, weights)) {
        return blocks::prepare(spec, weights, epilogue, isa);
    }
    let panels: Prepare = prepare_over_panels!(Im2Csoa);
    panels(spec, weights, epilogue, isa, shared)
}

pub(crate) use blocks::block_density;

/// The work of im2csoa's terms. In the block form ([`blocks`]), the multiply-adds are those of
/// the non-zero blocks that meet a tile with some non-zero activation: the tile's pixels
/// share most of their zeros, and a fit to ReLU-like inputs put the fraction of (tile, tap,
/// channel) holding some at about d·(2 - d), as if each tile were two independent pixels.
/// Each such multiply-add costs about [`BLOCK_MAC_COST`] of one against a panel.
fn term_values(s: &LayerSize, d: f64, w: WeightZeros) -> [f64; MAX_TERMS] {
    let mut values = direct_conversion_values(s, d, d * s.input);
    if blocks::takes_blocks(w.blocks_of_16) {
        let live = d * (2.0 - d) * w.blocks_of_16;
        values[4] = BLOCK_MAC_COST * live * s.macs;
        values[5] = 0.0;
    }
    values
}

/// The cost of a multiply-add of the block form in units of the panel form's (measured on 512
/// -> 512 3x3 at 30 x 30, 80 % zero inputs and 70 % zero blocks: BENCHMARKS.md, session 26).
const BLOCK_MAC_COST: f64 = 1.2;

pub(crate) struct Im2Csoa<const NB: usize> {
    spec: ConvSpec,
    panels: Arc<WeightPanels<NB>>,
    /// Channels per chunk of a tap: the panel rows of one chunk stay in L1.
    chunk: usize,
    /// Per (group, block, tap, chunk): whether its weights are all zero.
    zero_chunks: Vec<bool>,
    kernel: SparseRowPanel<NB>,
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
            kernel: SparseRowPanel::for_isa(isa),
            epilogue,
        }
    }

    /// Multiplies group `g` of one image from its CSOA into `out`, then applies the
    /// epilogue to the group's channels.
    ///
    /// Loops, outside in: tasks of tiles, in parallel ([`multiply_tasks`]); then one of two
    /// orders ([`blocks_go_outside`]), ending in chunks of channels whose panel rows stay in L1
    /// while every row of a tile walks the chunk's sub-list of the pixel under the tap.
    fn multiply(
        &self,
        tiles: &mut [CsoaTile],
        split: (usize, usize),
        csoa: &Csoa,
        (g, epilogue): (usize, RunEpilogue),
        out: (&mut [f32], usize),
    ) -> usize {
        let s = &self.spec;
        let taps = s.kernel[0] * s.kernel[1];
        let (blocks, chunks) = (self.panels.blocks(), self.chunks());
        assert_eq!(
            csoa.chunk(),
            self.chunk,
            "the CSOA is cut into this method's chunks"
        );
        let task_rows = (split.0 * split.1).min(s.out_pixels());
        let blocks_outside = blocks_go_outside(
            (task_rows, s.out_pixels()),
            (blocks, WeightPanels::<NB>::WIDTH),
            s.channels_per_group(),
            csoa.entries().0.len(),
            &CacheSizes::detect(),
        );
        multiply_tasks(s, (g, epilogue), &self.panels, tiles, split, out, |task| {
            if blocks_outside {
                for block in 0..blocks {
                    for tap in 0..taps {
                        for t in task.iter_mut() {
                            for chunk in 0..chunks {
                                if !self.is_zero(g, block, tap, chunk) {
                                    t.walk(csoa, g, tap, chunk);
                                    self.accumulate(t, csoa, g, block, tap);
                                }
                            }
                        }
                    }
                }
            } else {
                for tap in 0..taps {
                    for t in task.iter_mut() {
                        for chunk in 0..chunks {
                            t.walk(csoa, g, tap, chunk);
                            for block in 0..blocks {
                                if !self.is_zero(g, block, tap, chunk) {
                                    self.accumulate(t, csoa, g, block, tap);
                                }
                            }
                        }
                    }
                }
            }
        })
    }

    /// Chunks of channels per group.
    fn chunks(&self) -> usize {
        self.spec.channels_per_group().div_ceil(self.chunk)
    }

    /// Whether pruning left the weights of (group, block, tap, chunk) all zero.
    fn is_zero(&self, g: usize, block: usize, tap: usize, chunk: usize) -> bool {
        let taps = self.spec.kernel[0] * self.spec.kernel[1];
        let at = ((g * self.panels.blocks() + block) * taps + tap) * self.chunks() + chunk;
        self.zero_chunks[at]
    }

    /// Adds the walks `t` holds, of kernel tap `tap`, times block `block` of group `g`'s
    /// panel to the tile's sums.
    fn accumulate(&self, t: &mut CsoaTile, csoa: &Csoa, g: usize, block: usize, tap: usize) {
        let (chans, vals) = csoa.entries();
        let (cg, width) = (self.spec.channels_per_group(), WeightPanels::<NB>::WIDTH);
        self.kernel.accumulate_ranges(
            Entries::new(chans, vals),
            &t.walks,
            &self.panels.panel(g, block)[tap * cg * width..],
            t.sums.block_mut(block),
            width,
        );
    }
}

/// Whether im2CSOA's multiply takes blocks of output channels outside its taps, for a task
/// of `task_rows` of the image's `rows` output rows, with `blocks` blocks of `width`
/// channels and `panel_rows` panel rows per tap, over a CSOA of `entries` entries: the
/// loop order is chosen per image from the sizes at hand.
///
/// Taps outside (taps, tiles, chunks, blocks): a tap's panel rows, of every block, stay in
/// L2 while every tile uses them, and a chunk's entries are fetched once and re-read from
/// L1 by every block; but each tap walks the sums of all the task's rows and blocks.
/// Blocks outside (blocks, taps, tiles, chunks): the sums of one block of output channels
/// stay in L2 across all taps, beside the entries and the block's share of a tap's panel
/// rows, at the price of reading the entries from L2 once per block. The second is chosen
/// only when the first's data overflow L2 and its own fit (BENCHMARKS.md has the figures).
fn blocks_go_outside(
    (task_rows, rows): (usize, usize),
    (blocks, width): (usize, usize),
    panel_rows: usize,
    entries: usize,
    caches: &CacheSizes,
) -> bool {
    // The data of one loop order may take seven eighths of L2.
    let l2_budget = caches.l2_share(7, 8);
    let row_bytes = width * size_of::<f32>();
    let (sums, panel) = (task_rows * row_bytes, panel_rows * row_bytes);
    // The task's rows read about their share of the entries.
    let entry = size_of::<u32>() + size_of::<f32>();
    let entries = entries * entry / rows.max(1) * task_rows;
    let taps_outside = blocks * (sums + panel) + entries;
    let blocks_outside = sums + panel + entries;
    blocks > 1 && taps_outside > l2_budget && blocks_outside <= l2_budget
}

/// Per tile of output rows: the input pixel under each (tap, row), and the scratch of the
/// multiply.
#[derive(Default)]
pub(crate) struct CsoaTile {
    pixels: Vec<u32>,
    /// Output rows it holds.
    rows: usize,
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
    /// Points each row's walk at the sub-list of chunk `chunk` of group `g` of the pixel
    /// under kernel tap `tap` (empty for a tap in the padding), whose length the CSOA
    /// recorded.
    fn walk(&mut self, csoa: &Csoa, g: usize, tap: usize, chunk: usize) {
        let rows = self.rows;
        self.walks.clear();
        self.walks.extend(
            self.pixels[tap * rows..(tap + 1) * rows]
                .iter()
                .map(|&pixel| {
                    if pixel == PADDING {
                        RowCursor::default()
                    } else {
                        let range = csoa.chunk_range(pixel as usize, g, chunk);
                        RowCursor {
                            next: range.start,
                            end: range.end,
                        }
                    }
                }),
        );
    }

    /// Records, tap by tap, the input pixel each output row of `rows` reads.
    fn locate(&mut self, spec: &ConvSpec, rows: std::ops::Range<usize>) {
        let ow = spec.out_width();
        let [kr, ks] = spec.kernel;
        self.rows = rows.len();
        self.pixels.clear();
        for r in 0..kr {
            for s in 0..ks {
                self.pixels.extend(rows.clone().map(|p| {
                    match (spec.input_row(p / ow, r), spec.input_col(p % ow, s)) {
                        (Some(iy), Some(ix)) => (iy * spec.width + ix) as u32,
                        _ => PADDING,
                    }
                }));
            }
        }
    }
}

impl Scratch for CsoaTile {
    fn bytes(&self) -> usize {
        self.pixels.len() * size_of::<u32>()
            + self.walks.len() * size_of::<RowCursor>()
            + self.sums.bytes()
    }
}

impl<const NB: usize> ConvKernel for Im2Csoa<NB> {
    fn scratch(&self) -> ScratchBytes {
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
        ScratchBytes {
            floats: 0,
            kept: csoa.saturating_add(tiles),
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
        let rows = s.out_pixels();
        let (tile, per_task) = task_tiles(rows);
        let tiles = rows.div_ceil(tile);
        let (csoa, csoa_tiles) = ws.kept_pair::<Csoa, Vec<CsoaTile>>();
        ensure_tiles(csoa_tiles, tiles);
        over_groups(s, (input, (output, pitch)), |image, g, out, clock| {
            if g == 0 {
                // Every group's lists, and the pixels each tile reads, once per image.
                clock.convert(|| {
                    csoa.fill(image, [s.height, s.width, s.channels], s.groups, self.chunk)
                });
                clock.multiply(|| {
                    csoa_tiles
                        .par_iter_mut()
                        .take(tiles)
                        .enumerate()
                        .for_each(|(t, csoa_tile)| {
                            csoa_tile.locate(s, tile_rows(t, tile, rows));
                        })
                });
            }
            let zeros = clock.multiply(|| {
                let tiles = &mut csoa_tiles[..tiles];
                self.multiply(tiles, (tile, per_task), csoa, (g, epilogue), (out, pitch))
            });
            clock.count_zeros(zeros);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks go outside where the taps-outside order overflows L2 and theirs fits. On a 2 MB
    /// L2: on the 30x30 acceptance layer, not at 15x15 (everything fits) nor on 256->256 at
    /// 56x56 (neither fits); and on the shape of `im2csoa_with_blocks_outside` (in
    /// tests/methods_match_reference.rs) on one thread only, so that there it tests both
    /// orders. On a 1 MB L2, the 30x30 layer's one block of sums no longer fits either.
    #[test]
    fn blocks_go_outside_only_where_that_alone_fits_l2() {
        let order = |caches, rows: usize, task_rows, channels, filters: usize| {
            let entries = rows * channels / 5;
            let blocks = filters.div_ceil(128);
            blocks_go_outside((task_rows, rows), (blocks, 128), channels, entries, caches)
        };
        let fits = |rows, task_rows, channels, filters| {
            order(&CacheSizes::TUNED_ON, rows, task_rows, channels, filters)
        };
        assert!(fits(900, 900, 512, 512));
        assert!(!fits(225, 225, 512, 512));
        assert!(!fits(3136, 3136, 256, 256));
        assert!(fits(48 * 48, 48 * 48, 16, 256));
        assert!(!fits(48 * 48, 48 * 48 / 2, 16, 256));
        assert!(!fits(48 * 48, 48 * 48, 16, 128), "one block");
        let small = CacheSizes::FALLBACK;
        assert!(!order(&small, 900, 900, 512, 512));
        assert!(order(&small, 900, 450, 512, 512));
    }
}
