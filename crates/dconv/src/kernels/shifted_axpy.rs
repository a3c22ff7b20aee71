//! Shifted multiply-adds of tiles: `acc[i] += w * planes[offset + i]` for every tap
//! `(offset, w)` of a tile's list, for all `i` of the tile, for a run of tiles.
//!
//! This is the inner loop of a direct sparse convolution over dense, zero-padded input
//! planes (see `conv::sparse_weight`): each non-zero weight becomes a tap whose offset says
//! where its (channel, kernel position) starts in the planes, so that a tile of output
//! positions reads a contiguous stretch of input per tap; each filter is one tile with its
//! own list. The SIMD versions keep the whole tile in vector registers across its taps, and
//! take a run of filters per call so that a short list costs no call of its own.
//!
//! A kernel reads one vector of planes per multiply-add, and loads, not multiply-adds, bound
//! it. Two taps one vector apart (kernel rows `r` and `r + 1` of one channel and column,
//! whose tiles overlap but for one vector) are kept as a [`TapPair`]: each vector the two
//! read is loaded once and feeds both, `rows + 1` loads for `2 * rows` multiply-adds.

use super::Isa;

/// One non-zero weight: where it reads in the planes, and its value.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[repr(C)]
pub struct Tap {
    pub offset: u32,
    pub weight: f32,
}

/// Two taps, the second `step` floats (one vector) after the first: `first` reads at
/// `offset`, `second` at `offset + step`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct TapPair {
    pub offset: u32,
    pub first: f32,
    pub second: f32,
}

/// Where one tile's list starts (or the previous one ends) in a [`TapList`]'s pairs and
/// single taps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapBounds {
    pub pairs: usize,
    pub taps: usize,
}

/// The lists of a run of tiles, each as its pairs and its single taps, with a bound on the
/// offsets they read, so that a kernel can check a whole range of them against the planes
/// once instead of tap by tap.
#[derive(Debug, Clone, Default)]
pub struct TapList {
    pairs: Vec<TapPair>,
    taps: Vec<Tap>,
    /// Floats from a pair's first tap to its second.
    step: usize,
    /// One past the largest offset read (0 when empty).
    span: usize,
}

impl TapList {
    /// An empty list whose pairs join taps `step` floats apart (the vector width of the
    /// kernel that will read it).
    pub fn new(step: usize) -> Self {
        TapList {
            step,
            ..TapList::default()
        }
    }

    /// Appends one tile's taps, pairing each with the next when it reads `step` floats
    /// further, and empties `taps` (so that the caller can reuse it); returns where the list
    /// now ends.
    pub fn push_tile(&mut self, taps: &mut Vec<Tap>) -> TapBounds {
        taps.sort_by_key(|t| t.offset);
        let mut rest = taps.as_slice();
        while let Some((&t, tail)) = rest.split_first() {
            match tail.first() {
                Some(&u) if u.offset as usize == t.offset as usize + self.step => {
                    self.pairs.push(TapPair {
                        offset: t.offset,
                        first: t.weight,
                        second: u.weight,
                    });
                    self.span = self.span.max(u.offset as usize + 1);
                    rest = &tail[1..];
                }
                _ => {
                    self.taps.push(t);
                    self.span = self.span.max(t.offset as usize + 1);
                    rest = tail;
                }
            }
        }
        taps.clear();
        self.end()
    }

    /// Frees the capacity that growing left past the list.
    pub fn shrink_to_fit(&mut self) {
        self.pairs.shrink_to_fit();
        self.taps.shrink_to_fit();
    }

    /// Bytes the list holds, capacity included.
    pub fn bytes(&self) -> usize {
        self.pairs.capacity() * std::mem::size_of::<TapPair>()
            + self.taps.capacity() * std::mem::size_of::<Tap>()
    }

    /// Where the list ends: the bounds of the next tile's start.
    pub fn end(&self) -> TapBounds {
        TapBounds {
            pairs: self.pairs.len(),
            taps: self.taps.len(),
        }
    }

    pub fn pairs(&self) -> &[TapPair] {
        &self.pairs
    }
    pub fn taps(&self) -> &[Tap] {
        &self.taps
    }
    /// Floats from a pair's first tap to its second.
    pub fn step(&self) -> usize {
        self.step
    }
    pub fn is_empty(&self) -> bool {
        self.taps.is_empty() && self.pairs.is_empty()
    }
    /// One past the largest offset read (0 when empty).
    pub fn span(&self) -> usize {
        self.span
    }
}

/// The weights of two filters at one place: `weights[0]` for the first filter, `weights[1]`
/// for the second (either may be zero where only the other has a weight).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[repr(C)]
pub struct TwinTap {
    pub offset: u32,
    pub weights: [f32; 2],
}

/// The lists of a run of filter pairs, each the union of its two filters' taps, with a
/// bound on the offsets they read (as [`TapList`]).
#[derive(Debug, Clone, Default)]
pub struct TwinList {
    taps: Vec<TwinTap>,
    /// One past the largest offset read (0 when empty).
    span: usize,
}

impl TwinList {
    /// Appends the list of one pair of filters, whose taps are `first` and `second` (each
    /// with distinct offsets), and empties both; returns where the list now ends.
    pub fn push_pair(&mut self, first: &mut Vec<Tap>, second: &mut Vec<Tap>) -> usize {
        first.sort_by_key(|t| t.offset);
        second.sort_by_key(|t| t.offset);
        let (mut a, mut b) = (first.iter().peekable(), second.iter().peekable());
        loop {
            let (x, y) = (a.peek().map(|t| t.offset), b.peek().map(|t| t.offset));
            let Some(offset) = x.into_iter().chain(y).min() else {
                break;
            };
            let mut twin = TwinTap {
                offset,
                weights: [0.0; 2],
            };
            if x == Some(offset) {
                twin.weights[0] = a.next().map_or(0.0, |t| t.weight);
            }
            if y == Some(offset) {
                twin.weights[1] = b.next().map_or(0.0, |t| t.weight);
            }
            self.span = self.span.max(twin.offset as usize + 1);
            self.taps.push(twin);
        }
        first.clear();
        second.clear();
        self.taps.len()
    }

    /// Frees the capacity that growing left past the list.
    pub fn shrink_to_fit(&mut self) {
        self.taps.shrink_to_fit();
    }

    /// Bytes the list holds, capacity included.
    pub fn bytes(&self) -> usize {
        self.taps.capacity() * std::mem::size_of::<TwinTap>()
    }

    pub fn taps(&self) -> &[TwinTap] {
        &self.taps
    }
    /// One past the largest offset read (0 when empty).
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

/// Most rows of a pair of tiles the twin kernels of `isa` keep in registers: two tiles'
/// sums, a loaded vector and two weights. AVX2's 16 registers hold two tiles of 6.
pub fn max_twin_rows(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 12,
        Isa::Avx2 => 6,
        Isa::Neon | Isa::Portable => 8,
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

/// The kernel of one instruction set, chosen once.
#[derive(Clone, Copy)]
pub struct ShiftedAxpy {
    /// The instruction set the kernel runs: the one asked for, or portable when this CPU
    /// lacks it.
    isa: Isa,
    tiles: TilesFn,
    twins: TwinsFn,
}

/// A kernel over `(planes, lists, tile length, acc)`, its operands checked by
/// [`ShiftedAxpy::tiles`].
type TilesFn = fn(&[f32], Lists, usize, &mut [f32]);

/// A kernel over `(planes, twin taps, bounds, tile length, acc)`, its operands checked by
/// [`ShiftedAxpy::twin_tiles`].
type TwinsFn = fn(&[f32], &[TwinTap], &[usize], usize, &mut [f32]);

impl ShiftedAxpy {
    /// The kernel of `isa`, or the portable one when this CPU lacks it.
    pub fn for_isa(isa: Isa) -> Self {
        let (isa, tiles, twins): (Isa, TilesFn, TwinsFn) = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if isa.is_supported() => {
                (isa, avx512::checked_tiles, avx512::checked_twins)
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if isa.is_supported() => (isa, avx2::checked_tiles, avx2::checked_twins),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon if isa.is_supported() => (isa, neon::checked_tiles, neon::checked_twins),
            _ => (Isa::Portable, portable_tiles, portable_twins),
        };
        ShiftedAxpy { isa, tiles, twins }
    }

    /// For each tile `f` of `acc` (cut into `bounds.len() - 1` equal tiles):
    /// `tile[i] += w * planes[offset + i]` for every tap of tile `f`'s list (its pairs and
    /// single taps from `bounds[f]` to `bounds[f + 1]`) and every `i` of the tile.
    ///
    /// # Panics
    /// If `bounds` is empty, decreasing or past the lists, if `acc` does not cut into equal
    /// tiles, if the planes are too short for some tap of the list, or if a SIMD kernel is
    /// given tiles that are not 1 to [`max_tile_rows`] whole vectors, or pairs whose step is
    /// not its vector.
    pub fn tiles(&self, planes: &[f32], taps: &TapList, bounds: &[TapBounds], acc: &mut [f32]) {
        let isa = self.isa;
        let tiles = bounds
            .len()
            .checked_sub(1)
            .expect("bounds of at least one tile");
        // (A tile whose bounds decrease panics where its lists are sliced.)
        let (last, end) = (bounds[tiles], taps.end());
        assert!(
            last.pairs <= end.pairs && last.taps <= end.taps,
            "tap bounds run past the taps"
        );
        if tiles == 0 || acc.is_empty() {
            return;
        }
        let tile = self.tile_len(acc.len(), tiles, max_tile_rows(isa));
        assert!(
            taps.is_empty() || planes.len() >= taps.span() - 1 + tile,
            "planes too short for the taps"
        );
        if isa != Isa::Portable {
            assert!(
                taps.pairs().is_empty() || taps.step() == vector_floats(isa),
                "{isa} takes pairs one vector apart"
            );
        }
        let lists = Lists {
            pairs: taps.pairs(),
            taps: taps.taps(),
            step: taps.step(),
            bounds,
        };
        (self.tiles)(planes, lists, tile, acc)
    }

    /// For each pair `f` of tiles of `acc` (cut into `2 * (bounds.len() - 1)` equal tiles):
    /// `tile[i] += w * planes[offset + i]` over the twin taps from `bounds[f]` to
    /// `bounds[f + 1]`, with the first weight for tile `2f` and the second for `2f + 1`.
    ///
    /// # Panics
    /// If `bounds` is empty, decreasing or past the list, if `acc` does not cut into equal
    /// tiles, if the planes are too short for some tap, or if a SIMD kernel is given tiles
    /// that are not 1 to [`max_twin_rows`] whole vectors.
    pub fn twin_tiles(&self, planes: &[f32], list: &TwinList, bounds: &[usize], acc: &mut [f32]) {
        let pairs = bounds
            .len()
            .checked_sub(1)
            .expect("bounds of at least one pair of tiles");
        // (A pair whose bounds decrease panics where its list is sliced.)
        assert!(
            bounds[pairs] <= list.taps().len(),
            "tap bounds run past the taps"
        );
        if pairs == 0 || acc.is_empty() {
            return;
        }
        let tile = self.tile_len(acc.len(), 2 * pairs, max_twin_rows(self.isa));
        assert!(
            list.taps().is_empty() || planes.len() >= list.span() - 1 + tile,
            "planes too short for the taps"
        );
        (self.twins)(planes, list.taps(), bounds, tile, acc)
    }

    /// The length of each of `tiles` equal tiles of an `acc` of `len` floats; panics unless
    /// they are equal, and, for a SIMD kernel, 1 to `max_rows` whole vectors.
    fn tile_len(&self, len: usize, tiles: usize, max_rows: usize) -> usize {
        assert!(
            len.is_multiple_of(tiles),
            "acc does not cut into {tiles} tiles"
        );
        let (tile, isa) = (len / tiles, self.isa);
        if isa != Isa::Portable {
            let rows = tile / vector_floats(isa);
            assert!(
                tile.is_multiple_of(vector_floats(isa)) && (1..=max_rows).contains(&rows),
                "{isa} takes tiles of 1 to {max_rows} whole vectors"
            );
        }
        tile
    }
}

/// The pairs, the single taps, the step of a pair, and the bounds of each tile's part of
/// the pairs and taps.
#[derive(Clone, Copy)]
struct Lists<'a> {
    pairs: &'a [TapPair],
    taps: &'a [Tap],
    step: usize,
    bounds: &'a [TapBounds],
}

/// The portable kernel over tiles of `tile` floats, each tap of a pair on its own.
fn portable_tiles(planes: &[f32], lists: Lists, tile: usize, acc: &mut [f32]) {
    for (acc, b) in acc.chunks_exact_mut(tile).zip(lists.bounds.windows(2)) {
        let singles = lists.taps[b[0].taps..b[1].taps].iter().copied();
        let pairs = lists.pairs[b[0].pairs..b[1].pairs].iter().flat_map(|p| {
            let second = p.offset as usize + lists.step;
            [
                Tap {
                    offset: p.offset,
                    weight: p.first,
                },
                Tap {
                    offset: second as u32,
                    weight: p.second,
                },
            ]
        });
        portable(planes, pairs.chain(singles), acc);
    }
}

/// Plain Rust, any tile length: chunks of the tile small enough to stay in registers.
fn portable(planes: &[f32], taps: impl Iterator<Item = Tap> + Clone, acc: &mut [f32]) {
    const CHUNK: usize = 32;
    for (c, acc) in acc.chunks_mut(CHUNK).enumerate() {
        let base = c * CHUNK;
        let mut local = [0.0f32; CHUNK];
        let local = &mut local[..acc.len()];
        local.copy_from_slice(acc);
        for t in taps.clone() {
            let from = t.offset as usize + base;
            for (a, &x) in local.iter_mut().zip(&planes[from..from + acc.len()]) {
                *a += t.weight * x;
            }
        }
        acc.copy_from_slice(local);
    }
}

/// The portable kernel over pairs of tiles of `tile` floats, each filter of a pair on its
/// own.
fn portable_twins(
    planes: &[f32],
    taps: &[TwinTap],
    bounds: &[usize],
    tile: usize,
    acc: &mut [f32],
) {
    for (pair, b) in acc.chunks_exact_mut(2 * tile).zip(bounds.windows(2)) {
        let taps = &taps[b[0]..b[1]];
        for (f, acc) in pair.chunks_exact_mut(tile).enumerate() {
            let one = taps.iter().map(|t| Tap {
                offset: t.offset,
                weight: t.weights[f],
            });
            portable(planes, one, acc);
        }
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
/// `NV` accumulators of `$lanes` floats live in registers across a tile's taps;
/// `checked_tiles` picks the `NV` (a compile-time count, so that they stay in registers) for
/// a run-time row count.
macro_rules! simd_tiles {
    ($module:ident, $arch:ident, $feature:literal, $lanes:expr, $vec:ty,
     load: $load:ident, store: $store:ident, splat: $splat:ident,
     fma: |$a:ident, $w:ident, $x:ident| $fma:expr) => {
        mod $module {
            use super::{Lists, TwinTap};
            use std::arch::$arch::*;

            /// The kernel over tiles of `tile` floats, as a safe fn for
            /// [`super::ShiftedAxpy`].
            pub fn checked_tiles(planes: &[f32], lists: Lists, tile: usize, acc: &mut [f32]) {
                // SAFETY: reachable only through a `ShiftedAxpy` that `for_isa` built after
                // finding the feature on this CPU, and called by `ShiftedAxpy::tiles` once
                // its operands passed the checks there: a tap reads planes[offset .. offset
                // + tile] and a pair planes[offset .. offset + lanes + tile], its second
                // tap's tile, within bounds since every offset read is below span and
                // planes.len() >= span - 1 + tile; bounds index the lists; each tile is
                // `rows` vectors, 1 <= rows <= 16.
                unsafe { by_rows!(tile / $lanes, tiles_of(planes.as_ptr(), lists, acc)) }
            }

            /// # Safety
            /// The CPU must support the target feature, `acc` must be tiles of `NV * lanes`
            /// floats, one per window of `lists.bounds`, which must index both lists, and
            /// `planes.add(t.offset + i)` must be readable for every tap `t` and every
            /// `i < NV * lanes`, and for every pair `p` and every `i < (NV + 1) * lanes`.
            #[target_feature(enable = $feature)]
            unsafe fn tiles_of<const NV: usize>(planes: *const f32, lists: Lists, acc: &mut [f32]) {
                let tile = NV * $lanes;
                debug_assert_eq!(acc.len(), (lists.bounds.len() - 1) * tile);
                for (f, b) in lists.bounds.windows(2).enumerate() {
                    let pairs = &lists.pairs[b[0].pairs..b[1].pairs];
                    let singles = &lists.taps[b[0].taps..b[1].taps];
                    if pairs.is_empty() && singles.is_empty() {
                        continue;
                    }
                    // SAFETY: acc holds tile f, NV * lanes floats from f * tile.
                    let out = unsafe { acc.as_mut_ptr().add(f * tile) };
                    // SAFETY: as above.
                    let mut sum: [$vec; NV] =
                        std::array::from_fn(|i| unsafe { $load(out.add(i * $lanes)) });
                    for p in pairs {
                        let (first, second) = ($splat(p.first), $splat(p.second));
                        // SAFETY: the caller guarantees planes[offset .. offset + lanes + tile].
                        let at = unsafe { planes.add(p.offset as usize) };
                        // Vector k is row k of the first tap's tile and row k - 1 of the
                        // second's. (Straight loops over constant bounds, so that the sums
                        // stay in registers.)
                        // SAFETY (all loads): vector k <= NV ends at (k + 1) * lanes <=
                        // tile + lanes, within the span.
                        let $x = unsafe { $load(at) };
                        let ($a, $w) = (sum[0], first);
                        sum[0] = $fma;
                        for k in 1..NV {
                            // SAFETY: as above.
                            let $x = unsafe { $load(at.add(k * $lanes)) };
                            let ($a, $w) = (sum[k], first);
                            sum[k] = $fma;
                            let ($a, $w) = (sum[k - 1], second);
                            sum[k - 1] = $fma;
                        }
                        // SAFETY: as above.
                        let $x = unsafe { $load(at.add(NV * $lanes)) };
                        let ($a, $w) = (sum[NV - 1], second);
                        sum[NV - 1] = $fma;
                    }
                    for t in singles {
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

            /// The twin kernel over pairs of tiles of `tile` floats, as a safe fn for
            /// [`super::ShiftedAxpy`].
            pub fn checked_twins(
                planes: &[f32],
                taps: &[TwinTap],
                bounds: &[usize],
                tile: usize,
                acc: &mut [f32],
            ) {
                // SAFETY: reachable only through a `ShiftedAxpy` that `for_isa` built after
                // finding the feature on this CPU, and called by `ShiftedAxpy::twin_tiles`
                // once its operands passed the checks there: a tap reads planes[offset ..
                // offset + tile], within bounds since every offset is below span and
                // planes.len() >= span - 1 + tile; acc is 2 * (bounds.len() - 1) tiles of
                // `rows` vectors, 1 <= rows <= 16.
                unsafe { by_rows!(tile / $lanes, twins_of(planes.as_ptr(), taps, bounds, acc)) }
            }

            /// # Safety
            /// The CPU must support the target feature, `acc` must be pairs of tiles of
            /// `NV * lanes` floats, one pair per window of `bounds`, which must index `taps`,
            /// and `planes.add(t.offset + i)` must be readable for every tap `t` and every
            /// `i < NV * lanes`.
            #[target_feature(enable = $feature)]
            unsafe fn twins_of<const NV: usize>(
                planes: *const f32,
                taps: &[TwinTap],
                bounds: &[usize],
                acc: &mut [f32],
            ) {
                let tile = NV * $lanes;
                debug_assert_eq!(acc.len(), (bounds.len() - 1) * 2 * tile);
                for (f, b) in bounds.windows(2).enumerate() {
                    let taps = &taps[b[0]..b[1]];
                    if taps.is_empty() {
                        continue;
                    }
                    // SAFETY: acc holds pair f, 2 * NV * lanes floats from 2 * f * tile.
                    let out = unsafe { acc.as_mut_ptr().add(2 * f * tile) };
                    // SAFETY (both tiles' loads and stores): within pair f, as above.
                    let mut first: [$vec; NV] =
                        std::array::from_fn(|i| unsafe { $load(out.add(i * $lanes)) });
                    let mut second: [$vec; NV] =
                        std::array::from_fn(|i| unsafe { $load(out.add(tile + i * $lanes)) });
                    for t in taps {
                        let (w0, w1) = ($splat(t.weights[0]), $splat(t.weights[1]));
                        // SAFETY: the caller guarantees planes[offset .. offset + tile].
                        let p = unsafe { planes.add(t.offset as usize) };
                        for i in 0..NV {
                            // SAFETY: i * lanes + lanes <= tile, within the readable span.
                            let $x = unsafe { $load(p.add(i * $lanes)) };
                            let ($a, $w) = (first[i], w0);
                            first[i] = $fma;
                            let ($a, $w) = (second[i], w1);
                            second[i] = $fma;
                        }
                    }
                    for i in 0..NV {
                        // SAFETY: as above.
                        unsafe {
                            $store(out.add(i * $lanes), first[i]);
                            $store(out.add(tile + i * $lanes), second[i]);
                        }
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

    /// Random lists of `taps` distinct offsets for `tiles` tiles, on a grid of `step` so that
    /// about a third of the taps have a neighbour `step` further (a pair), with a few off the
    /// grid; returns the lists and the `TapList` made of them.
    fn random_lists(rng: &mut Rng, tiles: usize, taps: usize, step: usize) -> Vec<Vec<Tap>> {
        (0..tiles)
            .map(|_| {
                let mut offsets: Vec<u32> = Vec::new();
                while offsets.len() < taps {
                    let grid = (rng.next_u64() % 40) as usize * step;
                    let off_grid =
                        usize::from(rng.unit() < 0.1) * (1 + rng.next_u64() as usize % 3);
                    let offset = (grid + off_grid) as u32;
                    if !offsets.contains(&offset) {
                        offsets.push(offset);
                    }
                }
                offsets
                    .into_iter()
                    .map(|offset| Tap {
                        offset,
                        weight: rng.nonzero_value(),
                    })
                    .collect()
            })
            .collect()
    }

    fn tap_list(lists: &[Vec<Tap>], step: usize) -> (TapList, Vec<TapBounds>) {
        let mut taps = TapList::new(step);
        let mut bounds = vec![taps.end()];
        bounds.extend(lists.iter().map(|l| taps.push_tile(&mut l.clone())));
        (taps, bounds)
    }

    /// The obvious definition, for comparison.
    fn naive(planes: &[f32], lists: &[Vec<Tap>], acc: &mut [f32]) {
        let tile = acc.len() / lists.len();
        for (acc, list) in acc.chunks_exact_mut(tile).zip(lists) {
            for t in list {
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
    fn neighbours_one_step_apart_become_pairs() {
        let tap = |offset, weight| Tap { offset, weight };
        let mut list = TapList::new(4);
        // 0, 4 and 8 chain: the first two pair, the third stays single; 13 has no partner.
        let end = list.push_tile(&mut vec![
            tap(8, 3.0),
            tap(13, 4.0),
            tap(0, 1.0),
            tap(4, 2.0),
        ]);
        assert_eq!(
            list.pairs(),
            &[TapPair {
                offset: 0,
                first: 1.0,
                second: 2.0
            }]
        );
        assert_eq!(list.taps(), &[tap(8, 3.0), tap(13, 4.0)]);
        assert_eq!(end, TapBounds { pairs: 1, taps: 2 });
        assert_eq!(list.span(), 14);
        // A pair's second tap sets the span.
        list.push_tile(&mut vec![tap(20, 1.0), tap(24, 1.0)]);
        assert_eq!(list.span(), 25);
    }

    /// The kernel tests' (tiles or pairs of tiles, taps per list), taken in turn.
    const SIZES: [(usize, usize); 5] = [(1, 0), (1, 1), (3, 7), (1, 40), (4, 12)];

    #[test]
    fn every_isa_matches_the_definition() {
        let mut rng = Rng::new(11);
        for isa in Isa::supported() {
            let step = vector_floats(isa);
            let rows = (1..=max_tile_rows(isa)).chain([3, 8]);
            for (rows, (tiles, taps)) in rows.zip(SIZES.into_iter().cycle()) {
                let tile = rows * step;
                let lists = random_lists(&mut rng, tiles, taps, step);
                let (list, bounds) = tap_list(&lists, step);
                if taps >= 12 {
                    assert!(!list.pairs().is_empty(), "the case has pairs");
                }
                let planes: Vec<f32> = (0..41 * step + 3 + tile)
                    .map(|_| rng.nonzero_value())
                    .collect();
                let init: Vec<f32> = (0..tile * tiles).map(|_| rng.nonzero_value()).collect();
                let (mut got, mut want) = (init.clone(), init);
                ShiftedAxpy::for_isa(isa).tiles(&planes, &list, &bounds, &mut got);
                naive(&planes, &lists, &mut want);
                assert_close(&got, &want, &format!("{isa}, {rows} rows, {tiles} tiles"));
            }
        }
    }

    #[test]
    fn a_twin_list_is_the_union_of_its_two_filters_taps() {
        let tap = |offset, weight| Tap { offset, weight };
        let twin = |offset, weights| TwinTap { offset, weights };
        let mut list = TwinList::default();
        let end = list.push_pair(
            &mut vec![tap(9, 1.0), tap(2, 2.0), tap(5, 3.0)],
            &mut vec![tap(5, 4.0), tap(12, 5.0), tap(1, 6.0)],
        );
        assert_eq!(
            list.taps(),
            &[
                twin(1, [0.0, 6.0]),
                twin(2, [2.0, 0.0]),
                twin(5, [3.0, 4.0]),
                twin(9, [1.0, 0.0]),
                twin(12, [0.0, 5.0]),
            ]
        );
        assert_eq!((end, list.span()), (5, 13));
        // An empty pair adds nothing; one filter alone gives its own taps.
        assert_eq!(list.push_pair(&mut vec![], &mut vec![]), 5);
        assert_eq!(list.push_pair(&mut vec![], &mut vec![tap(3, 7.0)]), 6);
        assert_eq!(list.taps()[5], twin(3, [0.0, 7.0]));
    }

    #[test]
    fn every_isa_twin_kernel_matches_the_definition() {
        let mut rng = Rng::new(5);
        for isa in Isa::supported() {
            let step = vector_floats(isa);
            let rows = (1..=max_twin_rows(isa)).chain([2, 5]);
            for (rows, (pairs, taps)) in rows.zip(SIZES.into_iter().cycle()) {
                let tile = rows * step;
                // Each pair's second filter shares most of the first's offsets, and has a
                // few of its own.
                let mut lists = Vec::new();
                for _ in 0..pairs {
                    let [first] = random_lists(&mut rng, 1, taps, step).try_into().unwrap();
                    let mut second = Vec::new();
                    for t in &first {
                        if rng.unit() < 0.8 {
                            second.push(Tap {
                                weight: rng.nonzero_value(),
                                ..*t
                            });
                        }
                    }
                    let extra = 41 * step as u32 + (rng.next_u64() % 3) as u32;
                    if rng.unit() < 0.5 {
                        second.push(Tap {
                            offset: extra,
                            weight: rng.nonzero_value(),
                        });
                    }
                    lists.push(first);
                    lists.push(second);
                }
                let mut twins = TwinList::default();
                let mut bounds = vec![0];
                for pair in lists.chunks_exact(2) {
                    let (mut a, mut b) = (pair[0].clone(), pair[1].clone());
                    bounds.push(twins.push_pair(&mut a, &mut b));
                }
                let planes: Vec<f32> = (0..42 * step + 3 + tile)
                    .map(|_| rng.nonzero_value())
                    .collect();
                let init: Vec<f32> = (0..tile * 2 * pairs).map(|_| rng.nonzero_value()).collect();
                let (mut got, mut want) = (init.clone(), init);
                ShiftedAxpy::for_isa(isa).twin_tiles(&planes, &twins, &bounds, &mut got);
                naive(&planes, &lists, &mut want);
                assert_close(
                    &got,
                    &want,
                    &format!("{isa}, twins of {rows} rows, {pairs} pairs"),
                );
            }
        }
    }

    #[test]
    fn twin_tiles_too_tall_for_the_registers_panic_on_every_simd_isa() {
        for isa in Isa::supported().into_iter().filter(|&i| i != Isa::Portable) {
            let too_tall = std::panic::catch_unwind(|| {
                let mut twins = TwinList::default();
                let bounds = [0, twins.push_pair(&mut vec![], &mut vec![])];
                let tile = (max_twin_rows(isa) + 1) * vector_floats(isa);
                let mut acc = vec![0.0; 2 * tile];
                ShiftedAxpy::for_isa(isa).twin_tiles(&[0.0; 64], &twins, &bounds, &mut acc);
            });
            assert!(
                too_tall.is_err(),
                "{isa}: a pair of tiles too tall accepted"
            );
        }
    }

    #[test]
    fn portable_takes_any_tile_length() {
        let mut rng = Rng::new(7);
        for len in [1, 5, 31, 32, 33, 64, 100] {
            let lists = random_lists(&mut rng, 3, 9, 6);
            let (list, bounds) = tap_list(&lists, 6);
            let planes: Vec<f32> = (0..250 + len).map(|_| rng.nonzero_value()).collect();
            let init: Vec<f32> = (0..len * 3).map(|i| i as f32).collect();
            let (mut got, mut want) = (init.clone(), init);
            ShiftedAxpy::for_isa(Isa::Portable).tiles(&planes, &list, &bounds, &mut got);
            naive(&planes, &lists, &mut want);
            assert_close(&got, &want, &format!("length {len}"));
        }
    }

    fn one_tap_at(offset: u32) -> (TapList, Vec<TapBounds>) {
        tap_list(
            &[vec![Tap {
                offset,
                weight: 1.0,
            }]],
            4,
        )
    }

    #[test]
    #[should_panic(expected = "planes too short")]
    fn short_planes_panic() {
        let mut acc = vec![0.0; 16];
        let (list, bounds) = one_tap_at(10);
        ShiftedAxpy::for_isa(Isa::Portable).tiles(&[0.0; 20], &list, &bounds, &mut acc);
    }

    #[test]
    #[should_panic(expected = "tap bounds run past")]
    fn bounds_past_the_taps_panic() {
        let mut acc = vec![0.0; 16];
        let (list, mut bounds) = one_tap_at(1);
        bounds[1].taps = 2;
        ShiftedAxpy::for_isa(Isa::Portable).tiles(&[0.0; 40], &list, &bounds, &mut acc);
    }

    #[test]
    fn decreasing_bounds_panic_on_every_isa() {
        for isa in Isa::supported() {
            let decreasing = std::panic::catch_unwind(|| {
                let lists = [
                    vec![Tap {
                        offset: 0,
                        weight: 1.0,
                    }],
                    vec![],
                ];
                let (list, mut bounds) = tap_list(&lists, vector_floats(isa));
                bounds.swap(1, 2);
                bounds[2] = TapBounds::default();
                let mut acc = vec![0.0; 2 * vector_floats(isa)];
                ShiftedAxpy::for_isa(isa).tiles(&[0.0; 64], &list, &bounds, &mut acc);
            });
            assert!(decreasing.is_err(), "{isa}: decreasing bounds accepted");
        }
    }
}
