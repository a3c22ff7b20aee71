//! The conventional method: lower each image to the dense matrix L (im2row, see
//! [`im2col`](super::im2col)), then multiply it with the packed weights by a dense GEMM (the
//! `gemm` crate): `Y_g (P x Mg) = L_g (P x K) x W^T_g (K x Mg)` for each group `g`, written
//! straight into the NHWC output at column offset `g * Mg`. Every zero is multiplied; this is
//! the baseline the sparse methods have to beat.

use super::im2col::lower;
use super::shifted_gemm;
use super::{Activation, ConvKernel, ConvSpec, Epilogue, Timing, Workspace};
use crate::kernels::gemm::gemm_f32;
use rayon::prelude::*;
use std::time::{Duration, Instant};

/// Output rows per rayon task in the epilogue pass.
const EPILOGUE_ROWS_PER_TASK: usize = 64;

pub(crate) struct Dense {
    spec: ConvSpec,
    /// `W^T` of each group, `[G][K][Mg]`, with `k = (r * S + s) * Cg + c` as in the lowered
    /// matrix.
    packed: Vec<f32>,
    epilogue: Epilogue,
}

impl Dense {
    /// Packs ONNX `[M][Cg][R][S]` weights; `spec` must be validated and `weights` checked.
    pub fn new(spec: ConvSpec, weights: &[f32], epilogue: Epilogue) -> Self {
        let (cg, mg) = (spec.channels_per_group(), spec.filters_per_group());
        let [r_len, s_len] = spec.kernel;
        let k_len = spec.lowered_cols();
        let mut packed = vec![0.0; weights.len()];
        for (m, filter) in weights.chunks_exact(k_len).enumerate() {
            let (g, j) = (m / mg, m % mg);
            let group = &mut packed[g * k_len * mg..(g + 1) * k_len * mg];
            for c in 0..cg {
                for r in 0..r_len {
                    for s in 0..s_len {
                        let k = (r * s_len + s) * cg + c;
                        group[k * mg + j] = filter[(c * r_len + r) * s_len + s];
                    }
                }
            }
        }
        Dense {
            spec,
            packed,
            epilogue,
        }
    }

    /// Adds the bias and applies the activation to one image's `[P][M]` output; returns its
    /// zeros, or None when there is nothing to apply (and so no pass to count them in).
    fn apply_epilogue(&self, out: &mut [f32]) -> Option<usize> {
        if !self.spec.bias && self.epilogue.activation == Activation::None {
            return None;
        }
        let m_len = self.spec.filters;
        let zeros = out
            .par_chunks_mut(EPILOGUE_ROWS_PER_TASK * m_len)
            .map(|chunk| {
                chunk
                    .chunks_exact_mut(m_len)
                    .map(|row| self.epilogue.apply_row(row, 0))
                    .sum::<usize>()
            })
            .sum();
        Some(zeros)
    }
}

/// Whether the NHWC input already is L: a 1x1 kernel at stride 1 without padding
/// (group `g` is then the column block `g * Cg..` of rows of stride C).
fn input_is_lowered(s: &ConvSpec) -> bool {
    s.kernel == [1, 1] && s.stride == [1, 1] && s.padding == Default::default()
}

/// Whether the dense method writes a lowered matrix for this layer: not when the input is
/// one already, nor when it sums shifted GEMMs.
pub(crate) fn lowers(s: &ConvSpec) -> bool {
    !input_is_lowered(s) && !shifted_gemm::applies(s)
}

/// Bytes of lowered rows multiplied at a time: the lowered matrix of an early layer (a
/// 240x240x64 input lowers to 132 MB) would otherwise go through memory twice, and a block
/// this size is still large enough that repacking the weights per block costs little.
const LOWERED_BLOCK_BYTES: usize = 8 << 20;

impl ConvKernel for Dense {
    fn run(&self, input: &[f32], output: &mut [f32], ws: &mut Workspace) -> Timing {
        let s = &self.spec;
        let (p_len, k_len) = (s.out_pixels(), s.lowered_cols());
        let (c_len, m_len) = (s.channels, s.filters);
        let (cg, mg) = (s.channels_per_group(), s.filters_per_group());
        let direct = input_is_lowered(s);
        let shifted = !direct && shifted_gemm::applies(s);
        let block_rows = (LOWERED_BLOCK_BYTES / (4 * k_len)).clamp(1, p_len);
        let threads = rayon::current_num_threads();
        let scratch = if shifted {
            threads * shifted_gemm::scratch_len(s)
        } else if direct {
            0
        } else {
            block_rows * k_len
        };
        if ws.lowered.len() < scratch {
            ws.lowered.resize(scratch, 0.0);
        }
        let (mut convert, mut multiply) = (Duration::ZERO, Duration::ZERO);
        let mut output_zeros = None;
        let in_image = s.height * s.width * c_len;
        for (image, out) in input
            .chunks_exact(in_image)
            .zip(output.chunks_exact_mut(p_len * m_len))
        {
            if shifted {
                let start = Instant::now();
                let scratch = &mut ws.lowered[..scratch];
                shifted_gemm::convolve(s, &self.packed, image, out, scratch, threads);
                multiply += start.elapsed();
            }
            for g in (0..s.groups).filter(|_| !shifted) {
                let rhs = &self.packed[g * k_len * mg..(g + 1) * k_len * mg];
                if direct {
                    let start = Instant::now();
                    gemm_f32(
                        (p_len, mg, k_len),
                        &mut out[g * mg..],
                        m_len,
                        &image[g * cg..],
                        c_len,
                        rhs,
                        mg,
                        threads,
                    );
                    multiply += start.elapsed();
                    continue;
                }
                for first in (0..p_len).step_by(block_rows) {
                    let rows = first..(first + block_rows).min(p_len);
                    let start = Instant::now();
                    let lowered = &mut ws.lowered[..rows.len() * k_len];
                    lower(s, image, g, rows.clone(), lowered);
                    let lowered_at = Instant::now();
                    convert += lowered_at - start;
                    let dst = &mut out[rows.start * m_len + g * mg..];
                    gemm_f32(
                        (rows.len(), mg, k_len),
                        dst,
                        m_len,
                        lowered,
                        k_len,
                        rhs,
                        mg,
                        threads,
                    );
                    multiply += lowered_at.elapsed();
                }
            }
            let start = Instant::now();
            let zeros = self.apply_epilogue(out);
            output_zeros = zeros.map(|z| output_zeros.unwrap_or(0) + z);
            multiply += start.elapsed();
        }
        Timing {
            convert,
            multiply,
            output_zeros,
        }
    }
}
