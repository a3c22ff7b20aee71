//! [`ConvSpec`]: the shape of one convolution, checked before anything is allocated.

use crate::error::{Error, Result};
use crate::kernels::curve::Curve;

/// The activation fused into a convolution's output.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Activation {
    #[default]
    None,
    Relu,
    /// ReLU clipped at 6 (ONNX `Clip(0, 6)`).
    Relu6,
    /// `clamp(alpha * x + beta, 0, 1)` (ONNX `HardSigmoid`).
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// `x * clamp(x / 6 + 1/2, 0, 1)` (ONNX `HardSwish`, MobileNetV3's activation).
    HardSwish,
}

impl Activation {
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        self.curve().map_or(x, |c| c.apply(x))
    }

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Activation::None => "none",
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::HardSigmoid { .. } => "hard-sigmoid",
            Activation::HardSwish => "hard-swish",
        }
    }

    /// The activation as the gated clamp the kernels apply; None for none.
    pub fn curve(self) -> Option<Curve> {
        match self {
            Activation::None => None,
            Activation::Relu => Some(Curve::clamp(0.0, f32::INFINITY)),
            Activation::Relu6 => Some(Curve::clamp(0.0, 6.0)),
            Activation::HardSigmoid { alpha, beta } => Some(Curve {
                alpha,
                beta,
                ..Curve::clamp(0.0, 1.0)
            }),
            Activation::HardSwish => Some(Curve {
                alpha: 1.0 / 6.0,
                beta: 0.5,
                lo: 0.0,
                hi: 1.0,
                gated: true,
            }),
        }
    }
}

/// Padding on the four sides of the input, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Padding {
    pub top: usize,
    pub left: usize,
    pub bottom: usize,
    pub right: usize,
}

/// One convolution: input `batch x channels x height x width` (stored NHWC), weights
/// `filters x (channels / groups) x kernel[0] x kernel[1]`, output `batch x filters x
/// out_height x out_width` (stored NHWC). A 1-D convolution is height 1 with kernel height 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvSpec {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub filters: usize,
    /// Kernel height and width (R, S).
    pub kernel: [usize; 2],
    /// Stride along height and width.
    pub stride: [usize; 2],
    /// Dilation along height and width.
    pub dilation: [usize; 2],
    pub padding: Padding,
    pub groups: usize,
    /// Whether a bias vector of length `filters` is added.
    pub bias: bool,
    pub activation: Activation,
}

impl ConvSpec {
    /// A batch-1, stride-1, unpadded, ungrouped convolution without bias; refine it with the
    /// `with_*` methods.
    pub fn new(
        channels: usize,
        height: usize,
        width: usize,
        filters: usize,
        kernel: [usize; 2],
    ) -> Self {
        ConvSpec {
            batch: 1,
            channels,
            height,
            width,
            filters,
            kernel,
            stride: [1, 1],
            dilation: [1, 1],
            padding: Padding::default(),
            groups: 1,
            bias: false,
            activation: Activation::None,
        }
    }

    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }
    pub fn with_stride(mut self, stride: [usize; 2]) -> Self {
        self.stride = stride;
        self
    }
    pub fn with_dilation(mut self, dilation: [usize; 2]) -> Self {
        self.dilation = dilation;
        self
    }
    /// Padding as `[top, left, bottom, right]`.
    pub fn with_padding(mut self, [top, left, bottom, right]: [usize; 4]) -> Self {
        self.padding = Padding {
            top,
            left,
            bottom,
            right,
        };
        self
    }
    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Checks that the convolution can be computed and that every size it implies fits in
    /// memory addresses. Every other method may assume a validated spec.
    pub fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(Error::InvalidSpec(msg));
        for (name, v) in [
            ("batch", self.batch),
            ("channels", self.channels),
            ("height", self.height),
            ("width", self.width),
            ("filters", self.filters),
            ("kernel height", self.kernel[0]),
            ("kernel width", self.kernel[1]),
            ("groups", self.groups),
        ] {
            if v == 0 {
                return invalid(format!("{name} is 0"));
            }
        }
        if self.stride.contains(&0) {
            return invalid(format!("stride {:?} has a zero", self.stride));
        }
        if self.dilation.contains(&0) {
            return invalid(format!("dilation {:?} has a zero", self.dilation));
        }
        if !self.channels.is_multiple_of(self.groups) {
            return invalid(format!(
                "groups {} do not divide channels {}",
                self.groups, self.channels
            ));
        }
        if !self.filters.is_multiple_of(self.groups) {
            return invalid(format!(
                "groups {} do not divide filters {}",
                self.groups, self.filters
            ));
        }
        let padded = self.padded_size()?;
        let extent = self.kernel_extent()?;
        for axis in 0..2 {
            if extent[axis] > padded[axis] {
                return invalid(format!(
                    "dilated kernel {}x{} is larger than the padded input {}x{}",
                    extent[0], extent[1], padded[0], padded[1]
                ));
            }
        }
        // Every buffer size, checked once here so that the methods can multiply freely.
        self.input_len()?;
        self.output_len()?;
        self.weight_len()?;
        self.lowered_len()?;
        self.macs()?;
        Ok(())
    }

    /// Height and width of the input with its padding.
    pub fn padded_size(&self) -> Result<[usize; 2]> {
        let p = &self.padding;
        let h = add(add(self.height, p.top)?, p.bottom)?;
        let w = add(add(self.width, p.left)?, p.right)?;
        Ok([h, w])
    }

    /// Height and width covered by the dilated kernel: `dilation * (kernel - 1) + 1`.
    pub fn kernel_extent(&self) -> Result<[usize; 2]> {
        let e = |a: usize| -> Result<usize> { add(mul(self.dilation[a], self.kernel[a] - 1)?, 1) };
        Ok([e(0)?, e(1)?])
    }

    /// Output height and width. Valid only for a validated spec.
    pub fn output_size(&self) -> [usize; 2] {
        let padded = self.padded_size().expect("validated spec");
        let extent = self.kernel_extent().expect("validated spec");
        [0, 1].map(|a| (padded[a] - extent[a]) / self.stride[a] + 1)
    }

    pub fn out_height(&self) -> usize {
        self.output_size()[0]
    }
    pub fn out_width(&self) -> usize {
        self.output_size()[1]
    }
    pub fn channels_per_group(&self) -> usize {
        self.channels / self.groups
    }
    pub fn filters_per_group(&self) -> usize {
        self.filters / self.groups
    }
    /// Output positions of one image: `out_height * out_width` (P of the lowered matrix).
    pub fn out_pixels(&self) -> usize {
        self.out_height() * self.out_width()
    }
    /// Columns of the lowered matrix of one group: `(channels / groups) * R * S` (K).
    pub fn lowered_cols(&self) -> usize {
        self.channels_per_group() * self.kernel[0] * self.kernel[1]
    }

    /// Elements of the NHWC input tensor.
    pub fn input_len(&self) -> Result<usize> {
        product(
            &[self.batch, self.height, self.width, self.channels],
            "input length",
        )
    }
    /// Elements of the NHWC output tensor.
    pub fn output_len(&self) -> Result<usize> {
        self.checked_output_size()
            .and_then(|[oh, ow]| product(&[self.batch, oh, ow, self.filters], "output length"))
    }
    /// Elements of the `[M][C/G][R][S]` weight tensor.
    pub fn weight_len(&self) -> Result<usize> {
        let cg = self
            .channels
            .checked_div(self.groups)
            .ok_or(Error::Overflow("weight length"))?;
        product(
            &[self.filters, cg, self.kernel[0], self.kernel[1]],
            "weight length",
        )
    }
    /// Elements of the lowered matrix of one image, all groups: `P x K x G`.
    pub fn lowered_len(&self) -> Result<usize> {
        let [oh, ow] = self.checked_output_size()?;
        product(
            &[oh, ow, self.kernel[0], self.kernel[1], self.channels],
            "lowered matrix length",
        )
    }
    /// Multiply-adds of the dense convolution, all images.
    pub fn macs(&self) -> Result<u64> {
        let [oh, ow] = self.checked_output_size()?;
        let per_out = (self.channels / self.groups.max(1)) as u64
            * self.kernel[0] as u64
            * self.kernel[1] as u64;
        [
            self.batch as u64,
            oh as u64,
            ow as u64,
            self.filters as u64,
            per_out,
        ]
        .iter()
        .try_fold(1u64, |acc, &v| acc.checked_mul(v))
        .ok_or(Error::Overflow("multiply-add count"))
    }

    fn checked_output_size(&self) -> Result<[usize; 2]> {
        let padded = self.padded_size()?;
        let extent = self.kernel_extent()?;
        let mut out = [0; 2];
        for a in 0..2 {
            let span = padded[a]
                .checked_sub(extent[a])
                .ok_or_else(|| Error::InvalidSpec("kernel larger than the padded input".into()))?;
            out[a] = span / self.stride[a].max(1) + 1;
        }
        Ok(out)
    }
}

// The error is built only on overflow: `ok_or(error)` built one and dropped it (an out-of-line
// drop, for the other variants hold strings) on every call, and `output_size` calls these
// several times per step of every run (0.7 % of ppocr_cls's run time, by perf).
fn add(a: usize, b: usize) -> Result<usize> {
    overflow_checked(a.checked_add(b))
}
fn mul(a: usize, b: usize) -> Result<usize> {
    overflow_checked(a.checked_mul(b))
}
fn overflow_checked(value: Option<usize>) -> Result<usize> {
    match value {
        Some(v) => Ok(v),
        None => Err(Error::Overflow("convolution size")),
    }
}
/// The product of `values`, or an overflow error naming `what`.
pub(super) fn product(values: &[usize], what: &'static str) -> Result<usize> {
    values
        .iter()
        .try_fold(1usize, |acc, &v| acc.checked_mul(v))
        .ok_or(Error::Overflow(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_size_follows_the_formula() {
        let spec = ConvSpec::new(3, 7, 9, 4, [3, 2])
            .with_stride([2, 3])
            .with_dilation([2, 1])
            .with_padding([1, 0, 2, 1]);
        spec.validate().unwrap();
        // (7 + 1 + 2 - 2*2 - 1) / 2 + 1 = 3 ; (9 + 0 + 1 - 1 - 1) / 3 + 1 = 3
        assert_eq!(spec.output_size(), [3, 3]);
    }

    #[test]
    fn invalid_specs_are_errors() {
        let ok = ConvSpec::new(4, 5, 5, 6, [3, 3]);
        ok.validate().unwrap();
        let cases = [
            ok.with_stride([0, 1]),
            ok.with_dilation([1, 0]),
            ok.with_groups(3),
            ConvSpec::new(4, 5, 5, 6, [3, 3]).with_groups(4),
            ConvSpec::new(4, 2, 5, 6, [3, 3]),
            ok.with_dilation([3, 1]),
            ConvSpec::new(0, 5, 5, 6, [3, 3]),
            ConvSpec::new(4, 5, 5, 6, [0, 3]),
            ok.with_batch(0),
            ConvSpec::new(usize::MAX / 2, 1 << 20, 1 << 20, 6, [1, 1]),
            ok.with_padding([usize::MAX, 0, 1, 0]),
        ];
        for case in cases {
            assert!(case.validate().is_err(), "{case:?} should be rejected");
        }
    }
}
