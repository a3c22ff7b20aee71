//! MaxPool, AveragePool, GlobalAveragePool and GlobalMaxPool on channels-last tensors, where
//! the channels of a pixel are contiguous and every window reduces whole channel vectors.

use super::conv::resolve_pads;
use super::Ctx;
use crate::error::{Error, Result};
use crate::kernels::multiversion::vectorized;
use crate::kernels::Isa;
use crate::plan::builder::{Builder, Value};
use crate::plan::kernel::Kernel;
use crate::plan::layout::Layout;
use rayon::prelude::*;
use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reduce {
    Max,
    /// Average; `count_pad` counts padded positions in the divisor.
    Mean {
        count_pad: bool,
    },
}

/// A 2-D pooling (1-D as height 1) over NHWC data.
struct Pool {
    reduce: Reduce,
    channels: usize,
    input: [usize; 2],
    output: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    /// Padding before each axis, and the extent of the padded input along each axis.
    pad_begin: [usize; 2],
    padded_end: [usize; 2],
}

/// Channels reduced at a time in registers (one AVX-512 vector, two AVX or four SSE ones).
const CHUNK: usize = 16;

/// Windows with more taps than this (global pools) add whole pixels into the output row
/// instead: a chunk of channels at a time would read such a window once per chunk.
const MAX_CHUNKED_TAPS: usize = 64;

impl Kernel for Pool {
    fn run(&self, inputs: &[&[f32]], output: &mut [f32]) -> Option<f64> {
        let x = inputs[0];
        let c_len = self.channels;
        let [h, w] = self.input;
        let [oh, ow] = self.output;
        let image_in = h * w * c_len;
        if output.is_empty() || c_len == 0 {
            return Some(0.0);
        }
        // The zeros of each output row are counted while it is still in registers or cache:
        // a pooling between two convolutions hands the next one its input sparsity.
        // The windows that lie whole inside the input, and their taps relative to their first
        // pixel, found once per run.
        let inside = [self.inside(0), self.inside(1)];
        let offsets = self.window_offsets();
        let isa = Isa::detect();
        let zeros: usize = output
            .par_chunks_mut(ow * c_len)
            .enumerate()
            .map(|(row, out_row)| {
                let (n, oy) = (row / oh, row % oh);
                let image = &x[n * image_in..(n + 1) * image_in];
                // Compiled for the CPU's vector width, whole channel vectors at a time.
                vectorized(
                    isa,
                    #[inline(always)]
                    || self.row(image, oy, (&inside, &offsets), out_row),
                )
            })
            .sum();
        Some(zeros as f64 / output.len().max(1) as f64)
    }
}

/// The taps of a window along one axis: the input coordinates it reads (`first`, then every
/// `step`, `count` of them) and how many of its taps lie inside the padded input.
#[derive(Debug, Clone)]
struct Taps {
    first: usize,
    step: usize,
    count: usize,
    padded: usize,
}

/// The taps of one window along both axes.
struct Window {
    y: Taps,
    x: Taps,
}

impl Window {
    fn new(y: Taps, x: Taps) -> Self {
        Window { y, x }
    }

    fn len(&self) -> usize {
        self.y.count * self.x.count
    }
}

impl Pool {
    /// The taps along `axis` of output position `o`: tap `k` of the window sits at padded
    /// coordinate `q = o * stride + k * dilation`, counts in the divisor with
    /// `count_include_pad` if `q < padded_end`, and reads the input if it is inside
    /// `pad_begin..pad_begin + input`.
    #[inline(always)]
    fn taps(&self, axis: usize, o: usize) -> Taps {
        let (k_len, step) = (self.kernel[axis], self.dilation[axis]);
        let start = o * self.stride[axis];
        let (begin, end) = (
            self.pad_begin[axis],
            self.pad_begin[axis] + self.input[axis],
        );
        // The number of taps k < k_len with q < limit.
        let below = |limit: usize| limit.saturating_sub(start).div_ceil(step).min(k_len);
        let (lo, hi) = (below(begin), below(end));
        let count = hi.saturating_sub(lo);
        Taps {
            first: (start + lo * step).saturating_sub(begin),
            step,
            count,
            padded: below(self.padded_end[axis]),
        }
    }

    /// Reduces one window into `out` (one pixel's channels) by `fold` from `init`; returns
    /// its exact zeros. The fold is a parameter, not a match on the reduction per value, so
    /// that each pool's loops compile to plain vector maxima or sums.
    #[inline(always)]
    fn window(
        &self,
        image: &[f32],
        window: &Window,
        out: &mut [f32],
        (init, fold): (f32, impl Fn(f32, f32) -> f32 + Copy),
    ) -> usize {
        let c_len = self.channels;
        let scale = match self.reduce {
            Reduce::Max => 1.0,
            Reduce::Mean { count_pad } => {
                let count = if count_pad {
                    window.y.padded * window.x.padded
                } else {
                    window.len()
                };
                1.0 / count.max(1) as f32
            }
        };
        let reduce = |range: std::ops::Range<usize>, acc: &mut [f32]| {
            acc.fill(init);
            for at in self.tap_offsets(window) {
                for (a, &v) in acc.iter_mut().zip(&image[at + range.start..at + range.end]) {
                    *a = fold(*a, v);
                }
            }
            acc.iter_mut().for_each(|a| *a *= scale);
        };
        if window.len() > MAX_CHUNKED_TAPS {
            reduce(0..c_len, out);
            return out.iter().filter(|&&v| v == 0.0).count();
        }
        // A chunk of channels at a time in a local array of fixed length, which stays in a
        // register; zeros counted per lane, summed once per window.
        let mut zeros = [0u32; CHUNK];
        let mut chunks = out.chunks_exact_mut(CHUNK);
        let mut c0 = 0;
        for chunk in chunks.by_ref() {
            let mut acc = [init; CHUNK];
            for at in self.tap_offsets(window) {
                let v: &[f32; CHUNK] = image[at + c0..at + c0 + CHUNK].try_into().unwrap();
                for l in 0..CHUNK {
                    acc[l] = fold(acc[l], v[l]);
                }
            }
            for l in 0..CHUNK {
                acc[l] *= scale;
                zeros[l] += (acc[l] == 0.0) as u32;
            }
            chunk.copy_from_slice(&acc);
            c0 += CHUNK;
        }
        let rest = chunks.into_remainder();
        reduce(c0..c_len, rest);
        let rest_zeros = rest.iter().filter(|&&v| v == 0.0).count();
        zeros.iter().sum::<u32>() as usize + rest_zeros
    }

    /// [`Pool::window`] out of line, for the windows that padding clips (and average windows
    /// of more than [`MAX_CHUNKED_TAPS`]): inlined beside the windows inside, it made the
    /// compiler keep those in a slower loop (SqueezeNet's unpadded first pool 25 % slower).
    /// It runs at the baseline's vector width.
    #[inline(never)]
    fn edge_window(
        &self,
        image: &[f32],
        window: &Window,
        out: &mut [f32],
        fold: (f32, impl Fn(f32, f32) -> f32 + Copy),
    ) -> usize {
        self.window(image, window, out, fold)
    }

    /// Where each tap of `window` starts in the image (its pixel's first channel).
    #[inline(always)]
    fn tap_offsets<'w>(&self, window: &'w Window) -> impl Iterator<Item = usize> + 'w {
        let (w, c_len) = (self.input[1], self.channels);
        let (ys, xs) = (&window.y, &window.x);
        (0..ys.count).flat_map(move |i| {
            let y = ys.first + i * ys.step;
            (0..xs.count).map(move |j| (y * w + xs.first + j * xs.step) * c_len)
        })
    }

    /// One output row: every window of output row `oy` of one image, given the output
    /// positions whose windows lie inside ([`Pool::inside`]) and their tap offsets
    /// ([`Pool::window_offsets`]); returns its zeros.
    #[inline(always)]
    fn row(
        &self,
        image: &[f32],
        oy: usize,
        whole: (&[Range<usize>; 2], &[usize]),
        out_row: &mut [f32],
    ) -> usize {
        match self.reduce {
            Reduce::Max => self.row_by(image, oy, whole, out_row, (f32::NEG_INFINITY, max)),
            Reduce::Mean { .. } => self.row_by(image, oy, whole, out_row, (0.0, |a, v| a + v)),
        }
    }

    /// [`Pool::row`] with the reduction's start and fold. Windows inside the input reduce
    /// in registers over the same tap offsets, with no clipping; those that the padding
    /// clips, near the edges, go tap by tap ([`Pool::window`]).
    #[inline(always)]
    fn row_by(
        &self,
        image: &[f32],
        oy: usize,
        (inside, offsets): (&[Range<usize>; 2], &[usize]),
        out_row: &mut [f32],
        fold: (f32, impl Fn(f32, f32) -> f32 + Copy),
    ) -> usize {
        let (w, c_len) = (self.input[1], self.channels);
        let ys = self.taps(0, oy);
        // Every tap of an inside window counts in the divisor, padding or not.
        let scale = match self.reduce {
            Reduce::Max => 1.0,
            Reduce::Mean { .. } => 1.0 / offsets.len() as f32,
        };
        let many_taps = offsets.len() > MAX_CHUNKED_TAPS;
        let mut zeros = 0;
        for (ox, out) in out_row.chunks_exact_mut(c_len).enumerate() {
            let whole = inside[0].contains(&oy) && inside[1].contains(&ox);
            let first = || {
                let y = oy * self.stride[0] - self.pad_begin[0];
                let x = ox * self.stride[1] - self.pad_begin[1];
                &image[(y * w + x) * c_len..]
            };
            zeros += match (whole, many_taps, self.reduce) {
                (true, false, _) => reduce_in_registers(first(), offsets, out, fold.1, scale),
                (true, true, Reduce::Max) => max_by_pixels(first(), offsets, out),
                _ => self.edge_window(image, &Window::new(ys.clone(), self.taps(1, ox)), out, fold),
            };
        }
        zeros
    }

    /// The output positions along `axis` whose windows lie whole inside the input, clipped
    /// by no padding (nor by ceil_mode's overhang): all of them have the same taps.
    fn inside(&self, axis: usize) -> Range<usize> {
        let (pad, stride) = (self.pad_begin[axis], self.stride[axis]);
        let reach = (self.kernel[axis] - 1) * self.dilation[axis];
        let first = pad.div_ceil(stride);
        // The last tap, o * stride - pad + reach, at most input - 1.
        let end = (self.input[axis] + pad)
            .checked_sub(reach + 1)
            .map_or(0, |last| last / stride + 1)
            .min(self.output[axis]);
        first.min(end)..end
    }

    /// The offsets of a window's taps from its first pixel's first channel, for the windows
    /// that lie inside the input (all have the same).
    fn window_offsets(&self) -> Vec<usize> {
        let (w, c_len) = (self.input[1], self.channels);
        let ([ky, kx], [dy, dx]) = (self.kernel, self.dilation);
        (0..ky)
            .flat_map(|i| (0..kx).map(move |j| (i * dy * w + j * dx) * c_len))
            .collect()
    }
}

/// The fold over `taps` (offsets into `window`, the first 0) of each channel, times `scale`,
/// into `out`, a chunk of channels at a time in registers; returns its zeros. An output in
/// memory that takes each tap's max would be written back only where the tap is larger,
/// which compiles to masked stores, and each tap reloads what the last one stored: on a
/// Zen 3 that made SqueezeNet's first pool 7x slower.
#[inline(always)]
fn reduce_in_registers(
    window: &[f32],
    taps: &[usize],
    out: &mut [f32],
    fold: impl Fn(f32, f32) -> f32,
    scale: f32,
) -> usize {
    let mut zeros = [0u32; CHUNK];
    let mut chunks = out.chunks_exact_mut(CHUNK);
    let mut c0 = 0;
    for chunk in chunks.by_ref() {
        let mut acc: [f32; CHUNK] = window[c0..c0 + CHUNK].try_into().unwrap();
        for &at in &taps[1..] {
            let v: &[f32; CHUNK] = window[at + c0..at + c0 + CHUNK].try_into().unwrap();
            for l in 0..CHUNK {
                acc[l] = fold(acc[l], v[l]);
            }
        }
        for l in 0..CHUNK {
            acc[l] *= scale;
            zeros[l] += (acc[l] == 0.0) as u32;
        }
        chunk.copy_from_slice(&acc);
        c0 += CHUNK;
    }
    let mut rest_zeros = 0;
    for (c, o) in (c0..).zip(chunks.into_remainder()) {
        let acc = taps[1..]
            .iter()
            .fold(window[c], |acc, &at| fold(acc, window[at + c]));
        *o = acc * scale;
        rest_zeros += usize::from(*o == 0.0);
    }
    zeros.iter().sum::<u32>() as usize + rest_zeros
}

/// [`reduce_in_registers`] for the windows of a max pool too large to read once per chunk (a
/// global max pool): whole pixels at a time into `out`, by a max that stores every lane.
#[inline(always)]
fn max_by_pixels(window: &[f32], taps: &[usize], out: &mut [f32]) -> usize {
    out.copy_from_slice(&window[..out.len()]);
    for &at in &taps[1..] {
        for (a, &v) in out.iter_mut().zip(&window[at..]) {
            *a = a.max(v);
        }
    }
    out.iter().filter(|&&v| v == 0.0).count()
}

/// The larger of `acc` (which starts at -inf, never NaN) and `v`, skipping a NaN `v` as
/// `f32::max` does, in one compare-and-select that vectorises to a single max instruction.
#[inline(always)]
fn max(acc: f32, v: f32) -> f32 {
    if v > acc {
        v
    } else {
        acc
    }
}

pub(crate) fn plan(b: &mut Builder, ctx: &Ctx, op: &str, x: &Value) -> Result<Value> {
    let shape = x.shape().to_vec();
    let rank = shape.len();
    if !(rank == 3 || rank == 4) {
        return Err(Error::Unsupported(format!(
            "{op} on a rank-{rank} input {shape:?} (only 1-D and 2-D pooling)"
        )));
    }
    let x = b.in_layout(x, Layout::ChannelsLast)?;
    let spatial = &shape[2..];
    let global = op.starts_with("Global");
    let kernel = if global {
        spatial.to_vec()
    } else {
        ctx.attrs
            .sizes("kernel_shape")?
            .ok_or_else(|| Error::InvalidModel(format!("{op} without kernel_shape")))?
    };
    let n = rank - 2;
    let ones = vec![1; n];
    let stride = if global {
        ones.clone()
    } else {
        ctx.attrs.sizes("strides")?.unwrap_or_else(|| ones.clone())
    };
    let dilation = if global {
        ones.clone()
    } else {
        ctx.attrs
            .sizes("dilations")?
            .unwrap_or_else(|| ones.clone())
    };
    if kernel.len() != n
        || stride.len() != n
        || dilation.len() != n
        || kernel.contains(&0)
        || stride.contains(&0)
        || dilation.contains(&0)
    {
        return Err(Error::InvalidModel(format!(
            "kernel {kernel:?}, strides {stride:?}, dilations {dilation:?} do not fit a {n}-D pool"
        )));
    }
    let pads = if global {
        vec![(0, 0); n]
    } else {
        resolve_pads(ctx, spatial, &kernel, &stride, &dilation)?
    };
    let ceil = ctx.attrs.int("ceil_mode", 0) == 1;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let padded = spatial[i]
            .checked_add(pads[i].0)
            .and_then(|p| p.checked_add(pads[i].1))
            .ok_or_else(|| Error::InvalidModel(format!("{op} pads {pads:?} overflow")))?;
        let extent = super::conv::window_extent(kernel[i], dilation[i])?;
        let span = padded.checked_sub(extent).ok_or_else(|| {
            Error::InvalidModel(format!(
                "{op} window {extent} is larger than the padded input {padded}"
            ))
        })?;
        let mut o = if ceil {
            span.div_ceil(stride[i])
        } else {
            span / stride[i]
        } + 1;
        // A window must start inside the input or its leading padding.
        if ceil && (o - 1) * stride[i] >= spatial[i] + pads[i].0 {
            o -= 1;
        }
        out.push(o);
    }
    let reduce = if op.contains("Max") {
        Reduce::Max
    } else {
        Reduce::Mean {
            count_pad: ctx.attrs.int("count_include_pad", 0) == 1,
        }
    };
    let two = |v: &[usize], fill: usize| if n == 2 { [v[0], v[1]] } else { [fill, v[0]] };
    let pad_begin: Vec<usize> = pads.iter().map(|p| p.0).collect();
    // Checked above.
    let padded_end: Vec<usize> = (0..n).map(|i| spatial[i] + pads[i].0 + pads[i].1).collect();
    let pool = Pool {
        reduce,
        channels: shape[1],
        input: two(spatial, 1),
        output: two(&out, 1),
        kernel: two(&kernel, 1),
        stride: two(&stride, 1),
        dilation: two(&dilation, 1),
        pad_begin: two(&pad_begin, 0),
        padded_end: two(&padded_end, 1),
    };
    let mut out_shape = vec![shape[0], shape[1]];
    out_shape.extend(&out);
    let src = b.src(&x);
    b.push(
        vec![src],
        out_shape,
        Layout::ChannelsLast,
        crate::plan::builder::StepOp::Kernel(Box::new(pool)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Rng;

    /// The window by the definition: every tap checked on its own.
    fn naive(pool: &Pool, image: &[f32], o: [usize; 2], out: &mut [f32]) {
        let c_len = pool.channels;
        out.fill(match pool.reduce {
            Reduce::Max => f32::NEG_INFINITY,
            Reduce::Mean { .. } => 0.0,
        });
        let (mut valid, mut padded) = (0usize, 0usize);
        for ky in 0..pool.kernel[0] {
            let qy = o[0] * pool.stride[0] + ky * pool.dilation[0];
            for kx in 0..pool.kernel[1] {
                let qx = o[1] * pool.stride[1] + kx * pool.dilation[1];
                if qy >= pool.padded_end[0] || qx >= pool.padded_end[1] {
                    continue;
                }
                padded += 1;
                let (y, x) = (
                    qy as isize - pool.pad_begin[0] as isize,
                    qx as isize - pool.pad_begin[1] as isize,
                );
                if y < 0 || x < 0 || y >= pool.input[0] as isize || x >= pool.input[1] as isize {
                    continue;
                }
                valid += 1;
                let at = (y as usize * pool.input[1] + x as usize) * c_len;
                for (o, &v) in out.iter_mut().zip(&image[at..at + c_len]) {
                    *o = match pool.reduce {
                        Reduce::Max => o.max(v),
                        Reduce::Mean { .. } => *o + v,
                    };
                }
            }
        }
        if let Reduce::Mean { count_pad } = pool.reduce {
            let count = if count_pad { padded } else { valid };
            out.iter_mut().for_each(|o| *o /= count.max(1) as f32);
        }
    }

    #[test]
    fn matches_the_definition_on_random_shapes() {
        let mut rng = Rng::new(17);
        let pick = |rng: &mut Rng, lo: usize, hi: usize| {
            lo + (rng.next_u64() % (hi - lo + 1) as u64) as usize
        };
        // Windows that lie inside the input take their own path, in registers or, for max
        // windows of more than MAX_CHUNKED_TAPS, by whole pixels; those near padded edges go
        // tap by tap. Count the pools that have both kinds, of each reduction.
        let (mut mixed, mut by_pixels) = ([0; 3], 0);
        for case in 0..400 {
            let reduce = match case % 3 {
                0 => Reduce::Max,
                1 => Reduce::Mean { count_pad: false },
                _ => Reduce::Mean { count_pad: true },
            };
            let channels = [1, 3, 16, 17, 35, 64][pick(&mut rng, 0, 5)];
            let batch = pick(&mut rng, 1, 2);
            let global = case % 11 == 0;
            // Global windows mostly larger than MAX_CHUNKED_TAPS.
            let least = if global { 7 } else { 1 };
            let input = [pick(&mut rng, least, 12), pick(&mut rng, least, 12)];
            let kernel = if global {
                input
            } else {
                [pick(&mut rng, 1, 4), pick(&mut rng, 1, 4)]
            };
            let stride = [pick(&mut rng, 1, 3), pick(&mut rng, 1, 3)];
            let dilation = [pick(&mut rng, 1, 2), pick(&mut rng, 1, 2)];
            // Every fourth case unpadded, so that unclipped windows are common; global ones too.
            let padding = |rng: &mut Rng| match case % 4 {
                _ if global => [0, 0],
                0 => [0, 0],
                _ => [pick(rng, 0, 2), pick(rng, 0, 2)],
            };
            let pad_begin = padding(&mut rng);
            let pad_end = padding(&mut rng);
            let padded_end = [0, 1].map(|i| input[i] + pad_begin[i] + pad_end[i]);
            let extent = [0, 1].map(|i| (kernel[i] - 1) * dilation[i] + 1);
            if (0..2).any(|i| extent[i] > padded_end[i]) {
                continue;
            }
            let output = [0, 1].map(|i| (padded_end[i] - extent[i]) / stride[i] + 1);
            let pool = Pool {
                reduce,
                channels,
                input,
                output,
                kernel,
                stride,
                dilation,
                pad_begin,
                padded_end,
            };
            let whole = pool.inside(0).len() * pool.inside(1).len();
            mixed[case % 3] += usize::from(whole > 0 && whole < output[0] * output[1]);
            by_pixels += usize::from(
                whole > 0 && reduce == Reduce::Max && kernel[0] * kernel[1] > MAX_CHUNKED_TAPS,
            );
            // Some exact zeros (and negative values) so that counting and max are exercised.
            let x: Vec<f32> = (0..batch * input[0] * input[1] * channels)
                .map(|_| {
                    if rng.next_u64().is_multiple_of(3) {
                        0.0
                    } else {
                        rng.nonzero_value()
                    }
                })
                .collect();
            let mut want = vec![0.0; batch * output[0] * output[1] * channels];
            let image_len = input[0] * input[1] * channels;
            for n in 0..batch {
                for oy in 0..output[0] {
                    for ox in 0..output[1] {
                        let at = ((n * output[0] + oy) * output[1] + ox) * channels;
                        naive(
                            &pool,
                            &x[n * image_len..(n + 1) * image_len],
                            [oy, ox],
                            &mut want[at..at + channels],
                        );
                    }
                }
            }
            let zeros = want.iter().filter(|&&v| v == 0.0).count();
            let mut got = vec![f32::NAN; want.len()];
            let sparsity = pool.run(&[&x], &mut got).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    g == w || (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "case {case}: {g} vs {w}"
                );
            }
            assert_eq!(sparsity, zeros as f64 / want.len() as f64, "case {case}");
        }
        assert!(
            mixed.iter().all(|&n| n >= 10),
            "too few pools with windows inside and at the edges: {mixed:?}"
        );
        assert!(
            by_pixels >= 2,
            "only {by_pixels} cases of the large windows"
        );
    }
}
