//! Per-channel and across-channel normalisations: BatchNormalization (inference form, a
//! per-channel affine map, folded into a preceding Conv where the planner can), LRN and
//! Softmax.

use super::conv::ConvTail;
use super::{axis, need_const_f32, Ctx};
use crate::conv::Activation;
use crate::error::{Error, Result};
use crate::kernels::curve::Curve;
use crate::kernels::multiversion::vectorized;
use crate::kernels::Isa;
use crate::plan::builder::{Builder, Value};
use crate::plan::kernel::Kernel;
use crate::plan::kernel::{in_parallel_chunks, ELEMENTS_PER_TASK};
use crate::plan::layout::Layout;

/// BatchNormalization at inference: `y = x * scale[c] + shift[c]`.
pub(crate) struct BatchNorm {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
}

impl BatchNorm {
    /// Reads gamma, beta, mean and variance (inputs 1 to 4, constants) and epsilon.
    pub fn from_inputs(ctx: &Ctx, inputs: &[Option<Value>]) -> Result<BatchNorm> {
        let param = |i: usize, what: &str| -> Result<&[f32]> {
            let v = inputs
                .get(i)
                .and_then(Option::as_ref)
                .ok_or_else(|| Error::InvalidModel(format!("BatchNormalization needs {what}")))?;
            need_const_f32(v, what)
        };
        let (gamma, beta) = (param(1, "scale")?, param(2, "bias")?);
        let (mean, var) = (param(3, "mean")?, param(4, "variance")?);
        let c = gamma.len();
        if [beta.len(), mean.len(), var.len()].iter().any(|&l| l != c) {
            return Err(Error::InvalidModel(
                "BatchNormalization parameters differ in length".into(),
            ));
        }
        if ctx.attrs.int("training_mode", 0) == 1 {
            return Err(Error::Unsupported(
                "BatchNormalization training_mode=1".into(),
            ));
        }
        let eps = ctx.attrs.float("epsilon", 1e-5);
        let scale: Vec<f32> = (0..c).map(|i| gamma[i] / (var[i] + eps).sqrt()).collect();
        let shift = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
        Ok(BatchNorm { scale, shift })
    }
}

/// `y = x * scale[c] + shift[c]`, with the channel of element `i` at `(i / inner) % C`, then
/// the activation's curve when there is one (whose zeros it counts, for the next Conv).
struct ChannelAffine {
    bn: BatchNorm,
    inner: usize,
    curve: Option<Curve>,
}

impl Kernel for ChannelAffine {
    fn run(&self, inputs: &[&[f32]], output: &mut [f32]) -> Option<f64> {
        let x = inputs[0];
        let zeros = match self.curve {
            _ if self.inner != 1 => self.plain(x, output),
            None => self.channels_last(x, output, |v| v),
            // ReLU and ReLU6 as two vector instructions, not the general curve.
            Some(c) if c.is_plain_clamp() => {
                self.channels_last(x, output, move |v| v.max(c.lo).min(c.hi))
            }
            Some(c) => self.channels_last(x, output, move |v| c.apply(v)),
        };
        self.curve
            .map(|_| zeros as f64 / output.len().max(1) as f64)
    }
}

impl ChannelAffine {
    /// Channels last: whole pixels at a time, a loop over the channels compiled for the
    /// CPU's vectors (rather than a division per element), split over the threads; returns
    /// the zeros when there is an activation (0 without: nothing reads them), counted in
    /// 32-bit lanes as they are written. (Compiled for the baseline with a separate count,
    /// DenseNet's 120 of these took 10 % of its time.)
    fn channels_last(
        &self,
        x: &[f32],
        output: &mut [f32],
        f: impl Fn(f32) -> f32 + Sync + Copy,
    ) -> usize {
        let (scale, shift) = (&self.bn.scale, &self.bn.shift);
        let c_len = scale.len();
        let pixels = (ELEMENTS_PER_TASK / c_len.max(1)).max(1) * c_len;
        let counting = self.curve.is_some();
        let isa = Isa::detect();
        in_parallel_chunks(output, pixels, |first, out| {
            let x = &x[first..][..out.len()];
            // Moved in: read through references, the curve's bounds and the flag were
            // reloaded per element (the output might alias them) and nothing vectorised.
            vectorized(
                isa,
                #[inline(always)]
                move || {
                    let mut zeros = 0u32;
                    for (out, x) in out.chunks_exact_mut(c_len).zip(x.chunks_exact(c_len)) {
                        for (((o, &v), &s), &t) in out.iter_mut().zip(x).zip(scale).zip(shift) {
                            *o = f(v * s + t);
                            zeros += (counting && *o == 0.0) as u32;
                        }
                    }
                    zeros as usize
                },
            )
        })
    }

    /// The plain layout: a run of `inner` elements per channel; returns the zeros as
    /// [`channels_last`](Self::channels_last) does.
    fn plain(&self, x: &[f32], output: &mut [f32]) -> usize {
        let c_len = self.bn.scale.len();
        for (block, (out, x)) in output
            .chunks_mut(self.inner)
            .zip(x.chunks(self.inner))
            .enumerate()
        {
            let c = block % c_len;
            let (s, t) = (self.bn.scale[c], self.bn.shift[c]);
            let f = |v: f32| self.curve.map_or(v, |curve| curve.apply(v));
            out.iter_mut().zip(x).for_each(|(o, &v)| *o = f(v * s + t));
        }
        self.zeros(output)
    }

    /// The zeros of `out` when an activation made them worth counting, else 0.
    fn zeros(&self, out: &[f32]) -> usize {
        match self.curve {
            Some(_) => out.iter().filter(|&&v| v == 0.0).count(),
            None => 0,
        }
    }
}

/// The elements between channels, for channel-wise operators on either layout.
fn channel_inner(v: &Value) -> usize {
    match v.layout() {
        Layout::ChannelsLast => 1,
        Layout::Plain => v.shape().iter().skip(2).product(),
    }
}

pub(crate) fn plan_batch_norm(
    b: &mut Builder,
    ctx: &Ctx,
    inputs: &[Option<Value>],
) -> Result<Value> {
    let x = inputs
        .first()
        .and_then(Option::as_ref)
        .ok_or_else(|| Error::InvalidModel("BatchNormalization needs X".into()))?;
    let bn = BatchNorm::from_inputs(ctx, inputs)?;
    let shape = x.shape().to_vec();
    if shape.len() < 2 || shape[1] != bn.scale.len() {
        return Err(Error::InvalidModel(format!(
            "BatchNormalization of {shape:?} with {} channels",
            bn.scale.len()
        )));
    }
    let kernel = ChannelAffine {
        bn,
        inner: channel_inner(x),
        curve: None,
    };
    let layout = x.layout();
    b.emit(&[x], shape, layout, Box::new(kernel))
}

/// Per-channel affine maps one after the other, then an activation (DenseNet's
/// BatchNormalization, Mul, Add and Relu before each Conv), as one pass over a 4-D `x`:
/// the maps composed into one. None when `x` is not 4-D with as many channels as the maps.
pub(crate) fn plan_affine_chain(
    b: &mut Builder,
    x: &Value,
    tail: &ConvTail,
) -> Result<Option<Value>> {
    let shape = x.shape().to_vec();
    let channels = tail.affines.first().map_or(0, |bn| bn.scale.len());
    if shape.len() != 4
        || shape[1] != channels
        || tail.affines.iter().any(|bn| bn.scale.len() != channels)
    {
        return Ok(None);
    }
    let mut bn = BatchNorm {
        scale: vec![1.0; channels],
        shift: vec![0.0; channels],
    };
    for next in &tail.affines {
        for c in 0..channels {
            bn.scale[c] *= next.scale[c];
            bn.shift[c] = bn.shift[c] * next.scale[c] + next.shift[c];
        }
    }
    let kernel = ChannelAffine {
        bn,
        inner: channel_inner(x),
        curve: tail.activation.and_then(Activation::curve),
    };
    let layout = x.layout();
    b.emit(&[x], shape, layout, Box::new(kernel)).map(Some)
}

/// Local response normalisation across channels.
struct Lrn {
    channels: usize,
    inner: usize,
    size: usize,
    alpha: f32,
    beta: f32,
    bias: f32,
}

impl Kernel for Lrn {
    fn run(&self, inputs: &[&[f32]], output: &mut [f32]) -> Option<f64> {
        let x = inputs[0];
        // Whole blocks of `channels * inner` (a pixel, channels last), split over the threads.
        let block = self.channels * self.inner;
        let blocks = (ELEMENTS_PER_TASK / block.max(1)).max(1) * block;
        in_parallel_chunks(output, blocks, |first, out| {
            let x = &x[first..][..out.len()];
            for (xb, out) in x.chunks_exact(block).zip(out.chunks_exact_mut(block)) {
                self.window_sums(xb, out);
                // beta = 0.75, as AlexNet, ZFNet and GoogLeNet have it: the power as two
                // square roots, in a loop that vectorises.
                if self.beta == 0.75 {
                    for (o, &v) in out.iter_mut().zip(xb) {
                        let root = o.sqrt();
                        *o = v / (root * root.sqrt());
                    }
                } else {
                    for (o, &v) in out.iter_mut().zip(xb) {
                        *o = v / o.powf(self.beta);
                    }
                }
            }
            0
        });
        None
    }
}

impl Lrn {
    /// `bias + alpha / size * (sum of the squares of the channel's window)` for every
    /// element of one block.
    fn window_sums(&self, xb: &[f32], out: &mut [f32]) {
        let (c_len, inner) = (self.channels, self.inner);
        let before = (self.size - 1) / 2;
        let after = self.size - 1 - before;
        let scale = self.alpha / self.size as f32;
        for j in 0..inner {
            for c in 0..c_len {
                let window = c.saturating_sub(before)..=(c + after).min(c_len - 1);
                let sum: f32 = window.map(|q| xb[q * inner + j] * xb[q * inner + j]).sum();
                out[c * inner + j] = self.bias + scale * sum;
            }
        }
    }
}

pub(crate) fn plan_lrn(b: &mut Builder, ctx: &Ctx, x: &Value) -> Result<Value> {
    let shape = x.shape().to_vec();
    let size = usize::try_from(ctx.attrs.int("size", 0)).unwrap_or(0);
    if shape.len() < 3 || size == 0 {
        return Err(Error::InvalidModel(format!(
            "LRN of size {size} on {shape:?}"
        )));
    }
    let kernel = Lrn {
        channels: shape[1],
        inner: channel_inner(x),
        size,
        alpha: ctx.attrs.float("alpha", 1e-4),
        beta: ctx.attrs.float("beta", 0.75),
        bias: ctx.attrs.float("bias", 1.0),
    };
    let layout = x.layout();
    b.emit(&[x], shape, layout, Box::new(kernel))
}

/// Softmax over `len` elements `inner` apart, for each of the outer blocks.
struct Softmax {
    len: usize,
    inner: usize,
}

impl Kernel for Softmax {
    fn run(&self, inputs: &[&[f32]], output: &mut [f32]) -> Option<f64> {
        let (len, inner) = (self.len, self.inner);
        for (out, x) in output
            .chunks_mut(len * inner)
            .zip(inputs[0].chunks(len * inner))
        {
            for j in 0..inner {
                let max = (0..len)
                    .map(|i| x[i * inner + j])
                    .fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for i in 0..len {
                    let e = (x[i * inner + j] - max).exp();
                    out[i * inner + j] = e;
                    sum += e;
                }
                (0..len).for_each(|i| out[i * inner + j] /= sum);
            }
        }
        None
    }
}

pub(crate) fn plan_softmax(b: &mut Builder, ctx: &Ctx, x: &Value) -> Result<Value> {
    let x = b.plain(x)?;
    let shape = x.shape().to_vec();
    let rank = shape.len().max(1);
    // Before opset 13 the input is coerced to 2-D at `axis` (default 1); since, one axis
    // (default -1).
    let (len, inner) = if ctx.opset < 13 {
        let at = axis(ctx.attrs.int("axis", 1), rank)?;
        (shape[at..].iter().product(), 1)
    } else {
        let at = axis(ctx.attrs.int("axis", -1), rank)?;
        (
            shape.get(at).copied().unwrap_or(1),
            shape.get(at + 1..).map_or(1, |s| s.iter().product()),
        )
    };
    if len == 0 {
        return Err(Error::InvalidModel(format!(
            "Softmax over an empty axis of {shape:?}"
        )));
    }
    b.emit(
        &[&x],
        shape,
        Layout::Plain,
        Box::new(Softmax { len, inner }),
    )
}
