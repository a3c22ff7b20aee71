//! The conventional sparse method: lower the input densely (im2col), compress the lowered
//! matrix to CSR, then multiply sparse x dense.
//!
//! It shares its multiply with [`super::im2csr`], tile for tile, so that comparing the two
//! measures exactly what Direct Conversion saves: a dense pass over a matrix `R x S` times
//! larger than the input, and a second pass to compress it.

use super::im2col::lower_rows;
use super::im2csr::{CsrProduct, RowSource};
use super::method::{MethodEntry, Skips};
use super::panels::WeightPanels;
use super::panels::{self, prepare_over_panels};
use super::run_loop::over_groups;
use super::tiles::{ensure_tiles, task_tiles, tile_rows, tiles_scratch};
use super::{ConvKernel, ConvSpec, Epilogue, Timing, Workspace};
use crate::kernels::Isa;
use crate::limits::saturating_product;
use rayon::prelude::*;
use std::mem::size_of;
use std::sync::Arc;

/// lowered-csr's place in the method table. Its cost: fixed + lowered · P·K (im2col and the
/// compression scan) + nz_lowered · d·P·K + nz_mac · d·PMACs.
pub(super) const ENTRY: MethodEntry = MethodEntry {
    name: "lowered-csr",
    skips: Skips {
        input_zeros: true,
        weight_zeros: false,
    },
    terms: &["fixed", "lowered", "nz_lowered", "nz_mac"],
    term_values: |s, d, _| [1.0, s.lowered, d * s.lowered, d * s.panel_macs, 0.0, 0.0],
    prepared_bytes: panels::prepared_bytes,
    reads_panels: true,
    prepare: prepare_over_panels!(LoweredCsr),
};

pub(crate) struct LoweredCsr<const NB: usize> {
    product: CsrProduct<NB>,
}

impl<const NB: usize> LoweredCsr<NB> {
    pub fn new(
        spec: ConvSpec,
        panels: Arc<WeightPanels<NB>>,
        epilogue: Epilogue,
        isa: Isa,
    ) -> Self {
        LoweredCsr {
            product: CsrProduct::new(spec, panels, epilogue, isa),
        }
    }
}

impl<const NB: usize> ConvKernel for LoweredCsr<NB> {
    fn scratch_bytes(&self) -> usize {
        let s = &self.product.spec;
        let k = s.lowered_cols();
        let lowered = tiles_scratch::<Vec<f32>>(s.out_pixels(), |rows| {
            saturating_product(&[rows, k, size_of::<f32>()])
        });
        lowered.saturating_add(self.product.tiles_bytes(k))
    }

    fn run(&self, input: &[f32], output: &mut [f32], ws: &mut Workspace) -> Timing {
        let s = &self.product.spec;
        let k = s.lowered_cols();
        let rows = s.out_pixels();
        let (tile, per_task) = task_tiles(rows);
        let tiles = rows.div_ceil(tile);
        ensure_tiles(&mut ws.csr_tiles, tiles);
        ensure_tiles(&mut ws.lowered_tiles, tiles);
        over_groups(s, (input, output), |image, g, out, clock| {
            clock.convert(|| {
                ws.csr_tiles
                    .par_iter_mut()
                    .zip(ws.lowered_tiles.par_iter_mut())
                    .take(tiles)
                    .enumerate()
                    .for_each(|(t, (csr_tile, dense))| {
                        let rows = tile_rows(t, tile, rows);
                        dense.resize(rows.len() * k, 0.0);
                        lower_rows(s, image, g, rows, dense);
                        csr_tile
                            .csr
                            .compress_dense(dense, k)
                            .expect("rows of K columns");
                    })
            });
            let (zeros, _) = clock.multiply(|| {
                self.product.multiply_tiles(
                    g,
                    RowSource::Built,
                    &mut ws.csr_tiles[..tiles],
                    (tile, per_task),
                    out,
                )
            });
            clock.count_zeros(zeros);
        })
    }
}
