//! Direct sparse convolution: sparse weights x dense activations, with no lowered matrix.
//!
//! The input is transposed into zero-padded planes, one per channel. With a stride, every
//! channel is split into `stride_h x stride_w` phase planes (space to depth: phase
//! `(ph, pw)` holds `Xpad[c][y*sh + ph][x*sw + pw]`), so that kernel position `(r, s)` of
//! output `(oy, ox)` reads phase `(r*dh % sh, s*dw % sw)` at `(oy + r*dh/sh, ox + s*dw/sw)`.
//!
//! The output is computed in tiles of `rows x lanes` positions (`lanes` = one vector; rows
//! as many as the kernel keeps in registers), filter by filter: each non-zero weight is a
//! tap that adds `w x` (a `rows x lanes` patch of one plane) to the filter's tile
//! ([`ShiftedAxpy`]). For a tile and a block of channels, the patches every tap reads are
//! first copied into a small window that stays in L1 across all filters: per channel, row
//! phase and kernel column, `rows + max_row` rows of one vector each, so every tap reads
//! whole, aligned vectors and a 3 x 3 kernel copies each input value about
//! `3 (1 + 2 / rows)` times, not 9.
//!
//! Work goes by bands of tile rows small enough that their planes stay in L2: the band's
//! input rows are transposed into planes, stored row by row (row `y` of every channel's
//! planes, then row `y + 1`), so that transposing one input row writes one stretch of memory
//! rather than a short piece of each of hundreds of planes; and each tile is computed into
//! a staging buffer
//! (`[filter][row][lane]`) that is transposed into the channels-last output through the
//! epilogue. A band that one thread runs stages and finishes one tile at a time, so that
//! its sums never leave cache. Threads that share a band (when tile rows are fewer than
//! threads) share its (tile, filter chunk) items, stage all its tiles, and finish them
//! together once all are done; when tiles are fewer than threads, filters are split into
//! chunks so that every thread has work.
//!
//! [`plan`] sizes the window, the tiles and the bands; [`taps`] packs the weights;
//! [`planes`] converts the input; [`run`] computes.
//!
//! Weights pruned in whole blocks of 16 output channels take another form ([`blocks`]), with
//! the output channels in the vector lanes: no planes, windows or transposes, which cost as
//! much as a fifth to two thirds of the list form's time on such layers.

mod blocks;
mod plan;
mod planes;
mod run;
mod taps;

pub(crate) use taps::twin_share;

use super::method::{MethodEntry, Skips};
use super::select::WeightZeros;
use super::{ConvSpec, Epilogue};
use crate::cache::CacheSizes;
use crate::error::{Error, Result};
use crate::kernels::shifted_axpy::ShiftedAxpy;
use crate::kernels::transpose::Transpose;
use crate::kernels::Isa;
use plan::{Bands, TileGrid, WindowShape};
use taps::FilterTaps;

/// sparse-weight's place in the method table. Its cost: fixed + input · |X| (the padded
/// plane copy) + nz_weight · e·M·K (each non-zero weight starts a row of work) + nz_mac ·
/// e·MACs. With twin lists (filters sharing their zeros in pairs), each place of a pair's
/// list starts a row of work, `u` of them per non-zero weight, and does two multiply-adds,
/// each [`TWIN_MAC_COST`] of a single filter's. In the block form ([`blocks`]), every
/// multiply-add of a non-zero block is done, each [`BLOCK_MAC_COST`] of a single filter's,
/// and the input term is its padded copy.
pub(in crate::conv) const ENTRY: MethodEntry = MethodEntry {
    name: "sparse-weight",
    skips: Skips {
        input_zeros: false,
        weight_zeros: true,
    },
    terms: &["fixed", "input", "nz_weight", "nz_mac"],
    term_values: |s, _, w| {
        if takes_blocks(w) {
            let macs = BLOCK_MAC_COST * w.blocks_of_16 * s.macs;
            return [1.0, s.input, 0.0, macs, 0.0, 0.0];
        }
        let nz_weights = w.density() * s.weights * s.batch;
        let starts = w.twin_share.unwrap_or(1.0);
        [
            1.0,
            s.input,
            starts * nz_weights,
            list_macs(w) * s.macs,
            0.0,
            0.0,
        ]
    },
    prepared_bytes,
    reads_panels: false,
    prepare: |spec, weights, epilogue, isa, _| {
        if takes_blocks(WeightZeros::of(spec, weights)) {
            return blocks::prepare(spec, weights, epilogue, isa);
        }
        Ok(Box::new(SparseWeight::new(*spec, weights, epilogue, isa)?))
    },
};

/// A multiply-add of the twin kernel against one of the single-filter kernel: each vector
/// loaded feeds two. Measured on 256->256 3x3 at 60x60 with 80 % zero 1x16 blocks (Zen 3,
/// AVX2, perf): the kernels took 11.2 ms for single lists and 8.7 ms for twin lists, the
/// same multiply-adds (0.78).
const TWIN_MAC_COST: f64 = 0.78;

/// A multiply-add of the block form against one of the single-filter kernel: the block form's
/// time over the twin lists' on the same layers, 0.66-1.04 (median 0.87: 256 -> 256 3x3 at
/// 60 x 60 with 80 % zero blocks of 16, 128 at 112 x 112 and 512 at 14, 28 and 30 with 70-90
/// %; Zen 3, AVX2, BENCHMARKS.md session 27), times [`TWIN_MAC_COST`].
const BLOCK_MAC_COST: f64 = 0.68;

/// The most blocks of 16 not all zero, as a fraction of all, where the block form is taken:
/// it was measured from 40 % zero blocks up (at 40 % and 50 %, 1.15x and 1.03x the twin
/// lists' speed on 256 -> 256 3x3 at 56 x 56); an unpruned layer stays in the list form,
/// which `auto` leaves to dense.
const MOST_BLOCKS: f64 = 0.6;

/// The list form's multiply-adds per dense one, in single-filter units: the non-zero weights'
/// share, twice `u` of it for twin lists.
fn list_macs(w: WeightZeros) -> f64 {
    w.twin_share.map_or(1.0, |u| 2.0 * u * TWIN_MAC_COST) * w.density()
}

/// Whether weights whose zeros are `w` take the block form: where enough blocks of 16 are
/// zero and its multiply-adds, every one of the non-zero blocks', cost less than the list
/// form's (element-pruned weights leave few blocks all zero).
fn takes_blocks(w: WeightZeros) -> bool {
    w.blocks_of_16 <= MOST_BLOCKS && BLOCK_MAC_COST * w.blocks_of_16 <= list_macs(w)
}

pub(crate) struct SparseWeight {
    spec: ConvSpec,
    /// The instruction set of the loops compiled through `vectorized` (window fills, zeroed
    /// sums); the two kernels below are chosen for it.
    isa: Isa,
    axpy: ShiftedAxpy,
    transpose: Transpose,
    epilogue: Epilogue,
    /// The non-zero weights, as taps on the window.
    taps: FilterTaps,
    /// The window a tile reads, and the channel blocks it is filled by.
    window: WindowShape,
    /// The tiles over the output.
    grid: TileGrid,
    /// How bands are cut on one thread, and on several.
    bands: [Bands; 2],
}

impl SparseWeight {
    pub fn new(spec: ConvSpec, weights: &[f32], epilogue: Epilogue, isa: Isa) -> Result<Self> {
        Self::blocked_for(spec, weights, epilogue, isa, &CacheSizes::detect())
    }

    /// Like [`new`](Self::new), with blocks and bands sized for `caches`.
    fn blocked_for(
        spec: ConvSpec,
        weights: &[f32],
        epilogue: Epilogue,
        isa: Isa,
        caches: &CacheSizes,
    ) -> Result<Self> {
        let twins = twin_share(&spec, weights).is_some();
        let window = WindowShape::new(&spec, isa, caches, twins);
        let grid = TileGrid::new(&spec, &window);
        let bands = Bands::for_layer(&spec, &window, &grid, caches)?;
        let taps = FilterTaps::pack(&spec, weights, &window, twins)?;
        debug_assert!(taps.span() + grid.tile_len <= window.len + 1);
        Ok(SparseWeight {
            spec,
            isa,
            axpy: ShiftedAxpy::for_isa(isa),
            transpose: Transpose::for_isa(isa),
            epilogue,
            taps,
            window,
            grid,
            bands,
        })
    }
}

/// At most how many bytes of weights the form that `zeros` make it take keeps (saturating).
fn prepared_bytes(spec: &ConvSpec, nonzeros: usize, zeros: WeightZeros) -> usize {
    if takes_blocks(zeros) {
        blocks::prepared_bytes(spec, zeros.blocks_of_16)
    } else {
        taps::prepared_bytes(spec, nonzeros)
    }
}

/// The error of a layer whose planes or window offsets do not fit memory addresses.
fn too_large() -> Error {
    Error::Overflow("sparse-weight input planes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::Activation;
    use crate::prune::WeightBlocks;
    use crate::synth::{block_sparse_weights, random_sparse, Rng};

    /// Weights of `spec` with 80 % zeros: in blocks of 4 filters if `twins` (so that
    /// sparse-weight keeps a list per pair of filters), else element by element (a list per
    /// filter).
    fn weights(spec: &ConvSpec, twins: bool) -> Vec<f32> {
        let (len, mut rng) = (spec.weight_len().unwrap(), Rng::new(3));
        if twins {
            let blocks = WeightBlocks::new(spec.filters, spec.groups, len / spec.filters, 4);
            block_sparse_weights(&blocks.unwrap(), 0.8, &mut rng)
        } else {
            random_sparse(len, 0.8, &mut rng)
        }
    }

    /// Sparse-weight prepared for `spec` on `isa`, blocked for `caches`, with weights
    /// whose filters share their zeros in pairs if `twins`.
    fn blocked(spec: ConvSpec, isa: Isa, caches: &CacheSizes, twins: bool) -> SparseWeight {
        let epilogue = Epilogue {
            bias: vec![0.0; spec.filters],
            activation: Activation::None,
            isa,
        };
        let weights = weights(&spec, twins);
        let conv = SparseWeight::blocked_for(spec, &weights, epilogue, isa, caches).unwrap();
        let per_list = if twins { 2 } else { 1 };
        assert_eq!(conv.taps.filters_per_list(), per_list, "{spec:?}");
        conv
    }

    /// The caches these shapes are checked for: those the shares were tuned on, and smaller
    /// ones (larger caches may fit these shapes whole).
    const CACHES: [CacheSizes; 2] = [CacheSizes::TUNED_ON, CacheSizes::FALLBACK];

    /// The shape of `sparse_weight_with_many_channel_blocks_and_bands` (in
    /// tests/methods_match_reference.rs) needs several channel blocks and, on one thread,
    /// several bands on every ISA.
    #[test]
    fn the_integration_test_shape_needs_blocks_and_bands() {
        let spec = ConvSpec::new(96, 150, 37, 24, [3, 3])
            .with_stride([2, 1])
            .with_dilation([1, 2])
            .with_padding([1, 2, 0, 1])
            .with_groups(2)
            .with_batch(2);
        spec.validate().unwrap();
        for (isa, twins) in Isa::ALL.into_iter().flat_map(|i| [(i, false), (i, true)]) {
            for caches in &CACHES {
                let conv = blocked(spec, isa, caches, twins);
                assert!(
                    conv.window.blocks > 1,
                    "{isa}, {caches}: {} blocks",
                    conv.window.blocks
                );
                let band = conv.bands[0].tile_rows;
                assert!(
                    band < conv.grid.tiles_y,
                    "{isa}, {caches}: band {band} of {}",
                    conv.grid.tiles_y
                );
            }
        }
    }

    /// The shape of `sparse_weight_with_shared_bands_on_four_threads` (in
    /// tests/methods_match_reference.rs) has fewer tile rows than 4 threads and more than
    /// one band of them at the shared budget, on every ISA.
    #[test]
    fn the_shared_band_test_shape_needs_two_bands() {
        // Twin tiles are shorter: 18 rows make 6 tile rows on AVX2; 14 make 2 or 3, whose
        // planes take a wider image to need two bands.
        for (height, width, twins) in [(18, 1500, false), (14, 3000, true)] {
            let spec = ConvSpec::new(64, height, width, 80, [3, 3]).with_padding([1; 4]);
            for (isa, caches) in Isa::ALL
                .into_iter()
                .flat_map(|i| CACHES.iter().map(move |c| (i, c)))
            {
                let conv = blocked(spec, isa, caches, twins);
                let shared = conv.bands[1].tile_rows;
                assert!(
                    conv.grid.tiles_y < 4 && shared < conv.grid.tiles_y,
                    "{isa}, {caches}: {shared} of {}",
                    conv.grid.tiles_y
                );
            }
        }
    }

    /// Threads take bands of their own only when whole tile rows share out evenly: at 14 x
    /// 14, twin tiles of 5 rows make 3 tile rows on AVX2, one thread's twice the other's, so
    /// two threads share each band; single tiles of 7 rows make 2, one each.
    #[test]
    fn threads_share_bands_where_tile_rows_split_unevenly() {
        let spec = ConvSpec::new(64, 14, 14, 64, [3, 3]).with_padding([1; 4]);
        for (twins, tile_rows, groups) in [(true, 3, 1), (false, 2, 2)] {
            let conv = blocked(spec, Isa::Avx2, &CacheSizes::TUNED_ON, twins);
            assert_eq!(conv.grid.tiles_y, tile_rows, "twins {twins}");
            assert_eq!(conv.run_shape(2).groups, groups, "twins {twins}");
            assert_eq!(conv.run_shape(1).groups, 1);
        }
    }

    /// The shape of `sparse_weight_with_a_folded_last_column` (in
    /// tests/methods_match_reference.rs) folds its last column of tiles on every ISA; the
    /// VGG-16 sizes that fold are the 56-wide ones.
    #[test]
    fn the_fold_test_shape_folds() {
        for isa in Isa::supported() {
            // Twin tiles are shorter on AVX-512 (rows of 7 at 56 x 56, which do not fold).
            for (spec, folds, twins) in [
                (ConvSpec::new(40, 12, 18, 20, [3, 3]), true, false),
                (ConvSpec::new(40, 12, 18, 20, [3, 3]), true, true),
                (
                    ConvSpec::new(256, 56, 56, 256, [3, 3]),
                    isa == Isa::Avx512,
                    false,
                ),
                (ConvSpec::new(256, 56, 56, 256, [3, 3]), false, true),
                (ConvSpec::new(512, 28, 28, 512, [3, 3]), false, false),
            ] {
                let spec = spec.with_padding([1; 4]);
                let epilogue = Epilogue {
                    bias: vec![0.0; spec.filters],
                    activation: Activation::None,
                    isa,
                };
                let weights = weights(&spec, twins);
                let conv = SparseWeight::new(spec, &weights, epilogue, isa).unwrap();
                assert_eq!(conv.taps.filters_per_list(), 1 + usize::from(twins));
                assert_eq!(
                    conv.grid.fold.is_some(),
                    folds,
                    "{isa} {spec:?} twins {twins}"
                );
            }
        }
    }

    /// Weights pruned in whole blocks of 16 take the block form from 40 % zero blocks up;
    /// weights pruned element by element, in blocks of 8 (whose blocks of 16 are half as
    /// often zero), or not at all keep the lists.
    #[test]
    fn the_block_form_is_taken_where_blocks_of_16_are_zero() {
        let spec = ConvSpec::new(64, 8, 8, 64, [3, 3]);
        let (len, filter_len) = (spec.weight_len().unwrap(), 64 * 9);
        let takes = |block: Option<usize>, sparsity: f64| {
            let mut rng = Rng::new(9);
            let weights = match block {
                Some(b) => {
                    let blocks = WeightBlocks::new(64, 1, filter_len, b).unwrap();
                    block_sparse_weights(&blocks, sparsity, &mut rng)
                }
                None => random_sparse(len, sparsity, &mut rng),
            };
            takes_blocks(WeightZeros::of(&spec, &weights))
        };
        for sparsity in [0.4, 0.6, 0.9, 1.0] {
            assert!(takes(Some(16), sparsity), "blocks of 16 at {sparsity}");
        }
        assert!(!takes(Some(16), 0.2));
        assert!(!takes(Some(8), 0.76));
        assert!(!takes(None, 0.9));
        assert!(!takes(None, 0.0));
    }

    /// The list form's bound, which a memory budget counts, holds what every ISA's layout
    /// keeps, over shapes of every stride, dilation and group count and weight sparsities
    /// from 0 to 100 %, and shrinks with the non-zeros.
    #[test]
    fn prepared_bytes_bound_what_is_kept() {
        let mut rng = Rng::new(7);
        let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
        for case in 0..60 {
            let groups = [1, 2, 4][pick(3)];
            let (k, stride, dilation) = (1 + pick(5), 1 + pick(3), 1 + pick(2));
            let size = (k - 1) * dilation + 1 + pick(20);
            let spec = ConvSpec::new(
                groups * (1 + pick(24)),
                size,
                size + pick(9),
                groups * (1 + pick(40)),
                [k, k],
            )
            .with_stride([stride, 1 + pick(2)])
            .with_dilation([dilation, 1])
            .with_padding([pick(2), pick(2), pick(2), pick(2)])
            .with_groups(groups);
            spec.validate().unwrap();
            let sparsity = [0.0, 0.5, 0.9, 1.0][case % 4];
            let weights = random_sparse(
                spec.weight_len().unwrap(),
                sparsity,
                &mut Rng::new(case as u64),
            );
            let nonzeros = weights.iter().filter(|&&w| w != 0.0).count();
            let bound = taps::prepared_bytes(&spec, nonzeros);
            for isa in Isa::ALL {
                let epilogue = Epilogue {
                    bias: vec![0.0; spec.filters],
                    activation: Activation::None,
                    isa,
                };
                let conv = SparseWeight::new(spec, &weights, epilogue, isa).unwrap();
                let kept = conv.taps.bytes();
                assert!(
                    kept <= bound,
                    "{isa} {spec:?} at {sparsity}: {kept} > {bound}"
                );
            }
            if sparsity == 0.9 {
                let dense = taps::prepared_bytes(&spec, spec.weight_len().unwrap());
                assert!(bound < dense, "{spec:?}: {bound} of {dense}");
            }
        }
    }
}
