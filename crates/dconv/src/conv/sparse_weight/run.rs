//! A sparse-weight run: bands of tile rows split over the threads, each band's planes
//! converted, its tiles multiplied tap by tap from their windows into staged sums, and the
//! sums finished into the channels-last output.

use super::plan::{Bands, Fold, RunShape, LINE};
use super::planes::Planes;
use super::SparseWeight;
use crate::conv::run_loop::{over_images, timed};
use crate::conv::{ConvKernel, RunEpilogue, ScratchBytes, Timing, Workspace};
use crate::kernels::multiversion::vectorized;
use crate::kernels::transpose::Finish;
use rayon::prelude::*;
use std::ops::Range;
use std::time::Duration;

impl ConvKernel for SparseWeight {
    fn scratch(&self) -> ScratchBytes {
        let shape = self.run_shape(rayon::current_num_threads().max(1));
        ScratchBytes::floats(shape.floats())
    }

    fn run(
        &self,
        input: &[f32],
        (output, pitch): (&mut [f32], usize),
        residual: Option<&[f32]>,
        ws: &mut Workspace,
    ) -> Timing {
        let s = &self.spec;
        let shape = self.run_shape(rayon::current_num_threads().max(1));
        let floats = ws.floats(shape.floats());
        let RunShape {
            g,
            groups,
            jobs,
            planes_len,
            staged_len,
            partial_len,
        } = shape;
        let (planes, rest) = floats.split_at_mut(groups * planes_len);
        let skip = rest.as_ptr().align_offset(64).min(LINE);
        let partials = &mut rest[skip..skip + groups * partial_len];
        let run = BandRun {
            g,
            jobs,
            staged_len,
            epilogue: self.epilogue.adding(residual, output),
            pitch,
        };
        over_images(s, (input, (output, pitch)), |image, out, clock| {
            let scratch = Scratch {
                planes: &mut *planes,
                partials: &mut *partials,
            };
            // Each band converts its planes just before it multiplies.
            let zeros = clock.interleaved(|| {
                self.split_bands(image, run, 0..self.grid.tiles_y, out, scratch, groups)
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
/// its staged sums, the epilogue that finishes them and the floats between output pixels.
#[derive(Clone, Copy)]
struct BandRun<'a> {
    g: Bands,
    jobs: usize,
    staged_len: usize,
    epilogue: RunEpilogue<'a>,
    pitch: usize,
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
        let row_len = self.spec.out_width() * run.pitch;
        let (out_a, out_b) = out.split_at_mut((mid - tile_rows.start) * self.window.rows * row_len);
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
        let row_len = s.out_width() * run.pitch;
        let first_row = tile_rows.start * self.window.rows;
        let (mut zeros, mut convert) = (0, Duration::ZERO);
        for band_start in tile_rows.clone().step_by(g.tile_rows) {
            let ((), converting) =
                timed(|| self.convert(image, g, band_start, run.jobs, scratch.planes));
            convert += converting;
            let band_rows = g.tile_rows.min(tile_rows.end - band_start);
            let tiles = band_rows * self.grid.tiles_x;
            let planes = Planes {
                data: scratch.planes,
                bands: g,
            };
            let rows = band_start * self.window.rows
                ..((band_start + band_rows) * self.window.rows).min(s.out_height());
            let end = ((rows.end - first_row) * row_len).min(out.len());
            let out = &mut out[(rows.start - first_row) * row_len..end];
            if run.jobs == 1 {
                // Alone on the band: each tile is finished as soon as it is computed, while
                // its sums are in cache, so that the band's planes have L2 to themselves.
                for tile in 0..tiles {
                    let window = &mut windows[..self.window.len];
                    self.multiply(planes, 1, tile..tile + 1, staged, window);
                    let (tile_y, tile_x) = (tile / self.grid.tiles_x, tile % self.grid.tiles_x);
                    let first = tile_y * self.window.rows;
                    for (i, row) in out
                        .chunks_mut(row_len)
                        .skip(first)
                        .take(self.window.rows)
                        .enumerate()
                    {
                        zeros += self.finish_tile_row(staged, i, tile_x, row, run);
                    }
                }
                continue;
            }
            // Enough items for every thread: split filters when tiles are few.
            let lists = s.filters / self.taps.filters_per_list();
            let chunks = run.jobs.div_ceil(tiles).min(lists);
            let items = tiles * chunks;
            let jobs = run.jobs.min(items);
            self.split(planes, chunks, 0..items, staged, windows, jobs);
            zeros += self.finish(staged, (band_start, rows), out, run);
        }
        (zeros, convert)
    }
}

impl SparseWeight {
    /// Filters `m` of chunk `chunk` out of `chunks`: whole lists of filters (pairs, where
    /// filters share one).
    fn chunk_filters(&self, chunk: usize, chunks: usize) -> Range<usize> {
        let per = self.taps.filters_per_list();
        let lists = self.spec.filters / per;
        chunk * lists / chunks * per..(chunk + 1) * lists / chunks * per
    }

    /// Where item `k` (tile `k / chunks` of the band, filter chunk `k % chunks`) starts in
    /// the band's staging buffer. Every tile has a slot of `filters * tile_len` floats; a
    /// folded tile fills the start of its slot.
    fn staged_at(&self, k: usize, chunks: usize) -> usize {
        let (tile, filters) = (k / chunks, self.chunk_filters(k % chunks, chunks));
        tile * self.spec.filters * self.grid.tile_len
            + filters.start * self.tile_len_at(tile % self.grid.tiles_x)
    }

    /// How the tiles of column `tile_x` are folded, if they are.
    fn folded(&self, tile_x: usize) -> Option<Fold> {
        self.grid.fold.filter(|_| tile_x + 1 == self.grid.tiles_x)
    }

    /// Floats of one filter's sums in the tiles of column `tile_x`.
    fn tile_len_at(&self, tile_x: usize) -> usize {
        self.folded(tile_x)
            .map_or(self.grid.tile_len, |f| f.rows * self.window.lanes)
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
            let (tile_y, tile_x) = (tile / self.grid.tiles_x, tile % self.grid.tiles_x);
            let at = (tile_y * self.window.rows, tile_x * self.window.lanes);
            let (folded, tile_len) = (self.folded(tile_x), self.tile_len_at(tile_x));
            let from = self.staged_at(k, chunks) - origin;
            let sums = &mut staged[from..from + filters.len() * tile_len];
            vectorized(
                self.isa,
                #[inline(always)]
                || sums.fill(0.0),
            );
            for b in 0..self.window.blocks {
                // Compiled for the vector width, so that each vector moves in one go.
                vectorized(
                    self.isa,
                    #[inline(always)]
                    || match self.window.lanes {
                        16 => self.fill_window::<16>(planes, b, at, folded, window),
                        8 => self.fill_window::<8>(planes, b, at, folded, window),
                        _ => self.fill_window::<4>(planes, b, at, folded, window),
                    },
                );
                if b + 1 < self.window.blocks {
                    // The planes are larger than L2: ask for the next block's while this runs.
                    self.prefetch_window(planes, b + 1, at);
                }
                let filters = (b, filters.clone(), self.spec.filters);
                self.taps.multiply(&self.axpy, window, filters, sums);
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
                &mut scratch[..self.window.len],
            );
        }
        let half = jobs / 2;
        let mid = items.start + items.len() * half / jobs;
        let at = self.staged_at(mid, chunks) - self.staged_at(items.start, chunks);
        let (staged_a, staged_b) = staged.split_at_mut(at);
        let (scratch_a, scratch_b) = scratch.split_at_mut(half * self.window.len);
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
    /// staged sums into `out` (those rows, channels-last) through the run's epilogue;
    /// returns the zeros written.
    fn finish(
        &self,
        staged: &[f32],
        (band_start, out_rows): (usize, Range<usize>),
        out: &mut [f32],
        run: BandRun,
    ) -> usize {
        let (ow, filters) = (self.spec.out_width(), self.spec.filters);
        out.par_chunks_mut(ow * run.pitch)
            .zip(out_rows)
            .map(|(row, y)| {
                let tile_row = y / self.window.rows - band_start;
                (0..self.grid.tiles_x)
                    .map(|tx| {
                        let tile = tile_row * self.grid.tiles_x + tx;
                        let sums = &staged[tile * filters * self.grid.tile_len..];
                        self.finish_tile_row(sums, y % self.window.rows, tx, row, run)
                    })
                    .sum::<usize>()
            })
            .sum()
    }

    /// Writes row `i` of the tile in column `tile_x` whose sums (`[filter][row][lane]`) are
    /// `sums` into `row`, one channels-last output row, through the run's epilogue (bias and
    /// activation applied in registers, on the way out of the transpose, and a residual
    /// added to the pixels written while they are in L1); returns the zeros written.
    fn finish_tile_row(
        &self,
        sums: &[f32],
        i: usize,
        tile_x: usize,
        row: &mut [f32],
        BandRun {
            epilogue, pitch, ..
        }: BandRun,
    ) -> usize {
        let (ow, filters) = (self.spec.out_width(), self.spec.filters);
        let finish = Finish {
            bias: epilogue.bias(),
            curve: epilogue.curve(),
        };
        // Row i of a folded tile is row i % f.rows of the half i / f.rows.
        let at = match self.folded(tile_x) {
            Some(f) => i % f.rows * self.window.lanes + i / f.rows * f.half,
            None => i * self.window.lanes,
        };
        let cols = self.window.lanes.min(ow - tile_x * self.window.lanes);
        let pixels = &mut row[tile_x * self.window.lanes * pitch..][..(cols - 1) * pitch + filters];
        let zeros = self.transpose.transpose_finish(
            &sums[at..],
            self.tile_len_at(tile_x),
            pixels,
            pitch,
            (filters, cols),
            Some(finish),
        );
        epilogue
            .add_residual(pixels, pitch, filters)
            .unwrap_or(zeros)
    }
}
