//! The sums of a tile of [`TILE`] output pixels for one block of `B` output channels (16, 8
//! or 4: whole vectors of AVX-512, AVX2 or NEON, or AVX2's half vectors; other widths that
//! divide 16 run the portable kernel), over only the (input channel, tap) pairs where both
//! the block's weights and some pixel of the tile are non-zero: the inner loop of im2CSOA on
//! block-sparse weights.
//!
//! Both operands' zeros are bit masks over 64 channels at a time. For each kernel tap and
//! word of channels, the OR of the tile's pixels' masks (the activations some pixel of the
//! tile has) is ANDed with the block's mask (the channels whose block of weights is not
//! zero); each surviving channel loads the block's `B` weights once and multiplies them by
//! the tile's pixels' values, `TILE` x `B` sums held in registers. The block's non-zero
//! weight rows are packed per (tap, word) in channel order, so a surviving channel finds
//! its row by counting the mask's bits below it, and the rows stream in order.
//!
//! [`nonzero_masks`] makes the activations' masks, once per input pixel.

use super::{block_kernels_per_vector, Isa};

/// Output pixels per tile: `TILE` x 16 sums take 12 of AVX2's 16 vector registers.
pub(crate) const TILE: usize = 6;
/// Marks an input pixel in the padding (its values are zeros).
pub(crate) const PADDING: u32 = u32::MAX;

/// One block's weights over every (tap, word of 64 channels) of its group: for entry `i`
/// (tap `i / words`, word `i % words`), bit `j` of `masks[i]` says whether channel
/// `64 * word + j`'s row of `B` weights is non-zero, and those rows lie in channel order from
/// row `starts[i]` of `rows` (`B` floats each).
#[derive(Clone, Copy)]
pub(crate) struct BlockWeights<'a, const B: usize> {
    masks: &'a [u64],
    starts: &'a [u32],
    rows: &'a [f32],
    channels: usize,
}

impl<'a, const B: usize> BlockWeights<'a, B> {
    /// Panics unless the masks name only channels below `channels`, in whole words of them,
    /// and every entry's rows lie in `rows` (what the kernels read unchecked).
    pub fn new(masks: &'a [u64], starts: &'a [u32], rows: &'a [f32], channels: usize) -> Self {
        let words = channels.div_ceil(64);
        assert!(words > 0 && masks.len() == starts.len() && masks.len().is_multiple_of(words));
        let row_count = rows.len() / B;
        for (i, (&mask, &start)) in masks.iter().zip(starts).enumerate() {
            let word = i % words;
            let below = channels - 64 * word;
            assert!(
                below >= 64 || mask >> below == 0,
                "a mask bit past the channels"
            );
            assert!(start as usize + mask.count_ones() as usize <= row_count);
        }
        BlockWeights {
            masks,
            starts,
            rows,
            channels,
        }
    }

    fn words(&self) -> usize {
        self.channels.div_ceil(64)
    }

    fn taps(&self) -> usize {
        self.masks.len() / self.words()
    }
}

/// Where a tile's pixels read their inputs: for each (tap, row `i < TILE`), the input pixel
/// under it (`pixels[tap * TILE + i]`, [`PADDING`] for none), whose group's channels start at
/// `pixel * pixel_len + first` in `input`; and for each (tap, word), the OR of those pixels'
/// masks (`unions[tap * words + word]`).
#[derive(Clone, Copy)]
pub(crate) struct TileInputs<'a> {
    pub input: &'a [f32],
    /// At least a group's channels of zeros, read for pixels in the padding.
    pub zeros: &'a [f32],
    pub pixel_len: usize,
    pub first: usize,
    pub pixels: &'a [u32],
    pub unions: &'a [u64],
}

/// The tile's output: its `rows` (at most `TILE`) pixels `pitch` floats apart in `out`, of
/// which the kernel overwrites the first `width` (at most the block's) floats.
pub(crate) struct TileOutput<'a> {
    pub out: &'a mut [f32],
    pub rows: usize,
    pub pitch: usize,
    pub width: usize,
}

/// The kernel of one instruction set for blocks `B` wide, chosen once.
#[derive(Clone, Copy)]
pub(crate) struct MaskedBlockTile<const B: usize> {
    tile: TileFn<B>,
    masks: MasksFn,
}

type TileFn<const B: usize> = fn(&TileInputs, &BlockWeights<B>, &mut [[f32; B]; TILE]);
type MasksFn = fn(&[f32], &mut [u64]);

impl<const B: usize> MaskedBlockTile<B> {
    /// The kernel of `isa`, or the portable one where this CPU lacks it. AVX-512 takes
    /// AVX2's kernels for blocks narrower than its vectors, and AVX2 takes half vectors for
    /// blocks of 4.
    pub fn for_isa(isa: Isa) -> Self {
        const { assert!(B > 0 && B <= 16 && 16 % B == 0) };
        let (tile, masks): (TileFn<B>, MasksFn) = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if isa.is_supported() && B == 16 => {
                (x86::avx512_tile::<B>, x86_masks::avx512_masks)
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 if Isa::Avx2.is_supported() && B.is_multiple_of(8) => {
                (x86::avx2_tile::<B>, x86_masks::avx2_masks)
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 if Isa::Avx2.is_supported() && B == 4 => {
                (x86::avx2_narrow_tile::<B>, x86_masks::avx2_masks)
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon if isa.is_supported() && B.is_multiple_of(4) => {
                (neon::neon_tile::<B>, neon_masks::neon_masks)
            }
            _ => (tile_portable::<B>, masks_portable),
        };
        MaskedBlockTile { tile, masks }
    }

    /// Writes the tile's sums over every tap into `output`. Panics if an input pixel's
    /// channels, the zeros, the unions or the output fall outside their arrays.
    pub fn multiply(&self, inputs: &TileInputs, weights: &BlockWeights<B>, output: TileOutput) {
        let (taps, words) = (weights.taps(), weights.words());
        let channels = weights.channels;
        assert_eq!(inputs.pixels.len(), taps * TILE, "a pixel per tap and row");
        assert_eq!(
            inputs.unions.len(),
            taps * words,
            "a union per tap and word"
        );
        assert!(inputs.zeros.len() >= channels && inputs.first + channels <= inputs.pixel_len);
        for &pixel in inputs.pixels {
            if pixel != PADDING {
                let end = (pixel as usize)
                    .checked_mul(inputs.pixel_len)
                    .and_then(|at| at.checked_add(inputs.first + channels));
                assert!(end.is_some_and(|end| end <= inputs.input.len()));
            }
        }
        let TileOutput {
            out,
            rows,
            pitch,
            width,
        } = output;
        assert!(rows <= TILE && width <= B);
        let mut sums = [[0.0; B]; TILE];
        (self.tile)(inputs, weights, &mut sums);
        for (i, sums) in sums.iter().enumerate().take(rows) {
            out[i * pitch..][..width].copy_from_slice(&sums[..width]);
        }
    }

    /// Writes the masks of the non-zeros (NaN counts) of `values` into `masks`, 64 values
    /// per word, the last word's bits past the values zero. Panics unless `masks` has
    /// exactly a word per 64 values.
    pub fn nonzero_masks(&self, values: &[f32], masks: &mut [u64]) {
        assert_eq!(masks.len(), values.len().div_ceil(64));
        (self.masks)(values, masks)
    }
}

/// The input pixel rows of a tap: where row `i` of the tile reads channel 0 of its group.
#[inline(always)]
fn tap_rows<'a>(inputs: &TileInputs<'a>, tap: usize) -> [&'a [f32]; TILE] {
    std::array::from_fn(|i| match inputs.pixels[tap * TILE + i] {
        PADDING => inputs.zeros,
        pixel => &inputs.input[pixel as usize * inputs.pixel_len + inputs.first..],
    })
}

/// Plain Rust, bounds-checked: the reference for the SIMD versions and the fallback.
fn tile_portable<const B: usize>(
    inputs: &TileInputs,
    weights: &BlockWeights<B>,
    sums: &mut [[f32; B]; TILE],
) {
    let words = weights.words();
    for tap in 0..weights.taps() {
        let rows = tap_rows(inputs, tap);
        for word in 0..words {
            let at = tap * words + word;
            let mask = weights.masks[at];
            let mut live = inputs.unions[at] & mask;
            while live != 0 {
                let bit = live.trailing_zeros();
                live &= live - 1;
                let row =
                    weights.starts[at] as usize + (mask & ((1 << bit) - 1)).count_ones() as usize;
                let w = &weights.rows[row * B..][..B];
                let c = 64 * word + bit as usize;
                for (sums, input) in sums.iter_mut().zip(&rows) {
                    let x = input[c];
                    for (s, w) in sums.iter_mut().zip(w) {
                        *s += x * w;
                    }
                }
            }
        }
    }
}

fn masks_portable(values: &[f32], masks: &mut [u64]) {
    for (mask, values) in masks.iter_mut().zip(values.chunks(64)) {
        *mask = values
            .iter()
            .enumerate()
            .fold(0, |m, (j, &x)| m | u64::from(x != 0.0) << j);
    }
}

/// Defines `$tile` for one vector type, `$lanes` floats each: a block of `B` weights is
/// `B / $lanes` vectors, at most `$most` (see [`block_kernels_per_vector`]).
macro_rules! masked_tile {
    ($tile:ident, $feature:literal, $vec:ty, $lanes:literal, $most:literal,
     zero: $zero:expr, load: $load:ident, store: $store:ident, splat: $splat:ident,
     fma: |$a:ident, $x:ident, $w:ident| $fma:expr) => {
        pub(super) fn $tile<const B: usize>(
            inputs: &TileInputs,
            weights: &BlockWeights<B>,
            sums: &mut [[f32; B]; TILE],
        ) {
            #[target_feature(enable = $feature)]
            fn kernel<const B: usize>(
                inputs: &TileInputs,
                weights: &BlockWeights<B>,
                sums: &mut [[f32; B]; TILE],
            ) {
                // `for_isa` hands out only whole vectors, at most `$most` per block (a
                // constant per instance: the check compiles away).
                assert!(B % $lanes == 0 && B / $lanes <= $most);
                let per = B / $lanes;
                let words = weights.words();
                let zero: $vec = $zero;
                let mut acc: [[$vec; $most]; TILE] = [[zero; $most]; TILE];
                for tap in 0..weights.taps() {
                    let rows = tap_rows(inputs, tap).map(<[f32]>::as_ptr);
                    for word in 0..words {
                        let at = tap * words + word;
                        let mask = weights.masks[at];
                        let mut live = inputs.unions[at] & mask;
                        if live == 0 {
                            continue;
                        }
                        let first = weights.starts[at] as usize;
                        let base = weights.rows.as_ptr();
                        while live != 0 {
                            let bit = live.trailing_zeros();
                            live &= live - 1;
                            let row = first + (mask & ((1u64 << bit) - 1)).count_ones() as usize;
                            let c = 64 * word + bit as usize;
                            // SAFETY: `BlockWeights::new` checked that each entry's rows lie
                            // in `rows` and that its mask names only channels below
                            // `channels`; `multiply` checked that every pixel holds
                            // `channels` values from its row pointer (the zeros as well).
                            unsafe {
                                let w = base.add(row * B);
                                let w: [$vec; $most] = std::array::from_fn(|q| {
                                    if q < per {
                                        $load(w.add(q * $lanes))
                                    } else {
                                        zero
                                    }
                                });
                                for i in 0..TILE {
                                    let $x = $splat(*rows[i].add(c));
                                    for q in 0..per {
                                        let ($a, $w) = (acc[i][q], w[q]);
                                        acc[i][q] = $fma;
                                    }
                                }
                            }
                        }
                    }
                }
                for i in 0..TILE {
                    for q in 0..per {
                        // SAFETY: `sums[i]` holds B = per * $lanes floats.
                        unsafe { $store(sums[i].as_mut_ptr().add(q * $lanes), acc[i][q]) };
                    }
                }
            }
            // SAFETY: `for_isa` hands this fn out only after finding the feature.
            unsafe { kernel::<B>(inputs, weights, sums) }
        }
    };
}

block_kernels_per_vector!(masked_tile, use super::{tap_rows, BlockWeights, TileInputs, TILE});

/// Defines `$masks` from `$nonzero`, which gives the non-zero lanes (NaN counts) of `$lanes`
/// floats as bits.
macro_rules! simd_masks {
    ($masks:ident, $feature:literal, $lanes:literal, $nonzero:ident) => {
        pub(super) fn $masks(values: &[f32], masks: &mut [u64]) {
            #[target_feature(enable = $feature)]
            fn kernel(values: &[f32], masks: &mut [u64]) {
                let whole = values.len() / 64;
                for (mask, values) in masks.iter_mut().zip(values.chunks_exact(64)) {
                    let mut m = 0u64;
                    for v in 0..64 / $lanes {
                        // SAFETY: the chunk holds 64 floats.
                        let bits = unsafe { $nonzero(values.as_ptr().add(v * $lanes)) };
                        m |= (bits as u64) << (v * $lanes);
                    }
                    *mask = m;
                }
                super::masks_portable(&values[whole * 64..], &mut masks[whole..]);
            }
            // SAFETY: `for_isa` hands this fn out only after finding the feature.
            unsafe { kernel(values, masks) }
        }
    };
}

/// The masks of the non-zeros on x86-64, from vector compares.
#[cfg(target_arch = "x86_64")]
mod x86_masks {
    use std::arch::x86_64::*;

    /// The non-zero lanes of 8 floats at `p`, as bits.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn nonzero8(p: *const f32) -> u32 {
        // SAFETY: the caller passes 8 readable floats.
        let x = unsafe { _mm256_loadu_ps(p) };
        _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NEQ_UQ>(x, _mm256_setzero_ps())) as u32
    }

    /// The non-zero lanes of 16 floats at `p`, as bits.
    #[target_feature(enable = "avx512f")]
    unsafe fn nonzero16(p: *const f32) -> u32 {
        // SAFETY: the caller passes 16 readable floats.
        let x = unsafe { _mm512_loadu_ps(p) };
        u32::from(_mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(x, _mm512_setzero_ps()))
    }

    simd_masks!(avx2_masks, "avx2,fma", 8, nonzero8);
    simd_masks!(avx512_masks, "avx512f", 16, nonzero16);
}

/// The masks of the non-zeros on AArch64: NEON has no move-mask, so each lane that does not
/// equal zero keeps its own bit of 1, 2, 4, 8, and the lanes are summed.
#[cfg(target_arch = "aarch64")]
mod neon_masks {
    use std::arch::aarch64::*;

    /// The non-zero lanes of 4 floats at `p`, as bits.
    #[target_feature(enable = "neon")]
    unsafe fn nonzero4(p: *const f32) -> u32 {
        // SAFETY: the caller passes 4 readable floats.
        let x = unsafe { vld1q_f32(p) };
        // NaN equals nothing, so it counts as non-zero.
        let nonzero = vmvnq_u32(vceqq_f32(x, vdupq_n_f32(0.0)));
        const BITS: [u32; 4] = [1, 2, 4, 8];
        // SAFETY: `BITS` holds 4 u32s.
        let bits = unsafe { vld1q_u32(BITS.as_ptr()) };
        vaddvq_u32(vandq_u32(nonzero, bits))
    }

    simd_masks!(neon_masks, "neon", 4, nonzero4);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{random_sparse, Rng};

    /// A random block `B` wide over `taps` taps of `channels` channels at `density`, packed.
    fn block<const B: usize>(
        taps: usize,
        channels: usize,
        density: f64,
        rng: &mut Rng,
    ) -> (Vec<u64>, Vec<u32>, Vec<f32>) {
        let words = channels.div_ceil(64);
        let (mut masks, mut starts, mut rows) = (vec![], vec![], vec![]);
        for _ in 0..taps {
            for word in 0..words {
                starts.push((rows.len() / B) as u32);
                let mut mask = 0u64;
                for j in 0..64.min(channels - 64 * word) {
                    if rng.unit() < density {
                        mask |= 1 << j;
                        rows.extend(random_sparse(B, 0.0, rng));
                    }
                }
                masks.push(mask);
            }
        }
        (masks, starts, rows)
    }

    /// Random tiles, some pixels in the padding and some rows past the tile's end: every
    /// ISA must match a sum written out here, and leave the floats past `width` alone.
    #[test]
    fn every_isa_matches_the_sums_written_out() {
        check_sums::<16>(3);
        check_sums::<8>(4);
        check_sums::<4>(5);
    }

    fn check_sums<const B: usize>(seed: u64) {
        let mut rng = Rng::new(seed);
        for case in 0..40 {
            let (taps, channels) = (1 + case % 9, 1 + (case * 37) % 150);
            let pixel_len = channels + case % 3;
            let first = case % 3;
            let input = random_sparse(20 * pixel_len, 0.6, &mut rng);
            let (masks, starts, rows) = block::<B>(taps, channels, 0.5, &mut rng);
            let weights = BlockWeights::<B>::new(&masks, &starts, &rows, channels);
            let pixels: Vec<u32> = (0..taps * TILE)
                .map(|_| match rng.next_u64() % 5 {
                    0 => PADDING,
                    p => (p * 3 + rng.next_u64() % 3) as u32,
                })
                .collect();
            let kernel = MaskedBlockTile::<B>::for_isa(Isa::Portable);
            let words = channels.div_ceil(64);
            let mut pixel_masks = vec![vec![0u64; words]; 20];
            for (p, m) in pixel_masks.iter_mut().enumerate() {
                kernel.nonzero_masks(&input[p * pixel_len + first..][..channels], m);
            }
            let unions: Vec<u64> = (0..taps * words)
                .map(|at| {
                    let (tap, word) = (at / words, at % words);
                    pixels[tap * TILE..][..TILE]
                        .iter()
                        .filter(|&&p| p != PADDING)
                        .fold(0, |u, &p| u | pixel_masks[p as usize][word])
                })
                .collect();
            let zeros = vec![0.0; channels];
            let inputs = TileInputs {
                input: &input,
                zeros: &zeros,
                pixel_len,
                first,
                pixels: &pixels,
                unions: &unions,
            };
            let (rows_out, width, pitch) = (1 + case % TILE, 1 + case % B, B + 3);
            let mut want = vec![f32::NAN; TILE * pitch];
            for i in 0..rows_out {
                for m in 0..width {
                    let mut sum = 0.0;
                    for tap in 0..taps {
                        let p = pixels[tap * TILE + i];
                        for c in 0..channels {
                            let (word, bit) = (c / 64, c % 64);
                            let mask = masks[tap * words + word];
                            if p == PADDING || mask >> bit & 1 == 0 {
                                continue;
                            }
                            let row = starts[tap * words + word] as usize
                                + (mask & ((1 << bit) - 1)).count_ones() as usize;
                            sum += input[p as usize * pixel_len + first + c] * rows[row * B + m];
                        }
                    }
                    want[i * pitch + m] = sum;
                }
            }
            for isa in Isa::supported() {
                let mut got = vec![f32::NAN; TILE * pitch];
                let output = TileOutput {
                    out: &mut got,
                    rows: rows_out,
                    pitch,
                    width,
                };
                MaskedBlockTile::<B>::for_isa(isa).multiply(&inputs, &weights, output);
                for (j, (w, g)) in want.iter().zip(&got).enumerate() {
                    let same =
                        (w.is_nan() && g.is_nan()) || (w - g).abs() <= 1e-4 * (1.0 + w.abs());
                    assert!(same, "{isa} B={B} case {case} at {j}: {g} vs {w}");
                }
            }
        }
    }

    /// Masks of every ISA match the portable ones, NaN counting as non-zero.
    #[test]
    fn nonzero_masks_of_every_isa_agree() {
        let mut rng = Rng::new(5);
        for len in [1, 8, 63, 64, 65, 200] {
            let mut values = random_sparse(len, 0.5, &mut rng);
            values[len / 2] = f32::NAN;
            let mut want = vec![0; len.div_ceil(64)];
            masks_portable(&values, &mut want);
            assert_ne!(
                want[len / 2 / 64] >> (len / 2 % 64) & 1,
                0,
                "NaN is not zero"
            );
            for isa in Isa::supported() {
                let mut got = vec![u64::MAX; len.div_ceil(64)];
                MaskedBlockTile::<16>::for_isa(isa).nonzero_masks(&values, &mut got);
                assert_eq!(got, want, "{isa} len {len}");
            }
        }
    }

    #[test]
    fn masks_past_the_channels_and_rows_past_the_weights_are_refused() {
        let rows = vec![1.0; 2 * 8];
        let past_channels =
            std::panic::catch_unwind(|| BlockWeights::<8>::new(&[1 << 5], &[0], &rows, 5));
        assert!(past_channels.is_err());
        let past_rows =
            std::panic::catch_unwind(|| BlockWeights::<8>::new(&[0b111], &[0], &rows, 5));
        assert!(past_rows.is_err());
        BlockWeights::<8>::new(&[0b11], &[0], &rows, 5);
    }
}
