//! The operators of the runtime. Each one reads its node (attributes, input shapes and
//! layouts, constant inputs) once at plan time and returns a [`Kernel`](crate::plan::kernel::Kernel) with everything
//! resolved, or folds itself to a constant when its inputs are constants.

pub(crate) mod conv;
mod conv_transpose;
mod elementwise;
mod matmul;
pub(crate) mod normalize;
mod pool;
mod resize;
mod shape;

pub(crate) use elementwise::clip_bounds;
pub(crate) use normalize::plan_affine_chain;
pub(crate) use shape::channel_shuffle;

use crate::conv::Activation;
use crate::error::{Error, Result};
use crate::onnx::Attrs;
use crate::plan::builder::{Builder, Value};
use crate::tensor::Tensor;
use conv::ConvTail;

/// What an operator sees of its node.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub attrs: Attrs<'a>,
    pub opset: i64,
    /// For a Conv or ConvTranspose, what the fusion pass folded into it.
    pub tail: Option<&'a ConvTail>,
    /// For an Add or a Sum of two, the activation the fusion pass folded into it.
    pub activation: Option<Activation>,
    /// For a Conv whose tail adds a residual, that tensor.
    pub residual: Option<&'a Value>,
    /// For a Concat, which of its inputs it alone reads (see `Fusion::Concat`).
    pub alone: Option<&'a [bool]>,
}

impl<'a> Ctx<'a> {
    pub fn new(attrs: Attrs<'a>, opset: i64) -> Self {
        Ctx {
            attrs,
            opset,
            tail: None,
            activation: None,
            residual: None,
            alone: None,
        }
    }
}

/// Plans one node: returns its outputs (fewer than the node declares when the rest are
/// optional outputs dconv does not compute).
pub(crate) fn plan_op(
    b: &mut Builder,
    ctx: &Ctx,
    op: &str,
    inputs: &[Option<Value>],
) -> Result<Vec<Value>> {
    let input = |i: usize| required(inputs, i, op, &format!("input {i}"));
    let one = |v: Value| Ok(vec![v]);
    match op {
        "Identity" | "Dropout" => one(input(0)?.clone()),
        "Conv" | "ConvTranspose" => one(conv::plan(b, ctx, op, inputs)?),
        "Relu" | "Sigmoid" | "LeakyRelu" | "HardSigmoid" | "HardSwish" | "Clip" | "Tanh"
        | "Exp" | "Neg" | "Sqrt" | "Reciprocal" | "Abs" => {
            one(elementwise::plan_unary(b, ctx, op, inputs)?)
        }
        "Add" | "Sub" | "Mul" | "Div" | "PRelu" | "Max" | "Min" | "Pow" => {
            one(elementwise::plan_binary(b, ctx, op, input(0)?, input(1)?)?)
        }
        "Sum" => {
            // A fused activation (the fusion pass takes Sums of two only) goes on the last.
            let plain = Ctx {
                activation: None,
                ..*ctx
            };
            let mut acc = input(0)?.clone();
            let rest: Vec<&Value> = inputs.iter().skip(1).flatten().collect();
            for (k, v) in rest.iter().enumerate() {
                let step = if k + 1 == rest.len() { ctx } else { &plain };
                acc = elementwise::plan_binary(b, step, "Add", &acc, v)?;
            }
            one(acc)
        }
        "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" => {
            one(pool::plan(b, ctx, op, input(0)?)?)
        }
        "BatchNormalization" => one(normalize::plan_batch_norm(b, ctx, inputs)?),
        "LRN" => one(normalize::plan_lrn(b, ctx, input(0)?)?),
        "Softmax" => one(normalize::plan_softmax(b, ctx, input(0)?)?),
        "Gemm" => one(matmul::plan_gemm(b, ctx, inputs)?),
        "MatMul" => one(matmul::plan_matmul(b, input(0)?, input(1)?)?),
        "Resize" | "Upsample" => one(resize::plan(b, ctx, op, input(0)?, inputs)?),
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Transpose" | "Concat" | "Slice"
        | "Pad" | "Gather" | "Shape" | "ConstantOfShape" | "Cast" | "Constant" => {
            one(shape::plan(b, ctx, op, inputs)?)
        }
        _ => Err(Error::Unsupported(format!(
            "operator {op} (opset {})",
            ctx.opset
        ))),
    }
}

/// Input `i` of an `op` node, which it needs: an error naming `what` it lacks otherwise.
pub(crate) fn required<'v>(
    inputs: &'v [Option<Value>],
    i: usize,
    op: &str,
    what: &str,
) -> Result<&'v Value> {
    inputs
        .get(i)
        .and_then(Option::as_ref)
        .ok_or_else(|| Error::InvalidModel(format!("{op} needs {what}")))
}

/// The float data of a constant input that an operator needs at plan time (weights).
pub(crate) fn need_const_f32<'v>(v: &'v Value, what: &str) -> Result<&'v [f32]> {
    v.as_const().and_then(Tensor::as_f32).ok_or_else(|| {
        Error::Unsupported(format!(
            "{what} computed at run time (must be a float constant)"
        ))
    })
}

/// The integer data of a constant input (shapes, axes, pads).
pub(crate) fn need_const_i64(v: &Value, what: &str) -> Result<Vec<i64>> {
    v.as_const().map(Tensor::to_i64_vec).ok_or_else(|| {
        Error::Unsupported(format!("{what} computed at run time (must be a constant)"))
    })
}

/// Resolves a possibly negative `axis` of a rank-`rank` tensor.
pub(crate) fn axis(axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if (-r..r).contains(&axis) {
        Ok(axis.rem_euclid(r.max(1)) as usize)
    } else {
        Err(Error::InvalidModel(format!(
            "axis {axis} is out of range for rank {rank}"
        )))
    }
}

/// Resolves the list of axes `given` to an operator (Pad's or Resize's `axes`) of a rank-`rank`
/// tensor; none may repeat.
pub(crate) fn distinct_axes(given: &[i64], rank: usize, op: &str) -> Result<Vec<usize>> {
    let axes = given
        .iter()
        .map(|&a| axis(a, rank))
        .collect::<Result<Vec<_>>>()?;
    if (1..axes.len()).any(|i| axes[..i].contains(&axes[i])) {
        return Err(Error::InvalidModel(format!(
            "{op} axes {given:?} repeat an axis"
        )));
    }
    Ok(axes)
}
