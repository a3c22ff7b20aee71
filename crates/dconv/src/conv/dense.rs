//! The conventional method: lower each image to the dense matrix L (im2row, see
//! [`im2col`](super::im2col)), then multiply it with the packed weights by a dense GEMM (the
//! `gemm` crate): `Y_g (P x Mg) = L_g (P x K) x W^T_g (K x Mg)` for each group `g`, written
//! straight into the NHWC output at column offset `g * Mg`. Every zero is multiplied; this is
//! the baseline the sparse methods have to beat.
//!
//! A layer with few input channels (a network's first layer, on 3 colour channels) takes a
//! direct path instead: its lowered matrix has K = 27 columns, so building it (a few short
//! copies per row) and packing it for the GEMM cost more than the product. So does a grouped
//! layer with few taps per group (ShuffleNet's 1x1 groups of 34 and 68 channels), whose GEMMs
//! are narrow and repack a strided slice of the input per group; and any layer whose
//! weights for one panel of filters fit L2 ([`direct_applies`]): on a small image, where the
//! GEMM repacks all its weights for a few pixels, and with AVX2 on any image.
//! The input is padded once (when the layer pads), and [`DirectConv`] broadcasts each input
//! value straight from it against a vector of filters, with the bias, activation and zero
//! count fused. A depthwise layer takes its own path ([`depthwise`]).

use super::depthwise::{self, Depthwise};
use super::im2col::{lower, over_padded_images, pad_rows};
use super::method::{MethodEntry, Skips};
use super::run_loop::over_images;
use super::shifted_gemm;
use super::{ConvKernel, ConvSpec, Epilogue, RunEpilogue, ScratchBytes, Timing, Workspace};
use crate::cache::CacheSizes;
use crate::kernels::direct_conv::{DirectBand, DirectConv, OutputPixels, FILTER_ALIGN};
use crate::kernels::gemm::gemm_f32;
use crate::kernels::Isa;
use crate::limits::saturating_product;
use rayon::prelude::*;

/// Output rows per rayon task in the epilogue pass.
const EPILOGUE_ROWS_PER_TASK: usize = 64;

/// Output pixels per band of a 1x1 layer (see `Dense::multiply_in_bands`): enough rows for
/// the GEMM's tiles, few enough that a band's output stays in L2 for its epilogue.
const BAND_ROWS: usize = 256;

/// Input channels up to which an ungrouped layer takes the direct path.
const DIRECT_MAX_CHANNELS: usize = 4;
/// Taps per group (`Cg * R * S`) up to which a grouped layer takes it. On ShuffleNet's 1x1
/// layers (4 groups), whose input the GEMM multiplies as it is, the direct path matched the
/// GEMM's per-group products at 34 and 68 taps and was 7 % slower at 136; with fewer taps
/// it wins outright (6 taps: 1.8x).
const DIRECT_MAX_GROUP_TAPS_1X1: usize = 128;
/// The same with the AVX2 kernel, whose tiles run across rows and bands are whole tiles: on a
/// Zen 3 it matched the GEMM at 136 taps (14 x 14 and 28 x 28) and beat it from 256 on
/// (1088 -> 272 in 4 groups at 7 x 7 13 % faster, 1024 -> 1024 at 14 x 14 12 %, 2048 ->
/// 2048 at 7 x 7 24 %; ShuffleNet's convolutions 2-6 % less time in all).
const DIRECT_MAX_GROUP_TAPS_1X1_AVX2: usize = 512;

/// Taps per group up to which a grouped 1x1 layer takes the direct path with `isa`'s kernel.
fn direct_max_group_taps_1x1(isa: Isa) -> usize {
    match isa {
        Isa::Avx2 => DIRECT_MAX_GROUP_TAPS_1X1_AVX2,
        _ => DIRECT_MAX_GROUP_TAPS_1X1,
    }
}
/// The same for the other kernels, whose GEMMs also lower or shift the input: 3x3 groups of
/// 8 channels 2x faster, of 16 1.2x, of 24 1.03x, of 32 10-20 % slower.
const DIRECT_MAX_GROUP_TAPS: usize = 224;
/// Output pixels up to which an ungrouped layer takes it, when the weights its tiles stream
/// fit L2 ([`panel_fits_l2`]), with the AVX-512 and the portable kernels. At 7 x 7 the GEMM
/// repacks the weights on every call (a third of its time on 512 -> 2048), and in a model
/// they come cold from memory, where the direct kernel streams each panel of filters in
/// order: eight layers 512 <-> 2048 at 7 x 7, 7.1-7.4 -> 6.5-6.8 ms at 1 thread and 5.7-6.0
/// -> 3.8-4.2 ms at 2 (Xeon). At 14 x 14 the GEMM's own tiles were 12-15 % faster there
/// (1024 -> 256; 128 -> 512 at 28 x 28), with tiles that did not yet run across rows.
///
/// The AVX2 kernel takes every such layer, whatever its image: on a Zen 3, against the
/// `gemm` crate's 16 x 6 AVX2 tiles (and the shifted GEMMs), ResNet-50's convolutions
/// under `dense` took 131 -> 110 ms (256 -> 256 3x3 at 14 x 14 5.1 -> 2.9 ms), VGG-19's
/// 488 -> 452 ms, Inception v2's 3x3 layers at 14 x 14 and 28 x 28 8-20 % less, and no
/// layer of ResNet-50, VGG-19, Inception v2, DenseNet-121 or EfficientNet-Lite0 more.
const DIRECT_MAX_PIXELS: usize = 64;

/// Output pixels up to which an ungrouped layer takes the direct path with `isa`'s kernel
/// ([`DIRECT_MAX_PIXELS`]).
fn direct_max_pixels(isa: Isa) -> usize {
    match isa {
        Isa::Avx2 => usize::MAX,
        _ => DIRECT_MAX_PIXELS,
    }
}

/// Output pixels per band of the direct path, about ([`direct_band_pixels`]). Bands run on
/// from one row into the next and hold whole tiles of [`DIRECT_TILE_PIXELS`], so that only
/// an image's last band ends in a narrower tile, whose few sums do not cover the FMA
/// latency: in bands of whole rows, a 55-pixel row was nine 6-pixel tiles and a lone pixel
/// that took two thirds of a tile's time. 3x3 layers at 55 x 55, 56 x 56 and 13 x 13 ran
/// 7-11 % faster in bands of whole tiles (AVX2, Zen 3). Bands stay short so that the input
/// rows under a band stay in L1 while every block of filters sweeps them.
const DIRECT_BAND_PIXELS: usize = 60;
/// Pixels of the SIMD kernels' widest tile over 16 filters (AVX2's and AVX-512's).
const DIRECT_TILE_PIXELS: usize = 6;
/// Filters per group from which either does: with fewer, most of each vector of 16 filters
/// would be padding (computed and kept), and the GEMM path costs about as much.
const DIRECT_MIN_FILTERS: usize = 8;

/// Whether `spec` takes the direct path with `isa`'s kernel (when its tap offsets also fit
/// 32 bits).
fn direct_applies(spec: &ConvSpec, isa: Isa) -> bool {
    let few_taps = if spec.groups == 1 {
        spec.channels <= DIRECT_MAX_CHANNELS
            || (spec.out_pixels() <= direct_max_pixels(isa)
                && panel_fits_l2(spec, DirectConv::for_isa(isa), &CacheSizes::detect()))
    } else {
        let most = if input_is_lowered(spec) {
            direct_max_group_taps_1x1(isa)
        } else {
            DIRECT_MAX_GROUP_TAPS
        };
        spec.lowered_cols() <= most && !depthwise::applies(spec)
    };
    few_taps && spec.filters_per_group() >= DIRECT_MIN_FILTERS
}

/// Whether the weights that each tile of `kernel` streams, every tap of one panel of filters
/// ([`DirectConv::panel`]), fit half of L2: then they come from L2 for every tile after the
/// first, and from L3 where they do not. On a Zen 3 (512 KB L2, 16-filter panels), 3x3 over
/// 512 channels at 7 x 7 (295 KB) ran 15 % slower than by the GEMM; 2048 -> 512 (128 KB) 20 %
/// faster. (Panels of 64 filters on AVX2 had made 2048 -> 512 and 1152 -> 192 slower than the
/// GEMM, and an L1 rule stood here.)
fn panel_fits_l2(spec: &ConvSpec, kernel: DirectConv, cache: &CacheSizes) -> bool {
    saturating_product(&[4, kernel.panel(), spec.lowered_cols()]) <= cache.l2_share(1, 2)
}

/// Writes one filter's ONNX weights (`[Cg][R][S]`) into `dst`, the weight of tap
/// `k = (r * S + s) * Cg + c` (the lowered order) at `place(k)`.
fn pack_filter(spec: &ConvSpec, filter: &[f32], dst: &mut [f32], place: impl Fn(usize) -> usize) {
    let cg = spec.channels_per_group();
    let [r_len, s_len] = spec.kernel;
    for c in 0..cg {
        for r in 0..r_len {
            for s in 0..s_len {
                let k = (r * s_len + s) * cg + c;
                dst[place(k)] = filter[(c * r_len + r) * s_len + s];
            }
        }
    }
}

pub(crate) struct Dense {
    spec: ConvSpec,
    /// `W^T` of each group, `[G][K][Mg]`, with `k = (r * S + s) * Cg + c` as in the lowered
    /// matrix.
    packed: Vec<f32>,
    epilogue: Epilogue,
    /// The direct path, for layers with few taps (per group) or few pixels.
    direct: Option<Direct>,
    /// The path of depthwise layers.
    depthwise: Option<Depthwise>,
}

/// Dense's place in the method table. Its cost: fixed + mac · MACs + lowered · P·K (im2col
/// writes every lowered element; 0 where it lowers nothing: 1x1 stride-1 layers, and those
/// it sums shifted GEMMs for).
pub(super) const ENTRY: MethodEntry = MethodEntry {
    name: "dense",
    skips: Skips {
        input_zeros: false,
        weight_zeros: false,
    },
    terms: &["fixed", "mac", "lowered"],
    term_values: |s, _, _| [1.0, s.macs, s.dense_lowered, 0.0, 0.0, 0.0],
    prepared_bytes: |spec, _, _| prepared_bytes(spec),
    reads_panels: false,
    prepare: |spec, weights, epilogue, isa, _| {
        Ok(Box::new(Dense::new(*spec, weights, epilogue, isa)))
    },
};

/// At most how many bytes [`Dense::new`] keeps for `spec` (saturating): the GEMM's packed
/// weights, or those of the direct path, whose filters are padded to a multiple of
/// [`FILTER_ALIGN`] per group, plus its bias and tap offsets.
pub(crate) fn prepared_bytes(spec: &ConvSpec) -> usize {
    let weights = spec.weight_len().unwrap_or(usize::MAX);
    let gemm = weights.saturating_mul(4);
    if !direct_applies(spec, Isa::detect()) {
        return gemm;
    }
    let k = spec.lowered_cols();
    let mgp = spec.filters_per_group().saturating_add(FILTER_ALIGN - 1);
    let direct = saturating_product(&[spec.groups, k.saturating_add(1), mgp]).saturating_add(k);
    gemm.max(direct.saturating_mul(4))
}

/// The weights of the direct path, and where its taps read in the padded input.
struct Direct {
    kernel: DirectConv,
    /// Height and width of the zero-padded input.
    padded: [usize; 2],
    /// Filters per group padded to a multiple of [`FILTER_ALIGN`].
    mgp: usize,
    /// `[G][K x Mgp]`: each group's weights in the direct kernel's panels
    /// ([`DirectConv::packed_index`]), its filters padded to `Mgp` (zeros past `Mg`).
    weights: Vec<f32>,
    /// `[G][Mgp]`.
    bias: Vec<f32>,
    /// Offset of tap `k = (r * S + s) * Cg + c` from a window's first float in group 0 (a
    /// group's window starts `g * Cg` floats later).
    taps: Vec<u32>,
}

impl Direct {
    /// The direct path for `spec`, when it takes one ([`direct_applies`], and tap offsets
    /// that fit 32 bits). `weights` are ONNX `[M][Cg][R][S]`.
    fn new(spec: &ConvSpec, weights: &[f32], epilogue: &Epilogue, isa: Isa) -> Option<Self> {
        if !direct_applies(spec, isa) {
            return None;
        }
        let padded = spec.padded_size().ok()?;
        let (c_len, cg) = (spec.channels, spec.channels_per_group());
        let mg = spec.filters_per_group();
        let [r_len, s_len] = spec.kernel;
        let [dh, dw] = spec.dilation;
        let mut taps = Vec::with_capacity(spec.lowered_cols());
        for r in 0..r_len {
            for s in 0..s_len {
                for c in 0..cg {
                    let offset = (r * dh)
                        .checked_mul(padded[1])?
                        .checked_add(s * dw)?
                        .checked_mul(c_len)?
                        .checked_add(c)?;
                    taps.push(u32::try_from(offset).ok()?);
                }
            }
        }
        let kernel = DirectConv::for_isa(isa);
        let mgp = mg.next_multiple_of(FILTER_ALIGN);
        let group_len = taps.len() * mgp;
        let mut packed = vec![0.0; spec.groups * group_len];
        let mut bias = vec![0.0; spec.groups * mgp];
        for (m, filter) in weights.chunks_exact(spec.lowered_cols()).enumerate() {
            let (g, j) = (m / mg, m % mg);
            let group = &mut packed[g * group_len..(g + 1) * group_len];
            pack_filter(spec, filter, group, |k| {
                kernel.packed_index(taps.len(), mgp, k, j)
            });
            bias[g * mgp + j] = epilogue.bias[m];
        }
        Some(Direct {
            kernel,
            padded,
            mgp,
            weights: packed,
            bias,
            taps,
        })
    }
}

impl Dense {
    /// Packs ONNX `[M][Cg][R][S]` weights; `spec` must be validated and `weights` checked.
    pub fn new(spec: ConvSpec, weights: &[f32], epilogue: Epilogue, isa: Isa) -> Self {
        let direct = Direct::new(&spec, weights, &epilogue, isa);
        let depthwise = depthwise::applies(&spec).then(|| Depthwise::new(&spec, weights, isa));
        // Neither path uses the GEMM's packing.
        let mut packed = Vec::new();
        if direct.is_none() && depthwise.is_none() {
            let mg = spec.filters_per_group();
            let k_len = spec.lowered_cols();
            packed = vec![0.0; weights.len()];
            for (m, filter) in weights.chunks_exact(k_len).enumerate() {
                let (g, j) = (m / mg, m % mg);
                let group = &mut packed[g * k_len * mg..(g + 1) * k_len * mg];
                pack_filter(&spec, filter, group, |k| k * mg + j);
            }
        }
        Dense {
            spec,
            packed,
            epilogue,
            direct,
            depthwise,
        }
    }

    /// A layer whose input is its lowered matrix (1x1, stride 1): the output's pixels in
    /// bands, one task per band, each band multiplied on one thread and finished while it is
    /// in cache. Small products split this way scale to the pool's threads better than
    /// inside the GEMM; returns the output's zeros when an epilogue ran.
    fn multiply_in_bands(
        &self,
        image: &[f32],
        (out, pitch): (&mut [f32], usize),
        epilogue: RunEpilogue,
        threads: usize,
    ) -> Option<usize> {
        let s = &self.spec;
        let c_len = s.channels;
        let (cg, mg) = (s.channels_per_group(), s.filters_per_group());
        let k_len = s.lowered_cols();
        let band = band_rows(s.out_pixels(), threads);
        let zeros = out
            .par_chunks_mut(band * pitch)
            .zip(image.par_chunks(band * c_len))
            .map(|(out, image)| {
                let rows = out.len().div_ceil(pitch);
                for g in 0..s.groups {
                    let rhs = &self.packed[g * k_len * mg..(g + 1) * k_len * mg];
                    let (dst, lhs) = (&mut out[g * mg..], &image[g * cg..]);
                    gemm_f32((rows, mg, k_len), dst, pitch, lhs, c_len, rhs, mg, 1);
                }
                self.apply_epilogue_serial((out, pitch), epilogue)
            })
            .sum();
        epilogue.has_work(self.spec.bias).then_some(zeros)
    }

    /// The epilogue over `out`'s pixels (`pitch` floats apart) on the calling thread; its
    /// zeros (0 without one).
    fn apply_epilogue_serial(
        &self,
        (out, pitch): (&mut [f32], usize),
        epilogue: RunEpilogue,
    ) -> usize {
        if !epilogue.has_work(self.spec.bias) {
            return 0;
        }
        epilogue.apply_rows(out, pitch, self.spec.filters, 0)
    }

    /// Adds the bias (and the residual) and applies the activation to one image's output
    /// pixels (`pitch` floats apart); returns its zeros, or None when there is nothing to
    /// apply (and so no pass to count them in).
    fn apply_epilogue(
        &self,
        (out, pitch): (&mut [f32], usize),
        epilogue: RunEpilogue,
    ) -> Option<usize> {
        if !epilogue.has_work(self.spec.bias) {
            return None;
        }
        let zeros = out
            .par_chunks_mut(EPILOGUE_ROWS_PER_TASK * pitch)
            .map(|chunk| self.apply_epilogue_serial((chunk, pitch), epilogue))
            .sum();
        Some(zeros)
    }
}

/// Rows per band when `pixels` rows are cut into bands for `threads` threads: at most
/// [`BAND_ROWS`], and a whole number of bands per thread, as even as rows allow (729 rows
/// on 2 threads in bands of 256 gave one thread twice the other's work).
fn band_rows(pixels: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    let bands = pixels.div_ceil(BAND_ROWS).next_multiple_of(threads);
    pixels.div_ceil(bands).max(1)
}

/// Output pixels per band of the direct path over an image of `pixels`: bands of at most
/// about [`DIRECT_BAND_PIXELS`], as many on each thread, as even as whole tiles allow.
fn direct_band_pixels(pixels: usize, threads: usize) -> usize {
    let bands = pixels
        .div_ceil(DIRECT_BAND_PIXELS)
        .next_multiple_of(threads.max(1))
        .max(1);
    pixels
        .div_ceil(bands)
        .next_multiple_of(DIRECT_TILE_PIXELS)
        .max(DIRECT_TILE_PIXELS)
}

/// Whether the NHWC input already is L: a 1x1 kernel at stride 1 without padding
/// (group `g` is then the column block `g * Cg..` of rows of stride C).
fn input_is_lowered(s: &ConvSpec) -> bool {
    s.kernel == [1, 1] && s.stride == [1, 1] && s.padding == Default::default()
}

/// Whether the dense method writes a lowered matrix for this layer: not when it takes the
/// direct or the depthwise path, when the input is one already, nor when it sums shifted
/// GEMMs.
pub(crate) fn lowers(s: &ConvSpec) -> bool {
    !direct_applies(s, Isa::detect())
        && !depthwise::applies(s)
        && !input_is_lowered(s)
        && !shifted_gemm::applies(s)
}

/// Bytes of lowered rows multiplied at a time: the lowered matrix of an early layer (a
/// 240x240x64 input lowers to 132 MB) would otherwise go through memory twice, and a block
/// this size is still large enough that repacking the weights per block costs little.
const LOWERED_BLOCK_BYTES: usize = 8 << 20;

/// Lowered rows multiplied at a time (see [`LOWERED_BLOCK_BYTES`]).
fn lowered_block_rows(s: &ConvSpec) -> usize {
    (LOWERED_BLOCK_BYTES / (4 * s.lowered_cols())).clamp(1, s.out_pixels())
}

impl Dense {
    /// Floats of the workspace's shared buffer a run on `threads` threads uses: the
    /// padded image (direct path), the image with its channels expanded (depthwise with a
    /// channel multiplier), a band of rows per thread (shifted GEMMs), or a block of
    /// lowered rows.
    fn lowered_len(&self, threads: usize) -> usize {
        let s = &self.spec;
        if let Some(direct) = &self.direct {
            // Without padding the direct path reads the input itself.
            let pads = s.padding != Default::default();
            saturating_product(&[
                direct.padded[0],
                direct.padded[1],
                s.channels,
                pads as usize,
            ])
        } else if self.depthwise.is_some() {
            depthwise::expanded_len(s)
        } else if input_is_lowered(s) {
            0
        } else if shifted_gemm::applies(s) {
            threads.saturating_mul(shifted_gemm::scratch_len(s))
        } else {
            lowered_block_rows(s).saturating_mul(s.lowered_cols())
        }
    }

    /// The direct path: pads each image into the workspace (when the layer pads), then
    /// computes the output row by row (in bands of pixels where the input is the lowered
    /// matrix), group by group, finished (bias, activation) and with its zeros counted.
    fn run_direct(
        &self,
        direct: &Direct,
        input: &[f32],
        ((output, pitch), epilogue): ((&mut [f32], usize), RunEpilogue),
        ws: &mut Workspace,
    ) -> Timing {
        let s = &self.spec;
        let (c_len, m_len) = (s.channels, s.filters);
        let (cg, mg) = (s.channels_per_group(), s.filters_per_group());
        let group_len = direct.taps.len() * direct.mgp;
        let [ph, pw] = direct.padded;
        let curve = epilogue.curve();
        let threads = rayon::current_num_threads();
        let pixel_step = s.stride[1] * c_len;
        // (pixels per band, pixels per image row, floats between the windows of rows)
        let (band_pixels, row_pixels, row_step) = if input_is_lowered(s) {
            let band = band_rows(s.out_pixels(), threads);
            (band, band, band * pixel_step)
        } else {
            (
                direct_band_pixels(s.out_pixels(), threads),
                s.out_width(),
                s.stride[0] * pw * c_len,
            )
        };
        over_padded_images(
            s,
            (input, (output, pitch)),
            ws,
            (self.lowered_len(threads), band_pixels),
            |image, padded| pad_rows(s, image, 0..ph, padded),
            |chunk, padded, out| {
                let at = OutputPixels {
                    count: out.len().div_ceil(pitch),
                    filters: mg,
                    stride: pitch,
                };
                let first = chunk * band_pixels;
                let zeros = (0..s.groups)
                    .map(|g| {
                        let band = DirectBand {
                            input: padded,
                            base: first / row_pixels * row_step + g * cg,
                            first_column: first % row_pixels,
                            pixel_step,
                            row_pixels,
                            row_step,
                            taps: &direct.taps,
                            weights: &direct.weights[g * group_len..(g + 1) * group_len],
                            bias: &direct.bias[g * direct.mgp..(g + 1) * direct.mgp],
                            curve,
                        };
                        direct.kernel.band(&band, at, &mut out[g * mg..])
                    })
                    .sum::<usize>();
                epilogue.add_residual(out, pitch, m_len).unwrap_or(zeros)
            },
        )
    }
}

impl ConvKernel for Dense {
    fn scratch(&self) -> ScratchBytes {
        ScratchBytes::floats(self.lowered_len(rayon::current_num_threads()))
    }

    fn run(
        &self,
        input: &[f32],
        (output, pitch): (&mut [f32], usize),
        residual: Option<&[f32]>,
        ws: &mut Workspace,
    ) -> Timing {
        let epilogue = self.epilogue.adding(residual, output);
        if let Some(direct) = &self.direct {
            return self.run_direct(direct, input, ((output, pitch), epilogue), ws);
        }
        if let Some(depthwise) = &self.depthwise {
            return depthwise.run(&self.spec, epilogue, input, (output, pitch), ws);
        }
        let s = &self.spec;
        let (p_len, k_len) = (s.out_pixels(), s.lowered_cols());
        let mg = s.filters_per_group();
        let input_lowered = input_is_lowered(s);
        let shifted = !input_lowered && shifted_gemm::applies(s);
        let block_rows = lowered_block_rows(s);
        let threads = rayon::current_num_threads();
        let scratch = ws.floats(self.lowered_len(threads));
        over_images(s, (input, (output, pitch)), |image, out, clock| {
            if input_lowered {
                let zeros = clock
                    .multiply(|| self.multiply_in_bands(image, (out, pitch), epilogue, threads));
                if let Some(zeros) = zeros {
                    clock.count_zeros(zeros);
                }
                return;
            }
            if shifted {
                let epilogue = epilogue.has_work(s.bias).then_some(epilogue);
                let zeros = clock.multiply(|| {
                    let out = (out, pitch);
                    shifted_gemm::convolve(s, &self.packed, epilogue, image, out, scratch, threads)
                });
                if epilogue.is_some() {
                    clock.count_zeros(zeros);
                }
                return;
            }
            for g in 0..s.groups {
                let rhs = &self.packed[g * k_len * mg..(g + 1) * k_len * mg];
                for first in (0..p_len).step_by(block_rows) {
                    let rows = first..(first + block_rows).min(p_len);
                    let lowered = &mut scratch[..rows.len() * k_len];
                    clock.convert(|| lower(s, image, g, rows.clone(), lowered));
                    let dst = &mut out[rows.start * pitch + g * mg..];
                    clock.multiply(|| {
                        gemm_f32(
                            (rows.len(), mg, k_len),
                            dst,
                            pitch,
                            lowered,
                            k_len,
                            rhs,
                            mg,
                            threads,
                        )
                    });
                }
            }
            // Without an epilogue no pass counts the zeros, and they stay unknown.
            if let Some(zeros) = clock.multiply(|| self.apply_epilogue((out, pitch), epilogue)) {
                clock.count_zeros(zeros);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::Activation;

    #[test]
    fn bands_are_even_across_threads() {
        for (pixels, threads, band) in [
            (729, 2, 183),
            (729, 1, 243),
            (49, 2, 25),
            (3136, 2, 224),
            (1, 4, 1),
        ] {
            assert_eq!(band_rows(pixels, threads), band, "{pixels} on {threads}");
            let bands = pixels.div_ceil(band);
            assert!(band <= BAND_ROWS && (bands.is_multiple_of(threads) || bands < threads));
        }
    }

    /// Direct bands are whole tiles of pixels, whatever the image's width, at most a tile
    /// over [`DIRECT_BAND_PIXELS`], and every thread has one where there are tiles enough.
    #[test]
    fn direct_bands_are_whole_tiles() {
        for (pixels, threads, band) in [
            (3025, 1, 60),
            (3025, 2, 60),
            (169, 1, 60),
            (169, 2, 48),
            (49, 1, 54),
            (49, 2, 30),
            (196, 4, 54),
            (9, 2, 6),
            (4, 2, 6),
            (0, 1, 6),
        ] {
            assert_eq!(
                direct_band_pixels(pixels, threads),
                band,
                "{pixels} on {threads}"
            );
            assert!(band.is_multiple_of(DIRECT_TILE_PIXELS));
            assert!(band < DIRECT_BAND_PIXELS + DIRECT_TILE_PIXELS);
            if pixels >= threads * DIRECT_TILE_PIXELS {
                assert!(pixels.div_ceil(band) >= threads, "{pixels} on {threads}");
            }
        }
    }

    #[test]
    fn small_images_go_direct_while_a_panel_fits_l2() {
        let cache = CacheSizes {
            l1d: 32 << 10,
            l2: 512 << 10,
        };
        let kernel = DirectConv::for_isa(Isa::Portable);
        assert_eq!(kernel.panel(), 16);
        // 16 filters x 1728 taps x 4 bytes = 108 KB; x 4608 taps = 288 KB.
        let inception = ConvSpec::new(192, 7, 7, 320, [3, 3]).with_padding([1, 1, 1, 1]);
        let resnet = ConvSpec::new(512, 7, 7, 512, [3, 3]).with_padding([1, 1, 1, 1]);
        assert!(panel_fits_l2(&inception, kernel, &cache));
        assert!(!panel_fits_l2(&resnet, kernel, &cache));
    }

    /// The AVX2 kernel takes a layer of any image whose panel fits L2; the others, only a
    /// small image's.
    #[test]
    fn only_avx2_takes_large_images_direct() {
        // 16 filters x 72 taps x 4 bytes = 4.6 KB, within half of any L2.
        let spec = ConvSpec::new(8, 56, 56, 16, [3, 3]).with_padding([1, 1, 1, 1]);
        let small = ConvSpec::new(8, 8, 8, 16, [3, 3]).with_padding([1, 1, 1, 1]);
        assert!(direct_applies(&spec, Isa::Avx2));
        for isa in [Isa::Avx512, Isa::Portable] {
            assert!(!direct_applies(&spec, isa), "{isa}");
            assert!(direct_applies(&small, isa), "{isa}");
        }
    }

    /// Grouped 1x1 layers of 272 taps per group (ShuffleNet's last stage) go direct with
    /// AVX2 only; of 96, with every kernel; of 640, with none.
    #[test]
    fn only_avx2_takes_wide_groups_direct() {
        let grouped = |channels| ConvSpec::new(channels, 7, 7, 272, [1, 1]).with_groups(4);
        assert!(direct_applies(&grouped(1088), Isa::Avx2));
        for isa in [Isa::Avx512, Isa::Portable] {
            assert!(!direct_applies(&grouped(1088), isa), "{isa}");
        }
        for isa in [Isa::Avx2, Isa::Avx512, Isa::Portable] {
            assert!(direct_applies(&grouped(384), isa), "{isa}");
            assert!(!direct_applies(&grouped(2560), isa), "{isa}");
        }
    }

    #[test]
    fn prepared_bytes_bound_what_is_kept() {
        for (c, m, groups) in [
            (3, 64, 1),
            (1, 8, 1),
            (4, 9, 1),
            (2, 2, 1),
            (5, 8, 1),
            (4, 8, 2),
            (6, 12, 6),
            (8, 32, 4),
            (12, 36, 3),
        ] {
            // 81 pixels: more than the direct path takes for their number alone.
            let spec = ConvSpec::new(c, 9, 9, m, [3, 3])
                .with_padding([1, 1, 1, 1])
                .with_groups(groups);
            spec.validate().unwrap();
            let weights = vec![1.0; spec.weight_len().unwrap()];
            let epilogue = Epilogue {
                bias: vec![0.0; m],
                activation: Activation::None,
                isa: Isa::Portable,
            };
            let dense = Dense::new(spec, &weights, epilogue, Isa::Portable);
            let kept = dense.packed.len()
                + dense
                    .direct
                    .as_ref()
                    .map_or(0, |d| d.weights.len() + d.bias.len() + d.taps.len())
                + dense.depthwise.as_ref().map_or(0, |d| d.weights_len());
            assert!(kept * 4 <= prepared_bytes(&spec), "{spec:?}: {kept} floats");
            assert_eq!(
                dense.direct.is_some(),
                m / groups >= 8 && (c <= 4 && groups == 1 || groups > 1 && groups < c),
                "{spec:?}"
            );
            assert_eq!(
                dense.depthwise.is_some(),
                groups > 1 && groups == c,
                "{spec:?}"
            );
        }
    }
}
