//! Out-of-place transposition of a strided block:
//! `dst[j * dst_stride + i] = src[i * src_stride + j]` for `i < rows`, `j < cols`, optionally
//! finishing each value on its way (bias of its source row, then an activation).
//!
//! A direct convolution over channel planes changes layout twice per layer (channels-last
//! pixels into planes, and its sums back into channels-last pixels). Element by element
//! those copies cost as much as the product itself at high weight sparsity; in 8 x 8 blocks
//! through vector registers they cost a fraction of it, and the sums take their bias and
//! activation while still in registers rather than in a second pass over the output.
//! (16 x 16 blocks with AVX-512 were slower: sixteen destination rows at a plane's stride
//! apart thrash L1 where eight do not.)

use super::curve::Curve;
use super::Isa;

/// What a transposition does to each value `v` of source row `i` before storing it:
/// `curve(v + bias[i])`, the curve only when set (a convolution's bias and activation).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Finish<'a> {
    pub bias: &'a [f32],
    pub curve: Option<Curve>,
}

impl Finish<'_> {
    #[inline(always)]
    fn apply(&self, i: usize, v: f32) -> f32 {
        let v = v + self.bias[i];
        self.curve.map_or(v, |c| c.apply(v))
    }
}

/// The transposition of one instruction set, chosen once.
#[derive(Clone, Copy)]
pub(crate) struct Transpose {
    blocks: fn(&mut Block, (usize, usize)) -> usize,
}

impl Transpose {
    /// For AVX2 and AVX-512, 8 x 8 blocks in AVX registers when this CPU has AVX and
    /// POPCNT ([`vectorised`](Self::vectorised)); else element by element.
    pub fn for_isa(isa: Isa) -> Self {
        Self::vectorised(isa).unwrap_or(Transpose { blocks: scalar })
    }

    /// The transposition through vector registers, when `isa` has one on this CPU (AVX2
    /// and AVX-512, with AVX and POPCNT).
    pub fn vectorised(isa: Isa) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if matches!(isa, Isa::Avx2 | Isa::Avx512)
                && is_x86_feature_detected!("avx")
                && is_x86_feature_detected!("popcnt")
            {
                return Some(Transpose {
                    blocks: x86::checked_avx,
                });
            }
        }
        let _ = isa;
        None
    }

    /// Transposes the `rows x cols` block of `src` (row `i` at `i * src_stride`) into `dst`
    /// (row `j` at `j * dst_stride`).
    ///
    /// # Panics
    /// If either block does not fit its slice, or `dst_stride < rows` (rows would overlap).
    pub fn transpose(
        &self,
        src: &[f32],
        src_stride: usize,
        dst: &mut [f32],
        dst_stride: usize,
        shape: (usize, usize),
    ) {
        self.transpose_finish(src, src_stride, dst, dst_stride, shape, None);
    }

    /// [`transpose`](Self::transpose), finishing every value with `finish` when given;
    /// returns how many of the finished values are exactly zero (0 without `finish`).
    ///
    /// # Panics
    /// As [`transpose`](Self::transpose), and if the bias is shorter than `rows`.
    pub fn transpose_finish(
        &self,
        src: &[f32],
        src_stride: usize,
        dst: &mut [f32],
        dst_stride: usize,
        (rows, cols): (usize, usize),
        finish: Option<Finish>,
    ) -> usize {
        if rows == 0 || cols == 0 {
            return 0;
        }
        let end = |lines: usize, stride: usize, len: usize| {
            (lines - 1)
                .checked_mul(stride)
                .and_then(|v| v.checked_add(len))
        };
        assert!(
            end(rows, src_stride, cols).is_some_and(|e| e <= src.len()),
            "transpose: source too short"
        );
        assert!(
            dst_stride >= rows && end(cols, dst_stride, rows).is_some_and(|e| e <= dst.len()),
            "transpose: destination too short"
        );
        assert!(
            finish.is_none_or(|f| f.bias.len() >= rows),
            "transpose: bias too short"
        );
        let mut block = Block {
            src,
            src_stride,
            dst,
            dst_stride,
            finish,
        };
        (self.blocks)(&mut block, (rows, cols))
    }
}

/// The operands of one transposition, as checked by [`Transpose::transpose_finish`].
struct Block<'a, 'b> {
    src: &'a [f32],
    src_stride: usize,
    dst: &'a mut [f32],
    dst_stride: usize,
    finish: Option<Finish<'b>>,
}

/// Element by element, over the `rows x cols` block.
fn scalar(b: &mut Block, (rows, cols): (usize, usize)) -> usize {
    let mut zeros = 0;
    for j in 0..cols {
        let out = &mut b.dst[j * b.dst_stride..j * b.dst_stride + rows];
        for (i, o) in (0..rows).zip(out) {
            let v = b.src[i * b.src_stride + j];
            *o = match b.finish {
                Some(f) => {
                    let v = f.apply(i, v);
                    zeros += usize::from(v == 0.0);
                    v
                }
                None => v,
            };
        }
    }
    zeros
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Block, Curve};
    use std::arch::x86_64::*;

    const W: usize = 8;

    /// [`avx`] as a safe fn, for [`super::Transpose`].
    pub fn checked_avx(b: &mut Block, shape: (usize, usize)) -> usize {
        // SAFETY: reachable only through a `Transpose` that `for_isa` built after finding
        // AVX and POPCNT on this CPU, and called by `Transpose::transpose_finish` once its
        // asserts kept every element of both blocks, and every bias the rows read, in their
        // slices.
        unsafe { avx(b, shape) }
    }

    /// 8 x 8 blocks in AVX registers; blocks cut by the right or bottom edge through masked
    /// loads and stores (the lanes past the edge read as zero and are never written).
    ///
    /// # Safety
    /// The CPU must support AVX and POPCNT, and the `rows x cols` blocks must lie inside
    /// both slices (and the bias), as [`super::Transpose::transpose_finish`] checks.
    #[target_feature(enable = "avx,popcnt")]
    unsafe fn avx(b: &mut Block, (rows, cols): (usize, usize)) -> usize {
        let (i_full, j_full) = (rows / W * W, cols / W * W);
        let mut zeros = 0;
        for i in (0..i_full).step_by(W) {
            // SAFETY: rows i..i+8 of the bias are inside it.
            let bias = b
                .finish
                .map(|f| unsafe { (_mm256_loadu_ps(f.bias.as_ptr().add(i)), f.curve) });
            for j in (0..j_full).step_by(W) {
                // SAFETY: rows i..i+8 and columns j..j+8 are inside both blocks.
                let rows: [__m256; W] = std::array::from_fn(|k| unsafe {
                    _mm256_loadu_ps(b.src.as_ptr().add((i + k) * b.src_stride + j))
                });
                for (k, v) in transpose8(rows).into_iter().enumerate() {
                    let v = match bias {
                        Some((bias, curve)) => {
                            let v = finish8(v, bias, curve);
                            zeros += zeros8(v, W);
                            v
                        }
                        None => v,
                    };
                    // SAFETY: as above.
                    unsafe {
                        _mm256_storeu_ps(b.dst.as_mut_ptr().add((j + k) * b.dst_stride + i), v)
                    };
                }
            }
        }
        // The right edge, then the bottom one (corner included).
        let edges = (0..i_full)
            .step_by(W)
            .filter(|_| j_full < cols)
            .map(|i| (i, j_full))
            .chain(
                (i_full..rows)
                    .step_by(W)
                    .flat_map(|i| (0..cols).step_by(W).map(move |j| (i, j))),
            );
        for (i, j) in edges {
            // SAFETY: the block at (i, j), cut at (rows, cols), lies inside both slices.
            zeros += unsafe { edge(b, (i, j), (W.min(rows - i), W.min(cols - j))) };
        }
        zeros
    }

    /// The `h x w` block at source row `i`, column `j` (h, w <= 8), through masks; returns
    /// the zeros it finished.
    ///
    /// # Safety
    /// As [`avx`], for this block.
    #[target_feature(enable = "avx,popcnt")]
    unsafe fn edge(b: &mut Block, (i, j): (usize, usize), (h, w): (usize, usize)) -> usize {
        let src = b.src.as_ptr().wrapping_add(i * b.src_stride + j);
        let (row_mask, column_mask) = (first_lanes(h), first_lanes(w));
        // SAFETY: rows i..i+h and columns j..j+w are inside the source block; the masked
        // load reads only those columns, and rows past h are not read.
        let rows: [__m256; W] = std::array::from_fn(|k| unsafe {
            if k < h {
                _mm256_maskload_ps(src.add(k * b.src_stride), column_mask)
            } else {
                _mm256_setzero_ps()
            }
        });
        let dst = b.dst.as_mut_ptr().wrapping_add(j * b.dst_stride + i);
        let mut zeros = 0;
        // Only the first w vectors are stored, and only their first h lanes.
        for (k, v) in transpose8(rows).into_iter().enumerate().take(w) {
            let v = match b.finish {
                Some(f) => {
                    // SAFETY: rows i..i+h of the bias are inside it; the mask reads no others.
                    let bias = unsafe { _mm256_maskload_ps(f.bias.as_ptr().add(i), row_mask) };
                    let v = finish8(v, bias, f.curve);
                    zeros += zeros8(v, h);
                    v
                }
                None => v,
            };
            // SAFETY: destination row j + k < cols, columns i..i+h (the mask writes no
            // others): inside the destination block.
            unsafe { _mm256_maskstore_ps(dst.add(k * b.dst_stride), row_mask, v) };
        }
        zeros
    }

    /// `curve(v + bias)`, the curve only when set.
    #[inline]
    #[target_feature(enable = "avx")]
    fn finish8(v: __m256, bias: __m256, curve: Option<Curve>) -> __m256 {
        let v = _mm256_add_ps(v, bias);
        let Some(c) = curve else { return v };
        let affine = if c.is_plain_clamp() {
            v
        } else {
            _mm256_add_ps(
                _mm256_mul_ps(_mm256_set1_ps(c.alpha), v),
                _mm256_set1_ps(c.beta),
            )
        };
        let t = _mm256_min_ps(
            _mm256_max_ps(affine, _mm256_set1_ps(c.lo)),
            _mm256_set1_ps(c.hi),
        );
        if c.gated {
            _mm256_mul_ps(v, t)
        } else {
            t
        }
    }

    /// How many of the first `n` lanes of `v` are exactly zero.
    #[inline]
    #[target_feature(enable = "avx,popcnt")]
    fn zeros8(v: __m256, n: usize) -> usize {
        let zero = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, _mm256_setzero_ps()));
        (zero as u32 & ((1 << n) - 1)).count_ones() as usize
    }

    /// A mask of the first `n` (at most 8) lanes.
    #[inline]
    #[target_feature(enable = "avx")]
    fn first_lanes(n: usize) -> __m256i {
        const ONES_THEN_ZEROS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
        // SAFETY: 8 - n.min(8) + 8 <= 16 elements.
        unsafe { _mm256_loadu_si256(ONES_THEN_ZEROS.as_ptr().add(8 - n.min(8)).cast()) }
    }

    /// An 8 x 8 block: unpack pairs, shuffle quads, swap 128-bit halves. Vector `c` of the
    /// result is column `c` of `r`.
    #[inline]
    #[target_feature(enable = "avx")]
    fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s = [
            _mm256_shuffle_ps::<0x44>(t0, t2),
            _mm256_shuffle_ps::<0xEE>(t0, t2),
            _mm256_shuffle_ps::<0x44>(t1, t3),
            _mm256_shuffle_ps::<0xEE>(t1, t3),
            _mm256_shuffle_ps::<0x44>(t4, t6),
            _mm256_shuffle_ps::<0xEE>(t4, t6),
            _mm256_shuffle_ps::<0x44>(t5, t7),
            _mm256_shuffle_ps::<0xEE>(t5, t7),
        ];
        let mut out = [_mm256_setzero_ps(); 8];
        for k in 0..4 {
            out[k] = _mm256_permute2f128_ps::<0x20>(s[k], s[k + 4]);
            out[k + 4] = _mm256_permute2f128_ps::<0x31>(s[k], s[k + 4]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::Activation;
    use crate::synth::Rng;

    /// Shapes with whole 8 x 8 blocks, ragged edges, and neither.
    const SHAPES: [(usize, usize); 10] = [
        (1, 1),
        (3, 64),
        (8, 8),
        (17, 9),
        (64, 16),
        (5, 33),
        (40, 3),
        (16, 16),
        (35, 50),
        (24, 40),
    ];

    #[test]
    fn every_isa_matches_the_definition() {
        let mut rng = Rng::new(5);
        for isa in Isa::supported() {
            for (rows, cols) in SHAPES {
                let (src_stride, dst_stride) = (cols + rows % 3, rows + cols % 5);
                let src: Vec<f32> = (0..rows * src_stride)
                    .map(|_| rng.nonzero_value())
                    .collect();
                let mut dst = vec![-1.0; cols * dst_stride];
                Transpose::for_isa(isa).transpose(
                    &src,
                    src_stride,
                    &mut dst,
                    dst_stride,
                    (rows, cols),
                );
                for j in 0..cols {
                    for i in 0..dst_stride {
                        let want = if i < rows {
                            src[i * src_stride + j]
                        } else {
                            -1.0
                        };
                        assert_eq!(
                            dst[j * dst_stride + i],
                            want,
                            "{isa} {rows}x{cols} at {i},{j}"
                        );
                    }
                }
            }
        }
    }

    /// With a bias and each activation: the finished values and their zero count, on every
    /// ISA.
    #[test]
    fn finishing_matches_the_definition() {
        let mut rng = Rng::new(8);
        for isa in Isa::supported() {
            for (rows, cols) in SHAPES {
                let curves = [
                    None,
                    Some(Curve::clamp(0.0, f32::INFINITY)),
                    Some(Curve::clamp(0.0, 0.5)),
                    Activation::HardSwish.curve(),
                    Activation::HardSigmoid {
                        alpha: 0.2,
                        beta: 0.5,
                    }
                    .curve(),
                ];
                for curve in curves {
                    let (src_stride, dst_stride) = (cols + 1, rows + 2);
                    // Some sums are exactly minus their bias, so that zeros come out
                    // without an activation too.
                    let bias: Vec<f32> = (0..rows).map(|_| rng.nonzero_value()).collect();
                    let src: Vec<f32> = (0..rows * src_stride)
                        .map(|k| match k % 7 {
                            0 => -bias[k / src_stride],
                            _ => rng.nonzero_value(),
                        })
                        .collect();
                    let finish = Finish { bias: &bias, curve };
                    let mut dst = vec![-1.0; cols * dst_stride];
                    let zeros = Transpose::for_isa(isa).transpose_finish(
                        &src,
                        src_stride,
                        &mut dst,
                        dst_stride,
                        (rows, cols),
                        Some(finish),
                    );
                    let mut want_zeros = 0;
                    for j in 0..cols {
                        for i in 0..rows {
                            let want = finish.apply(i, src[i * src_stride + j]);
                            want_zeros += usize::from(want == 0.0);
                            assert_eq!(
                                dst[j * dst_stride + i],
                                want,
                                "{isa} {rows}x{cols} {curve:?} at {i},{j}"
                            );
                        }
                        assert_eq!(dst[j * dst_stride + rows], -1.0, "{isa}: wrote past a row");
                    }
                    assert_eq!(zeros, want_zeros, "{isa} {rows}x{cols} {curve:?}");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "destination too short")]
    fn short_destination_panics() {
        let mut dst = [0.0; 15];
        Transpose::for_isa(Isa::detect()).transpose(&[0.0; 16], 4, &mut dst, 4, (4, 4));
    }
}
