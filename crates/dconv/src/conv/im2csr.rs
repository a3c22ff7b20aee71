//! im2CSR: Direct Conversion of the input to the CSR form of the lowered matrix, then
//! sparse activations x dense weights.
//!
//! The input is first compressed once, pixel by pixel ([`Csoa`]); each row of the lowered
//! matrix is then the concatenation of the non-zero lists of its receptive field's pixels,
//! so conversion costs one pass over the input plus the non-zeros it emits, never `P x K`.

use super::panels::{l1_slab_rows, l2_chunk_rows, WeightPanels};
use super::tiles::{
    ensure_tiles, multiply_tasks, task_tiles, tile_rows, tiles_scratch, walk_bytes, Tile, TileSums,
};
use super::{ConvKernel, ConvSpec, Epilogue, Timing, Workspace};
use crate::kernels::sparse_row_panel::{accumulate_rows, Entries, RowCursor};
use crate::kernels::Isa;
use crate::sparse::{Csoa, CsrMatrix};
use rayon::prelude::*;
use std::mem::size_of;
use std::sync::Arc;
use std::time::Instant;

pub(crate) struct Im2Csr<const NB: usize> {
    product: CsrProduct<NB>,
}

impl<const NB: usize> Im2Csr<NB> {
    pub fn new(
        spec: ConvSpec,
        panels: Arc<WeightPanels<NB>>,
        epilogue: Epilogue,
        isa: Isa,
    ) -> Self {
        Im2Csr {
            product: CsrProduct::new(spec, panels, epilogue, isa),
        }
    }
}

/// Writes into `csr` the lowered rows `rows` of group `g`, expanded from the pixel lists.
fn expand_rows(
    spec: &ConvSpec,
    csoa: &Csoa,
    g: usize,
    rows: std::ops::Range<usize>,
    csr: &mut CsrMatrix,
) {
    let ow = spec.out_width();
    let [kr, ks] = spec.kernel;
    let cg = spec.channels_per_group();
    csr.clear(spec.lowered_cols());
    for p in rows {
        let (oy, ox) = (p / ow, p % ow);
        for r in 0..kr {
            let Some(iy) =
                (oy * spec.stride[0] + r * spec.dilation[0]).checked_sub(spec.padding.top)
            else {
                continue;
            };
            if iy >= spec.height {
                continue;
            }
            for s in 0..ks {
                let Some(ix) =
                    (ox * spec.stride[1] + s * spec.dilation[1]).checked_sub(spec.padding.left)
                else {
                    continue;
                };
                if ix >= spec.width {
                    continue;
                }
                let (chans, vals) = csoa.pixel(iy, ix, g);
                csr.extend_row(((r * ks + s) * cg) as u32, chans, vals);
            }
        }
        csr.end_row();
    }
}

/// A tile's lowered rows and the scratch of their multiply.
#[derive(Default)]
pub(crate) struct CsrTile {
    pub csr: CsrMatrix,
    cursors: Vec<RowCursor>,
    /// The cursors where the current slab of k starts.
    slab_start: Vec<RowCursor>,
    sums: TileSums,
}

impl CsrTile {
    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        self.csr.bytes()
            + (self.cursors.len() + self.slab_start.len()) * size_of::<RowCursor>()
            + self.sums.bytes()
    }
}

impl Tile for CsrTile {
    fn sums(&mut self) -> &mut TileSums {
        &mut self.sums
    }
}

/// The product of CSR rows with a layer's weight panels: the multiply that im2CSR and the
/// lowered CSR baseline share.
pub(crate) struct CsrProduct<const NB: usize> {
    pub spec: ConvSpec,
    panels: Arc<WeightPanels<NB>>,
    isa: Isa,
    epilogue: Epilogue,
}

impl<const NB: usize> CsrProduct<NB> {
    /// The product with `panels`, packed from the layer's weights.
    pub fn new(
        spec: ConvSpec,
        panels: Arc<WeightPanels<NB>>,
        epilogue: Epilogue,
        isa: Isa,
    ) -> Self {
        CsrProduct {
            panels,
            spec,
            isa,
            epilogue,
        }
    }

    /// The most bytes the tiles of a layer's CSR rows and their scratch fill, when every
    /// value of the lowered matrix is non-zero.
    pub fn tiles_bytes(&self) -> usize {
        let (k, blocks) = (self.spec.lowered_cols(), self.panels.blocks());
        tiles_scratch::<CsrTile>(self.spec.out_pixels(), |rows| {
            CsrMatrix::bytes_for(rows, k).saturating_add(walk_bytes(
                rows,
                blocks,
                WeightPanels::<NB>::WIDTH,
            ))
        })
    }

    /// Multiplies the CSR rows of every tile (`split` is `task_tiles`' answer) by the
    /// panels of group `g`, writing the image's NHWC output `out`, then applies the
    /// epilogue to the group's channels.
    ///
    /// Loops, outside in: tasks of tiles, in parallel ([`multiply_tasks`]); chunks of k
    /// whose panel rows, of every block, stay in L2 (so that they come from memory once,
    /// whichever tile of the task uses them); tiles; slabs of k; blocks of output channels,
    /// whose panel rows of the slab stay in L1 while every row of the tile reuses them.
    /// Blocks come last so that the rows' entries, which stream from L3, are fetched once
    /// rather than once per block.
    pub fn multiply_tiles(
        &self,
        g: usize,
        tiles: &mut [CsrTile],
        split: (usize, usize),
        out: &mut [f32],
    ) -> usize {
        let CsrProduct {
            spec,
            panels,
            isa,
            epilogue,
        } = self;
        let k = spec.lowered_cols();
        let (width, blocks) = (WeightPanels::<NB>::WIDTH, panels.blocks());
        let (slab, chunk) = (l1_slab_rows(width), l2_chunk_rows(width, blocks));
        multiply_tasks(spec, (g, epilogue), panels, tiles, split, out, |task| {
            for t in task.iter_mut() {
                let (row_ptr, _, _) = t.csr.parts();
                t.cursors.clear();
                t.cursors.extend(row_ptr.windows(2).map(|w| RowCursor {
                    next: w[0],
                    end: w[1],
                }));
            }
            for chunk_start in (0..k).step_by(chunk) {
                let chunk_end = (chunk_start + chunk).min(k);
                for t in task.iter_mut() {
                    let (_, cols, vals) = t.csr.parts();
                    for slab_end in (chunk_start + slab..chunk_end + slab).step_by(slab) {
                        let limit = if slab_end >= k {
                            u32::MAX
                        } else {
                            slab_end.min(chunk_end) as u32
                        };
                        t.slab_start.clone_from(&t.cursors);
                        for block in 0..blocks {
                            // Every block walks the slab from its start; the last leaves
                            // the cursors at the next slab.
                            t.cursors.copy_from_slice(&t.slab_start);
                            accumulate_rows::<NB>(
                                *isa,
                                Entries::new(cols, vals),
                                &mut t.cursors,
                                limit,
                                panels.panel(g, block),
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

impl<const NB: usize> ConvKernel for Im2Csr<NB> {
    fn scratch_bytes(&self) -> usize {
        let s = &self.product.spec;
        let pixels = s.height * s.width;
        let csoa = Csoa::bytes_for(pixels, s.channels, pixels.saturating_mul(s.groups));
        csoa.saturating_add(self.product.tiles_bytes())
    }

    fn run(&self, input: &[f32], output: &mut [f32], ws: &mut Workspace) -> Timing {
        let s = &self.product.spec;
        let image_len = s.height * s.width * s.channels;
        let rows = s.out_pixels();
        let (tile, per_task) = task_tiles(rows);
        ensure_tiles(&mut ws.csr_tiles, rows.div_ceil(tile));
        let mut timing = Timing::default();
        for (image, out) in input
            .chunks_exact(image_len)
            .zip(output.chunks_exact_mut(rows * s.filters))
        {
            for g in 0..s.groups {
                let start = Instant::now();
                if g == 0 {
                    // One chunk per list: the rows are cut by slabs of k later.
                    let cg = s.channels_per_group();
                    ws.csoa
                        .fill(image, [s.height, s.width, s.channels], s.groups, cg);
                }
                let csoa = &ws.csoa;
                ws.csr_tiles
                    .par_iter_mut()
                    .take(rows.div_ceil(tile))
                    .enumerate()
                    .for_each(|(t, csr_tile)| {
                        expand_rows(s, csoa, g, tile_rows(t, tile, rows), &mut csr_tile.csr);
                    });
                let converted = Instant::now();
                timing.convert += converted - start;
                let zeros = self.product.multiply_tiles(
                    g,
                    &mut ws.csr_tiles[..rows.div_ceil(tile)],
                    (tile, per_task),
                    out,
                );
                timing.output_zeros = Some(timing.output_zeros.unwrap_or(0) + zeros);
                timing.multiply += converted.elapsed();
            }
        }
        timing
    }
}
