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
//! ([`shifted_axpy`]). For a tile and a block of channels, the patches every tap reads are
//! first copied into a small window that stays in L1 across all filters: per channel, row
//! phase and kernel column, `rows + max_row` rows of one vector each, so every tap reads
//! whole, aligned vectors and a 3 x 3 kernel copies each input value about
//! `3 (1 + 2 / rows)` times, not 9.
//!
//! Work goes by bands of tile rows small enough that their planes stay in L2: the band's
//! input rows are transposed into planes, stored row by row (row `y` of every channel's
//! planes, then row `y + 1`), so that transposing one input row writes one stretch of memory
//! rather than a short piece of each of hundreds of planes (4-9 % faster on 128-256
//! channels, the same on 64 and 512); and each tile is computed into a staging buffer
//! (`[filter][row][lane]`) that is transposed into the channels-last output through the
//! epilogue. A band that one thread runs stages and finishes one tile at a time, so that
//! its sums never leave cache. Threads that share a band (when tile rows are fewer than
//! threads) share its (tile, filter chunk) items, stage all its tiles, and finish them
//! together once all are done; when tiles are fewer than threads, filters are split into
//! chunks so that every thread has work.

use super::run_loop::{over_images, timed};
use super::{ConvKernel, ConvSpec, Epilogue, Timing, Workspace};
use crate::cache::CacheSizes;
use crate::error::{Error, Result};
use crate::kernels::multiversion::vectorized;
use crate::kernels::shifted_axpy::{
    max_tile_rows, shifted_axpy, vector_floats, Tap, TapBounds, TapList,
};
use crate::kernels::transpose::{transpose, transpose_finish, Finish};
use crate::kernels::Isa;
use crate::limits::saturating_product;
use rayon::prelude::*;
use std::mem::size_of;
use std::ops::Range;
use std::time::Duration;

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
/// planes each thread converts are read by all (256->256 at 60x60 on 2 threads, 2 MB L2:
/// 1.56x the 1-thread speed with bands of one tile row, 1.9x with the whole image in one
/// band).
fn shared_band_budget(caches: &CacheSizes) -> usize {
    caches.l2_share(6, 1)
}

/// Floats of a 64-byte cache line.
const LINE: usize = 64 / std::mem::size_of::<f32>();

pub(crate) struct SparseWeight {
    spec: ConvSpec,
    isa: Isa,
    epilogue: Epilogue,
    /// Taps (pairs and single taps) by channel block, then filter; offsets index the window.
    taps: TapList,
    /// From `starts[b * filters + m]` to `starts[b * filters + m + 1]` are filter `m`'s taps
    /// in channel block `b`.
    starts: Vec<TapBounds>,
    /// Channels per block, and blocks.
    block: usize,
    blocks: usize,
    /// Output rows and columns (one vector) per tile, and floats per tile.
    rows: usize,
    lanes: usize,
    tile_len: usize,
    /// Tiles down and across the output.
    tiles_y: usize,
    tiles_x: usize,
    /// When the last column of tiles has at most half a vector of outputs: the rows of its
    /// tiles folded into the two halves of each vector (see [`Fold`]).
    fold: Option<Fold>,
    /// How bands are cut on one thread, and on several.
    bands: [Bands; 2],
    /// Distinct row phases `r*dh % sh` the kernel reads, and the largest row shift.
    row_phases: Vec<usize>,
    max_row: usize,
    /// Per kernel column `s`: its column phase `s*dw % sw` and shift `s*dw / sw`.
    columns: Vec<(usize, usize)>,
    /// Floats of one patch (`rows + max_row` vectors).
    segment: usize,
    /// Floats of a thread's window (whole cache lines).
    window_len: usize,
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
        let [sh, sw] = spec.stride;
        let [kr, ks] = spec.kernel;
        let [_, padded_w] = spec.padded_size()?;
        let (out_h, out_w) = (spec.out_height(), spec.out_width());
        let too_large = || Error::Overflow("sparse-weight input planes");

        let WindowShape {
            lanes,
            rows,
            row_phases,
            max_row,
            segment,
            window_channel,
            block,
            blocks,
        } = WindowShape::new(&spec, isa, caches);
        let tile_len = rows * lanes;
        let (tiles_y, tiles_x) = (out_h.div_ceil(rows), out_w.div_ceil(lanes));
        let last_column = out_w - (tiles_x - 1) * lanes;
        let fold = (last_column <= lanes / 2 && rows.is_multiple_of(2)).then_some(Fold {
            rows: rows / 2,
            half: lanes / 2,
        });

        let columns: Vec<(usize, usize)> = (0..ks).map(|s| spec.col_phase(s)).collect();
        let max_column = spec.col_phase(ks - 1).1;

        // Plane rows cover the padded width and every patch a tile reads, even past the
        // output; a band's planes hold the plane rows its tiles read.
        let plane_w = padded_w.div_ceil(sw).max(tiles_x * lanes + max_column);
        let plane_row_bytes = (spec.channels * sh * sw)
            .checked_mul(plane_w * 4)
            .ok_or_else(too_large)?;
        let tile_row_bytes = (tiles_x * spec.filters)
            .checked_mul(tile_len * 4)
            .ok_or_else(too_large)?;
        // A band's planes, plus its staged sums when threads share it.
        let band_bytes = |band: usize, shared: bool| {
            let staged = if shared { band * tile_row_bytes } else { 0 };
            (band * rows + max_row)
                .saturating_mul(plane_row_bytes)
                .saturating_add(staged)
        };
        let bands_within = |budget: usize, shared: bool| -> Result<Bands> {
            let tile_rows = (1..tiles_y)
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
        let bands = [
            bands_within(band_budget(caches), false)?,
            bands_within(shared_band_budget(caches), true)?,
        ];

        let window_len = (block * window_channel).next_multiple_of(LINE);

        let (cg, mg) = (spec.channels_per_group(), spec.filters_per_group());
        // Where kernel position (r, s) reads in a channel's part of the window.
        let position_offsets: Vec<usize> = (0..kr)
            .flat_map(|r| {
                let (phase, shift) = spec.row_phase(r);
                let phase = row_phases.binary_search(&phase).expect("listed");
                let row_offset = shift * lanes;
                (0..ks).map(move |s| (phase * ks + s) * segment + row_offset)
            })
            .collect();
        let largest = (block - 1) * window_channel + position_offsets.iter().max().unwrap_or(&0);
        u32::try_from(largest).map_err(|_| too_large())?;
        // Taps one vector apart (kernel rows r and r + 1 at stride 1) become pairs.
        let mut taps = TapList::new(lanes);
        let mut starts = Vec::with_capacity(spec.filters * blocks + 1);
        starts.push(taps.end());
        let mut list = Vec::new();
        for b in 0..blocks {
            for (m, filter) in weights.chunks_exact(cg * kr * ks).enumerate() {
                let group_first = m / mg * cg;
                let channels =
                    (b * block).max(group_first)..((b + 1) * block).min(group_first + cg);
                // Every weight is written and only the non-zeros advance the position: a
                // branch on each weight would mispredict at every sparsity but 0 and 100 %.
                list.resize(channels.len() * kr * ks, Tap::default());
                let mut n = 0;
                for c in channels.clone() {
                    let base = (c - b * block) * window_channel;
                    let kernel = &filter[(c - group_first) * kr * ks..][..kr * ks];
                    for (&weight, &offset) in kernel.iter().zip(&position_offsets) {
                        // Within `largest`, which fits (checked above).
                        let offset = (base + offset) as u32;
                        list[n] = Tap { offset, weight };
                        n += usize::from(weight != 0.0);
                    }
                }
                list.truncate(n);
                starts.push(taps.push_tile(&mut list));
            }
        }
        // Kept for the layer's life: no slack from growing, so that `prepared_bytes` holds.
        taps.shrink_to_fit();
        debug_assert!(taps.span() + tile_len <= window_len + 1);
        Ok(SparseWeight {
            spec,
            isa,
            epilogue,
            taps,
            starts,
            block,
            blocks,
            rows,
            lanes,
            tile_len,
            tiles_y,
            tiles_x,
            fold,
            bands,
            row_phases,
            max_row,
            columns,
            segment,
            window_len,
        })
    }

    /// Transposes the rows of one NHWC image that the band of tile rows from `band_start`
    /// reads into the band's phase planes, a padded row at a time. Only cells inside the
    /// padded image are written: the others are read by dropped positions only.
    fn convert(&self, image: &[f32], g: Bands, band_start: usize, jobs: usize, planes: &mut [f32]) {
        let s = &self.spec;
        let [sh, sw] = s.stride;
        let [padded_h, padded_w] = s.padded_size().expect("validated spec");
        let first = band_start * self.rows;
        let plane_rows = first..(first + g.plane_rows).min(padded_h.div_ceil(sh));
        let (left, width) = (s.padding.left, s.width);
        // An even share of the plane rows (every channel and phase of each) per thread that
        // shares the band, so that each reads whole input rows; a band of its own stays on
        // this thread, whose cache its kernel then reads.
        let per_job = plane_rows.len().div_ceil(jobs.max(1));
        planes[..plane_rows.len() * g.row_stride]
            .par_chunks_mut(g.row_stride)
            .with_min_len(per_job)
            .zip(plane_rows)
            .for_each(|(planes, py)| {
                for (y, ph) in self.row_phases.iter().map(|&ph| (py * sh + ph, ph)) {
                    if y >= padded_h {
                        continue;
                    }
                    let iy = s.unpadded_row(y);
                    for pw in 0..sw.min(padded_w) {
                        // Phase (ph, pw): padded columns x * sw + pw.
                        let row = (ph * sw + pw) * g.plane_w;
                        let len = (padded_w - pw).div_ceil(sw);
                        let (lo, hi) = match iy {
                            Some(_) => {
                                let inside = s.cols_inside(pw, sw, len);
                                (inside.start, inside.end)
                            }
                            None => (len, len),
                        };
                        for c in 0..s.channels {
                            let dst = &mut planes[c * g.channel_stride + row..][..len];
                            dst[..lo].fill(0.0);
                            dst[hi..].fill(0.0);
                        }
                        if let (Some(iy), true) = (iy, hi > lo) {
                            let ix = lo * sw + pw - left;
                            let from = (iy * width + ix) * s.channels;
                            transpose(
                                self.isa,
                                &image[from..],
                                sw * s.channels,
                                &mut planes[row + lo..],
                                g.channel_stride,
                                (hi - lo, s.channels),
                            );
                        }
                    }
                }
            });
    }

    /// Copies what channel block `b` reads for the tile at band plane position `(y0, x0)` into
    /// the window: per channel, row phase and kernel column, `rows + max_row` vectors, or
    /// for a `folded` tile `fold.rows + max_row` vectors of two half rows.
    #[inline(always)]
    fn fill_window<const L: usize>(
        &self,
        planes: Planes,
        b: usize,
        (y0, x0): (usize, usize),
        folded: Option<Fold>,
        window: &mut [f32],
    ) {
        let sw = self.spec.stride[1];
        let vectors = folded.map_or(self.rows, |f| f.rows) + self.max_row;
        let mut segments = window.chunks_exact_mut(self.segment);
        for c in self.block_channels(b) {
            for &ph in &self.row_phases {
                for &(pw, column) in &self.columns {
                    let first =
                        planes.start(c, (ph, pw), sw) + y0 * planes.row_stride() + x0 + column;
                    let dst = segments.next().expect("window holds the block");
                    for (k, dst) in dst.chunks_exact_mut(L).take(vectors).enumerate() {
                        let from = first + k * planes.row_stride();
                        match folded {
                            None => dst.copy_from_slice(&planes.data[from..from + L]),
                            Some(f) => {
                                let lower = from + f.rows * planes.row_stride();
                                let (a, b) = dst.split_at_mut(L / 2);
                                a.copy_from_slice(&planes.data[from..from + L / 2]);
                                b.copy_from_slice(&planes.data[lower..lower + L / 2]);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Hints the cache lines that `fill_window(planes, b, (y0, x0), ..)` reads into L2.
    fn prefetch_window(&self, planes: Planes, b: usize, (y0, x0): (usize, usize)) {
        let sw = self.spec.stride[1];
        let span = self.lanes + self.columns.iter().map(|c| c.1).max().unwrap_or(0);
        for c in self.block_channels(b) {
            for &ph in &self.row_phases {
                for pw in 0..sw {
                    let plane = planes.start(c, (ph, pw), sw);
                    for k in 0..self.rows + self.max_row {
                        let from = plane + (y0 + k) * planes.row_stride() + x0;
                        for line in planes.data[from..from + span].chunks(LINE) {
                            crate::kernels::prefetch_l2(line);
                        }
                    }
                }
            }
        }
    }

    /// The channels of channel block `b`.
    fn block_channels(&self, b: usize) -> Range<usize> {
        b * self.block..((b + 1) * self.block).min(self.spec.channels)
    }

    /// Filters `m` of chunk `chunk` out of `chunks`.
    fn chunk_filters(&self, chunk: usize, chunks: usize) -> Range<usize> {
        let m = self.spec.filters;
        chunk * m / chunks..(chunk + 1) * m / chunks
    }

    /// Where item `k` (tile `k / chunks` of the band, filter chunk `k % chunks`) starts in
    /// the band's staging buffer. Every tile has a slot of `filters * tile_len` floats; a
    /// folded tile fills the start of its slot.
    fn staged_at(&self, k: usize, chunks: usize) -> usize {
        let (tile, filters) = (k / chunks, self.chunk_filters(k % chunks, chunks));
        tile * self.spec.filters * self.tile_len
            + filters.start * self.tile_len_at(tile % self.tiles_x)
    }

    /// How the tiles of column `tile_x` are folded, if they are.
    fn folded(&self, tile_x: usize) -> Option<Fold> {
        self.fold.filter(|_| tile_x + 1 == self.tiles_x)
    }

    /// Floats of one filter's sums in the tiles of column `tile_x`.
    fn tile_len_at(&self, tile_x: usize) -> usize {
        self.folded(tile_x)
            .map_or(self.tile_len, |f| f.rows * self.lanes)
    }

    /// Computes `items` of a band whose tiles are cut into `chunks` filter chunks into
    /// `staged` (which starts where the first item does), with `window` as the thread's
    /// window.
    fn multiply(
        &self,
        planes: Planes,
        chunks: usize,
        items: Range<usize>,
        staged: &mut [f32],
        window: &mut [f32],
    ) {
        let origin = self.staged_at(items.start, chunks);
        for k in items {
            let (tile, filters) = (k / chunks, self.chunk_filters(k % chunks, chunks));
            let (tile_y, tile_x) = (tile / self.tiles_x, tile % self.tiles_x);
            let at = (tile_y * self.rows, tile_x * self.lanes);
            let (folded, tile_len) = (self.folded(tile_x), self.tile_len_at(tile_x));
            let from = self.staged_at(k, chunks) - origin;
            let sums = &mut staged[from..from + filters.len() * tile_len];
            vectorized(
                self.isa,
                #[inline(always)]
                || sums.fill(0.0),
            );
            for b in 0..self.blocks {
                // Compiled for the vector width, so that each vector moves in one go.
                vectorized(
                    self.isa,
                    #[inline(always)]
                    || match self.lanes {
                        16 => self.fill_window::<16>(planes, b, at, folded, window),
                        8 => self.fill_window::<8>(planes, b, at, folded, window),
                        _ => self.fill_window::<4>(planes, b, at, folded, window),
                    },
                );
                if b + 1 < self.blocks {
                    // The planes are larger than L2: ask for the next block's while this runs.
                    self.prefetch_window(planes, b + 1, at);
                }
                let first = b * self.spec.filters;
                let bounds = &self.starts[first + filters.start..=first + filters.end];
                shifted_axpy(self.isa, window, &self.taps, bounds, sums);
            }
        }
    }

    /// Splits `items` into `jobs` even parts run in parallel, each with its share of
    /// `staged` and of the windows in `scratch`.
    fn split(
        &self,
        planes: Planes,
        chunks: usize,
        items: Range<usize>,
        staged: &mut [f32],
        scratch: &mut [f32],
        jobs: usize,
    ) {
        if jobs <= 1 {
            return self.multiply(
                planes,
                chunks,
                items,
                staged,
                &mut scratch[..self.window_len],
            );
        }
        let half = jobs / 2;
        let mid = items.start + items.len() * half / jobs;
        let at = self.staged_at(mid, chunks) - self.staged_at(items.start, chunks);
        let (staged_a, staged_b) = staged.split_at_mut(at);
        let (scratch_a, scratch_b) = scratch.split_at_mut(half * self.window_len);
        rayon::join(
            || self.split(planes, chunks, items.start..mid, staged_a, scratch_a, half),
            || {
                self.split(
                    planes,
                    chunks,
                    mid..items.end,
                    staged_b,
                    scratch_b,
                    jobs - half,
                )
            },
        );
    }

    /// Writes output rows `out_rows` of the band starting at tile row `band_start` from the
    /// staged sums into `out` (those rows, channels-last) through the epilogue; returns the
    /// zeros written.
    fn finish(
        &self,
        staged: &[f32],
        band_start: usize,
        out_rows: Range<usize>,
        out: &mut [f32],
    ) -> usize {
        let (ow, filters) = (self.spec.out_width(), self.spec.filters);
        out.par_chunks_mut(ow * filters)
            .zip(out_rows)
            .map(|(row, y)| {
                let tile_row = y / self.rows - band_start;
                (0..self.tiles_x)
                    .map(|tx| {
                        let tile = tile_row * self.tiles_x + tx;
                        let sums = &staged[tile * filters * self.tile_len..];
                        self.finish_tile_row(sums, y % self.rows, tx, row)
                    })
                    .sum::<usize>()
            })
            .sum()
    }

    /// Writes row `i` of the tile in column `tile_x` whose sums (`[filter][row][lane]`) are
    /// `sums` into `row`, one channels-last output row, through the epilogue (bias and
    /// activation applied in registers, on the way out of the transpose); returns the zeros
    /// written.
    fn finish_tile_row(&self, sums: &[f32], i: usize, tile_x: usize, row: &mut [f32]) -> usize {
        let (ow, filters) = (self.spec.out_width(), self.spec.filters);
        let finish = Finish {
            bias: &self.epilogue.bias,
            curve: self.epilogue.curve(),
        };
        // Row i of a folded tile is row i % f.rows of the half i / f.rows.
        let at = match self.folded(tile_x) {
            Some(f) => i % f.rows * self.lanes + i / f.rows * f.half,
            None => i * self.lanes,
        };
        let cols = self.lanes.min(ow - tile_x * self.lanes);
        transpose_finish(
            self.isa,
            &sums[at..],
            self.tile_len_at(tile_x),
            &mut row[tile_x * self.lanes * filters..],
            filters,
            (filters, cols),
            Some(finish),
        )
    }
}

/// The last column of tiles, when it holds at most half a vector of outputs (a 56-wide
/// output in vectors of 16: 3.5 vectors), computed folded: the upper `rows` rows of a tile
/// in the low `half` lanes of each vector and the lower `rows` rows in the high ones, so
/// that its tiles take `rows` vectors instead of `2 * rows`, half of them wasted. A kernel
/// row shift moves both halves alike, so the taps are the same.
#[derive(Debug, Clone, Copy)]
struct Fold {
    rows: usize,
    half: usize,
}

/// How a layer's tile rows are cut into bands, and the shape of a band's planes.
#[derive(Debug, Clone, Copy)]
struct Bands {
    /// Tile rows per band.
    tile_rows: usize,
    /// Plane rows of a band (`tile_rows * rows + max_row`); floats of one plane's row; floats
    /// from a channel's planes to the next channel's, within a plane row; and from one plane
    /// row (of every channel and phase) to the next.
    plane_rows: usize,
    plane_w: usize,
    channel_stride: usize,
    row_stride: usize,
}

/// A band's planes and their shape.
#[derive(Clone, Copy)]
struct Planes<'a> {
    data: &'a [f32],
    bands: Bands,
}

impl Planes<'_> {
    /// Where the plane of channel `c` and phase `(ph, pw)` starts, at column stride `sw`.
    #[inline(always)]
    fn start(&self, c: usize, (ph, pw): (usize, usize), sw: usize) -> usize {
        c * self.bands.channel_stride + (ph * sw + pw) * self.bands.plane_w
    }

    /// Floats from a plane row to the next.
    #[inline(always)]
    fn row_stride(&self) -> usize {
        self.bands.row_stride
    }
}

/// The window one tile reads on `isa`, per channel, and how many channels a block of it
/// holds: what cuts the taps into channel blocks, known from the spec alone.
struct WindowShape {
    /// Floats per vector, and output rows (vectors) per tile.
    lanes: usize,
    rows: usize,
    /// Distinct row phases `r*dh % sh` the kernel reads, and the largest row shift.
    row_phases: Vec<usize>,
    max_row: usize,
    /// Floats of one patch (`rows + max_row` vectors), and of one channel's patches.
    segment: usize,
    window_channel: usize,
    /// Channels per block (the window of a block stays in L1), and blocks.
    block: usize,
    blocks: usize,
}

impl WindowShape {
    fn new(spec: &ConvSpec, isa: Isa, caches: &CacheSizes) -> Self {
        let [kr, ks] = spec.kernel;
        let lanes = vector_floats(isa);
        let rows = tile_rows(spec.out_height(), max_tile_rows(isa));
        let mut row_phases: Vec<usize> = (0..kr).map(|r| spec.row_phase(r).0).collect();
        row_phases.sort_unstable();
        row_phases.dedup();
        let max_row = spec.row_phase(kr - 1).1;
        let segment = (rows + max_row) * lanes;
        let window_channel = row_phases.len() * ks * segment;
        let block = (l1_budget(caches) / (4 * window_channel)).clamp(1, spec.channels);
        WindowShape {
            lanes,
            rows,
            row_phases,
            max_row,
            segment,
            window_channel,
            block,
            blocks: spec.channels.div_ceil(block),
        }
    }
}

/// At most how many bytes the taps of a layer with `nonzeros` non-zero weights take, on any
/// ISA with this CPU's caches (saturating): one tap per non-zero weight (a pair of taps takes less than two), and
/// where each filter's taps start in each channel block. A pruned layer keeps a fraction of
/// its dense size, and a memory budget counts only that.
pub(crate) fn prepared_bytes(spec: &ConvSpec, nonzeros: usize) -> usize {
    let blocks = Isa::ALL
        .iter()
        .map(|&isa| WindowShape::new(spec, isa, &CacheSizes::detect()).blocks)
        .max()
        .unwrap_or(1);
    let starts = saturating_product(&[spec.filters, blocks, size_of::<TapBounds>()]);
    nonzeros
        .saturating_mul(size_of::<Tap>())
        .saturating_add(starts)
        .saturating_add(size_of::<TapBounds>())
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
struct RunShape {
    /// The bands, how many groups of threads run bands at once, and threads per band.
    g: Bands,
    groups: usize,
    jobs: usize,
    /// Floats of planes, of staged sums, and of staged sums and windows, per group.
    planes_len: usize,
    staged_len: usize,
    partial_len: usize,
}

impl SparseWeight {
    fn run_shape(&self, threads: usize) -> RunShape {
        let s = &self.spec;
        // With enough tile rows, each thread takes whole bands of its own: no wait per band,
        // and no thread reads planes another converted. Otherwise they share each band.
        let own = threads > 1 && self.tiles_y >= threads;
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
            g.tile_rows * self.tiles_x
        };
        let staged_len = (staged_tiles * s.filters * self.tile_len).next_multiple_of(LINE);
        // Per group: staged sums, then one window per thread; whole lines, and one line of
        // slack to start them all on a line.
        let partial_len = staged_len + jobs * self.window_len;
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

impl ConvKernel for SparseWeight {
    fn scratch_bytes(&self) -> usize {
        let shape = self.run_shape(rayon::current_num_threads().max(1));
        let planes = shape.groups.saturating_mul(shape.planes_len);
        let partials = shape.groups.saturating_mul(shape.partial_len);
        let floats = planes.saturating_add(partials).saturating_add(LINE);
        floats.saturating_mul(std::mem::size_of::<f32>())
    }

    fn run(&self, input: &[f32], output: &mut [f32], ws: &mut Workspace) -> Timing {
        let s = &self.spec;
        let RunShape {
            g,
            groups,
            jobs,
            planes_len,
            staged_len,
            partial_len,
        } = self.run_shape(rayon::current_num_threads().max(1));
        if ws.planes.len() < groups * planes_len {
            ws.planes.resize(groups * planes_len, 0.0);
        }
        if ws.partials.len() < groups * partial_len + LINE {
            ws.partials.resize(groups * partial_len + LINE, 0.0);
        }
        let skip = ws.partials.as_ptr().align_offset(64).min(LINE);
        let planes = &mut ws.planes[..groups * planes_len];
        let partials = &mut ws.partials[skip..skip + groups * partial_len];
        let run = BandRun {
            g,
            jobs,
            staged_len,
        };
        over_images(s, (input, output), |image, out, clock| {
            let scratch = Scratch {
                planes: &mut *planes,
                partials: &mut *partials,
            };
            // Each band converts its planes just before it multiplies.
            let zeros = clock.interleaved(|| {
                self.split_bands(image, run, 0..self.tiles_y, out, scratch, groups)
            });
            clock.count_zeros(zeros);
        })
    }
}

/// One thread group's buffers: its planes, then its staged sums and windows.
struct Scratch<'a> {
    planes: &'a mut [f32],
    partials: &'a mut [f32],
}

/// How a group runs its bands: their shape, the threads sharing each band, the floats of
/// its staged sums.
#[derive(Clone, Copy)]
struct BandRun {
    g: Bands,
    jobs: usize,
    staged_len: usize,
}

impl SparseWeight {
    /// Splits tile rows `tile_rows` into `groups` even parts run in parallel, each with its
    /// share of `out` (which starts at their first output row) and its own scratch; returns
    /// the zeros written and the first group's conversion time.
    fn split_bands(
        &self,
        image: &[f32],
        run: BandRun,
        tile_rows: Range<usize>,
        out: &mut [f32],
        scratch: Scratch,
        groups: usize,
    ) -> (usize, Duration) {
        if groups <= 1 {
            return self.run_bands(image, run, tile_rows, out, scratch);
        }
        let half = groups / 2;
        let mid = tile_rows.start + tile_rows.len() * half / groups;
        let row_len = self.spec.out_width() * self.spec.filters;
        let (out_a, out_b) = out.split_at_mut((mid - tile_rows.start) * self.rows * row_len);
        let planes_len = scratch.planes.len() / groups;
        let partial_len = scratch.partials.len() / groups;
        let (planes_a, planes_b) = scratch.planes.split_at_mut(half * planes_len);
        let (partials_a, partials_b) = scratch.partials.split_at_mut(half * partial_len);
        let a = Scratch {
            planes: planes_a,
            partials: partials_a,
        };
        let b = Scratch {
            planes: planes_b,
            partials: partials_b,
        };
        let ((zeros_a, convert), (zeros_b, _)) = rayon::join(
            || self.split_bands(image, run, tile_rows.start..mid, out_a, a, half),
            || self.split_bands(image, run, mid..tile_rows.end, out_b, b, groups - half),
        );
        (zeros_a + zeros_b, convert)
    }

    /// Computes tile rows `tile_rows` of one image, band by band, into `out` (which starts
    /// at their first output row); returns the zeros written and the conversion time.
    fn run_bands(
        &self,
        image: &[f32],
        run: BandRun,
        tile_rows: Range<usize>,
        out: &mut [f32],
        scratch: Scratch,
    ) -> (usize, Duration) {
        let s = &self.spec;
        let g = run.g;
        let (staged, windows) = scratch.partials.split_at_mut(run.staged_len);
        let row_len = s.out_width() * s.filters;
        let first_row = tile_rows.start * self.rows;
        let (mut zeros, mut convert) = (0, Duration::ZERO);
        for band_start in tile_rows.clone().step_by(g.tile_rows) {
            let ((), converting) =
                timed(|| self.convert(image, g, band_start, run.jobs, scratch.planes));
            convert += converting;
            let band_rows = g.tile_rows.min(tile_rows.end - band_start);
            let tiles = band_rows * self.tiles_x;
            let planes = Planes {
                data: scratch.planes,
                bands: g,
            };
            let rows =
                band_start * self.rows..((band_start + band_rows) * self.rows).min(s.out_height());
            let out =
                &mut out[(rows.start - first_row) * row_len..(rows.end - first_row) * row_len];
            if run.jobs == 1 {
                // Alone on the band: each tile is finished as soon as it is computed, while
                // its sums are in cache, so that the band's planes have L2 to themselves.
                for tile in 0..tiles {
                    let window = &mut windows[..self.window_len];
                    self.multiply(planes, 1, tile..tile + 1, staged, window);
                    let (tile_y, tile_x) = (tile / self.tiles_x, tile % self.tiles_x);
                    let first = tile_y * self.rows;
                    for (i, row) in out
                        .chunks_exact_mut(row_len)
                        .skip(first)
                        .take(self.rows)
                        .enumerate()
                    {
                        zeros += self.finish_tile_row(staged, i, tile_x, row);
                    }
                }
                continue;
            }
            // Enough items for every thread: split filters when tiles are few.
            let chunks = run.jobs.div_ceil(tiles).min(s.filters);
            let items = tiles * chunks;
            let jobs = run.jobs.min(items);
            self.split(planes, chunks, 0..items, staged, windows, jobs);
            zeros += self.finish(staged, band_start, rows, out);
        }
        (zeros, convert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::Activation;
    use crate::synth::{random_sparse, Rng};

    /// Sparse-weight prepared for `spec` on `isa`, blocked for `caches`.
    fn blocked(spec: ConvSpec, isa: Isa, caches: &CacheSizes) -> SparseWeight {
        let weights = vec![1.0; spec.weight_len().unwrap()];
        let epilogue = Epilogue {
            bias: vec![0.0; spec.filters],
            activation: Activation::None,
            isa,
        };
        SparseWeight::blocked_for(spec, &weights, epilogue, isa, caches).unwrap()
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
        for isa in Isa::ALL {
            for caches in &CACHES {
                let conv = blocked(spec, isa, caches);
                assert!(conv.blocks > 1, "{isa}, {caches}: {} blocks", conv.blocks);
                let band = conv.bands[0].tile_rows;
                assert!(
                    band < conv.tiles_y,
                    "{isa}, {caches}: band {band} of {}",
                    conv.tiles_y
                );
            }
        }
    }

    /// The shape of `sparse_weight_with_shared_bands_on_four_threads` (in
    /// tests/methods_match_reference.rs) has fewer tile rows than 4 threads and more than
    /// one band of them at the shared budget, on every ISA.
    #[test]
    fn the_shared_band_test_shape_needs_two_bands() {
        let spec = ConvSpec::new(64, 18, 1500, 80, [3, 3]).with_padding([1; 4]);
        for isa in Isa::ALL {
            for caches in &CACHES {
                let conv = blocked(spec, isa, caches);
                let shared = conv.bands[1].tile_rows;
                assert!(
                    conv.tiles_y < 4 && shared < conv.tiles_y,
                    "{isa}, {caches}: {shared} of {}",
                    conv.tiles_y
                );
            }
        }
    }

    /// The shape of `sparse_weight_with_a_folded_last_column` (in
    /// tests/methods_match_reference.rs) folds its last column of tiles on every ISA; the
    /// VGG-16 sizes that fold are the 56-wide ones.
    #[test]
    fn the_fold_test_shape_folds() {
        for isa in Isa::supported() {
            for (spec, folds) in [
                (
                    ConvSpec::new(40, 12, 18, 20, [3, 3]).with_padding([1; 4]),
                    true,
                ),
                (
                    ConvSpec::new(256, 56, 56, 256, [3, 3]).with_padding([1; 4]),
                    isa == Isa::Avx512,
                ),
                (
                    ConvSpec::new(512, 28, 28, 512, [3, 3]).with_padding([1; 4]),
                    false,
                ),
            ] {
                let weights = vec![1.0; spec.weight_len().unwrap()];
                let epilogue = Epilogue {
                    bias: vec![0.0; spec.filters],
                    activation: Activation::None,
                    isa,
                };
                let conv = SparseWeight::new(spec, &weights, epilogue, isa).unwrap();
                assert_eq!(conv.fold.is_some(), folds, "{isa} {spec:?}");
            }
        }
    }

    /// The bound a memory budget counts holds what every ISA's layout keeps, over shapes of
    /// every stride, dilation and group count and weight sparsities from 0 to 100 %, and
    /// shrinks with the non-zeros.
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
            let bound = prepared_bytes(&spec, nonzeros);
            for isa in Isa::ALL {
                let epilogue = Epilogue {
                    bias: vec![0.0; spec.filters],
                    activation: Activation::None,
                    isa,
                };
                let conv = SparseWeight::new(spec, &weights, epilogue, isa).unwrap();
                let kept = conv.taps.bytes() + conv.starts.capacity() * size_of::<TapBounds>();
                assert!(
                    kept <= bound,
                    "{isa} {spec:?} at {sparsity}: {kept} > {bound}"
                );
            }
            if sparsity == 0.9 {
                let dense = prepared_bytes(&spec, spec.weight_len().unwrap());
                assert!(bound < dense, "{spec:?}: {bound} of {dense}");
            }
        }
    }

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
