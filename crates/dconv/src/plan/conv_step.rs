//! [`ConvStep`]: a convolution as a plan runs it, with every method its policy may pick
//! prepared, choosing one per run from the input's sparsity.

use super::kernel::ELEMENTS_PER_TASK;
use super::policy::{Choice, Selection};
use crate::conv::select::WeightZeros;
use crate::conv::{Conv, Method, Workspace};
use crate::error::{Error, Result};
use crate::kernels::multiversion::vectorized;
use crate::kernels::Isa;
use rayon::prelude::*;

/// A convolution at run time: every method its policy may pick, prepared.
pub(crate) struct ConvStep {
    methods: Vec<Conv>,
    choice: Choice,
    weights: WeightZeros,
    /// Non-zero weights, which the sparse-weight method's packed size follows.
    nonzeros: usize,
    /// Whether a fused ReLU makes the output sparse enough to be worth counting.
    counts_zeros: bool,
}

impl ConvStep {
    pub fn new(
        methods: Vec<Conv>,
        choice: Choice,
        weights: WeightZeros,
        nonzeros: usize,
        counts_zeros: bool,
    ) -> Self {
        ConvStep {
            methods,
            choice,
            weights,
            nonzeros,
            counts_zeros,
        }
    }

    /// Runs on channels-last `input`, whose fraction of zeros is `input_sparsity` when its
    /// producer counted them, adding `residual` (channels-last, the output's shape) before
    /// the activation when the layer has one, into output pixels `pitch` floats apart (see
    /// [`Conv::run_into`]); returns the method used and the output's fraction of zeros when
    /// counted.
    pub fn run(
        &self,
        (input, input_sparsity): (&[f32], Option<f64>),
        residual: Option<&[f32]>,
        (output, pitch): (&mut [f32], usize),
        ws: &mut Workspace,
    ) -> Result<ConvRun> {
        let method = self.choose(input, input_sparsity);
        let conv = self.prepared(method)?;
        let timing = conv.run_into(input, residual, (&mut *output, pitch), ws)?;
        let elements = conv.spec().output_len()?;
        // Pixels of its own are counted in one pass; pixels between another layer's channels
        // are left uncounted.
        let own = pitch == conv.spec().filters;
        Ok(ConvRun {
            method,
            // The epilogue counted the zeros as it wrote them, and the count is passed on
            // whatever the next layer does with it (it costs nothing). A method without an
            // epilogue pass leaves them to count here, when a fused ReLU makes them and auto
            // picks by them.
            output_sparsity: timing
                .output_zeros
                .map(|z| z as f64 / elements.max(1) as f64)
                .or_else(|| {
                    (own && self.counts_zeros && self.choice.needs_sparsity())
                        .then(|| zero_fraction(output))
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

    /// Output channels.
    pub fn filters(&self) -> usize {
        self.methods.first().map_or(0, |c| c.spec().filters)
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
            Method::prepared_bytes_of(&kept, conv.spec(), self.nonzeros, self.weights)
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
            self.choice = selection.choice(&spec, self.weights, &kept);
        }
        dropped
    }

    /// Fraction of zero weights (after BatchNormalization folding).
    pub fn weight_sparsity(&self) -> f64 {
        self.weights.sparsity
    }

    /// What the cost model knows of the weights' zeros.
    pub fn weight_zeros(&self) -> WeightZeros {
        self.weights
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

/// Fraction of exactly-zero elements: a pass over an input no producer counted, on the
/// pool's threads for a large one, each chunk at the vector width of this CPU.
pub(crate) fn zero_fraction(data: &[f32]) -> f64 {
    let isa = Isa::detect();
    let zeros: usize = if data.len() > ELEMENTS_PER_TASK {
        data.par_chunks(ELEMENTS_PER_TASK)
            .map(|chunk| count_zeros(isa, chunk))
            .sum()
    } else {
        count_zeros(isa, data)
    };
    zeros as f64 / data.len().max(1) as f64
}

/// Exact zeros of `data` (at most [`ELEMENTS_PER_TASK`] long, so that 32-bit lanes never
/// overflow), counted by a loop compiled for `isa`.
fn count_zeros(isa: Isa, data: &[f32]) -> usize {
    vectorized(
        isa,
        #[inline(always)]
        || data.iter().fold(0u32, |n, &v| n + (v == 0.0) as u32) as usize,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count is exact on inputs split over chunks and threads and on one below a chunk,
    /// with zeros of both signs and values that are not zero however small.
    #[test]
    fn zero_fraction_is_exact() {
        for len in [0, 7, ELEMENTS_PER_TASK - 1, 3 * ELEMENTS_PER_TASK + 5] {
            let data: Vec<f32> = (0..len)
                .map(|i| match i % 5 {
                    0 => 0.0,
                    1 => -0.0,
                    2 => f32::MIN_POSITIVE,
                    _ => i as f32,
                })
                .collect();
            let zeros = (0..len).filter(|i| i % 5 < 2).count();
            assert_eq!(
                zero_fraction(&data),
                zeros as f64 / len.max(1) as f64,
                "{len}"
            );
        }
    }
}
