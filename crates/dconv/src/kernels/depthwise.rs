//! One output row of a depthwise convolution (one input channel per output channel), with
//! channels in the vector lanes, read straight from the unpadded NHWC image:
//!
//! `out[ox][m] = act(bias[m] + sum_{taps inside the image} image[y][x][m] * w[r][s][m])`
//!
//! A tile of a few pixels by a block of channels keeps its sums in registers across all taps
//! and is written once, finished by the activation, its zeros counted. Taps that fall in the
//! padding are skipped instead of read as zeros, so no padded copy of the image is made: a
//! depthwise layer does few multiply-adds per float it moves, and such a copy would be a
//! third of its memory traffic.

use super::curve::Curve;
use super::Isa;
use std::ops::Range;

/// One output row's operands. The image has as many channels as the output: a channel
/// multiplier above 1 is expanded beforehand.
#[derive(Clone)]
pub(crate) struct DepthwiseRow<'a> {
    /// One NHWC image, `[height][width][channels]`.
    pub image: &'a [f32],
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    /// Kernel height and width (R, S).
    pub kernel: [usize; 2],
    /// The image row that kernel row 0 reads (negative in the top padding).
    pub top: isize,
    /// Horizontal stride.
    pub stride: usize,
    /// Dilation along height and width.
    pub dilation: [usize; 2],
    /// Padding on the left.
    pub left: usize,
    /// `[R * S][channels]`.
    pub weights: &'a [f32],
    /// `[channels]`.
    pub bias: &'a [f32],
    /// The activation, None for none.
    pub curve: Option<Curve>,
    /// The channels this call computes (the others of `out` are left as they are), so
    /// that a caller can sweep several rows one block of channels at a time.
    pub block: Range<usize>,
    /// Floats between the output's pixels: `channels`, or more where the layer writes its
    /// channels of a concatenation.
    pub pitch: usize,
    /// Whether the x86 kernels take each tile of pixels over all the block's channels
    /// before the next tile, rather than sweeping the row once per vector of channels (see
    /// `conv::depthwise::pixels_outer`). The portable kernel goes a pixel at a time.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub pixels_outer: bool,
}

/// Pixels per tile of the x86 kernels where every tap is inside the image.
pub(crate) const TILE_PIXELS: usize = 4;

impl DepthwiseRow<'_> {
    /// The kernel rows that land inside the image: a range, as a window's taps are evenly
    /// spaced. Computed once per row, not per tile.
    #[inline(always)]
    fn rows(&self) -> Range<usize> {
        inside(self.top, self.dilation[0], self.height, self.kernel[0])
    }

    /// The image row that kernel row `r` reads; `r` must be in [`Self::rows`].
    #[inline(always)]
    fn image_row(&self, r: usize) -> usize {
        (self.top + (r * self.dilation[0]) as isize) as usize
    }

    /// The kernel columns that land inside the image for output pixel `ox`.
    #[inline(always)]
    fn columns(&self, ox: usize) -> Range<usize> {
        let x0 = (ox * self.stride) as isize - self.left as isize;
        inside(x0, self.dilation[1], self.width, self.kernel[1])
    }

    /// The output pixels below `pixels` whose kernel columns all land inside the image: the
    /// tiles' pixels, which need no per-pixel clipping. (Only the x86 kernels tile.)
    #[inline(always)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn interior(&self, pixels: usize) -> Range<usize> {
        let reach = self.kernel[1].saturating_sub(1) * self.dilation[1];
        let first = self.left.div_ceil(self.stride);
        // The last window's last tap, ox * stride - left + reach, at most width - 1.
        let end = (self.width + self.left)
            .checked_sub(1 + reach)
            .map_or(0, |limit| limit / self.stride + 1)
            .min(pixels);
        first.min(end)..end
    }

    /// The image column that kernel column `s` of output pixel `ox` reads; `s` must be in
    /// [`Self::columns`]`(ox)`.
    #[inline(always)]
    fn column(&self, ox: usize, s: usize) -> usize {
        ox * self.stride + s * self.dilation[1] - self.left
    }
}

/// The taps `k < taps` whose coordinate `start + k * step` lies in `0..extent`.
#[inline(always)]
fn inside(start: isize, step: usize, extent: usize, taps: usize) -> Range<usize> {
    let (step, extent) = (step as isize, extent as isize);
    let first = if start >= 0 {
        0
    } else {
        (-start + step - 1) / step
    };
    let end = if start >= extent {
        0
    } else {
        (extent - 1 - start) / step + 1
    };
    let (first, end) = (first as usize, (end as usize).min(taps));
    first..end.max(first)
}

/// The row kernel of one instruction set, chosen once.
#[derive(Clone, Copy)]
pub(crate) struct DepthwiseConv {
    row: fn(&DepthwiseRow, &mut [f32]) -> usize,
}

impl DepthwiseConv {
    /// The kernel of `isa`, or the portable one when this CPU lacks it.
    pub fn for_isa(isa: Isa) -> Self {
        let row = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if isa.is_supported() => avx512::checked_row,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if isa.is_supported() => avx2::checked_row,
            _ => portable,
        };
        DepthwiseConv { row }
    }

    /// Computes channels `row.block` of one output row, pixel `ox`'s at
    /// `out[ox * pitch..][..channels]`, finished; returns how many of them are exactly zero.
    ///
    /// # Panics
    /// If `channels` is 0 or above the pitch, `out` does not end with a whole pixel's
    /// channels, the block is not within the channels, or the image, weights or bias are
    /// shorter than their shapes say.
    pub fn row(&self, row: &DepthwiseRow, out: &mut [f32]) -> usize {
        let c = row.channels;
        let tail = out.len() % row.pitch.max(1);
        assert!(
            c > 0 && c <= row.pitch && (tail == 0 || tail == c),
            "output row of whole pixels"
        );
        assert!(
            row.block.start <= row.block.end && row.block.end <= c,
            "block within the channels"
        );
        assert!(
            row.image.len() >= row.height * row.width * c,
            "image too short"
        );
        assert!(
            row.weights.len() >= row.kernel[0] * row.kernel[1] * c,
            "weights too short"
        );
        assert!(row.bias.len() >= c, "bias too short");
        (self.row)(row, out)
    }
}

/// Plain Rust: a pixel at a time, each tap's channels in one loop the compiler vectorises.
fn portable(row: &DepthwiseRow, out: &mut [f32]) -> usize {
    let c = row.channels;
    let s_len = row.kernel[1];
    let block = row.block.clone();
    let mut zeros = 0;
    for (ox, pixel) in out.chunks_mut(row.pitch).enumerate() {
        let pixel = &mut pixel[block.clone()];
        pixel.copy_from_slice(&row.bias[block.clone()]);
        let columns = row.columns(ox);
        for r in row.rows() {
            let y = row.image_row(r);
            for s in columns.clone() {
                let input = &row.image[(y * row.width + row.column(ox, s)) * c..][block.clone()];
                let weights = &row.weights[(r * s_len + s) * c..][block.clone()];
                for ((o, x), w) in pixel.iter_mut().zip(input).zip(weights) {
                    *o += x * w;
                }
            }
        }
        for o in pixel.iter_mut() {
            if let Some(curve) = row.curve {
                *o = curve.apply(*o);
            }
            zeros += (*o == 0.0) as usize;
        }
    }
    zeros
}

/// One SIMD kernel per instruction set: blocks of `NV` vectors of channels, each over the
/// row's pixels in tiles of `NP` where every tap is inside the image and one by one near its
/// edges (or, `pixels_outer`, each tile over every block before the next tile). The last
/// block's vectors are masked to the channels that exist.
#[cfg(target_arch = "x86_64")]
macro_rules! depthwise_row {
    ($module:ident, $feature:literal, $lanes:expr, $vec:ty, $mask:ty,
     mask: |$n:ident| $mask_of:expr,
     load: $load:ident, load_masked: |$lp:ident, $lm:ident| $load_masked:expr,
     store: $store:ident, store_masked: |$sp:ident, $sm:ident, $sv:ident| $store_masked:expr,
     fma: $fma:ident, splat: $splat:ident, max: $max:ident, min: $min:ident, mul: $mul:ident,
     zeros: |$zv:ident, $zm:ident| $zeros:expr) => {
        mod $module {
            use super::DepthwiseRow;
            use crate::kernels::curve::{apply_curve, Curve};
            use std::arch::x86_64::*;
            use std::ops::Range;

            const LANES: usize = $lanes;
            /// Vectors of channels per block.
            const NV: usize = 2;
            const NP: usize = super::TILE_PIXELS;

            /// [`row`] as a safe fn, for [`super::DepthwiseConv`].
            pub fn checked_row(row: &DepthwiseRow, out: &mut [f32]) -> usize {
                // SAFETY: reachable only through a `DepthwiseConv` that `for_isa` built after
                // finding the feature on this CPU, and called by `DepthwiseConv::row` once
                // the operands passed its checks. Image reads are at (y * width + x) *
                // channels + m with y < height and x < width (`rows` and `columns` keep
                // them inside) and m < block.end <= channels (the masks keep the last block
                // inside);
                // weights at (r * S + s) * channels + m, bias at m, outputs at
                // ox * pitch + m for ox < out.len().div_ceil(pitch), m < channels <= pitch.
                unsafe { self::row(row, out) }
            }

            /// # Safety
            /// The CPU must support the target feature, and `row` and `out` must pass the
            /// checks of `DepthwiseConv::row`.
            #[target_feature(enable = $feature)]
            unsafe fn row(row: &DepthwiseRow, out: &mut [f32]) -> usize {
                let pixels = out.len().div_ceil(row.pitch);
                let all = 0..row.kernel[1];
                let (rows, interior) = (row.rows(), row.interior(pixels));
                let end = row.block.end;
                // Tiles per sweep of the block's vectors: one, or the whole row.
                let sweep = if row.pixels_outer { 1 } else { usize::MAX };
                let mut zeros = 0;
                let mut first = 0;
                while first < pixels {
                    let mut next = pixels;
                    for m0 in row.block.clone().step_by(NV * LANES) {
                        let whole = m0 + NV * LANES <= end;
                        let masks: [$mask; NV] = std::array::from_fn(|v| {
                            let $n = (end - m0).saturating_sub(v * LANES).min(LANES);
                            $mask_of
                        });
                        let (mut ox, mut tiles) = (first, 0);
                        while ox < pixels && tiles < sweep {
                            // Tiles inside the interior; pixels near the edges one by one.
                            let tile_fits = ox >= interior.start && ox + NP <= interior.end;
                            let (step, columns) = if tile_fits {
                                (NP, all.clone())
                            } else {
                                (1, row.columns(ox))
                            };
                            let rows = rows.clone();
                            // SAFETY: forwarded from the caller; the tile's pixels are in the
                            // row, and the masks cover channels m0.. that exist.
                            zeros += unsafe {
                                match (tile_fits, whole) {
                                    (true, true) => {
                                        tile::<NP, false>(row, rows, ox, columns, m0, &masks, out)
                                    }
                                    (true, false) => {
                                        tile::<NP, true>(row, rows, ox, columns, m0, &masks, out)
                                    }
                                    (false, true) => {
                                        tile::<1, false>(row, rows, ox, columns, m0, &masks, out)
                                    }
                                    (false, false) => {
                                        tile::<1, true>(row, rows, ox, columns, m0, &masks, out)
                                    }
                                }
                            };
                            ox += step;
                            tiles += 1;
                        }
                        // Where the tiles reached: the same for every vector.
                        next = ox;
                    }
                    first = next;
                }
                zeros
            }

            /// Channels `m0 .. m0 + NV * LANES` (those of the block, when `MASKED`) of pixels
            /// `ox0 .. ox0 + P`, all of whose taps in `rows` x `columns` are inside the image.
            ///
            /// # Safety
            /// As `row`; `ox0 + P <= out.len().div_ceil(pitch)`; `rows` within `row.rows()`,
            /// `columns` within `row.columns(ox)` for each pixel; without `MASKED`, `m0 + NV
            /// * LANES <= channels`, with it, `masks` covering only channels that exist.
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn tile<const P: usize, const MASKED: bool>(
                row: &DepthwiseRow,
                rows: Range<usize>,
                ox0: usize,
                columns: Range<usize>,
                m0: usize,
                masks: &[$mask; NV],
                out: &mut [f32],
            ) -> usize {
                let c = row.channels;
                let s_len = row.kernel[1];
                // Masked vectors past the channels may point past the slices: the pointers
                // are only formed, never read there, hence wrapping arithmetic.
                let load = |p: *const f32, v: usize| {
                    // SAFETY: (caller) unmasked reads are inside their slices; masked reads
                    // touch only the lanes of channels that exist.
                    unsafe {
                        if MASKED {
                            let ($lp, $lm) = (p, masks[v]);
                            $load_masked
                        } else {
                            $load(p)
                        }
                    }
                };
                let bias: [$vec; NV] = std::array::from_fn(|v| {
                    load(row.bias.as_ptr().wrapping_add(m0 + v * LANES), v)
                });
                let mut acc = [bias; P];
                for r in rows {
                    let y = row.image_row(r);
                    let image_row = row.image.as_ptr().wrapping_add(y * row.width * c + m0);
                    for s in columns.clone() {
                        let taps = row.weights.as_ptr().wrapping_add((r * s_len + s) * c + m0);
                        let w: [$vec; NV] =
                            std::array::from_fn(|v| load(taps.wrapping_add(v * LANES), v));
                        for (p, acc) in acc.iter_mut().enumerate() {
                            let at = image_row.wrapping_add(row.column(ox0 + p, s) * c);
                            for (v, a) in acc.iter_mut().enumerate() {
                                *a = $fma(load(at.wrapping_add(v * LANES), v), w[v], *a);
                            }
                        }
                    }
                }
                let mut zeros = 0;
                for (p, acc) in acc.iter_mut().enumerate() {
                    let dst = out.as_mut_ptr().wrapping_add((ox0 + p) * row.pitch + m0);
                    for (v, a) in acc.iter_mut().enumerate() {
                        if let Some(curve) = row.curve {
                            *a = apply_curve!(curve, *a, $splat, $max, $min, $mul, $fma);
                        }
                        let ($zv, $zm) = (*a, masks[v]);
                        zeros += $zeros;
                        let to = dst.wrapping_add(v * LANES);
                        // SAFETY: (caller) as the loads: inside `out`, or masked to it.
                        unsafe {
                            if MASKED {
                                let ($sp, $sm, $sv) = (to, masks[v], *a);
                                $store_masked
                            } else {
                                $store(to, *a)
                            }
                        }
                    }
                }
                zeros
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
depthwise_row!(avx512, "avx512f,popcnt", 16, __m512, __mmask16,
    mask: |n| ((1u32 << n) - 1) as __mmask16,
    load: _mm512_loadu_ps, load_masked: |p, m| _mm512_maskz_loadu_ps(m, p),
    store: _mm512_storeu_ps, store_masked: |p, m, v| _mm512_mask_storeu_ps(p, m, v),
    fma: _mm512_fmadd_ps, splat: _mm512_set1_ps, max: _mm512_max_ps, min: _mm512_min_ps,
    mul: _mm512_mul_ps,
    zeros: |v, m| (_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v, _mm512_setzero_ps()) & m).count_ones() as usize);

#[cfg(target_arch = "x86_64")]
depthwise_row!(avx2, "avx2,fma,popcnt", 8, __m256, __m256i,
    mask: |n| _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
    load: _mm256_loadu_ps, load_masked: |p, m| _mm256_maskload_ps(p, m),
    store: _mm256_storeu_ps, store_masked: |p, m, v| _mm256_maskstore_ps(p, m, v),
    fma: _mm256_fmadd_ps, splat: _mm256_set1_ps, max: _mm256_max_ps, min: _mm256_min_ps,
    mul: _mm256_mul_ps,
    zeros: |v, m| _mm256_movemask_ps(_mm256_and_ps(
        _mm256_cmp_ps::<_CMP_EQ_OQ>(v, _mm256_setzero_ps()),
        _mm256_castsi256_ps(m),
    )).count_ones() as usize);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::Activation;
    use crate::synth::Rng;

    /// The sums of the definition, with the padding read as zeros.
    fn by_definition(row: &DepthwiseRow, pixels: usize) -> Vec<f32> {
        let c = row.channels;
        let mut want = vec![0.0; pixels * c];
        for ox in 0..pixels {
            for m in 0..c {
                let mut sum = row.bias[m];
                for r in 0..row.kernel[0] {
                    for s in 0..row.kernel[1] {
                        let y = row.top + (r * row.dilation[0]) as isize;
                        let x =
                            (ox * row.stride + s * row.dilation[1]) as isize - row.left as isize;
                        if (0..row.height as isize).contains(&y)
                            && (0..row.width as isize).contains(&x)
                        {
                            let at = (y as usize * row.width + x as usize) * c + m;
                            sum += row.image[at] * row.weights[(r * row.kernel[1] + s) * c + m];
                        }
                    }
                }
                want[ox * c + m] = row.curve.map_or(sum, |curve| curve.apply(sum));
            }
        }
        want
    }

    /// The interior is exactly the pixels whose kernel columns all land in the image, and
    /// the rows are exactly the kernel rows that do.
    #[test]
    fn interior_and_rows_are_where_every_tap_lands() {
        let shapes = (1..9).flat_map(|extent| {
            (1..6).flat_map(move |kernel| {
                (1..4).flat_map(move |step| {
                    (1..3).map(move |dilation| (extent, kernel, step, dilation))
                })
            })
        });
        for (extent, kernel, stride, dilation) in shapes {
            for left in 0..5 {
                let row = DepthwiseRow {
                    image: &[],
                    height: extent,
                    width: extent,
                    channels: 1,
                    kernel: [kernel, kernel],
                    top: left as isize - 3,
                    stride,
                    dilation: [dilation, dilation],
                    left,
                    weights: &[],
                    bias: &[],
                    curve: None,
                    block: 0..1,
                    pitch: 1,
                    pixels_outer: false,
                };
                let pixels = 12;
                let interior = row.interior(pixels);
                for ox in 0..pixels {
                    let lands = |s: usize| {
                        let x = (ox * stride + s * dilation) as isize - left as isize;
                        (0..extent as isize).contains(&x)
                    };
                    assert_eq!(
                        interior.contains(&ox),
                        (0..kernel).all(lands),
                        "ox {ox} of {row_shape:?}",
                        row_shape = (extent, kernel, stride, dilation, left)
                    );
                    let columns: Vec<usize> = (0..kernel).filter(|&s| lands(s)).collect();
                    assert_eq!(row.columns(ox).collect::<Vec<_>>(), columns);
                }
                let rows: Vec<usize> = (0..kernel)
                    .filter(|&r| {
                        (0..extent as isize).contains(&(row.top + (r * dilation) as isize))
                    })
                    .collect();
                assert_eq!(row.rows().collect::<Vec<_>>(), rows);
            }
        }
    }

    /// Every ISA gives the definition's outputs and zero count: channels in whole blocks, a
    /// masked last block and fewer than one vector; rows in the top padding, the interior and
    /// past the bottom; strides, dilations and left paddings that leave pixels with no tap.
    #[test]
    fn every_isa_matches_the_definition() {
        let mut rng = Rng::new(5);
        let relu6 = Activation::Relu6.curve();
        let hard_swish = Activation::HardSwish.curve();
        let cases = [
            // channels, height x width, kernel, top, stride, dilation, left, pixels, curve
            (32, [5, 9], [3, 3], -1, 1, [1, 1], 1, 9, None),
            (96, [6, 11], [3, 3], 2, 2, [1, 1], 0, 5, relu6),
            (40, [4, 7], [5, 5], -2, 1, [1, 1], 2, 7, hard_swish),
            (
                7,
                [3, 5],
                [3, 3],
                1,
                1,
                [1, 1],
                1,
                5,
                Activation::Relu.curve(),
            ),
            (72, [9, 9], [3, 3], -2, 1, [2, 2], 2, 9, None),
            (24, [4, 4], [3, 3], 3, 3, [1, 1], 4, 3, relu6),
            (16, [2, 3], [3, 5], -3, 1, [1, 1], 1, 4, None),
        ];
        for (channels, [height, width], kernel, top, stride, dilation, left, pixels, curve) in cases
        {
            let image: Vec<f32> = (0..height * width * channels)
                .map(|i| if i % 5 == 0 { 0.0 } else { rng.nonzero_value() })
                .collect();
            let weights: Vec<f32> = (0..kernel[0] * kernel[1] * channels)
                .map(|_| rng.nonzero_value())
                .collect();
            let bias: Vec<f32> = (0..channels).map(|_| rng.nonzero_value()).collect();
            let row = DepthwiseRow {
                image: &image,
                height,
                width,
                channels,
                kernel,
                top,
                stride,
                dilation,
                left,
                weights: &weights,
                bias: &bias,
                curve,
                block: 0..channels,
                pitch: channels,
                pixels_outer: false,
            };
            let want = by_definition(&row, pixels);
            let want_zeros = want.iter().filter(|&&v| v == 0.0).count();
            // Whole, and in two blocks split off the vectors' boundaries; in either order;
            // into pixels of their own and into pixels 3 floats wider, whose gaps stay as
            // they were.
            let splits = [channels, channels / 3];
            let variants = Isa::supported().into_iter().flat_map(|isa| {
                splits.into_iter().flat_map(move |s| {
                    [(false, 0), (true, 0), (false, 3)].map(|(po, gap)| (isa, s, po, gap))
                })
            });
            for (isa, split, pixels_outer, gap) in variants {
                let pitch = channels + gap;
                let mut got = vec![f32::NAN; (pixels - 1) * pitch + channels];
                let conv = DepthwiseConv::for_isa(isa);
                let zeros = [0..split, split..channels]
                    .into_iter()
                    .map(|block| {
                        conv.row(
                            &DepthwiseRow {
                                block,
                                pixels_outer,
                                pitch,
                                ..row.clone()
                            },
                            &mut got,
                        )
                    })
                    .sum::<usize>();
                for (i, g) in got.iter().enumerate() {
                    let (ox, m) = (i / pitch, i % pitch);
                    if m >= channels {
                        assert!(g.is_nan(), "{isa}: gap at {i} written");
                        continue;
                    }
                    let w = want[ox * channels + m];
                    assert!(
                        (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                        "{isa} {pixels_outer}, {channels} channels, kernel {kernel:?}, pitch {pitch}, at {i}: {g} vs {w}"
                    );
                }
                assert_eq!(
                    zeros, want_zeros,
                    "{isa} {pixels_outer}, {channels} channels, split {split}"
                );
            }
        }
    }
}
