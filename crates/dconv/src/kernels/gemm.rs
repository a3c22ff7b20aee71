//! The dense matrix product of the conventional method, through the `gemm` crate (its own
//! microkernels, with their own runtime SIMD dispatch), behind a safe, checked interface.

/// `dst = lhs x rhs` for row-major matrices stored with row strides inside slices: `lhs` is
/// `m x k` (row `i` at `i * lhs_stride`), `rhs` is `k x n` (row stride `rhs_stride`), `dst`
/// is `m x n` (row stride `dst_stride`). Runs on `threads` threads of the current rayon pool.
///
/// Panics if a matrix does not fit in its slice, or the destination's rows overlap.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_f32(
    mnk: (usize, usize, usize),
    dst: &mut [f32],
    dst_stride: usize,
    lhs: &[f32],
    lhs_stride: usize,
    rhs: &[f32],
    rhs_stride: usize,
    threads: usize,
) {
    let operands = ((lhs, (lhs_stride, 1)), (rhs, (rhs_stride, 1)));
    product(mnk, false, (dst, dst_stride), operands, threads);
}

/// `dst += lhs x rhs`, as [`gemm_f32`] otherwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_f32_add(
    mnk: (usize, usize, usize),
    dst: &mut [f32],
    dst_stride: usize,
    lhs: &[f32],
    lhs_stride: usize,
    rhs: &[f32],
    rhs_stride: usize,
    threads: usize,
) {
    let operands = ((lhs, (lhs_stride, 1)), (rhs, (rhs_stride, 1)));
    product(mnk, true, (dst, dst_stride), operands, threads);
}

/// `dst = lhs x rhs` with any row and column strides of the operands (`(row, col)` pairs):
/// a transposed `lhs` or `rhs` is the same matrix with its strides swapped, so that a B
/// stored `[N][K]` is multiplied without copying it. `dst` is row-major with row stride
/// `dst_stride`. Runs on `threads` threads of the current rayon pool.
///
/// Panics if a matrix does not fit in its slice, or the destination's rows overlap.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_f32_strided(
    mnk: (usize, usize, usize),
    dst: &mut [f32],
    dst_stride: usize,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    threads: usize,
) {
    let operands = ((lhs, lhs_strides), (rhs, rhs_strides));
    product(mnk, false, (dst, dst_stride), operands, threads);
}

/// An operand: its slice and its (row, column) strides.
type Operand<'a> = (&'a [f32], (usize, usize));

/// `dst = lhs x rhs`, plus the old `dst` when `add`: the checks, then the `gemm` crate.
fn product(
    (m, n, k): (usize, usize, usize),
    add: bool,
    (dst, dst_stride): (&mut [f32], usize),
    ((lhs, (lhs_rs, lhs_cs)), (rhs, (rhs_rs, rhs_cs))): (Operand, Operand),
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The last element (rows - 1, cols - 1) lies inside the slice.
    let fits = |len: usize, rows: usize, cols: usize, rs: usize, cs: usize| {
        (rows - 1)
            .checked_mul(rs)
            .zip((cols - 1).checked_mul(cs))
            .and_then(|(r, c)| r.checked_add(c))
            .is_some_and(|last| last < len)
    };
    assert!(
        dst_stride >= n && fits(dst.len(), m, n, dst_stride, 1),
        "gemm: destination too small"
    );
    if k == 0 {
        if !add {
            for row in dst.chunks_mut(dst_stride).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    assert!(
        fits(lhs.len(), m, k, lhs_rs, lhs_cs),
        "gemm: left matrix too small"
    );
    assert!(
        fits(rhs.len(), k, n, rhs_rs, rhs_cs),
        "gemm: right matrix too small"
    );
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every element gemm touches, (i, j) at
    // i * row_stride + j * col_stride, inside its slice; the destination's rows do not
    // overlap (dst_stride >= n), and `dst` is borrowed mutably and so disjoint from `lhs` and
    // `rhs`; the operands are only read. With `read_dst` false, dst is only written (alpha is
    // ignored); with it, dst = 1 * dst + 1 * lhs x rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_stride as isize,
            add,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if add { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiplies_strided_matrices_and_refuses_short_ones() {
        // lhs 2x3 with stride 4, rhs 3x2 with stride 2, dst 2x2 with stride 3.
        let lhs = [1.0, 2.0, 3.0, 99.0, 4.0, 5.0, 6.0];
        let rhs = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let mut dst = [0.0; 5];
        gemm_f32((2, 2, 3), &mut dst, 3, &lhs, 4, &rhs, 2, 1);
        assert_eq!(dst, [4.0, 5.0, 0.0, 10.0, 11.0]);
        gemm_f32_add((2, 2, 3), &mut dst, 3, &lhs, 4, &rhs, 2, 1);
        assert_eq!(dst, [8.0, 10.0, 0.0, 20.0, 22.0]);
        assert!(std::panic::catch_unwind(|| gemm_f32(
            (2, 2, 3),
            &mut [0.0; 4],
            3,
            &lhs,
            4,
            &rhs,
            2,
            1
        ))
        .is_err());
        assert!(std::panic::catch_unwind(|| gemm_f32(
            (2, 2, 3),
            &mut [0.0; 5],
            3,
            &lhs[..6],
            4,
            &rhs,
            2,
            1
        ))
        .is_err());
    }

    #[test]
    fn strided_operands_are_transposes() {
        // lhs 2x3 stored transposed (3x2, row stride 2), rhs 3x2 stored transposed (2x3).
        let lhs_t = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
        let rhs_t = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0];
        let mut dst = [0.0; 5];
        gemm_f32_strided((2, 2, 3), &mut dst, 3, &lhs_t, (1, 2), &rhs_t, (1, 3), 1);
        assert_eq!(dst, [4.0, 5.0, 0.0, 10.0, 11.0]);
        // k = 0 writes zeros.
        let mut dst = [7.0; 4];
        gemm_f32_strided((2, 2, 0), &mut dst, 2, &[], (0, 1), &[], (2, 1), 1);
        assert_eq!(dst, [0.0; 4]);
        assert!(std::panic::catch_unwind(|| gemm_f32_strided(
            (2, 2, 3),
            &mut [0.0; 5],
            3,
            &lhs_t[..5],
            (1, 2),
            &rhs_t,
            (1, 3),
            1
        ))
        .is_err());
    }
}
