//! The input side of a sparse-weight run: a band's rows of the image transposed into phase
//! planes, and the window of patches each tile copies from them for a channel block.

use super::plan::{Bands, Fold, LINE};
use super::SparseWeight;
use rayon::prelude::*;
use std::ops::Range;

/// A band's planes and their shape.
#[derive(Clone, Copy)]
pub(super) struct Planes<'a> {
    pub data: &'a [f32],
    pub bands: Bands,
}

impl Planes<'_> {
    /// Where the plane of channel `c` and phase `(ph, pw)` starts, at column stride `sw`.
    #[inline(always)]
    pub fn start(&self, c: usize, (ph, pw): (usize, usize), sw: usize) -> usize {
        c * self.bands.channel_stride + (ph * sw + pw) * self.bands.plane_w
    }

    /// Floats from a plane row to the next.
    #[inline(always)]
    pub fn row_stride(&self) -> usize {
        self.bands.row_stride
    }
}

impl SparseWeight {
    /// Transposes the rows of one NHWC image that the band of tile rows from `band_start`
    /// reads into the band's phase planes, a padded row at a time. Only cells inside the
    /// padded image are written: the others are read by dropped positions only.
    pub(super) fn convert(
        &self,
        image: &[f32],
        g: Bands,
        band_start: usize,
        jobs: usize,
        planes: &mut [f32],
    ) {
        let s = &self.spec;
        let [sh, sw] = s.stride;
        let [padded_h, padded_w] = s.padded_size().expect("validated spec");
        let first = band_start * self.window.rows;
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
                for (y, ph) in self.window.row_phases.iter().map(|&ph| (py * sh + ph, ph)) {
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
                            self.transpose.transpose(
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
    pub(super) fn fill_window<const L: usize>(
        &self,
        planes: Planes,
        b: usize,
        (y0, x0): (usize, usize),
        folded: Option<Fold>,
        window: &mut [f32],
    ) {
        let sw = self.spec.stride[1];
        let vectors = folded.map_or(self.window.rows, |f| f.rows) + self.window.max_row;
        let mut segments = window.chunks_exact_mut(self.window.segment);
        for c in self.block_channels(b) {
            for &ph in &self.window.row_phases {
                for &(pw, column) in &self.window.columns {
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
    pub(super) fn prefetch_window(&self, planes: Planes, b: usize, (y0, x0): (usize, usize)) {
        let sw = self.spec.stride[1];
        let span = self.window.lanes + self.window.columns.iter().map(|c| c.1).max().unwrap_or(0);
        for c in self.block_channels(b) {
            for &ph in &self.window.row_phases {
                for pw in 0..sw {
                    let plane = planes.start(c, (ph, pw), sw);
                    for k in 0..self.window.rows + self.window.max_row {
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
    pub(super) fn block_channels(&self, b: usize) -> Range<usize> {
        b * self.window.block..((b + 1) * self.window.block).min(self.spec.channels)
    }
}
