//! VGG-16 (Simonyan & Zisserman, configuration D) at a 224 x 224 input: thirteen 3 x 3
//! convolutions with padding 1, in five blocks separated by 2 x 2 max-pooling.
//!
//! The input sparsities are those measured on real photographs with a trained VGG-16
//! (the one `scripts/fetch-models` fetches): 0-15 % in blocks 1-2, 30-48 % in block 3,
//! 56-65 % in block 4 and 70-85 % in block 5.

use super::ConvLayer;
use crate::conv::{Activation, ConvSpec, Padding};

/// A square 3 x 3 convolution with padding 1, batch 1, no bias: VGG's only layer shape.
const fn conv3x3(channels: usize, size: usize, filters: usize) -> ConvSpec {
    ConvSpec {
        batch: 1,
        channels,
        height: size,
        width: size,
        filters,
        kernel: [3, 3],
        stride: [1, 1],
        dilation: [1, 1],
        padding: Padding {
            top: 1,
            left: 1,
            bottom: 1,
            right: 1,
        },
        groups: 1,
        bias: false,
        activation: Activation::None,
    }
}

const fn layer(
    name: &'static str,
    channels: usize,
    size: usize,
    filters: usize,
    input_sparsity: f64,
) -> ConvLayer {
    ConvLayer {
        name,
        spec: conv3x3(channels, size, filters),
        input_sparsity,
    }
}

/// The thirteen convolutions of VGG-16, in order.
pub const CONV_LAYERS: [ConvLayer; 13] = [
    layer("conv1_1", 3, 224, 64, 0.00),
    layer("conv1_2", 64, 224, 64, 0.10),
    layer("conv2_1", 64, 112, 128, 0.10),
    layer("conv2_2", 128, 112, 128, 0.15),
    layer("conv3_1", 128, 56, 256, 0.30),
    layer("conv3_2", 256, 56, 256, 0.40),
    layer("conv3_3", 256, 56, 256, 0.48),
    layer("conv4_1", 256, 28, 512, 0.56),
    layer("conv4_2", 512, 28, 512, 0.60),
    layer("conv4_3", 512, 28, 512, 0.65),
    layer("conv5_1", 512, 14, 512, 0.70),
    layer("conv5_2", 512, 14, 512, 0.78),
    layer("conv5_3", 512, 14, 512, 0.85),
];
