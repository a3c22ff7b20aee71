//! Tiles of output rows: the unit of parallel work of the sparse-activation methods.

use std::ops::Range;

/// Most output rows in a tile: the tile's sparse rows and its spill of sums stay in L2.
const MAX_TILE_ROWS: usize = 256;

/// Tiles for work cut into tasks of whole runs of tiles, each task an equal share of the
/// rows: `(rows per tile, tiles per task)`, tiles of at most [`MAX_TILE_ROWS`]. One task per
/// thread, or on several threads two when each still gets a full tile, so that a thread
/// slowed by a neighbour on this shared machine hands work to the others. (Every task walks all of a layer's
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

/// Grows `scratch` to hold one entry per tile (never shrinks, so nothing is allocated once
/// the largest layer has run).
pub(crate) fn ensure_tiles<S: Default>(scratch: &mut Vec<S>, tiles: usize) {
    if scratch.len() < tiles {
        scratch.resize_with(tiles, S::default);
    }
}
