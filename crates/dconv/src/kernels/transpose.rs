//! Out-of-place transposition of a strided block:
//! `dst[j * dst_stride + i] = src[i * src_stride + j]` for `i < rows`, `j < cols`.
//!
//! A direct convolution over channel planes changes layout twice per layer (channels-last
//! pixels into planes, and its sums back into channels-last pixels). Element by element
//! those copies cost as much as the product itself at high weight sparsity; in blocks of
//! 8 x 8 through vector registers they cost a fraction of it.

use super::Isa;

/// Side of the blocks the SIMD path transposes in registers.
const BLOCK: usize = 8;

/// Transposes the `rows x cols` block of `src` (row `i` at `i * src_stride`) into `dst`
/// (row `j` at `j * dst_stride`), with the kernel of `isa`.
///
/// # Panics
/// If either block does not fit its slice, or `dst_stride < rows` (rows would overlap).
pub fn transpose(
    isa: Isa,
    src: &[f32],
    src_stride: usize,
    dst: &mut [f32],
    dst_stride: usize,
    (rows, cols): (usize, usize),
) {
    if rows == 0 || cols == 0 {
        return;
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
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) && is_x86_feature_detected!("avx") {
        // SAFETY: AVX is available (checked just above); the asserts above keep every
        // element of both blocks inside its slice.
        unsafe { avx::transpose(src, src_stride, dst, dst_stride, rows, cols) };
        return;
    }
    let _ = isa;
    scalar(src, src_stride, dst, dst_stride, (0, rows), (0, cols));
}

/// Element by element, over rows `i0..i1` and columns `j0..j1` of the source.
fn scalar(
    src: &[f32],
    src_stride: usize,
    dst: &mut [f32],
    dst_stride: usize,
    (i0, i1): (usize, usize),
    (j0, j1): (usize, usize),
) {
    for j in j0..j1 {
        let out = &mut dst[j * dst_stride..];
        for i in i0..i1 {
            out[i] = src[i * src_stride + j];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::{scalar, BLOCK};
    use std::arch::x86_64::*;

    /// Whole 8 x 8 blocks in registers; the ragged right and bottom edges element by
    /// element.
    ///
    /// # Safety
    /// The CPU must support AVX, and both blocks must lie inside their slices (see
    /// [`super::transpose`]).
    #[target_feature(enable = "avx")]
    pub unsafe fn transpose(
        src: &[f32],
        src_stride: usize,
        dst: &mut [f32],
        dst_stride: usize,
        rows: usize,
        cols: usize,
    ) {
        let (full_rows, full_cols) = (rows / BLOCK * BLOCK, cols / BLOCK * BLOCK);
        for i in (0..full_rows).step_by(BLOCK) {
            for j in (0..full_cols).step_by(BLOCK) {
                // SAFETY: rows i..i+8 and columns j..j+8 are inside both blocks, which the
                // caller keeps inside the slices.
                unsafe {
                    block(
                        src.as_ptr().add(i * src_stride + j),
                        src_stride,
                        dst.as_mut_ptr().add(j * dst_stride + i),
                        dst_stride,
                    )
                };
            }
        }
        scalar(
            src,
            src_stride,
            dst,
            dst_stride,
            (0, full_rows),
            (full_cols, cols),
        );
        scalar(
            src,
            src_stride,
            dst,
            dst_stride,
            (full_rows, rows),
            (0, cols),
        );
    }

    /// One 8 x 8 block: unpack pairs, shuffle quads, swap 128-bit halves.
    ///
    /// # Safety
    /// AVX, and 8 floats readable at `src + k * src_stride` and writable at
    /// `dst + k * dst_stride` for every `k < 8`.
    #[inline]
    #[target_feature(enable = "avx")]
    unsafe fn block(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
        // SAFETY: the caller guarantees the 8 source rows.
        let r: [__m256; BLOCK] =
            std::array::from_fn(|k| unsafe { _mm256_loadu_ps(src.add(k * src_stride)) });
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
        for k in 0..4 {
            let low = _mm256_permute2f128_ps::<0x20>(s[k], s[k + 4]);
            let high = _mm256_permute2f128_ps::<0x31>(s[k], s[k + 4]);
            // SAFETY: the caller guarantees the 8 destination rows.
            unsafe {
                _mm256_storeu_ps(dst.add(k * dst_stride), low);
                _mm256_storeu_ps(dst.add((k + 4) * dst_stride), high);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Rng;

    #[test]
    fn every_isa_matches_the_definition() {
        let mut rng = Rng::new(5);
        for isa in Isa::supported() {
            for (rows, cols) in [(1, 1), (3, 64), (8, 8), (17, 9), (64, 16), (5, 33), (40, 3)] {
                let (src_stride, dst_stride) = (cols + rows % 3, rows + cols % 5);
                let src: Vec<f32> = (0..rows * src_stride)
                    .map(|_| rng.nonzero_value())
                    .collect();
                let mut dst = vec![-1.0; cols * dst_stride];
                transpose(isa, &src, src_stride, &mut dst, dst_stride, (rows, cols));
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

    #[test]
    #[should_panic(expected = "destination too short")]
    fn short_destination_panics() {
        let mut dst = [0.0; 15];
        transpose(Isa::detect(), &[0.0; 16], 4, &mut dst, 4, (4, 4));
    }
}
