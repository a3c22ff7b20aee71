//! One output row of a direct convolution over a zero-padded NHWC input with few channels
//! (a network's first layer: 3 colour channels, K = 27 taps of a 3x3 kernel), with the bias
//! and the activation applied and the output's zeros counted on the way.
//!
//! `out[ox][m] = act(bias[m] + sum_k input[base + ox * pixel_step + taps[k]] * w[k][m])`
//!
//! Lowering such a layer for a GEMM costs more than the product: each lowered row is a few
//! short copies, and a GEMM over K = 27 spends its time packing. Here every input value is
//! broadcast straight from the padded input and multiplied with a vector of filters; a tile
//! of several pixels by up to 64 filters stays in registers across all taps, and is written
//! once, finished.

use super::curve::Curve;
use super::Isa;

/// Filters per packed weight row are padded to a multiple of this (the widest vector).
pub(crate) const FILTER_ALIGN: usize = 16;

/// One output row's operands.
pub(crate) struct DirectRow<'a> {
    /// The zero-padded input (NHWC) of one image.
    pub input: &'a [f32],
    /// Where the window of output pixel 0 starts in `input`.
    pub base: usize,
    /// Floats between the windows of consecutive output pixels (stride x channels).
    pub pixel_step: usize,
    /// Offset of each tap `(r, s, c)` from the window's start.
    pub taps: &'a [u32],
    /// `[taps.len()][filters_padded]`: the weights of each tap, contiguous over filters.
    pub weights: &'a [f32],
    /// `[filters_padded]`, zero past the real filters.
    pub bias: &'a [f32],
    /// The activation, None for none.
    pub curve: Option<Curve>,
}

/// The row kernel of one instruction set, chosen once.
#[derive(Clone, Copy)]
pub(crate) struct DirectConv {
    row: fn(&DirectRow, usize, &mut [f32]) -> usize,
}

impl DirectConv {
    /// The kernel of `isa`, or the portable one when this CPU lacks it.
    pub fn for_isa(isa: Isa) -> Self {
        let row = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if isa.is_supported() => avx512::checked_row,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if isa.is_supported() => avx2::checked_row,
            _ => portable,
        };
        DirectConv { row }
    }

    /// Computes one output row, `out = [out_width][filters]`; returns how many outputs are
    /// exactly zero.
    ///
    /// # Panics
    /// If `filters` is 0 or does not divide `out.len()`, the bias is not a multiple of
    /// [`FILTER_ALIGN`] at least `filters` long, the weights are shorter than
    /// `taps.len() x bias.len()`, or a tap of some pixel reads past the input.
    pub fn row(&self, row: &DirectRow, filters: usize, out: &mut [f32]) -> usize {
        let mp = row.bias.len();
        assert!(
            filters > 0 && out.len().is_multiple_of(filters),
            "output row of whole pixels"
        );
        assert!(
            mp >= filters && mp.is_multiple_of(FILTER_ALIGN),
            "padded filters"
        );
        assert!(
            row.weights.len() >= row.taps.len() * mp,
            "weights too short"
        );
        let pixels = out.len() / filters;
        if let (Some(last), Some(&reach)) = (pixels.checked_sub(1), row.taps.iter().max()) {
            let end = last
                .checked_mul(row.pixel_step)
                .and_then(|v| v.checked_add(row.base))
                .and_then(|v| v.checked_add(reach as usize));
            assert!(
                end.is_some_and(|e| e < row.input.len()),
                "taps read past the input"
            );
        }
        if pixels == 0 {
            return 0;
        }
        (self.row)(row, filters, out)
    }
}

/// Plain Rust: a pixel at a time, 16 filters at a time in a stack array.
fn portable(row: &DirectRow, filters: usize, out: &mut [f32]) -> usize {
    let mp = row.bias.len();
    let mut zeros = 0;
    for (p, pixel) in out.chunks_exact_mut(filters).enumerate() {
        let window = row.base + p * row.pixel_step;
        for m0 in (0..filters).step_by(FILTER_ALIGN) {
            let mut acc: [f32; FILTER_ALIGN] = row.bias[m0..m0 + FILTER_ALIGN].try_into().unwrap();
            for (k, &tap) in row.taps.iter().enumerate() {
                let x = row.input[window + tap as usize];
                let w = &row.weights[k * mp + m0..k * mp + m0 + FILTER_ALIGN];
                for (a, &w) in acc.iter_mut().zip(w) {
                    *a += x * w;
                }
            }
            let width = FILTER_ALIGN.min(filters - m0);
            for (o, &a) in pixel[m0..m0 + width].iter_mut().zip(&acc) {
                *o = row.curve.map_or(a, |c| c.apply(a));
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
macro_rules! direct_row {
    ($module:ident, $feature:literal, $lanes:expr, $vec:ty, [$($plan:tt)*],
     load: $load:ident, store: $store:ident, splat: $splat:ident,
     fma: |$a:ident, $w:ident, $x:ident| $fma:expr,
     max: $max:ident, min: $min:ident, mul: $mul:ident, fma_ab: $fma_ab:ident,
     zeros: |$z:ident| $zeros:expr) => {
        mod $module {
            use super::DirectRow;
            use crate::kernels::curve::{apply_curve, Curve};
            use std::arch::x86_64::*;

            const LANES: usize = $lanes;

            /// [`row`] as a safe fn, for [`super::DirectConv`].
            pub fn checked_row(row: &DirectRow, filters: usize, out: &mut [f32]) -> usize {
                // SAFETY: reachable only through a `DirectConv` that `for_isa` built after
                // finding the feature on this CPU, and called by `DirectConv::row` once the
                // operands passed its checks. Every input read is at base + p * pixel_step
                // + tap for p < pixels, inside `input`; weights are read at k * mp + j for
                // j < mp, inside `weights`; bias at j < mp; outputs are written at
                // p * filters + j for j < filters only.
                unsafe { self::row(row, filters, out) }
            }

            /// # Safety
            /// The CPU must support the target feature, and `row`, `filters` and `out` must
            /// pass the checks of `DirectConv::row`.
            #[target_feature(enable = $feature)]
            unsafe fn row(row: &DirectRow, filters: usize, out: &mut [f32]) -> usize {
                let mp = row.bias.len();
                let pixels = out.len() / filters;
                let mut zeros = 0;
                let mut m0 = 0;
                while m0 < filters {
                    // SAFETY: forwarded from the caller; each call reads filters
                    // m0 .. m0 + NV * LANES <= mp of the packed weights and bias.
                    zeros += unsafe { direct_row!(@plan $($plan)*; row, filters, out, m0, pixels, mp) };
                }
                zeros
            }

            /// Filters `m0 .. m0 + NV * LANES` (within the padded filters) of pixels
            /// `p0 .. p0 + NP` (within the row).
            ///
            /// # Safety
            /// As `row`, and `p0 + NP <= pixels`, `m0 + NV * LANES <= mp`.
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn tile<const NV: usize, const NP: usize>(
                row: &DirectRow,
                filters: usize,
                out: &mut [f32],
                p0: usize,
                m0: usize,
            ) -> usize {
                let mp = row.bias.len();
                let input = row.input.as_ptr();
                let weights = row.weights.as_ptr();
                // SAFETY: m0 + NV * LANES <= mp = bias.len().
                let mut acc: [[$vec; NV]; NP] = [std::array::from_fn(|v| unsafe {
                    $load(row.bias.as_ptr().add(m0 + v * LANES))
                }); NP];
                let window = row.base + p0 * row.pixel_step;
                for (k, &tap) in row.taps.iter().enumerate() {
                    // SAFETY: k * mp + m0 + NV * LANES <= taps.len() * mp <= weights.len().
                    let w: [$vec; NV] = std::array::from_fn(|v| unsafe {
                        $load(weights.add(k * mp + m0 + v * LANES))
                    });
                    let at = window + tap as usize;
                    for (p, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: base + (p0 + p) * pixel_step + tap < input.len() since
                        // p0 + p < pixels (the caller's check).
                        let $x = $splat(unsafe { *input.add(at + p * row.pixel_step) });
                        for (a, &$w) in acc.iter_mut().zip(&w) {
                            let $a = *a;
                            *a = $fma;
                        }
                    }
                }
                // SAFETY: forwarded from the caller.
                unsafe { finish::<NV, NP>(acc, row, filters, out, p0, m0) }
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
                row: &DirectRow,
                filters: usize,
                out: &mut [f32],
                p0: usize,
                m0: usize,
            ) -> usize {
                let mut zeros = 0;
                let width = (filters - m0).min(NV * LANES);
                for (p, acc) in acc.iter_mut().enumerate() {
                    let dst = (p0 + p) * filters + m0;
                    if let Some(c) = row.curve {
                        for a in acc.iter_mut() {
                            *a = apply_curve!(c, *a, $splat, $max, $min, $mul, $fma_ab);
                        }
                    }
                    if width == NV * LANES {
                        for (v, &a) in acc.iter().enumerate() {
                            // SAFETY: dst + (v + 1) * LANES <= (p0 + p) * filters + filters
                            // <= out.len().
                            unsafe { $store(out.as_mut_ptr().add(dst + v * LANES), a) };
                            let $z = a;
                            zeros += $zeros;
                        }
                    } else {
                        // The last filters: through a stack copy, only the real ones out.
                        let mut tmp = [0.0f32; 64];
                        for (v, &a) in acc.iter().enumerate() {
                            // SAFETY: NV * LANES <= 64 floats of tmp.
                            unsafe { $store(tmp.as_mut_ptr().add(v * LANES), a) };
                        }
                        for (o, &t) in out[dst..dst + width].iter_mut().zip(&tmp) {
                            *o = t;
                            zeros += (t == 0.0) as usize;
                        }
                    }
                }
                zeros
            }
        }
    };
    // Runs the filter block at m0 with NV vectors over all pixels (tiles of NP, then single
    // pixels), then advances m0.
    (@block $nv:literal, $np:literal; $row:ident, $filters:ident, $out:ident, $m0:ident, $pixels:ident) => {{
        let mut zeros = 0;
        let mut p0 = 0;
        while p0 + $np <= $pixels {
            zeros += tile::<$nv, $np>($row, $filters, $out, p0, $m0);
            p0 += $np;
        }
        while p0 < $pixels {
            zeros += tile::<$nv, 1>($row, $filters, $out, p0, $m0);
            p0 += 1;
        }
        $m0 += $nv * LANES;
        zeros
    }};
    // Picks the widest block of filters that the padded filters still hold.
    (@plan $($nv:literal x $np:literal),*; $row:ident, $filters:ident, $out:ident, $m0:ident, $pixels:ident, $mp:ident) => {{
        let left = ($mp - $m0) / LANES;
        $(
            if left >= $nv {
                direct_row!(@block $nv, $np; $row, $filters, $out, $m0, $pixels)
            } else
        )* {
            unreachable!("the padded filters are a multiple of every block's last option")
        }
    }};
}

#[cfg(target_arch = "x86_64")]
direct_row!(avx512, "avx512f", 16, __m512, [4 x 5, 2 x 10, 1 x 12],
    load: _mm512_loadu_ps, store: _mm512_storeu_ps, splat: _mm512_set1_ps,
    fma: |a, w, x| _mm512_fmadd_ps(x, w, a),
    max: _mm512_max_ps, min: _mm512_min_ps, mul: _mm512_mul_ps, fma_ab: _mm512_fmadd_ps,
    zeros: |v| _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v, _mm512_setzero_ps()).count_ones() as usize);

#[cfg(target_arch = "x86_64")]
direct_row!(avx2, "avx2,fma", 8, __m256, [2 x 6, 1 x 12],
    load: _mm256_loadu_ps, store: _mm256_storeu_ps, splat: _mm256_set1_ps,
    fma: |a, w, x| _mm256_fmadd_ps(x, w, a),
    max: _mm256_max_ps, min: _mm256_min_ps, mul: _mm256_mul_ps, fma_ab: _mm256_fmadd_ps,
    zeros: |v| _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, _mm256_setzero_ps())).count_ones() as usize);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::Activation;
    use crate::synth::Rng;

    #[test]
    fn every_isa_matches_the_definition() {
        let mut rng = Rng::new(9);
        for isa in Isa::supported() {
            // Every activation: ReLU, ReLU6, HardSwish, HardSigmoid, none.
            let hard_swish = Activation::HardSwish.curve();
            let hard_sigmoid = Activation::HardSigmoid {
                alpha: 0.2,
                beta: 0.5,
            }
            .curve();
            for (filters, pixels, taps_len, curve) in [
                (64usize, 15usize, 27usize, Activation::Relu.curve()),
                (16, 13, 5, None),
                (3, 7, 1, Activation::Relu6.curve()),
                (40, 1, 12, hard_swish),
                (100, 29, 9, hard_sigmoid),
                (5, 0, 3, None),
                (20, 14, 4, hard_swish),
            ] {
                let mp = filters.next_multiple_of(FILTER_ALIGN);
                let step = 3;
                let taps: Vec<u32> = (0..taps_len)
                    .map(|_| (rng.next_u64() % 40) as u32)
                    .collect();
                let input: Vec<f32> = (0..pixels * step + 45)
                    .map(|_| rng.nonzero_value())
                    .collect();
                let mut weights: Vec<f32> =
                    (0..taps_len * mp).map(|_| rng.nonzero_value()).collect();
                let mut bias: Vec<f32> = (0..mp).map(|_| rng.nonzero_value()).collect();
                for j in filters..mp {
                    bias[j] = 0.0;
                    for k in 0..taps_len {
                        weights[k * mp + j] = 0.0;
                    }
                }
                let row = DirectRow {
                    input: &input,
                    base: 2,
                    pixel_step: step,
                    taps: &taps,
                    weights: &weights,
                    bias: &bias,
                    curve,
                };
                let mut want = vec![0.0; pixels * filters];
                for p in 0..pixels {
                    for m in 0..filters {
                        let mut acc = bias[m];
                        for (k, &t) in taps.iter().enumerate() {
                            acc += input[2 + p * step + t as usize] * weights[k * mp + m];
                        }
                        want[p * filters + m] = curve.map_or(acc, |c| c.apply(acc));
                    }
                }
                let mut got = vec![f32::NAN; want.len()];
                let zeros = DirectConv::for_isa(isa).row(&row, filters, &mut got);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                        "{isa} {filters}: {g} vs {w}"
                    );
                }
                assert_eq!(zeros, got.iter().filter(|&&v| v == 0.0).count(), "{isa}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "taps read past the input")]
    fn a_tap_past_the_input_panics() {
        let row = DirectRow {
            input: &[0.0; 7],
            base: 0,
            pixel_step: 3,
            taps: &[0, 4],
            weights: &[0.0; 32],
            bias: &[0.0; 16],
            curve: None,
        };
        DirectConv::for_isa(Isa::Portable).row(&row, 16, &mut [0.0; 32]);
    }
}
