//! Operators that move or describe data rather than compute on it: Reshape, Flatten,
//! Squeeze, Unsqueeze, Transpose, Concat, Slice, Pad, Gather, Shape, ConstantOfShape, Cast
//! and Constant. On constants they fold (this is where a model's shape arithmetic goes);
//! on run-time tensors the reshapes are free and the rest are strided copies.

use super::{axis, distinct_axes, need_const_i64, required, Ctx};
use crate::error::{Error, Result};
use crate::kernels::multiversion::vectorized;
use crate::kernels::Isa;
use crate::limits::MAX_COPY_PARTS;
use crate::plan::builder::{reshape_value, Builder, ChannelsInPlace, Dynamic, Src, Step, Value};
use crate::plan::copy::{CopyKernel, CopyPart, View};
use crate::plan::kernel::{in_parallel_chunks, Kernel, ELEMENTS_PER_TASK};
use crate::plan::layout::{plain_strides, Layout};
use crate::tensor::{element_count, Tensor, TensorData};

pub(crate) fn plan(
    b: &mut Builder,
    ctx: &Ctx,
    op: &str,
    inputs: &[Option<Value>],
) -> Result<Value> {
    let input = |i: usize| required(inputs, i, op, &format!("input {i}"));
    let optional = |i: usize| inputs.get(i).and_then(Option::as_ref);
    match op {
        "Constant" => constant(ctx),
        "Shape" => shape_of(ctx, input(0)?),
        "ConstantOfShape" => constant_of_shape(b, ctx, input(0)?),
        "Cast" => cast(ctx, input(0)?),
        "Reshape" => {
            let x = b.plain(input(0)?)?;
            let target = if ctx.opset < 5 {
                ctx.attrs
                    .ints("shape")
                    .map(<[i64]>::to_vec)
                    .unwrap_or_default()
            } else {
                need_const_i64(input(1)?, "the shape of Reshape")?
            };
            let shape = reshape_target(x.shape(), &target, ctx.attrs.int("allowzero", 0) == 1)?;
            reshape_value(&x, shape)
        }
        "Flatten" => {
            let x = b.plain(input(0)?)?;
            let s = x.shape();
            let at = if s.is_empty() {
                0
            } else {
                axis(ctx.attrs.int("axis", 1), s.len() + 1)?
            };
            let shape = vec![element_count(&s[..at])?, element_count(&s[at..])?];
            reshape_value(&x, shape)
        }
        "Squeeze" | "Unsqueeze" => {
            let x = b.plain(input(0)?)?;
            let axes = match (ctx.opset >= 13, optional(1)) {
                (true, Some(a)) => Some(need_const_i64(a, "axes")?),
                (true, None) => None,
                (false, _) => ctx.attrs.ints("axes").map(<[i64]>::to_vec),
            };
            let shape = if op == "Squeeze" {
                squeezed(x.shape(), axes.as_deref())?
            } else {
                unsqueezed(x.shape(), axes.as_deref().unwrap_or_default())?
            };
            reshape_value(&x, shape)
        }
        "Transpose" => transpose(b, ctx, input(0)?),
        "Concat" => concat(b, ctx, &inputs.iter().flatten().collect::<Vec<_>>()),
        "Slice" => slice(b, ctx, inputs),
        "Pad" => pad(b, ctx, inputs),
        "Gather" => gather(b, ctx, input(0)?, input(1)?),
        _ => Err(Error::Unsupported(format!("operator {op}"))),
    }
}

fn constant(ctx: &Ctx) -> Result<Value> {
    if let Some(t) = ctx.attrs.tensor("value")? {
        return Ok(Value::constant(t));
    }
    let t = if ctx.attrs.has("value_float") {
        Tensor::from_f32(vec![], vec![ctx.attrs.float("value_float", 0.0)])?
    } else if let Some(v) = ctx.attrs.floats("value_floats") {
        Tensor::from_f32(vec![v.len()], v.to_vec())?
    } else if ctx.attrs.has("value_int") {
        Tensor::from_i64(vec![], vec![ctx.attrs.int("value_int", 0)])?
    } else if let Some(v) = ctx.attrs.ints("value_ints") {
        Tensor::from_i64(vec![v.len()], v.to_vec())?
    } else {
        return Err(Error::Unsupported(
            "Constant without a tensor, float or int value".into(),
        ));
    };
    Ok(Value::constant(t))
}

fn shape_of(ctx: &Ctx, x: &Value) -> Result<Value> {
    let dims: Vec<i64> = x.shape().iter().map(|&d| d as i64).collect();
    let r = dims.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clamp(ctx.attrs.int("start", 0));
    let end = clamp(ctx.attrs.int("end", r)).max(start);
    let dims = dims[start..end].to_vec();
    Ok(Value::constant(Tensor::from_i64(vec![dims.len()], dims)?))
}

fn to_sizes(values: &[i64], what: &str) -> Result<Vec<usize>> {
    values
        .iter()
        .map(|&v| {
            usize::try_from(v)
                .map_err(|_| Error::InvalidModel(format!("{what} has a negative value {v}")))
        })
        .collect()
}

fn constant_of_shape(b: &mut Builder, ctx: &Ctx, shape: &Value) -> Result<Value> {
    let shape = to_sizes(
        &need_const_i64(shape, "the shape of ConstantOfShape")?,
        "shape",
    )?;
    let count = b.memory.fold_elements(&shape)?;
    let value = ctx.attrs.tensor("value")?;
    let t = match value.as_ref().map(Tensor::data) {
        None => Tensor::from_f32(shape, vec![0.0; count])?,
        Some(TensorData::F32(v)) if v.len() == 1 => Tensor::from_f32(shape, vec![v[0]; count])?,
        Some(TensorData::I64(v)) if v.len() == 1 => Tensor::from_i64(shape, vec![v[0]; count])?,
        Some(_) => {
            return Err(Error::InvalidModel(
                "ConstantOfShape value must have one element".into(),
            ))
        }
    };
    Ok(Value::constant(t))
}

fn cast(ctx: &Ctx, x: &Value) -> Result<Value> {
    const FLOATS: [i64; 3] = [1, 10, 11];
    const INTS: [i64; 8] = [2, 3, 4, 5, 6, 7, 12, 13];
    const BOOL: i64 = 9;
    let to = ctx.attrs.int("to", 0);
    let t = match x {
        Value::Dynamic(_) if FLOATS.contains(&to) => return Ok(x.clone()),
        Value::Dynamic(_) => {
            return Err(Error::Unsupported(format!(
                "Cast of a run-time tensor to type {to}"
            )))
        }
        Value::Const(t) => t,
    };
    let shape = t.shape().to_vec();
    let cast = if FLOATS.contains(&to) {
        Tensor::from_f32(shape, t.to_f32_vec())?
    } else if INTS.contains(&to) {
        Tensor::from_i64(shape, t.to_i64_vec())?
    } else if to == BOOL {
        let bools = t.to_f32_vec().iter().map(|&v| (v != 0.0) as i64).collect();
        Tensor::from_i64(shape, bools)?
    } else {
        return Err(Error::Unsupported(format!("Cast to type {to}")));
    };
    Ok(Value::constant(cast))
}

/// Reshape's target: 0 copies the input dimension (unless `allow_zero`), -1 is inferred.
fn reshape_target(input: &[usize], target: &[i64], allow_zero: bool) -> Result<Vec<usize>> {
    let total = element_count(input)?;
    let mut shape = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &d) in target.iter().enumerate() {
        shape.push(match d {
            0 if !allow_zero => *input.get(i).ok_or_else(|| {
                Error::InvalidModel(format!("Reshape copies dimension {i} of {input:?}"))
            })?,
            -1 if infer.is_none() => {
                infer = Some(i);
                1
            }
            d if d >= 0 => d as usize,
            _ => return Err(Error::InvalidModel(format!("Reshape target {target:?}"))),
        });
    }
    let known = element_count(&shape)?;
    if let Some(i) = infer {
        if known == 0 || total % known != 0 {
            return Err(Error::InvalidModel(format!(
                "cannot reshape {input:?} to {target:?}"
            )));
        }
        shape[i] = total / known;
    }
    if element_count(&shape)? != total {
        return Err(Error::InvalidModel(format!(
            "cannot reshape {input:?} to {target:?}"
        )));
    }
    Ok(shape)
}

fn squeezed(shape: &[usize], axes: Option<&[i64]>) -> Result<Vec<usize>> {
    let Some(axes) = axes else {
        return Ok(shape.iter().copied().filter(|&d| d != 1).collect());
    };
    let axes = axes
        .iter()
        .map(|&a| axis(a, shape.len()))
        .collect::<Result<Vec<_>>>()?;
    if let Some(&a) = axes.iter().find(|&&a| shape[a] != 1) {
        return Err(Error::InvalidModel(format!(
            "Squeeze axis {a} of {shape:?} is not 1"
        )));
    }
    Ok(shape
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect())
}

fn unsqueezed(shape: &[usize], axes: &[i64]) -> Result<Vec<usize>> {
    let rank = shape.len() + axes.len();
    let axes = axes
        .iter()
        .map(|&a| axis(a, rank))
        .collect::<Result<Vec<_>>>()?;
    let mut dims = shape.iter();
    (0..rank)
        .map(|i| {
            if axes.contains(&i) {
                Ok(1)
            } else {
                dims.next()
                    .copied()
                    .ok_or_else(|| Error::InvalidModel("repeated Unsqueeze axes".into()))
            }
        })
        .collect()
}

fn transpose(b: &mut Builder, ctx: &Ctx, x: &Value) -> Result<Value> {
    let rank = x.shape().len();
    let perm = match ctx.attrs.ints("perm") {
        Some(p) => p
            .iter()
            .map(|&a| axis(a, rank))
            .collect::<Result<Vec<_>>>()?,
        None => (0..rank).rev().collect(),
    };
    let mut sorted = perm.clone();
    sorted.sort_unstable();
    if sorted != (0..rank).collect::<Vec<_>>() {
        return Err(Error::InvalidModel(format!(
            "perm {perm:?} is not a permutation of rank {rank}"
        )));
    }
    let shape: Vec<usize> = perm.iter().map(|&a| x.shape()[a]).collect();
    if let Value::Dynamic(d) = x {
        // The transposes between an NHWC model's layout and ONNX's are free: the storage
        // already is in the order asked for.
        let to_channels_last = Layout::ChannelsLast.storage_order(rank);
        let from_channels_last: Vec<usize> = (0..rank)
            .map(|i| to_channels_last.iter().position(|&a| a == i).unwrap_or(i))
            .collect();
        if rank >= 3 && d.layout == Layout::Plain && perm == from_channels_last {
            return Ok(Value::Dynamic(Dynamic {
                src: d.src,
                shape,
                layout: Layout::ChannelsLast,
            }));
        }
        if rank >= 3 && d.layout == Layout::ChannelsLast && perm == to_channels_last {
            return Ok(Value::Dynamic(Dynamic {
                src: d.src,
                shape,
                layout: Layout::Plain,
            }));
        }
    }
    let strides = x.strides();
    let src = View::new(0, shape.clone(), perm.iter().map(|&a| strides[a]).collect());
    let dst = View::new(0, shape.clone(), plain_strides(&shape));
    copy_one_view(b, x, shape, src, dst, None)
}

fn concat(b: &mut Builder, ctx: &Ctx, inputs: &[&Value]) -> Result<Value> {
    let first = inputs
        .first()
        .ok_or_else(|| Error::InvalidModel("Concat without inputs".into()))?;
    let rank = first.shape().len();
    let at = axis(ctx.attrs.int("axis", 1), rank)?;
    let mut shape = first.shape().to_vec();
    shape[at] = 0;
    for v in inputs {
        let s = v.shape();
        if s.len() != rank || (0..rank).any(|i| i != at && s[i] != first.shape()[i]) {
            return Err(Error::InvalidModel(format!(
                "Concat of {:?} and {s:?} along axis {at}",
                first.shape()
            )));
        }
        shape[at] += s[at];
    }
    let dynamic: Vec<_> = inputs.iter().filter(|v| v.as_const().is_none()).collect();
    let layout = if rank >= 3
        && !dynamic.is_empty()
        && dynamic.iter().all(|v| v.layout() == Layout::ChannelsLast)
    {
        Layout::ChannelsLast
    } else {
        Layout::Plain
    };
    let out_strides = layout.strides(&shape);
    if layout == Layout::ChannelsLast && at == 1 {
        if let Some(v) = concat_in_place(b, ctx.alone.unwrap_or_default(), inputs, &shape)? {
            return Ok(v);
        }
    }
    let mut offset = 0;
    let parts = inputs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let part = CopyPart {
                input: i,
                src: View::new(0, v.shape().to_vec(), v.strides()),
                dst: View::new(
                    offset as isize * out_strides[at],
                    v.shape().to_vec(),
                    out_strides.clone(),
                ),
            };
            offset += v.shape()[at];
            part
        })
        .collect();
    b.emit_copy(inputs, shape, layout, CopyKernel { parts, fill: None })
}

/// A Concat along the channels of channels-last tensors of `shape` whose parts that it
/// `alone` reads and convolutions compute are written by those convolutions in place, into
/// their channels of its output (`Conv::run_into`): a tensor a convolution computes is then
/// never copied. The other parts are copied into the same slot by one step. None when no
/// part can be written in place.
fn concat_in_place(
    b: &mut Builder,
    alone: &[bool],
    inputs: &[&Value],
    shape: &[usize],
) -> Result<Option<Value>> {
    let writers: Vec<Option<usize>> = inputs
        .iter()
        .zip(alone.iter().chain(std::iter::repeat(&false)))
        .map(|(v, &alone)| alone.then(|| b.conv_computing(v)).flatten())
        .collect();
    let pitch = shape[1];
    let elements = element_count(shape)?;
    if writers.iter().all(Option::is_none) || pitch == 0 || elements == 0 {
        return Ok(None);
    }
    let slot = b.new_slot(shape)?;
    let pixels = elements / pitch;
    let out_strides = Layout::ChannelsLast.strides(shape);
    let (mut start, mut copied, mut sources) = (0, Vec::new(), Vec::new());
    for (v, writer) in inputs.iter().zip(writers) {
        let channels = v.shape()[1];
        match writer {
            Some(step) => {
                let len = (pixels - 1) * pitch + channels;
                b.write_in_place(step, slot, ChannelsInPlace { start, len, pitch });
            }
            None => {
                copied.push(CopyPart {
                    input: sources.len(),
                    src: View::new(0, v.shape().to_vec(), v.strides()),
                    dst: View::new(start as isize, v.shape().to_vec(), out_strides.clone()),
                });
                sources.push(b.src(v));
            }
        }
        start += channels;
    }
    let copied_channels: usize = copied.iter().map(|p| p.src.shape[1]).sum();
    if !copied.is_empty() {
        let kernel = CopyKernel {
            parts: copied,
            fill: None,
        };
        b.push_into(sources, slot, Box::new(kernel));
    }
    let share = |step: &Step| {
        let channels = match step.shared.and_then(|s| s.channels) {
            Some(c) => c.len.saturating_sub((pixels - 1) * pitch),
            None => copied_channels,
        };
        channels as f64 / pitch as f64
    };
    b.share_slot(slot, share);
    Ok(Some(Value::Dynamic(Dynamic {
        src: Src::Slot(slot),
        shape: shape.to_vec(),
        layout: Layout::ChannelsLast,
    })))
}

/// A channel shuffle as ShuffleNet writes it, `x` of `[N, C, H, W]` reshaped by `first` to
/// `[N, g, C/g, H, W]`, its axes 1 and 2 swapped and reshaped by `second` back to
/// `[N, C, H, W]`, planned as one copy in `x`'s own layout: channel `i * C/g + j` goes to
/// `j * g + i`, and a channels-last tensor stays channels-last (no conversion to the plain
/// layout and back around the transpose). None when the reshapes do not do that to `x`.
pub(crate) fn channel_shuffle(
    b: &mut Builder,
    x: &Value,
    first: &[i64],
    second: &[i64],
) -> Result<Option<Value>> {
    let shape = x.shape().to_vec();
    let &[n, _, h, w] = shape.as_slice() else {
        return Ok(None);
    };
    let split = reshape_target(&shape, first, false)?;
    let &[_, groups, per_group, _, _] = split.as_slice() else {
        return Ok(None);
    };
    let swapped = [n, per_group, groups, h, w];
    if split != [n, groups, per_group, h, w] || reshape_target(&swapped, second, false)? != shape {
        return Ok(None);
    }
    let layout = x.layout();
    if layout == Layout::ChannelsLast {
        let kernel = ChannelShuffle { groups, per_group };
        return b.emit(&[x], shape, layout, Box::new(kernel)).map(Some);
    }
    let [xn, xc, xh, xw] = <[isize; 4]>::try_from(x.strides()).expect("rank 4");
    let [on, oc, oh, ow] = <[isize; 4]>::try_from(layout.strides(&shape)).expect("rank 4");
    let part = CopyPart {
        input: 0,
        src: View::new(
            0,
            split.clone(),
            vec![xn, per_group as isize * xc, xc, xh, xw],
        ),
        dst: View::new(0, split, vec![on, oc, groups as isize * oc, oh, ow]),
    };
    let kernel = CopyKernel {
        parts: vec![part],
        fill: None,
    };
    b.emit_copy(&[x], shape, layout, kernel).map(Some)
}

/// A channel shuffle of channels-last images: each pixel's channels, `[groups][per_group]`,
/// written as `[per_group][groups]`. The strided copy did this one element at a time, with
/// its odometer's bookkeeping per run of `groups` (ShuffleNet's 16 shuffles took 0.85 ms);
/// with the group count known at compile time the interleave is vectorised.
struct ChannelShuffle {
    groups: usize,
    per_group: usize,
}

impl Kernel for ChannelShuffle {
    fn run(&self, inputs: &[&[f32]], output: &mut [f32]) -> Option<f64> {
        let (x, pg) = (inputs[0], self.per_group);
        let pixel = self.groups * pg;
        if pixel == 0 {
            // No channels: nothing to move (and no chunk length to divide by).
            return None;
        }
        let isa = Isa::detect();
        let task = (ELEMENTS_PER_TASK / pixel).max(1) * pixel;
        in_parallel_chunks(output, task, |first, out| {
            let x = &x[first..first + out.len()];
            vectorized(
                isa,
                #[inline(always)]
                || match self.groups {
                    2 => interleave::<2>(x, out, pg),
                    3 => interleave::<3>(x, out, pg),
                    4 => interleave::<4>(x, out, pg),
                    8 => interleave::<8>(x, out, pg),
                    g => {
                        for (x, out) in x.chunks_exact(pixel).zip(out.chunks_exact_mut(pixel)) {
                            for (j, o) in out.chunks_exact_mut(g).enumerate() {
                                for (i, o) in o.iter_mut().enumerate() {
                                    *o = x[i * pg + j];
                                }
                            }
                        }
                    }
                },
            );
            0
        });
        None
    }

    fn rearranges(&self, inputs: &[&[f32]], output_len: usize) -> bool {
        inputs.first().is_some_and(|x| x.len() == output_len)
    }
}

/// Each pixel of `G * pg` channels: `out[j * G + i] = x[i * pg + j]`.
#[inline(always)]
fn interleave<const G: usize>(x: &[f32], out: &mut [f32], pg: usize) {
    let pixel = G * pg;
    for (x, out) in x.chunks_exact(pixel).zip(out.chunks_exact_mut(pixel)) {
        let rows: [&[f32]; G] = std::array::from_fn(|i| &x[i * pg..(i + 1) * pg]);
        for (j, o) in out.chunks_exact_mut(G).enumerate() {
            for (o, row) in o.iter_mut().zip(&rows) {
                *o = row[j];
            }
        }
    }
}

fn slice(b: &mut Builder, ctx: &Ctx, inputs: &[Option<Value>]) -> Result<Value> {
    let x = inputs
        .first()
        .and_then(Option::as_ref)
        .ok_or_else(|| Error::InvalidModel("Slice needs data".into()))?;
    let get = |i: usize, what: &str| {
        inputs
            .get(i)
            .and_then(Option::as_ref)
            .map(|v| need_const_i64(v, what))
            .transpose()
    };
    let (starts, ends, axes, steps) = if ctx.opset < 10 {
        let attr = |n: &str| ctx.attrs.ints(n).map(<[i64]>::to_vec);
        (
            attr("starts").unwrap_or_default(),
            attr("ends").unwrap_or_default(),
            attr("axes"),
            None,
        )
    } else {
        (
            get(1, "starts")?.unwrap_or_default(),
            get(2, "ends")?.unwrap_or_default(),
            get(3, "axes")?,
            get(4, "steps")?,
        )
    };
    let rank = x.shape().len();
    let axes = match axes {
        Some(a) => a
            .iter()
            .map(|&a| axis(a, rank))
            .collect::<Result<Vec<_>>>()?,
        None => (0..starts.len()).collect(),
    };
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(Error::InvalidModel(
            "Slice starts, ends, axes and steps differ in length".into(),
        ));
    }
    let strides = x.strides();
    let mut shape = x.shape().to_vec();
    let mut src_strides = strides.clone();
    let mut offset = 0isize;
    for (i, &a) in axes.iter().enumerate() {
        let dim = x.shape()[a] as i64;
        let step = steps[i];
        if step == 0 {
            return Err(Error::InvalidModel("Slice step 0".into()));
        }
        let clamp = |v: i64, lo: i64, hi: i64| {
            let v = if v < 0 { v.saturating_add(dim) } else { v };
            v.clamp(lo, hi)
        };
        let (start, end) = if step > 0 {
            (clamp(starts[i], 0, dim), clamp(ends[i], 0, dim))
        } else {
            (clamp(starts[i], -1, dim - 1), clamp(ends[i], -1, dim - 1))
        };
        // Both spans are within [0, dim + 1]; a step beyond them takes one element.
        let span = if step > 0 { end - start } else { start - end }.max(0) as u64;
        let len = span.div_ceil(step.unsigned_abs());
        shape[a] = len as usize;
        if len > 0 {
            offset += start as isize * strides[a];
        }
        // With one element or none the step is never taken, so a huge one cannot overflow.
        src_strides[a] = if len > 1 {
            strides[a] * step as isize
        } else {
            strides[a]
        };
    }
    let src = View::new(offset, shape.clone(), src_strides);
    let dst = View::new(0, shape.clone(), plain_strides(&shape));
    copy_one_view(b, x, shape, src, dst, None)
}

/// What Pad puts around the data (`mode`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum PadMode {
    Constant,
    /// The nearest value at the border.
    Edge,
    /// The data mirrored about its first and last values.
    Reflect,
    /// The data repeated.
    Wrap,
}

fn pad(b: &mut Builder, ctx: &Ctx, inputs: &[Option<Value>]) -> Result<Value> {
    let x = inputs
        .first()
        .and_then(Option::as_ref)
        .ok_or_else(|| Error::InvalidModel("Pad needs data".into()))?;
    let mut modes = vec![
        ("constant", PadMode::Constant),
        ("edge", PadMode::Edge),
        ("reflect", PadMode::Reflect),
    ];
    if ctx.opset >= 19 {
        modes.push(("wrap", PadMode::Wrap));
    }
    let mode = ctx.attrs.choice("mode", "constant", &modes)?;
    let rank = x.shape().len();
    let (pads, value, axes) = if ctx.opset < 11 {
        let pads = ctx
            .attrs
            .ints("pads")
            .or_else(|| ctx.attrs.ints("paddings"))
            .map(<[i64]>::to_vec)
            .unwrap_or_default();
        (pads, ctx.attrs.float("value", 0.0), None)
    } else {
        let pads = need_const_i64(
            inputs
                .get(1)
                .and_then(Option::as_ref)
                .ok_or_else(|| Error::InvalidModel("Pad needs pads".into()))?,
            "pads",
        )?;
        let value = match inputs.get(2).and_then(Option::as_ref) {
            Some(v) => v
                .as_const()
                .and_then(|t| t.to_f32_vec().first().copied())
                .ok_or_else(|| Error::Unsupported("Pad value computed at run time".into()))?,
            None => 0.0,
        };
        let axes = inputs
            .get(3)
            .and_then(Option::as_ref)
            .map(|a| need_const_i64(a, "the axes of Pad"))
            .transpose()?;
        (pads, value, axes)
    };
    let axes = match axes {
        Some(given) => distinct_axes(&given, rank, "Pad")?,
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(Error::InvalidModel(format!(
            "Pad pads {pads:?} for {} axes (two per axis)",
            axes.len()
        )));
    }
    let pads = to_sizes(&pads, "Pad pads (negative pads are not supported)")?;
    let (mut before, mut after) = (vec![0; rank], vec![0; rank]);
    for (i, &a) in axes.iter().enumerate() {
        (before[a], after[a]) = (pads[i], pads[i + axes.len()]);
    }
    let shape = (0..rank)
        .map(|i| {
            x.shape()[i]
                .checked_add(before[i])
                .and_then(|d| d.checked_add(after[i]))
                .ok_or_else(|| Error::InvalidModel(format!("Pad pads {pads:?} overflow the shape")))
        })
        .collect::<Result<Vec<usize>>>()?;
    // The offsets below index the output: its element count must fit an isize.
    let elements = crate::limits::checked_elements(&shape, "the output of Pad")?;
    if isize::try_from(elements).is_err() {
        return Err(Error::InvalidModel(format!(
            "Pad output {shape:?} is too large"
        )));
    }
    let layout = x.layout();
    let parts = if elements == 0 {
        Vec::new()
    } else {
        let runs = (0..rank)
            .map(|a| pad_runs(mode, x.shape()[a], before[a], after[a]))
            .collect::<Result<Vec<_>>>()?;
        pad_parts(&runs, &x.strides(), &layout.strides(&shape))?
    };
    let fill = (mode == PadMode::Constant).then_some(value);
    b.emit_copy(&[x], shape, layout, CopyKernel { parts, fill })
}

/// Output coordinates `start..start + len` along one axis that read input coordinates
/// `src`, `src + step`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    start: usize,
    len: usize,
    src: usize,
    step: isize,
}

/// The runs that fill an axis of `n` values padded by `before` and `after` in `mode` (in
/// constant mode, the data alone: the fill does the rest).
fn pad_runs(mode: PadMode, n: usize, before: usize, after: usize) -> Result<Vec<Run>> {
    if mode == PadMode::Constant || before + after == 0 {
        return Ok(if n == 0 {
            Vec::new()
        } else {
            vec![Run {
                start: before,
                len: n,
                src: 0,
                step: 1,
            }]
        });
    }
    if n == 0 {
        return Err(Error::InvalidModel(format!(
            "Pad by {before} and {after} of an empty axis (only a constant can fill it)"
        )));
    }
    // The caller checked that the padded length fits an isize.
    let (n, total) = (n as isize, (before + n + after) as isize);
    let mut runs = Vec::new();
    let mut o = 0;
    while o < total {
        // Where input coordinate `v` (outside 0..n in the padding) reads, and how many
        // coordinates on it keeps reading at that step.
        let v = o - before as isize;
        let (src, step, left) = match mode {
            PadMode::Edge if v < 0 => (0, 0, -v),
            PadMode::Edge if v < n => (v, 1, n - v),
            PadMode::Edge => (n - 1, 0, total),
            PadMode::Wrap => {
                let m = v.rem_euclid(n);
                (m, 1, n - m)
            }
            PadMode::Reflect if n == 1 => (0, 0, total),
            PadMode::Reflect => {
                let period = 2 * (n - 1);
                let m = v.rem_euclid(period);
                if m < n {
                    (m, 1, n - m)
                } else {
                    (period - m, -1, period - m)
                }
            }
            PadMode::Constant => unreachable!("returned above"),
        };
        let len = left.min(total - o);
        runs.push(Run {
            start: o as usize,
            len: len as usize,
            src: src as usize,
            step,
        });
        if runs.len() > MAX_COPY_PARTS {
            return Err(Error::Unsupported(format!(
                "Pad by {before} and {after} around {n} values, which repeats them more than \
                 {MAX_COPY_PARTS} times"
            )));
        }
        o += len;
    }
    Ok(runs)
}

/// A copy per combination of one run on each axis, from the input of `src_strides` to the
/// output of `dst_strides`.
fn pad_parts(
    runs: &[Vec<Run>],
    src_strides: &[isize],
    dst_strides: &[isize],
) -> Result<Vec<CopyPart>> {
    let count = crate::limits::saturating_product(&runs.iter().map(Vec::len).collect::<Vec<_>>());
    if count > MAX_COPY_PARTS {
        return Err(Error::Unsupported(format!(
            "Pad of more than {MAX_COPY_PARTS} pieces"
        )));
    }
    Ok((0..count)
        .map(|k| {
            let mut rest = k;
            let (mut src, mut dst) = (
                View::new(0, Vec::new(), Vec::new()),
                View::new(0, Vec::new(), dst_strides.to_vec()),
            );
            for (a, axis_runs) in runs.iter().enumerate().rev() {
                let run = axis_runs[rest % axis_runs.len()];
                rest /= axis_runs.len();
                src.offset += run.src as isize * src_strides[a];
                dst.offset += run.start as isize * dst_strides[a];
                src.shape.push(run.len);
                src.strides.push(run.step * src_strides[a]);
            }
            src.shape.reverse();
            src.strides.reverse();
            dst.shape = src.shape.clone();
            CopyPart { input: 0, src, dst }
        })
        .collect())
}

/// Emits a copy of one strided view of `x` (`src`) into `dst`, a view of a plain tensor of
/// `shape` whose other elements are `fill` (or all covered by `dst`).
fn copy_one_view(
    b: &mut Builder,
    x: &Value,
    shape: Vec<usize>,
    src: View,
    dst: View,
    fill: Option<f32>,
) -> Result<Value> {
    let part = CopyPart { input: 0, src, dst };
    b.emit_copy(
        &[x],
        shape,
        Layout::Plain,
        CopyKernel {
            parts: vec![part],
            fill,
        },
    )
}

fn gather(b: &mut Builder, ctx: &Ctx, x: &Value, indices: &Value) -> Result<Value> {
    let rank = x.shape().len();
    let at = axis(ctx.attrs.int("axis", 0), rank)?;
    let dim = x.shape()[at] as i64;
    let idx = need_const_i64(indices, "Gather indices")?;
    let idx_shape = indices.shape().to_vec();
    let mut shape = x.shape()[..at].to_vec();
    shape.extend(&idx_shape);
    shape.extend(&x.shape()[at + 1..]);
    let in_strides = x.strides();
    let out_strides = plain_strides(&shape);
    let mut slice_shape = x.shape().to_vec();
    slice_shape.remove(at);
    let mut src_strides = in_strides.clone();
    src_strides.remove(at);
    let mut dst_strides = out_strides[..at].to_vec();
    dst_strides.extend(&out_strides[at + idx_shape.len()..]);
    let idx_strides = plain_strides(&idx_shape);
    let parts = idx
        .iter()
        .enumerate()
        .map(|(q, &i)| {
            let i = if i < 0 { i + dim } else { i };
            if !(0..dim).contains(&i) {
                return Err(Error::InvalidModel(format!(
                    "Gather index {i} out of range for {dim}"
                )));
            }
            // Output offset of index position q: its multi-index along the index axes.
            let mut rest = q;
            let mut offset = 0isize;
            for (k, &s) in idx_strides.iter().enumerate() {
                let coord = rest / s as usize;
                rest %= s as usize;
                offset += coord as isize * out_strides[at + k];
            }
            Ok(CopyPart {
                input: 0,
                src: View::new(
                    i as isize * in_strides[at],
                    slice_shape.clone(),
                    src_strides.clone(),
                ),
                dst: View::new(offset, slice_shape.clone(), dst_strides.clone()),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    b.emit_copy(&[x], shape, Layout::Plain, CopyKernel { parts, fill: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every group count (those interleaved with a compiled-in count and the rest), over
    /// enough pixels for several parallel tasks: channel `i * pg + j` of each pixel goes to
    /// `j * groups + i`, and nothing else is written.
    #[test]
    fn channel_shuffle_interleaves_each_pixel() {
        for (groups, per_group, pixels) in
            [(2, 1, 3), (3, 7, 5), (4, 34, 300), (5, 2, 4), (8, 16, 9)]
        {
            let c = groups * per_group;
            let x: Vec<f32> = (0..pixels * c).map(|v| v as f32).collect();
            let mut out = vec![f32::NAN; x.len()];
            let kernel = ChannelShuffle { groups, per_group };
            assert!(kernel.rearranges(&[&x], out.len()));
            kernel.run(&[&x], &mut out);
            for p in 0..pixels {
                for i in 0..groups {
                    for j in 0..per_group {
                        let (to, from) = (p * c + j * groups + i, p * c + i * per_group + j);
                        assert_eq!(out[to], x[from], "{groups} groups: pixel {p}, {i}, {j}");
                    }
                }
            }
        }
    }

    /// The input coordinate that coordinate `v` of the padded axis reads, by the definition
    /// (numpy.pad's): clamped, mirrored until inside, or taken modulo the length.
    fn naive(mode: PadMode, n: usize, v: isize) -> usize {
        let n = n as isize;
        match mode {
            PadMode::Edge => v.clamp(0, n - 1) as usize,
            PadMode::Wrap => v.rem_euclid(n) as usize,
            PadMode::Reflect if n == 1 => 0,
            PadMode::Reflect => {
                let mut v = v;
                while !(0..n).contains(&v) {
                    v = if v < 0 { -v } else { 2 * (n - 1) - v };
                }
                v as usize
            }
            PadMode::Constant => unreachable!(),
        }
    }

    #[test]
    fn pad_runs_read_what_the_definition_reads() {
        for mode in [PadMode::Edge, PadMode::Reflect, PadMode::Wrap] {
            for n in 1..6 {
                for (before, after) in [(0, 0), (1, 0), (0, 2), (3, 4), (11, 7), (0, 13)] {
                    let runs = pad_runs(mode, n, before, after).unwrap();
                    let mut read = Vec::new();
                    for run in &runs {
                        assert_eq!(run.start, read.len(), "{mode:?} {n} {before} {after}");
                        for k in 0..run.len as isize {
                            read.push((run.src as isize + k * run.step) as usize);
                        }
                    }
                    let want: Vec<usize> = (0..before + n + after)
                        .map(|o| naive(mode, n, o as isize - before as isize))
                        .collect();
                    assert_eq!(read, want, "{mode:?} of {n} by {before} and {after}");
                }
            }
        }
    }

    #[test]
    fn pads_that_repeat_the_data_too_often_are_refused() {
        assert!(pad_runs(PadMode::Wrap, 1, MAX_COPY_PARTS, 0).is_err());
        assert!(pad_runs(PadMode::Wrap, 1, MAX_COPY_PARTS - 1, 0).is_ok());
        assert!(pad_runs(PadMode::Reflect, 0, 1, 0).is_err());
    }
}
