//! Conv: ONNX attributes to a [`ConvSpec`], BatchNormalization folding, activation fusion,
//! and the run-time step that picks a prepared method per run from the input's sparsity.

use super::normalize::BatchNorm;
use super::{need_const_f32, Ctx};
use crate::conv::{Activation, Conv, ConvSpec, Method, Workspace};
use crate::error::{Error, Result};
use crate::runtime::builder::{Builder, StepOp, Value};
use crate::runtime::layout::Layout;
use crate::runtime::policy::{Choice, Selection};

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

/// A convolution (plain or transposed) read from its node, into which the planner folds
/// the per-channel affine maps and the activation that follow it.
pub(crate) trait Draft {
    /// Output channels.
    fn filters(&self) -> usize;
    /// Folds `y = x * scale[m] + shift[m]` (a BatchNormalization) into the weights and bias.
    fn fold_batch_norm(&mut self, bn: &BatchNorm);
    /// Applies `activation` to the output as it is written.
    fn fuse(&mut self, activation: Activation);
    /// Packs the weights and adds the step, reading `input`.
    fn finish(self: Box<Self>, b: &mut Builder, input: &Value) -> Result<Value>;
}

impl Draft for ConvDraft {
    fn filters(&self) -> usize {
        self.spec.filters
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
    fn finish(self: Box<Self>, b: &mut Builder, input: &Value) -> Result<Value> {
        let x = b.in_layout(input, Layout::ChannelsLast)?;
        let zeros = self.weights.iter().filter(|&&w| w == 0.0).count();
        let weight_sparsity = zeros as f64 / self.weights.len().max(1) as f64;
        let nonzeros = self.weights.len() - zeros;
        let prepared = b.account_methods(&self.spec, weight_sparsity, nonzeros)?;
        let methods =
            Conv::prepare_methods(&self.spec, &self.weights, Some(&self.bias), &prepared)?;
        let methods = b.fit_scratch(methods)?;
        let kept = methods.iter().map(Conv::method).collect::<Vec<_>>();
        let choice = b.selection.choice(&self.spec, weight_sparsity, &kept);
        let step = ConvStep {
            methods,
            choice,
            weight_sparsity,
            nonzeros,
            counts_zeros: self.spec.activation != Activation::None,
        };
        let src = b.src(&x);
        b.push(
            vec![src],
            self.out_shape,
            Layout::ChannelsLast,
            StepOp::Conv(Box::new(step)),
        )
    }
}

/// A convolution at run time: every method its policy may pick, prepared.
pub(crate) struct ConvStep {
    methods: Vec<Conv>,
    choice: Choice,
    weight_sparsity: f64,
    /// Non-zero weights, which the sparse-weight method's packed size follows.
    nonzeros: usize,
    /// Whether a fused ReLU makes the output sparse enough to be worth counting.
    counts_zeros: bool,
}

impl ConvStep {
    /// Runs on channels-last `input`, whose fraction of zeros is `input_sparsity` when its
    /// producer counted them; returns the method used and the output's fraction of zeros
    /// when counted.
    pub fn run(
        &self,
        input: &[f32],
        input_sparsity: Option<f64>,
        output: &mut [f32],
        ws: &mut Workspace,
    ) -> Result<ConvRun> {
        let method = self.choose(input, input_sparsity);
        let timing = self.prepared(method)?.run(input, output, ws)?;
        Ok(ConvRun {
            method,
            // The fused activation counted the zeros as it wrote them; a method without an
            // epilogue pass leaves them to count here.
            output_sparsity: (self.counts_zeros && self.choice.needs_sparsity()).then(|| {
                timing.output_zeros.map_or_else(
                    || zero_fraction(output),
                    |z| z as f64 / output.len().max(1) as f64,
                )
            }),
        })
    }

    /// The method a run on `input` uses (its sparsity counted here when not known).
    pub fn choose(&self, input: &[f32], input_sparsity: Option<f64>) -> Method {
        if self.choice.needs_sparsity() {
            self.choice
                .choose(input_sparsity.unwrap_or_else(|| zero_fraction(input)))
        } else {
            self.choice.choose(0.0)
        }
    }

    /// The prepared convolution of `method`.
    pub fn prepared(&self, method: Method) -> Result<&Conv> {
        self.methods
            .iter()
            .find(|c| c.method() == method)
            .ok_or_else(|| Error::Unsupported(format!("method {method} was not prepared")))
    }

    /// Every prepared convolution.
    pub fn convs(&self) -> &[Conv] {
        &self.methods
    }

    /// The prepared methods kept when those whose workspace is over `limit` bytes go: a
    /// forced method always stays, and under `auto` at least the one of least workspace.
    pub fn kept_within(&self, limit: usize) -> impl Iterator<Item = &Conv> {
        let forced = match self.choice {
            Choice::Fixed(m) => Some(m),
            Choice::Cheapest(_) => None,
        };
        let stays = move |c: &Conv| c.scratch_bytes() <= limit || Some(c.method()) == forced;
        let leanest = self
            .methods
            .iter()
            .min_by_key(|c| c.scratch_bytes())
            .map(Conv::method);
        let none_stays = !self.methods.iter().any(stays);
        self.methods
            .iter()
            .filter(move |c| stays(c) || (none_stays && Some(c.method()) == leanest))
    }

    /// At most how many bytes the weights of [`kept_within`](Self::kept_within)`(limit)` hold
    /// packed.
    pub fn prepared_bytes_within(&self, limit: usize) -> usize {
        let kept: Vec<Method> = self.kept_within(limit).map(Conv::method).collect();
        self.methods.first().map_or(0, |conv| {
            Method::prepared_bytes_of(&kept, conv.spec(), self.nonzeros)
        })
    }

    /// Keeps only [`kept_within`](Self::kept_within)`(limit)` (a tight memory budget cannot
    /// hold the others' workspace) and picks among them from then on; returns the methods
    /// dropped.
    pub fn keep_within(&mut self, limit: usize, selection: &Selection) -> Vec<Method> {
        let kept: Vec<Method> = self.kept_within(limit).map(Conv::method).collect();
        let dropped: Vec<Method> = self.methods().filter(|m| !kept.contains(m)).collect();
        if dropped.is_empty() {
            return dropped;
        }
        self.methods.retain(|c| kept.contains(&c.method()));
        if let Choice::Cheapest(_) = self.choice {
            let spec = *self.methods[0].spec();
            self.choice = selection.choice(&spec, self.weight_sparsity, &kept);
        }
        dropped
    }

    /// Fraction of zero weights (after BatchNormalization folding).
    pub fn weight_sparsity(&self) -> f64 {
        self.weight_sparsity
    }

    /// The methods prepared for this convolution.
    pub fn methods(&self) -> impl Iterator<Item = Method> + '_ {
        self.methods.iter().map(Conv::method)
    }

    /// Multiply-adds of the dense convolution (0 if they overflow 64 bits).
    pub fn macs(&self) -> u64 {
        self.methods
            .first()
            .and_then(|c| c.spec().macs().ok())
            .unwrap_or(0)
    }
}

/// What one run of a convolution did.
pub(crate) struct ConvRun {
    pub method: Method,
    /// The output's fraction of zeros, when the fused activation counted them.
    pub output_sparsity: Option<f64>,
}

/// Fraction of exactly-zero elements.
pub(crate) fn zero_fraction(data: &[f32]) -> f64 {
    let zeros = data.iter().filter(|&&v| v == 0.0).count();
    zeros as f64 / data.len().max(1) as f64
}
