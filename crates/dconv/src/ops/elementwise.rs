//! Element-wise operators: activations (one input) and arithmetic with numpy broadcasting
//! (two inputs). Both work on any storage layout: a binary operator computes in the storage
//! order of its channels-last input, reading the other through broadcast strides.

use super::{required, Ctx};
use crate::error::{Error, Result};
use crate::kernels::curve::Curve;
use crate::kernels::multiversion::vectorized;
use crate::kernels::Isa;
use crate::plan::builder::{Builder, Value};
use crate::plan::kernel::{in_parallel_chunks, Kernel, ELEMENTS_PER_TASK};
use crate::plan::layout::Layout;
use crate::tensor::{Tensor, TensorData};

#[derive(Debug, Clone, Copy)]
enum Unary {
    Relu,
    Sigmoid,
    LeakyRelu(f32),
    HardSigmoid(f32, f32),
    HardSwish,
    Clip(f32, f32),
    Tanh,
    Exp,
    Neg,
    Sqrt,
    Reciprocal,
    Abs,
}

impl Unary {
    #[inline(always)]
    fn apply(self, x: f32) -> f32 {
        match self {
            Unary::Relu => x.max(0.0),
            Unary::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Unary::LeakyRelu(a) => {
                if x < 0.0 {
                    a * x
                } else {
                    x
                }
            }
            Unary::HardSigmoid(a, b) => (a * x + b).clamp(0.0, 1.0),
            Unary::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            Unary::Clip(lo, hi) => x.max(lo).min(hi),
            Unary::Tanh => x.tanh(),
            Unary::Exp => x.exp(),
            Unary::Neg => -x,
            Unary::Sqrt => x.sqrt(),
            Unary::Reciprocal => 1.0 / x,
            Unary::Abs => x.abs(),
        }
    }
}

struct UnaryKernel(Unary);

impl Kernel for UnaryKernel {
    fn run(&self, inputs: &[&[f32]], output: &mut [f32]) -> Option<f64> {
        let f = self.0;
        if let Unary::Relu = f {
            // Count the zeros while writing them: the next convolution's method depends on it.
            // Compiled for the CPU's vectors, counting in 32-bit lanes (a task's chunk is
            // short enough): 0.13 ms for 64 x 111 x 111 floats on a Zen 3, 0.33 ms unvectorised.
            let isa = Isa::detect();
            let zeros = in_parallel_chunks(output, ELEMENTS_PER_TASK, |first, out| {
                let x = &inputs[0][first..][..out.len()];
                vectorized(
                    isa,
                    #[inline(always)]
                    || {
                        out.iter_mut().zip(x).fold(0u32, |zeros, (o, &x)| {
                            *o = x.max(0.0);
                            zeros + (*o == 0.0) as u32
                        }) as usize
                    },
                )
            });
            return Some(zeros as f64 / output.len().max(1) as f64);
        }
        in_parallel_chunks(output, ELEMENTS_PER_TASK, |first, out| {
            let x = &inputs[0][first..][..out.len()];
            out.iter_mut().zip(x).for_each(|(o, &x)| *o = f.apply(x));
            0
        });
        None
    }
}

/// The scalar value of an optional constant input (Clip's min and max from opset 11).
fn optional_scalar(inputs: &[Option<Value>], i: usize, default: f32) -> Result<f32> {
    match inputs.get(i).and_then(Option::as_ref) {
        None => Ok(default),
        Some(v) => match v.as_const() {
            Some(t) if t.len() == 1 => Ok(t.to_f32_vec()[0]),
            _ => Err(Error::Unsupported(format!(
                "input {i} must be a constant scalar"
            ))),
        },
    }
}

/// Clip's bounds, from attributes before opset 11 and from inputs since.
pub(crate) fn clip_bounds(ctx: &Ctx, inputs: &[Option<Value>]) -> Result<(f32, f32)> {
    if ctx.opset < 11 {
        Ok((
            ctx.attrs.float("min", f32::NEG_INFINITY),
            ctx.attrs.float("max", f32::INFINITY),
        ))
    } else {
        Ok((
            optional_scalar(inputs, 1, f32::NEG_INFINITY)?,
            optional_scalar(inputs, 2, f32::INFINITY)?,
        ))
    }
}

pub(crate) fn plan_unary(
    b: &mut Builder,
    ctx: &Ctx,
    op: &str,
    inputs: &[Option<Value>],
) -> Result<Value> {
    let x = required(inputs, 0, op, "an input")?;
    let f = match op {
        "Relu" => Unary::Relu,
        "Sigmoid" => Unary::Sigmoid,
        "LeakyRelu" => Unary::LeakyRelu(ctx.attrs.float("alpha", 0.01)),
        "HardSigmoid" => {
            Unary::HardSigmoid(ctx.attrs.float("alpha", 0.2), ctx.attrs.float("beta", 0.5))
        }
        "HardSwish" => Unary::HardSwish,
        "Clip" => {
            let (lo, hi) = clip_bounds(ctx, inputs)?;
            Unary::Clip(lo, hi)
        }
        "Tanh" => Unary::Tanh,
        "Exp" => Unary::Exp,
        "Neg" => Unary::Neg,
        "Sqrt" => Unary::Sqrt,
        "Reciprocal" => Unary::Reciprocal,
        _ => Unary::Abs,
    };
    let shape = x.shape().to_vec();
    let layout = x.layout();
    b.emit(&[x], shape, layout, Box::new(UnaryKernel(f)))
}

/// Runs `$body` with `$g` bound to `$f`'s arithmetic as a plain closure, one arm per
/// operator, so that the loop in each arm vectorises (a match per element does not).
macro_rules! with_binary {
    ($f:expr, |$g:ident| $body:expr) => {
        match $f {
            Binary::Add => {
                let $g = |a: f32, b: f32| a + b;
                $body
            }
            Binary::Sub => {
                let $g = |a: f32, b: f32| a - b;
                $body
            }
            Binary::Mul => {
                let $g = |a: f32, b: f32| a * b;
                $body
            }
            Binary::Div => {
                let $g = |a: f32, b: f32| a / b;
                $body
            }
            other => {
                let $g = move |a: f32, b: f32| other.apply(a, b);
                $body
            }
        }
    };
}

#[derive(Debug, Clone, Copy)]
enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    PRelu,
    Max,
    Min,
    Pow,
}

impl Binary {
    #[inline(always)]
    fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::Mul => a * b,
            Binary::Div => a / b,
            Binary::PRelu => {
                if a < 0.0 {
                    a * b
                } else {
                    a
                }
            }
            Binary::Max => a.max(b),
            Binary::Min => a.min(b),
            Binary::Pow => a.powf(b),
        }
    }

    fn apply_int(self, a: i64, b: i64) -> Result<i64> {
        Ok(match self {
            Binary::Add => a.wrapping_add(b),
            Binary::Sub => a.wrapping_sub(b),
            Binary::Mul => a.wrapping_mul(b),
            Binary::Div => a
                .checked_div(b)
                .ok_or_else(|| Error::InvalidModel("integer division by zero".into()))?,
            Binary::Max => a.max(b),
            Binary::Min => a.min(b),
            Binary::PRelu | Binary::Pow => {
                return Err(Error::Unsupported("this operator on integers".into()))
            }
        })
    }
}

/// `f` on broadcast operands: `shape` is the output's storage shape, `sa`/`sb` the operands'
/// strides along it (0 where broadcast).
struct BinaryKernel {
    f: Binary,
    shape: Vec<usize>,
    strides: [Vec<isize>; 2],
    /// Both operands are stored as the output is, element for element.
    same_layout: bool,
    /// The activation fused after it (a residual Add's Relu), whose zeros it counts.
    activation: Option<Curve>,
}

impl Kernel for BinaryKernel {
    fn run(&self, inputs: &[&[f32]], output: &mut [f32]) -> Option<f64> {
        let f = self.f;
        if let Some(curve) = self.activation {
            // A residual Add and a clamp (ReLU, ReLU6) written out, so that the loop
            // vectorises: the general form matches on `f` and the curve per element.
            let (lo, hi) = (curve.lo, curve.hi);
            let zeros = match f {
                Binary::Add if curve.is_plain_clamp() => {
                    self.counting(inputs, output, |x, y| (x + y).max(lo).min(hi))
                }
                _ => self.counting(inputs, output, |x, y| curve.apply(f.apply(x, y))),
            };
            return Some(zeros as f64 / output.len().max(1) as f64);
        }
        if self.same_layout {
            // No broadcast (a residual Add, say): one flat pass, split over the threads.
            let isa = Isa::detect();
            in_parallel_chunks(output, ELEMENTS_PER_TASK, |first, out| {
                let (a, b) = (&inputs[0][first..], &inputs[1][first..]);
                with_binary!(f, |g| vectorized(
                    isa,
                    #[inline(always)]
                    || out
                        .iter_mut()
                        .zip(a.iter().zip(b))
                        .for_each(|(o, (&x, &y))| *o = g(x, y))
                ));
                0
            });
            return None;
        }
        let (shape, strides) = (&self.shape, &self.strides);
        let isa = Isa::detect();
        with_binary!(f, |g| vectorized(
            isa,
            #[inline(always)]
            || broadcast(shape, strides, inputs[0], inputs[1], output, g)
        ));
        None
    }
}

impl BinaryKernel {
    /// `output = g(a, b)`, element by element; returns how many results are exactly zero.
    /// (The plain passes do not count: in a broadcast loop the count costs a third.)
    fn counting(
        &self,
        inputs: &[&[f32]],
        output: &mut [f32],
        g: impl Fn(f32, f32) -> f32 + Sync,
    ) -> usize {
        if self.same_layout {
            // Compiled for the CPU's vectors, counting in 32-bit lanes (a task's chunk is
            // short enough).
            let isa = Isa::detect();
            return in_parallel_chunks(output, ELEMENTS_PER_TASK, |first, out| {
                let (a, b) = (&inputs[0][first..], &inputs[1][first..]);
                vectorized(
                    isa,
                    #[inline(always)]
                    || {
                        out.iter_mut()
                            .zip(a.iter().zip(b))
                            .fold(0u32, |zeros, (o, (&x, &y))| {
                                *o = g(x, y);
                                zeros + (*o == 0.0) as u32
                            }) as usize
                    },
                )
            });
        }
        broadcast(&self.shape, &self.strides, inputs[0], inputs[1], output, &g);
        output.iter().filter(|&&v| v == 0.0).count()
    }
}

fn broadcast<T: Copy>(
    shape: &[usize],
    [sa, sb]: &[Vec<isize>; 2],
    a: &[T],
    b: &[T],
    out: &mut [T],
    mut f: impl FnMut(T, T) -> T,
) {
    let rank = shape.len();
    if rank == 0 {
        out[0] = f(a[0], b[0]);
        return;
    }
    if out.is_empty() {
        return;
    }
    let inner = shape[rank - 1];
    let rows = Rows::of(shape, [sa, sb]);
    match (sa[rank - 1], sb[rank - 1]) {
        (1, 1) => rows.walk(out, |row, pa, pb| {
            let (a, b) = (&a[pa..][..inner], &b[pb..][..inner]);
            row.iter_mut()
                .zip(a.iter().zip(b))
                .for_each(|(o, (&x, &y))| *o = f(x, y));
        }),
        (1, 0) => rows.walk(out, |row, pa, pb| {
            let (a, y) = (&a[pa..][..inner], b[pb]);
            row.iter_mut().zip(a).for_each(|(o, &x)| *o = f(x, y));
        }),
        (0, 1) => rows.walk(out, |row, pa, pb| {
            let (x, b) = (a[pa], &b[pb..][..inner]);
            row.iter_mut().zip(b).for_each(|(o, &y)| *o = f(x, y));
        }),
        (ia, ib) => rows.walk(out, |row, pa, pb| {
            for (i, o) in row.iter_mut().enumerate() {
                let i = i as isize;
                *o = f(
                    a[(pa as isize + i * ia) as usize],
                    b[(pb as isize + i * ib) as usize],
                );
            }
        }),
    }
}

/// How [`broadcast`] walks the output: rows along the last axis; the rows of the axis before
/// it in a tight loop, and the other axes by an index. A per-channel scale of a channels-last
/// tensor (MobileNetV3's squeeze-and-excitation) has rows of a few channels: walking each
/// by the index cost more than the multiply (16-channel rows at 24 x 96 took 0.04 ms).
struct Rows<'s> {
    shape: &'s [usize],
    strides: [&'s [isize]; 2],
    /// Floats per row, rows per tight loop, and the operands' strides between those rows.
    inner: usize,
    rows: usize,
    row_strides: [isize; 2],
}

impl<'s> Rows<'s> {
    fn of(shape: &'s [usize], [sa, sb]: [&'s [isize]; 2]) -> Self {
        let rank = shape.len();
        let (rows, row_strides) = match rank {
            1 => (1, [0, 0]),
            _ => (shape[rank - 2], [sa[rank - 2], sb[rank - 2]]),
        };
        Rows {
            shape,
            strides: [sa, sb],
            inner: shape[rank - 1],
            rows,
            row_strides,
        }
    }

    /// Calls `row(row, a, b)` on each row of `out` (rank >= 1, not empty) with the offsets
    /// of its first element in the operands.
    #[inline(always)]
    fn walk<T>(&self, out: &mut [T], mut row: impl FnMut(&mut [T], usize, usize)) {
        let outer = self.shape.len().saturating_sub(2);
        let [sa, sb] = self.strides;
        let [ra, rb] = self.row_strides;
        let mut index = vec![0usize; outer];
        let (mut oa, mut ob) = (0isize, 0isize);
        for block in out.chunks_exact_mut(self.inner * self.rows) {
            for (j, r) in block.chunks_exact_mut(self.inner).enumerate() {
                let j = j as isize;
                row(r, (oa + j * ra) as usize, (ob + j * rb) as usize);
            }
            for axis in (0..outer).rev() {
                index[axis] += 1;
                oa += sa[axis];
                ob += sb[axis];
                if index[axis] < self.shape[axis] {
                    break;
                }
                oa -= sa[axis] * self.shape[axis] as isize;
                ob -= sb[axis] * self.shape[axis] as isize;
                index[axis] = 0;
            }
        }
    }
}

/// The numpy broadcast of two shapes.
fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| (i + s.len()).checked_sub(rank).map_or(1, |j| s[j]);
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(Error::InvalidModel(format!(
                "shapes {a:?} and {b:?} do not broadcast"
            ))),
        })
        .collect()
}

/// The strides with which an operand of `shape` stored with `strides` is read along the
/// logical axes of an output of `out` (0 on broadcast axes).
fn broadcast_strides(shape: &[usize], strides: &[isize], out: &[usize]) -> Vec<isize> {
    let lead = out.len() - shape.len();
    (0..out.len())
        .map(|i| match i.checked_sub(lead) {
            Some(j) if shape[j] != 1 => strides[j],
            _ => 0,
        })
        .collect()
}

pub(crate) fn plan_binary(
    b: &mut Builder,
    ctx: &Ctx,
    op: &str,
    x: &Value,
    y: &Value,
) -> Result<Value> {
    let f = match op {
        "Add" => Binary::Add,
        "Sub" => Binary::Sub,
        "Mul" => Binary::Mul,
        "Div" => Binary::Div,
        "PRelu" => Binary::PRelu,
        "Max" => Binary::Max,
        "Min" => Binary::Min,
        _ => Binary::Pow,
    };
    let y_shape = aligned_shape(ctx, f, x.shape(), y.shape())?;
    let out = broadcast_shape(x.shape(), &y_shape)?;
    if f_is_prelu(f) && out != x.shape() {
        return Err(Error::InvalidModel(format!(
            "slope {:?} does not broadcast to the input {:?}",
            y.shape(),
            x.shape()
        )));
    }
    let y_strides = y.layout().strides(y.shape());
    let y_strides = if y_shape.len() == y.shape().len() {
        y_strides
    } else {
        // Legacy alignment only inserts unit axes into a constant or plain tensor.
        crate::plan::layout::plain_strides(&y_shape)
    };
    let strides = [
        broadcast_strides(x.shape(), &x.strides(), &out),
        broadcast_strides(&y_shape, &y_strides, &out),
    ];
    if let (Some(tx), Some(ty)) = (x.as_const(), y.as_const()) {
        if let (TensorData::I64(dx), TensorData::I64(dy)) = (tx.data(), ty.data()) {
            let mut data = vec![0i64; b.memory.fold_elements(&out)?];
            let mut failure = None;
            broadcast(&out, &strides, dx, dy, &mut data, |p, q| {
                f.apply_int(p, q).unwrap_or_else(|e| {
                    failure = Some(e);
                    0
                })
            });
            if let Some(e) = failure {
                return Err(e);
            }
            return Ok(Value::constant(Tensor::from_i64(out, data)?));
        }
    }
    // Compute in the storage order of a channels-last operand of full rank, if any.
    let layout = [x, y]
        .iter()
        .find(|v| v.layout() == Layout::ChannelsLast && v.shape().len() == out.len())
        .map_or(Layout::Plain, |_| Layout::ChannelsLast);
    let order = layout.storage_order(out.len());
    let shape: Vec<usize> = order.iter().map(|&i| out[i]).collect();
    let strides = strides.map(|s| order.iter().map(|&i| s[i]).collect::<Vec<_>>());
    let contiguous = crate::plan::layout::plain_strides(&shape);
    let same_layout = strides.iter().all(|s| {
        s.iter()
            .zip(&contiguous)
            .zip(&shape)
            .all(|((a, c), &n)| n == 1 || a == c)
    });
    let kernel = BinaryKernel {
        f,
        shape,
        strides,
        same_layout,
        activation: ctx.activation.and_then(|a| a.curve()),
    };
    b.emit(&[x, y], out, layout, Box::new(kernel))
}

fn f_is_prelu(f: Binary) -> bool {
    matches!(f, Binary::PRelu)
}

/// The second operand's shape as numpy broadcasting should see it. Before opset 7,
/// `broadcast=1` aligned it at `axis` rather than on the right, and PRelu's per-channel slope
/// was aligned with the channel axis.
fn aligned_shape(ctx: &Ctx, f: Binary, x: &[usize], y: &[usize]) -> Result<Vec<usize>> {
    let rank = x.len();
    let at = if ctx.opset < 7 && ctx.attrs.int("broadcast", 0) == 1 {
        let default = rank.saturating_sub(y.len()) as i64;
        super::axis(ctx.attrs.int("axis", default), rank.max(1))?
    } else if ctx.opset < 7 && f_is_prelu(f) && y.len() == 1 && rank >= 2 && y[0] == x[1] {
        1
    } else {
        return Ok(y.to_vec());
    };
    if at + y.len() > rank {
        return Err(Error::InvalidModel(format!(
            "operand {y:?} does not fit at axis {at} of {x:?}"
        )));
    }
    let mut aligned = vec![1; at];
    aligned.extend(y);
    aligned.resize(rank, 1);
    Ok(aligned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::layout::strides_in_order;

    /// Every element of a broadcast, whatever the shapes and the operands' storage orders,
    /// is `f` of the operands' elements at the offsets its index gives: rows of one element
    /// or many, operands broadcast along the rows, across them or both, a per-channel scale
    /// of a channels-last tensor, and a transposed operand (strides other than 0 and 1).
    #[test]
    fn broadcast_matches_each_elements_own_offsets() {
        let cases: [(&[usize], &[usize], &[usize]); 8] = [
            (&[5], &[1], &[0]),
            (&[3, 4], &[4], &[0, 1]),
            (&[3, 1], &[1, 4], &[0, 1]),
            (&[2, 3, 4, 5], &[2, 1, 1, 5], &[0, 1, 2, 3]),
            (&[1, 24, 6, 16], &[1, 1, 1, 16], &[0, 1, 2, 3]),
            (&[2, 3, 4, 5], &[2, 3, 4, 5], &[3, 2, 1, 0]),
            (&[2, 3, 1, 5], &[1, 1, 4, 1], &[0, 2, 1, 3]),
            (&[3, 2, 4], &[3, 1, 1], &[2, 0, 1]),
        ];
        for (a_shape, b_shape, a_order) in cases {
            let out_shape = broadcast_shape(a_shape, b_shape).unwrap();
            let a_strides = strides_in_order(a_shape, a_order);
            let b_order: Vec<usize> = (0..b_shape.len()).collect();
            let b_strides = strides_in_order(b_shape, &b_order);
            let strides = [
                broadcast_strides(a_shape, &a_strides, &out_shape),
                broadcast_strides(b_shape, &b_strides, &out_shape),
            ];
            let a: Vec<i64> = (0..a_shape.iter().product::<usize>() as i64).collect();
            let b: Vec<i64> = (0..b_shape.iter().product::<usize>() as i64).collect();
            let len = out_shape.iter().product::<usize>();
            let mut out = vec![-1i64; len];
            broadcast(&out_shape, &strides, &a, &b, &mut out, |x, y| x * 1000 + y);
            for (i, &got) in out.iter().enumerate() {
                let (mut rest, mut oa, mut ob) = (i, 0isize, 0isize);
                for axis in (0..out_shape.len()).rev() {
                    let at = (rest % out_shape[axis]) as isize;
                    rest /= out_shape[axis];
                    oa += at * strides[0][axis];
                    ob += at * strides[1][axis];
                }
                let want = a[oa as usize] * 1000 + b[ob as usize];
                assert_eq!(got, want, "{a_shape:?} x {b_shape:?} at {i}");
            }
        }
    }
}
