//! The conventional sparse method: lower the input densely (im2col), compress the lowered
//! matrix to CSR, then multiply sparse x dense.
//!
//! It shares its multiply with [`super::im2csr`], tile for tile, so that comparing the two
//! measures exactly what Direct Conversion saves: a dense pass over a matrix `R x S` times
//! larger than the input, and a second pass to compress it.

use super::im2col::lower_rows;
use super::im2csr::{multiply_tile, CsrTile};
use super::panels::WeightPanels;
use super::tiles::{for_each_tile, rows_per_tile, timed};
use super::{ConvKernel, ConvSpec, Epilogue, Timing, Workspace};
use crate::kernels::Isa;
use std::time::Duration;

const MAX_TILE_ROWS: usize = 128;

pub(crate) struct LoweredCsr<const NB: usize> {
    spec: ConvSpec,
    panels: WeightPanels<NB>,
    isa: Isa,
    epilogue: Epilogue,
}

impl<const NB: usize> LoweredCsr<NB> {
    pub fn new(spec: ConvSpec, weights: &[f32], epilogue: Epilogue, isa: Isa) -> Self {
        LoweredCsr {
            panels: WeightPanels::pack(&spec, weights),
            spec,
            isa,
            epilogue,
        }
    }
}

/// A tile's dense lowered rows and their compressed form.
#[derive(Default)]
pub(crate) struct LoweredTile {
    dense: Vec<f32>,
    sparse: CsrTile,
}

impl<const NB: usize> ConvKernel for LoweredCsr<NB> {
    fn run(&self, input: &[f32], output: &mut [f32], ws: &mut Workspace) -> Timing {
        let s = &self.spec;
        let k = s.lowered_cols();
        let image_len = s.height * s.width * s.channels;
        let out_len = s.out_pixels() * s.filters;
        let tile = rows_per_tile(s.out_pixels(), MAX_TILE_ROWS);
        let mut timing = Timing::default();
        for (image, out) in input
            .chunks_exact(image_len)
            .zip(output.chunks_exact_mut(out_len))
        {
            let (convert, multiply) = for_each_tile(
                out,
                s.filters,
                tile,
                &mut ws.lowered_tiles,
                |rows, out, t| {
                    let (mut convert, mut multiply) = (Duration::ZERO, Duration::ZERO);
                    for g in 0..s.groups {
                        timed(&mut convert, || {
                            t.dense.resize(rows.len() * k, 0.0);
                            lower_rows(s, image, g, rows.clone(), &mut t.dense);
                            t.sparse
                                .csr
                                .compress_dense(&t.dense, k)
                                .expect("rows of K columns");
                        });
                        timed(&mut multiply, || {
                            multiply_tile(
                                s,
                                &self.panels,
                                self.isa,
                                &self.epilogue,
                                g,
                                &mut t.sparse,
                                out,
                            )
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
