//! Tiles of output rows: the unit of parallel work of the sparse-activation methods.

use super::panels::WeightPanels;
use super::{ConvSpec, RunEpilogue};
use crate::kernels::aligned::CacheAligned;
use crate::kernels::sparse_row_panel::RowCursor;
use crate::limits::saturating_product;
use rayon::prelude::*;
use std::mem::size_of;
use std::ops::Range;

/// Most output rows in a tile: the tile's sparse rows and its spill of sums stay in L2.
const MAX_TILE_ROWS: usize = 256;

/// Tiles for work cut into tasks of whole runs of tiles, each task an equal share of the rows:
/// `(rows per tile, tiles per task)`, tiles of at most [`MAX_TILE_ROWS`]. One task per thread,
/// or on several threads two when each still gets a full tile, so that a thread slowed by
/// another process on its core hands work to the others. (Every task walks all of a layer's
/// weight panels, so more, smaller tasks cost more reads from L3.)
pub(crate) fn task_tiles(rows: usize) -> (usize, usize) {
    let max = MAX_TILE_ROWS;
    let threads = rayon::current_num_threads().max(1);
    let per_thread = if threads > 1 {
        (rows / (threads * max)).clamp(1, 2)
    } else {
        1
    };
    let tasks = threads * per_thread;
    let per_task = rows.div_ceil(tasks * max).max(1);
    (rows.div_ceil(tasks * per_task).max(1), per_task)
}

/// The rows of tile `t` when `rows` rows are cut into tiles of `tile`.
pub(crate) fn tile_rows(t: usize, tile: usize, rows: usize) -> Range<usize> {
    t * tile..((t + 1) * tile).min(rows)
}

/// The most bytes the tiles of `rows` output rows (cut as [`task_tiles`] cuts them) fill,
/// when one tile of `r` rows fills `per_tile(r)` besides its struct (saturating).
pub(crate) fn tiles_scratch<T>(rows: usize, per_tile: impl Fn(usize) -> usize) -> usize {
    let (tile, _) = task_tiles(rows);
    let each = per_tile(tile).saturating_add(size_of::<T>());
    rows.div_ceil(tile).saturating_mul(each)
}

/// The most bytes one tile of `rows` rows fills for the multiply itself, whichever method:
/// at most two cursors per row (im2CSR's walk and where it restarts for the next block;
/// im2CSOA keeps one) and the sums of `blocks` blocks of `width` channels (saturating).
pub(crate) fn walk_bytes(rows: usize, blocks: usize, width: usize) -> usize {
    saturating_product(&[2, rows, size_of::<RowCursor>()])
        .saturating_add(TileSums::bytes_for(rows, blocks, width))
}

/// Grows `scratch` to hold one entry per tile (never shrinks, so nothing is allocated once
/// the largest layer has run).
pub(crate) fn ensure_tiles<S: Default>(scratch: &mut Vec<S>, tiles: usize) {
    if scratch.len() < tiles {
        scratch.resize_with(tiles, S::default);
    }
}

/// The sums of one tile of output rows while they are accumulated, block of output channels
/// by block: each block's rows lie contiguously in a cache-aligned spill, and are finished
/// into the NHWC output at the end. (Rows of the output lie a power-of-two apart and start
/// wherever the caller's buffer does; the spill's rows are neither, and a block narrower than
/// the panel, the last of a group, cannot write past its columns.)
#[derive(Default)]
pub(crate) struct TileSums {
    spill: CacheAligned,
    rows: usize,
    width: usize,
}

impl TileSums {
    /// Zeroes the sums of `rows` rows of `blocks` blocks of `width` channels.
    pub fn begin(&mut self, rows: usize, blocks: usize, width: usize) {
        self.spill.reset_zeroed(blocks * rows * width);
        (self.rows, self.width) = (rows, width);
    }

    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        self.spill.bytes()
    }

    /// The most bytes the sums of `rows` rows of `blocks` blocks of `width` channels hold.
    pub fn bytes_for(rows: usize, blocks: usize, width: usize) -> usize {
        CacheAligned::bytes_for(saturating_product(&[rows, blocks, width]))
    }

    /// The sums of block `block`: `width` floats per row.
    pub fn block_mut(&mut self, block: usize) -> &mut [f32] {
        let len = self.rows * self.width;
        &mut self.spill.as_mut_slice()[block * len..][..len]
    }

    /// Finishes the sums by `epilogue` (and its residual) into the columns of group `g` (of
    /// `per_group` output channels) of `out`, whose rows start `row_len` floats apart;
    /// returns how many are exactly zero.
    pub fn finish(
        &self,
        out: &mut [f32],
        row_len: usize,
        (g, per_group): (usize, usize),
        epilogue: RunEpilogue,
    ) -> usize {
        let spill = (self.spill.as_slice(), self.rows, self.width);
        let first = g * per_group;
        epilogue.apply_tile_from(spill, &mut out[first..], row_len, (first, per_group))
    }
}

/// The scratch of one tile of a sparse-activation method, which holds its sums.
pub(crate) trait Tile: Send {
    fn sums(&mut self) -> &mut TileSums;
}

/// The frame of a sparse-activation multiply of group `g`: tasks of whole runs of tiles
/// (`split` is `task_tiles`' answer), forked once, in parallel. Each task zeroes its tiles'
/// sums, lets `body` accumulate them, and finishes them by the epilogue into the group's
/// channels of the image's NHWC output `out` (pixels `pitch` floats apart) while they are
/// in cache. Each task
/// walks the blocks and chunks of the weights itself, so no thread waits for the others
/// between them. Returns how many outputs are zero.
pub(crate) fn multiply_tasks<T: Tile, const NB: usize>(
    spec: &ConvSpec,
    (g, epilogue): (usize, RunEpilogue),
    panels: &WeightPanels<NB>,
    tiles: &mut [T],
    (tile, per_task): (usize, usize),
    (out, pitch): (&mut [f32], usize),
    body: impl Fn(&mut [T]) + Sync,
) -> usize {
    let mg = spec.filters_per_group();
    let (width, blocks) = (WeightPanels::<NB>::WIDTH, panels.blocks());
    out.par_chunks_mut(per_task * tile * pitch)
        .zip(tiles.par_chunks_mut(per_task))
        .map(|(out, task)| {
            for (out, t) in out.chunks_mut(tile * pitch).zip(task.iter_mut()) {
                t.sums().begin(out.len().div_ceil(pitch), blocks, width);
            }
            body(task);
            out.chunks_mut(tile * pitch)
                .zip(task.iter_mut())
                .map(|(out, t)| t.sums().finish(out, pitch, (g, mg), epilogue))
                .sum::<usize>()
        })
        .sum()
}
