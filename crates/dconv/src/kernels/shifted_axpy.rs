//! Shifted multiply-adds of one tile: `acc[i] += w * planes[start + offset + i]` for every
//! tap `(offset, w)` of a list, for all `i` of the tile.
//!
//! This is the inner loop of a direct sparse convolution over dense, zero-padded input
//! planes (see `conv::sparse_weight`): each non-zero weight becomes a tap whose offset says
//! where its (channel, kernel position) starts in the planes, so that a tile of consecutive
//! output positions reads a contiguous stretch of input per tap. The SIMD versions keep the
//! whole tile in vector registers across all taps.

use super::Isa;
use std::ops::Range;

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

/// The planes length that `taps` need for a tile of `width` floats starting at `start`.
fn needed_len(taps: &TapList, start: usize, width: usize) -> usize {
    if taps.is_empty() || width == 0 {
        0
    } else {
        start + taps.span() - 1 + width
    }
}

/// `acc[i] += w * planes[start + offset + i]` for every tap of `taps.taps()[range]` and every
/// `i < acc.len()`, with the kernel of `isa` (which must be supported by this CPU).
///
/// # Panics
/// If `range` is out of bounds, if the planes are too short for some tap of the list, or if a
/// SIMD `isa` is given an `acc` that is not 1 to [`max_tile_rows`] whole vectors.
pub fn shifted_axpy(
    isa: Isa,
    planes: &[f32],
    taps: &TapList,
    range: Range<usize>,
    start: usize,
    acc: &mut [f32],
) {
    let list = &taps.taps()[range];
    assert!(
        planes.len() >= needed_len(taps, start, acc.len()),
        "planes too short for the taps"
    );
    if list.is_empty() {
        return;
    }
    let rows = acc.len() / vector_floats(isa);
    if isa != Isa::Portable {
        assert!(
            acc.len().is_multiple_of(vector_floats(isa)) && (1..=max_tile_rows(isa)).contains(&rows),
            "{isa} takes 1 to {} whole vectors",
            max_tile_rows(isa)
        );
        assert!(isa.is_supported(), "{isa} is not supported by this CPU");
    }
    let planes = &planes[start..];
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX-512F (checked above); every tap reads
        // planes[offset .. offset + acc.len()], within bounds since offset < span and
        // planes.len() >= span - 1 + acc.len() (checked above); acc is `rows` vectors of 16,
        // rows <= 16.
        Isa::Avx512 => unsafe { avx512::tile(rows, planes.as_ptr(), list, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 and FMA, with vectors of 8.
        Isa::Avx2 => unsafe { avx2::tile(rows, planes.as_ptr(), list, acc) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above, for NEON, with vectors of 4.
        Isa::Neon => unsafe { neon::tile(rows, planes.as_ptr(), list, acc) },
        _ => portable(planes, list, acc),
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
/// `NV` accumulators of `$lanes` floats live in registers across all taps; `tile` picks the
/// `NV` (a compile-time count, so that they stay in registers) for a run-time row count.
macro_rules! simd_tile {
    ($module:ident, $arch:ident, $feature:literal, $lanes:expr, $vec:ty,
     load: $load:ident, store: $store:ident, splat: $splat:ident,
     fma: |$a:ident, $w:ident, $x:ident| $fma:expr) => {
        mod $module {
            use super::Tap;
            use std::arch::$arch::*;

            /// # Safety
            /// As [`tile_of`], with `1 <= rows <= 16` for `NV`.
            pub unsafe fn tile(rows: usize, planes: *const f32, taps: &[Tap], acc: &mut [f32]) {
                // SAFETY: the caller's guarantees, with NV = rows.
                unsafe { by_rows!(rows, tile_of(planes, taps, acc)) }
            }

            /// # Safety
            /// The CPU must support the target feature, `acc.len() == NV * lanes`, and
            /// `planes.add(t.offset + i)` must be readable for every tap `t` and every
            /// `i < acc.len()`.
            #[target_feature(enable = $feature)]
            unsafe fn tile_of<const NV: usize>(planes: *const f32, taps: &[Tap], acc: &mut [f32]) {
                debug_assert_eq!(acc.len(), NV * $lanes);
                let out = acc.as_mut_ptr();
                // SAFETY: acc holds NV * lanes floats.
                let mut sum: [$vec; NV] =
                    std::array::from_fn(|i| unsafe { $load(out.add(i * $lanes)) });
                for t in taps {
                    let $w = $splat(t.weight);
                    // SAFETY: the caller guarantees planes[offset .. offset + acc.len()].
                    let p = unsafe { planes.add(t.offset as usize) };
                    for (i, s) in sum.iter_mut().enumerate() {
                        // SAFETY: i * lanes + lanes <= acc.len(), within the readable span.
                        let $x = unsafe { $load(p.add(i * $lanes)) };
                        let $a = *s;
                        *s = $fma;
                    }
                }
                for (i, s) in sum.iter().enumerate() {
                    // SAFETY: acc holds NV * lanes floats.
                    unsafe { $store(out.add(i * $lanes), *s) };
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
simd_tile!(avx512, x86_64, "avx512f", 16, __m512,
    load: _mm512_loadu_ps, store: _mm512_storeu_ps, splat: _mm512_set1_ps,
    fma: |a, w, x| _mm512_fmadd_ps(w, x, a));

#[cfg(target_arch = "x86_64")]
simd_tile!(avx2, x86_64, "avx2,fma", 8, __m256,
    load: _mm256_loadu_ps, store: _mm256_storeu_ps, splat: _mm256_set1_ps,
    fma: |a, w, x| _mm256_fmadd_ps(w, x, a));

#[cfg(target_arch = "aarch64")]
simd_tile!(neon, aarch64, "neon", 4, float32x4_t,
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
    fn naive(planes: &[f32], taps: &[Tap], start: usize, acc: &mut [f32]) {
        for t in taps {
            for (i, a) in acc.iter_mut().enumerate() {
                *a += t.weight * planes[start + t.offset as usize + i];
            }
        }
    }

    #[test]
    fn portable_matches_naive_for_any_length() {
        let mut rng = Rng::new(7);
        for len in [0, 1, 5, 31, 32, 33, 64, 100] {
            let (taps, planes) = random_case(&mut rng, 13, 90);
            let init: Vec<f32> = (0..len).map(|i| i as f32).collect();
            let (mut got, mut want) = (init.clone(), init);
            shifted_axpy(Isa::Portable, &planes, &taps, 2..11, 3, &mut got);
            naive(&planes, &taps.taps()[2..11], 3, &mut want);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{g} vs {w}");
            }
        }
    }

    #[test]
    fn every_isa_matches_portable() {
        let mut rng = Rng::new(11);
        for isa in Isa::supported() {
            let cases = [(0, 0), (1, 5), (7, 17), (40, 1)];
            for (rows, (n, start)) in (1..=max_tile_rows(isa)).zip(cases.into_iter().cycle()) {
                let width = rows * vector_floats(isa);
                let (taps, planes) = random_case(&mut rng, n.max(1), 300);
                let init: Vec<f32> = (0..width).map(|_| rng.nonzero_value()).collect();
                let (mut got, mut want) = (init.clone(), init);
                shifted_axpy(isa, &planes, &taps, 0..n, start, &mut got);
                shifted_axpy(Isa::Portable, &planes, &taps, 0..n, start, &mut want);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                        "{isa}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "planes too short")]
    fn short_planes_panic() {
        let taps = TapList::new(vec![Tap {
            offset: 10,
            weight: 1.0,
        }]);
        let mut acc = vec![0.0; 16];
        shifted_axpy(Isa::Portable, &[0.0; 20], &taps, 0..1, 0, &mut acc);
    }
}
