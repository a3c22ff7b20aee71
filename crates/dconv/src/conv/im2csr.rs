//! im2CSR: Direct Conversion of the input to the CSR form of the lowered matrix, then
//! sparse activations x dense weights.
//!
//! The input is first compressed once, pixel by pixel ([`Csoa`]); each row of the lowered
//! matrix is then the concatenation of the non-zero lists of its receptive field's pixels,
//! so conversion costs one pass over the input plus the non-zeros it emits, never `P x K`.
//! Rows are converted and multiplied tile by tile, so a tile's CSR is still in cache when it
//! is multiplied.

use super::panels::{accumulate_into, l1_slab_rows, WeightPanels};
use super::tiles::{for_each_tile, rows_per_tile, timed};
use super::{ConvKernel, ConvSpec, Epilogue, Timing, Workspace};
use crate::kernels::Isa;
use crate::sparse::{Csoa, CsrMatrix};
use std::time::{Duration, Instant};

const MAX_TILE_ROWS: usize = 128;

pub(crate) struct Im2Csr<const NB: usize> {
    spec: ConvSpec,
    panels: WeightPanels<NB>,
    isa: Isa,
    epilogue: Epilogue,
}

impl<const NB: usize> Im2Csr<NB> {
    pub fn new(spec: ConvSpec, weights: &[f32], epilogue: Epilogue, isa: Isa) -> Self {
        Im2Csr {
            panels: WeightPanels::pack(&spec, weights),
            spec,
            isa,
            epilogue,
        }
    }
}

/// Appends to `csr` the lowered rows `rows` of group `g`, expanded from the pixel lists.
pub(crate) fn expand_rows(
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

/// A tile's lowered rows and, while they are multiplied, how far each row has been consumed.
#[derive(Default)]
pub(crate) struct CsrTile {
    pub csr: CsrMatrix,
    cursor: Vec<usize>,
}

/// Multiplies the CSR rows of one tile by the panels of group `g`, writing the tile's output
/// rows (`spec.filters` floats each). The rows are walked once per block of k, so that the
/// panel rows they read stay in L1 while every row of the tile reuses them.
pub(crate) fn multiply_tile<const NB: usize>(
    spec: &ConvSpec,
    panels: &WeightPanels<NB>,
    isa: Isa,
    epilogue: &Epilogue,
    g: usize,
    tile: &mut CsrTile,
    out: &mut [f32],
) {
    let mg = spec.filters_per_group();
    let k = spec.lowered_cols();
    let width = WeightPanels::<NB>::WIDTH;
    let slab_rows = l1_slab_rows(width);
    let k_blocks = k.div_ceil(slab_rows);
    let csr = &tile.csr;
    for block in 0..panels.blocks() {
        let panel = panels.panel(g, block);
        let cols_out = g * mg + block * width..(g * mg + (block + 1) * width).min((g + 1) * mg);
        tile.cursor.clear();
        tile.cursor.resize(csr.nrows(), 0);
        for row in out.chunks_exact_mut(spec.filters) {
            row[cols_out.clone()].fill(0.0);
        }
        for kb in 0..k_blocks {
            let k_end = ((kb + 1) * slab_rows).min(k) as u32;
            for ((i, row), cursor) in out
                .chunks_exact_mut(spec.filters)
                .enumerate()
                .zip(&mut tile.cursor)
            {
                let (cols, vals) = csr.row(i);
                let (cols, vals) = (&cols[*cursor..], &vals[*cursor..]);
                let n = cols.iter().take_while(|&&c| c < k_end).count();
                *cursor += n;
                // SAFETY: CSR columns are below K (its invariants) and the panel has K rows
                // of 16 * NB floats; `isa` was checked at preparation.
                unsafe {
                    accumulate_into::<NB>(
                        isa,
                        &cols[..n],
                        &vals[..n],
                        panel,
                        &mut row[cols_out.clone()],
                    )
                };
            }
        }
    }
    for row in out.chunks_exact_mut(spec.filters) {
        epilogue.apply_row(&mut row[g * mg..(g + 1) * mg], g * mg);
    }
}

impl<const NB: usize> ConvKernel for Im2Csr<NB> {
    fn run(&self, input: &[f32], output: &mut [f32], ws: &mut Workspace) -> Timing {
        let s = &self.spec;
        let image_len = s.height * s.width * s.channels;
        let out_len = s.out_pixels() * s.filters;
        let tile = rows_per_tile(s.out_pixels(), MAX_TILE_ROWS);
        let mut timing = Timing::default();
        for (image, out) in input
            .chunks_exact(image_len)
            .zip(output.chunks_exact_mut(out_len))
        {
            let start = Instant::now();
            ws.csoa.fill(image, s.height, s.width, s.channels, s.groups);
            timing.convert += start.elapsed();
            let (convert, multiply) = for_each_tile(
                out,
                s.filters,
                tile,
                &mut ws.csr_tiles,
                |rows, out, tile| {
                    let (mut convert, mut multiply) = (Duration::ZERO, Duration::ZERO);
                    for g in 0..s.groups {
                        timed(&mut convert, || {
                            expand_rows(s, &ws.csoa, g, rows.clone(), &mut tile.csr)
                        });
                        timed(&mut multiply, || {
                            multiply_tile(s, &self.panels, self.isa, &self.epilogue, g, tile, out)
                        });
                    }
                    (convert, multiply)
                },
            );
            timing.convert += convert;
            timing.multiply += multiply;
        }
        timing
    }
}
