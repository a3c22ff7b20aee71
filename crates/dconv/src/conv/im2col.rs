//! Lowering (im2row): the dense matrix L of one image and one group, shared by the methods
//! that build L explicitly (`dense`, `lowered-csr`).
//!
//! L has one row per output position `p = oy * out_width + ox` and one column per
//! `k = (r * S + s) * Cg + c`: channel fastest, so each kernel tap `(r, s)` is a contiguous
//! run of `Cg` floats copied from one NHWC pixel (or zeros where the tap falls into the
//! padding). Weights multiplied with L must be packed in the same `k` order.

use super::run_loop::over_images;
use super::{ConvSpec, Timing, Workspace};
use rayon::prelude::*;
use std::ops::Range;

/// Output rows lowered per rayon task: enough work to amortize a task, small enough to
/// balance the threads.
const ROWS_PER_TASK: usize = 32;

/// Writes rows `rows` (output positions `p`, see the module docs) of the lowered matrix of
/// group `group` of one NHWC `image` (`height * width * channels` floats) into `out`, row
/// after row: `out[(p - rows.start) * K + k] = L[p, k]` with `K = spec.lowered_cols()`.
/// Every element of `out` is written (padding as zeros). Splits the rows over the threads of
/// the current rayon pool; [`lower_rows`] is the same on the calling thread.
///
/// Panics if `image` or `out` has the wrong length, `rows` extends past
/// `spec.out_pixels()` or `group >= spec.groups`. `spec` must be validated.
pub(crate) fn lower(
    spec: &ConvSpec,
    image: &[f32],
    group: usize,
    rows: Range<usize>,
    out: &mut [f32],
) {
    let k = spec.lowered_cols();
    assert_eq!(out.len(), rows.len() * k);
    out.par_chunks_mut(ROWS_PER_TASK * k)
        .enumerate()
        .for_each(|(i, chunk)| {
            let first = rows.start + i * ROWS_PER_TASK;
            lower_rows(spec, image, group, first..first + chunk.len() / k, chunk);
        });
}

/// Like [`lower`], on the calling thread only: for callers that already split the work
/// (by blocks of rows) across threads.
pub(crate) fn lower_rows(
    spec: &ConvSpec,
    image: &[f32],
    group: usize,
    rows: Range<usize>,
    out: &mut [f32],
) {
    let k = spec.lowered_cols();
    assert_eq!(image.len(), spec.height * spec.width * spec.channels);
    assert_eq!(out.len(), rows.len() * k);
    assert!(rows.end <= spec.out_pixels() && group < spec.groups);
    for (p, row) in rows.zip(out.chunks_exact_mut(k)) {
        lower_row(spec, image, group, p, row);
    }
}

/// Writes row `p` of the lowered matrix of group `group` into `row` (`K` floats).
fn lower_row(spec: &ConvSpec, image: &[f32], group: usize, p: usize, row: &mut [f32]) {
    let ow = spec.out_width();
    let (oy, ox) = (p / ow, p % ow);
    let s_len = spec.kernel[1];
    let dw = spec.dilation[1];
    let (c, cg) = (spec.channels, spec.channels_per_group());
    let tap_run = s_len * cg;
    // The kernel columns whose taps lie inside the input.
    let inside = spec.cols_inside(spec.padded_col(ox, 0), dw, s_len);
    let (s_lo, s_hi) = (inside.start, inside.end);
    // With one group and no horizontal dilation, the valid taps of a kernel row are one
    // contiguous run of the input row.
    let contiguous = cg == c && dw == 1;
    for (r, taps) in row.chunks_exact_mut(tap_run).enumerate() {
        let Some(iy) = spec.input_row(oy, r) else {
            taps.fill(0.0);
            continue;
        };
        taps[..s_lo * cg].fill(0.0);
        taps[s_hi * cg..].fill(0.0);
        if s_lo == s_hi {
            continue;
        }
        let pixel = |s: usize| {
            let ix = spec.padded_col(ox, s) - spec.padding.left;
            (iy * spec.width + ix) * c + group * cg
        };
        if contiguous {
            let start = pixel(s_lo);
            taps[s_lo * cg..s_hi * cg].copy_from_slice(&image[start..start + (s_hi - s_lo) * c]);
        } else {
            for s in s_lo..s_hi {
                let start = pixel(s);
                taps[s * cg..(s + 1) * cg].copy_from_slice(&image[start..start + cg]);
            }
        }
    }
}

/// Writes rows `rows` of the zero-padded NHWC image (`[H + top + bottom][W + left + right]
/// [C]`) into `out`, row after row: the direct and shifted-GEMM paths read the input through
/// it instead of lowering it. Every element of `out`'s rows is written.
///
/// Panics if `image` is shorter than one image or `out` than `rows.len()` padded rows.
pub(crate) fn pad_rows(spec: &ConvSpec, image: &[f32], rows: Range<usize>, out: &mut [f32]) {
    let c = spec.channels;
    let (left, w) = (spec.padding.left, spec.width);
    let row_len = (w + left + spec.padding.right) * c;
    for (y, dst) in rows.zip(out.chunks_exact_mut(row_len)) {
        match spec.unpadded_row(y) {
            Some(iy) => {
                dst[..left * c].fill(0.0);
                dst[(left + w) * c..].fill(0.0);
                dst[left * c..(left + w) * c].copy_from_slice(&image[iy * w * c..(iy + 1) * w * c]);
            }
            None => dst.fill(0.0),
        }
    }
}

/// The frame of the path that pads each image once and then computes output pixels straight
/// from it (dense's direct path): per image of the NHWC batch, `pad` fills the first
/// `padded_len` shared floats of the workspace from the image (with `padded_len` 0 the image
/// is read as it is: a layer without padding), then `chunk(i, padded, out_chunk)` finishes
/// each chunk of `chunk_pixels` output pixels (`pitch` floats apart), in parallel,
/// returning its zeros.
pub(crate) fn over_padded_images(
    spec: &ConvSpec,
    (input, (output, pitch)): (&[f32], (&mut [f32], usize)),
    ws: &mut Workspace,
    (padded_len, chunk_pixels): (usize, usize),
    pad: impl Fn(&[f32], &mut [f32]),
    chunk: impl Fn(usize, &[f32], &mut [f32]) -> usize + Sync,
) -> Timing {
    let padded = ws.floats(padded_len);
    let chunk_len = chunk_pixels * pitch;
    over_images(spec, (input, (output, pitch)), |image, out, clock| {
        let source = if padded_len == 0 {
            image
        } else {
            clock.convert(|| pad(image, padded));
            &*padded
        };
        let zeros = clock.multiply(|| {
            out.par_chunks_mut(chunk_len)
                .enumerate()
                .map(|(i, out_chunk)| chunk(i, source, out_chunk))
                .sum()
        });
        clock.count_zeros(zeros);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// L[p, k] straight from the definition.
    fn lowered_by_formula(spec: &ConvSpec, image: &[f32], group: usize) -> Vec<f32> {
        let [oh, ow] = spec.output_size();
        let [r_len, s_len] = spec.kernel;
        let cg = spec.channels_per_group();
        let mut out = Vec::new();
        for oy in 0..oh {
            for ox in 0..ow {
                for r in 0..r_len {
                    for s in 0..s_len {
                        for c in 0..cg {
                            let iy = (oy * spec.stride[0] + r * spec.dilation[0]) as isize
                                - spec.padding.top as isize;
                            let ix = (ox * spec.stride[1] + s * spec.dilation[1]) as isize
                                - spec.padding.left as isize;
                            let inside = (0..spec.height as isize).contains(&iy)
                                && (0..spec.width as isize).contains(&ix);
                            out.push(if inside {
                                let (iy, ix) = (iy as usize, ix as usize);
                                image[(iy * spec.width + ix) * spec.channels + group * cg + c]
                            } else {
                                0.0
                            });
                        }
                    }
                }
            }
        }
        out
    }

    fn check(spec: ConvSpec) {
        spec.validate().unwrap();
        let image: Vec<f32> = (0..spec.height * spec.width * spec.channels)
            .map(|i| i as f32 + 1.0)
            .collect();
        let (p, k) = (spec.out_pixels(), spec.lowered_cols());
        for group in 0..spec.groups {
            let want = lowered_by_formula(&spec, &image, group);
            let mut got = vec![f32::NAN; p * k];
            lower(&spec, &image, group, 0..p, &mut got);
            assert_eq!(got, want, "{spec:?} group {group}");
            let mut serial = vec![f32::NAN; p * k];
            lower_rows(&spec, &image, group, 0..p, &mut serial);
            assert_eq!(serial, want, "{spec:?} group {group}");
            // Any block of rows equals the same rows of the whole matrix.
            for rows in [1..p.min(3), p / 2..p, p - 1..p] {
                let mut block = vec![f32::NAN; rows.len() * k];
                lower(&spec, &image, group, rows.clone(), &mut block);
                assert_eq!(
                    block,
                    want[rows.start * k..rows.end * k],
                    "{spec:?} {rows:?}"
                );
            }
        }
    }

    #[test]
    fn matches_the_formula() {
        check(ConvSpec::new(3, 5, 6, 4, [3, 3]).with_padding([1, 1, 1, 1]));
        check(
            ConvSpec::new(4, 7, 9, 6, [3, 2])
                .with_stride([2, 3])
                .with_dilation([2, 1])
                .with_padding([1, 0, 2, 1]),
        );
        check(
            ConvSpec::new(6, 8, 7, 9, [2, 3])
                .with_dilation([1, 3])
                .with_padding([0, 3, 1, 2])
                .with_groups(3),
        );
        // Depthwise, padding wider than the dilated kernel reaches on one side.
        check(
            ConvSpec::new(4, 3, 4, 4, [3, 3])
                .with_padding([3, 3, 3, 3])
                .with_groups(4),
        );
        // Many rows, so that several rayon tasks each lower a chunk.
        check(ConvSpec::new(2, 12, 11, 3, [3, 3]).with_padding([1, 1, 1, 1]));
        check(ConvSpec::new(5, 1, 9, 2, [1, 4]).with_stride([1, 2]));
    }
}
