//! Compaction of the non-zeros of a dense run of values: what every conversion to a sparse
//! form (CSOA, CSR) does once per input value.
//!
//! With AVX-512, sixteen values at a time: a compare gives the mask of non-zeros, and the
//! compress instructions pack their values and indices to the front of a register, which a
//! store masked to their count writes. AVX2 has no compress: eight values at a time, the
//! mask looks up the lanes of its non-zeros in a table, and a lane permute packs them.
//! Elsewhere, a portable loop with no data-dependent branch.

use super::Isa;

/// The compaction of one instruction set, chosen once.
#[derive(Clone, Copy)]
pub(crate) struct Compaction {
    compact: CompactFn,
    count: fn(&[f32]) -> usize,
}

/// The signature of [`Compaction::compact_nonzeros`].
type CompactFn = fn(&[f32], u32, &mut [u32], &mut [f32], usize) -> usize;

impl Compaction {
    /// The kernels of `isa`, or the portable ones when this CPU lacks it (or they have no
    /// SIMD version for it).
    pub fn for_isa(isa: Isa) -> Self {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if isa.is_supported() => Compaction {
                compact: x86::avx512::checked,
                count: x86::avx512::count_checked,
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if isa.is_supported() => Compaction {
                compact: x86::avx2::checked,
                count: x86::avx2::count_checked,
            },
            _ => Compaction {
                compact: compact_portable,
                count: count_portable,
            },
        }
    }

    /// Writes `(first + i, src[i])` for each non-zero `src[i]` at positions `at, at + 1, ...`
    /// of `idx`/`val` and returns `at` plus the number of non-zeros. Non-zeros past the end
    /// of the buffers are dropped (the caller sized them from a count). Positions past the
    /// last non-zero may be written too: the next call writes over them.
    #[inline]
    pub fn compact_nonzeros(
        &self,
        src: &[f32],
        first: u32,
        idx: &mut [u32],
        val: &mut [f32],
        at: usize,
    ) -> usize {
        (self.compact)(src, first, idx, val, at)
    }

    /// The number of non-zeros (NaN counts) in `src`.
    #[inline]
    pub fn count_nonzeros(&self, src: &[f32]) -> usize {
        (self.count)(src)
    }
}

/// The portable count: a loop the compiler vectorises.
fn count_portable(src: &[f32]) -> usize {
    src.iter().filter(|&&v| v != 0.0).count()
}

/// Every value is written, and the position advances only past non-zeros, so the loop has no
/// data-dependent branch: at 50 % zeros a branching loop mispredicts every other value. A
/// zero's write lands where the next non-zero (or the next call) writes, or past the end of
/// the buffers, where it is dropped.
fn compact_portable(
    src: &[f32],
    first: u32,
    idx: &mut [u32],
    val: &mut [f32],
    mut at: usize,
) -> usize {
    for (i, &v) in (first..).zip(src) {
        if let (Some(slot_idx), Some(slot_val)) = (idx.get_mut(at), val.get_mut(at)) {
            *slot_idx = i;
            *slot_val = v;
        }
        at += (v != 0.0) as usize;
    }
    at
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// A compaction and a count for one instruction set, `$lanes` values at a time in a
    /// `$vec`, from `$mask` (the mask of the non-zeros of `v`, NaN included, like `v != 0.0`)
    /// and `$store` (writes the values of `v` under `mask`, `count` of them, and their
    /// indices from `index` on, packed to `val_at` and `idx_at`, where `room` >= `count`
    /// lanes are left).
    macro_rules! compaction {
        ($compact:ident, $feature:literal, $lanes:literal, $vec:ty, load: $load:ident,
         mask: |$v:ident| $mask:expr,
         store: |$sv:ident, $smask:ident, $scount:ident, $sindex:ident, $sval:ident, $sidx:ident,
                 $sroom:ident| $store:block) => {
            pub(super) mod $compact {
                use super::*;

                /// The compaction as a safe fn, for [`super::super::Compaction`].
                pub fn checked(
                    src: &[f32],
                    first: u32,
                    idx: &mut [u32],
                    val: &mut [f32],
                    at: usize,
                ) -> usize {
                    // SAFETY: reachable only through a `Compaction` that `for_isa` built
                    // after finding the feature on this CPU.
                    unsafe { compact(src, first, idx, val, at) }
                }

                /// The count as a safe fn, for [`super::super::Compaction`].
                pub fn count_checked(src: &[f32]) -> usize {
                    // SAFETY: as for `checked`.
                    unsafe { count(src) }
                }

                #[inline]
                #[target_feature(enable = $feature)]
                fn nonzero_mask($v: $vec) -> u32 {
                    $mask
                }

                /// # Safety
                /// SAFETY: the CPU must have the feature.
                #[target_feature(enable = $feature)]
                unsafe fn compact(
                    src: &[f32],
                    first: u32,
                    idx: &mut [u32],
                    val: &mut [f32],
                    mut at: usize,
                ) -> usize {
                    let room = idx.len().min(val.len());
                    if at > room {
                        return super::super::compact_portable(src, first, idx, val, at);
                    }
                    let mut blocks = src.chunks_exact($lanes);
                    let mut index = first;
                    for block in blocks.by_ref() {
                        // SAFETY: `block` holds `$lanes` floats.
                        let v = unsafe { $load(block.as_ptr()) };
                        let mask = nonzero_mask(v);
                        let count = mask.count_ones() as usize;
                        if count > room - at {
                            // Out of room: the portable loop drops what does not fit.
                            let done = index.wrapping_sub(first) as usize;
                            return super::super::compact_portable(
                                &src[done..],
                                index,
                                idx,
                                val,
                                at,
                            );
                        }
                        let ($sv, $smask, $scount, $sindex, $sroom) =
                            (v, mask, count, index, room - at);
                        let ($sval, $sidx) = (
                            val.as_mut_ptr().wrapping_add(at),
                            idx.as_mut_ptr().wrapping_add(at),
                        );
                        // SAFETY: `at + count <= room` (checked above; `at <= room` on entry
                        // and after every block): the store writes `count` lanes, or all
                        // `$lanes` where `room - at` holds them, inside both buffers.
                        unsafe { $store };
                        at += count;
                        index = index.wrapping_add($lanes);
                    }
                    super::super::compact_portable(blocks.remainder(), index, idx, val, at)
                }

                /// # Safety
                /// SAFETY: the CPU must have the feature.
                #[target_feature(enable = $feature)]
                unsafe fn count(src: &[f32]) -> usize {
                    let mut blocks = src.chunks_exact($lanes);
                    let mut count = 0;
                    for block in blocks.by_ref() {
                        // SAFETY: `block` holds `$lanes` floats.
                        let v = unsafe { $load(block.as_ptr()) };
                        count += nonzero_mask(v).count_ones() as usize;
                    }
                    count + super::super::count_portable(blocks.remainder())
                }
            }
        };
    }

    // The compress instructions pack the non-zeros' values and indices to the front of a
    // register, which a store masked to their count writes.
    compaction!(avx512, "avx512f,popcnt", 16, __m512, load: _mm512_loadu_ps,
    mask: |v| _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(v, _mm512_setzero_ps()) as u32,
    store: |v, mask, count, index, val_at, idx_at, _room| {
        let mask = mask as __mmask16;
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let ids = _mm512_add_epi32(lanes, _mm512_set1_epi32(index as i32));
        let store = ((1u32 << count) - 1) as __mmask16;
        _mm512_mask_storeu_ps(val_at, store, _mm512_maskz_compress_ps(mask, v));
        _mm512_mask_storeu_epi32(idx_at.cast(), store, _mm512_maskz_compress_epi32(mask, ids));
    });

    /// For each mask of eight lanes, the lanes of its set bits in order, four bits each from
    /// the lowest: what a permute takes to pack those lanes to the front.
    const PACKED_LANES: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut mask = 0;
        while mask < 256 {
            let (mut packed, mut kept, mut lane) = (0u32, 0, 0);
            while lane < 8 {
                if mask >> lane & 1 == 1 {
                    packed |= lane << (4 * kept);
                    kept += 1;
                }
                lane += 1;
            }
            table[mask as usize] = packed;
            mask += 1;
        }
        table
    };

    // No compress: the mask looks up the lanes of its non-zeros in PACKED_LANES and a lane
    // permute packs them (their indices are the lanes plus `index`). Stored whole while
    // eight lanes of room are left (the lanes past the non-zeros are overwritten by the
    // next block), masked to the non-zeros after.
    compaction!(avx2, "avx2,popcnt", 8, __m256, load: _mm256_loadu_ps,
    mask: |v| _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NEQ_UQ>(v, _mm256_setzero_ps())) as u32,
    store: |v, mask, count, index, val_at, idx_at, room| {
        let packed = _mm256_set1_epi32(PACKED_LANES[mask as usize] as i32);
        let shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
        let lanes = _mm256_and_si256(_mm256_srlv_epi32(packed, shifts), _mm256_set1_epi32(7));
        let vals = _mm256_permutevar8x32_ps(v, lanes);
        let ids = _mm256_add_epi32(lanes, _mm256_set1_epi32(index as i32));
        if room >= 8 {
            _mm256_storeu_ps(val_at, vals);
            _mm256_storeu_si256(idx_at.cast(), ids);
        } else {
            let store = _mm256_cmpgt_epi32(
                _mm256_set1_epi32(count as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            );
            _mm256_maskstore_ps(val_at, store, vals);
            _mm256_maskstore_epi32(idx_at.cast(), store, ids);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_non_zeros_in_order_and_drops_overflowing_zero_writes() {
        for isa in Isa::supported() {
            let compaction = Compaction::for_isa(isa);
            let src = [0.0, 1.5, 0.0, 0.0, -2.0, 3.0, 0.0];
            let (mut idx, mut val) = ([9u32; 3], [9.0f32; 3]);
            let end = compaction.compact_nonzeros(&src, 10, &mut idx, &mut val, 0);
            assert_eq!(
                (end, idx, val),
                (3, [11, 14, 15], [1.5, -2.0, 3.0]),
                "{isa}"
            );
            // Continuing at a position: nothing before it is touched.
            let (mut idx, mut val) = ([7u32; 4], [7.0f32; 4]);
            assert_eq!(
                compaction.compact_nonzeros(&[0.0, 4.0], 0, &mut idx, &mut val, 3),
                4
            );
            assert_eq!((idx, val), ([7, 7, 7, 1], [7.0, 7.0, 7.0, 4.0]), "{isa}");
        }
    }

    /// Every instruction set keeps and counts what the portable code does, over lengths
    /// around the vector width, densities from none to all, -0.0 and NaN, starting positions,
    /// and buffers too short for the non-zeros.
    #[test]
    fn every_isa_compacts_and_counts_like_the_portable_code() {
        let mut state = 0x2545_f491u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for len in [0, 1, 15, 16, 17, 31, 64, 100] {
            for percent_zero in [0, 50, 90, 100] {
                let src: Vec<f32> = (0..len)
                    .map(|_| match next() % 100 {
                        r if r < percent_zero => [0.0, -0.0][(r % 2) as usize],
                        99 => f32::NAN,
                        r => r as f32 - 40.0,
                    })
                    .collect();
                let nonzeros = src.iter().filter(|&&v| v != 0.0).count();
                for (at, room) in [(0, len), (5, len + 5), (2, nonzeros / 2)] {
                    let mut want = (vec![0u32; room], vec![0f32; room]);
                    let want_end = compact_portable(&src, 3, &mut want.0, &mut want.1, at);
                    assert_eq!(want_end, at + nonzeros);
                    let kept = want_end.min(room);
                    for isa in Isa::supported() {
                        let compaction = Compaction::for_isa(isa);
                        // Buffers with sentinels past their end, which must stay untouched.
                        let mut got = (vec![u32::MAX; room + 8], vec![f32::MAX; room + 8]);
                        let (idx, val) = (&mut got.0[..room], &mut got.1[..room]);
                        let end = compaction.compact_nonzeros(&src, 3, idx, val, at);
                        let case = format!("{isa}: {len} values, {percent_zero}% zero, at {at}");
                        assert_eq!(end, want_end, "{case}");
                        assert!(got.0[room..].iter().all(|&i| i == u32::MAX), "{case}");
                        assert!(got.1[room..].iter().all(|&v| v == f32::MAX), "{case}");
                        assert_eq!(
                            got.0[at.min(kept)..kept],
                            want.0[at.min(kept)..kept],
                            "{case}"
                        );
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&got.1[at.min(kept)..kept]),
                            bits(&want.1[at.min(kept)..kept]),
                            "{case}"
                        );
                        assert_eq!(compaction.count_nonzeros(&src), nonzeros, "{case}");
                    }
                }
            }
        }
    }
}
