//! Data movement as strided copies: transpose, layout conversion, slice, concat, pad and
//! gather are all "copy these strided views into those", which also makes them work on any
//! storage layout and on integer constants alike.

use super::kernel::Kernel;
use super::kernel::{in_parallel_chunks, ELEMENTS_PER_TASK};
use crate::kernels::transpose::Transpose;
use crate::kernels::Isa;
use crate::limits::MAX_RANK;

/// A strided window of a flat buffer: element `idx` is at `offset + sum(idx[i] * strides[i])`.
#[derive(Debug, Clone)]
pub(crate) struct View {
    pub offset: isize,
    pub shape: Vec<usize>,
    pub strides: Vec<isize>,
}

impl View {
    /// Whether distinct indices reach distinct elements: along the axes longer than one,
    /// sorted by stride, each stride reaches past the previous axis's extent (no broadcast,
    /// no overlap).
    fn is_one_to_one(&self) -> bool {
        let mut axes = [(0usize, 0usize); MAX_RANK];
        let mut rank = 0;
        for (&len, &stride) in self.shape.iter().zip(&self.strides) {
            if len > 1 {
                let Some(slot) = axes.get_mut(rank) else {
                    return false;
                };
                *slot = (stride.unsigned_abs(), len);
                rank += 1;
            }
        }
        let axes = &mut axes[..rank];
        axes.sort_unstable();
        let mut extent = 1;
        for &(stride, len) in axes.iter() {
            if stride < extent {
                return false;
            }
            extent = stride.saturating_mul(len);
        }
        true
    }

    pub fn new(offset: isize, shape: Vec<usize>, strides: Vec<isize>) -> Self {
        View {
            offset,
            shape,
            strides,
        }
    }
}

/// Copies input `input`'s view `src` to the output's view `dst`.
#[derive(Debug, Clone)]
pub(crate) struct CopyPart {
    pub input: usize,
    pub src: View,
    pub dst: View,
}

/// Fills the output with `fill` (when some of it is not covered by parts), then copies parts.
#[derive(Debug, Clone)]
pub(crate) struct CopyKernel {
    pub parts: Vec<CopyPart>,
    pub fill: Option<f32>,
}

impl CopyKernel {
    /// Runs on any element type (f32 activations, i64 shape constants).
    pub fn apply<T: Element>(&self, inputs: &[&[T]], output: &mut [T], fill: Option<T>) {
        if let Some(fill) = fill {
            output.fill(fill);
        }
        for part in &self.parts {
            copy_view(inputs[part.input], &part.src, output, &part.dst);
        }
    }
}

impl Kernel for CopyKernel {
    fn run(&self, inputs: &[&[f32]], output: &mut [f32]) -> Option<f64> {
        match self.outer_axis(output.len()) {
            Some((axis, rows)) if output.len() > ELEMENTS_PER_TASK => {
                self.apply_by_rows(inputs, output, (axis, rows))
            }
            _ => self.apply(inputs, output, self.fill),
        }
        None
    }

    fn rearranges(&self, inputs: &[&[f32]], output_len: usize) -> bool {
        match (self.fill, self.parts.as_slice()) {
            (None, [part]) => {
                let elements: usize = part.src.shape.iter().product();
                part.input == 0
                    && elements == output_len
                    && inputs.first().is_some_and(|x| x.len() == elements)
                    && part.src.is_one_to_one()
            }
            _ => false,
        }
    }
}

impl CopyKernel {
    /// The axis along which the output splits into `rows` equal runs that each part's
    /// destination writes within (a Concat along channels in channels-last storage splits
    /// by image rows): the same axis of every part's destination, its outermost in storage,
    /// with the same length and a stride of one run.
    fn outer_axis(&self, len: usize) -> Option<(usize, usize)> {
        let first = &self.parts.first()?.dst;
        let axis = (0..first.shape.len())
            .filter(|&a| first.shape[a] > 1)
            .max_by_key(|&a| first.strides[a])?;
        let rows = first.shape[axis];
        let run = len / rows;
        let fits = |v: &View| {
            let within: isize = (0..v.shape.len())
                .filter(|&a| a != axis)
                .map(|a| (v.shape[a] as isize - 1) * v.strides[a])
                .sum();
            v.shape.get(axis) == Some(&rows)
                && v.strides[axis] == run as isize
                && v.strides.iter().all(|&s| s >= 0)
                && v.offset >= 0
                && v.offset + within < run as isize
        };
        let ranked = self.parts.iter().all(|p| p.src.shape.len() <= MAX_RANK);
        (run * rows == len && ranked && self.parts.iter().all(|p| fits(&p.dst)))
            .then_some((axis, rows))
    }

    /// [`apply`](Self::apply) in tasks of whole runs along `axis`, on the current pool.
    fn apply_by_rows(&self, inputs: &[&[f32]], output: &mut [f32], (axis, rows): (usize, usize)) {
        let run = output.len() / rows;
        let per_task = (ELEMENTS_PER_TASK / run).max(1);
        in_parallel_chunks(output, per_task * run, |start, out| {
            let (first, count) = (start / run, out.len() / run);
            if let Some(fill) = self.fill {
                out.fill(fill);
            }
            for part in &self.parts {
                let (src, dst) = (&part.src, &part.dst);
                // The part's shape with `count` rows, on the stack (outer_axis checked
                // the rank).
                let mut shape = [0; MAX_RANK];
                let shape = &mut shape[..src.shape.len()];
                shape.copy_from_slice(&src.shape);
                shape[axis] = count;
                copy_strided(
                    (
                        inputs[part.input],
                        src.offset + first as isize * src.strides[axis],
                    ),
                    (out, dst.offset),
                    shape,
                    (&src.strides, &dst.strides),
                );
            }
            0
        });
    }
}

/// Copies every element of `sv` in `src` to the same index of `dv` in `dst` (same shapes).
pub(crate) fn copy_view<T: Element>(src: &[T], sv: &View, dst: &mut [T], dv: &View) {
    copy_strided(
        (src, sv.offset),
        (dst, dv.offset),
        &sv.shape,
        (&sv.strides, &dv.strides),
    );
}

/// Copies the elements of `shape` from `src` at `offset + sum(idx[i] * strides.0[i])` to the
/// same index of `dst` at its offset and `strides.1`, in the order of [`Runs`]: long
/// contiguous runs where the storage allows (a Concat along channels of channels-last
/// images is one run of channels per pixel, not one strided element at a time).
fn copy_strided<T: Element>(
    (src, src_offset): (&[T], isize),
    (dst, dst_offset): (&mut [T], isize),
    shape: &[usize],
    strides: (&[isize], &[isize]),
) {
    if shape.contains(&0) {
        return;
    }
    let runs = Runs::new(shape, strides);
    let rank = runs.rank;
    if rank == 0 {
        dst[dst_offset as usize] = src[src_offset as usize];
        return;
    }
    let (shape, src_strides, dst_strides) = (&runs.shape, &runs.src, &runs.dst);
    let inner = shape[rank - 1];
    let (ss, ds) = (src_strides[rank - 1], dst_strides[rank - 1]);
    // A transposition (channels-last pixels to channel planes, or back): the destination
    // runs along the innermost axis and the source along the next one. Element by element,
    // each destination run would read one float from each of `inner` source lines, a
    // power-of-two stride apart (256 channels: 1 KB) and so in a few cache sets that cannot
    // keep them: tiles keep both sides' lines in L1.
    let line_stride = if rank >= 2 { dst_strides[rank - 2] } else { 0 };
    let tiled = rank >= 2 && ds == 1 && ss > 1 && src_strides[rank - 2] == 1 && line_stride > 0;
    let outer_rank = if tiled { rank - 2 } else { rank - 1 };
    let mut index = [0usize; MAX_RANK];
    let (mut so, mut dof) = (src_offset, dst_offset);
    loop {
        if tiled {
            let (lines, stride) = (shape[rank - 2], line_stride as usize);
            let (s, d) = (&src[so as usize..], &mut dst[dof as usize..]);
            T::transpose((s, ss as usize), (d, lines, stride), inner);
        } else if ss == 1 && ds == 1 {
            let (s, d) = (so as usize, dof as usize);
            dst[d..d + inner].copy_from_slice(&src[s..s + inner]);
        } else {
            for i in 0..inner as isize {
                dst[(dof + i * ds) as usize] = src[(so + i * ss) as usize];
            }
        }
        // Advance the odometer over the outer axes.
        let mut axis = outer_rank;
        loop {
            if axis == 0 {
                return;
            }
            axis -= 1;
            index[axis] += 1;
            so += src_strides[axis];
            dof += dst_strides[axis];
            if index[axis] < shape[axis] {
                break;
            }
            so -= src_strides[axis] * shape[axis] as isize;
            dof -= dst_strides[axis] * shape[axis] as isize;
            index[axis] = 0;
        }
    }
}

/// What copies move: f32 activations, and i64 shape constants.
pub(crate) trait Element: Copy {
    /// `dst[a * line_stride + b] = src[a + b * src_stride]` for `a < lines`, `b < len`.
    fn transpose(src: (&[Self], usize), dst: (&mut [Self], usize, usize), len: usize) {
        transpose_tiles(src, dst, len);
    }
}

impl Element for i64 {}

/// Floats go through vector registers where the CPU has them: 256 channel planes of
/// 56 x 56 pixels to channels-last in 0.33 ms, against 0.48 ms in tiles of scalars.
impl Element for f32 {
    fn transpose(
        (src, src_stride): (&[f32], usize),
        (dst, lines, line_stride): (&mut [f32], usize, usize),
        len: usize,
    ) {
        // Lines shorter than a vector (an image's 3 channels) would be all edge blocks, each
        // through masked loads and stores: 0.37 ms for a 224 x 224 photograph on a Zen 3,
        // against 0.12 ms as scalars.
        let vectorised = Transpose::vectorised(Isa::detect()).filter(|_| len >= 8);
        let Some(t) = vectorised else {
            return transpose_tiles((src, src_stride), (dst, lines, line_stride), len);
        };
        // In the tiles' order, four 8 x 8 blocks a tile. Whole rows of channels at a time
        // write half-lines to all 256 planes (12544 bytes apart at 56 x 56: 16 of L1's
        // sets) and come back for the other halves after they left: 1.05 ms back to
        // planes, against 0.77 ms in tiles.
        for b0 in (0..len).step_by(TILE) {
            let rows = TILE.min(len - b0);
            for a0 in (0..lines).step_by(TILE) {
                let shape = (rows, TILE.min(lines - a0));
                let from = &src[a0 + b0 * src_stride..];
                t.transpose(
                    from,
                    src_stride,
                    &mut dst[a0 * line_stride + b0..],
                    line_stride,
                    shape,
                );
            }
        }
    }
}

/// Elements per side of the tiles of [`transpose_tiles`]: a 64-byte line of floats.
const TILE: usize = 16;

/// [`Element::transpose`] in tiles of [`TILE`] x [`TILE`], so that both sides' lines stay
/// in L1.
fn transpose_tiles<T: Copy>(
    (src, src_stride): (&[T], usize),
    (dst, lines, line_stride): (&mut [T], usize, usize),
    len: usize,
) {
    for b0 in (0..len).step_by(TILE) {
        let b_end = (b0 + TILE).min(len);
        for a0 in (0..lines).step_by(TILE) {
            for a in a0..(a0 + TILE).min(lines) {
                let to = a * line_stride;
                for (b, out) in (b0..b_end).zip(&mut dst[to + b0..to + b_end]) {
                    *out = src[a + b * src_stride];
                }
            }
        }
    }
}

/// A copy's axes as it walks them: axes of length 1 dropped, the rest ordered by the
/// destination's stride (then the source's), largest outermost, and neighbours that are
/// contiguous in both merged into one. The same elements go to the same places; only the
/// order, and the length of the innermost runs, change.
struct Runs {
    rank: usize,
    shape: [usize; MAX_RANK],
    src: [isize; MAX_RANK],
    dst: [isize; MAX_RANK],
}

impl Runs {
    /// Panics past [`MAX_RANK`] axes (the planner refuses such tensors).
    fn new(shape: &[usize], (src, dst): (&[isize], &[isize])) -> Self {
        let mut axes = [0usize; MAX_RANK];
        let mut rank = 0;
        for a in (0..shape.len()).filter(|&a| shape[a] != 1) {
            axes[rank] = a;
            rank += 1;
        }
        axes[..rank]
            .sort_by_key(|&a| std::cmp::Reverse((dst[a].unsigned_abs(), src[a].unsigned_abs())));
        let mut runs = Runs {
            rank: 0,
            shape: [0; MAX_RANK],
            src: [0; MAX_RANK],
            dst: [0; MAX_RANK],
        };
        for &a in &axes[..rank] {
            let n = runs.rank;
            let (len, ss, ds) = (shape[a] as isize, src[a], dst[a]);
            if n > 0 && runs.src[n - 1] == ss * len && runs.dst[n - 1] == ds * len {
                runs.shape[n - 1] *= shape[a];
                (runs.src[n - 1], runs.dst[n - 1]) = (ss, ds);
            } else {
                (runs.shape[n], runs.src[n], runs.dst[n]) = (shape[a], ss, ds);
                runs.rank += 1;
            }
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy keeps its input's zero fraction only when it moves every input element once:
    /// a transpose does; a slice, a broadcast, a padding fill or a concat does not.
    #[test]
    fn only_a_rearrangement_keeps_the_zero_fraction() {
        let copy = |src: View, fill: Option<f32>| CopyKernel {
            parts: vec![CopyPart {
                input: 0,
                src,
                dst: View::new(0, vec![2, 3], vec![3, 1]),
            }],
            fill,
        };
        let six = [0.0f32; 6];
        let transpose = View::new(0, vec![2, 3], vec![1, 2]);
        assert!(copy(transpose.clone(), None).rearranges(&[&six], 6));
        assert!(!copy(transpose.clone(), Some(0.0)).rearranges(&[&six], 6));
        assert!(
            !copy(transpose, None).rearranges(&[&[0.0; 8]], 6),
            "a slice"
        );
        let broadcast = View::new(0, vec![2, 3], vec![0, 1]);
        assert!(!copy(broadcast, None).rearranges(&[&six], 6));
        let overlapping = View::new(0, vec![2, 3], vec![1, 1]);
        assert!(!copy(overlapping, None).rearranges(&[&six], 6));
        let mut concat = copy(View::new(0, vec![2, 3], vec![3, 1]), None);
        concat.parts.push(concat.parts[0].clone());
        assert!(!concat.rearranges(&[&six], 6));
    }

    /// A Concat along channels of two channels-last images (logical NCHW views over NHWC
    /// storage), large enough to split by image rows: the threads' runs equal the whole copy.
    #[test]
    fn a_channel_concat_splits_by_rows_and_copies_the_same() {
        let (h, w, c) = (70, 60, [5, 11]);
        let total = c[0] + c[1];
        let inputs: Vec<Vec<f32>> = c
            .iter()
            .enumerate()
            .map(|(i, &ci)| (0..h * w * ci).map(|v| (v * 3 + i) as f32).collect())
            .collect();
        let nhwc = |channels: usize| {
            vec![
                (h * w * channels) as isize,
                1,
                (w * channels) as isize,
                channels as isize,
            ]
        };
        let parts = (0..2)
            .map(|i| CopyPart {
                input: i,
                src: View::new(0, vec![1, c[i], h, w], nhwc(c[i])),
                dst: View::new((i * c[0]) as isize, vec![1, c[i], h, w], nhwc(total)),
            })
            .collect();
        let kernel = CopyKernel { parts, fill: None };
        let len = h * w * total;
        assert!(len > ELEMENTS_PER_TASK);
        assert_eq!(kernel.outer_axis(len), Some((2, h)));
        let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        let mut whole = vec![f32::NAN; len];
        kernel.apply(&refs, &mut whole, None);
        let mut by_rows = vec![f32::NAN; len];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| kernel.run(&refs, &mut by_rows));
        assert_eq!(by_rows, whole);
        assert!(whole.iter().all(|v| !v.is_nan()));
        assert_eq!(
            whole[c[0]], 1.0,
            "the second image's first value follows the first's"
        );
    }

    /// Every pairing of plain, channels-last and reversed storage, with offsets, on a small
    /// shape and a larger one (tiles cut by both edges), in integers and in floats: the walk
    /// by runs, and by tiles where it transposes, copies exactly what an element-by-element
    /// copy does, and a channels-last channel copy becomes one run per pixel.
    #[test]
    fn runs_copy_what_the_elementwise_copy_does() {
        for shape in [[2usize, 3, 4, 5], [1, 37, 20, 19]] {
            let [n, c, h, w] = shape.map(|d| d as isize);
            let plain = vec![c * h * w, h * w, w, 1];
            let nhwc = vec![c * h * w, 1, w * c, c];
            let reversed = vec![1, n, n * c, n * c * h];
            let len = (n * c * h * w) as usize + 10;
            for src in [&plain, &nhwc, &reversed] {
                for dst in [&plain, &nhwc, &reversed] {
                    let input: Vec<i64> = (0..len as i64).collect();
                    let mut want = vec![-1i64; len];
                    for i in 0..len - 10 {
                        let mut rest = i;
                        let mut idx = [0usize; 4];
                        for a in (0..4).rev() {
                            (idx[a], rest) = (rest % shape[a], rest / shape[a]);
                        }
                        let at = |s: &[isize], off: isize| {
                            let far: isize =
                                idx.iter().zip(s).map(|(&x, &st)| x as isize * st).sum();
                            (off + far) as usize
                        };
                        want[at(dst, 7)] = input[at(src, 3)];
                    }
                    let mut got = vec![-1i64; len];
                    copy_strided((&input, 3), (&mut got, 7), &shape, (src, dst));
                    assert_eq!(got, want, "{shape:?}: {src:?} -> {dst:?}");
                    // Floats transpose through vector registers where the CPU has them.
                    let floats = |v: &[i64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
                    let mut got = vec![-1.0f32; len];
                    copy_strided((&floats(&input), 3), (&mut got, 7), &shape, (src, dst));
                    assert_eq!(got, floats(&want), "f32 {shape:?}: {src:?} -> {dst:?}");
                }
            }
        }
        let runs = Runs::new(
            &[1, 64, 55, 55],
            (&[193600, 1, 3520, 64], &[387200, 1, 7040, 128]),
        );
        assert_eq!(runs.rank, 2);
        assert_eq!(
            (runs.shape[..2].to_vec(), runs.src[1], runs.dst[1]),
            (vec![3025, 64], 1, 1)
        );
    }
}
