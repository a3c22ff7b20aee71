//! Where a tensor's elements sit in memory. ONNX shapes are logical (`[N, C, H, W]`); inside
//! the engine the activations of convolutions and pools are stored channels-last
//! (`[N, H, W, C]`), and converted only where an operator needs ONNX's own order.

/// The storage order of a tensor of rank >= 3 whose logical shape is `[N, C, spatial...]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Row-major in the logical order.
    Plain,
    /// Row-major in the order `[N, spatial..., C]`.
    ChannelsLast,
}

impl Layout {
    /// The logical axis held by each storage axis.
    pub fn storage_order(self, rank: usize) -> Vec<usize> {
        match self {
            Layout::ChannelsLast if rank >= 3 => {
                let mut order = vec![0];
                order.extend(2..rank);
                order.push(1);
                order
            }
            _ => (0..rank).collect(),
        }
    }

    /// The stride, in elements, of each logical axis of a tensor of `shape` stored this way.
    pub fn strides(self, shape: &[usize]) -> Vec<isize> {
        strides_in_order(shape, &self.storage_order(shape.len()))
    }
}

/// The stride, in elements, of each axis of a tensor of `shape` whose axes are stored in
/// `order`, the outermost first.
pub(crate) fn strides_in_order(shape: &[usize], order: &[usize]) -> Vec<isize> {
    let mut strides = vec![0isize; shape.len()];
    let mut step = 1isize;
    for &axis in order.iter().rev() {
        strides[axis] = step;
        step *= shape[axis] as isize;
    }
    strides
}

/// Row-major strides of `shape`.
pub(crate) fn plain_strides(shape: &[usize]) -> Vec<isize> {
    Layout::Plain.strides(shape)
}
