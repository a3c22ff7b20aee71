//! `out[r] += Σ v · panel[c]` over the entries `(c, v)` of many sparse rows `r`, for one
//! block of `16 · NB` output channels and one block of k.
//!
//! This is the inner loop of the sparse-activation methods (im2CSR, im2CSOA, the lowered
//! CSR baseline). A panel holds rows of `16 · NB` contiguous weights, one per lowered column.
//! Each row's entries are walked while their column is below a limit: callers walk all the
//! rows of a tile once per block of k, so that the panel rows of that block stay in L1
//! while every row reuses them, and each row's cursor remembers where the next block
//! starts. (A caller that knows where each row's block ends, as im2CSOA does, passes no
//! limit: a walk whose length is known from the start is not held up by comparing columns
//! as they arrive.) A row's accumulators stay in vector registers for all its entries of
//! the block.

use super::Isa;

/// The column indices and values of sparse rows, side by side.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entries<'a> {
    cols: &'a [u32],
    vals: &'a [f32],
}

impl<'a> Entries<'a> {
    /// Panics if the two lengths differ (a programming error).
    pub fn new(cols: &'a [u32], vals: &'a [f32]) -> Self {
        assert_eq!(cols.len(), vals.len(), "one value per column");
        Entries { cols, vals }
    }
}

/// The entries of one sparse row still to be multiplied: positions `next..end` of the
/// shared column and value arrays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RowCursor {
    pub next: usize,
    pub end: usize,
}

/// The rows a kernel walks: where each row's pending entries lie, and what is kept of where
/// its walk stopped.
trait Rows {
    fn len(&self) -> usize;
    fn cursor(&self, r: usize) -> RowCursor;
    /// Row `r`'s walk stopped before entry `next`.
    fn stop(&mut self, r: usize, next: usize);
}

/// Cursors that advance past what each walk multiplied, for callers that walk a row's
/// entries in several calls, one block of k at a time.
impl Rows for &mut [RowCursor] {
    fn len(&self) -> usize {
        <[RowCursor]>::len(self)
    }
    fn cursor(&self, r: usize) -> RowCursor {
        self[r]
    }
    fn stop(&mut self, r: usize, next: usize) {
        self[r].next = next;
    }
}

/// Rows walked whole, each over a range fixed in advance: nothing to keep.
struct Ranges<'a>(&'a [RowCursor]);

impl Rows for Ranges<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn cursor(&self, r: usize) -> RowCursor {
        self.0[r]
    }
    fn stop(&mut self, _: usize, _: usize) {}
}

/// The kernel of one instruction set for panels `16 * NB` floats wide, chosen once.
#[derive(Clone, Copy)]
pub(crate) struct SparseRowPanel<const NB: usize> {
    rows: RowsFn,
    ranges: RangesFn,
}

/// The signatures of [`SparseRowPanel::accumulate_rows`] and
/// [`SparseRowPanel::accumulate_ranges`].
type RowsFn = fn(Entries, &mut [RowCursor], u32, &[f32], &mut [f32], usize);
type RangesFn = fn(Entries, &[RowCursor], &[f32], &mut [f32], usize);

impl<const NB: usize> SparseRowPanel<NB> {
    /// The kernel of `isa`, or the portable one when this CPU lacks it.
    pub fn for_isa(isa: Isa) -> Self {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if isa.is_supported() => Self::of::<x86::Avx512>(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if isa.is_supported() => Self::of::<x86::Avx2>(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon if isa.is_supported() => Self::of::<arm::Neon>(),
            _ => Self::of::<Portable>(),
        }
    }

    /// Both walks of kernel `K`.
    fn of<K: Kernel>() -> Self {
        SparseRowPanel {
            rows: walk_rows::<NB, K>,
            ranges: walk_ranges::<NB, K>,
        }
    }

    /// For each row `r`, adds `v * panel[c]` over its pending entries whose column is below
    /// `limit` to the `16 * NB` floats at `out[r * stride..]`, and advances its cursor past
    /// them. Columns must increase along a row.
    ///
    /// Panics if a cursor range, the output extent or a column falls outside the arrays
    /// (columns are checked one by one as they are read: a compare on a loaded value costs
    /// next to nothing beside the 16 * NB multiply-adds each one feeds).
    pub fn accumulate_rows(
        &self,
        entries: Entries,
        cursors: &mut [RowCursor],
        limit: u32,
        panel: &[f32],
        out: &mut [f32],
        stride: usize,
    ) {
        (self.rows)(entries, cursors, limit, panel, out, stride)
    }

    /// [`accumulate_rows`](Self::accumulate_rows) over every entry of each row's range,
    /// which stays as it is: for a caller that knows where each row's walk ends and walks
    /// the same ranges again for the next block of output channels.
    pub fn accumulate_ranges(
        &self,
        entries: Entries,
        ranges: &[RowCursor],
        panel: &[f32],
        out: &mut [f32],
        stride: usize,
    ) {
        (self.ranges)(entries, ranges, panel, out, stride)
    }
}

/// One instruction set's kernel, over either kind of [`Rows`].
trait Kernel {
    /// # Safety
    /// The CPU must have the instruction set, `cols.len() == vals.len()`, and row `r`'s
    /// `16 * NB` outputs at `r * stride` must lie in `out`. Cursors and columns are checked
    /// by the kernel, as they are read.
    unsafe fn walk<const NB: usize, R: Rows>(
        cols: &[u32],
        vals: &[f32],
        rows: R,
        limit: u32,
        panel: &[f32],
        out: &mut [f32],
        stride: usize,
    );
}

/// [`SparseRowPanel::accumulate_rows`] with kernel `K`.
fn walk_rows<const NB: usize, K: Kernel>(
    entries: Entries,
    cursors: &mut [RowCursor],
    limit: u32,
    panel: &[f32],
    out: &mut [f32],
    stride: usize,
) {
    accumulate::<NB, K, _>(entries, cursors, limit, panel, out, stride);
}

/// [`SparseRowPanel::accumulate_ranges`] with kernel `K`.
fn walk_ranges<const NB: usize, K: Kernel>(
    entries: Entries,
    ranges: &[RowCursor],
    panel: &[f32],
    out: &mut [f32],
    stride: usize,
) {
    accumulate::<NB, K, _>(entries, Ranges(ranges), u32::MAX, panel, out, stride);
}

/// Checks the output extent and runs kernel `K`.
fn accumulate<const NB: usize, K: Kernel, R: Rows>(
    entries: Entries,
    rows: R,
    limit: u32,
    panel: &[f32],
    out: &mut [f32],
    stride: usize,
) {
    let Some(last) = rows.len().checked_sub(1) else {
        return;
    };
    let Entries { cols, vals } = entries;
    assert!(stride >= 16 * NB && last * stride + 16 * NB <= out.len());
    // SAFETY: only `for_isa` names a kernel `K`, after finding its instruction set on this
    // CPU; the two lengths (in `Entries::new`) and the output extent are checked above.
    unsafe { K::walk::<NB, R>(cols, vals, rows, limit, panel, out, stride) }
}

/// Where a column read from a sparse row does not index a row of the panel (the x86
/// kernels read through raw pointers; the others index slices, which check for themselves).
#[cfg(target_arch = "x86_64")]
#[cold]
#[inline(never)]
fn column_outside_panel(col: usize, rows: usize) -> ! {
    panic!("sparse column {col} is outside a panel of {rows} rows")
}

/// Panics unless a row's cursor lies within `entries` entries. Every kernel checks each
/// row's as it starts the row: the x86 kernels then read through raw pointers.
#[inline(always)]
fn check_cursor(cursor: RowCursor, entries: usize) {
    #[cold]
    #[inline(never)]
    fn outside(cursor: RowCursor, entries: usize) -> ! {
        panic!("row cursor {cursor:?} is outside {entries} entries")
    }
    if cursor.next > cursor.end || cursor.end > entries {
        outside(cursor, entries)
    }
}

/// Plain Rust, bounds-checked: the reference for the SIMD versions and the fallback.
struct Portable;

impl Kernel for Portable {
    unsafe fn walk<const NB: usize, R: Rows>(
        cols: &[u32],
        vals: &[f32],
        rows: R,
        limit: u32,
        panel: &[f32],
        out: &mut [f32],
        stride: usize,
    ) {
        rows_portable::<NB, R>(cols, vals, rows, limit, panel, out, stride);
    }
}

/// [`Portable`]'s walk, a safe fn: the tests' reference.
fn rows_portable<const NB: usize, R: Rows>(
    cols: &[u32],
    vals: &[f32],
    mut rows: R,
    limit: u32,
    panel: &[f32],
    out: &mut [f32],
    stride: usize,
) {
    for r in 0..rows.len() {
        let cursor = rows.cursor(r);
        check_cursor(cursor, cols.len());
        let RowCursor { mut next, end } = cursor;
        let acc = &mut out[r * stride..][..16 * NB];
        while next < end && cols[next] < limit {
            let (c, v) = (cols[next] as usize, vals[next]);
            for (a, w) in acc.iter_mut().zip(&panel[c * 16 * NB..][..16 * NB]) {
                *a += v * w;
            }
            next += 1;
        }
        rows.stop(r, next);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Kernel, RowCursor, Rows};
    use std::arch::x86_64::*;

    /// Defines the x86 kernel `$kernel` for one vector width: `$lanes` floats per vector.
    macro_rules! x86_rows_kernel {
        ($kernel:ident, $feature:literal, $vec:ty, $lanes:literal, $zero:ident, $load:ident, $store:ident, $set1:ident, $fma:ident, $add:ident) => {
            #[doc = concat!("The kernel for ", $feature, ".")]
            pub(super) struct $kernel;

            impl Kernel for $kernel {
                #[target_feature(enable = $feature)]
                unsafe fn walk<const NB: usize, R: Rows>(
                    cols: &[u32],
                    vals: &[f32],
                    mut rows: R,
                    limit: u32,
                    panel: &[f32],
                    out: &mut [f32],
                    stride: usize,
                ) {
                    const PER: usize = 16 / $lanes;
                    // Narrow blocks take consecutive entries into two sets of accumulators, so
                    // that a multiply-add does not wait on the previous one; blocks of 8+
                    // vectors have enough independent accumulators in one set.
                    let dual = NB * PER < 8;
                    let width = 16 * NB;
                    let panel_rows = panel.len() / width;
                    let (base, cp, vp) = (panel.as_ptr(), cols.as_ptr(), vals.as_ptr());
                    for r in 0..rows.len() {
                        let cursor = rows.cursor(r);
                        super::check_cursor(cursor, cols.len());
                        let RowCursor { next: mut i, end } = cursor;
                        // The entries of a row a little ahead are scattered in memory: ask for
                        // them now so that they arrive while this row is multiplied (a prefetch
                        // never faults, wherever it points).
                        if r + 2 < rows.len() {
                            let ahead = rows.cursor(r + 2).next;
                            _mm_prefetch::<_MM_HINT_T0>(cp.wrapping_add(ahead).cast());
                            _mm_prefetch::<_MM_HINT_T0>(vp.wrapping_add(ahead).cast());
                        }
                        // SAFETY: the caller checked that row r's `16 * NB` outputs lie in `out`.
                        let dst = unsafe { out.as_mut_ptr().add(r * stride) };
                        let mut a: [[$vec; PER]; NB] = [[$zero(); PER]; NB];
                        let mut b: [[$vec; PER]; NB] = [[$zero(); PER]; NB];
                        for j in 0..NB {
                            for q in 0..PER {
                                // SAFETY: within the row's outputs, as above.
                                a[j][q] = unsafe { $load(dst.add(j * 16 + q * $lanes)) };
                            }
                        }
                        // SAFETY (loop reads): i + 1 < end <= cols.len() == vals.len() (checked
                        // as the row starts).
                        while i + 1 < end && unsafe { *cp.add(i + 1) } < limit {
                            // SAFETY: as above.
                            let (c0, c1) =
                                unsafe { (*cp.add(i) as usize, *cp.add(i + 1) as usize) };
                            if c0.max(c1) >= panel_rows {
                                super::column_outside_panel(c0.max(c1), panel_rows);
                            }
                            // SAFETY: both columns index whole panel rows (checked just above).
                            unsafe {
                                let (r0, r1) = (base.add(c0 * width), base.add(c1 * width));
                                let (v0, v1) = ($set1(*vp.add(i)), $set1(*vp.add(i + 1)));
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
                            i += 2;
                        }
                        // SAFETY: i < end as above.
                        if i < end && unsafe { *cp.add(i) } < limit {
                            // SAFETY: as above.
                            let c0 = unsafe { *cp.add(i) as usize };
                            if c0 >= panel_rows {
                                super::column_outside_panel(c0, panel_rows);
                            }
                            // SAFETY: the column indexes a whole panel row (checked just above).
                            unsafe {
                                let (r0, v0) = (base.add(c0 * width), $set1(*vp.add(i)));
                                for j in 0..NB {
                                    for q in 0..PER {
                                        a[j][q] =
                                            $fma(v0, $load(r0.add(j * 16 + q * $lanes)), a[j][q]);
                                    }
                                }
                            }
                            i += 1;
                        }
                        for j in 0..NB {
                            for q in 0..PER {
                                let sum = if dual {
                                    $add(a[j][q], b[j][q])
                                } else {
                                    a[j][q]
                                };
                                // SAFETY: within the row's outputs, as above.
                                unsafe { $store(dst.add(j * 16 + q * $lanes), sum) };
                            }
                        }
                        rows.stop(r, i);
                    }
                }
            }
        };
    }

    x86_rows_kernel!(
        Avx512,
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
    x86_rows_kernel!(
        Avx2,
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
    use super::{Kernel, RowCursor, Rows};
    use std::arch::aarch64::*;

    /// The kernel for NEON.
    pub(super) struct Neon;

    impl Kernel for Neon {
        // The accumulators are indexed in straight loops over constant bounds, as in the x86
        // kernels, so that they stay in registers.
        #[allow(clippy::needless_range_loop)]
        #[target_feature(enable = "neon")]
        unsafe fn walk<const NB: usize, R: Rows>(
            cols: &[u32],
            vals: &[f32],
            mut rows: R,
            limit: u32,
            panel: &[f32],
            out: &mut [f32],
            stride: usize,
        ) {
            let width = 16 * NB;
            for r in 0..rows.len() {
                let cursor = rows.cursor(r);
                super::check_cursor(cursor, cols.len());
                let RowCursor { mut next, end } = cursor;
                // SAFETY: the caller checked that row r's `16 * NB` outputs lie in `out`.
                let dst = unsafe { out.as_mut_ptr().add(r * stride) };
                let mut a = [[vdupq_n_f32(0.0); 4]; NB];
                for j in 0..NB {
                    for q in 0..4 {
                        // SAFETY: within the row's outputs.
                        a[j][q] = unsafe { vld1q_f32(dst.add(j * 16 + q * 4)) };
                    }
                }
                while next < end && cols[next] < limit {
                    let (c, v) = (cols[next] as usize, vals[next]);
                    let row = &panel[c * width..][..width];
                    // SAFETY: `row` holds `width` = 16 * NB floats.
                    unsafe {
                        let row = row.as_ptr();
                        for j in 0..NB {
                            for q in 0..4 {
                                a[j][q] =
                                    vfmaq_n_f32(a[j][q], vld1q_f32(row.add(j * 16 + q * 4)), v);
                            }
                        }
                    }
                    next += 1;
                }
                for j in 0..NB {
                    for q in 0..4 {
                        // SAFETY: within the row's outputs.
                        unsafe { vst1q_f32(dst.add(j * 16 + q * 4), a[j][q]) };
                    }
                }
                rows.stop(r, next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{random_sparse, Rng};

    /// Random rows with increasing columns, walked in two blocks of k; every ISA must match
    /// the portable kernel and leave the same cursors. Then the same rows walked whole once
    /// more, as fixed ranges: the sums must match again.
    fn check<const NB: usize>(isa: Isa, seed: u64) {
        let mut rng = Rng::new(seed);
        let panel_rows = 41;
        let panel = random_sparse(panel_rows * 16 * NB, 0.3, &mut rng);
        let (mut cols, mut cursors) = (Vec::new(), Vec::new());
        for _ in 0..7 {
            let start = cols.len();
            cols.extend((0..panel_rows as u32).filter(|_| rng.unit() < 0.4));
            cursors.push(RowCursor {
                next: start,
                end: cols.len(),
            });
        }
        let vals = random_sparse(cols.len(), 0.0, &mut rng);
        let stride = 16 * NB + 5;
        let init: Vec<f32> = (0..7 * stride).map(|l| l as f32 * 0.01).collect();
        let (mut want, mut got) = (init.clone(), init);
        let (mut want_cursors, mut got_cursors) = (cursors.clone(), cursors.clone());
        for limit in [17, u32::MAX] {
            rows_portable::<NB, _>(
                &cols,
                &vals,
                &mut want_cursors[..],
                limit,
                &panel,
                &mut want,
                stride,
            );
            SparseRowPanel::<NB>::for_isa(isa).accumulate_rows(
                Entries::new(&cols, &vals),
                &mut got_cursors,
                limit,
                &panel,
                &mut got,
                stride,
            );
            assert_eq!(want_cursors, got_cursors, "{isa} NB={NB} limit {limit}");
        }
        assert!(got_cursors.iter().all(|c| c.next == c.end));
        rows_portable::<NB, _>(
            &cols,
            &vals,
            &mut cursors.clone()[..],
            u32::MAX,
            &panel,
            &mut want,
            stride,
        );
        SparseRowPanel::<NB>::for_isa(isa).accumulate_ranges(
            Entries::new(&cols, &vals),
            &cursors,
            &panel,
            &mut got,
            stride,
        );
        for (w, g) in want.iter().zip(&got) {
            assert!(
                (w - g).abs() <= 1e-5 * (1.0 + w.abs()),
                "{isa} NB={NB}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn every_isa_matches_portable() {
        for isa in Isa::supported() {
            for seed in 0..20 {
                check::<1>(isa, seed);
                check::<4>(isa, seed);
                check::<8>(isa, seed);
            }
        }
    }

    #[test]
    fn short_outputs_and_cursors_and_columns_outside_the_arrays_are_refused() {
        for isa in Isa::supported() {
            let short = std::panic::catch_unwind(|| {
                let mut cursors = [RowCursor::default(); 2];
                let mut out = vec![0.0; 16 + 15];
                SparseRowPanel::<1>::for_isa(isa).accumulate_rows(
                    Entries::new(&[], &[]),
                    &mut cursors,
                    0,
                    &[],
                    &mut out,
                    16,
                );
            });
            assert!(short.is_err(), "{isa}: short output accepted");
            // A lone entry and a pair, each reaching one row past a 3-row panel.
            for cols in [&[3u32][..], &[0, 3]] {
                let outside = std::panic::catch_unwind(|| {
                    let vals = vec![1.0; cols.len()];
                    let mut cursors = [RowCursor {
                        next: 0,
                        end: cols.len(),
                    }];
                    let mut out = vec![0.0; 16];
                    let panel = vec![1.0; 3 * 16];
                    SparseRowPanel::<1>::for_isa(isa).accumulate_rows(
                        Entries::new(cols, &vals),
                        &mut cursors,
                        u32::MAX,
                        &panel,
                        &mut out,
                        16,
                    );
                });
                assert!(outside.is_err(), "{isa}: column outside the panel accepted");
            }
            // A second row whose cursor ends past the entries, or starts after its end.
            for bad in [RowCursor { next: 0, end: 3 }, RowCursor { next: 2, end: 1 }] {
                let outside = std::panic::catch_unwind(|| {
                    let (cols, vals) = ([0u32, 1], [1.0f32; 2]);
                    let mut cursors = [RowCursor { next: 0, end: 2 }, bad];
                    let mut out = vec![0.0; 32];
                    let panel = vec![1.0; 3 * 16];
                    SparseRowPanel::<1>::for_isa(isa).accumulate_rows(
                        Entries::new(&cols, &vals),
                        &mut cursors,
                        u32::MAX,
                        &panel,
                        &mut out,
                        16,
                    );
                });
                assert!(outside.is_err(), "{isa}: cursor {bad:?} accepted");
            }
        }
    }
}
