//! The dense method's path for stride-1 layers: a sum of shifted GEMMs, one per kernel row
//! (or per tap), with no lowered matrix.
//!
//! At stride 1, tap `(r, s)` of output `(oy, ox)` reads padded input pixel
//! `(oy + r*dh, ox + s*dw)`. On a "virtual" output grid as wide as the padded input (`Wp`),
//! virtual position `q = oy * Wp + ox` reads padded pixel `q + (r*dh * Wp + s*dw)`: for
//! every tap, the virtual rows are consecutive NHWC pixels of the padded input at a constant
//! shift. So `Y = sum over taps of X_shifted (Q x Cg) x W_tap (Cg x Mg)`, each term a plain
//! GEMM over the input itself, and the 9x larger lowered matrix of im2col (132 MB for a
//! 240x240x64 input) is never written. Without groups or column dilation the taps of one
//! kernel row read neighbouring pixels, so a kernel row is one GEMM with K = S * C over
//! overlapping rows of the input. Positions with `ox >= OW` are computed and dropped
//! (2 of 242 columns for a 3x3 kernel).
//!
//! The output is computed a band of rows at a time: the band's padded input rows and its
//! virtual sums together fit L2, so the GEMMs read the input from L2 once each. Threads
//! take even shares of the output rows, each with its own band buffers.

use super::im2col::pad_rows;
use super::{ConvSpec, RunEpilogue};
use crate::cache::CacheSizes;
use crate::kernels::gemm::{gemm_f32, gemm_f32_add};
use rayon::prelude::*;
use std::ops::Range;

/// Bytes of padded input rows and virtual sums a band may take: half of the L2.
fn band_bytes() -> usize {
    CacheSizes::detect().l2_share(1, 2)
}

/// Whether a layer takes this path: stride 1, a kernel larger than 1x1 (a 1x1 stride-1
/// layer without padding is a single GEMM over the input already), and at most 256 channels
/// per group: with more, im2col's one GEMM with K = R S C, which writes its output once,
/// is faster than a GEMM per kernel row, each of which reads and writes it (BENCHMARKS.md).
/// Layers whose band buffers would pass [`MAX_SCRATCH_BYTES`] (a padding far wider than the
/// image, say) keep im2col, whose buffer is bounded.
pub(crate) fn applies(spec: &ConvSpec) -> bool {
    spec.stride == [1, 1]
        && spec.kernel != [1, 1]
        && spec.channels_per_group() <= 256
        && scratch_len(spec).saturating_mul(4) <= MAX_SCRATCH_BYTES
}

/// Bytes of band buffers per thread beyond which a layer does not take this path.
const MAX_SCRATCH_BYTES: usize = 64 << 20;

/// Floats of scratch a layer needs per thread: a band of padded input rows, then a band of
/// sums (saturating: sizes come from model files).
pub(crate) fn scratch_len(spec: &ConvSpec) -> usize {
    let plan = Bands::new(spec);
    plan.input_len().saturating_add(plan.sums_len())
}

/// How a layer's output rows are cut into bands.
struct Bands {
    /// Padded input width (the virtual row width) and output rows per band.
    padded_w: usize,
    rows: usize,
    /// Input rows a band reads past its output rows.
    extra_rows: usize,
    channels: usize,
    filters_per_group: usize,
}

impl Bands {
    fn new(spec: &ConvSpec) -> Self {
        let padded_w = spec.width + spec.padding.left + spec.padding.right;
        let extra_rows = (spec.kernel[0] - 1) * spec.dilation[0];
        let row_bytes = padded_w.saturating_mul(4 * (spec.channels + spec.filters_per_group()));
        let rows = (band_bytes() / row_bytes.max(1)).clamp(1, spec.out_height().max(1));
        Bands {
            padded_w,
            rows,
            extra_rows,
            channels: spec.channels,
            filters_per_group: spec.filters_per_group(),
        }
    }

    fn input_len(&self) -> usize {
        (self.rows + self.extra_rows)
            .saturating_mul(self.padded_w)
            .saturating_mul(self.channels)
    }

    fn sums_len(&self) -> usize {
        (self.rows * self.padded_w).saturating_mul(self.filters_per_group)
    }
}

/// Computes one NHWC image into `out` (`[P][M]`) from `packed` (`[G][K][Mg]`,
/// `k = (r * S + s) * Cg + c`, so tap `t`'s rows are `t*Cg..(t+1)*Cg`), on `threads` threads
/// with `scratch` of `threads` x [`scratch_len`] floats; `spec` takes this path. With an
/// `epilogue`, each band's outputs go through it while they are in cache, and the zeros it
/// leaves are counted; without, `out` holds the plain sums.
pub(crate) fn convolve(
    spec: &ConvSpec,
    packed: &[f32],
    epilogue: Option<RunEpilogue>,
    image: &[f32],
    (out, pitch): (&mut [f32], usize),
    scratch: &mut [f32],
    threads: usize,
) -> usize {
    debug_assert!(applies(spec));
    let out_h = spec.out_height();
    let rows_per_job = out_h.div_ceil(threads.clamp(1, out_h.max(1)));
    let row_len = spec.out_width() * pitch;
    out.par_chunks_mut(rows_per_job * row_len)
        .zip(scratch.par_chunks_mut(scratch_len(spec)))
        .enumerate()
        .map(|(job, (out, scratch))| {
            let first = job * rows_per_job;
            let rows = first..first + out.len().div_ceil(row_len);
            convolve_rows(spec, packed, epilogue, image, rows, (out, pitch), scratch)
        })
        .sum()
}

/// Output rows `rows` of one image into `out` (those rows, pixels `pitch` floats apart),
/// band by band, on this thread; returns the zeros the epilogue left.
fn convolve_rows(
    spec: &ConvSpec,
    packed: &[f32],
    epilogue: Option<RunEpilogue>,
    image: &[f32],
    rows: Range<usize>,
    (out, pitch): (&mut [f32], usize),
    scratch: &mut [f32],
) -> usize {
    let bands = Bands::new(spec);
    let (input, sums) = scratch.split_at_mut(bands.input_len());
    let sums = &mut sums[..bands.sums_len()];
    let (ow, m, mg) = (spec.out_width(), spec.filters, spec.filters_per_group());
    let mut zeros = 0;
    for first in rows.clone().step_by(bands.rows) {
        let band = first..(first + bands.rows).min(rows.end);
        let mut band_zeros = 0;
        // The padded input rows the band reads.
        let padded = band.start..band.end + bands.extra_rows;
        pad_rows(spec, image, padded, input);
        for g in 0..spec.groups {
            multiply_band(spec, packed, &bands, band.len(), g, input, sums);
            // Keep the valid positions: a whole output row at once where its pixels are
            // side by side (one group, an output of its own).
            let pixels = if spec.groups == 1 && pitch == m {
                ow
            } else {
                1
            };
            for (i, oy) in band.clone().enumerate() {
                for ox in (0..ow).step_by(pixels) {
                    let from = (i * bands.padded_w + ox) * mg;
                    let to = ((oy - rows.start) * ow + ox) * pitch + g * mg;
                    let len = pixels * mg;
                    let dst = &mut out[to..to + len];
                    dst.copy_from_slice(&sums[from..from + len]);
                    if let Some(epilogue) = epilogue {
                        band_zeros += epilogue.apply_rows(dst, mg, mg, g * mg);
                    }
                }
            }
        }
        zeros += band_zeros;
    }
    zeros
}

/// The virtual sums of group `g` for a band of `rows` output rows: one accumulating GEMM
/// per kernel row, or per tap where the taps of a row are not side by side.
fn multiply_band(
    spec: &ConvSpec,
    packed: &[f32],
    bands: &Bands,
    rows: usize,
    g: usize,
    input: &[f32],
    sums: &mut [f32],
) {
    let (c, cg, mg) = (
        spec.channels,
        spec.channels_per_group(),
        spec.filters_per_group(),
    );
    let [kr, ks] = spec.kernel;
    let [dh, dw] = spec.dilation;
    let k_len = spec.lowered_cols();
    let group = &packed[g * k_len * mg..(g + 1) * k_len * mg];
    // The last row needs only its OW valid positions: no read past the band's input.
    let q = (rows - 1) * bands.padded_w + spec.out_width();
    // Without groups or column dilation, the taps of one kernel row read consecutive pixels,
    // whose channels lie side by side in NHWC: virtual row q's window for the whole kernel
    // row is one contiguous run of S * C floats, so each kernel row is one GEMM with
    // K = S * C over overlapping rows of the input (S times fewer passes over the sums).
    let row_at_once = spec.groups == 1 && dw == 1;
    let (taps_per_gemm, gemms) = if row_at_once { (ks, kr) } else { (1, kr * ks) };
    for gemm in 0..gemms {
        let first_tap = gemm * taps_per_gemm;
        let (r, s) = (first_tap / ks, first_tap % ks);
        let shift = r * dh * bands.padded_w + s * dw;
        let product = if gemm == 0 { gemm_f32 } else { gemm_f32_add };
        let rows_of_b = first_tap * cg..(first_tap + taps_per_gemm) * cg;
        product(
            (q, mg, taps_per_gemm * cg),
            sums,
            mg,
            &input[shift * c + g * cg..],
            c,
            &group[rows_of_b.start * mg..rows_of_b.end * mg],
            mg,
            1,
        );
    }
}
