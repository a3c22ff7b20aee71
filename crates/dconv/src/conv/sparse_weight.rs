//! Direct sparse convolution: sparse weights x dense activations, with no lowered matrix.
//!
//! Each image is copied into zero-padded, channel-major input planes. With a stride, every
//! channel is split into `stride_h x stride_w` phase planes (space to depth: phase
//! `(ph, pw)` holds `Xpad[c][y*sh + ph][x*sw + pw]`), so that each kernel position `(r, s)`
//! of a channel reads one phase plane at a constant shift. The output is computed on a
//! "virtual" grid of `OH x Wq` positions, `Wq` the phase-plane width: virtual position
//! `q = oy * Wq + ox` of filter `m` is the sum over its non-zero weights `w` of
//! `w * planes[offset(w) + q]`, so a tile of consecutive positions reads one contiguous
//! stretch of the planes per weight ([`shifted_axpy`]). Positions with `ox >= OW` read
//! across row ends; they are computed and dropped.
//!
//! Prepare turns the weights into taps (offset, value), per filter and per block of input
//! channels; run loops over tiles of positions (split across threads), channel blocks
//! small enough that their stretch of planes stays in L1, and filters, accumulating each
//! filter's tile in registers and its partial sums in a per-thread buffer.
//!
//! Loads that straddle two cache lines cost double, and a kernel column `s` shifts a tap's
//! reads by `s` floats. So plane rows are padded to whole vectors, and for each tile and
//! channel block the stretch of planes it reads is copied into a small per-thread window
//! once per column shift (copy `k` starts `shifts[k]` floats further on): every tap then
//! reads whole, aligned vectors of the window, which stays in L1 across all filters.

use super::{ConvKernel, ConvSpec, Epilogue, Timing, Workspace};
use crate::error::{Error, Result};
use crate::kernels::shifted_axpy::{shifted_axpy, tile_width, vector_floats, Tap, TapList};
use crate::kernels::Isa;
use rayon::prelude::*;
use std::ops::Range;
use std::time::Instant;

/// Bytes of window (input planes) a channel block may take: most of a 48 KB L1.
const L1_BUDGET: usize = 36 * 1024;

/// Floats of a 64-byte cache line.
const LINE: usize = 64 / std::mem::size_of::<f32>();

pub(crate) struct SparseWeight {
    spec: ConvSpec,
    isa: Isa,
    epilogue: Epilogue,
    /// Taps ordered by filter, then channel block, then offset; offsets index the window.
    taps: TapList,
    /// `taps[starts[m * blocks + b] .. starts[m * blocks + b + 1]]` are filter `m`'s taps
    /// in channel block `b`.
    starts: Vec<usize>,
    /// Channels per block, and blocks.
    block: usize,
    blocks: usize,
    /// Floats per tile of virtual positions.
    tile: usize,
    /// Tiles covering the `OH x Wq` virtual positions of one image.
    tiles: usize,
    /// Phase-plane height and width (a whole number of vectors).
    plane_h: usize,
    plane_w: usize,
    /// Column shifts of the window copies, ascending from 0.
    shifts: Vec<usize>,
    /// Floats of all phase planes of one channel.
    channel_stride: usize,
    /// Floats of the planes buffer of one image, with slack for the window reads.
    planes_len: usize,
    /// Floats of a window segment: one tile's stretch of one phase plane.
    segment: usize,
    /// Floats per thread: partial sums of every filter, then the window (both whole lines).
    partial_len: usize,
    window_len: usize,
}

impl SparseWeight {
    pub fn new(spec: ConvSpec, weights: &[f32], epilogue: Epilogue, isa: Isa) -> Result<Self> {
        let [sh, sw] = spec.stride;
        let [dh, dw] = spec.dilation;
        let [kr, ks] = spec.kernel;
        let [padded_h, padded_w] = spec.padded_size()?;
        let too_large = || Error::Overflow("sparse-weight input planes");
        // Plane rows and window segments are whole vectors, so that every tap of a tile
        // (whose start is a multiple of the vector) reads aligned vectors.
        let align = vector_floats(isa);
        let plane_h = padded_h.div_ceil(sh);
        let plane_w = padded_w.div_ceil(sw).next_multiple_of(align);
        let plane = plane_h.checked_mul(plane_w).ok_or_else(too_large)?;
        let phases = sh * sw;
        let channel_stride = plane.checked_mul(phases).ok_or_else(too_large)?;
        // One window copy per column shift (modulo the vector) that a kernel column needs.
        let mut shifts: Vec<usize> = (0..ks).map(|s| s * dw / sw % align).collect();
        shifts.sort_unstable();
        shifts.dedup();
        let tile = tile_width(isa);
        let tiles = (spec.out_height() * plane_w).div_ceil(tile);

        // A segment holds what the taps of one phase plane read for a tile.
        let max_row = (kr - 1) * dh / sh;
        let max_column = (ks - 1) * dw / sw / align * align;
        let segment = (tile + max_row * plane_w + max_column).next_multiple_of(align);
        let window_channel = segment * phases * shifts.len();
        // Channels per block: their window should fit L1.
        let block = (L1_BUDGET / (4 * window_channel)).clamp(1, spec.channels);
        let blocks = spec.channels.div_ceil(block);
        let window_len = (block * window_channel).next_multiple_of(LINE);

        let (cg, mg) = (spec.channels_per_group(), spec.filters_per_group());
        let mut taps = Vec::new();
        let mut starts = Vec::with_capacity(spec.filters * blocks + 1);
        starts.push(0);
        for m in 0..spec.filters {
            let group_first = m / mg * cg;
            for b in 0..blocks {
                let from = taps.len();
                let channels =
                    (b * block).max(group_first)..((b + 1) * block).min(group_first + cg);
                for c in channels {
                    for r in 0..kr {
                        for s in 0..ks {
                            let w = weights[((m * cg + c - group_first) * kr + r) * ks + s];
                            if w == 0.0 {
                                continue;
                            }
                            let phase = (r * dh % sh) * sw + s * dw % sw;
                            let column = s * dw / sw;
                            let copy = shifts.binary_search(&(column % align)).expect("listed");
                            let offset = (c - b * block) * window_channel
                                + (copy * phases + phase) * segment
                                + (r * dh / sh) * plane_w
                                + column / align * align;
                            let offset = u32::try_from(offset).map_err(|_| too_large())?;
                            taps.push(Tap { offset, weight: w });
                        }
                    }
                }
                taps[from..].sort_by_key(|t| t.offset);
                starts.push(taps.len());
            }
        }
        let taps = TapList::new(taps);
        debug_assert!(taps.span() + tile <= window_len + 1);
        // Window reads run up to `segment + shift` past a tile start.
        let planes_len = (spec.channels.checked_mul(channel_stride))
            .and_then(|len| len.checked_add(tiles * tile + segment + align))
            .ok_or_else(too_large)?;
        let partial_len = spec.filters * tile;
        Ok(SparseWeight {
            spec,
            isa,
            epilogue,
            taps,
            starts,
            block,
            blocks,
            tile,
            tiles,
            plane_h,
            plane_w,
            shifts,
            channel_stride,
            planes_len,
            segment,
            partial_len,
            window_len,
        })
    }

    /// Copies one NHWC image into the zero-padded phase planes, one plane row at a time.
    /// Only cells inside the padded image are written: the others are read by dropped
    /// positions only.
    fn convert(&self, image: &[f32], planes: &mut [f32]) {
        let s = &self.spec;
        let [sh, sw] = s.stride;
        let [padded_h, padded_w] = s.padded_size().expect("validated spec");
        let (top, left, width) = (s.padding.top, s.padding.left, s.width);
        let plane = self.plane_h * self.plane_w;
        // Blocks of 16 channels: one cache line of each input pixel, reused across them.
        const CHANNELS: usize = 16;
        planes[..s.channels * self.channel_stride]
            .par_chunks_mut(CHANNELS * self.channel_stride)
            .enumerate()
            .for_each(|(chunk, planes)| {
                for y in 0..padded_h {
                    let row = (y % sh * sw) * plane + y / sh * self.plane_w;
                    let iy = y.checked_sub(top).filter(|&iy| iy < s.height);
                    for (c, planes) in planes.chunks_exact_mut(self.channel_stride).enumerate() {
                        for pw in 0..sw.min(padded_w) {
                            // Plane row of phase (y % sh, pw): padded columns j * sw + pw.
                            let start = row + pw * plane;
                            let len = (padded_w - pw).div_ceil(sw);
                            let dst = &mut planes[start..start + len];
                            if let Some(iy) = iy {
                                // Columns inside the input: left <= j * sw + pw < left + width.
                                let lo = left.saturating_sub(pw).div_ceil(sw).min(len);
                                let hi = (left + width).saturating_sub(pw).div_ceil(sw).min(len);
                                let (head, rest) = dst.split_at_mut(lo);
                                let (body, tail) = rest.split_at_mut(hi.max(lo) - lo);
                                head.fill(0.0);
                                tail.fill(0.0);
                                if !body.is_empty() {
                                    let ix = lo * sw + pw - left;
                                    let from =
                                        (iy * width + ix) * s.channels + chunk * CHANNELS + c;
                                    let src = image[from..].iter().step_by(sw * s.channels);
                                    for (d, &v) in body.iter_mut().zip(src) {
                                        *d = v;
                                    }
                                }
                            } else {
                                dst.fill(0.0);
                            }
                        }
                    }
                }
            });
    }

    /// Output pixels of one image before virtual position `q`.
    fn pixels_before(&self, q: usize) -> usize {
        let ow = self.spec.out_width();
        (q / self.plane_w * ow + (q % self.plane_w).min(ow)).min(self.spec.out_pixels())
    }

    /// Copies what channel block `b` reads for the tile starting at `start` into the window:
    /// per channel, copy and phase plane, `segment` floats from `start + shift` on.
    fn fill_window(&self, planes: &[f32], b: usize, start: usize, window: &mut [f32]) {
        let phases = self.spec.stride[0] * self.spec.stride[1];
        let plane = self.plane_h * self.plane_w;
        let channels = b * self.block..((b + 1) * self.block).min(self.spec.channels);
        let mut segments = window.chunks_exact_mut(self.segment);
        for c in channels {
            for &shift in &self.shifts {
                for phase in 0..phases {
                    let from = c * self.channel_stride + phase * plane + start + shift;
                    let dst = segments.next().expect("window holds the block");
                    dst.copy_from_slice(&planes[from..from + self.segment]);
                }
            }
        }
    }

    /// Hints the cache lines that `fill_window(planes, b, start, ..)` reads into L2.
    fn prefetch_window(&self, planes: &[f32], b: usize, start: usize) {
        let phases = self.spec.stride[0] * self.spec.stride[1];
        let plane = self.plane_h * self.plane_w;
        let span = self.segment + self.shifts.last().copied().unwrap_or(0);
        let channels = b * self.block..((b + 1) * self.block).min(self.spec.channels);
        for c in channels {
            for phase in 0..phases {
                let from = c * self.channel_stride + phase * plane + start;
                let lines = planes.get(from..(from + span).min(planes.len()));
                for line in lines.into_iter().flat_map(|l| l.chunks(LINE)) {
                    crate::kernels::prefetch_l2(line);
                }
            }
        }
    }

    /// Computes tiles `tiles` of one image into `out`, its output pixels from
    /// `pixels_before(tiles.start * tile)` on; `scratch` holds one tile of every filter,
    /// then the window.
    fn multiply(
        &self,
        planes: &[f32],
        tiles: Range<usize>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> usize {
        let first_pixel = self.pixels_before(tiles.start * self.tile);
        let (partial, window) = scratch.split_at_mut(self.partial_len);
        let mut zeros = 0;
        for t in tiles {
            let start = t * self.tile;
            partial.fill(0.0);
            for b in 0..self.blocks {
                self.fill_window(planes, b, start, window);
                // The planes are larger than L2: ask for the next block's while this one runs.
                let (next_b, next_start) = if b + 1 < self.blocks {
                    (b + 1, start)
                } else {
                    (0, start + self.tile)
                };
                self.prefetch_window(planes, next_b, next_start);
                for (m, acc) in partial.chunks_exact_mut(self.tile).enumerate() {
                    let i = m * self.blocks + b;
                    let range = self.starts[i]..self.starts[i + 1];
                    if !range.is_empty() {
                        shifted_axpy(self.isa, window, &self.taps, range, 0, acc);
                    }
                }
            }
            zeros += self.finish_tile(partial, start, first_pixel, out);
        }
        zeros
    }

    /// Writes the tile of partial sums (`[filter][position]`) starting at virtual position
    /// `start` to the NHWC output (`[pixel][filter]`, from `first_pixel` on), through the
    /// epilogue: transposed by blocks of 16 x 16 that stay in L1.
    fn finish_tile(
        &self,
        partial: &[f32],
        start: usize,
        first_pixel: usize,
        out: &mut [f32],
    ) -> usize {
        const BLOCK: usize = 16;
        let filters = self.spec.filters;
        let (ow, oh) = (self.spec.out_width(), self.spec.out_height());
        let mut block = [[0.0f32; BLOCK]; BLOCK];
        let mut zeros = 0;
        for i0 in (0..self.tile).step_by(BLOCK) {
            let positions = BLOCK.min(self.tile - i0);
            for m0 in (0..filters).step_by(BLOCK) {
                let n = BLOCK.min(filters - m0);
                for (j, row) in partial[m0 * self.tile..]
                    .chunks_exact(self.tile)
                    .take(n)
                    .enumerate()
                {
                    for (k, &v) in row[i0..i0 + positions].iter().enumerate() {
                        block[k][j] = v;
                    }
                }
                for (k, sums) in block.iter().enumerate().take(positions) {
                    let q = start + i0 + k;
                    let (oy, ox) = (q / self.plane_w, q % self.plane_w);
                    if ox >= ow || oy >= oh {
                        continue;
                    }
                    let at = (oy * ow + ox - first_pixel) * filters + m0;
                    let dst = &mut out[at..at + n];
                    dst.copy_from_slice(&sums[..n]);
                    zeros += self.epilogue.apply_row(dst, m0);
                }
            }
        }
        zeros
    }

    /// Splits `tiles` into `jobs` even parts run in parallel, each with its share of `out`
    /// (whose first pixel is where `tiles` starts) and its scratch (partial sums, window).
    fn split(
        &self,
        planes: &[f32],
        tiles: Range<usize>,
        out: &mut [f32],
        scratch: &mut [f32],
        jobs: usize,
    ) -> usize {
        if jobs <= 1 {
            return self.multiply(planes, tiles, out, scratch);
        }
        let half = jobs / 2;
        let mid = tiles.start + tiles.len() * half / jobs;
        let pixels =
            self.pixels_before(mid * self.tile) - self.pixels_before(tiles.start * self.tile);
        let (out_a, out_b) = out.split_at_mut(pixels * self.spec.filters);
        let (part_a, part_b) = scratch.split_at_mut(half * (self.partial_len + self.window_len));
        let (zeros_a, zeros_b) = rayon::join(
            || self.split(planes, tiles.start..mid, out_a, part_a, half),
            || self.split(planes, mid..tiles.end, out_b, part_b, jobs - half),
        );
        zeros_a + zeros_b
    }
}

impl ConvKernel for SparseWeight {
    fn run(&self, input: &[f32], output: &mut [f32], ws: &mut Workspace) -> Timing {
        let s = &self.spec;
        let threads = rayon::current_num_threads().clamp(1, self.tiles);
        // Each thread's scratch: partial sums and window, both whole cache lines; one line
        // of slack to start the first (and so every) window on a line.
        let scratch_len = threads * (self.partial_len + self.window_len);
        if ws.planes.len() < self.planes_len {
            ws.planes.resize(self.planes_len, 0.0);
        }
        if ws.partials.len() < scratch_len + LINE {
            ws.partials.resize(scratch_len + LINE, 0.0);
        }
        let planes = &mut ws.planes[..self.planes_len];
        let skip = ws.partials.as_ptr().align_offset(64).min(LINE);
        let mut timing = Timing::default();
        let image_len = s.height * s.width * s.channels;
        let out_len = s.out_pixels() * s.filters;
        for (image, out) in input
            .chunks_exact(image_len)
            .zip(output.chunks_exact_mut(out_len))
        {
            let t0 = Instant::now();
            self.convert(image, planes);
            let t1 = Instant::now();
            let scratch = &mut ws.partials[skip..skip + scratch_len];
            let zeros = self.split(planes, 0..self.tiles, out, scratch, threads);
            timing.output_zeros = Some(timing.output_zeros.unwrap_or(0) + zeros);
            timing.convert += t1 - t0;
            timing.multiply += t1.elapsed();
        }
        timing
    }
}
