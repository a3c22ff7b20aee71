//! `acc += Σ v · panel[c]` over the entries `(c, v)` of a sparse row, for one block of
//! `16 · NB` output channels.
//!
//! This is the inner loop of the sparse-activation methods (im2CSR, im2CSOA, the lowered
//! CSR baseline): a panel holds rows of `16 · NB` contiguous weights, one per lowered column;
//! each non-zero activation is broadcast and multiplied with its panel row into accumulators
//! that stay in vector registers for the whole row. Entries are taken two at a time into two
//! sets of accumulators, so that consecutive multiply-adds do not wait on each other.

use super::Isa;

/// Accumulates the sparse row `(cols, vals)` times `panel` (rows of `16 * NB` floats) into
/// the first `16 * NB` floats of `acc` (often a slice of the output row itself), with the
/// code for `isa`. Panics if `acc` is shorter.
///
/// # Safety
/// Every `cols[i]` must index a whole row of `panel`: `(cols[i] + 1) * 16 * NB <= panel.len()`;
/// `cols` and `vals` have the same length; `isa` is supported by this CPU.
#[inline]
pub(crate) unsafe fn accumulate<const NB: usize>(
    isa: Isa,
    cols: &[u32],
    vals: &[f32],
    panel: &[f32],
    acc: &mut [f32],
) {
    let acc = &mut acc[..16 * NB];
    debug_assert_eq!(cols.len(), vals.len());
    debug_assert!(cols
        .iter()
        .all(|&c| (c as usize + 1) * 16 * NB <= panel.len()));
    match isa {
        // SAFETY: the caller guarantees the column bounds and that the CPU has the feature.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::accumulate_avx512::<NB>(cols, vals, panel, acc) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::accumulate_avx2::<NB>(cols, vals, panel, acc) },
        // SAFETY: as above.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { arm::accumulate_neon::<NB>(cols, vals, panel, acc) },
        _ => accumulate_portable::<NB>(cols, vals, panel, acc),
    }
}

/// Plain Rust, bounds-checked: the reference for the SIMD versions and the fallback.
pub(crate) fn accumulate_portable<const NB: usize>(
    cols: &[u32],
    vals: &[f32],
    panel: &[f32],
    acc: &mut [f32],
) {
    for (&c, &v) in cols.iter().zip(vals) {
        let row = &panel[c as usize * 16 * NB..][..16 * NB];
        for (a, w) in acc.iter_mut().zip(row) {
            *a += v * w;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Defines an x86 kernel for one vector width: `$lanes` floats per vector, `$per` vectors
    /// per 16-lane block.
    macro_rules! x86_kernel {
        ($name:ident, $feature:literal, $vec:ty, $lanes:literal, $zero:ident, $load:ident, $store:ident, $set1:ident, $fma:ident, $add:ident) => {
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn $name<const NB: usize>(
                cols: &[u32],
                vals: &[f32],
                panel: &[f32],
                acc: &mut [f32],
            ) {
                const PER: usize = 16 / $lanes;
                let width = 16 * NB;
                let base = panel.as_ptr();
                let out = acc.as_mut_ptr() as *mut f32;
                let mut a: [[$vec; PER]; NB] = [[$zero(); PER]; NB];
                let mut b: [[$vec; PER]; NB] = [[$zero(); PER]; NB];
                for j in 0..NB {
                    for q in 0..PER {
                        // SAFETY: the caller passes `acc` with 16 * NB floats.
                        a[j][q] = unsafe { $load(out.add(j * 16 + q * $lanes)) };
                    }
                }
                let pairs = cols.len() / 2;
                // Narrow blocks take consecutive entries into two sets of accumulators, so
                // that each multiply-add does not wait on the previous one; wide blocks have
                // enough independent accumulators in one set.
                let dual = NB < 8;
                for i in 0..pairs {
                    // SAFETY: i < pairs, so 2i + 1 < cols.len() == vals.len(); the caller
                    // guarantees that each column indexes a whole panel row.
                    unsafe {
                        let (c0, c1) = (
                            *cols.get_unchecked(2 * i) as usize,
                            *cols.get_unchecked(2 * i + 1) as usize,
                        );
                        let v0 = $set1(*vals.get_unchecked(2 * i));
                        let v1 = $set1(*vals.get_unchecked(2 * i + 1));
                        let (r0, r1) = (base.add(c0 * width), base.add(c1 * width));
                        for j in 0..NB {
                            for q in 0..PER {
                                let o = j * 16 + q * $lanes;
                                a[j][q] = $fma(v0, $load(r0.add(o)), a[j][q]);
                                if dual {
                                    b[j][q] = $fma(v1, $load(r1.add(o)), b[j][q]);
                                }
                            }
                        }
                        if !dual {
                            for j in 0..NB {
                                for q in 0..PER {
                                    let o = j * 16 + q * $lanes;
                                    a[j][q] = $fma(v1, $load(r1.add(o)), a[j][q]);
                                }
                            }
                        }
                    }
                }
                if cols.len() % 2 == 1 {
                    let last = cols.len() - 1;
                    // SAFETY: as above, for the last entry.
                    unsafe {
                        let v = $set1(vals[last]);
                        let r = base.add(cols[last] as usize * width);
                        for j in 0..NB {
                            for q in 0..PER {
                                a[j][q] = $fma(v, $load(r.add(j * 16 + q * $lanes)), a[j][q]);
                            }
                        }
                    }
                }
                for j in 0..NB {
                    for q in 0..PER {
                        // SAFETY: the caller passes `acc` with 16 * NB floats.
                        unsafe { $store(out.add(j * 16 + q * $lanes), $add(a[j][q], b[j][q])) };
                    }
                }
            }
        };
    }

    x86_kernel!(
        accumulate_avx512,
        "avx512f",
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps
    );
    x86_kernel!(
        accumulate_avx2,
        "avx2,fma",
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps
    );
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    #[target_feature(enable = "neon")]
    pub(super) unsafe fn accumulate_neon<const NB: usize>(
        cols: &[u32],
        vals: &[f32],
        panel: &[f32],
        acc: &mut [f32],
    ) {
        let width = 16 * NB;
        let out = acc.as_mut_ptr() as *mut f32;
        let mut a = [[vdupq_n_f32(0.0); 4]; NB];
        for j in 0..NB {
            for q in 0..4 {
                // SAFETY: the caller passes `acc` with 16 * NB floats.
                a[j][q] = unsafe { vld1q_f32(out.add(j * 16 + q * 4)) };
            }
        }
        for (&c, &v) in cols.iter().zip(vals) {
            // SAFETY: the caller guarantees that each column indexes a whole panel row.
            unsafe {
                let r = panel.as_ptr().add(c as usize * width);
                for j in 0..NB {
                    for q in 0..4 {
                        a[j][q] = vfmaq_n_f32(a[j][q], vld1q_f32(r.add(j * 16 + q * 4)), v);
                    }
                }
            }
        }
        for j in 0..NB {
            for q in 0..4 {
                // SAFETY: the caller passes `acc` with 16 * NB floats.
                unsafe { vst1q_f32(out.add(j * 16 + q * 4), a[j][q]) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{random_sparse, Rng};

    fn check<const NB: usize>(isa: Isa, n: usize) {
        let mut rng = Rng::new(n as u64);
        let rows = 37;
        let panel = random_sparse(rows * 16 * NB, 0.3, &mut rng);
        let cols: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % rows) as u32).collect();
        let vals = random_sparse(n, 0.0, &mut rng);
        let init: Vec<f32> = (0..16 * NB).map(|l| l as f32 * 0.01).collect();
        let (mut want, mut got) = (init.clone(), init);
        accumulate_portable::<NB>(&cols, &vals, &panel, &mut want);
        // SAFETY: every column is below `rows`, and `isa` comes from `Isa::supported`.
        unsafe { accumulate::<NB>(isa, &cols, &vals, &panel, &mut got) };
        for (w, g) in want.iter().zip(&got) {
            assert!(
                (w - g).abs() <= 1e-5 * (1.0 + w.abs()),
                "{isa} NB={NB} n={n}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn every_isa_matches_portable() {
        for isa in Isa::supported() {
            for n in [0, 1, 2, 3, 8, 33] {
                check::<1>(isa, n);
                check::<4>(isa, n);
                check::<8>(isa, n);
            }
        }
    }
}
