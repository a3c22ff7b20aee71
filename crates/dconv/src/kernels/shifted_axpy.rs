//! Shifted multiply-adds of tiles: `acc[i] += w * planes[offset + i]` for every tap
//! `(offset, w)` of a tile's list, for all `i` of the tile, for a run of tiles.
//!
//! This is the inner loop of a direct sparse convolution over dense, zero-padded input
//! planes (see `conv::sparse_weight`): each non-zero weight becomes a tap whose offset says
//! where its (channel, kernel position) starts in the planes, so that a tile of output
//! positions reads a contiguous stretch of input per tap; each filter is one tile with its
//! own list. The SIMD versions keep the whole tile in vector registers across its taps, and
//! take a run of filters per call so that a short list costs no call of its own.

use super::Isa;

/// One non-zero weight: where it reads in the planes, and its value.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct Tap {
    pub offset: u32,
    pub weight: f32,
}

/// Taps with a known bound on their offsets, so that a kernel can check a whole range of
/// them against the planes once instead of tap by tap.
#[derive(Debug, Clone, Default)]
pub struct TapList {
    taps: Vec<Tap>,
    /// One past the largest offset (0 when empty).
    span: usize,
}

impl TapList {
    pub fn new(taps: Vec<Tap>) -> Self {
        let span = taps
            .iter()
            .map(|t| t.offset as usize + 1)
            .max()
            .unwrap_or(0);
        TapList { taps, span }
    }
    pub fn taps(&self) -> &[Tap] {
        &self.taps
    }
    pub fn len(&self) -> usize {
        self.taps.len()
    }
    pub fn is_empty(&self) -> bool {
        self.taps.is_empty()
    }
    /// One past the largest offset (0 when empty).
    pub fn span(&self) -> usize {
        self.span
    }
}

/// Most accumulator vectors (rows of a tile) the kernels of `isa` keep in registers: AVX2's
/// 16 registers hold 8 and leave room for the weight and a load; NEON's 32 hold as many;
/// AVX-512's 32 hold 16, more than the 8 (= 2 FMA units x 4 cycles of latency) that keep
/// both units busy, which leaves slack for load hiccups.
pub fn max_tile_rows(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 16,
        Isa::Avx2 | Isa::Neon | Isa::Portable => 8,
    }
}

/// Floats per vector of the kernels of `isa`: tiles that start at a multiple of it, over
/// planes aligned to it, read whole vectors (no load straddles two cache lines).
pub fn vector_floats(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 16,
        Isa::Avx2 => 8,
        Isa::Neon | Isa::Portable => 4,
    }
}

/// For each tile `f` of `acc` (cut into `bounds.len() - 1` equal tiles):
/// `tile[i] += w * planes[offset + i]` for every tap of `taps.taps()[bounds[f]..bounds[f + 1]]`
/// and every `i` of the tile, with the kernel of `isa` (which must be supported by this CPU).
///
/// # Panics
/// If `bounds` is empty, decreasing or past the taps, if `acc` does not cut into equal tiles,
/// if the planes are too short for some tap of the list, or if a SIMD `isa` is given tiles
/// that are not 1 to [`max_tile_rows`] whole vectors.
pub fn shifted_axpy(isa: Isa, planes: &[f32], taps: &TapList, bounds: &[usize], acc: &mut [f32]) {
    let tiles = bounds
        .len()
        .checked_sub(1)
        .expect("bounds of at least one tile");
    assert!(
        bounds.windows(2).all(|b| b[0] <= b[1]) && bounds.last() <= Some(&taps.len()),
        "tap bounds decrease or run past the taps"
    );
    if tiles == 0 || acc.is_empty() {
        return;
    }
    assert!(
        acc.len().is_multiple_of(tiles),
        "acc does not cut into {tiles} tiles"
    );
    let tile = acc.len() / tiles;
    assert!(
        taps.is_empty() || planes.len() >= taps.span() - 1 + tile,
        "planes too short for the taps"
    );
    let rows = tile / vector_floats(isa);
    if isa != Isa::Portable {
        assert!(
            tile.is_multiple_of(vector_floats(isa)) && (1..=max_tile_rows(isa)).contains(&rows),
            "{isa} takes tiles of 1 to {} whole vectors",
            max_tile_rows(isa)
        );
        assert!(isa.is_supported(), "{isa} is not supported by this CPU");
    }
    let list = taps.taps();
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX-512F (checked above); every tap reads
        // planes[offset .. offset + tile], within bounds since offset < span and
        // planes.len() >= span - 1 + tile (checked above); bounds index the list (checked
        // above); each tile is `rows` vectors of 16, 1 <= rows <= 16.
        Isa::Avx512 => unsafe { avx512::tiles(rows, planes.as_ptr(), list, bounds, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 and FMA, with vectors of 8.
        Isa::Avx2 => unsafe { avx2::tiles(rows, planes.as_ptr(), list, bounds, acc) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above, for NEON, with vectors of 4.
        Isa::Neon => unsafe { neon::tiles(rows, planes.as_ptr(), list, bounds, acc) },
        _ => {
            for (acc, b) in acc.chunks_exact_mut(tile).zip(bounds.windows(2)) {
                portable(planes, &list[b[0]..b[1]], acc);
            }
        }
    }
}

/// Plain Rust, any tile length: chunks of the tile small enough to stay in registers.
fn portable(planes: &[f32], taps: &[Tap], acc: &mut [f32]) {
    const CHUNK: usize = 32;
    for (c, acc) in acc.chunks_mut(CHUNK).enumerate() {
        let base = c * CHUNK;
        let mut local = [0.0f32; CHUNK];
        let local = &mut local[..acc.len()];
        local.copy_from_slice(acc);
        for t in taps {
            let from = t.offset as usize + base;
            for (a, &x) in local.iter_mut().zip(&planes[from..from + acc.len()]) {
                *a += t.weight * x;
            }
        }
        acc.copy_from_slice(local);
    }
}

/// `$f::<N> $args` for the compile-time `N` equal to the run-time `$rows` (1 to 16).
macro_rules! by_rows {
    ($rows:expr, $f:ident $args:tt) => {
        by_rows!(@arms $rows, $f $args, 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
    };
    (@arms $rows:expr, $f:ident $args:tt, $($n:literal)*) => {
        match $rows {
            $($n => $f::<$n> $args,)*
            _ => unreachable!("1 to 16 rows"),
        }
    };
}

/// One SIMD kernel per instruction set, the same code over that set's vector type:
/// `NV` accumulators of `$lanes` floats live in registers across a tile's taps; `tiles`
/// picks the `NV` (a compile-time count, so that they stay in registers) for a run-time row
/// count.
macro_rules! simd_tiles {
    ($module:ident, $arch:ident, $feature:literal, $lanes:expr, $vec:ty,
     load: $load:ident, store: $store:ident, splat: $splat:ident,
     fma: |$a:ident, $w:ident, $x:ident| $fma:expr) => {
        mod $module {
            use super::Tap;
            use std::arch::$arch::*;

            /// # Safety
            /// As [`tiles_of`], with `1 <= rows <= 16` for `NV`.
            pub unsafe fn tiles(
                rows: usize,
                planes: *const f32,
                taps: &[Tap],
                bounds: &[usize],
                acc: &mut [f32],
            ) {
                // SAFETY: the caller's guarantees, with NV = rows.
                unsafe { by_rows!(rows, tiles_of(planes, taps, bounds, acc)) }
            }

            /// # Safety
            /// The CPU must support the target feature, `acc` must be tiles of `NV * lanes`
            /// floats, one per window of `bounds`, which must index `taps`, and
            /// `planes.add(t.offset + i)` must be readable for every tap `t` and every
            /// `i < NV * lanes`.
            #[target_feature(enable = $feature)]
            unsafe fn tiles_of<const NV: usize>(
                planes: *const f32,
                taps: &[Tap],
                bounds: &[usize],
                acc: &mut [f32],
            ) {
                let tile = NV * $lanes;
                debug_assert_eq!(acc.len(), (bounds.len() - 1) * tile);
                for (f, b) in bounds.windows(2).enumerate() {
                    let list = &taps[b[0]..b[1]];
                    if list.is_empty() {
                        continue;
                    }
                    // SAFETY: acc holds tile f, NV * lanes floats from f * tile.
                    let out = unsafe { acc.as_mut_ptr().add(f * tile) };
                    // SAFETY: as above.
                    let mut sum: [$vec; NV] =
                        std::array::from_fn(|i| unsafe { $load(out.add(i * $lanes)) });
                    for t in list {
                        let $w = $splat(t.weight);
                        // SAFETY: the caller guarantees planes[offset .. offset + tile].
                        let p = unsafe { planes.add(t.offset as usize) };
                        for (i, s) in sum.iter_mut().enumerate() {
                            // SAFETY: i * lanes + lanes <= tile, within the readable span.
                            let $x = unsafe { $load(p.add(i * $lanes)) };
                            let $a = *s;
                            *s = $fma;
                        }
                    }
                    for (i, s) in sum.iter().enumerate() {
                        // SAFETY: as for the loads of the tile.
                        unsafe { $store(out.add(i * $lanes), *s) };
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
simd_tiles!(avx512, x86_64, "avx512f", 16, __m512,
    load: _mm512_loadu_ps, store: _mm512_storeu_ps, splat: _mm512_set1_ps,
    fma: |a, w, x| _mm512_fmadd_ps(w, x, a));

#[cfg(target_arch = "x86_64")]
simd_tiles!(avx2, x86_64, "avx2,fma", 8, __m256,
    load: _mm256_loadu_ps, store: _mm256_storeu_ps, splat: _mm256_set1_ps,
    fma: |a, w, x| _mm256_fmadd_ps(w, x, a));

#[cfg(target_arch = "aarch64")]
simd_tiles!(neon, aarch64, "neon", 4, float32x4_t,
    load: vld1q_f32, store: vst1q_f32, splat: vdupq_n_f32,
    fma: |a, w, x| vfmaq_f32(a, w, x));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Rng;

    fn random_case(rng: &mut Rng, taps: usize, planes: usize) -> (TapList, Vec<f32>) {
        let list = (0..taps)
            .map(|_| Tap {
                offset: (rng.next_u64() % planes as u64) as u32,
                weight: rng.nonzero_value(),
            })
            .collect();
        let planes = (0..planes + 300).map(|_| rng.nonzero_value()).collect();
        (TapList::new(list), planes)
    }

    /// The obvious definition, for comparison.
    fn naive(planes: &[f32], taps: &[Tap], bounds: &[usize], acc: &mut [f32]) {
        let tile = acc.len() / (bounds.len() - 1);
        for (acc, b) in acc.chunks_exact_mut(tile).zip(bounds.windows(2)) {
            for t in &taps[b[0]..b[1]] {
                for (i, a) in acc.iter_mut().enumerate() {
                    *a += t.weight * planes[t.offset as usize + i];
                }
            }
        }
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{what}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn portable_matches_naive_for_any_length() {
        let mut rng = Rng::new(7);
        for len in [1, 5, 31, 32, 33, 64, 100] {
            let (taps, planes) = random_case(&mut rng, 13, 90);
            for bounds in [&[2, 11][..], &[0, 3, 3, 9, 13]] {
                let init: Vec<f32> = (0..len * (bounds.len() - 1)).map(|i| i as f32).collect();
                let (mut got, mut want) = (init.clone(), init);
                shifted_axpy(Isa::Portable, &planes, &taps, bounds, &mut got);
                naive(&planes, taps.taps(), bounds, &mut want);
                assert_close(&got, &want, &format!("length {len}, bounds {bounds:?}"));
            }
        }
    }

    #[test]
    fn every_isa_matches_portable() {
        let mut rng = Rng::new(11);
        for isa in Isa::supported() {
            let runs = [
                &[0, 0][..],
                &[0, 1],
                &[0, 7, 7, 12],
                &[0, 40],
                &[0, 3, 9, 9, 20],
            ];
            for (rows, bounds) in (1..=max_tile_rows(isa)).zip(runs.into_iter().cycle()) {
                let tile = rows * vector_floats(isa);
                let (taps, planes) = random_case(&mut rng, 40, 300);
                let len = tile * (bounds.len() - 1);
                let init: Vec<f32> = (0..len).map(|_| rng.nonzero_value()).collect();
                let (mut got, mut want) = (init.clone(), init);
                shifted_axpy(isa, &planes, &taps, bounds, &mut got);
                shifted_axpy(Isa::Portable, &planes, &taps, bounds, &mut want);
                assert_close(
                    &got,
                    &want,
                    &format!("{isa}, {rows} rows, bounds {bounds:?}"),
                );
            }
        }
    }

    fn one_tap_at(offset: u32) -> TapList {
        TapList::new(vec![Tap {
            offset,
            weight: 1.0,
        }])
    }

    #[test]
    #[should_panic(expected = "planes too short")]
    fn short_planes_panic() {
        let mut acc = vec![0.0; 16];
        shifted_axpy(
            Isa::Portable,
            &[0.0; 20],
            &one_tap_at(10),
            &[0, 1],
            &mut acc,
        );
    }

    #[test]
    #[should_panic(expected = "tap bounds decrease")]
    fn bounds_past_the_taps_panic() {
        let mut acc = vec![0.0; 16];
        shifted_axpy(Isa::Portable, &[0.0; 40], &one_tap_at(1), &[0, 2], &mut acc);
    }
}
