//! ConvTranspose: ONNX attributes (`pads`, `auto_pad`, `output_shape`, `output_padding`,
//! ...) to a [`TransposeSpec`]; BatchNormalization folding and activation fusion as for Conv
//! (see [`Draft`]); the step runs channels-last like a Conv, so that none of the layout
//! conversions of a decoder's Conv, ConvTranspose, Conv are needed.

use super::conv::{read_bias, Draft};
use super::normalize::BatchNorm;
use super::{need_const_f32, Ctx};
use crate::conv::{Activation, ConvTranspose, TransposeSpec};
use crate::error::{Error, Result};
use crate::kernels::Isa;
use crate::plan::builder::{Builder, StepOp, Value};
use crate::plan::layout::Layout;

/// A ConvTranspose read from its node, before folding and fusion.
pub(crate) struct TransposeDraft {
    spec: TransposeSpec,
    /// `[C][M/G][R][S]`, ONNX's layout.
    weights: Vec<f32>,
    bias: Vec<f32>,
    /// The logical output shape (`[N, M, OH, OW]`, or `[N, M, OW]` for 1-D).
    out_shape: Vec<usize>,
}

/// A list attribute of one value per spatial axis, `default` when absent.
fn per_axis(ctx: &Ctx, name: &str, axes: usize, default: usize) -> Result<Vec<usize>> {
    let values = ctx
        .attrs
        .sizes(name)?
        .unwrap_or_else(|| vec![default; axes]);
    if values.len() != axes {
        return Err(Error::InvalidModel(format!(
            "{name} {values:?} should have {axes} values"
        )));
    }
    Ok(values)
}

/// The (begin, end) pads and output size of each spatial axis, from `pads`, or from
/// `output_shape` or `auto_pad` as ONNX derives them: the total padding is what the full
/// output has beyond the asked size (negative when it is asked for more), split evenly with
/// the odd one at the end for SAME_UPPER and at the beginning otherwise (floor division, as
/// ONNX's reference implementation does).
fn pads_and_output(
    ctx: &Ctx,
    x: &[usize],
    stride: &[usize],
    full: &[i128],
) -> Result<Vec<(i128, i128, i128)>> {
    let axes = full.len();
    let auto_pad = ctx.attrs.string("auto_pad").unwrap_or_default();
    let asked: Option<Vec<usize>> = match ctx.attrs.sizes("output_shape")? {
        Some(shape) if shape.len() == axes => Some(shape),
        // Some exporters write the whole shape, batch and channels included.
        Some(shape) if shape.len() == axes + 2 => Some(shape[2..].to_vec()),
        Some(shape) => {
            return Err(Error::InvalidModel(format!(
                "output_shape {shape:?} should have {axes} values (one per spatial axis)"
            )))
        }
        None => match auto_pad.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => Some(
                (0..axes)
                    .map(|i| x[2 + i].checked_mul(stride[i]))
                    .collect::<Option<_>>()
                    .ok_or_else(|| Error::InvalidModel("SAME output size overflows".into()))?,
            ),
            _ => None,
        },
    };
    if let Some(asked) = asked {
        return Ok(asked
            .iter()
            .zip(full)
            .map(|(&out, &full)| {
                let total = full - out as i128;
                let half = total.div_euclid(2);
                if auto_pad == "SAME_UPPER" {
                    (half, total - half, out as i128)
                } else {
                    (total - half, half, out as i128)
                }
            })
            .collect());
    }
    match auto_pad.as_str() {
        "" | "NOTSET" => {
            let pads = per_axis(ctx, "pads", 2 * axes, 0)?;
            Ok((0..axes)
                .map(|i| {
                    let (begin, end) = (pads[i] as i128, pads[i + axes] as i128);
                    (begin, end, full[i] - begin - end)
                })
                .collect())
        }
        "VALID" => Ok(full.iter().map(|&f| (0, 0, f)).collect()),
        other => Err(Error::Unsupported(format!("auto_pad {other}"))),
    }
}

/// Reads a ConvTranspose node whose input has logical shape `x` (rank 3 or 4).
pub(crate) fn draft(
    ctx: &Ctx,
    x: &[usize],
    w: &Value,
    b: Option<&Value>,
) -> Result<TransposeDraft> {
    let rank = x.len();
    if !(rank == 3 || rank == 4) {
        return Err(Error::Unsupported(format!(
            "ConvTranspose on a rank-{rank} input {x:?} (only 1-D and 2-D)"
        )));
    }
    let axes = rank - 2;
    let weights = need_const_f32(w, "weights")?;
    let wshape = w.shape();
    if wshape.len() != rank {
        return Err(Error::InvalidModel(format!(
            "weights of shape {wshape:?} for an input of shape {x:?}"
        )));
    }
    let kernel = &wshape[2..];
    if let Some(ks) = ctx.attrs.sizes("kernel_shape")? {
        if ks != kernel {
            return Err(Error::InvalidModel(format!(
                "kernel_shape {ks:?} disagrees with weights {wshape:?}"
            )));
        }
    }
    let stride = per_axis(ctx, "strides", axes, 1)?;
    let dilation = per_axis(ctx, "dilations", axes, 1)?;
    let output_padding = per_axis(ctx, "output_padding", axes, 0)?;
    if kernel.contains(&0) || stride.contains(&0) || dilation.contains(&0) {
        return Err(Error::InvalidModel(format!(
            "strides {stride:?} / dilations {dilation:?} / kernel {kernel:?} have a zero"
        )));
    }
    for i in 0..axes {
        if output_padding[i] >= stride[i].max(dilation[i]) {
            return Err(Error::InvalidModel(format!(
                "output_padding {output_padding:?} must be less than the stride {stride:?} \
                 or the dilation {dilation:?}"
            )));
        }
    }
    let groups = usize::try_from(ctx.attrs.int("group", 1))
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| Error::InvalidModel("group must be positive".into()))?;
    let channels = x[1];
    if wshape[0] != channels || !channels.is_multiple_of(groups) {
        return Err(Error::InvalidModel(format!(
            "weights {wshape:?} with {groups} groups do not fit {channels} input channels"
        )));
    }
    let filters = wshape[1]
        .checked_mul(groups)
        .ok_or_else(|| Error::InvalidModel(format!("{groups} groups overflow")))?;
    // The full output: stride * (in - 1) + output_padding + dilation * (kernel - 1) + 1,
    // in i128, where numbers from the file cannot overflow.
    let full: Vec<i128> = (0..axes)
        .map(|i| {
            stride[i] as i128 * (x[2 + i] as i128 - 1)
                + output_padding[i] as i128
                + dilation[i] as i128 * (kernel[i] as i128 - 1)
                + 1
        })
        .collect();
    let resolved = pads_and_output(ctx, x, &stride, &full)?;
    let out = resolved
        .iter()
        .map(|&(begin, end, out)| match usize::try_from(out) {
            Ok(out) if out > 0 => Ok(out),
            Err(_) if out > 0 => Err(Error::Overflow("the ConvTranspose output size")),
            _ => Err(Error::InvalidModel(format!(
                "pads ({begin}, {end}) leave no output of the full {full:?}"
            ))),
        })
        .collect::<Result<Vec<usize>>>()?;
    let crop = resolved
        .iter()
        .map(|&(begin, _, _)| isize::try_from(begin))
        .collect::<std::result::Result<Vec<isize>, _>>()
        .map_err(|_| Error::InvalidModel("ConvTranspose pads overflow".into()))?;
    let two_d = |v: &[usize], one: usize| if axes == 2 { [v[0], v[1]] } else { [one, v[0]] };
    let spec = TransposeSpec {
        batch: x[0],
        channels,
        height: if axes == 2 { x[2] } else { 1 },
        width: x[rank - 1],
        filters,
        kernel: two_d(kernel, 1),
        stride: two_d(&stride, 1),
        dilation: two_d(&dilation, 1),
        crop: if axes == 2 {
            [crop[0], crop[1]]
        } else {
            [0, crop[0]]
        },
        output: two_d(&out, 1),
        groups,
        activation: Activation::None,
    };
    spec.validate()?;
    let bias = read_bias(b, filters)?;
    let mut out_shape = vec![x[0], filters];
    out_shape.extend(&out);
    Ok(TransposeDraft {
        spec,
        weights: weights.to_vec(),
        bias,
        out_shape,
    })
}

impl Draft for TransposeDraft {
    fn filters(&self) -> usize {
        self.spec.filters
    }

    fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }

    fn fold_batch_norm(&mut self, bn: &BatchNorm) {
        // Input channel c of group g holds filters g * Mg.. of every tap.
        let mg = self.spec.filters / self.spec.groups;
        let per_channel = self.weights.len() / self.spec.channels;
        let cg = self.spec.channels / self.spec.groups;
        for (c, block) in self.weights.chunks_exact_mut(per_channel).enumerate() {
            for (j, filter) in block.chunks_exact_mut(per_channel / mg).enumerate() {
                let m = (c / cg) * mg + j;
                filter.iter_mut().for_each(|w| *w *= bn.scale[m]);
            }
        }
        for (m, b) in self.bias.iter_mut().enumerate() {
            *b = *b * bn.scale[m] + bn.shift[m];
        }
    }

    fn fuse(&mut self, activation: Activation) {
        self.spec.activation = activation;
    }

    /// Packs the weights, within the budget, and adds the step. (The fusion pass gives no
    /// ConvTranspose a residual.)
    fn finish(
        self: Box<Self>,
        b: &mut Builder,
        input: &Value,
        residual: Option<&Value>,
    ) -> Result<Value> {
        if residual.is_some() {
            return Err(Error::Unsupported(
                "a residual Add fused into a ConvTranspose".into(),
            ));
        }
        let x = b.in_layout(input, Layout::ChannelsLast)?;
        let packing = ConvTranspose::prepared_bytes(&self.spec);
        b.memory
            .account_prepared("packing ConvTranspose weights".into(), packing)?;
        let conv = ConvTranspose::new(self.spec, &self.weights, self.bias, Isa::detect())?;
        b.memory
            .check_scratch("the columns of ConvTranspose".into(), conv.scratch_bytes())?;
        let src = b.src(&x);
        b.push(
            vec![src],
            self.out_shape,
            Layout::ChannelsLast,
            StepOp::ConvTranspose(Box::new(conv)),
        )
    }
}
