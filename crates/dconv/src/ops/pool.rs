//! MaxPool, AveragePool, GlobalAveragePool and GlobalMaxPool on channels-last tensors, where
//! the channels of a pixel are contiguous and every window reduces whole channel vectors.

use super::conv::resolve_pads;
use super::{Ctx, Kernel};
use crate::error::{Error, Result};
use crate::runtime::builder::{Builder, Value};
use crate::runtime::layout::Layout;
use rayon::prelude::*;

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

impl Kernel for Pool {
    fn run(&self, inputs: &[&[f32]], output: &mut [f32]) -> Option<f64> {
        let x = inputs[0];
        let c_len = self.channels;
        let [h, w] = self.input;
        let [oh, ow] = self.output;
        let image_in = h * w * c_len;
        // The zeros of each output row are counted while it is still in cache: a pooling
        // between two convolutions hands the next one its input sparsity.
        let zeros: usize = output
            .par_chunks_mut(ow * c_len)
            .enumerate()
            .map(|(row, out_row)| {
                let (n, oy) = (row / oh, row % oh);
                let image = &x[n * image_in..(n + 1) * image_in];
                for ox in 0..ow {
                    let out = &mut out_row[ox * c_len..(ox + 1) * c_len];
                    self.window(image, [oy, ox], out);
                }
                out_row.iter().filter(|&&v| v == 0.0).count()
            })
            .sum();
        Some(zeros as f64 / output.len().max(1) as f64)
    }
}

impl Pool {
    fn window(&self, image: &[f32], o: [usize; 2], out: &mut [f32]) {
        let c_len = self.channels;
        let init = match self.reduce {
            Reduce::Max => f32::NEG_INFINITY,
            Reduce::Mean { .. } => 0.0,
        };
        out.fill(init);
        let mut valid = 0usize;
        let mut padded = 0usize;
        for ky in 0..self.kernel[0] {
            let y = (o[0] * self.stride[0] + ky * self.dilation[0]) as isize
                - self.pad_begin[0] as isize;
            if y + self.pad_begin[0] as isize >= self.padded_end[0] as isize {
                continue;
            }
            for kx in 0..self.kernel[1] {
                let x = (o[1] * self.stride[1] + kx * self.dilation[1]) as isize
                    - self.pad_begin[1] as isize;
                if x + self.pad_begin[1] as isize >= self.padded_end[1] as isize {
                    continue;
                }
                padded += 1;
                if y < 0 || x < 0 || y >= self.input[0] as isize || x >= self.input[1] as isize {
                    continue;
                }
                valid += 1;
                let at = (y as usize * self.input[1] + x as usize) * c_len;
                let pixel = &image[at..at + c_len];
                match self.reduce {
                    Reduce::Max => out.iter_mut().zip(pixel).for_each(|(o, &v)| *o = o.max(v)),
                    Reduce::Mean { .. } => out.iter_mut().zip(pixel).for_each(|(o, &v)| *o += v),
                }
            }
        }
        if let Reduce::Mean { count_pad } = self.reduce {
            let count = if count_pad { padded } else { valid };
            let scale = 1.0 / count.max(1) as f32;
            out.iter_mut().for_each(|o| *o *= scale);
        }
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
        crate::runtime::builder::StepOp::Kernel(Box::new(pool)),
    )
}
