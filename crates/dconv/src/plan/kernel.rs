//! [`Kernel`]: an operator with its shapes resolved, as a plan runs it, and how kernels
//! split a pass among the threads of the current pool.

use rayon::prelude::*;

/// An operator with its shapes resolved, run on flat buffers.
pub(crate) trait Kernel: Send + Sync {
    /// Writes every element of `output` (or, in a slot that other steps write too, its
    /// part: see `SharedOutput`); returns the fraction of zeros of what it wrote when it
    /// counted them on the way (as a ReLU does), for the next convolution's method choice.
    fn run(&self, inputs: &[&[f32]], output: &mut [f32]) -> Option<f64>;

    /// Whether the output holds exactly the elements of input 0, rearranged (a transpose, a
    /// layout conversion, a channel shuffle), when the inputs are `inputs` and the output
    /// has `output_len` elements: then input 0's zero fraction, when known, is the output's.
    fn rearranges(&self, _inputs: &[&[f32]], _output_len: usize) -> bool {
        false
    }
}

/// Elements per task of an element-wise pass: below it, one thread does the whole pass.
pub(crate) const ELEMENTS_PER_TASK: usize = 1 << 15;

/// Runs `f(first, chunk)` on chunks of `output` of `chunk_len` elements (the whole of it when
/// it is no longer than that), `first` being the chunk's first index, on the threads of the
/// current pool; sums what it returns.
pub(crate) fn in_parallel_chunks(
    output: &mut [f32],
    chunk_len: usize,
    f: impl Fn(usize, &mut [f32]) -> usize + Sync,
) -> usize {
    if output.len() <= chunk_len {
        return f(0, output);
    }
    output
        .par_chunks_mut(chunk_len)
        .enumerate()
        .map(|(i, out)| f(i * chunk_len, out))
        .sum()
}
