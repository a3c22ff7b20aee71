//! Resize (opsets 10 to 19) and Upsample (7 to 9): nearest and linear interpolation over the
//! spatial axes of 1-D and 2-D images, in the layout the input comes in. Each output row and
//! column is mapped back to the input once, at plan time, into a table of source indices and
//! weights; a run reads whole pixels through the tables (a channel vector when channels-last,
//! one value when plain), with no division or rounding in its loops.

use super::{distinct_axes, need_const_f32, need_const_i64, Ctx};
use crate::error::{Error, Result};
use crate::kernels::multiversion::vectorized;
use crate::kernels::Isa;
use crate::limits::checked_elements;
use crate::plan::builder::{Builder, Value};
use crate::plan::kernel::Kernel;
use crate::plan::kernel::{in_parallel_chunks, ELEMENTS_PER_TASK};
use crate::plan::layout::Layout;

/// How an output coordinate maps back to the input (`coordinate_transformation_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transform {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    /// Opsets 11 and 12 only.
    TfHalfPixelForNn,
    TfCropAndResize,
}

/// How nearest interpolation rounds an input coordinate (`nearest_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rounding {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
    /// Resize-10 and Upsample, which predate `nearest_mode`: down when upsampling, up when
    /// downsampling, as ONNX Runtime reads them.
    Legacy,
}

impl Rounding {
    /// `x` rounded to an input index (before clamping) along an axis scaled by `scale`.
    fn round(self, x: f64, scale: f64) -> f64 {
        let floor = x.floor();
        match self {
            Rounding::RoundPreferFloor if x - floor <= 0.5 => floor,
            Rounding::RoundPreferCeil if x - floor < 0.5 => floor,
            Rounding::RoundPreferFloor | Rounding::RoundPreferCeil => floor + 1.0,
            Rounding::Floor => floor,
            Rounding::Ceil => x.ceil(),
            Rounding::Legacy if scale < 1.0 => x.ceil(),
            Rounding::Legacy => floor,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interpolation {
    Nearest(Rounding),
    Linear,
}

/// Resize's `mode`, before the nearest one is told how to round.
#[derive(Clone, Copy)]
enum Mode {
    Nearest,
    Linear,
    Cubic,
}

/// How `sizes` is read (`keep_aspect_ratio_policy`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum AspectPolicy {
    Stretch,
    NotLarger,
    NotSmaller,
}

/// Where one output row or column reads: `weights[0] * x[lo] + weights[1] * x[hi]`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    lo: usize,
    hi: usize,
    weights: [f32; 2],
}

/// How the coordinates of one axis map from the output back to the input.
#[derive(Debug, Clone, Copy)]
struct AxisMap {
    input: usize,
    output: usize,
    scale: f64,
    /// The output length before it is rounded to whole pixels (`input * scale`, or `sizes`
    /// when the axis is stretched to it): ONNX's `length_resized`, as its reference reads it.
    extent: f64,
    /// The crop of `tf_crop_and_resize`, in fractions of the input: start and end.
    roi: [f64; 2],
}

impl AxisMap {
    fn unchanged(length: usize) -> Self {
        AxisMap {
            input: length,
            output: length,
            scale: 1.0,
            extent: length as f64,
            roi: [0.0, 1.0],
        }
    }

    /// The input coordinate that output coordinate `o` maps to.
    fn source(&self, transform: Transform, o: usize) -> f64 {
        let (o, n, scale, extent) = (o as f64, self.input as f64, self.scale, self.extent);
        match transform {
            Transform::HalfPixel => (o + 0.5) / scale - 0.5,
            Transform::HalfPixelSymmetric => {
                let offset = n / 2.0 * (1.0 - self.output as f64 / extent);
                offset + (o + 0.5) / scale - 0.5
            }
            Transform::PytorchHalfPixel if extent > 1.0 => (o + 0.5) / scale - 0.5,
            Transform::AlignCorners if extent > 1.0 => o * (n - 1.0) / (extent - 1.0),
            Transform::PytorchHalfPixel | Transform::AlignCorners => 0.0,
            Transform::Asymmetric => o / scale,
            Transform::TfHalfPixelForNn => (o + 0.5) / scale,
            Transform::TfCropAndResize => {
                let [start, end] = self.roi;
                if extent > 1.0 {
                    start * (n - 1.0) + o * (end - start) * (n - 1.0) / (extent - 1.0)
                } else {
                    0.5 * (start + end) * (n - 1.0)
                }
            }
        }
    }

    /// Where output coordinate `o` reads, the indices clamped to the input as ONNX's edge
    /// padding does; None outside the crop of `tf_crop_and_resize` (the extrapolation value).
    fn tap(&self, transform: Transform, interpolation: Interpolation, o: usize) -> Option<Tap> {
        let x = self.source(transform, o);
        let last = self.input.saturating_sub(1) as f64;
        if transform == Transform::TfCropAndResize && !(0.0..=last).contains(&x) {
            return None;
        }
        let index = |v: f64| v.clamp(0.0, last) as usize;
        Some(match interpolation {
            Interpolation::Nearest(rounding) => {
                let i = index(rounding.round(x, self.scale));
                Tap {
                    lo: i,
                    hi: i,
                    weights: [1.0, 0.0],
                }
            }
            Interpolation::Linear => {
                let floor = x.floor();
                let w = (x - floor) as f32;
                Tap {
                    lo: index(floor),
                    hi: index(floor + 1.0),
                    weights: [1.0 - w, w],
                }
            }
        })
    }

    /// Whether every output coordinate reads the same input coordinate and nothing else.
    fn is_identity(&self, transform: Transform, interpolation: Interpolation) -> bool {
        self.output == self.input
            && (0..self.output).all(|o| {
                self.tap(transform, interpolation, o)
                    .is_some_and(|t| t.lo == o && (t.hi == o || t.weights[1] == 0.0))
            })
    }
}

/// A Resize or Upsample node, read.
struct Params {
    interpolation: Interpolation,
    transform: Transform,
    extrapolation: f32,
    /// One per axis of the input.
    axes: Vec<AxisMap>,
}

/// Plans `op` (Resize or Upsample) of `x`, the first of its `inputs`.
pub(crate) fn plan(
    b: &mut Builder,
    ctx: &Ctx,
    op: &str,
    x: &Value,
    inputs: &[Option<Value>],
) -> Result<Value> {
    let params = if op == "Upsample" || ctx.opset < 11 {
        legacy(ctx, op, x.shape(), inputs)?
    } else {
        resize(ctx, x.shape(), inputs)?
    };
    emit(b, op, x, &params)
}

/// Upsample and Resize-10: scales alone, asymmetric coordinates.
fn legacy(ctx: &Ctx, op: &str, shape: &[usize], inputs: &[Option<Value>]) -> Result<Params> {
    if ctx.opset < 7 {
        return Err(Error::Unsupported(format!(
            "{op} of opset {} (from opset 7)",
            ctx.opset
        )));
    }
    let interpolation = ctx.attrs.choice(
        "mode",
        "nearest",
        &[
            ("nearest", Interpolation::Nearest(Rounding::Legacy)),
            ("linear", Interpolation::Linear),
        ],
    )?;
    let scales = if ctx.opset < 9 {
        ctx.attrs
            .floats("scales")
            .ok_or_else(|| Error::InvalidModel(format!("{op} without scales")))?
    } else {
        let scales = inputs
            .get(1)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::InvalidModel(format!("{op} needs scales")))?;
        need_const_f32(scales, &format!("the scales of {op}"))?
    };
    let all: Vec<usize> = (0..shape.len()).collect();
    Ok(Params {
        interpolation,
        transform: Transform::Asymmetric,
        extrapolation: 0.0,
        axes: from_scales(shape, &all, scales)?,
    })
}

/// Resize from opset 11: roi, scales or sizes, and the attributes that say how to read them.
fn resize(ctx: &Ctx, shape: &[usize], inputs: &[Option<Value>]) -> Result<Params> {
    let mode = ctx.attrs.choice(
        "mode",
        "nearest",
        &[
            ("nearest", Mode::Nearest),
            ("linear", Mode::Linear),
            ("cubic", Mode::Cubic),
        ],
    )?;
    let mut transforms = vec![
        ("half_pixel", Transform::HalfPixel),
        ("half_pixel_symmetric", Transform::HalfPixelSymmetric),
        ("pytorch_half_pixel", Transform::PytorchHalfPixel),
        ("align_corners", Transform::AlignCorners),
        ("asymmetric", Transform::Asymmetric),
        ("tf_crop_and_resize", Transform::TfCropAndResize),
    ];
    if ctx.opset < 13 {
        transforms.push(("tf_half_pixel_for_nn", Transform::TfHalfPixelForNn));
    }
    let transform =
        ctx.attrs
            .choice("coordinate_transformation_mode", "half_pixel", &transforms)?;
    let rounding = ctx.attrs.choice(
        "nearest_mode",
        "round_prefer_floor",
        &[
            ("round_prefer_floor", Rounding::RoundPreferFloor),
            ("round_prefer_ceil", Rounding::RoundPreferCeil),
            ("floor", Rounding::Floor),
            ("ceil", Rounding::Ceil),
        ],
    )?;
    let policy = ctx.attrs.choice(
        "keep_aspect_ratio_policy",
        "stretch",
        &[
            ("stretch", AspectPolicy::Stretch),
            ("not_larger", AspectPolicy::NotLarger),
            ("not_smaller", AspectPolicy::NotSmaller),
        ],
    )?;
    let interpolation = match mode {
        Mode::Nearest => Interpolation::Nearest(rounding),
        Mode::Linear => Interpolation::Linear,
        Mode::Cubic => {
            return Err(Error::Unsupported(
                "Resize mode cubic (dconv interpolates nearest and linear)".into(),
            ))
        }
    };
    if ctx.attrs.int("antialias", 0) != 0 {
        return Err(Error::Unsupported(
            "Resize with antialias=1 (dconv resizes without the antialiasing filter)".into(),
        ));
    }
    let rank = shape.len();
    let axes = match ctx.attrs.ints("axes").filter(|_| ctx.opset >= 18) {
        Some(given) => distinct_axes(given, rank, "Resize")?,
        None => (0..rank).collect(),
    };
    // An empty tensor stands for an absent input (opsets 11 and 12 require scales).
    let given = |i: usize| {
        inputs
            .get(i)
            .and_then(Option::as_ref)
            .filter(|v| !v.shape().contains(&0))
    };
    let mut maps = match (given(2), given(3)) {
        (Some(_), Some(_)) => {
            return Err(Error::InvalidModel(
                "Resize has both scales and sizes (one of them must be absent or empty)".into(),
            ))
        }
        (Some(scales), None) => from_scales(
            shape,
            &axes,
            need_const_f32(scales, "the scales of Resize")?,
        )?,
        (None, Some(sizes)) => from_sizes(
            shape,
            &axes,
            &need_const_i64(sizes, "the sizes of Resize")?,
            policy,
        )?,
        (None, None) => return Err(Error::InvalidModel("Resize needs scales or sizes".into())),
    };
    if transform == Transform::TfCropAndResize {
        let roi = given(1).ok_or_else(|| {
            Error::InvalidModel("Resize in mode tf_crop_and_resize needs roi".into())
        })?;
        let roi = need_const_f32(roi, "the roi of Resize")?;
        if roi.len() != 2 * axes.len() {
            return Err(Error::InvalidModel(format!(
                "Resize roi has {} values for {} axes (two per axis)",
                roi.len(),
                axes.len()
            )));
        }
        for (i, &a) in axes.iter().enumerate() {
            maps[a].roi = [roi[i] as f64, roi[i + axes.len()] as f64];
        }
    }
    Ok(Params {
        interpolation,
        transform,
        extrapolation: ctx.attrs.float("extrapolation_value", 0.0),
        axes: maps,
    })
}

/// The axes of `shape` with those of `axes` scaled by `scales` (one each): the output length
/// is `floor(input * scale)`.
fn from_scales(shape: &[usize], axes: &[usize], scales: &[f32]) -> Result<Vec<AxisMap>> {
    if scales.len() != axes.len() {
        return Err(Error::InvalidModel(format!(
            "{} scales for the {} axes of {shape:?} (one per axis)",
            scales.len(),
            axes.len()
        )));
    }
    let mut maps: Vec<AxisMap> = shape.iter().map(|&n| AxisMap::unchanged(n)).collect();
    for (&a, &scale) in axes.iter().zip(scales) {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::InvalidModel(format!(
                "scale {scale} (scales must be positive)"
            )));
        }
        let extent = shape[a] as f64 * scale as f64;
        maps[a] = AxisMap {
            input: shape[a],
            // Saturates: an output too large is refused with the output's shape.
            output: extent.floor() as usize,
            scale: scale as f64,
            extent,
            roi: [0.0, 1.0],
        };
    }
    Ok(maps)
}

/// The axes of `shape` with those of `axes` resized to `sizes` (one each), as `policy` reads
/// them.
fn from_sizes(
    shape: &[usize],
    axes: &[usize],
    sizes: &[i64],
    policy: AspectPolicy,
) -> Result<Vec<AxisMap>> {
    if sizes.len() != axes.len() {
        return Err(Error::InvalidModel(format!(
            "{} sizes for the {} axes of {shape:?} (one per axis)",
            sizes.len(),
            axes.len()
        )));
    }
    let sizes = sizes
        .iter()
        .map(|&s| {
            usize::try_from(s)
                .map_err(|_| Error::InvalidModel(format!("Resize sizes {sizes:?} are negative")))
        })
        .collect::<Result<Vec<_>>>()?;
    let ratio = |a: usize, size: usize| size as f64 / shape[a] as f64;
    // The one scale of every axis that keeps the aspect ratio (empty axes have none).
    let ratios = axes
        .iter()
        .zip(&sizes)
        .filter(|(&a, _)| shape[a] > 0)
        .map(|(&a, &size)| ratio(a, size));
    let kept = match policy {
        AspectPolicy::Stretch => None,
        AspectPolicy::NotLarger => Some(ratios.fold(f64::INFINITY, f64::min)),
        AspectPolicy::NotSmaller => Some(ratios.fold(0.0, f64::max)),
    };
    let mut maps: Vec<AxisMap> = shape.iter().map(|&n| AxisMap::unchanged(n)).collect();
    for (&a, &size) in axes.iter().zip(&sizes) {
        let input = shape[a];
        maps[a] = match kept {
            _ if input == 0 => AxisMap {
                output: size,
                ..AxisMap::unchanged(0)
            },
            None => AxisMap {
                input,
                output: size,
                scale: ratio(a, size),
                extent: size as f64,
                roi: [0.0, 1.0],
            },
            Some(scale) => {
                let extent = scale * input as f64;
                AxisMap {
                    input,
                    // Rounded half up, as the policies say.
                    output: (extent + 0.5).floor() as usize,
                    scale,
                    extent,
                    roi: [0.0, 1.0],
                }
            }
        };
    }
    Ok(maps)
}

/// The step that resizes `x` as `p` says, in `x`'s layout.
fn emit(b: &mut Builder, op: &str, x: &Value, p: &Params) -> Result<Value> {
    let shape = x.shape();
    let rank = shape.len();
    if !(rank == 3 || rank == 4) {
        return Err(Error::Unsupported(format!(
            "{op} of a rank-{rank} input {shape:?} (only 1-D and 2-D images)"
        )));
    }
    let (transform, interpolation) = (p.transform, p.interpolation);
    for (a, m) in p.axes.iter().enumerate() {
        if a < 2 && !m.is_identity(transform, interpolation) {
            return Err(Error::Unsupported(format!(
                "{op} of axis {a} of {shape:?} (to {}): only the spatial axes are resized",
                m.output
            )));
        }
        if m.input == 0 && m.output > 0 {
            return Err(Error::InvalidModel(format!(
                "{op} of the empty axis {a} of {shape:?} to {}",
                m.output
            )));
        }
    }
    let out_shape: Vec<usize> = p.axes.iter().map(|m| m.output).collect();
    checked_elements(&out_shape, &format!("the output of {op}"))?;
    let (rows, cols) = match &p.axes[2..] {
        [rows, cols] => (Some(rows), cols),
        [cols] => (None, cols),
        _ => unreachable!("rank 3 or 4"),
    };
    // The tables are constants of the plan, and counted as such before they are built.
    let entries = cols.output.saturating_add(rows.map_or(1, |m| m.output));
    b.memory
        .fold_elements(&[entries, size_of::<Option<Tap>>().div_ceil(size_of::<i64>())])?;
    let table = |m: &AxisMap| -> Vec<Option<Tap>> {
        (0..m.output)
            .map(|o| m.tap(transform, interpolation, o))
            .collect()
    };
    let whole_row = Tap {
        lo: 0,
        hi: 0,
        weights: [1.0, 0.0],
    };
    let (images, lanes) = match x.layout() {
        Layout::ChannelsLast => (shape[0], shape[1]),
        Layout::Plain => (shape[0].saturating_mul(shape[1]), 1),
    };
    let kernel = Resize {
        images,
        lanes,
        input: [rows.map_or(1, |m| m.input), cols.input],
        rows: rows.map_or_else(|| vec![Some(whole_row)], table),
        cols: table(cols),
        linear: interpolation == Interpolation::Linear,
        extrapolation: p.extrapolation,
    };
    b.emit(&[x], out_shape, x.layout(), Box::new(kernel))
}

/// A resize of images of `input` (height, width) pixels of `lanes` contiguous values each:
/// channels-last, a pixel is its channel vector; plain, each channel is an image of its own.
struct Resize {
    images: usize,
    lanes: usize,
    input: [usize; 2],
    rows: Vec<Option<Tap>>,
    cols: Vec<Option<Tap>>,
    /// Blends the four pixels around each output pixel; else copies the nearest one.
    linear: bool,
    extrapolation: f32,
}

impl Kernel for Resize {
    fn run(&self, inputs: &[&[f32]], output: &mut [f32]) -> Option<f64> {
        let row_len = self.cols.len() * self.lanes;
        if output.is_empty() {
            return Some(0.0);
        }
        debug_assert_eq!(output.len(), self.images * self.rows.len() * row_len);
        let x = inputs[0];
        let image_len = self.input[0] * self.input[1] * self.lanes;
        let rows_per_task = (ELEMENTS_PER_TASK / row_len).max(1);
        let isa = Isa::detect();
        // The zeros of each output row are counted while it is in cache: a resize between
        // two convolutions hands the next one its input sparsity.
        let zeros = in_parallel_chunks(output, rows_per_task * row_len, |first, out| {
            // Compiled for the CPU's vector width, a pixel's lanes at a time.
            vectorized(
                isa,
                #[inline(always)]
                || {
                    let mut zeros = 0;
                    for (i, out_row) in out.chunks_exact_mut(row_len).enumerate() {
                        let row = first / row_len + i;
                        let (image, oy) = (row / self.rows.len(), row % self.rows.len());
                        let image = &x[image * image_len..][..image_len];
                        zeros += self.row(image, self.rows[oy], out_row);
                    }
                    zeros
                },
            )
        });
        Some(zeros as f64 / output.len() as f64)
    }
}

impl Resize {
    /// One output row, which reads input rows as `tap` says; returns its zeros.
    #[inline(always)]
    fn row<'a>(&self, image: &'a [f32], tap: Option<Tap>, out: &mut [f32]) -> usize {
        let (lanes, outside) = (self.lanes, self.extrapolation);
        let line = self.input[1] * lanes;
        let Some(ty) = tap else {
            out.fill(outside);
            return if outside == 0.0 { out.len() } else { 0 };
        };
        let upper = &image[ty.lo * line..][..line];
        let lower = &image[ty.hi * line..][..line];
        let [y0, y1] = ty.weights;
        let cols = self.cols.iter();
        if lanes == 1 {
            // Plain layout: a value per pixel, gathered along the row.
            if self.linear {
                for (tx, p) in cols.zip(out.iter_mut()) {
                    *p = tx.map_or(outside, |t| {
                        let [x0, x1] = t.weights;
                        y0 * (x0 * upper[t.lo] + x1 * upper[t.hi])
                            + y1 * (x0 * lower[t.lo] + x1 * lower[t.hi])
                    });
                }
            } else {
                for (tx, p) in cols.zip(out.iter_mut()) {
                    *p = tx.map_or(outside, |t| upper[t.lo]);
                }
            }
        } else {
            // Channels-last: whole channel vectors.
            let pixel = |row: &'a [f32], x: usize| &row[x * lanes..][..lanes];
            for (tx, px) in cols.zip(out.chunks_exact_mut(lanes)) {
                let Some(tx) = tx else {
                    px.fill(outside);
                    continue;
                };
                if !self.linear {
                    px.copy_from_slice(pixel(upper, tx.lo));
                    continue;
                }
                let [x0, x1] = tx.weights;
                let (a, b) = (pixel(upper, tx.lo), pixel(upper, tx.hi));
                let (c, d) = (pixel(lower, tx.lo), pixel(lower, tx.hi));
                for ((((p, &a), &b), &c), &d) in px.iter_mut().zip(a).zip(b).zip(c).zip(d) {
                    *p = y0 * (x0 * a + x1 * b) + y1 * (x0 * c + x1 * d);
                }
            }
        }
        out.iter().filter(|&&v| v == 0.0).count()
    }
}
