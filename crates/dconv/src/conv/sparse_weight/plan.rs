//! How sparse-weight cuts its work, planned once from the spec and the caches: the window
//! of input a tile reads and the channel blocks that keep it in L1, the tiles that cover the
//! output, the bands of tile rows whose planes stay in L2, and how a run's threads share
//! the bands.

use super::{too_large, SparseWeight};
use crate::cache::CacheSizes;
use crate::conv::ConvSpec;
use crate::error::Result;
use crate::kernels::shifted_axpy::{max_tile_rows, max_twin_rows, vector_floats};
use crate::kernels::Isa;

/// Bytes of window (input patches) a channel block may take: three quarters of the L1d.
fn l1_budget(caches: &CacheSizes) -> usize {
    caches.l1d_share(3, 4)
}

/// Bytes of input planes a band of tile rows may take (at least one tile row) when one
/// thread runs it (and stages one tile's sums at a time): three quarters of the L2.
fn band_budget(caches: &CacheSizes) -> usize {
    caches.l2_share(3, 4)
}

/// The same, with the staged sums of all its tiles, on several threads, which share a band:
/// six times the L2, since every band costs each thread a wait for the others, and the
/// planes each thread converts are read by all.
fn shared_band_budget(caches: &CacheSizes) -> usize {
    caches.l2_share(6, 1)
}

/// Floats of a 64-byte cache line.
pub(super) const LINE: usize = 64 / std::mem::size_of::<f32>();

/// The window one tile reads on `isa`, per channel, and how many channels a block of it
/// holds: what cuts the taps into channel blocks, known from the spec alone.
pub(super) struct WindowShape {
    /// Floats per vector, and output rows (vectors) per tile.
    pub lanes: usize,
    pub rows: usize,
    /// Distinct row phases `r*dh % sh` the kernel reads, and the largest row shift.
    pub row_phases: Vec<usize>,
    pub max_row: usize,
    /// Per kernel column `s`: its column phase `s*dw % sw` and shift `s*dw / sw`.
    pub columns: Vec<(usize, usize)>,
    /// Floats of one patch (`rows + max_row` vectors), and of one channel's patches.
    pub segment: usize,
    pub channel: usize,
    /// Channels per block (the window of a block stays in L1), and blocks.
    pub block: usize,
    pub blocks: usize,
    /// Floats of a thread's window (whole cache lines).
    pub len: usize,
}

impl WindowShape {
    /// The window of tiles as tall as `isa`'s kernel for single filters keeps in registers,
    /// or, with `twins`, its kernel for pairs of filters (no taller: fewer rows make smaller
    /// patches, so never more channel blocks).
    pub fn new(spec: &ConvSpec, isa: Isa, caches: &CacheSizes, twins: bool) -> Self {
        let [kr, ks] = spec.kernel;
        let lanes = vector_floats(isa);
        let max_rows = if twins {
            max_twin_rows(isa)
        } else {
            max_tile_rows(isa)
        };
        let rows = tile_rows(spec.out_height(), max_rows);
        let mut row_phases: Vec<usize> = (0..kr).map(|r| spec.row_phase(r).0).collect();
        row_phases.sort_unstable();
        row_phases.dedup();
        let max_row = spec.row_phase(kr - 1).1;
        let segment = (rows + max_row) * lanes;
        let channel = row_phases.len() * ks * segment;
        let block = (l1_budget(caches) / (4 * channel)).clamp(1, spec.channels);
        WindowShape {
            lanes,
            rows,
            row_phases,
            max_row,
            columns: (0..ks).map(|s| spec.col_phase(s)).collect(),
            segment,
            channel,
            block,
            blocks: spec.channels.div_ceil(block),
            len: (block * channel).next_multiple_of(LINE),
        }
    }
}

/// How tiles of `rows x lanes` outputs cover the output.
pub(super) struct TileGrid {
    /// Floats per tile.
    pub tile_len: usize,
    /// Tiles down and across the output.
    pub tiles_y: usize,
    pub tiles_x: usize,
    /// When the last column of tiles has at most half a vector of outputs: the rows of its
    /// tiles folded into the two halves of each vector (see [`Fold`]).
    pub fold: Option<Fold>,
}

impl TileGrid {
    pub fn new(spec: &ConvSpec, window: &WindowShape) -> Self {
        let (rows, lanes) = (window.rows, window.lanes);
        let out_w = spec.out_width();
        let tiles_x = out_w.div_ceil(lanes);
        let last_column = out_w - (tiles_x - 1) * lanes;
        let fold = (last_column <= lanes / 2 && rows.is_multiple_of(2)).then_some(Fold {
            rows: rows / 2,
            half: lanes / 2,
        });
        TileGrid {
            tile_len: rows * lanes,
            tiles_y: spec.out_height().div_ceil(rows),
            tiles_x,
            fold,
        }
    }
}

/// The last column of tiles, when it holds at most half a vector of outputs (a 56-wide
/// output in vectors of 16: 3.5 vectors), computed folded: the upper `rows` rows of a tile
/// in the low `half` lanes of each vector and the lower `rows` rows in the high ones, so
/// that its tiles take `rows` vectors instead of `2 * rows`, half of them wasted. A kernel
/// row shift moves both halves alike, so the taps are the same.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fold {
    pub rows: usize,
    pub half: usize,
}

/// How a layer's tile rows are cut into bands, and the shape of a band's planes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bands {
    /// Tile rows per band.
    pub tile_rows: usize,
    /// Plane rows of a band (`tile_rows * rows + max_row`); floats of one plane's row; floats
    /// from a channel's planes to the next channel's, within a plane row; and from one plane
    /// row (of every channel and phase) to the next.
    pub plane_rows: usize,
    pub plane_w: usize,
    pub channel_stride: usize,
    pub row_stride: usize,
}

impl Bands {
    /// How bands are cut on one thread, and on several, for `caches`: as many tile rows as
    /// keep a band's planes (and, when threads share it, its staged sums) within budget.
    pub fn for_layer(
        spec: &ConvSpec,
        window: &WindowShape,
        grid: &TileGrid,
        caches: &CacheSizes,
    ) -> Result<[Bands; 2]> {
        let [sh, sw] = spec.stride;
        let [_, padded_w] = spec.padded_size()?;
        let (rows, max_row) = (window.rows, window.max_row);
        let max_column = window.columns.last().map_or(0, |&(_, shift)| shift);
        // Plane rows cover the padded width and every patch a tile reads, even past the
        // output; a band's planes hold the plane rows its tiles read.
        let plane_w = padded_w
            .div_ceil(sw)
            .max(grid.tiles_x * window.lanes + max_column);
        let plane_row_bytes = (spec.channels * sh * sw)
            .checked_mul(plane_w * 4)
            .ok_or_else(too_large)?;
        let tile_row_bytes = (grid.tiles_x * spec.filters)
            .checked_mul(grid.tile_len * 4)
            .ok_or_else(too_large)?;
        // A band's planes, plus its staged sums when threads share it.
        let band_bytes = |band: usize, shared: bool| {
            let staged = if shared { band * tile_row_bytes } else { 0 };
            (band * rows + max_row)
                .saturating_mul(plane_row_bytes)
                .saturating_add(staged)
        };
        let within = |budget: usize, shared: bool| -> Result<Bands> {
            let tile_rows = (1..grid.tiles_y)
                .take_while(|&band| band_bytes(band + 1, shared) <= budget)
                .last()
                .map_or(1, |band| band + 1);
            let plane_rows = tile_rows * rows + max_row;
            let channel_stride = (sh * sw).checked_mul(plane_w).ok_or_else(too_large)?;
            let row_stride = spec
                .channels
                .checked_mul(channel_stride)
                .ok_or_else(too_large)?;
            plane_rows.checked_mul(row_stride).ok_or_else(too_large)?;
            Ok(Bands {
                tile_rows,
                plane_rows,
                plane_w,
                channel_stride,
                row_stride,
            })
        };
        Ok([
            within(band_budget(caches), false)?,
            within(shared_band_budget(caches), true)?,
        ])
    }
}

/// Rows per tile for an output of `height` rows, at most `max`: the count in
/// `max/2 ..= max` that computes the fewest rows past the output; on ties, one that makes an
/// even number of tile rows (two threads then take equal shares of whole tile rows), then
/// the largest. So 15, 30, 60, 120 and 240 rows take tiles of 15, and 224 takes 16.
fn tile_rows(height: usize, max: usize) -> usize {
    if height <= max {
        return height.max(1);
    }
    (max.div_ceil(2)..=max)
        .rev()
        .min_by_key(|&rows| {
            let tiles = height.div_ceil(rows);
            (tiles * rows, tiles % 2)
        })
        .expect("non-empty range")
}

/// How a run splits its threads over bands, and the scratch each group of threads takes.
pub(super) struct RunShape {
    /// The bands, how many groups of threads run bands at once, and threads per band.
    pub g: Bands,
    pub groups: usize,
    pub jobs: usize,
    /// Floats of planes, of staged sums, and of staged sums and windows, per group.
    pub planes_len: usize,
    pub staged_len: usize,
    pub partial_len: usize,
}

impl RunShape {
    /// Floats of workspace a run takes: every group's planes, then its staged sums and
    /// windows, from a cache line's start.
    pub fn floats(&self) -> usize {
        let planes = self.groups.saturating_mul(self.planes_len);
        let partials = self.groups.saturating_mul(self.partial_len);
        planes.saturating_add(partials).saturating_add(LINE)
    }
}

impl SparseWeight {
    pub(super) fn run_shape(&self, threads: usize) -> RunShape {
        let s = &self.spec;
        // With enough tile rows, each thread takes whole bands of its own: no wait per band,
        // and no thread reads planes another converted. Otherwise, or where whole tile rows
        // would leave one thread an eighth more than its share (3 tile rows on 2 threads:
        // twice the other's), they share each band.
        let tiles_y = self.grid.tiles_y;
        let even = tiles_y.div_ceil(threads) * threads * 8 <= tiles_y * 9;
        let own = threads > 1 && tiles_y >= threads && even;
        let (g, groups, jobs) = if own {
            (self.bands[0], threads, 1)
        } else {
            (self.bands[usize::from(threads > 1)], 1, threads)
        };
        let planes_len = g.plane_rows * g.row_stride;
        // A band of one thread stages one tile at a time; a shared band, all its tiles.
        let staged_tiles = if jobs == 1 {
            1
        } else {
            g.tile_rows * self.grid.tiles_x
        };
        let staged_len = (staged_tiles * s.filters * self.grid.tile_len).next_multiple_of(LINE);
        // Per group: staged sums, then one window per thread; whole lines, and one line of
        // slack to start them all on a line.
        let partial_len = staged_len + jobs * self.window.len;
        RunShape {
            g,
            groups,
            jobs,
            planes_len,
            staged_len,
            partial_len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_rows_waste_least() {
        assert_eq!(tile_rows(15, 16), 15);
        assert_eq!(tile_rows(30, 16), 15);
        assert_eq!(tile_rows(60, 16), 15);
        assert_eq!(tile_rows(224, 16), 16);
        assert_eq!(tile_rows(240, 16), 15);
        assert_eq!(tile_rows(1, 16), 1);
        assert_eq!(tile_rows(0, 8), 1);
        assert_eq!(tile_rows(17, 8), 6);
    }
}
