//! The sums of a tile of [`TILE`] output pixels for one block of `B` output channels (whole
//! vectors: 16 or 8 on AVX2 and AVX-512, 16, 8 or 4 on NEON, and 4 in AVX2's half vectors;
//! other widths that divide 16 run the portable kernel), over a list of the block's non-zero
//! weight rows: the inner loop of sparse-weight on block-sparse weights.
//!
//! Each entry of the list is one (kernel tap, input channel) whose block of `B` weights is not
//! all zero, named by its offset from a pixel's window in a zero-padded NHWC input: so every
//! tap of every entry is one load, with no per-tap bookkeeping and no test for the padding.
//! An entry loads its `B` weights once and multiplies them by the value each of the tile's
//! pixels holds at that offset, `TILE` x `B` sums held in registers: one vector multiply-add
//! per (pixel, entry, vector), and the output is written channels-last as it stands.

use super::masked_block_tile::{TileOutput, TILE};
use super::{block_kernels_per_vector, Isa};

/// One block's non-zero weight rows: entry `e` multiplies the input at `offsets[e]` past a
/// pixel's window by the `B` weights at `rows[e * B..]`.
#[derive(Clone, Copy)]
pub(crate) struct BlockList<'a, const B: usize> {
    offsets: &'a [u32],
    rows: &'a [f32],
    /// One past the largest offset: the floats past a window's start the list reads.
    reach: usize,
}

impl<'a, const B: usize> BlockList<'a, B> {
    /// Panics unless there is a row of `B` weights per offset (what the kernels read
    /// unchecked).
    pub fn new(offsets: &'a [u32], rows: &'a [f32]) -> Self {
        assert_eq!(rows.len(), offsets.len() * B, "a row of weights per offset");
        let reach = offsets.iter().map(|&o| o as usize + 1).max().unwrap_or(0);
        BlockList {
            offsets,
            rows,
            reach,
        }
    }
}

/// The kernel of one instruction set for blocks `B` wide, chosen once.
#[derive(Clone, Copy)]
pub(crate) struct BlockListTile<const B: usize> {
    tile: TileFn<B>,
}

/// Writes the sums of every pixel of the tile, `B` floats each, `pitch` floats apart into the
/// slice (which must hold them: the kernels check).
type TileFn<const B: usize> = fn(&[f32], &[usize; TILE], &BlockList<B>, &mut [f32], usize);

impl<const B: usize> BlockListTile<B> {
    /// The kernel of `isa`, or the portable one where this CPU lacks it. AVX-512 takes
    /// AVX2's kernels for blocks narrower than its vectors, and AVX2 takes half vectors for
    /// blocks of 4.
    pub fn for_isa(isa: Isa) -> Self {
        const { assert!(B > 0 && B <= 16 && 16 % B == 0) };
        let tile = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if isa.is_supported() && B == 16 => x86::avx512_tile::<B>,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 if Isa::Avx2.is_supported() && B.is_multiple_of(8) => {
                x86::avx2_tile::<B>
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 if Isa::Avx2.is_supported() && B == 4 => {
                x86::avx2_narrow_tile::<B>
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon if isa.is_supported() && B.is_multiple_of(4) => neon::neon_tile::<B>,
            _ => tile_portable::<B>,
        };
        BlockListTile { tile }
    }

    /// Writes into `output` the sums over `list` of the pixels whose windows start at
    /// `windows` in `input`. Panics if a window's reach falls outside `input`.
    pub fn multiply(
        &self,
        input: &[f32],
        windows: &[usize; TILE],
        list: &BlockList<B>,
        output: TileOutput,
    ) {
        for &at in windows {
            assert!(at
                .checked_add(list.reach)
                .is_some_and(|end| end <= input.len()));
        }
        let TileOutput {
            out,
            rows,
            pitch,
            width,
        } = output;
        assert!(rows <= TILE && width <= B);
        if rows == TILE && width == B && holds_tile::<B>(out, pitch) {
            // A whole tile: the kernel stores straight into the output.
            (self.tile)(input, windows, list, out, pitch);
            return;
        }
        let mut sums = [[0.0; B]; TILE];
        (self.tile)(input, windows, list, sums.as_flattened_mut(), B);
        for (i, sums) in sums.iter().enumerate().take(rows) {
            out[i * pitch..][..width].copy_from_slice(&sums[..width]);
        }
    }
}

/// Whether `out` holds [`TILE`] rows of `B` floats `pitch` apart: what every kernel writes.
fn holds_tile<const B: usize>(out: &[f32], pitch: usize) -> bool {
    pitch >= B && out.len() >= (TILE - 1) * pitch + B
}

/// Plain Rust, bounds-checked: the reference for the SIMD versions and the fallback.
fn tile_portable<const B: usize>(
    input: &[f32],
    windows: &[usize; TILE],
    list: &BlockList<B>,
    out: &mut [f32],
    pitch: usize,
) {
    assert!(holds_tile::<B>(out, pitch));
    let mut sums = [[0.0; B]; TILE];
    for (&offset, w) in list.offsets.iter().zip(list.rows.chunks_exact(B)) {
        for (sums, &at) in sums.iter_mut().zip(windows) {
            let x = input[at + offset as usize];
            for (s, w) in sums.iter_mut().zip(w) {
                *s += x * w;
            }
        }
    }
    for (i, sums) in sums.iter().enumerate() {
        out[i * pitch..][..B].copy_from_slice(sums);
    }
}

/// Defines `$tile` for one vector type, `$lanes` floats each: a block of `B` weights is
/// `B / $lanes` vectors, at most `$most` (see [`block_kernels_per_vector`]).
macro_rules! list_tile {
    ($tile:ident, $feature:literal, $vec:ty, $lanes:literal, $most:literal,
     zero: $zero:expr, load: $load:ident, store: $store:ident, splat: $splat:ident,
     fma: |$a:ident, $x:ident, $w:ident| $fma:expr) => {
        pub(super) fn $tile<const B: usize>(
            input: &[f32],
            windows: &[usize; TILE],
            list: &BlockList<B>,
            out: &mut [f32],
            pitch: usize,
        ) {
            #[target_feature(enable = $feature)]
            fn kernel<const B: usize>(
                input: &[f32],
                windows: &[usize; TILE],
                list: &BlockList<B>,
                out: &mut [f32],
                pitch: usize,
            ) {
                assert!(holds_tile::<B>(out, pitch));
                // `for_isa` hands out only whole vectors, at most `$most` per block (a
                // constant per instance: the check compiles away).
                assert!(B % $lanes == 0 && B / $lanes <= $most);
                let per = B / $lanes;
                let pixels = windows.map(|at| input.as_ptr().wrapping_add(at));
                let zero: $vec = $zero;
                let mut acc: [[$vec; $most]; TILE] = [[zero; $most]; TILE];
                for (e, &offset) in list.offsets.iter().enumerate() {
                    // SAFETY: `BlockList::new` checked a row of B weights per offset;
                    // `multiply` checked that every window plus the list's reach (its
                    // largest offset) lies in `input`.
                    unsafe {
                        let w = list.rows.as_ptr().add(e * B);
                        let w: [$vec; $most] = std::array::from_fn(|q| {
                            if q < per {
                                $load(w.add(q * $lanes))
                            } else {
                                zero
                            }
                        });
                        for i in 0..TILE {
                            let $x = $splat(*pixels[i].add(offset as usize));
                            for q in 0..per {
                                let ($a, $w) = (acc[i][q], w[q]);
                                acc[i][q] = $fma;
                            }
                        }
                    }
                }
                for i in 0..TILE {
                    for q in 0..per {
                        // SAFETY: `holds_tile` checked B = per * $lanes floats at each of the
                        // TILE rows `pitch` apart.
                        unsafe { $store(out.as_mut_ptr().add(i * pitch + q * $lanes), acc[i][q]) };
                    }
                }
            }
            // SAFETY: `for_isa` hands this fn out only after finding the feature.
            unsafe { kernel::<B>(input, windows, list, out, pitch) }
        }
    };
}

block_kernels_per_vector!(list_tile, use super::{holds_tile, BlockList, TILE});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{random_sparse, Rng};

    /// Random lists over random windows, some tiles short and some blocks narrow: every ISA
    /// must match a sum written out here, and leave the floats past `width` alone.
    #[test]
    fn every_isa_matches_the_sums_written_out() {
        check_sums::<16>(3);
        check_sums::<8>(4);
        check_sums::<4>(5);
    }

    fn check_sums<const B: usize>(seed: u64) {
        let mut rng = Rng::new(seed);
        // 48 cases: whole tiles of whole blocks among them for every B.
        for case in 0..48 {
            let entries = case * 7 % 60;
            let input = random_sparse(500, 0.3, &mut rng);
            let offsets: Vec<u32> = (0..entries)
                .map(|_| (rng.next_u64() % 200) as u32)
                .collect();
            let rows = random_sparse(entries * B, 0.2, &mut rng);
            let list = BlockList::<B>::new(&offsets, &rows);
            let windows: [usize; TILE] = std::array::from_fn(|_| (rng.next_u64() % 300) as usize);
            let (rows_out, width, pitch) = (1 + case % TILE, 1 + case % B, B + 3);
            let mut want = vec![f32::NAN; TILE * pitch];
            for i in 0..rows_out {
                for m in 0..width {
                    want[i * pitch + m] = offsets
                        .iter()
                        .enumerate()
                        .map(|(e, &o)| input[windows[i] + o as usize] * rows[e * B + m])
                        .sum();
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
                BlockListTile::<B>::for_isa(isa).multiply(&input, &windows, &list, output);
                for (j, (w, g)) in want.iter().zip(&got).enumerate() {
                    let same =
                        (w.is_nan() && g.is_nan()) || (w - g).abs() <= 1e-4 * (1.0 + w.abs());
                    assert!(same, "{isa} B={B} case {case} at {j}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn windows_reaching_past_the_input_and_missing_rows_are_refused() {
        let (input, offsets, rows) = (vec![1.0; 10], [0u32, 4], vec![1.0; 16]);
        let list = BlockList::<8>::new(&offsets, &rows);
        let kernel = BlockListTile::<8>::for_isa(Isa::detect());
        let run = |at: usize| {
            let mut out = vec![0.0; TILE * 8];
            let output = TileOutput {
                out: &mut out,
                rows: TILE,
                pitch: 8,
                width: 8,
            };
            kernel.multiply(&input, &[at; TILE], &list, output);
            out[0]
        };
        assert_eq!(run(5), 2.0);
        assert!(std::panic::catch_unwind(|| run(6)).is_err());
        assert!(std::panic::catch_unwind(|| BlockList::<8>::new(&offsets, &rows[..8])).is_err());
    }
}
