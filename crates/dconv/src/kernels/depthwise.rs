//! One output row of a depthwise convolution, channels in the vector lanes: each output
//! channel is the sum over the kernel's taps of one padded input channel times its weight,
//! so a block of channels keeps its sums in registers across all taps.

use super::multiversion::vectorized_fn;
use super::Isa;

/// Channels whose sums one pass keeps in registers (four AVX-512 vectors, eight AVX2 ones);
/// the channels past the last whole block go by blocks of 32 and 16, so that the usual
/// channel counts (32, 96, 144, 240, ...) keep their sums in registers too.
const BLOCK: usize = 64;

/// Where one output row reads: the zero-padded input, `[PH][PW][M]` (each output channel's
/// input channel already at its own index), and the weights `[R * S][M]`.
pub(crate) struct DepthwiseRow<'a> {
    pub input: &'a [f32],
    /// Index in `input` of the first tap of the row's first pixel.
    pub base: usize,
    /// Floats between the windows of neighbouring output pixels.
    pub pixel_step: usize,
    /// Offset of each tap from a window's first float.
    pub taps: &'a [usize],
    pub weights: &'a [f32],
}

/// The row loop compiled for one instruction set, chosen once.
#[derive(Clone, Copy)]
pub(crate) struct DepthwiseConv {
    row: fn(&DepthwiseRow, usize, &mut [f32]),
}

impl DepthwiseConv {
    /// The loop compiled for `isa`, or for the baseline when this CPU lacks it.
    pub fn for_isa(isa: Isa) -> Self {
        DepthwiseConv {
            row: vectorized_fn!(
                isa,
                row_sums,
                fn(row: &DepthwiseRow, channels: usize, out: &mut [f32])
            ),
        }
    }

    /// Writes the sums of one output row, `out` being `[OW][M]`.
    pub fn row(&self, row: &DepthwiseRow, channels: usize, out: &mut [f32]) {
        (self.row)(row, channels, out)
    }
}

#[inline(always)]
fn row_sums(row: &DepthwiseRow, channels: usize, out: &mut [f32]) {
    for (x, pixel) in out.chunks_exact_mut(channels).enumerate() {
        let window = row.base + x * row.pixel_step;
        let mut first = 0;
        while first + BLOCK <= channels {
            block_sums::<BLOCK>(row, channels, window, first, pixel);
            first += BLOCK;
        }
        if first + BLOCK / 2 <= channels {
            block_sums::<{ BLOCK / 2 }>(row, channels, window, first, pixel);
            first += BLOCK / 2;
        }
        if first + BLOCK / 4 <= channels {
            block_sums::<{ BLOCK / 4 }>(row, channels, window, first, pixel);
            first += BLOCK / 4;
        }
        // The last (fewer than 16) channels, tap by tap.
        let rest = &mut pixel[first..];
        rest.fill(0.0);
        for (t, &tap) in row.taps.iter().enumerate() {
            let input = &row.input[window + tap + first..][..rest.len()];
            let weights = &row.weights[t * channels + first..][..rest.len()];
            for ((sum, x), w) in rest.iter_mut().zip(input).zip(weights) {
                *sum += x * w;
            }
        }
    }
}

/// The sums of channels `first..first + B` of the pixel whose window starts at `window`,
/// held in registers across all taps.
#[inline(always)]
fn block_sums<const B: usize>(
    row: &DepthwiseRow,
    channels: usize,
    window: usize,
    first: usize,
    pixel: &mut [f32],
) {
    let mut sums = [0.0f32; B];
    for (t, &tap) in row.taps.iter().enumerate() {
        let input: &[f32; B] = row.input[window + tap + first..][..B]
            .try_into()
            .expect("a block of B floats");
        let weights: &[f32; B] = row.weights[t * channels + first..][..B]
            .try_into()
            .expect("a block of B floats");
        for i in 0..B {
            sums[i] += input[i] * weights[i];
        }
    }
    pixel[first..first + B].copy_from_slice(&sums);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ISA gives the sums of the plain definition, over whole blocks, the half and
    /// quarter blocks and a remainder.
    #[test]
    fn rows_match_the_definition_on_every_isa() {
        for channels in [7, 16, 32 + 7, 48, BLOCK + 32 + 16 + 7, 2 * BLOCK] {
            check_row(channels);
        }
    }

    fn check_row(channels: usize) {
        let (width, taps) = (5, [0, channels, 3 * channels]);
        let input: Vec<f32> = (0..(width + 4) * channels)
            .map(|i| (i % 13) as f32 - 6.0)
            .collect();
        let weights: Vec<f32> = (0..taps.len() * channels)
            .map(|i| (i % 7) as f32 * 0.5 - 1.5)
            .collect();
        let row = DepthwiseRow {
            input: &input,
            base: channels,
            pixel_step: channels,
            taps: &taps,
            weights: &weights,
        };
        let mut want = vec![0.0; width * channels];
        for x in 0..width {
            for m in 0..channels {
                let window = row.base + x * row.pixel_step;
                want[x * channels + m] = taps
                    .iter()
                    .enumerate()
                    .map(|(t, tap)| input[window + tap + m] * weights[t * channels + m])
                    .sum();
            }
        }
        for isa in Isa::supported() {
            let mut got = vec![f32::NAN; width * channels];
            DepthwiseConv::for_isa(isa).row(&row, channels, &mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{isa}, {channels} channels, at {i}: {g} vs {w}"
                );
            }
        }
    }
}
