//! Fitting a [`CostProfile`] to measured times: per method, least squares on the relative
//! error (a 0.2 ms layer matters as much as a 50 ms one), with every coefficient but the
//! signed one kept ≥ 0 by dropping the most negative and refitting.

use super::{
    term_is_signed, term_names, term_values, CostProfile, LayerSize, WeightZeros, MAX_TERMS,
    MODELED,
};
use crate::conv::{ConvSpec, Method};
use crate::error::{Error, Result};

/// One measured run: a method on a layer at given sparsities, and its median time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub method: Method,
    pub spec: ConvSpec,
    pub input_sparsity: f64,
    pub weights: WeightZeros,
    pub nanos: f64,
}

/// Fits the coefficients of every modeled method to `samples` (measured with `threads`).
/// Each method needs at least as many samples as it has terms.
pub fn fit(samples: &[Sample], threads: usize) -> Result<CostProfile> {
    let mut coefficients = [[0.0; MAX_TERMS]; MODELED.len()];
    for (i, method) in MODELED.into_iter().enumerate() {
        coefficients[i] = fit_one(method, samples)?;
    }
    Ok(CostProfile::new(threads.max(1), coefficients))
}

/// The coefficients of `method` alone (in [`term_names`] order), from its samples.
pub fn fit_one(method: Method, samples: &[Sample]) -> Result<[f64; MAX_TERMS]> {
    let rows: Vec<([f64; MAX_TERMS], f64)> = samples
        .iter()
        .filter(|s| s.method == method && s.nanos > 0.0)
        .map(|s| (s.terms(), s.nanos))
        .collect();
    let terms = term_names(method).len();
    if rows.len() < terms {
        return Err(Error::InvalidArgument(format!(
            "{method} has {} samples; fitting its {terms} terms needs at least {terms}",
            rows.len()
        )));
    }
    Ok(fit_method(method, &rows))
}

impl Sample {
    /// The units of work of each term of the sample's method.
    pub fn terms(&self) -> [f64; MAX_TERMS] {
        term_values(
            self.method,
            &LayerSize::of(&self.spec),
            1.0 - self.input_sparsity,
            self.weights,
        )
    }
}

/// Least squares of `x · c ≈ t` relative to `t`, over the terms of `method`.
fn fit_method(method: Method, rows: &[([f64; MAX_TERMS], f64)]) -> [f64; MAX_TERMS] {
    let names = term_names(method);
    let mut active: Vec<usize> = (0..names.len()).collect();
    loop {
        let c = solve(rows, &active);
        let worst = active
            .iter()
            .zip(&c)
            .filter(|(&j, &v)| v < 0.0 && !term_is_signed(names[j]))
            .min_by(|a, b| a.1.total_cmp(b.1))
            .map(|(&j, _)| j);
        match worst {
            Some(j) => active.retain(|&k| k != j),
            None => {
                let mut out = [0.0; MAX_TERMS];
                for (&j, v) in active.iter().zip(c) {
                    out[j] = v;
                }
                return out;
            }
        }
    }
}

/// Weighted least squares over the `active` columns: rows scaled by 1/t, columns by their
/// norm, normal equations with a tiny ridge (a column that does not vary gets ~0).
fn solve(rows: &[([f64; MAX_TERMS], f64)], active: &[usize]) -> Vec<f64> {
    let n = active.len();
    if n == 0 {
        return Vec::new();
    }
    let scale: Vec<f64> = active
        .iter()
        .map(|&j| {
            let norm = rows
                .iter()
                .map(|(x, t)| (x[j] / t).powi(2))
                .sum::<f64>()
                .sqrt();
            if norm > 0.0 {
                norm
            } else {
                1.0
            }
        })
        .collect();
    let mut a = vec![vec![0.0; n + 1]; n];
    for (x, t) in rows {
        let z: Vec<f64> = active
            .iter()
            .zip(&scale)
            .map(|(&j, s)| x[j] / t / s)
            .collect();
        for r in 0..n {
            for c in 0..n {
                a[r][c] += z[r] * z[c];
            }
            a[r][n] += z[r];
        }
    }
    for (r, row) in a.iter_mut().enumerate() {
        row[r] += 1e-9;
    }
    // Gaussian elimination with partial pivoting.
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        let p = a[col][col];
        if p.abs() < 1e-300 {
            continue;
        }
        let pivot_row = a[col].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / p;
                row.iter_mut()
                    .zip(&pivot_row)
                    .skip(col)
                    .for_each(|(v, q)| *v -= f * q);
            }
        }
    }
    (0..n)
        .map(|r| {
            let v = if a[r][r].abs() < 1e-300 {
                0.0
            } else {
                a[r][n] / a[r][r]
            };
            v / scale[r]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_the_coefficients_that_made_the_times() {
        let truth = {
            let mut c = [[0.0; MAX_TERMS]; MODELED.len()];
            c[0] = [2e4, 0.006, 0.05, 0.0, 0.0, 0.0];
            c[1] = [2e4, 0.3, 1.0, 0.02, 0.0, 0.0];
            c[2] = [2e4, 0.5, 3.0, 0.8, 0.015, 0.01];
            c[3] = [2e4, 0.4, 5.0, 2.0, 0.025, -0.007];
            c[4] = [2e4, 0.6, 7.0, 0.015, 0.0, 0.0];
            CostProfile::new(1, c)
        };
        let shapes = [
            ConvSpec::new(3, 64, 64, 32, [3, 3]).with_padding([1, 1, 1, 1]),
            ConvSpec::new(64, 32, 32, 128, [3, 3]).with_padding([1, 1, 1, 1]),
            ConvSpec::new(256, 16, 16, 256, [3, 3]).with_padding([1, 1, 1, 1]),
            ConvSpec::new(128, 20, 20, 64, [1, 1]),
        ];
        let mut samples = Vec::new();
        for spec in shapes {
            for s_in in [0.0, 0.3, 0.6, 0.9] {
                // Weights of each kind: unstructured, and pruned in pairs of filters.
                let twins = WeightZeros {
                    sparsity: 0.7,
                    twin_share: Some(0.5),
                    blocks_of_16: 1.0 - 0.7f64.powi(8),
                };
                let unstructured = [0.0, 0.5, 0.9].map(WeightZeros::unstructured);
                for weights in unstructured.into_iter().chain([twins]) {
                    for method in MODELED {
                        let nanos = truth.predict(method, &spec, s_in, weights).unwrap();
                        samples.push(Sample {
                            method,
                            spec,
                            input_sparsity: s_in,
                            weights,
                            nanos,
                        });
                    }
                }
            }
        }
        let fitted = fit(&samples, 1).unwrap();
        for s in &samples {
            let p = fitted
                .predict(s.method, &s.spec, s.input_sparsity, s.weights)
                .unwrap();
            assert!((p - s.nanos).abs() < 1e-3 * s.nanos, "{s:?}: predicted {p}");
        }
    }

    #[test]
    fn too_few_samples_is_an_error() {
        let err = fit(&[], 1).unwrap_err().to_string();
        assert!(err.contains("needs at least"), "{err}");
    }
}
