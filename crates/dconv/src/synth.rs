//! Synthetic tensors for tests and benchmarks: random values with a chosen fraction of
//! zeros, placed at random or clustered the way a ReLU leaves them.

use crate::error::{Error, Result};
use std::str::FromStr;

/// A small, fast, seedable generator (SplitMix64): reproducible data without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [-1, 1), never exactly zero.
    pub fn nonzero_value(&mut self) -> f32 {
        loop {
            let v = (self.unit() * 2.0 - 1.0) as f32;
            if v != 0.0 {
                return v;
            }
        }
    }
}

/// How zeros are laid out in a synthetic activation tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZeroPattern {
    /// Each element is zero independently with the asked probability.
    #[default]
    Random,
    /// Zeros clustered in space as a ReLU leaves them: a smoothed random field per channel,
    /// cut at the quantile that gives the asked sparsity.
    Relu,
}

impl FromStr for ZeroPattern {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "random" => Ok(ZeroPattern::Random),
            "relu" => Ok(ZeroPattern::Relu),
            _ => Err(Error::UnknownName {
                kind: "zero pattern",
                name: s.into(),
                expected: "random, relu".into(),
            }),
        }
    }
}

/// `len` values in [-1, 1) of which each is zero with probability `sparsity`.
pub fn random_sparse(len: usize, sparsity: f64, rng: &mut Rng) -> Vec<f32> {
    (0..len)
        .map(|_| {
            if rng.unit() < sparsity {
                0.0
            } else {
                rng.nonzero_value()
            }
        })
        .collect()
}

/// An NHWC activation tensor `[batch][height][width][channels]` of non-negative values with
/// `sparsity` zeros laid out by `pattern`. With `Relu`, the exact fraction is met up to ties.
pub fn activations(
    shape: [usize; 4],
    sparsity: f64,
    pattern: ZeroPattern,
    rng: &mut Rng,
) -> Vec<f32> {
    let [n, h, w, c] = shape;
    match pattern {
        ZeroPattern::Random => random_sparse(n * h * w * c, sparsity, rng)
            .into_iter()
            .map(f32::abs)
            .collect(),
        ZeroPattern::Relu => {
            let field = smooth_field(shape, rng);
            let mut sorted = field.clone();
            sorted.sort_by(f32::total_cmp);
            let cut_index = ((sparsity * sorted.len() as f64).round() as usize).min(sorted.len());
            // Everything strictly below the cut becomes zero; values above it stay, shifted
            // down as a ReLU of (field - threshold) would leave them.
            let threshold = if cut_index == sorted.len() {
                f32::INFINITY
            } else {
                sorted[cut_index]
            };
            // With no zeros asked for, nothing is cut and nothing shifted.
            let (below, shift) = if cut_index == 0 {
                (f32::NEG_INFINITY, 0.0)
            } else {
                (threshold, threshold)
            };
            field
                .into_iter()
                .map(|v| if v < below { 0.0 } else { v - shift + 1e-3 })
                .collect()
        }
    }
}

/// White noise per channel, box-blurred twice over a 5x5 window: neighbouring pixels get
/// similar values, so thresholding leaves blobs of zeros rather than salt and pepper.
fn smooth_field(shape: [usize; 4], rng: &mut Rng) -> Vec<f32> {
    let [n, h, w, c] = shape;
    let mut field: Vec<f32> = (0..n * h * w * c).map(|_| rng.unit() as f32).collect();
    let mut tmp = vec![0.0f32; field.len()];
    let idx = |b: usize, y: usize, x: usize, ch: usize| ((b * h + y) * w + x) * c + ch;
    for _ in 0..2 {
        for axis in 0..2 {
            for b in 0..n {
                for y in 0..h {
                    for x in 0..w {
                        for ch in 0..c {
                            let (pos, len) = if axis == 0 { (y, h) } else { (x, w) };
                            let lo = pos.saturating_sub(2);
                            let hi = (pos + 2).min(len - 1);
                            let mut sum = 0.0;
                            for t in lo..=hi {
                                sum += if axis == 0 {
                                    field[idx(b, t, x, ch)]
                                } else {
                                    field[idx(b, y, t, ch)]
                                };
                            }
                            tmp[idx(b, y, x, ch)] = sum / (hi - lo + 1) as f32;
                        }
                    }
                }
            }
            std::mem::swap(&mut field, &mut tmp);
        }
    }
    field
}

/// Fraction of exact zeros in `values`.
pub fn sparsity(values: &[f32]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().filter(|&&v| v == 0.0).count() as f64 / values.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_pattern_meets_the_sparsity_and_clusters() {
        let mut rng = Rng::new(7);
        let shape = [1, 32, 32, 4];
        let x = activations(shape, 0.8, ZeroPattern::Relu, &mut rng);
        assert!(
            (sparsity(&x) - 0.8).abs() < 0.01,
            "sparsity {}",
            sparsity(&x)
        );
        // A zero's right neighbour is zero far more often than 80 % of the time.
        let (mut both, mut zeros) = (0usize, 0usize);
        for y in 0..32 {
            for xx in 0..31 {
                let a = x[(y * 32 + xx) * 4];
                let b = x[(y * 32 + xx + 1) * 4];
                if a == 0.0 {
                    zeros += 1;
                    both += (b == 0.0) as usize;
                }
            }
        }
        assert!(both as f64 / zeros as f64 > 0.9, "{both}/{zeros}");
    }

    #[test]
    fn relu_pattern_without_zeros_is_finite_and_positive() {
        let x = activations([1, 6, 5, 3], 0.0, ZeroPattern::Relu, &mut Rng::new(2));
        assert!(x.iter().all(|v| v.is_finite() && *v > 0.0), "{x:?}");
    }

    #[test]
    fn random_pattern_meets_the_sparsity() {
        let mut rng = Rng::new(1);
        for s in [0.0, 0.5, 0.9, 1.0] {
            let x = activations([2, 16, 16, 8], s, ZeroPattern::Random, &mut rng);
            assert!((sparsity(&x) - s).abs() < 0.03);
        }
    }
}
