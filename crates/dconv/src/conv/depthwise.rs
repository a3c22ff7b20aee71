//! The dense method's path for depthwise layers (one input channel per group, any channel
//! multiplier), the 3x3 and 5x5 convolutions between the 1x1 layers of MobileNets,
//! EfficientNets and ShuffleNets. A GEMM per group would multiply a matrix of one column
//! (MobileNets run at a few hundred MFLOP/s that way); here each output row sums its taps
//! over vectors of channels straight from the NHWC input ([`DepthwiseConv`]) and finishes
//! the row (bias, activation, zero count) in registers. Only a channel multiplier above 1
//! costs a copy: each input channel repeated for its outputs.

use super::run_loop::over_images;
use super::{ConvSpec, Epilogue, Timing, Workspace};
use crate::kernels::depthwise::{DepthwiseConv, DepthwiseRow};
use crate::kernels::Isa;
use crate::limits::saturating_product;
use rayon::prelude::*;

/// Bytes of expanded input beyond which a layer keeps the GEMM path, whose scratch is
/// bounded.
const MAX_EXPANDED_BYTES: usize = 256 << 20;

/// Floats of one image with its channels expanded to the outputs' (none when each input
/// channel has one output; saturating: sizes come from model files).
pub(crate) fn expanded_len(spec: &ConvSpec) -> usize {
    if spec.filters_per_group() == 1 {
        return 0;
    }
    saturating_product(&[spec.height, spec.width, spec.filters])
}

/// Whether `spec` takes this path: several groups of one input channel each.
pub(crate) fn applies(spec: &ConvSpec) -> bool {
    spec.groups > 1
        && spec.channels_per_group() == 1
        && expanded_len(spec).saturating_mul(4) <= MAX_EXPANDED_BYTES
}

/// A depthwise layer's weights, packed tap by tap.
pub(crate) struct Depthwise {
    kernel: DepthwiseConv,
    /// `[R * S][M]`.
    weights: Vec<f32>,
}

impl Depthwise {
    /// Packs ONNX `[M][1][R][S]` weights of a validated `spec` that [`applies`].
    pub fn new(spec: &ConvSpec, weights: &[f32], isa: Isa) -> Self {
        let taps = spec.kernel[0] * spec.kernel[1];
        let m_len = spec.filters;
        let mut packed = vec![0.0; taps * m_len];
        for (m, filter) in weights.chunks_exact(taps).enumerate() {
            for (tap, &w) in filter.iter().enumerate() {
                packed[tap * m_len + m] = w;
            }
        }
        Depthwise {
            kernel: DepthwiseConv::for_isa(isa),
            weights: packed,
        }
    }

    /// Floats of packed weights it keeps.
    #[cfg(test)]
    pub fn weights_len(&self) -> usize {
        self.weights.len()
    }

    /// Computes `output` from `input` (whole batches, NHWC), output rows in parallel.
    pub fn run(
        &self,
        spec: &ConvSpec,
        epilogue: &Epilogue,
        input: &[f32],
        output: &mut [f32],
        ws: &mut Workspace,
    ) -> Timing {
        let expanded = ws.floats(expanded_len(spec));
        let row_len = spec.out_width() * spec.filters;
        let curve = epilogue.curve();
        over_images(spec, (input, output), |image, out, clock| {
            let image = if expanded.is_empty() {
                image
            } else {
                clock.convert(|| expand(spec, image, expanded));
                &*expanded
            };
            let zeros = clock.multiply(|| {
                out.par_chunks_mut(row_len)
                    .enumerate()
                    .map(|(oy, out_row)| {
                        let row = DepthwiseRow {
                            image,
                            height: spec.height,
                            width: spec.width,
                            channels: spec.filters,
                            kernel: spec.kernel,
                            top: (oy * spec.stride[0]) as isize - spec.padding.top as isize,
                            stride: spec.stride[1],
                            dilation: spec.dilation,
                            left: spec.padding.left,
                            weights: &self.weights,
                            bias: &epilogue.bias,
                            curve,
                        };
                        self.kernel.row(&row, out_row)
                    })
                    .sum()
            });
            clock.count_zeros(zeros);
        })
    }
}

/// Copies one NHWC image into `expanded`, `[H][W][M]`: output channel `m` finds its input
/// channel `m / multiplier` at index `m`.
fn expand(spec: &ConvSpec, image: &[f32], expanded: &mut [f32]) {
    let multiplier = spec.filters_per_group();
    for (src, dst) in image
        .chunks_exact(spec.channels)
        .zip(expanded.chunks_exact_mut(spec.filters))
    {
        for (channel, outputs) in src.iter().zip(dst.chunks_exact_mut(multiplier)) {
            outputs.fill(*channel);
        }
    }
}
