//! Data movement as strided copies: transpose, layout conversion, slice, concat, pad and
//! gather are all "copy these strided views into those", which also makes them work on any
//! storage layout and on integer constants alike.

use super::Kernel;

/// A strided window of a flat buffer: element `idx` is at `offset + sum(idx[i] * strides[i])`.
#[derive(Debug, Clone)]
pub(crate) struct View {
    pub offset: isize,
    pub shape: Vec<usize>,
    pub strides: Vec<isize>,
}

impl View {
    pub fn new(offset: isize, shape: Vec<usize>, strides: Vec<isize>) -> Self {
        View {
            offset,
            shape,
            strides,
        }
    }
}

/// Copies input `input`'s view `src` to the output's view `dst`.
#[derive(Debug, Clone)]
pub(crate) struct CopyPart {
    pub input: usize,
    pub src: View,
    pub dst: View,
}

/// Fills the output with `fill` (when some of it is not covered by parts), then copies parts.
#[derive(Debug, Clone)]
pub(crate) struct CopyKernel {
    pub parts: Vec<CopyPart>,
    pub fill: Option<f32>,
}

impl CopyKernel {
    /// Runs on any element type (f32 activations, i64 shape constants).
    pub fn apply<T: Copy>(&self, inputs: &[&[T]], output: &mut [T], fill: Option<T>) {
        if let Some(fill) = fill {
            output.fill(fill);
        }
        for part in &self.parts {
            copy_view(inputs[part.input], &part.src, output, &part.dst);
        }
    }
}

impl Kernel for CopyKernel {
    fn run(&self, inputs: &[&[f32]], output: &mut [f32]) -> Option<f64> {
        self.apply(inputs, output, self.fill);
        None
    }
}

/// Copies every element of `sv` in `src` to the same index of `dv` in `dst` (same shapes).
pub(crate) fn copy_view<T: Copy>(src: &[T], sv: &View, dst: &mut [T], dv: &View) {
    let rank = sv.shape.len();
    if sv.shape.contains(&0) {
        return;
    }
    if rank == 0 {
        dst[dv.offset as usize] = src[sv.offset as usize];
        return;
    }
    let inner = sv.shape[rank - 1];
    let (ss, ds) = (sv.strides[rank - 1], dv.strides[rank - 1]);
    let mut index = vec![0usize; rank - 1];
    let (mut so, mut dof) = (sv.offset, dv.offset);
    loop {
        if ss == 1 && ds == 1 {
            let (s, d) = (so as usize, dof as usize);
            dst[d..d + inner].copy_from_slice(&src[s..s + inner]);
        } else {
            for i in 0..inner as isize {
                dst[(dof + i * ds) as usize] = src[(so + i * ss) as usize];
            }
        }
        // Advance the odometer over the outer axes.
        let mut axis = rank - 1;
        loop {
            if axis == 0 {
                return;
            }
            axis -= 1;
            index[axis] += 1;
            so += sv.strides[axis];
            dof += dv.strides[axis];
            if index[axis] < sv.shape[axis] {
                break;
            }
            so -= sv.strides[axis] * sv.shape[axis] as isize;
            dof -= dv.strides[axis] * sv.shape[axis] as isize;
            index[axis] = 0;
        }
    }
}
