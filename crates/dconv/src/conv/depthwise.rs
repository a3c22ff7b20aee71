//! The dense method's path for depthwise layers (one input channel per group, any channel
//! multiplier), the 3x3 and 5x5 convolutions between the 1x1 layers of MobileNets,
//! EfficientNets and ShuffleNets. A GEMM per group would multiply a matrix of one column
//! (MobileNets run at a few hundred MFLOP/s that way); here each output row sums its taps
//! over vectors of channels straight from the NHWC input ([`DepthwiseConv`]) and finishes
//! the row (bias, activation, zero count) in registers. Only a channel multiplier above 1
//! costs a copy: each input channel repeated for its outputs.

use super::run_loop::over_images;
use super::{ConvSpec, RunEpilogue, Timing, Workspace};
use crate::cache::CacheSizes;
use crate::kernels::depthwise::{DepthwiseConv, DepthwiseRow, TILE_PIXELS};
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

    /// Computes `output` from `input` (whole batches, NHWC): a band of output rows per
    /// thread, each band one block of channels at a time ([`block_channels`]).
    pub fn run(
        &self,
        spec: &ConvSpec,
        epilogue: RunEpilogue,
        input: &[f32],
        (output, pitch): (&mut [f32], usize),
        ws: &mut Workspace,
    ) -> Timing {
        let expanded = ws.floats(expanded_len(spec));
        let row_len = spec.out_width() * pitch;
        let band_rows = spec.output_size()[0]
            .div_ceil(rayon::current_num_threads())
            .max(1);
        let block = block_channels(spec, &CacheSizes::detect());
        let curve = epilogue.curve();
        let pixels_outer = pixels_outer(spec, &CacheSizes::detect());
        over_images(spec, (input, (output, pitch)), |image, out, clock| {
            let image = if expanded.is_empty() {
                image
            } else {
                clock.convert(|| expand(spec, image, expanded));
                &*expanded
            };
            let zeros = clock.multiply(|| {
                out.par_chunks_mut(band_rows * row_len)
                    .enumerate()
                    .map(|(band, out)| {
                        let mut zeros = 0;
                        for m0 in (0..spec.filters).step_by(block) {
                            for (i, out_row) in out.chunks_mut(row_len).enumerate() {
                                let oy = band * band_rows + i;
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
                                    bias: epilogue.bias(),
                                    curve,
                                    block: m0..(m0 + block).min(spec.filters),
                                    pitch,
                                    pixels_outer,
                                };
                                zeros += self.kernel.row(&row, out_row);
                            }
                        }
                        // A residual comes only with an output of its own, whose rows are
                        // one run.
                        epilogue
                            .add_residual(out, row_len, row_len)
                            .unwrap_or(zeros)
                    })
                    .sum()
            });
            clock.count_zeros(zeros);
        })
    }
}

/// Channels per block of a band's sweep: where the image fits half of L2, a multiple of 32
/// (the kernel's block of two AVX-512 vectors) whose input rows under one kernel window fit
/// half of L1, so that each input row comes from L2 once per block instead of once per
/// output row that reads it (5x5 on 672 channels at 14x14: 12 % faster). A larger image
/// is swept in whole rows of all its channels: swept once per block, it would come from
/// memory each time (3x3 on 144 channels at 56x56: 5-10 % slower blocked).
fn block_channels(spec: &ConvSpec, cache: &CacheSizes) -> usize {
    let image = saturating_product(&[4, spec.height, spec.width, spec.filters]);
    if image > cache.l2_share(1, 2) {
        return spec.filters.max(1);
    }
    let rows = (spec.kernel[0] - 1) * spec.dilation[0] + 1;
    let per_channel = 4 * rows * spec.width;
    (cache.l1d_share(1, 2) / per_channel.max(1) / 32 * 32).max(32)
}

/// Whether the kernel takes each tile of pixels over all channels before the next tile:
/// where the layer strides down the image and a tile's window of all channels fits half of
/// L1 beside its weights. Striding by 2, each output row reads two input rows that no row
/// before it read, from L3 or memory; swept a vector of channels at a time, they come in one
/// strided pass per vector, where a tile over all channels reads each pixel's channels in one
/// run. On a Zen 3, EfficientNet-Lite0's 96 channels 3x3 s2 at 112 x 112 went 0.46 -> 0.30
/// ms in the model (medians of 9 alternated rounds). At stride 1 two of the three rows stay in L2 from the row before, and
/// the sweep, which keeps each vector's weights in registers, was 5-15 % faster on 144
/// channels 3x3 at 56 x 56 and on 5x5 over 480 and 672 at 14 x 14 (3x3 over 480 at 14 x 14
/// was 15 % slower).
fn pixels_outer(spec: &ConvSpec, cache: &CacheSizes) -> bool {
    let [r, s] = spec.kernel;
    let rows = (r - 1) * spec.dilation[0] + 1;
    let columns = (TILE_PIXELS - 1) * spec.stride[1] + (s - 1) * spec.dilation[1] + 1;
    let window = saturating_product(&[4, spec.filters, rows * columns + r * s]);
    spec.stride[0] > 1 && window <= cache.l1d_share(1, 2)
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
