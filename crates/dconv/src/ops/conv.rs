//! Conv: ONNX attributes to a [`ConvSpec`]; the per-channel maps and activation the fusion
//! pass gave it ([`ConvTail`]) folded into its weights and epilogue; the methods to prepare,
//! within the memory budget, for the [`ConvStep`] that picks one per run.

use super::normalize::BatchNorm;
use super::{conv_transpose, elementwise, need_const_f32, required, Ctx};
use crate::conv::select::WeightZeros;
use crate::conv::{Activation, Conv, ConvSpec, Method};
use crate::error::{Error, Result};
use crate::plan::builder::{Builder, StepOp, Value};
use crate::plan::conv_step::ConvStep;
use crate::plan::layout::Layout;

/// A convolution read from its node, before folding and fusion.
pub(crate) struct ConvDraft {
    pub spec: ConvSpec,
    /// `[M][C/G][R][S]`.
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    /// The logical output shape (`[N, M, OH, OW]`, or `[N, M, OW]` for 1-D).
    pub out_shape: Vec<usize>,
}

/// How a node's `pads`/`auto_pad` resolve, per spatial axis: (begin, end).
pub(crate) fn resolve_pads(
    ctx: &Ctx,
    input: &[usize],
    kernel: &[usize],
    stride: &[usize],
    dilation: &[usize],
) -> Result<Vec<(usize, usize)>> {
    let n = input.len();
    let auto_pad = ctx.attrs.string("auto_pad").unwrap_or_default();
    match auto_pad.as_str() {
        "" | "NOTSET" => {
            let pads = ctx.attrs.sizes("pads")?.unwrap_or_else(|| vec![0; 2 * n]);
            if pads.len() != 2 * n {
                return Err(Error::InvalidModel(format!(
                    "pads {pads:?} should have {} values",
                    2 * n
                )));
            }
            Ok((0..n).map(|i| (pads[i], pads[i + n])).collect())
        }
        "VALID" => Ok(vec![(0, 0); n]),
        "SAME_UPPER" | "SAME_LOWER" => (0..n)
            .map(|i| {
                if stride[i] == 0 {
                    return Err(Error::InvalidModel(format!("stride {stride:?} has a zero")));
                }
                let out = input[i].div_ceil(stride[i]);
                let reach = (out.saturating_sub(1))
                    .checked_mul(stride[i])
                    .and_then(|r| r.checked_add(window_extent(kernel[i], dilation[i]).ok()?))
                    .ok_or_else(|| Error::InvalidModel("SAME padding overflows".into()))?;
                let total = reach.saturating_sub(input[i]);
                let small = total / 2;
                Ok(if auto_pad == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                })
            })
            .collect(),
        other => Err(Error::Unsupported(format!("auto_pad {other}"))),
    }
}

/// The span of a `kernel`-tap window with `dilation`: `dilation * (kernel - 1) + 1`.
pub(crate) fn window_extent(kernel: usize, dilation: usize) -> Result<usize> {
    kernel
        .checked_sub(1)
        .and_then(|k| k.checked_mul(dilation))
        .and_then(|k| k.checked_add(1))
        .ok_or_else(|| {
            Error::InvalidModel(format!(
                "a window of {kernel} taps dilated by {dilation} has no valid extent"
            ))
        })
}

/// The optional bias input of a convolution with `filters` outputs (zeros without one).
pub(crate) fn read_bias(b: Option<&Value>, filters: usize) -> Result<Vec<f32>> {
    let Some(b) = b else {
        return Ok(vec![0.0; filters]);
    };
    let bias = need_const_f32(b, "bias")?;
    if bias.len() != filters {
        return Err(Error::InvalidModel(format!(
            "bias of shape {:?} for {filters} filters",
            b.shape()
        )));
    }
    Ok(bias.to_vec())
}

/// Reads a Conv node whose input has logical shape `x` (rank 3 or 4).
pub(crate) fn draft(ctx: &Ctx, x: &[usize], w: &Value, b: Option<&Value>) -> Result<ConvDraft> {
    let rank = x.len();
    if !(rank == 3 || rank == 4) {
        return Err(Error::Unsupported(format!(
            "Conv on a rank-{rank} input {x:?} (only 1-D and 2-D convolutions)"
        )));
    }
    let weights = need_const_f32(w, "weights")?;
    let wshape = w.shape();
    if wshape.len() != rank {
        return Err(Error::InvalidModel(format!(
            "weights of shape {wshape:?} for an input of shape {x:?}"
        )));
    }
    let spatial = &x[2..];
    let kernel = &wshape[2..];
    let ones = vec![1; rank - 2];
    let stride = ctx.attrs.sizes("strides")?.unwrap_or_else(|| ones.clone());
    let dilation = ctx
        .attrs
        .sizes("dilations")?
        .unwrap_or_else(|| ones.clone());
    if let Some(ks) = ctx.attrs.sizes("kernel_shape")? {
        if ks != kernel {
            return Err(Error::InvalidModel(format!(
                "kernel_shape {ks:?} disagrees with weights {wshape:?}"
            )));
        }
    }
    if stride.len() != rank - 2
        || dilation.len() != rank - 2
        || kernel.contains(&0)
        || stride.contains(&0)
        || dilation.contains(&0)
    {
        return Err(Error::InvalidModel(format!(
            "strides {stride:?} / dilations {dilation:?} / kernel {kernel:?} do not fit a {}-D conv",
            rank - 2
        )));
    }
    let pads = resolve_pads(ctx, spatial, kernel, &stride, &dilation)?;
    let groups = usize::try_from(ctx.attrs.int("group", 1))
        .map_err(|_| Error::InvalidModel("negative group".into()))?;
    let (filters, channels) = (wshape[0], x[1]);
    if groups == 0 || wshape[1].checked_mul(groups) != Some(channels) {
        return Err(Error::InvalidModel(format!(
            "weights {wshape:?} with {groups} groups do not fit {channels} input channels"
        )));
    }
    let (height, width, k, s, d, p) = if rank == 4 {
        (
            spatial[0],
            spatial[1],
            [kernel[0], kernel[1]],
            [stride[0], stride[1]],
            [dilation[0], dilation[1]],
            [pads[0].0, pads[1].0, pads[0].1, pads[1].1],
        )
    } else {
        (
            1,
            spatial[0],
            [1, kernel[0]],
            [1, stride[0]],
            [1, dilation[0]],
            [0, pads[0].0, 0, pads[0].1],
        )
    };
    let spec = ConvSpec::new(channels, height, width, filters, k)
        .with_batch(x[0])
        .with_stride(s)
        .with_dilation(d)
        .with_padding(p)
        .with_groups(groups)
        .with_bias(true);
    spec.validate()?;
    let bias = read_bias(b, filters)?;
    let [oh, ow] = spec.output_size();
    let out_shape = if rank == 4 {
        vec![x[0], filters, oh, ow]
    } else {
        vec![x[0], filters, ow]
    };
    Ok(ConvDraft {
        spec,
        weights: weights.to_vec(),
        bias,
        out_shape,
    })
}

/// What the fusion pass folded into a convolution: the per-channel affine maps after it
/// (BatchNormalization, Mul and Add by constants), in order, then the tensor of a residual
/// connection added to it, then an activation.
#[derive(Default)]
pub(crate) struct ConvTail {
    pub affines: Vec<BatchNorm>,
    /// The tensor added after the affine maps (a Conv's only).
    pub residual: Option<String>,
    pub activation: Option<Activation>,
}

/// Plans a Conv or ConvTranspose node `op`, with its [`ConvTail`] folded in.
pub(crate) fn plan(
    b: &mut Builder,
    ctx: &Ctx,
    op: &str,
    inputs: &[Option<Value>],
) -> Result<Value> {
    let x = required(inputs, 0, op, "an input")?;
    let w = required(inputs, 1, op, "weights")?;
    let bias = inputs.get(2).and_then(Option::as_ref);
    let mut draft: Box<dyn Draft> = if op == "ConvTranspose" {
        Box::new(conv_transpose::draft(ctx, x.shape(), w, bias)?)
    } else {
        Box::new(draft(ctx, x.shape(), w, bias)?)
    };
    if let Some(tail) = ctx.tail {
        for affine in &tail.affines {
            if affine.scale.len() != draft.filters() {
                return Err(Error::InvalidModel(format!(
                    "a per-channel map of {} channels after {} filters",
                    affine.scale.len(),
                    draft.filters()
                )));
            }
            draft.fold_batch_norm(affine);
        }
    }
    let activation = ctx.tail.and_then(|t| t.activation);
    match ctx.residual {
        Some(r) if r.shape() != draft.out_shape() => {
            // A residual that broadcasts: the Add (and the activation) is a pass of its own.
            let y = draft.finish(b, x, None)?;
            b.begin_node(b.node().to_string(), "Add");
            let add = Ctx {
                activation,
                tail: None,
                residual: None,
                ..*ctx
            };
            elementwise::plan_binary(b, &add, "Add", &y, r)
        }
        residual => {
            if let Some(activation) = activation {
                draft.fuse(activation);
            }
            draft.finish(b, x, residual)
        }
    }
}

/// A convolution (plain or transposed) read from its node, into which the planner folds
/// the per-channel affine maps and the activation that follow it.
pub(super) trait Draft {
    /// Output channels.
    fn filters(&self) -> usize;
    /// The output's logical shape.
    fn out_shape(&self) -> &[usize];
    /// Folds `y = x * scale[m] + shift[m]` (a BatchNormalization) into the weights and bias.
    fn fold_batch_norm(&mut self, bn: &BatchNorm);
    /// Applies `activation` to the output as it is written.
    fn fuse(&mut self, activation: Activation);
    /// Packs the weights and adds the step, reading `input`, and adding `residual` (of the
    /// output's shape) before the activation when there is one.
    fn finish(
        self: Box<Self>,
        b: &mut Builder,
        input: &Value,
        residual: Option<&Value>,
    ) -> Result<Value>;
}

impl Draft for ConvDraft {
    fn filters(&self) -> usize {
        self.spec.filters
    }

    fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }

    fn fold_batch_norm(&mut self, bn: &BatchNorm) {
        let per_filter = self.weights.len() / self.spec.filters;
        for (m, filter) in self.weights.chunks_exact_mut(per_filter).enumerate() {
            filter.iter_mut().for_each(|w| *w *= bn.scale[m]);
            self.bias[m] = self.bias[m] * bn.scale[m] + bn.shift[m];
        }
    }

    fn fuse(&mut self, activation: Activation) {
        self.spec.activation = activation;
    }

    /// Prepares the methods the policy may pick and adds the step.
    fn finish(
        self: Box<Self>,
        b: &mut Builder,
        input: &Value,
        residual: Option<&Value>,
    ) -> Result<Value> {
        let x = b.in_layout(input, Layout::ChannelsLast)?;
        let residual = residual
            .map(|r| b.in_layout(r, Layout::ChannelsLast))
            .transpose()?;
        let zeros = WeightZeros::of(&self.spec, &self.weights);
        let nonzeros = self.weights.iter().filter(|&&w| w != 0.0).count();
        let prepared = methods_to_prepare(b, &self.spec, zeros, nonzeros)?;
        let methods =
            Conv::prepare_methods(&self.spec, &self.weights, Some(&self.bias), &prepared)?;
        let methods = b.memory.fit_scratch(methods)?;
        let kept = methods.iter().map(Conv::method).collect::<Vec<_>>();
        let choice = b.selection.choice(&self.spec, zeros, &kept);
        let counts_zeros = self.spec.activation != Activation::None;
        let step = ConvStep::new(methods, choice, zeros, nonzeros, counts_zeros);
        let mut inputs = vec![b.src(&x)];
        inputs.extend(residual.map(|r| b.src(&r)));
        b.push(
            inputs,
            self.out_shape,
            Layout::ChannelsLast,
            StepOp::Conv(Box::new(step)),
        )
    }
}

/// The methods to prepare for a convolution with `nonzeros` non-zero weights, their packed
/// weights accounted for: those the selection may pick, or in a lean plan the one of them
/// that packs the fewest bytes (a pruned layer's sparse weights, say).
fn methods_to_prepare(
    b: &mut Builder,
    spec: &ConvSpec,
    weights: WeightZeros,
    nonzeros: usize,
) -> Result<Vec<Method>> {
    let mut methods = b.selection.methods(spec, weights);
    if b.selection.lean && methods.len() > 1 {
        let leanest = methods
            .iter()
            .copied()
            .min_by_key(|m| m.prepared_bytes(spec, nonzeros, weights))
            .expect("more than one method");
        let note = format!(
            "node '{}': prepared {leanest} alone, of {}, to fit the memory budget",
            b.node(),
            Method::names(&methods)
        );
        b.memory.notes.push(note);
        methods = vec![leanest];
    }
    let bytes = Method::prepared_bytes_of(&methods, spec, nonzeros, weights);
    let what = format!("preparing {}", Method::names(&methods));
    b.memory.account_prepared(what, bytes)?;
    Ok(methods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::policy::Selection;

    /// A lean plan prepares, of a pruned layer's methods, the one with the smallest packed
    /// weights, and says so; a plain one prepares all of them, or refuses the layer.
    #[test]
    fn a_lean_plan_prepares_the_leanest_method() {
        let spec = ConvSpec::new(512, 30, 30, 512, [3, 3]).with_padding([1; 4]);
        let nonzeros = spec.weight_len().unwrap() / 10;
        let pruned = WeightZeros::unstructured(0.9);
        let auto = Selection::default();
        let methods = auto.methods(&spec, pruned);
        assert!(methods.len() > 1, "{methods:?}");
        let bytes = |m: Method| m.prepared_bytes(&spec, nonzeros, pruned);
        let leanest = methods.iter().copied().min_by_key(|&m| bytes(m)).unwrap();
        let all = Method::prepared_bytes_of(&methods, &spec, nonzeros, pruned);
        assert!(bytes(leanest) < all);

        let mut plain = Builder::new(auto, all);
        assert_eq!(
            methods_to_prepare(&mut plain, &spec, pruned, nonzeros).unwrap(),
            methods
        );
        assert_eq!(plain.memory.prepared_bytes, all);
        assert!(plain.memory.notes.is_empty());
        let mut short = Builder::new(auto, all - 1);
        assert!(methods_to_prepare(&mut short, &spec, pruned, nonzeros).is_err());

        let lean = Selection { lean: true, ..auto };
        let mut thin = Builder::new(lean, bytes(leanest));
        assert_eq!(
            methods_to_prepare(&mut thin, &spec, pruned, nonzeros).unwrap(),
            [leanest]
        );
        assert_eq!(thin.memory.prepared_bytes, bytes(leanest));
        assert_eq!(thin.memory.notes.len(), 1);
        let mut over = Builder::new(lean, bytes(leanest) - 1);
        assert!(methods_to_prepare(&mut over, &spec, pruned, nonzeros).is_err());
    }
}
