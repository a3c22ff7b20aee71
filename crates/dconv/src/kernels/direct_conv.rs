//! A band of output pixels (whole rows of an image, or a run of a 1x1 layer's pixels) of a
//! direct convolution over a zero-padded NHWC input, with the bias and the activation
//! applied and the output's zeros counted on the way: for layers with few taps (a network's
//! first layer: 3 colour channels, K = 27 taps of a 3x3 kernel; or one group of a grouped
//! layer: ShuffleNet's 1x1 groups of 34-136 channels), few pixels (a 3x3 or 1x1 layer at
//! 7 x 7), or, with AVX2, any layer whose weights for a panel of filters fit L2.
//!
//! `out[p * stride + m] = act(bias[m] + sum_k input[window(p) + taps[k]] * w[k][m])`, where
//! pixel `p = y * row_pixels + x` of the band has its window at
//! `base + y * row_step + x * pixel_step`.
//!
//! Lowering such a layer for a GEMM costs more than the product: each lowered row is a few
//! short copies, and a GEMM over K = 27, or over one group's narrow slice of the filters,
//! spends its time packing; so does a GEMM over 49 pixels, repacking 512 x 2048 weights
//! for every call. Here every input value is broadcast straight from the input and
//! multiplied with a vector of filters; a tile of several pixels by up to 64 filters stays in
//! registers across all taps, and is written once, finished. A tile may span the end of one
//! image row and the start of the next, so that a 7-pixel row is not a 6-pixel tile and a
//! lone pixel whose two sums wait on each other's FMA latency.

use super::curve::Curve;
use super::Isa;

/// Filters per packed weight row are padded to a multiple of this (the widest vector).
pub(crate) const FILTER_ALIGN: usize = 16;

/// Filters per panel of the portable kernel's packed weights: the 16 it takes at a time.
const PORTABLE_PANEL: usize = FILTER_ALIGN;

/// Where the weight of tap `k` for filter `m` lies in weights packed for `taps` taps and
/// `padded` filters (a multiple of [`FILTER_ALIGN`]): panels of `panel` filters, the last
/// one narrower, each `[taps][width]`.
///
/// A kernel's panel is the widest block of filters it keeps in registers, so that a tile
/// streams every line of its panel in order, and every narrower block it takes (16, 32 from
/// a multiple of 16) lies within one panel. Rows of all the filters would put each tap's few
/// vectors a whole row apart (8 KB for 2048 filters), a new page and cache set per tap; and
/// panels wider than the block make its lines as many sets apart: AVX2's 16-filter blocks
/// in 64-filter panels used a quarter of L1's sets, and 320 -> 1280 and 512 -> 2048 at 7 x 7
/// ran 15 % slower than in 16-filter panels (Zen 3).
#[inline(always)]
fn packed_index(panel: usize, taps: usize, padded: usize, k: usize, m: usize) -> usize {
    let start = m - m % panel;
    start * taps + k * panel.min(padded - start) + (m - start)
}

/// Where the panel of filter `m` (a block's first) starts, and its width: tap `k`'s weights
/// of filters `m..` are at `start + k * width`.
#[inline(always)]
fn panel_of(panel: usize, taps: usize, padded: usize, m: usize) -> (usize, usize) {
    let first = m - m % panel;
    (
        packed_index(panel, taps, padded, 0, m),
        panel.min(padded - first),
    )
}

/// One band's operands.
pub(crate) struct DirectBand<'a> {
    /// The zero-padded input (NHWC) of one image.
    pub input: &'a [f32],
    /// Where the window of the first pixel of the band's first row starts in `input`.
    pub base: usize,
    /// The column of the band's pixel 0 in that row: a band may start anywhere in a row,
    /// so that bands can be whole tiles of pixels whatever the image's width.
    pub first_column: usize,
    /// Floats between the windows of consecutive output pixels of a row (stride x channels).
    pub pixel_step: usize,
    /// Output pixels per image row.
    pub row_pixels: usize,
    /// Floats between the windows of the first pixels of consecutive rows, at least
    /// `(row_pixels - 1) * pixel_step`, so that later pixels never have earlier windows.
    pub row_step: usize,
    /// Offset of each tap `(r, s, c)` from the window's start.
    pub taps: &'a [u32],
    /// `taps.len() x filters_padded` weights, placed by [`packed_index`].
    pub weights: &'a [f32],
    /// `[filters_padded]`, zero past the real filters.
    pub bias: &'a [f32],
    /// The activation, None for none.
    pub curve: Option<Curve>,
}

/// Where a band's outputs go in its output slice: pixel `p`'s filter `m` at `p * stride + m`
/// (`stride` is the layer's filters: a group's filters are a slice of each pixel's).
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutputPixels {
    pub count: usize,
    pub filters: usize,
    pub stride: usize,
}

/// The windows of consecutive pixels of a band, walked row by row without a division per
/// pixel.
#[derive(Clone, Copy)]
struct Windows {
    /// The next pixel's column.
    x: usize,
    /// The window of its row's first pixel.
    row_start: usize,
}

impl Windows {
    fn new(band: &DirectBand) -> Self {
        Windows {
            x: band.first_column,
            row_start: band.base,
        }
    }

    /// The windows of the next `N` pixels.
    #[inline(always)]
    fn next<const N: usize>(&mut self, band: &DirectBand) -> [usize; N] {
        std::array::from_fn(|_| {
            let window = self.row_start + self.x * band.pixel_step;
            self.x += 1;
            if self.x == band.row_pixels {
                self.x = 0;
                self.row_start += band.row_step;
            }
            window
        })
    }
}

/// The signature of [`DirectConv::band`].
type BandFn = fn(&DirectBand, OutputPixels, &mut [f32]) -> usize;

/// The band kernel of one instruction set, chosen once.
#[derive(Clone, Copy)]
pub(crate) struct DirectConv {
    band: BandFn,
    /// Filters per panel of the weights `band` reads ([`packed_index`]).
    panel: usize,
}

impl DirectConv {
    /// The kernel of `isa`, or the portable one when this CPU lacks it.
    pub fn for_isa(isa: Isa) -> Self {
        let (band, panel) = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if isa.is_supported() => (avx512::checked_band as BandFn, avx512::PANEL),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if isa.is_supported() => (avx2::checked_band as BandFn, avx2::PANEL),
            _ => (portable as BandFn, PORTABLE_PANEL),
        };
        DirectConv { band, panel }
    }

    /// Filters per panel of the weights this kernel reads: each tile streams every tap of
    /// one panel.
    pub fn panel(&self) -> usize {
        self.panel
    }

    /// Where this kernel reads the weight of tap `k` for filter `m`, in weights packed for
    /// `taps` taps and `padded` filters (a multiple of [`FILTER_ALIGN`]).
    #[inline]
    pub fn packed_index(&self, taps: usize, padded: usize, k: usize, m: usize) -> usize {
        packed_index(self.panel, taps, padded, k, m)
    }

    /// Computes one band of output pixels into `out` as `at` places them; returns how many
    /// outputs are exactly zero.
    ///
    /// # Panics
    /// If `at.filters` is 0 or above `at.stride`, `out` is too short for `at`, the bias is
    /// not a multiple of [`FILTER_ALIGN`] at least `at.filters` long, the weights are
    /// shorter than `taps.len() x bias.len()`, a row has no pixels or its step is too short
    /// to keep the windows in order, the first column is past the row, or a tap of some
    /// pixel reads past the input.
    pub fn band(&self, band: &DirectBand, at: OutputPixels, out: &mut [f32]) -> usize {
        let mp = band.bias.len();
        let pixels = at.count;
        assert!(
            at.filters > 0 && at.filters <= at.stride,
            "filters within a pixel"
        );
        let end = pixels
            .checked_sub(1)
            .map(|last| last.checked_mul(at.stride)?.checked_add(at.filters));
        assert!(
            end.is_none_or(|end| end.is_some_and(|e| e <= out.len())),
            "output band too short"
        );
        assert!(
            mp >= at.filters && mp.is_multiple_of(FILTER_ALIGN),
            "padded filters"
        );
        assert!(
            band.weights.len() >= band.taps.len() * mp,
            "weights too short"
        );
        assert!(
            band.row_pixels > 0
                && (band.row_pixels - 1)
                    .checked_mul(band.pixel_step)
                    .is_some_and(|span| span <= band.row_step),
            "rows of pixels in order"
        );
        assert!(
            band.first_column < band.row_pixels,
            "first pixel within its row"
        );
        if let (Some(last), Some(&reach)) = (pixels.checked_sub(1), band.taps.iter().max()) {
            // The last pixel's window is the furthest (row_step above); it lies `last` pixels
            // on from the first row's column `first_column`.
            let end = last
                .checked_add(band.first_column)
                .and_then(|at| {
                    (at / band.row_pixels)
                        .checked_mul(band.row_step)
                        .zip((at % band.row_pixels).checked_mul(band.pixel_step))
                })
                .and_then(|(y, x)| y.checked_add(x))
                .and_then(|v| v.checked_add(band.base))
                .and_then(|v| v.checked_add(reach as usize));
            assert!(
                end.is_some_and(|e| e < band.input.len()),
                "taps read past the input"
            );
        }
        if pixels == 0 {
            return 0;
        }
        (self.band)(band, at, out)
    }
}

/// Plain Rust: a pixel at a time, 16 filters at a time in a stack array.
fn portable(band: &DirectBand, at: OutputPixels, out: &mut [f32]) -> usize {
    let (mp, filters) = (band.bias.len(), at.filters);
    let mut zeros = 0;
    let mut windows = Windows::new(band);
    for p in 0..at.count {
        let pixel = &mut out[p * at.stride..p * at.stride + filters];
        let [window] = windows.next(band);
        for m0 in (0..filters).step_by(FILTER_ALIGN) {
            let mut acc: [f32; FILTER_ALIGN] = band.bias[m0..m0 + FILTER_ALIGN].try_into().unwrap();
            let (start, width) = panel_of(PORTABLE_PANEL, band.taps.len(), mp, m0);
            for (k, &tap) in band.taps.iter().enumerate() {
                let x = band.input[window + tap as usize];
                let w = &band.weights[start + k * width..][..FILTER_ALIGN];
                for (a, &w) in acc.iter_mut().zip(w) {
                    *a += x * w;
                }
            }
            let width = FILTER_ALIGN.min(filters - m0);
            for (o, &a) in pixel[m0..m0 + width].iter_mut().zip(&acc) {
                *o = band.curve.map_or(a, |c| c.apply(a));
                zeros += (*o == 0.0) as usize;
            }
        }
    }
    zeros
}

/// One SIMD kernel per instruction set: tiles of `NP` pixels by `NV` vectors of filters in
/// registers, accumulated over every tap, then finished by the activation, stored and
/// counted.
#[cfg(target_arch = "x86_64")]
macro_rules! direct_band {
    ($module:ident, $feature:literal, $lanes:expr, $vec:ty, [$($plan:tt)*], panel: $panel:expr,
     load: $load:ident, store: $store:ident, splat: $splat:ident,
     fma: |$a:ident, $w:ident, $x:ident| $fma:expr,
     max: $max:ident, min: $min:ident, mul: $mul:ident, fma_ab: $fma_ab:ident,
     mask: |$n:ident| $mask_of:expr, all: $mask_of_all:expr,
     store_masked: |$sp:ident, $sm:ident, $sv:ident| $store_masked:expr,
     count: |$ca:ident, $zv:ident, $zm:ident| $count:expr, count_none: $count_none:expr,
     count_total: |$ct:ident| $count_total:expr) => {
        mod $module {
            use super::{DirectBand, OutputPixels, Windows};
            use crate::kernels::curve::{apply_curve, Curve};
            use std::arch::x86_64::*;

            const LANES: usize = $lanes;
            /// Filters per panel of the packed weights: the plan's widest block.
            pub(super) const PANEL: usize = $panel;

            /// [`compute`] as a safe fn, for [`super::DirectConv`].
            pub fn checked_band(band: &DirectBand, at: OutputPixels, out: &mut [f32]) -> usize {
                // SAFETY: reachable only through a `DirectConv` that `for_isa` built after
                // finding the feature on this CPU, and called by `DirectConv::band` once the
                // operands passed its checks. Every input read is at the window of a pixel
                // p < pixels plus a tap, at most the last pixel's, inside `input`; weights are read at
                // packed_index(taps, mp, k, j) for j < mp, inside `weights`; bias at j < mp;
                // outputs are written at p * stride + j for j < filters only (the last
                // vector masked), inside `out`.
                unsafe { compute(band, at, out) }
            }

            /// # Safety
            /// The CPU must support the target feature, and `band`, `at` and `out` must
            /// pass the checks of `DirectConv::band`.
            #[target_feature(enable = $feature)]
            unsafe fn compute(band: &DirectBand, at: OutputPixels, out: &mut [f32]) -> usize {
                let mp = band.bias.len();
                let mut zeros = 0;
                let mut m0 = 0;
                while m0 < at.filters {
                    // SAFETY: forwarded from the caller; each call reads filters
                    // m0 .. m0 + NV * LANES <= mp of the packed weights and bias.
                    zeros += unsafe { direct_band!(@plan $($plan)*; band, at, out, m0, mp) };
                }
                zeros
            }

            /// Filters `m0 .. m0 + NV * LANES` (within the padded filters) of pixels
            /// `p0 .. p0 + NP` (within the band), whose windows start at `windows`.
            ///
            /// # Safety
            /// As `compute`, and `p0 + NP <= pixels`, `m0 + NV * LANES <= mp`, `windows` those
            /// of pixels `p0 ..`.
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn tile<const NV: usize, const NP: usize>(
                band: &DirectBand,
                at: OutputPixels,
                out: &mut [f32],
                (p0, windows): (usize, [usize; NP]),
                m0: usize,
            ) -> usize {
                let mp = band.bias.len();
                let input = band.input.as_ptr();
                let weights = band.weights.as_ptr();
                // SAFETY: m0 + NV * LANES <= mp = bias.len().
                let mut acc: [[$vec; NV]; NP] = [std::array::from_fn(|v| unsafe {
                    $load(band.bias.as_ptr().add(m0 + v * LANES))
                }); NP];
                let (start, width) = super::panel_of(PANEL, band.taps.len(), mp, m0);
                // SAFETY: each window lies inside the input (the caller's check).
                let pixels: [*const f32; NP] = windows.map(|w| unsafe { input.add(w) });
                for (k, &tap) in band.taps.iter().enumerate() {
                    // SAFETY: the block's filters m0 .. m0 + NV * LANES lie in one panel
                    // (`packed_index`), whose taps end within taps.len() * mp <= weights.len().
                    let w: [$vec; NV] = std::array::from_fn(|v| unsafe {
                        $load(weights.add(start + k * width + v * LANES))
                    });
                    for (acc, &pixel) in acc.iter_mut().zip(&pixels) {
                        // SAFETY: the pixel's window + tap < input.len() since the pixel is
                        // within the band (the caller's check).
                        let $x = $splat(unsafe { *pixel.add(tap as usize) });
                        for (a, &$w) in acc.iter_mut().zip(&w) {
                            let $a = *a;
                            *a = $fma;
                        }
                    }
                }
                // SAFETY: forwarded from the caller.
                unsafe { finish::<NV, NP>(acc, band, at, out, p0, m0) }
            }

            /// Applies the curve to a tile's sums, stores them and counts their zeros. Out of
            /// line, so that the sums stay in registers across the taps: inlined, the compiler
            /// kept them in stack slots and stored every one on every tap (perf annotate).
            ///
            /// # Safety
            /// As `tile`.
            #[target_feature(enable = $feature)]
            #[inline(never)]
            unsafe fn finish<const NV: usize, const NP: usize>(
                mut acc: [[$vec; NV]; NP],
                band: &DirectBand,
                at: OutputPixels,
                out: &mut [f32],
                p0: usize,
                m0: usize,
            ) -> usize {
                // The zeros so far, per lane where the ISA counts them in a vector.
                let mut count = $count_none;
                // Lanes of each vector that hold real filters: all but in the last block.
                let width = at.filters - m0;
                let lanes: [usize; NV] = std::array::from_fn(|v| width.saturating_sub(v * LANES).min(LANES));
                for (p, acc) in acc.iter_mut().enumerate() {
                    let dst = (p0 + p) * at.stride + m0;
                    if let Some(c) = band.curve {
                        for a in acc.iter_mut() {
                            *a = apply_curve!(c, *a, $splat, $max, $min, $mul, $fma_ab);
                        }
                    }
                    for (v, &a) in acc.iter().enumerate() {
                        let to = out.as_mut_ptr().wrapping_add(dst + v * LANES);
                        let $zv = a;
                        if lanes[v] == LANES {
                            // SAFETY: dst + (v + 1) * LANES <= (p0 + p) * stride + filters
                            // <= out.len().
                            unsafe { $store(to, a) };
                            let ($ca, $zm) = (count, $mask_of_all);
                            count = $count;
                        } else if lanes[v] > 0 {
                            let $n = lanes[v];
                            let ($ca, $zm) = (count, $mask_of);
                            let ($sp, $sm, $sv) = (to, $zm, a);
                            // SAFETY: the mask keeps the store to the filters that exist,
                            // inside `out` as above.
                            unsafe { $store_masked };
                            count = $count;
                        }
                    }
                }
                let $ct = count;
                $count_total
            }
        }
    };
    // Runs the filter block at m0 with NV vectors over all pixels (tiles of NP, then single
    // pixels), then advances m0.
    (@block $nv:literal, $np:literal; $band:ident, $at:ident, $out:ident, $m0:ident) => {{
        let mut zeros = 0;
        let mut p0 = 0;
        let mut windows = Windows::new($band);
        while p0 + $np <= $at.count {
            let pixels = (p0, windows.next::<$np>($band));
            zeros += tile::<$nv, $np>($band, $at, $out, pixels, $m0);
            p0 += $np;
        }
        // The last few pixels in halves, pairs and ones rather than one at a time.
        while p0 + $np / 2 <= $at.count {
            let pixels = (p0, windows.next::<{ $np / 2 }>($band));
            zeros += tile::<$nv, { $np / 2 }>($band, $at, $out, pixels, $m0);
            p0 += $np / 2;
        }
        while p0 + 2 <= $at.count {
            let pixels = (p0, windows.next::<2>($band));
            zeros += tile::<$nv, 2>($band, $at, $out, pixels, $m0);
            p0 += 2;
        }
        while p0 < $at.count {
            let pixels = (p0, windows.next::<1>($band));
            zeros += tile::<$nv, 1>($band, $at, $out, pixels, $m0);
            p0 += 1;
        }
        $m0 += $nv * LANES;
        zeros
    }};
    // Picks the widest block of filters that the padded filters still hold.
    (@plan $($nv:literal x $np:literal),*; $band:ident, $at:ident, $out:ident, $m0:ident, $mp:ident) => {{
        let left = ($mp - $m0) / LANES;
        $(
            if left >= $nv {
                direct_band!(@block $nv, $np; $band, $at, $out, $m0)
            } else
        )* {
            unreachable!("the padded filters are a multiple of every block's last option")
        }
    }};
}

// AVX-512's widest tile: 24 sums, 4 weight vectors and a broadcast in its 32 registers.
// Against 4 x 5: 15 % faster on 512 -> 2048 at 7 x 7, 6-8 % on 3 -> 64 at 224 x 224.
#[cfg(target_arch = "x86_64")]
direct_band!(avx512, "avx512f,popcnt", 16, __m512, [4 x 6, 2 x 10, 1 x 12], panel: 4 * 16,
    load: _mm512_loadu_ps, store: _mm512_storeu_ps, splat: _mm512_set1_ps,
    fma: |a, w, x| _mm512_fmadd_ps(x, w, a),
    max: _mm512_max_ps, min: _mm512_min_ps, mul: _mm512_mul_ps, fma_ab: _mm512_fmadd_ps,
    mask: |n| ((1u32 << n) - 1) as __mmask16, all: 0xffff_u16,
    store_masked: |p, m, v| _mm512_mask_storeu_ps(p, m, v),
    count: |n, v, m| n + (_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v, _mm512_setzero_ps()) & m).count_ones() as usize,
    count_none: 0, count_total: |n| n);

#[cfg(target_arch = "x86_64")]
direct_band!(avx2, "avx2,fma,popcnt", 8, __m256, [2 x 6, 1 x 12], panel: 2 * 8,
    load: _mm256_loadu_ps, store: _mm256_storeu_ps, splat: _mm256_set1_ps,
    fma: |a, w, x| _mm256_fmadd_ps(x, w, a),
    max: _mm256_max_ps, min: _mm256_min_ps, mul: _mm256_mul_ps, fma_ab: _mm256_fmadd_ps,
    mask: |n| _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
    all: _mm256_set1_epi32(-1),
    store_masked: |p, m, v| _mm256_maskstore_ps(p, m, v),
    // Zeros counted in a vector (a compare's true lane is -1: subtracting it adds 1), summed
    // once per tile: a movemask, popcount and add per vector, through the integer registers,
    // held up small-k tiles; 16 -> 64 and 24 -> 144 1x1 at 55-56 pixels square ran 4-5 %
    // faster (Zen 3).
    count: |n, v, m| _mm256_sub_epi32(n, _mm256_and_si256(
        _mm256_castps_si256(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, _mm256_setzero_ps())), m)),
    count_none: _mm256_setzero_si256(),
    count_total: |n| super::lane_sum_avx2(n));

/// The sum of the eight counts in `n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn lane_sum_avx2(n: std::arch::x86_64::__m256i) -> usize {
    use std::arch::x86_64::*;
    let half = _mm_add_epi32(_mm256_castsi256_si128(n), _mm256_extracti128_si256::<1>(n));
    let quarter = _mm_add_epi32(half, _mm_unpackhi_epi64(half, half));
    (_mm_cvtsi128_si32(quarter) + _mm_extract_epi32::<1>(quarter)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::Activation;
    use crate::synth::Rng;

    #[test]
    fn every_isa_matches_the_definition() {
        let mut rng = Rng::new(9);
        for isa in Isa::supported() {
            let kernel = DirectConv::for_isa(isa);
            // Every activation: ReLU, ReLU6, HardSwish, HardSigmoid, none.
            let hard_swish = Activation::HardSwish.curve();
            let hard_sigmoid = Activation::HardSigmoid {
                alpha: 0.2,
                beta: 0.5,
            }
            .curve();
            for (filters, pixels, taps_len, gap, curve) in [
                (64usize, 15usize, 27usize, 0usize, Activation::Relu.curve()),
                (16, 13, 5, 3, None),
                (3, 7, 1, 0, Activation::Relu6.curve()),
                (40, 1, 12, 5, hard_swish),
                (100, 29, 9, 0, hard_sigmoid),
                (5, 0, 3, 1, None),
                (20, 14, 4, 0, hard_swish),
                (34, 23, 34, 34, Activation::Relu.curve()),
                // Panels of 64, 64 and 32 filters.
                (150, 11, 7, 2, Activation::Relu.curve()),
            ] {
                let mp = filters.next_multiple_of(FILTER_ALIGN);
                // Rows of 5 pixels, 7 floats apart (a gap of 1 between rows), so that tiles
                // span rows; the band starts at some column of its first row.
                let (step, row_pixels, row_step) = (3, 5, 16);
                let first_column = (pixels + taps_len) % row_pixels;
                let window = |p: usize| {
                    let at = first_column + p;
                    2 + at / row_pixels * row_step + at % row_pixels * step
                };
                let taps: Vec<u32> = (0..taps_len)
                    .map(|_| (rng.next_u64() % 40) as u32)
                    .collect();
                let input: Vec<f32> = (0..window(pixels) + 45)
                    .map(|_| rng.nonzero_value())
                    .collect();
                let mut weights: Vec<f32> =
                    (0..taps_len * mp).map(|_| rng.nonzero_value()).collect();
                let mut bias: Vec<f32> = (0..mp).map(|_| rng.nonzero_value()).collect();
                for j in filters..mp {
                    bias[j] = 0.0;
                    for k in 0..taps_len {
                        weights[kernel.packed_index(taps_len, mp, k, j)] = 0.0;
                    }
                }
                let band = DirectBand {
                    input: &input,
                    base: 2,
                    first_column,
                    pixel_step: step,
                    row_pixels,
                    row_step,
                    taps: &taps,
                    weights: &weights,
                    bias: &bias,
                    curve,
                };
                // Each pixel's filters are a slice of a wider pixel (a group's, at an
                // offset): the gaps must stay untouched.
                let (offset, stride) = (gap, filters + 2 * gap);
                let mut want = vec![f32::NAN; pixels * stride + gap];
                for p in 0..pixels {
                    for m in 0..filters {
                        let mut acc = bias[m];
                        for (k, &t) in taps.iter().enumerate() {
                            acc += input[window(p) + t as usize]
                                * weights[kernel.packed_index(taps_len, mp, k, m)];
                        }
                        want[p * stride + offset + m] = curve.map_or(acc, |c| c.apply(acc));
                    }
                }
                let mut got = vec![f32::NAN; want.len()];
                let at = OutputPixels {
                    count: pixels,
                    filters,
                    stride,
                };
                let zeros = kernel.band(&band, at, &mut got[offset..]);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-4 * w.abs().max(1.0) || (g.is_nan() && w.is_nan()),
                        "{isa} {filters}: {g} vs {w}"
                    );
                }
                assert_eq!(zeros, got.iter().filter(|&&v| v == 0.0).count(), "{isa}");
            }
        }
    }

    /// Runs the portable kernel on 16 zero filters over `pixels` pixels of `input`, in rows
    /// `row_pixels` wide and `row_step` apart from `first_column` on, 3 floats between pixels.
    fn run_band(input: &[f32], taps: &[u32], pixels: usize, rows: [usize; 3]) {
        let [first_column, row_pixels, row_step] = rows;
        let weights = vec![0.0; taps.len() * 16];
        let band = DirectBand {
            input,
            base: 0,
            first_column,
            pixel_step: 3,
            row_pixels,
            row_step,
            taps,
            weights: &weights,
            bias: &[0.0; 16],
            curve: None,
        };
        let at = OutputPixels {
            count: pixels,
            filters: 16,
            stride: 16,
        };
        DirectConv::for_isa(Isa::Portable).band(&band, at, &mut vec![0.0; pixels * 16]);
    }

    #[test]
    #[should_panic(expected = "taps read past the input")]
    fn a_tap_past_the_input_panics() {
        run_band(&[0.0; 7], &[0, 4], 2, [0, 2, 3]);
    }

    /// The check follows a band that starts mid-row: from column 0 these two pixels' taps
    /// end at 7, inside the input; from column 1 the second pixel wraps to the next row,
    /// whose window is further on.
    #[test]
    fn the_input_check_follows_a_band_that_starts_mid_row() {
        let run = |first_column| {
            std::panic::catch_unwind(|| run_band(&[0.0; 8], &[0, 4], 2, [first_column, 2, 4]))
        };
        assert!(run(0).is_ok());
        let message = run(1).expect_err("from column 1 the taps end at 8");
        assert_eq!(
            message.downcast_ref::<&str>(),
            Some(&"taps read past the input")
        );
    }

    /// A band whose first pixel lies past the end of its row would read windows the checks
    /// did not cover.
    #[test]
    #[should_panic(expected = "first pixel within its row")]
    fn a_first_column_past_the_row_panics() {
        run_band(&[0.0; 64], &[0], 1, [4, 4, 12]);
    }

    #[test]
    #[should_panic(expected = "rows of pixels in order")]
    fn rows_that_overlap_panic() {
        run_band(&[0.0; 64], &[0], 8, [0, 4, 8]);
    }
}
