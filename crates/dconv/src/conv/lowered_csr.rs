//! The conventional sparse method: lower the input densely (im2col), compress the lowered
//! matrix to CSR, then multiply sparse x dense.
//!
//! It shares its multiply with [`super::im2csr`], tile for tile, so that comparing the two
//! measures exactly what Direct Conversion saves: a dense pass over a matrix `R x S` times
//! larger than the input, and a second pass to compress it.

use super::im2col::lower_rows;
use super::im2csr::{CsrProduct, CsrTile, RowSource};
use super::method::{MethodEntry, Skips};
use super::panels::WeightPanels;
use super::panels::{self, prepare_over_panels};
use super::run_loop::over_groups;
use super::tiles::{ensure_tiles, task_tiles, tile_rows};
use super::{ConvKernel, ConvSpec, Epilogue, ScratchBytes, Timing, Workspace};
use crate::kernels::Isa;
use crate::limits::saturating_product;
use rayon::prelude::*;
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
    fn scratch(&self) -> ScratchBytes {
        let s = &self.product.spec;
        let k = s.lowered_cols();
        let lowered = ScratchBytes::floats(lowered_len(s.out_pixels(), k));
        ScratchBytes {
            kept: self.product.tiles_bytes(k),
            ..lowered
        }
    }

    fn run(
        &self,
        input: &[f32],
        (output, pitch): (&mut [f32], usize),
        residual: Option<&[f32]>,
        ws: &mut Workspace,
    ) -> Timing {
        let epilogue = self.product.epilogue.adding(residual, output);
        let s = &self.product.spec;
        let k = s.lowered_cols();
        let rows = s.out_pixels();
        let (tile, per_task) = task_tiles(rows);
        let tiles = rows.div_ceil(tile);
        let (lowered, csr_tiles) = ws.floats_and_kept::<Vec<CsrTile>>(lowered_len(rows, k));
        ensure_tiles(csr_tiles, tiles);
        over_groups(s, (input, (output, pitch)), |image, g, out, clock| {
            clock.convert(|| {
                csr_tiles
                    .par_iter_mut()
                    .zip(lowered.par_chunks_mut(tile * k))
                    .take(tiles)
                    .enumerate()
                    .for_each(|(t, (csr_tile, dense))| {
                        let rows = tile_rows(t, tile, rows);
                        let dense = &mut dense[..rows.len() * k];
                        lower_rows(s, image, g, rows, dense);
                        csr_tile
                            .csr
                            .compress_dense(dense, k)
                            .expect("rows of K columns");
                    })
            });
            let (zeros, _) = clock.multiply(|| {
                self.product.multiply_tiles(
                    (g, epilogue),
                    RowSource::Built,
                    &mut csr_tiles[..tiles],
                    (tile, per_task),
                    (out, pitch),
                )
            });
            clock.count_zeros(zeros);
        })
    }
}

/// Floats of the dense lowered rows of every tile of a layer of `rows` output rows and `k`
/// lowered columns, tile `t`'s at `t * tile * k`.
fn lowered_len(rows: usize, k: usize) -> usize {
    let (tile, _) = task_tiles(rows);
    saturating_product(&[rows.div_ceil(tile), tile, k])
}
