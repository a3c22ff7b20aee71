//! Tiles of output rows: the unit of parallel work of the sparse-activation methods.

use std::ops::Range;

/// Output rows (pixels) per tile: enough tiles to balance the threads, few enough that a
/// tile's sparse rows stay in cache.
pub(crate) fn rows_per_tile(rows: usize, max: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    rows.div_ceil(4 * threads).clamp(8, max)
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
