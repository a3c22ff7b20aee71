//! Where a convolution reads: the input pixel under each kernel tap of each output pixel,
//! said once for every method.
//!
//! Along an axis, tap `k` of output `o` lies at `o * stride + k * dilation` in the padded
//! input, which is input coordinate `that - before` (before: the top or left padding) when
//! it falls inside the input, and padding otherwise.

use super::ConvSpec;
use std::ops::Range;

impl ConvSpec {
    /// The input row that kernel row `r` of output row `oy` reads; None in the padding.
    #[inline(always)]
    pub(crate) fn input_row(&self, oy: usize, r: usize) -> Option<usize> {
        self.unpadded_row(oy * self.stride[0] + r * self.dilation[0])
    }

    /// The input column that kernel column `s` of output column `ox` reads; None in the
    /// padding.
    #[inline(always)]
    pub(crate) fn input_col(&self, ox: usize, s: usize) -> Option<usize> {
        self.padded_col(ox, s)
            .checked_sub(self.padding.left)
            .filter(|&ix| ix < self.width)
    }

    /// The input row at row `y` of the padded input; None in the padding.
    #[inline(always)]
    pub(crate) fn unpadded_row(&self, y: usize) -> Option<usize> {
        y.checked_sub(self.padding.top)
            .filter(|&iy| iy < self.height)
    }

    /// The column of the padded input that kernel column `s` of output column `ox` reads.
    #[inline(always)]
    pub(crate) fn padded_col(&self, ox: usize, s: usize) -> usize {
        ox * self.stride[1] + s * self.dilation[1]
    }

    /// Of the padded columns `first + i * step`, `i` in `0..count`, the `i` whose column lies
    /// inside the input: one range, since the input is one, so that a caller copies or skips
    /// whole runs instead of testing each column.
    #[inline]
    pub(crate) fn cols_inside(&self, first: usize, step: usize, count: usize) -> Range<usize> {
        let left = self.padding.left;
        let inside = |end: usize| end.saturating_sub(first).div_ceil(step).min(count);
        inside(left)..inside(left + self.width)
    }

    /// Kernel row `r` as seen on a grid of every `stride`-th padded row: `(phase, shift)`
    /// such that output row `oy` reads padded row `(oy + shift) * stride + phase`.
    #[inline]
    pub(crate) fn row_phase(&self, r: usize) -> (usize, usize) {
        let offset = r * self.dilation[0];
        (offset % self.stride[0], offset / self.stride[0])
    }

    /// [`row_phase`](Self::row_phase) for kernel column `s`.
    #[inline]
    pub(crate) fn col_phase(&self, s: usize) -> (usize, usize) {
        let offset = s * self.dilation[1];
        (offset % self.stride[1], offset / self.stride[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The input coordinate from the definition, in signed arithmetic.
    fn by_formula(
        o: usize,
        k: usize,
        [stride, dilation, before, size]: [usize; 4],
    ) -> Option<usize> {
        let at = (o * stride + k * dilation) as isize - before as isize;
        (0..size as isize).contains(&at).then_some(at as usize)
    }

    #[test]
    fn taps_read_where_the_definition_says() {
        let spec = ConvSpec::new(2, 7, 9, 3, [3, 4])
            .with_stride([2, 3])
            .with_dilation([3, 2])
            .with_padding([4, 5, 1, 2]);
        spec.validate().unwrap();
        let rows = [
            spec.stride[0],
            spec.dilation[0],
            spec.padding.top,
            spec.height,
        ];
        let cols = [
            spec.stride[1],
            spec.dilation[1],
            spec.padding.left,
            spec.width,
        ];
        let [oh, ow] = spec.output_size();
        for r in 0..spec.kernel[0] {
            let (phase, shift) = spec.row_phase(r);
            for oy in 0..oh {
                assert_eq!(spec.input_row(oy, r), by_formula(oy, r, rows));
                let y = (oy + shift) * spec.stride[0] + phase;
                assert_eq!(spec.unpadded_row(y), by_formula(oy, r, rows));
            }
        }
        for s in 0..spec.kernel[1] {
            let (phase, shift) = spec.col_phase(s);
            for ox in 0..ow {
                assert_eq!(spec.input_col(ox, s), by_formula(ox, s, cols));
                assert_eq!(
                    (ox + shift) * spec.stride[1] + phase,
                    spec.padded_col(ox, s)
                );
            }
        }
        // Every column range a caller asks for: kernel columns, and the phase planes'.
        for (first, step) in (0..8).flat_map(|first| (1..4).map(move |step| (first, step))) {
            for count in 0..12 {
                let inside = spec.cols_inside(first, step, count);
                for i in 0..count {
                    let x = (first + i * step) as isize - spec.padding.left as isize;
                    let expected = (0..spec.width as isize).contains(&x);
                    assert_eq!(inside.contains(&i), expected, "{first} + {i} * {step}");
                }
            }
        }
    }
}
