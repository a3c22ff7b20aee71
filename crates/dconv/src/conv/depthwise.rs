//! The dense method's path for depthwise layers (one input channel per group, any channel
//! multiplier), the 3x3 and 5x5 convolutions between the 1x1 layers of MobileNets,
//! EfficientNets and ShuffleNets. A GEMM per group would multiply a matrix of one column
//! (MobileNets run at a few hundred MFLOP/s that way); here each image is padded once into
//! `[PH][PW][M]`, each output channel's input channel copied to its own index, and each
//! output row sums its taps over vectors of channels ([`DepthwiseConv`]), then finishes the
//! row (bias, activation, zero count) while it is in cache.

use super::im2col::{over_padded_images, pad_rows};
use super::{ConvSpec, Epilogue, Timing, Workspace};
use crate::kernels::depthwise::{DepthwiseConv, DepthwiseRow};
use crate::kernels::Isa;
use crate::limits::saturating_product;

/// Bytes of padded input beyond which a layer keeps the GEMM path, whose scratch is bounded
/// (a padding far wider than the image, say).
const MAX_PADDED_BYTES: usize = 256 << 20;

/// Floats of one image padded (and its channels expanded to the outputs') for `spec`
/// (saturating: sizes come from model files).
pub(crate) fn padded_len(spec: &ConvSpec) -> usize {
    let p = &spec.padding;
    saturating_product(&[
        spec.height.saturating_add(p.top).saturating_add(p.bottom),
        spec.width.saturating_add(p.left).saturating_add(p.right),
        spec.filters,
    ])
}

/// Whether `spec` takes this path: several groups of one input channel each.
pub(crate) fn applies(spec: &ConvSpec) -> bool {
    spec.groups > 1
        && spec.channels_per_group() == 1
        && padded_len(spec).saturating_mul(4) <= MAX_PADDED_BYTES
}

/// A depthwise layer's weights, packed tap by tap.
pub(crate) struct Depthwise {
    kernel: DepthwiseConv,
    /// `[R * S][M]`.
    weights: Vec<f32>,
    /// Offset of tap `r * S + s` from a window's first float in the padded image.
    taps: Vec<usize>,
    /// Floats of one padded row.
    row_len: usize,
}

impl Depthwise {
    /// Packs ONNX `[M][1][R][S]` weights of a validated `spec` that [`applies`].
    pub fn new(spec: &ConvSpec, weights: &[f32], isa: Isa) -> Self {
        let [kr, ks] = spec.kernel;
        let m_len = spec.filters;
        let taps = kr * ks;
        let mut packed = vec![0.0; taps * m_len];
        for (m, filter) in weights.chunks_exact(taps).enumerate() {
            for (tap, &w) in filter.iter().enumerate() {
                packed[tap * m_len + m] = w;
            }
        }
        let row_len = (spec.width + spec.padding.left + spec.padding.right) * m_len;
        let taps = (0..kr)
            .flat_map(|r| (0..ks).map(move |s| (r, s)))
            .map(|(r, s)| r * spec.dilation[0] * row_len + s * spec.dilation[1] * m_len)
            .collect();
        Depthwise {
            kernel: DepthwiseConv::for_isa(isa),
            weights: packed,
            taps,
            row_len,
        }
    }

    /// Floats of packed weights it keeps.
    #[cfg(test)]
    pub fn weights_len(&self) -> usize {
        self.weights.len()
    }

    /// Computes `output` from `input` (whole batches, NHWC), padding each image into the
    /// workspace's shared floats.
    pub fn run(
        &self,
        spec: &ConvSpec,
        epilogue: &Epilogue,
        input: &[f32],
        output: &mut [f32],
        ws: &mut Workspace,
    ) -> Timing {
        let m_len = spec.filters;
        over_padded_images(
            spec,
            (input, output),
            ws,
            padded_len(spec),
            |image, padded| self.pad(spec, image, padded),
            |oy, padded, out_row| {
                let row = DepthwiseRow {
                    input: padded,
                    base: oy * spec.stride[0] * self.row_len,
                    pixel_step: spec.stride[1] * m_len,
                    taps: &self.taps,
                    weights: &self.weights,
                };
                self.kernel.row(&row, m_len, out_row);
                out_row
                    .chunks_exact_mut(m_len)
                    .map(|pixel| epilogue.apply_row(pixel, 0))
                    .sum()
            },
        )
    }

    /// Pads one NHWC image into `padded`, `[PH][PW][M]`: output channel `m` finds its input
    /// channel `m / multiplier` at index `m`.
    fn pad(&self, spec: &ConvSpec, image: &[f32], padded: &mut [f32]) {
        let rows = 0..spec.height + spec.padding.top + spec.padding.bottom;
        let multiplier = spec.filters_per_group();
        if multiplier == 1 {
            return pad_rows(spec, image, rows, padded);
        }
        let (c_len, m_len, left) = (spec.channels, spec.filters, spec.padding.left);
        padded.fill(0.0);
        for (y, dst) in rows.zip(padded.chunks_exact_mut(self.row_len)) {
            let Some(iy) = spec.unpadded_row(y) else {
                continue;
            };
            let src_row = &image[iy * spec.width * c_len..][..spec.width * c_len];
            let dst_row = &mut dst[left * m_len..][..spec.width * m_len];
            for (src, dst) in src_row
                .chunks_exact(c_len)
                .zip(dst_row.chunks_exact_mut(m_len))
            {
                for (channel, outputs) in src.iter().zip(dst.chunks_exact_mut(multiplier)) {
                    outputs.fill(*channel);
                }
            }
        }
    }
}
