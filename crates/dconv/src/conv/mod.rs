//! Convolution methods behind one interface.
//!
//! A [`ConvSpec`] says what to compute; [`Conv::prepare`] packs the weights once for a
//! [`Method`]; [`Conv::run`] then computes NHWC output from NHWC input as many times as
//! needed, using a caller-owned [`Workspace`] so that nothing is allocated once the buffers
//! have grown to the layer's needs. Threads come from the current rayon pool.

mod dense;
mod depthwise;
mod geometry;
mod im2col;
mod im2csoa;
mod im2csr;
mod lowered_csr;
mod method;
mod panels;
mod reference;
mod run_loop;
pub mod select;
mod shifted_gemm;
mod sparse_weight;
mod spec;
mod tiles;
mod transpose;
mod workspace;

pub use method::{Method, Skips};
pub use spec::{Activation, ConvSpec, Padding};
pub(crate) use transpose::{ConvTranspose, TransposeSpec};
pub use workspace::{ScratchBytes, Workspace};

use crate::error::{Error, Result};
use crate::kernels::curve::Curve;
use crate::kernels::multiversion::vectorized;
use crate::kernels::Isa;
use panels::SharedPanels;
use std::fmt;
use std::time::Duration;

/// Where the time of one run went: converting the input (im2col, compression) and
/// multiplying (methods without a conversion step report it as zero); and the zeros of the
/// output, counted as the epilogue wrote them, so that the next layer learns its input
/// sparsity without another pass over it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    pub convert: Duration,
    pub multiply: Duration,
    /// Exact zeros in the output, when the method ran an epilogue (bias or activation).
    pub output_zeros: Option<usize>,
}

impl Timing {
    pub fn total(&self) -> Duration {
        self.convert + self.multiply
    }
}

/// Runs `$body` with `$f` bound to the activation `$curve` (an `Option<Curve>`) as a plain
/// closure, one match arm per kind, so that each arm's loop vectorises, at the width of
/// `$isa`.
macro_rules! with_row_curve {
    ($isa:expr, $curve:expr, |$f:ident| $body:expr) => {
        vectorized(
            $isa,
            #[inline(always)]
            || match $curve {
                None => {
                    let $f = |x: f32| x;
                    $body
                }
                Some(c) if c == Curve::clamp(0.0, f32::INFINITY) => {
                    let $f = |x: f32| x.max(0.0);
                    $body
                }
                Some(c) if c.is_plain_clamp() => {
                    let $f = |x: f32| x.max(c.lo).min(c.hi);
                    $body
                }
                Some(c) => {
                    let $f = |x: f32| c.apply(x);
                    $body
                }
            },
        )
    };
}

/// What every method applies to its sums as it stores them: the bias and the fused
/// activation, in a row loop compiled for the instruction set the method runs, or as the
/// [`curve`](Self::curve) in kernels that finish sums in registers.
pub(crate) struct Epilogue {
    /// One value per output channel; zeros when the layer has no bias.
    pub bias: Vec<f32>,
    /// The activation fused after the bias.
    pub activation: Activation,
    /// The instruction set the row loop is compiled for.
    pub isa: Isa,
}

impl Epilogue {
    /// Adds the bias of channel `m` and applies the activation.
    #[inline(always)]
    pub fn apply(&self, m: usize, acc: f32) -> f32 {
        self.activation.apply(acc + self.bias[m])
    }

    /// The epilogue of a run that adds nothing but the bias.
    pub fn plain(&self) -> RunEpilogue<'_> {
        RunEpilogue {
            epilogue: self,
            residual: None,
        }
    }

    /// The epilogue of a run that adds `residual` (the output's layout) before the
    /// activation, when there is one.
    pub fn adding<'a>(&'a self, residual: Option<&'a [f32]>, output: &[f32]) -> RunEpilogue<'a> {
        RunEpilogue {
            epilogue: self,
            residual: residual.map(|terms| Residual::new(terms, output)),
        }
    }
}

/// A tensor that a run adds to its sums before the activation (a residual connection), in
/// the output's layout: each region of the output finds its terms at the same offset, so
/// that every method passes its regions of the output and nothing more.
#[derive(Clone, Copy)]
pub(crate) struct Residual<'a> {
    terms: &'a [f32],
    /// The address of the output's first float.
    output_at: usize,
}

impl<'a> Residual<'a> {
    fn new(terms: &'a [f32], output: &[f32]) -> Self {
        assert_eq!(
            terms.len(),
            output.len(),
            "a residual of the output's length"
        );
        Residual {
            terms,
            output_at: output.as_ptr() as usize,
        }
    }

    /// The terms under `region`, a part of the output.
    fn under(&self, region: &[f32]) -> &'a [f32] {
        let offset = (region.as_ptr() as usize)
            .checked_sub(self.output_at)
            .expect("a region of the output")
            / size_of::<f32>();
        &self.terms[offset..offset + region.len()]
    }
}

/// An [`Epilogue`] as one run applies it: the bias, the residual when the run adds one, and
/// the activation, in a row loop compiled for the instruction set the method runs, or as the
/// [`curve`](Self::curve) in kernels that finish sums in registers.
#[derive(Clone, Copy)]
pub(crate) struct RunEpilogue<'a> {
    epilogue: &'a Epilogue,
    residual: Option<Residual<'a>>,
}

impl RunEpilogue<'_> {
    /// The bias, one value per output channel.
    pub fn bias(&self) -> &[f32] {
        &self.epilogue.bias
    }

    /// Whether the sums need a pass: a bias, an activation or a residual to add.
    pub fn has_work(&self, bias: bool) -> bool {
        bias || self.epilogue.activation != Activation::None || self.residual.is_some()
    }

    /// The activation that finishing the sums in registers or in place applies, as a gated
    /// clamp (None for none): the fused one, or None when the run adds a residual, which
    /// comes before it: [`add_residual`](Self::add_residual) then applies both.
    pub fn curve(&self) -> Option<Curve> {
        match self.residual {
            Some(_) => None,
            None => self.epilogue.activation.curve(),
        }
    }

    /// Finishes channels `first..first + width` of each pixel in `pixels`, whose rows are
    /// `stride` floats apart and hold those channels at their start (the last row may end
    /// after them), in place, by the bias, the residual when the run adds one, and the
    /// activation, in one pass; returns how many are exactly zero (what a fused ReLU left).
    /// One call per block of pixels: a call per pixel cost as much as the finishing itself
    /// on 96-channel rows (0.4 ms of 16 -> 96 at 112 x 112).
    pub fn apply_rows(
        &self,
        pixels: &mut [f32],
        stride: usize,
        width: usize,
        first: usize,
    ) -> usize {
        let bias = &self.epilogue.bias[first..first + width];
        let activation = self.epilogue.activation.curve();
        let rows = (stride, width);
        with_row_curve!(self.epilogue.isa, activation, |f| match self.residual {
            None => finish_rows(pixels, rows, |_| bias.iter().copied(), f),
            Some(r) => {
                let r = r.under(pixels);
                let terms = |i: usize| bias.iter().zip(&r[i * stride..]).map(|(b, r)| b + r);
                finish_rows(pixels, rows, terms, f)
            }
        })
    }

    /// Finishes a tile's staged sums into channels `first..first + len` of each of its rows
    /// in `pixels` (`stride` floats apart), adding the bias, the residual when the run adds
    /// one, and the activation; returns how many results are exactly zero. The sums lie in
    /// `spill` block after block, each block `rows` rows of `width` floats (the last block
    /// may be narrower than `width` in `len`). Row by row and, within a row, block by block,
    /// so that each output row and its residual are written and read in one sequential run
    /// rather than a block's columns at a time, 1 KB apart on 256 channels.
    pub fn apply_tile_from(
        &self,
        (spill, rows, width): (&[f32], usize, usize),
        pixels: &mut [f32],
        stride: usize,
        (first, len): (usize, usize),
    ) -> usize {
        let bias = &self.epilogue.bias[first..first + len];
        let residual = self.residual.map(|r| r.under(pixels));
        let sums = |i: usize, b: usize| {
            spill[(b * rows + i) * width..]
                .iter()
                .zip(&bias[b * width..])
        };
        let segments = (rows, stride, (width, len));
        let activation = self.epilogue.activation.curve();
        with_row_curve!(self.epilogue.isa, activation, |f| match residual {
            None => finish_segments(pixels, segments, |i, b| sums(i, b).map(|(s, b)| s + b), f),
            Some(r) => finish_segments(
                pixels,
                segments,
                |i, b| sums(i, b)
                    .zip(&r[i * stride + b * width..])
                    .map(|((s, b), r)| s + b + r),
                f
            ),
        })
    }

    /// After a kernel finished its sums in registers (the bias added, [`curve`](Self::curve)
    /// applied; [`apply_rows`](Self::apply_rows) adds the residual itself): adds it to the first
    /// `width` floats of each `stride`-float row of `pixels` and applies the activation,
    /// returning the zeros. Each method calls it on a region it has just written, while it
    /// is in cache, in rows as long as it can, so that the residual streams in whole lines.
    /// None when the run adds no residual: the method finished the sums and counted their
    /// zeros.
    pub fn add_residual(&self, pixels: &mut [f32], stride: usize, width: usize) -> Option<usize> {
        let r = self.residual?.under(pixels);
        let terms = |i: usize| r[i * stride..].iter().copied();
        let activation = self.epilogue.activation.curve();
        Some(with_row_curve!(self.epilogue.isa, activation, |f| {
            finish_rows(pixels, (stride, width), terms, f)
        }))
    }
}

/// `row[j] = f(row[j] + term[j])` for the first `width` floats of each `stride`-float row
/// `i` of `pixels`, with `term` the terms `terms(i)`, returning how many results are exactly
/// zero. The count is per row in 32 bits, which vectorises at the floats' width.
#[inline(always)]
fn finish_rows<I: Iterator<Item = f32>>(
    pixels: &mut [f32],
    (stride, width): (usize, usize),
    terms: impl Fn(usize) -> I,
    f: impl Fn(f32) -> f32,
) -> usize {
    let mut zeros = 0;
    for (i, row) in pixels.chunks_mut(stride).enumerate() {
        zeros += row[..width]
            .iter_mut()
            .zip(terms(i))
            .fold(0u32, |zeros, (o, t)| {
                *o = f(*o + t);
                zeros + (*o == 0.0) as u32
            }) as usize;
    }
    zeros
}

/// `segment[j] = f(value[j])` for each segment `b` of `width` floats (the last one shorter
/// when `len` is not a multiple) of the first `len` floats of each `stride`-float row `i` of
/// `pixels`, `rows` rows, with `value` the values `values(i, b)`; returns how many results
/// are exactly zero, counted as [`finish_rows`] counts.
#[inline(always)]
fn finish_segments<I: Iterator<Item = f32>>(
    pixels: &mut [f32],
    (rows, stride, (width, len)): (usize, usize, (usize, usize)),
    values: impl Fn(usize, usize) -> I,
    f: impl Fn(f32) -> f32,
) -> usize {
    let mut zeros = 0;
    for (i, row) in pixels.chunks_mut(stride).take(rows).enumerate() {
        for (b, segment) in row[..len].chunks_mut(width).enumerate() {
            zeros += segment
                .iter_mut()
                .zip(values(i, b))
                .fold(0u32, |zeros, (o, v)| {
                    *o = f(v);
                    zeros + (*o == 0.0) as u32
                }) as usize;
        }
    }
    zeros
}

/// A method with its weights prepared for one layer.
pub(crate) trait ConvKernel: Send + Sync {
    /// Computes `output` from `input`, adding `residual` (the output's layout) before the
    /// activation when there is one; every length is already checked. Pixel `p`'s filters go
    /// to `output[p * pitch..][..filters]`, and nothing else of `output` is written (see
    /// [`Conv::run_into`]).
    fn run(
        &self,
        input: &[f32],
        output: (&mut [f32], usize),
        residual: Option<&[f32]>,
        ws: &mut Workspace,
    ) -> Timing;

    /// The most bytes of workspace a run on the current thread pool fills, whatever the
    /// input (saturating).
    fn scratch(&self) -> ScratchBytes;
}

/// A convolution layer with its weights prepared for one method.
pub struct Conv {
    spec: ConvSpec,
    method: Method,
    isa: Isa,
    weight_sparsity: f64,
    kernel: Box<dyn ConvKernel>,
}

impl fmt::Debug for Conv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conv")
            .field("spec", &self.spec)
            .field("method", &self.method)
            .field("isa", &self.isa)
            .field("weight_sparsity", &self.weight_sparsity)
            .finish()
    }
}

impl Conv {
    /// Prepares `weights` (`[M][C/G][R][S]`) and `bias` (`[M]`, required exactly when
    /// `spec.bias`) for `method`, with the best instruction set of this CPU.
    pub fn prepare(
        spec: &ConvSpec,
        weights: &[f32],
        bias: Option<&[f32]>,
        method: Method,
    ) -> Result<Conv> {
        Self::prepare_with_isa(spec, weights, bias, method, Isa::detect())
    }

    /// Like [`Conv::prepare`], with an explicit instruction set (tests cover each one; an
    /// instruction set this CPU lacks falls back to the portable code).
    pub fn prepare_with_isa(
        spec: &ConvSpec,
        weights: &[f32],
        bias: Option<&[f32]>,
        method: Method,
        isa: Isa,
    ) -> Result<Conv> {
        Self::prepare_sharing(
            spec,
            weights,
            bias,
            method,
            isa,
            &mut SharedPanels::default(),
        )
    }

    /// Prepares `weights` for each of `methods` (like [`Conv::prepare`]), packing the weight
    /// panels that im2csr, lowered-csr and im2csoa all read once for all of them: the
    /// layer's weights are then held once per layout, not once per method.
    pub fn prepare_methods(
        spec: &ConvSpec,
        weights: &[f32],
        bias: Option<&[f32]>,
        methods: &[Method],
    ) -> Result<Vec<Conv>> {
        let isa = Isa::detect();
        let mut shared = SharedPanels::default();
        methods
            .iter()
            .map(|&m| Self::prepare_sharing(spec, weights, bias, m, isa, &mut shared))
            .collect()
    }

    fn prepare_sharing(
        spec: &ConvSpec,
        weights: &[f32],
        bias: Option<&[f32]>,
        method: Method,
        isa: Isa,
        shared: &mut SharedPanels,
    ) -> Result<Conv> {
        spec.validate()?;
        check_len("weights", spec.weight_len()?, weights.len())?;
        let bias = match (spec.bias, bias) {
            (true, Some(b)) => {
                check_len("bias", spec.filters, b.len())?;
                b.to_vec()
            }
            (false, None) => vec![0.0; spec.filters],
            (true, None) => {
                return Err(Error::InvalidSpec(
                    "the spec has a bias but none was given".into(),
                ))
            }
            (false, Some(_)) => {
                return Err(Error::InvalidSpec(
                    "a bias was given but the spec has none".into(),
                ))
            }
        };
        let isa = if isa.is_supported() {
            isa
        } else {
            Isa::Portable
        };
        let epilogue = Epilogue {
            bias,
            activation: spec.activation,
            isa,
        };
        let zeros = weights.iter().filter(|&&w| w == 0.0).count();
        let weight_sparsity = zeros as f64 / weights.len() as f64;
        // The sparse formats index lowered columns and pixels with 32 bits.
        if method.reads_panels()
            && (u32::try_from(spec.lowered_cols()).is_err()
                || u32::try_from(spec.height * spec.width).is_err())
        {
            return Err(Error::InvalidSpec(format!(
                "{method} indexes columns and pixels with 32 bits; this layer is larger"
            )));
        }
        let kernel = (method.entry().prepare)(spec, weights, epilogue, isa, shared)?;
        Ok(Conv {
            spec: *spec,
            method,
            isa,
            weight_sparsity,
            kernel,
        })
    }

    /// Computes the NHWC `output` from the NHWC `input`.
    pub fn run(&self, input: &[f32], output: &mut [f32], ws: &mut Workspace) -> Result<Timing> {
        self.run_adding(input, None, output, ws)
    }

    /// Computes the NHWC `output` from the NHWC `input`, adding `residual` (NHWC, the
    /// output's shape) to the sums after the bias and before the activation, when there is
    /// one: a residual connection (ResNet's Add and the Relu after it) finished in the same
    /// pass as the sums, while they are in cache.
    pub fn run_adding(
        &self,
        input: &[f32],
        residual: Option<&[f32]>,
        output: &mut [f32],
        ws: &mut Workspace,
    ) -> Result<Timing> {
        self.run_into(input, residual, (output, self.spec.filters), ws)
    }

    /// [`Conv::run_adding`] into pixels `pitch` floats apart: pixel `p`'s filters go to
    /// `output[p * pitch..][..filters]` and the floats between them are left as they are,
    /// so that a layer writes its channels of a channel concatenation in place (`output`
    /// then starts at its first channel and ends after the last pixel's filters). A
    /// residual is added only to an output of its own (`pitch` = filters).
    pub fn run_into(
        &self,
        input: &[f32],
        residual: Option<&[f32]>,
        (output, pitch): (&mut [f32], usize),
        ws: &mut Workspace,
    ) -> Result<Timing> {
        let filters = self.spec.filters;
        check_len("input", self.spec.input_len()?, input.len())?;
        if pitch < filters || (residual.is_some() && pitch != filters) {
            return Err(Error::InvalidArgument(format!(
                "an output pitch of {pitch} floats for {filters} filters{}",
                if residual.is_some() {
                    " and a residual"
                } else {
                    ""
                }
            )));
        }
        let pixels = self.spec.output_len()? / filters.max(1);
        let expected = match pixels.checked_sub(1) {
            None => 0,
            Some(last) => last
                .checked_mul(pitch)
                .and_then(|start| start.checked_add(filters))
                .ok_or_else(|| Error::InvalidArgument("output length overflows".into()))?,
        };
        check_len("output", expected, output.len())?;
        if let Some(residual) = residual {
            check_len("residual", output.len(), residual.len())?;
        }
        Ok(self.kernel.run(input, (output, pitch), residual, ws))
    }

    pub fn spec(&self) -> &ConvSpec {
        &self.spec
    }
    pub fn method(&self) -> Method {
        self.method
    }
    /// The instruction set the kernels run with.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// Fraction of the weights that are exactly zero.
    pub fn weight_sparsity(&self) -> f64 {
        self.weight_sparsity
    }
    /// The most bytes of its [`Workspace`] a run on the current rayon pool fills, whatever
    /// the input (saturating): a layer can ask for far more scratch than its weights and
    /// tensors take (a lowered matrix is `R x S` times its input, and a sparse one may hold
    /// every value), so a runtime checks this against its memory budget before the first
    /// run. [`Workspace::bytes`] never exceeds it after a run of this layer alone.
    pub fn scratch_bytes(&self) -> usize {
        self.scratch().total()
    }

    /// [`Conv::scratch_bytes`] by kind: the shared floats every layer reuses, and the
    /// method's own scratch.
    pub fn scratch(&self) -> ScratchBytes {
        self.kernel.scratch()
    }
}

/// Filters of a group once padded to whole weight panels, as `isa`'s kernels read them.
pub(crate) fn panel_filters(filters_per_group: usize, isa: Isa) -> usize {
    let width = match isa {
        Isa::Avx512 => panels::WeightPanels::<8>::WIDTH,
        _ => panels::WeightPanels::<4>::WIDTH,
    };
    filters_per_group.next_multiple_of(width)
}

fn check_len(what: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::BufferLength {
            what,
            expected,
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_prepared_together_share_panels_and_compute_the_same() {
        let spec = ConvSpec::new(8, 6, 5, 20, [3, 3])
            .with_padding([1, 1, 1, 1])
            .with_bias(true);
        let weights: Vec<f32> = (0..spec.weight_len().unwrap())
            .map(|i| {
                if i % 3 == 0 {
                    0.0
                } else {
                    (i % 7) as f32 - 3.0
                }
            })
            .collect();
        let bias: Vec<f32> = (0..spec.filters).map(|m| m as f32 * 0.5).collect();
        let input: Vec<f32> = (0..spec.input_len().unwrap())
            .map(|i| if i % 2 == 0 { 0.0 } else { (i % 5) as f32 })
            .collect();
        let methods = [
            Method::Dense,
            Method::LoweredCsr,
            Method::Im2Csr,
            Method::Im2Csoa,
        ];
        let together = Conv::prepare_methods(&spec, &weights, Some(&bias), &methods).unwrap();
        let mut ws = Workspace::default();
        for (conv, &m) in together.iter().zip(&methods) {
            assert_eq!(conv.method(), m);
            let alone = Conv::prepare(&spec, &weights, Some(&bias), m).unwrap();
            let mut expected = vec![0.0; spec.output_len().unwrap()];
            let mut actual = expected.clone();
            alone.run(&input, &mut expected, &mut ws).unwrap();
            conv.run(&input, &mut actual, &mut ws).unwrap();
            assert_eq!(actual, expected, "{m}");
        }
        let nonzeros = weights.iter().filter(|&&w| w != 0.0).count();
        let zeros = super::select::WeightZeros::of(&spec, &weights);
        let panels = Method::Im2Csr.prepared_bytes(&spec, nonzeros, zeros);
        assert_eq!(
            Method::prepared_bytes_of(&methods, &spec, nonzeros, zeros),
            Method::Dense.prepared_bytes(&spec, nonzeros, zeros) + panels
        );
        assert_eq!(
            Method::prepared_bytes_of(&[Method::Im2Csoa], &spec, nonzeros, zeros),
            panels
        );
    }

    /// The methods share the workspace's floats and some scratch types: run layer after
    /// layer, every method in turn through one workspace, each output is the same as with a
    /// workspace of its own (no method reads what another left).
    #[test]
    fn one_workspace_serves_every_method_in_turn() {
        let big = ConvSpec::new(6, 9, 7, 12, [3, 3])
            .with_padding([1, 2, 1, 0])
            .with_bias(true);
        let small = ConvSpec::new(4, 3, 5, 3, [1, 3])
            .with_stride([2, 1])
            .with_bias(true);
        let value = |i: usize| match i % 4 {
            0 => 0.0,
            r => (i % 11) as f32 - r as f32 * 2.0,
        };
        let mut shared = Workspace::default();
        for spec in [big, small, big, small] {
            let weights: Vec<f32> = (0..spec.weight_len().unwrap()).map(value).collect();
            let input: Vec<f32> = (0..spec.input_len().unwrap())
                .map(|i| value(i + 1))
                .collect();
            let bias = vec![0.25; spec.filters];
            let convs = Conv::prepare_methods(&spec, &weights, Some(&bias), &Method::ALL).unwrap();
            for conv in convs.iter().chain(convs.iter().rev()) {
                let mut alone = vec![f32::NAN; spec.output_len().unwrap()];
                let mut after_others = alone.clone();
                conv.run(&input, &mut alone, &mut Workspace::default())
                    .unwrap();
                conv.run(&input, &mut after_others, &mut shared).unwrap();
                assert_eq!(after_others, alone, "{} on {spec:?}", conv.method());
            }
        }
    }
}
