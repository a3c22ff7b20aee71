//! Matrix-vector products, the shape of a fully connected layer at batch 1: one row of A
//! times a matrix B that is read once. They are memory-bound, so the point is to stream B at
//! full bandwidth with wide vectors and enough independent accumulators.
//!
//! - [`Gemv::kn`]: B stored `[K][N]` (MatMul weights): `out[j] = sum_k a[k] * B[k][j]`, as
//!   multiply-adds of whole rows of B, four non-zero `a[k]` at a time; rows whose `a[k]` is
//!   zero (a ReLU'd activation) are not read at all.
//! - [`Gemv::nk`]: B stored `[N][K]` (Gemm with transB): `out[j] = dot(a, B[j])`, four
//!   columns at a time so that each vector of `a` is loaded once for four rows of B.
//!
//! The loops are written once in plain Rust and compiled per instruction set by
//! [`vectorized_fn!`], chosen once at run time by [`Isa`].

use super::multiversion::vectorized_fn;
use super::{prefetch_l2, Isa};

/// Both products compiled for one instruction set, chosen once.
#[derive(Clone, Copy)]
pub(crate) struct Gemv {
    kn: KnFn,
    nk: fn(&[f32], &[f32], usize, &mut [f32]),
}

/// The signature of [`Gemv::kn`].
type KnFn = fn(&[f32], usize, usize, &[f32], usize, &mut [f32]);

impl Gemv {
    /// The products compiled for `isa`, or for the baseline when this CPU lacks it.
    pub fn for_isa(isa: Isa) -> Self {
        Gemv {
            kn: vectorized_fn!(
                isa,
                kn,
                fn(
                    a: &[f32],
                    a_stride: usize,
                    k_len: usize,
                    b: &[f32],
                    b_stride: usize,
                    out: &mut [f32],
                )
            ),
            // Lanes of the accumulators: a vector of the widest set, which narrower ones
            // split.
            nk: vectorized_fn!(
                isa,
                nk::<16>,
                fn(a: &[f32], b: &[f32], b_stride: usize, out: &mut [f32])
            ),
        }
    }

    /// `out[j] = sum_k a[k * a_stride] * b[k * b_stride + j]` for `j < out.len()` and
    /// `k < k_len`, skipping the `k` whose `a` is zero (so `0 * inf` gives 0, not NaN, as in
    /// a sparse product).
    ///
    /// # Panics
    /// If `a` or `b` is too short for `k_len` rows, or `b_stride < out.len()` with
    /// `k_len > 1`.
    pub fn kn(
        &self,
        a: &[f32],
        a_stride: usize,
        k_len: usize,
        b: &[f32],
        b_stride: usize,
        out: &mut [f32],
    ) {
        let n = out.len();
        if k_len > 0 {
            let last = k_len - 1;
            assert!(
                last.checked_mul(a_stride).is_some_and(|i| i < a.len()),
                "gemv: A too short"
            );
            assert!(
                (k_len == 1 || b_stride >= n)
                    && last
                        .checked_mul(b_stride)
                        .and_then(|i| i.checked_add(n))
                        .is_some_and(|end| end <= b.len()),
                "gemv: B too short"
            );
        }
        (self.kn)(a, a_stride, k_len, b, b_stride, out);
    }

    /// `out[j] = sum_k a[k] * b[j * b_stride + k]` for `j < out.len()`, `k < a.len()`.
    ///
    /// # Panics
    /// If `b` is too short for `out.len()` rows of `a.len()` floats, or `b_stride < a.len()`.
    pub fn nk(&self, a: &[f32], b: &[f32], b_stride: usize, out: &mut [f32]) {
        let (k, n) = (a.len(), out.len());
        if n > 0 && k > 0 {
            assert!(
                (n == 1 || b_stride >= k)
                    && (n - 1)
                        .checked_mul(b_stride)
                        .and_then(|i| i.checked_add(k))
                        .is_some_and(|end| end <= b.len()),
                "gemv: B too short"
            );
        }
        (self.nk)(a, b, b_stride, out);
    }
}

/// Rows of B multiplied at once: one load and store of `out` per four rows read.
const ROWS: usize = 4;

/// How far ahead in B rows are prefetched, and at most how many cache lines of each (the
/// hardware prefetcher follows a long row by itself once it has started).
const PREFETCH_BYTES: usize = 4096;
const PREFETCH_LINES: usize = 8;

#[inline(always)]
fn kn(a: &[f32], a_stride: usize, k_len: usize, b: &[f32], b_stride: usize, out: &mut [f32]) {
    let n = out.len();
    out.fill(0.0);
    let row = |k: usize| &b[k * b_stride..k * b_stride + n];
    let mut pending = [(0usize, 0.0f32); ROWS];
    let mut count = 0;
    // Rows whose `a` is zero are skipped, which breaks the stride the hardware prefetcher
    // follows when B is not in cache: ask for the rows that will be read a few KB ahead.
    let ahead = (PREFETCH_BYTES / (4 * n.max(1))).clamp(1, 64);
    for k in 0..k_len {
        let next = k + ahead;
        if next < k_len && a[next * a_stride] != 0.0 {
            for line in row(next).chunks(16).take(PREFETCH_LINES) {
                prefetch_l2(line);
            }
        }
        let v = a[k * a_stride];
        if v == 0.0 {
            continue;
        }
        pending[count] = (k, v);
        count += 1;
        if count == ROWS {
            count = 0;
            let [(k0, v0), (k1, v1), (k2, v2), (k3, v3)] = pending;
            let rows = row(k0).iter().zip(row(k1)).zip(row(k2)).zip(row(k3));
            for (o, (((&x0, &x1), &x2), &x3)) in out.iter_mut().zip(rows) {
                *o += v0 * x0 + v1 * x1 + (v2 * x2 + v3 * x3);
            }
        }
    }
    for &(k, v) in &pending[..count] {
        for (o, &x) in out.iter_mut().zip(row(k)) {
            *o += v * x;
        }
    }
}

/// Four dot products at a time, each in `L` lanes (the vector width the loop is compiled
/// for), so that the lanes vectorise and the four are independent chains.
#[inline(always)]
fn nk<const L: usize>(a: &[f32], b: &[f32], b_stride: usize, out: &mut [f32]) {
    let k = a.len();
    let row = |j: usize| &b[j * b_stride..j * b_stride + k];
    let mut j = 0;
    while j + ROWS <= out.len() {
        let rows = [row(j), row(j + 1), row(j + 2), row(j + 3)];
        let mut acc = [[0.0f32; L]; ROWS];
        let chunks = a.len() / L * L;
        // Zipped fixed-size chunks: indexed by a stepped range, the loop compiled to scalar
        // multiply-adds on stack slots (perf annotate), 2.3x slower than ONNX Runtime.
        let (x, [r0, r1, r2, r3]) = (lanes::<L>(a, chunks), rows.map(|r| lanes::<L>(r, chunks)));
        for ((((x, y0), y1), y2), y3) in x.zip(r0).zip(r1).zip(r2).zip(r3) {
            for l in 0..L {
                acc[0][l] += x[l] * y0[l];
                acc[1][l] += x[l] * y1[l];
                acc[2][l] += x[l] * y2[l];
                acc[3][l] += x[l] * y3[l];
            }
        }
        for (r, (acc, o)) in rows.iter().zip(acc.iter().zip(&mut out[j..j + ROWS])) {
            *o = acc.iter().sum::<f32>() + tail_dot(a, r, chunks);
        }
        j += ROWS;
    }
    for (jj, o) in out.iter_mut().enumerate().skip(j) {
        *o = dot::<L>(a, row(jj));
    }
}

/// The first `len` floats of `r` (a multiple of `L`) as arrays of `L`, so that the loops
/// over their lanes are unrolled.
#[inline(always)]
fn lanes<const L: usize>(r: &[f32], len: usize) -> impl Iterator<Item = &[f32; L]> {
    r[..len]
        .chunks_exact(L)
        .map(|chunk| chunk.try_into().expect("chunks of L"))
}

/// `dot(a, r)` in `L` lanes.
#[inline(always)]
fn dot<const L: usize>(a: &[f32], r: &[f32]) -> f32 {
    let mut acc = [0.0f32; L];
    let chunks = a.len() / L * L;
    for i in (0..chunks).step_by(L) {
        for l in 0..L {
            acc[l] += a[i + l] * r[i + l];
        }
    }
    acc.iter().sum::<f32>() + tail_dot(a, r, chunks)
}

/// The part of `dot(a, r)` past the whole vectors, from `from` on.
#[inline(always)]
fn tail_dot(a: &[f32], r: &[f32], from: usize) -> f32 {
    a[from..].iter().zip(&r[from..]).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Rng;

    fn close(got: &[f32], want: &[f32], what: &str) {
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                "{what}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn every_isa_matches_the_definition() {
        let mut rng = Rng::new(3);
        for isa in Isa::supported() {
            for (k, n) in [
                (0, 3),
                (1, 1),
                (5, 7),
                (37, 64),
                (64, 33),
                (300, 17),
                (9, 0),
            ] {
                let a_stride = 1 + (rng.next_u64() % 3) as usize;
                // A with some zeros, so that the skipped rows are exercised.
                let a: Vec<f32> = (0..k * a_stride + 2)
                    .map(|_| {
                        if rng.next_u64().is_multiple_of(3) {
                            0.0
                        } else {
                            rng.nonzero_value()
                        }
                    })
                    .collect();
                let b_stride = n + (rng.next_u64() % 4) as usize;
                let b: Vec<f32> = (0..k * b_stride + n).map(|_| rng.nonzero_value()).collect();
                let want: Vec<f32> = (0..n)
                    .map(|j| {
                        (0..k)
                            .map(|kk| a[kk * a_stride] * b[kk * b_stride + j])
                            .sum()
                    })
                    .collect();
                let mut got = vec![f32::NAN; n];
                Gemv::for_isa(isa).kn(&a, a_stride, k, &b, b_stride, &mut got);
                close(&got, &want, &format!("kn {isa} k {k} n {n}"));

                // B as [N][K]: the same numbers transposed.
                let a_dense: Vec<f32> = (0..k).map(|kk| a[kk * a_stride]).collect();
                let bt_stride = k + (rng.next_u64() % 4) as usize;
                let mut bt = vec![0.0; n * bt_stride + k];
                for j in 0..n {
                    for kk in 0..k {
                        bt[j * bt_stride + kk] = b[kk * b_stride + j];
                    }
                }
                let mut got = vec![f32::NAN; n];
                Gemv::for_isa(isa).nk(&a_dense, &bt, bt_stride, &mut got);
                close(&got, &want, &format!("nk {isa} k {k} n {n}"));
            }
        }
    }

    #[test]
    fn short_operands_panic() {
        let mut out = [0.0; 4];
        let gemv = Gemv::for_isa(Isa::Portable);
        assert!(
            std::panic::catch_unwind(move || gemv.kn(&[1.0; 3], 1, 3, &[0.0; 11], 4, &mut out))
                .is_err()
        );
        let mut out = [0.0; 2];
        assert!(
            std::panic::catch_unwind(move || gemv.nk(&[1.0; 3], &[0.0; 5], 3, &mut out)).is_err()
        );
    }
}
