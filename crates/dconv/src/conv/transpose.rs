//! The transposed convolution (ONNX ConvTranspose, the upsampling layer of decoders and
//! segmentation heads), channels-last in and out like the convolution methods, so that it
//! sits between convolutions without layout conversions.
//!
//! Input pixel `(iy, ix)` of channel `c` adds `x * w[c, m, r, s]` to output pixel
//! `(iy * sh - top + r * dh, ix * sw - left + s * dw)` of filter `m` (of the same group).
//! For each image and group, one GEMM computes every such product at once, the columns
//! `cols (P x R*S*Mg) = X (P x Cg) x W (Cg x R*S*Mg)`; then each output row gathers, from
//! the columns of the input pixels that reach it, one contiguous `Mg`-vector per tap (col2im
//! as a gather, so that threads own output rows and never race), and is finished with the
//! bias and the fused activation. The columns are computed for a block of input rows at a
//! time, so that their memory stays bounded whatever the image's size.

use super::spec::product;
use super::{Activation, Epilogue, ScratchBytes, Workspace};
use crate::error::{Error, Result};
use crate::kernels::gemm::gemm_f32;
use crate::kernels::multiversion::vectorized;
use crate::kernels::Isa;
use crate::limits::saturating_product;
use rayon::prelude::*;
use std::ops::Range;

/// Bytes of columns computed at a time (at least one input row's).
const COLUMNS_BLOCK_BYTES: usize = 8 << 20;

/// One transposed convolution: input `batch x channels x height x width`, weights
/// `channels x (filters / groups) x kernel[0] x kernel[1]` (ONNX's layout), output
/// `batch x filters x output[0] x output[1]`, activations stored channels-last. A 1-D one is
/// height 1 with kernel height 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TransposeSpec {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub filters: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// Pixels cropped from the start of the full output along each axis (the begin pads);
    /// negative when an explicit output shape asks for more than the full output.
    pub crop: [isize; 2],
    /// Output height and width.
    pub output: [usize; 2],
    pub groups: usize,
    pub activation: Activation,
}

impl TransposeSpec {
    /// Checks that every size and offset the computation implies fits in memory addresses,
    /// before anything is allocated.
    pub fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(Error::InvalidSpec(msg));
        for (name, v) in [
            ("batch", self.batch),
            ("channels", self.channels),
            ("height", self.height),
            ("width", self.width),
            ("filters", self.filters),
            ("groups", self.groups),
        ] {
            if v == 0 {
                return invalid(format!("{name} is 0"));
            }
        }
        for (name, v) in [
            ("kernel", self.kernel),
            ("stride", self.stride),
            ("dilation", self.dilation),
            ("output size", self.output),
        ] {
            if v.contains(&0) {
                return invalid(format!("{name} {v:?} has a zero"));
            }
        }
        if !self.channels.is_multiple_of(self.groups) || !self.filters.is_multiple_of(self.groups) {
            return invalid(format!(
                "{} groups do not divide {} channels and {} filters",
                self.groups, self.channels, self.filters
            ));
        }
        // Every offset of the gather, `o + crop - k * dilation` and `i * stride`, in isize.
        for a in 0..2 {
            let reach = (self.kernel[a] as i128 - 1) * self.dilation[a] as i128
                + self.output[a] as i128
                + (self.crop[a] as i128).abs()
                + self.stride[a] as i128 * [self.height, self.width][a] as i128;
            if reach > isize::MAX as i128 {
                return Err(Error::Overflow("transposed convolution offsets"));
            }
        }
        self.input_len()?;
        self.output_len()?;
        self.weight_len()?;
        product(&[self.width, self.taps(), self.filters], "columns")?;
        self.macs()?;
        Ok(())
    }

    fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }
    fn channels_per_group(&self) -> usize {
        self.channels / self.groups
    }
    fn filters_per_group(&self) -> usize {
        self.filters / self.groups
    }
    /// Elements of the NHWC input.
    pub fn input_len(&self) -> Result<usize> {
        product(
            &[self.batch, self.height, self.width, self.channels],
            "input length",
        )
    }
    /// Elements of the NHWC output.
    pub fn output_len(&self) -> Result<usize> {
        product(
            &[self.batch, self.output[0], self.output[1], self.filters],
            "output length",
        )
    }
    /// Elements of the `[C][M/G][R][S]` weights.
    pub fn weight_len(&self) -> Result<usize> {
        product(
            &[
                self.channels,
                self.filters / self.groups.max(1),
                self.kernel[0],
                self.kernel[1],
            ],
            "weight length",
        )
    }
    /// Multiply-adds: every input value meets `M/G * R * S` weights.
    pub fn macs(&self) -> Result<u64> {
        [
            self.batch,
            self.height,
            self.width,
            self.channels,
            self.filters / self.groups.max(1),
            self.kernel[0],
            self.kernel[1],
        ]
        .iter()
        .try_fold(1u64, |acc, &v| acc.checked_mul(v as u64))
        .ok_or(Error::Overflow("multiply-add count"))
    }

    /// The input index that output index `o` reads through tap `k` along `axis`, if any.
    #[inline(always)]
    fn source(&self, axis: usize, o: usize, k: usize) -> Option<usize> {
        let t = o as isize + self.crop[axis] - (k * self.dilation[axis]) as isize;
        let stride = self.stride[axis] as isize;
        let size = [self.height, self.width][axis];
        (t >= 0 && t % stride == 0)
            .then_some((t / stride) as usize)
            .filter(|&i| i < size)
    }

    /// The first and last input rows that can reach output row `oy`, clamped to the image
    /// (`first <= last` even when none reaches it); both grow with `oy`.
    fn reaching_rows(&self, oy: usize) -> (usize, usize) {
        let t = oy as isize + self.crop[0];
        let (stride, last_row) = (self.stride[0] as isize, self.height as isize - 1);
        let span = ((self.kernel[0] - 1) * self.dilation[0]) as isize;
        let last = t.div_euclid(stride).clamp(0, last_row);
        let first = (t - span + stride - 1)
            .div_euclid(stride)
            .clamp(0, last_row);
        (first.min(last) as usize, last as usize)
    }
}

/// A transposed convolution with its weights packed for the GEMM.
pub(crate) struct ConvTranspose {
    spec: TransposeSpec,
    /// `[G][Cg][R][S][Mg]`: group `g`'s right-hand side, a row per input channel holding
    /// every tap's filters.
    packed: Vec<f32>,
    epilogue: Epilogue,
    /// Input rows whose columns are computed at a time.
    block_rows: usize,
}

impl ConvTranspose {
    /// At most how many bytes [`ConvTranspose::new`] keeps for `spec` (saturating): the
    /// packed weights and the bias.
    pub fn prepared_bytes(spec: &TransposeSpec) -> usize {
        let weights = spec.weight_len().unwrap_or(usize::MAX);
        weights
            .saturating_add(spec.filters)
            .saturating_mul(size_of::<f32>())
    }

    /// Packs ONNX `[C][M/G][R][S]` weights; `bias` has one value per filter.
    pub fn new(spec: TransposeSpec, weights: &[f32], bias: Vec<f32>, isa: Isa) -> Result<Self> {
        spec.validate()?;
        if weights.len() != spec.weight_len()? || bias.len() != spec.filters {
            return Err(Error::InvalidSpec(format!(
                "{} weights and {} biases for {spec:?}",
                weights.len(),
                bias.len()
            )));
        }
        let (taps, mg) = (spec.taps(), spec.filters_per_group());
        let mut packed = vec![0.0; weights.len()];
        // Each input channel's `[Mg][R*S]` block, transposed.
        for (from, to) in weights
            .chunks_exact(mg * taps)
            .zip(packed.chunks_exact_mut(mg * taps))
        {
            for m in 0..mg {
                for t in 0..taps {
                    to[t * mg + m] = from[m * taps + t];
                }
            }
        }
        let row_bytes = saturating_product(&[spec.width, taps, spec.filters, size_of::<f32>()]);
        let block_rows = (COLUMNS_BLOCK_BYTES / row_bytes).clamp(1, spec.height);
        let isa = if isa.is_supported() {
            isa
        } else {
            Isa::Portable
        };
        let activation = spec.activation;
        Ok(ConvTranspose {
            spec,
            packed,
            epilogue: Epilogue {
                bias,
                activation,
                isa,
            },
            block_rows,
        })
    }

    pub fn spec(&self) -> &TransposeSpec {
        &self.spec
    }

    /// Floats of the columns of one block of input rows.
    fn columns_len(&self) -> usize {
        let s = &self.spec;
        self.block_rows * s.width * s.taps() * s.filters
    }

    /// The most bytes of the workspace a run fills (all shared floats).
    pub fn scratch(&self) -> ScratchBytes {
        ScratchBytes::floats(self.columns_len())
    }

    /// [`ConvTranspose::scratch`] in all.
    pub fn scratch_bytes(&self) -> usize {
        self.scratch().total()
    }

    /// Computes the NHWC `output` from the NHWC `input`; returns how many outputs are
    /// exactly zero.
    pub fn run(&self, input: &[f32], output: &mut [f32], ws: &mut Workspace) -> Result<usize> {
        let s = &self.spec;
        for (what, expected, actual) in [
            ("input", s.input_len()?, input.len()),
            ("output", s.output_len()?, output.len()),
        ] {
            if expected != actual {
                return Err(Error::BufferLength {
                    what,
                    expected,
                    actual,
                });
            }
        }
        let (taps, c_len, m_len) = (s.taps(), s.channels, s.filters);
        let (cg, mg) = (s.channels_per_group(), s.filters_per_group());
        let columns = ws.floats(self.columns_len());
        let threads = rayon::current_num_threads();
        let row_pixels = s.width;
        let mut zeros = 0;
        for (image, out) in input
            .chunks_exact(s.height * s.width * c_len)
            .zip(output.chunks_exact_mut(s.output[0] * s.output[1] * m_len))
        {
            for first in (0..s.height).step_by(self.block_rows) {
                let rows = first..(first + self.block_rows).min(s.height);
                let cols = &mut columns[..rows.len() * row_pixels * taps * m_len];
                for g in 0..s.groups {
                    let rhs = &self.packed[g * cg * taps * mg..(g + 1) * cg * taps * mg];
                    gemm_f32(
                        (rows.len() * row_pixels, taps * mg, cg),
                        &mut cols[g * taps * mg..],
                        taps * m_len,
                        &image[rows.start * row_pixels * c_len + g * cg..],
                        c_len,
                        rhs,
                        taps * mg,
                        threads,
                    );
                }
                zeros += self.gather(rows, cols, out);
            }
        }
        Ok(zeros)
    }

    /// Adds the columns of input rows `rows` into every output row they reach, zeroing each
    /// output row first when `rows` holds the first input row that can reach it, and
    /// finishing it when `rows` holds the last; returns the zeros of the rows finished.
    fn gather(&self, rows: Range<usize>, cols: &[f32], out: &mut [f32]) -> usize {
        let s = &self.spec;
        let out_rows = s.output[0];
        let touched = (0..out_rows)
            .position(|oy| s.reaching_rows(oy).1 >= rows.start)
            .unwrap_or(out_rows);
        let end = (touched..out_rows)
            .position(|oy| s.reaching_rows(oy).0 >= rows.end)
            .map_or(out_rows, |n| touched + n);
        let row_len = s.output[1] * s.filters;
        out[touched * row_len..end * row_len]
            .par_chunks_mut(row_len)
            .enumerate()
            .map(|(i, row)| {
                vectorized(
                    self.epilogue.isa,
                    #[inline(always)]
                    || self.gather_row(touched + i, &rows, cols, row),
                )
            })
            .sum()
    }

    /// [`gather`](Self::gather) for output row `oy`.
    #[inline(always)]
    fn gather_row(&self, oy: usize, rows: &Range<usize>, cols: &[f32], row: &mut [f32]) -> usize {
        let s = &self.spec;
        let (first, last) = s.reaching_rows(oy);
        if rows.contains(&first) {
            row.fill(0.0);
        }
        let (taps, m_len, mg) = (s.taps(), s.filters, s.filters_per_group());
        for r in 0..s.kernel[0] {
            let Some(iy) = s.source(0, oy, r).filter(|iy| rows.contains(iy)) else {
                continue;
            };
            let line = &cols[(iy - rows.start) * s.width * taps * m_len..];
            for (ox, pixel) in row.chunks_exact_mut(m_len).enumerate() {
                for t in r * s.kernel[1]..(r + 1) * s.kernel[1] {
                    let Some(ix) = s.source(1, ox, t - r * s.kernel[1]) else {
                        continue;
                    };
                    let col = &line[ix * taps * m_len..(ix + 1) * taps * m_len];
                    for (g, sums) in pixel.chunks_exact_mut(mg).enumerate() {
                        add(sums, &col[(g * taps + t) * mg..(g * taps + t + 1) * mg]);
                    }
                }
            }
        }
        if rows.contains(&last) {
            self.epilogue.plain().apply_rows(row, m_len, m_len, 0)
        } else {
            0
        }
    }
}

/// `sums += values`, a loop that vectorises.
#[inline(always)]
fn add(sums: &mut [f32], values: &[f32]) {
    for (s, v) in sums.iter_mut().zip(values) {
        *s += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ONNX definition, straight: `y[n, g*Mg + m, oy, ox] += x[n, c, iy, ix] *
    /// w[c, m, r, s]`, channels-last.
    fn naive(s: &TransposeSpec, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
        let (cg, mg) = (s.channels_per_group(), s.filters_per_group());
        let [oh, ow] = s.output;
        let mut y = vec![0.0; s.output_len().unwrap()];
        for n in 0..s.batch {
            for oy in 0..oh {
                for ox in 0..ow {
                    for m in 0..s.filters {
                        let (g, j) = (m / mg, m % mg);
                        let mut acc = bias[m];
                        for c in g * cg..(g + 1) * cg {
                            for r in 0..s.kernel[0] {
                                for t in 0..s.kernel[1] {
                                    let (Some(iy), Some(ix)) =
                                        (s.source(0, oy, r), s.source(1, ox, t))
                                    else {
                                        continue;
                                    };
                                    let xv =
                                        x[((n * s.height + iy) * s.width + ix) * s.channels + c];
                                    let wv = w[((c * mg + j) * s.kernel[0] + r) * s.kernel[1] + t];
                                    acc += xv * wv;
                                }
                            }
                        }
                        y[((n * oh + oy) * ow + ox) * s.filters + m] = s.activation.apply(acc);
                    }
                }
            }
        }
        y
    }

    /// Groups, a stride above the kernel's extent (rows no input reaches), a negative crop
    /// and a fused ReLU.
    fn odd_spec() -> TransposeSpec {
        TransposeSpec {
            batch: 2,
            channels: 4,
            height: 5,
            width: 3,
            filters: 6,
            kernel: [2, 3],
            stride: [3, 2],
            dilation: [1, 2],
            crop: [-1, 2],
            output: [17, 8],
            groups: 2,
            activation: Activation::Relu,
        }
    }

    /// Blocks of one input row or more give the definition's result and count its zeros.
    #[test]
    fn blocks_of_rows_and_unreached_rows_match_the_definition() {
        let spec = odd_spec();
        let x: Vec<f32> = (0..spec.input_len().unwrap())
            .map(|i| (i % 7) as f32 - 3.0)
            .collect();
        let w: Vec<f32> = (0..spec.weight_len().unwrap())
            .map(|i| (i % 5) as f32 * 0.5 - 1.0)
            .collect();
        let bias: Vec<f32> = (0..6).map(|m| m as f32 * 0.25 - 0.5).collect();
        let want = naive(&spec, &x, &w, &bias);
        for block_rows in [1, 2, 5] {
            let mut conv = ConvTranspose::new(spec, &w, bias.clone(), Isa::detect()).unwrap();
            conv.block_rows = block_rows;
            let mut y = vec![f32::NAN; want.len()];
            let zeros = conv.run(&x, &mut y, &mut Workspace::default()).unwrap();
            assert_eq!(y, want, "{block_rows} rows a block");
            assert_eq!(zeros, want.iter().filter(|&&v| v == 0.0).count());
        }
    }

    #[test]
    fn sizes_that_overflow_are_refused() {
        let ok = odd_spec();
        ok.validate().unwrap();
        for bad in [
            TransposeSpec {
                groups: 2,
                filters: 3,
                ..ok
            },
            TransposeSpec {
                stride: [0, 1],
                ..ok
            },
            TransposeSpec {
                output: [usize::MAX, 1],
                ..ok
            },
            TransposeSpec {
                crop: [isize::MIN + 1, 0],
                ..ok
            },
            TransposeSpec {
                kernel: [usize::MAX / 2, 1],
                ..ok
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
