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

use super::panels::{accumulate_into, l1_slab_rows, WeightPanels};
use super::tiles::{for_each_tile, rows_per_tile, timed};
use super::{ConvKernel, ConvSpec, Epilogue, Timing, Workspace};
use crate::kernels::Isa;
use std::time::{Duration, Instant};

const MAX_TILE_ROWS: usize = 128;
/// Marks a tap that falls into the padding.
const PADDING: u32 = u32::MAX;

pub(crate) struct Im2Csoa<const NB: usize> {
    spec: ConvSpec,
    panels: WeightPanels<NB>,
    /// Channels per chunk of a tap: the panel rows of one chunk stay in L1.
    chunk: usize,
    /// Per (group, block, tap, chunk): whether its weights are all non-zero-free.
    zero_chunks: Vec<bool>,
    isa: Isa,
    epilogue: Epilogue,
}

impl<const NB: usize> Im2Csoa<NB> {
    pub fn new(spec: ConvSpec, weights: &[f32], epilogue: Epilogue, isa: Isa) -> Self {
        let panels = WeightPanels::<NB>::pack(&spec, weights);
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

    /// Multiplies one tile of output rows for group `g`.
    fn multiply_tile(
        &self,
        csoa_tile: &mut CsoaTile,
        csoa: &crate::sparse::Csoa,
        g: usize,
        out: &mut [f32],
    ) {
        let s = &self.spec;
        let (cg, mg) = (s.channels_per_group(), s.filters_per_group());
        let taps = s.kernel[0] * s.kernel[1];
        let width = WeightPanels::<NB>::WIDTH;
        let chunks = cg.div_ceil(self.chunk);
        let rows = out.len() / s.filters;
        let mut zero_chunks = self.zero_chunks[g * self.panels.blocks() * taps * chunks..].iter();
        for block in 0..self.panels.blocks() {
            let panel = self.panels.panel(g, block);
            let cols_out = g * mg + block * width..(g * mg + (block + 1) * width).min((g + 1) * mg);
            for row in out.chunks_exact_mut(s.filters) {
                row[cols_out.clone()].fill(0.0);
            }
            for tap in 0..taps {
                let tap_panel = &panel[tap * cg * width..];
                let pixels = &csoa_tile.pixels[tap * rows..(tap + 1) * rows];
                csoa_tile.cursor.clear();
                csoa_tile.cursor.resize(rows, 0);
                for c0 in (0..cg).step_by(self.chunk) {
                    let c_end = (c0 + self.chunk) as u32;
                    let skip = *zero_chunks.next().expect("one flag per chunk");
                    for ((row, &pixel), cursor) in out
                        .chunks_exact_mut(s.filters)
                        .zip(pixels)
                        .zip(&mut csoa_tile.cursor)
                    {
                        if pixel == PADDING {
                            continue;
                        }
                        let (chans, vals) = csoa.pixel_at(pixel as usize, g);
                        let (chans, vals) = (&chans[*cursor..], &vals[*cursor..]);
                        let n = chans.iter().take_while(|&&c| c < c_end).count();
                        *cursor += n;
                        if !skip {
                            // SAFETY: channels are below C/G, so `tap * C/G + c` is below K,
                            // the panel's row count; `isa` was checked at preparation.
                            unsafe {
                                accumulate_into::<NB>(
                                    self.isa,
                                    &chans[..n],
                                    &vals[..n],
                                    tap_panel,
                                    &mut row[cols_out.clone()],
                                )
                            };
                        }
                    }
                }
            }
        }
        for row in out.chunks_exact_mut(s.filters) {
            self.epilogue
                .apply_row(&mut row[g * mg..(g + 1) * mg], g * mg);
        }
    }
}

/// Per tile of output rows: the input pixel under each (tap, row), and how far each row's
/// pixel list has been consumed within the current tap.
#[derive(Default)]
pub(crate) struct CsoaTile {
    pixels: Vec<u32>,
    cursor: Vec<usize>,
}

impl CsoaTile {
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
            let csoa = &ws.csoa;
            let (_, multiply) = for_each_tile(
                out,
                s.filters,
                tile,
                &mut ws.csoa_tiles,
                |rows, out, csoa_tile| {
                    let mut multiply = Duration::ZERO;
                    timed(&mut multiply, || {
                        csoa_tile.locate(s, rows);
                        for g in 0..s.groups {
                            self.multiply_tile(csoa_tile, csoa, g, out);
                        }
                    });
                    (Duration::ZERO, multiply)
                },
            );
            timing.multiply += multiply;
        }
        timing
    }
}
