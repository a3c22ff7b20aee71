//! The naive convolution: seven nested loops, accumulated in f64. It is slow on purpose and
//! simple enough to be obviously right; every fast method is tested against it.

use super::method::{no_terms, MethodEntry, Skips};
use super::run_loop::Clock;
use super::{ConvKernel, ConvSpec, Epilogue, ScratchBytes, Timing, Workspace};
use rayon::prelude::*;

/// The reference's place in the method table: no cost terms, for it is never chosen.
pub(super) const ENTRY: MethodEntry = MethodEntry {
    name: "reference",
    skips: Skips {
        input_zeros: false,
        weight_zeros: false,
    },
    terms: &[],
    term_values: no_terms,
    prepared_bytes: |spec, _, _| spec.weight_len().unwrap_or(usize::MAX).saturating_mul(4),
    reads_panels: false,
    prepare: |spec, weights, epilogue, _, _| Ok(Box::new(Reference::new(*spec, weights, epilogue))),
};

pub(crate) struct Reference {
    spec: ConvSpec,
    weights: Vec<f32>,
    epilogue: Epilogue,
}

impl Reference {
    pub fn new(spec: ConvSpec, weights: &[f32], epilogue: Epilogue) -> Self {
        Reference {
            spec,
            weights: weights.to_vec(),
            epilogue,
        }
    }
}

impl ConvKernel for Reference {
    fn scratch(&self) -> ScratchBytes {
        ScratchBytes::default()
    }

    fn run(
        &self,
        input: &[f32],
        (output, pitch): (&mut [f32], usize),
        residual: Option<&[f32]>,
        _ws: &mut Workspace,
    ) -> Timing {
        let s = &self.spec;
        let [oh, ow] = s.output_size();
        let mut clock = Clock::default();
        // One output pixel (all its filters) per task, over the whole batch: the loops
        // inside stay naive.
        let zeros = clock.multiply(|| {
            output
                .par_chunks_mut(pitch)
                .enumerate()
                .map(|(pixel, out)| {
                    let out = &mut out[..s.filters];
                    let (n, oy, ox) = (pixel / (oh * ow), pixel / ow % oh, pixel % ow);
                    for (m, out) in out.iter_mut().enumerate() {
                        let added = residual.map_or(0.0, |r| r[pixel * s.filters + m] as f64);
                        let sum = self.output_value(input, n, oy, ox, m) + added;
                        *out = self.epilogue.apply(m, sum as f32);
                    }
                    out.iter().filter(|&&v| v == 0.0).count()
                })
                .sum()
        });
        clock.count_zeros(zeros);
        clock.timing()
    }
}

impl Reference {
    /// Output `(n, oy, ox, m)` before bias and activation: the sum over the receptive field.
    fn output_value(&self, input: &[f32], n: usize, oy: usize, ox: usize, m: usize) -> f64 {
        let s = &self.spec;
        let [r_len, s_len] = s.kernel;
        let (cg, mg) = (s.channels_per_group(), s.filters_per_group());
        let g = m / mg;
        let mut acc = 0.0f64;
        for r in 0..r_len {
            let Some(iy) = s.input_row(oy, r) else {
                continue;
            };
            for q in 0..s_len {
                let Some(ix) = s.input_col(ox, q) else {
                    continue;
                };
                let pixel = ((n * s.height + iy) * s.width + ix) * s.channels + g * cg;
                for c in 0..cg {
                    let w = self.weights[((m * cg + c) * r_len + r) * s_len + q];
                    acc += input[pixel + c] as f64 * w as f64;
                }
            }
        }
        acc
    }
}
