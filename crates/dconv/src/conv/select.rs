//! The cost model behind `auto`: for each method, a predicted time from the layer's
//! [`ConvSpec`], the measured input sparsity and the known weight sparsity, and the choice of
//! the cheapest prepared method for each run.
//!
//! Each method's time is a sum of terms, each a count of work the method does times a
//! coefficient in nanoseconds per unit that `dconv tune` measures ([`fit`]). Each method
//! states its own terms in its entry of the method table (`conv/method.rs`), next to its
//! code; with d the input density (1 - input sparsity) and e the weight density, they count
//! e.g. MACs, lowered elements (P·K), input elements (|X|), d·PMACs or e·MACs.
//!
//! PMACs are the multiply-adds against weight panels, each group's filters padded to whole
//! panels (MACs wherever a group's filters fill them, as in every layer `tune` measures).
//! The d² term lets the product's rate change with density (BENCHMARKS.md: im2csr slows down
//! on nearly dense inputs, im2csoa speeds up); it is the only one allowed to be negative.
//! Weight sparsity does not enter im2csr, nor im2csoa's panel form: their inner loop runs over
//! a dense vector of output channels, and the measured times do not move with it. Where the
//! weights' zeros lie in blocks of 16 output channels ([`WeightZeros`]), im2csoa keeps only the
//! non-zero blocks and its multiply-adds shrink with them; and sparse-weight, knowing how the
//! filters share their zeros in pairs, keeps one list per pair and does less per weight.
//!
//! For one layer, every term is a polynomial of degree ≤ 2 in d, so [`LayerCosts`] folds the
//! model into three numbers per method at plan time and picks a method per run with a handful
//! of multiply-adds and no allocation.

pub mod fit;

use super::{panel_filters, ConvSpec, Method};
use crate::error::{Error, Result};
use crate::kernels::Isa;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The methods the model predicts, in [`Method::ALL`]'s order: those with cost terms
/// (`reference` is an oracle, never a choice).
pub const MODELED: [Method; modeled_count()] = {
    let mut modeled = [Method::Dense; modeled_count()];
    let (mut i, mut n) = (0, 0);
    while i < Method::ALL.len() {
        if is_modeled(Method::ALL[i]) {
            modeled[n] = Method::ALL[i];
            n += 1;
        }
        i += 1;
    }
    modeled
};

/// Whether the cost model predicts `method`: whether it has cost terms.
const fn is_modeled(method: Method) -> bool {
    !method.entry().terms.is_empty()
}

/// How many methods the cost model predicts.
const fn modeled_count() -> usize {
    let (mut i, mut n) = (0, 0);
    while i < Method::ALL.len() {
        n += is_modeled(Method::ALL[i]) as usize;
        i += 1;
    }
    n
}

/// The most terms any method has.
pub const MAX_TERMS: usize = 6;

/// The only term whose coefficient may be negative (see the module notes).
const SIGNED_TERM: &str = "nz_mac_squared";

/// The sizes of one layer the terms are built from, as floats (no overflow, and the model
/// is arithmetic on them anyway).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LayerSize {
    /// Multiply-adds of the dense convolution, all images.
    pub macs: f64,
    /// Multiply-adds of the methods that multiply by weight panels (lowered-csr, im2csr,
    /// im2csoa): each group's filters are padded to whole panels, so a layer of many small
    /// groups (ShuffleNet's 1x1 layers, a depthwise one) does up to a panel's width times
    /// `macs`.
    pub panel_macs: f64,
    /// Elements of the lowered matrices, all images and groups (P·K·G·N).
    pub lowered: f64,
    /// Elements `dense` lowers: `lowered`, or 0 where it lowers nothing.
    pub dense_lowered: f64,
    /// Elements of the input tensor.
    pub input: f64,
    /// Elements of the weight tensor.
    pub weights: f64,
    /// Output pixels times kernel taps, all images (P·R·S·N): the per-row bookkeeping of
    /// the Direct Conversion methods, which dominates when a layer has few input channels.
    pub pixel_taps: f64,
    /// Images per run.
    pub batch: f64,
}

impl LayerSize {
    pub fn of(spec: &ConvSpec) -> LayerSize {
        let [oh, ow] = spec.output_size();
        let batch = spec.batch as f64;
        let weights = spec.filters as f64 * spec.lowered_cols() as f64;
        let lowered = batch * (oh * ow) as f64 * spec.lowered_cols() as f64 * spec.groups as f64;
        LayerSize {
            macs: batch * (oh * ow) as f64 * weights,
            panel_macs: batch
                * (oh * ow) as f64
                * spec.lowered_cols() as f64
                * (spec.groups * panel_filters(spec.filters_per_group(), Isa::detect())) as f64,
            lowered,
            dense_lowered: if super::dense::lowers(spec) {
                lowered
            } else {
                0.0
            },
            input: batch * (spec.height * spec.width * spec.channels) as f64,
            weights,
            pixel_taps: batch * (oh * ow * spec.kernel[0] * spec.kernel[1]) as f64,
            batch,
        }
    }
}

/// What the cost model knows of a layer's weights: how many are zero, and, where sparse-weight
/// keeps one list per pair of filters (their zeros coincide, as block pruning leaves them),
/// how many places those lists hold per non-zero weight.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WeightZeros {
    /// Fraction of zero weights.
    pub sparsity: f64,
    /// Places of the pairs' lists per non-zero weight, 1/2 to 6/10 (1/2 where every pair
    /// shares all its zeros); `None` where sparse-weight keeps a list per filter.
    pub twin_share: Option<f64>,
    /// The fraction of blocks of 16 output channels (at one input channel and tap) not all
    /// zero: the multiply-adds of im2csoa's and sparse-weight's block forms, which each takes
    /// where enough of the blocks are zero.
    pub blocks_of_16: f64,
}

impl WeightZeros {
    /// The zeros of ONNX `[M][C/G][R][S]` weights of `spec`.
    pub fn of(spec: &ConvSpec, weights: &[f32]) -> Self {
        let zeros = weights.iter().filter(|&&w| w == 0.0).count();
        WeightZeros {
            sparsity: zeros as f64 / weights.len().max(1) as f64,
            twin_share: super::sparse_weight::twin_share(spec, weights),
            blocks_of_16: super::im2csoa::block_density(spec, weights),
        }
    }

    /// Zeros at `sparsity` that no two filters share (unpruned or element-pruned weights): a
    /// block of 16 is all zero with probability `sparsity^16`.
    pub fn unstructured(sparsity: f64) -> Self {
        WeightZeros {
            sparsity,
            twin_share: None,
            blocks_of_16: 1.0 - sparsity.powi(16),
        }
    }

    /// Fraction of non-zero weights.
    pub fn density(&self) -> f64 {
        1.0 - self.sparsity
    }
}

/// The names of a method's terms, in coefficient order.
pub fn term_names(method: Method) -> &'static [&'static str] {
    method.entry().terms
}

/// The units of work of each term of `method` for a layer of `size` with input density `d`
/// and weights `w`, in the order of [`term_names`]; unused slots are 0.
pub fn term_values(method: Method, size: &LayerSize, d: f64, w: WeightZeros) -> [f64; MAX_TERMS] {
    (method.entry().term_values)(size, d, w)
}

/// Whether the coefficient of term `name` may be negative.
pub fn term_is_signed(name: &str) -> bool {
    name == SIGNED_TERM
}

/// Coefficients (nanoseconds per unit of each term) of every modeled method, measured with
/// `threads` threads. Small and `Copy`, so that session options stay `Copy`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostProfile {
    /// The threads the coefficients were measured with.
    pub threads: usize,
    /// The instruction set the kernels were timed with, where the profile says: the same
    /// layer's crossovers differ between AVX-512's kernels and AVX2's.
    pub isa: Option<Isa>,
    coefficients: [[f64; MAX_TERMS]; MODELED.len()],
}

/// The compiled-in profiles: `dconv tune --threads 1` on the development machine (an
/// AVX-512 Xeon with a 48 KB L1d and a 2 MB L2), one per instruction set, each lower one
/// forced with `DCONV_ISA` on a build without the `avx512-gemm` feature (so that dense ran
/// AVX2's GEMM, as such a machine would). NEON has no machine here: it takes the portable
/// profile, whose kernels were compiled for x86-64's 128-bit vectors, NEON's width.
const COMPILED_IN: [(Isa, &str); 3] = [
    (Isa::Avx512, include_str!("select/profiles/avx512.json")),
    (Isa::Avx2, include_str!("select/profiles/avx2.json")),
    (Isa::Portable, include_str!("select/profiles/portable.json")),
];

impl Default for CostProfile {
    /// The compiled-in profile of the instruction set this CPU runs.
    fn default() -> Self {
        CostProfile::compiled_in(Isa::detect())
    }
}

/// The file format: readable names for methods and terms.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    threads: usize,
    /// The instruction set it was measured with (files from before it was recorded lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    isa: Option<String>,
    /// Method name -> term name -> nanoseconds per unit.
    methods: BTreeMap<String, BTreeMap<String, f64>>,
}

fn slot(method: Method) -> Option<usize> {
    MODELED.iter().position(|&m| m == method)
}

impl CostProfile {
    /// A profile from coefficients per modeled method (in [`term_names`] order).
    pub fn new(threads: usize, coefficients: [[f64; MAX_TERMS]; MODELED.len()]) -> Self {
        CostProfile {
            threads,
            isa: None,
            coefficients,
        }
    }

    /// The same coefficients, said to be measured with `isa`.
    pub fn measured_with(self, isa: Isa) -> Self {
        CostProfile {
            isa: Some(isa),
            ..self
        }
    }

    /// The profile compiled in for `isa` (NEON takes the portable one).
    pub fn compiled_in(isa: Isa) -> CostProfile {
        let wanted = if isa == Isa::Neon { Isa::Portable } else { isa };
        let text = COMPILED_IN
            .iter()
            .find(|(isa, _)| *isa == wanted)
            .map_or(COMPILED_IN[0].1, |(_, text)| text);
        // A unit test proves that every compiled-in file parses.
        CostProfile::from_json(text).expect("the compiled-in cost profiles are valid")
    }

    /// The coefficients of `method`, in [`term_names`] order; `None` for `reference`.
    pub fn coefficients(&self, method: Method) -> Option<&[f64]> {
        let i = slot(method)?;
        Some(&self.coefficients[i][..term_names(method).len()])
    }

    /// The predicted time of `method` in nanoseconds; `None` for `reference`.
    pub fn predict(
        &self,
        method: Method,
        spec: &ConvSpec,
        input_sparsity: f64,
        weights: WeightZeros,
    ) -> Option<f64> {
        self.predict_size(method, &LayerSize::of(spec), 1.0 - input_sparsity, weights)
    }

    fn predict_size(
        &self,
        method: Method,
        size: &LayerSize,
        d: f64,
        w: WeightZeros,
    ) -> Option<f64> {
        let c = &self.coefficients[slot(method)?];
        let t = term_values(method, size, d, w);
        Some(c.iter().zip(&t).map(|(c, t)| c * t).sum())
    }

    /// Parses the JSON that [`to_json`](Self::to_json) writes; every modeled method with
    /// exactly its terms, finite values, threads ≥ 1.
    pub fn from_json(text: &str) -> Result<CostProfile> {
        let bad = |msg: String| Error::InvalidProfile(msg);
        let file: ProfileFile = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if file.threads == 0 {
            return Err(bad("threads must be at least 1".into()));
        }
        let isa = match &file.isa {
            None => None,
            Some(name) => Some(
                Isa::ALL
                    .into_iter()
                    .find(|isa| isa.name() == name)
                    .ok_or_else(|| {
                        bad(format!(
                            "unknown isa '{name}' (expected: {})",
                            Isa::ALL.map(Isa::name).join(", ")
                        ))
                    })?,
            ),
        };
        let names = || MODELED.map(Method::name).join(", ");
        if let Some(unknown) = file
            .methods
            .keys()
            .find(|k| !MODELED.iter().any(|m| m.name() == k.as_str()))
        {
            return Err(bad(format!(
                "unknown method '{unknown}' (expected: {})",
                names()
            )));
        }
        let mut coefficients = [[0.0; MAX_TERMS]; MODELED.len()];
        for (i, method) in MODELED.into_iter().enumerate() {
            let terms = file.methods.get(method.name()).ok_or_else(|| {
                bad(format!(
                    "method '{method}' is missing (expected: {})",
                    names()
                ))
            })?;
            let expected = term_names(method);
            if let Some(unknown) = terms.keys().find(|k| !expected.contains(&k.as_str())) {
                return Err(bad(format!(
                    "{method}: unknown term '{unknown}' (expected: {})",
                    expected.join(", ")
                )));
            }
            for (j, name) in expected.iter().enumerate() {
                let value = *terms
                    .get(*name)
                    .ok_or_else(|| bad(format!("{method}: term '{name}' is missing")))?;
                if !value.is_finite() || (value < 0.0 && !term_is_signed(name)) {
                    return Err(bad(format!(
                        "{method}: term '{name}' is {value}; it must be a finite number ≥ 0"
                    )));
                }
                coefficients[i][j] = value;
            }
        }
        Ok(CostProfile {
            isa,
            ..CostProfile::new(file.threads, coefficients)
        })
    }

    /// Pretty JSON with method and term names.
    pub fn to_json(&self) -> String {
        let methods = MODELED
            .into_iter()
            .map(|method| {
                let terms = term_names(method)
                    .iter()
                    .zip(self.coefficients(method).unwrap_or_default())
                    .map(|(name, &value)| (name.to_string(), value))
                    .collect();
                (method.name().to_string(), terms)
            })
            .collect();
        let file = ProfileFile {
            threads: self.threads,
            isa: self.isa.map(|isa| isa.name().to_string()),
            methods,
        };
        // Maps of strings to finite floats always serialize.
        serde_json::to_string_pretty(&file).unwrap_or_default()
    }

    /// Reads a profile file.
    pub fn load(path: &Path) -> Result<CostProfile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Input {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        CostProfile::from_json(&text).map_err(|e| Error::Input {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })
    }

    /// Writes the profile as JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_json() + "\n").map_err(|e| Error::Output {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })
    }

    /// The methods worth preparing for a layer: exactly those that are the cheapest at some
    /// input sparsity in [0, 1], in [`MODELED`] order. Choosing among only these picks, at
    /// every input sparsity, what choosing among all modeled methods would.
    pub fn winners(&self, spec: &ConvSpec, weights: WeightZeros) -> Vec<Method> {
        LayerCosts::new(self, spec, weights, &MODELED).winners()
    }
}

/// One layer's predicted cost of each prepared method as `a + b·d + c·d²` nanoseconds in the
/// input density d: what the model reduces to once the shape and weights are known.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerCosts {
    costs: Vec<(Method, [f64; 3])>,
}

impl LayerCosts {
    /// The costs of `methods` (those the profile does not model are left out).
    pub fn new(
        profile: &CostProfile,
        spec: &ConvSpec,
        weights: WeightZeros,
        methods: &[Method],
    ) -> LayerCosts {
        let size = LayerSize::of(spec);
        let costs = methods
            .iter()
            .filter_map(|&m| {
                let at = |d| profile.predict_size(m, &size, d, weights);
                let (f0, f1, f2) = (at(0.0)?, at(0.5)?, at(1.0)?);
                // The quadratic through d = 0, 1/2, 1 (exact: every term has degree ≤ 2).
                let c = 2.0 * f2 - 4.0 * f1 + 2.0 * f0;
                Some((m, [f0, f2 - f0 - c, c]))
            })
            .collect();
        LayerCosts { costs }
    }

    /// The predicted nanoseconds of `method` at `input_sparsity`, if it is among the costs.
    pub fn predict(&self, method: Method, input_sparsity: f64) -> Option<f64> {
        let d = 1.0 - input_sparsity;
        self.costs
            .iter()
            .find(|(m, _)| *m == method)
            .map(|(_, [a, b, c])| a + d * (b + d * c))
    }

    /// The methods among the costs that are the cheapest at some input sparsity in [0, 1],
    /// in the costs' order. Each cost is a quadratic in the density, so the cheapest method
    /// can only change where two costs cross: it is checked at 0, 1, every crossing in
    /// between (where a tie goes to the method [`cheapest`](Self::cheapest) picks) and
    /// midway between neighbouring crossings.
    pub fn winners(&self) -> Vec<Method> {
        let mut points = vec![0.0, 1.0];
        for (i, (_, p)) in self.costs.iter().enumerate() {
            for (_, q) in &self.costs[i + 1..] {
                let diff = [p[0] - q[0], p[1] - q[1], p[2] - q[2]];
                points.extend(roots_in_unit_interval(diff));
            }
        }
        points.sort_by(f64::total_cmp);
        points.dedup();
        let midpoints: Vec<f64> = points.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
        let won: Vec<Method> = points
            .iter()
            .chain(&midpoints)
            .map(|&d| self.cheapest(1.0 - d))
            .collect();
        self.costs
            .iter()
            .map(|(m, _)| *m)
            .filter(|m| won.contains(m))
            .collect()
    }

    /// The method of least predicted time at `input_sparsity`. Without any modeled method
    /// (a forced `reference`), `Dense`.
    pub fn cheapest(&self, input_sparsity: f64) -> Method {
        let d = 1.0 - input_sparsity;
        let mut best = (Method::Dense, f64::INFINITY);
        for &(m, [a, b, c]) in &self.costs {
            let t = a + d * (b + d * c);
            if t < best.1 {
                best = (m, t);
            }
        }
        best.0
    }
}

/// The roots in [0, 1] of `a + b·d + c·d²` (none when it is identically zero).
fn roots_in_unit_interval([a, b, c]: [f64; 3]) -> Vec<f64> {
    let scale = a.abs().max(b.abs()).max(c.abs());
    if scale == 0.0 || !scale.is_finite() {
        return Vec::new();
    }
    let (a, b, c) = (a / scale, b / scale, c / scale);
    let roots = if c.abs() < 1e-12 {
        if b.abs() < 1e-12 {
            Vec::new()
        } else {
            vec![-a / b]
        }
    } else {
        let disc = b * b - 4.0 * a * c;
        if disc < 0.0 {
            Vec::new()
        } else {
            // The form without cancellation: q = -(b + sign(b)·√disc) / 2, roots q/c and a/q.
            let q = -0.5 * (b + b.signum() * disc.sqrt());
            if q == 0.0 {
                vec![0.0]
            } else {
                vec![q / c, a / q]
            }
        }
    };
    roots
        .into_iter()
        .filter(|d| (0.0..=1.0).contains(d))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weights with `sparsity` zeros that no two filters share.
    fn w(sparsity: f64) -> WeightZeros {
        WeightZeros::unstructured(sparsity)
    }

    fn vgg_block4() -> ConvSpec {
        ConvSpec::new(512, 30, 30, 512, [3, 3]).with_padding([1, 1, 1, 1])
    }

    /// Where im2csoa keeps only the non-zero blocks of 16 output channels, it pays for the
    /// blocks that meet some non-zero activation of a tile: on 80 % zero inputs and 70 % zero
    /// blocks it costs less than its panel form (which it keeps where 40 % are zero) and than
    /// sparse-weight; on a dense input, sparse-weight stays the cheaper.
    #[test]
    fn block_sparse_weights_make_im2csoa_cheaper_on_sparse_inputs() {
        let profile = CostProfile::compiled_in(Isa::Avx2);
        let spec = vgg_block4();
        let blocks = WeightZeros {
            sparsity: 0.7,
            twin_share: Some(0.5),
            blocks_of_16: 0.3,
        };
        let panels = WeightZeros {
            blocks_of_16: 0.6,
            ..blocks
        };
        let at = |m, input_sparsity, w| profile.predict(m, &spec, input_sparsity, w).unwrap();
        assert!(at(Method::Im2Csoa, 0.8, blocks) < at(Method::Im2Csoa, 0.8, panels));
        assert!(at(Method::Im2Csoa, 0.8, blocks) < at(Method::SparseWeight, 0.8, blocks));
        assert!(at(Method::SparseWeight, 0.0, blocks) < at(Method::Im2Csoa, 0.0, blocks));
    }

    /// Twin lists make sparse-weight's work per non-zero weight cheaper, as measured, and
    /// change no other method's prediction.
    #[test]
    fn filters_sharing_their_zeros_make_sparse_weight_cheaper() {
        let profile = CostProfile::compiled_in(Isa::Avx2);
        let spec = vgg_block4();
        let twins = WeightZeros {
            sparsity: 0.7,
            twin_share: Some(0.5),
            blocks_of_16: 1.0 - 0.7f64.powi(8),
        };
        for input_sparsity in [0.0, 0.5, 0.9] {
            let at = |m, w| profile.predict(m, &spec, input_sparsity, w).unwrap();
            let (single, twin) = (
                at(Method::SparseWeight, w(0.7)),
                at(Method::SparseWeight, twins),
            );
            assert!(twin < 0.9 * single, "{twin} vs {single}");
            for m in MODELED.into_iter().filter(|&m| m != Method::SparseWeight) {
                assert_eq!(at(m, w(0.7)), at(m, twins), "{m}");
            }
        }
    }

    /// A profile with round numbers: dense at 6 ps per MAC; sparse methods slower per
    /// non-zero MAC; sparse-weight dearer per weight row.
    fn toy() -> CostProfile {
        let mut c = [[0.0; MAX_TERMS]; MODELED.len()];
        c[0] = [1e4, 0.006, 0.0, 0.0, 0.0, 0.0]; // dense
        c[1] = [1e4, 0.02, 0.0, 0.03, 0.0, 0.0]; // lowered-csr
        c[2] = [1e4, 0.1, 0.0, 0.0, 0.02, 0.0]; // im2csr
        c[3] = [1e4, 0.1, 0.0, 0.5, 0.016, 0.0]; // im2csoa
        c[4] = [1e4, 0.5, 5.0, 0.02, 0.0, 0.0]; // sparse-weight
        CostProfile::new(1, c)
    }

    #[test]
    fn the_compiled_in_profiles_parse_round_trip_and_say_their_isa() {
        for (isa, text) in COMPILED_IN {
            let profile = CostProfile::from_json(text).unwrap();
            assert_eq!(profile.isa, Some(isa));
            assert_eq!(CostProfile::from_json(&profile.to_json()).unwrap(), profile);
            assert_eq!(CostProfile::compiled_in(isa), profile);
        }
        assert_eq!(
            CostProfile::compiled_in(Isa::Neon),
            CostProfile::compiled_in(Isa::Portable)
        );
        assert_eq!(
            CostProfile::default(),
            CostProfile::compiled_in(Isa::detect())
        );
    }

    #[test]
    fn profiles_round_trip_through_json() {
        let p = toy();
        assert_eq!(CostProfile::from_json(&p.to_json()).unwrap(), p);
        let p = p.measured_with(Isa::Avx2);
        assert!(p.to_json().contains("\"isa\": \"avx2\""));
        assert_eq!(CostProfile::from_json(&p.to_json()).unwrap(), p);
    }

    #[test]
    fn bad_profiles_are_clear_errors() {
        let good = toy().to_json();
        let cases = [
            ("{", "EOF"),
            ("[]", "expected struct"),
            (&good.replace("\"threads\": 1", "\"threads\": 0"), "threads"),
            (
                &good.replace("\"im2csoa\"", "\"im2cso\""),
                "unknown method 'im2cso'",
            ),
            (
                &good.replace("\"nz_input\"", "\"nz_inputs\""),
                "unknown term 'nz_inputs'",
            ),
            (
                &good.replace("\"mac\": 0.006", "\"mac\": -0.006"),
                "finite number ≥ 0",
            ),
            (&good.replace("\"threads\"", "\"thread\""), "unknown field"),
            (
                &good.replace("\"threads\": 1", "\"threads\": 1, \"isa\": \"sse9\""),
                "unknown isa 'sse9'",
            ),
        ];
        for (text, expected) in cases {
            let err = CostProfile::from_json(text).unwrap_err();
            assert!(matches!(err, Error::InvalidProfile(_)), "{err}");
            assert!(err.to_string().contains(expected), "{err} lacks {expected}");
            assert!(err.is_bad_input());
        }
        let missing =
            r#"{"threads": 1, "methods": {"dense": {"fixed": 1, "mac": 1, "lowered": 1}}}"#;
        let err = CostProfile::from_json(missing).unwrap_err().to_string();
        assert!(err.contains("'lowered-csr' is missing"), "{err}");
    }

    #[test]
    fn selection_picks_the_cheapest_prediction() {
        let p = toy();
        let spec = vgg_block4();
        for weight_sparsity in [0.0, 0.5, 0.9] {
            let costs = LayerCosts::new(&p, &spec, w(weight_sparsity), &MODELED);
            for step in 0..=20 {
                let s = step as f64 / 20.0;
                let chosen = costs.cheapest(s);
                let best = MODELED
                    .into_iter()
                    .map(|m| (m, p.predict(m, &spec, s, w(weight_sparsity)).unwrap()))
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .unwrap();
                assert_eq!(chosen, best.0, "s_in {s} s_w {weight_sparsity}");
                let folded = costs.predict(chosen, s).unwrap();
                assert!(
                    (folded - best.1).abs() <= 1e-9 * best.1,
                    "{folded} vs {}",
                    best.1
                );
            }
        }
    }

    #[test]
    fn selection_follows_the_sparsities() {
        let p = toy();
        let spec = vgg_block4();
        let dense_input = LayerCosts::new(&p, &spec, w(0.0), &MODELED);
        assert_eq!(dense_input.cheapest(0.0), Method::Dense);
        assert_eq!(dense_input.cheapest(0.9), Method::Im2Csoa);
        let pruned = LayerCosts::new(&p, &spec, w(0.9), &MODELED);
        assert_eq!(pruned.cheapest(0.0), Method::SparseWeight);
    }

    #[test]
    fn only_prepared_methods_are_chosen() {
        let p = toy();
        let costs = LayerCosts::new(&p, &vgg_block4(), w(0.0), &[Method::Dense, Method::Im2Csr]);
        assert_eq!(costs.cheapest(0.95), Method::Im2Csr);
        assert_eq!(costs.cheapest(0.0), Method::Dense);
        assert_eq!(costs.predict(Method::Im2Csoa, 0.5), None);
        let winners = p.winners(&vgg_block4(), w(0.0));
        assert!(winners.contains(&Method::Dense) && winners.contains(&Method::Im2Csoa));
        assert!(!winners.contains(&Method::SparseWeight), "{winners:?}");
    }

    /// Random layers: channels, filters, size, kernel, stride and groups from a small
    /// linear congruential generator (reproducible without a dependency).
    fn random_layers(count: usize) -> Vec<(ConvSpec, f64)> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize % n
        };
        (0..count)
            .map(|_| {
                let groups = [1, 1, 1, 2, 4][next(5)];
                let channels = groups * (1 + next(128));
                let filters = groups * (1 + next(256));
                let size = 4 + next(120);
                let k = [1, 3, 3, 5][next(4)];
                let spec = ConvSpec::new(channels, size, size, filters, [k, k])
                    .with_padding([k / 2; 4])
                    .with_stride([1 + next(2); 2])
                    .with_groups(groups);
                (spec, next(101) as f64 / 100.0)
            })
            .collect()
    }

    #[test]
    fn winners_choose_what_every_method_would() {
        let compiled_in = COMPILED_IN.map(|(isa, _)| CostProfile::compiled_in(isa));
        for profile in [toy()].into_iter().chain(compiled_in) {
            for (spec, weight_sparsity) in random_layers(200) {
                let winners = profile.winners(&spec, w(weight_sparsity));
                assert!(!winners.is_empty());
                let all = LayerCosts::new(&profile, &spec, w(weight_sparsity), &MODELED);
                let pruned = LayerCosts::new(&profile, &spec, w(weight_sparsity), &winners);
                for step in 0..=2000 {
                    let s = step as f64 / 2000.0;
                    assert_eq!(
                        pruned.cheapest(s),
                        all.cheapest(s),
                        "{spec:?} s_w {weight_sparsity} s_in {s}: prepared {winners:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn one_method_is_prepared_where_it_always_wins() {
        // VGG-16's first layer: three input channels, a dense method's best case with SIMD
        // kernels. (The portable direct kernel for few channels is 8x slower than theirs,
        // and there the sparse-activation methods measured faster.)
        let first = ConvSpec::new(3, 240, 240, 64, [3, 3]).with_padding([1, 1, 1, 1]);
        for isa in [Isa::Avx512, Isa::Avx2] {
            let p = CostProfile::compiled_in(isa);
            assert_eq!(p.winners(&first, w(0.0)), vec![Method::Dense], "{isa}");
        }
        // A deep layer: a Direct Conversion method for sparse inputs, never sparse-weight
        // with dense weights; and with AVX-512's GEMM, dense for dense inputs. (AVX2's GEMM
        // runs at 85 GFLOP/s where AVX-512's runs at 146, and there im2CSOA measured as fast
        // as dense on dense inputs.)
        let deep = ConvSpec::new(512, 15, 15, 512, [3, 3]).with_padding([1, 1, 1, 1]);
        for (isa, _) in COMPILED_IN {
            let profile = CostProfile::compiled_in(isa);
            let winners = profile.winners(&deep, w(0.0));
            assert!(winners.contains(&Method::Im2Csoa), "{isa}: {winners:?}");
            assert!(
                !winners.contains(&Method::SparseWeight),
                "{isa}: {winners:?}"
            );
            let costs = LayerCosts::new(&profile, &deep, w(0.0), &MODELED);
            assert_ne!(costs.cheapest(0.8), Method::Dense, "{isa}");
        }
        let avx512 = CostProfile::compiled_in(Isa::Avx512).winners(&deep, w(0.0));
        assert_eq!(avx512.first(), Some(&Method::Dense), "{avx512:?}");
    }

    /// The panel methods pad each group's filters to whole panels, and are priced so: a
    /// depthwise layer, one filter a group, costs them a panel's width per filter, and no
    /// compiled-in profile picks one for it at any sparsity.
    #[test]
    fn small_groups_are_priced_at_their_padded_panels() {
        let depthwise = ConvSpec::new(144, 28, 28, 144, [3, 3])
            .with_padding([1; 4])
            .with_groups(144);
        let size = LayerSize::of(&depthwise);
        let width = panel_filters(1, Isa::detect()) as f64;
        assert_eq!(size.panel_macs, size.macs * width);
        let vgg = LayerSize::of(&vgg_block4());
        assert_eq!(vgg.panel_macs, vgg.macs);
        for (isa, _) in COMPILED_IN {
            let costs =
                LayerCosts::new(&CostProfile::compiled_in(isa), &depthwise, w(0.0), &MODELED);
            for s in [0.0, 0.5, 0.9] {
                assert_eq!(costs.cheapest(s), Method::Dense, "{isa} at {s}");
            }
        }
    }

    #[test]
    fn crossings_in_the_unit_interval() {
        assert_eq!(roots_in_unit_interval([0.0; 3]), Vec::<f64>::new());
        assert_eq!(roots_in_unit_interval([-1.0, 2.0, 0.0]), vec![0.5]);
        let mut r = roots_in_unit_interval([0.06, -0.5, 1.0]); // (d - 0.2)(d - 0.3)
        r.sort_by(f64::total_cmp);
        assert!(
            (r[0] - 0.2).abs() < 1e-12 && (r[1] - 0.3).abs() < 1e-12,
            "{r:?}"
        );
        assert_eq!(roots_in_unit_interval([1.0, 0.0, 1.0]), Vec::<f64>::new());
        assert_eq!(roots_in_unit_interval([-2.0, 1.0, 0.0]), Vec::<f64>::new());
    }
}
