//! Compaction of the non-zeros of a dense run of values, without branching on them.

/// Writes `(first + i, src[i])` for each non-zero `src[i]` at positions `at, at + 1, ...` of
/// `idx`/`val` and returns the position after the last one written.
///
/// Every value is written, and the position advances only past non-zeros, so the loop has no
/// data-dependent branch: at 50 % zeros a branching loop mispredicts every other value. A
/// zero's write lands where the next non-zero (or the next call) writes, or past the end of
/// the buffers, where it is dropped.
#[inline]
pub(crate) fn compact_nonzeros(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_non_zeros_in_order_and_drops_overflowing_zero_writes() {
        let src = [0.0, 1.5, 0.0, 0.0, -2.0, 3.0, 0.0];
        let (mut idx, mut val) = ([9u32; 3], [9.0f32; 3]);
        let end = compact_nonzeros(&src, 10, &mut idx, &mut val, 0);
        assert_eq!((end, idx, val), (3, [11, 14, 15], [1.5, -2.0, 3.0]));
        // Continuing at a position: nothing before it is touched.
        let (mut idx, mut val) = ([7u32; 4], [7.0f32; 4]);
        assert_eq!(compact_nonzeros(&[0.0, 4.0], 0, &mut idx, &mut val, 3), 4);
        assert_eq!((idx, val), ([7, 7, 7, 1], [7.0, 7.0, 7.0, 4.0]));
    }
}
