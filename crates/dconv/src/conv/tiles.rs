//! Parallel work over tiles of output rows, shared by the methods that compute an image's
//! output row block by row block.

use rayon::prelude::*;
use std::ops::Range;
use std::time::{Duration, Instant};

/// Output rows (pixels) per tile: enough tiles to balance the threads, few enough that a
/// tile's sparse rows stay in cache.
pub(crate) fn rows_per_tile(rows: usize, max: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    rows.div_ceil(4 * threads).clamp(8, max)
}

/// Calls `work(rows, out_rows, scratch)` for each tile of `tile` output rows of one image, in
/// parallel, each tile with its own scratch (grown to the tile count, then reused). `work`
/// returns the time it spent converting and multiplying; the function returns the wall
/// time of the whole phase split in the proportion of those per-thread sums.
pub(crate) fn for_each_tile<S: Default + Send>(
    out: &mut [f32],
    row_len: usize,
    tile: usize,
    scratch: &mut Vec<S>,
    work: impl Fn(Range<usize>, &mut [f32], &mut S) -> (Duration, Duration) + Sync,
) -> (Duration, Duration) {
    let rows = out.len() / row_len;
    let tiles = rows.div_ceil(tile);
    if scratch.len() < tiles {
        scratch.resize_with(tiles, S::default);
    }
    let start = Instant::now();
    let (convert, multiply) = out
        .par_chunks_mut(tile * row_len)
        .zip(scratch.par_iter_mut())
        .enumerate()
        .map(|(t, (out_rows, s))| {
            let first = t * tile;
            work(first..first + out_rows.len() / row_len, out_rows, s)
        })
        .reduce(
            || (Duration::ZERO, Duration::ZERO),
            |a, b| (a.0 + b.0, a.1 + b.1),
        );
    let wall = start.elapsed();
    let busy = (convert + multiply).as_secs_f64();
    if busy == 0.0 {
        return (Duration::ZERO, wall);
    }
    let convert_share = wall.mul_f64(convert.as_secs_f64() / busy);
    (convert_share, wall - convert_share)
}

/// Measures `f`, adding its duration to `total`.
#[inline]
pub(crate) fn timed<T>(total: &mut Duration, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    *total += start.elapsed();
    out
}
