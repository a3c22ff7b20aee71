//! [`Method`]: how a convolution is computed, and [`MethodEntry`]: everything the engine
//! knows of one method, in one table. Each method's file declares its entry (name, the zeros
//! it skips, the cost model's terms, its packed size, how it prepares); adding a method is
//! its file and its line in the [`methods!`] list below.

use super::panels::SharedPanels;
use super::select::{LayerSize, WeightZeros, MAX_TERMS};
use super::{dense, im2csoa, im2csr, lowered_csr, reference, sparse_weight};
use super::{ConvKernel, ConvSpec, Epilogue};
use crate::error::{Error, Result};
use crate::kernels::Isa;
use std::fmt;
use std::str::FromStr;

/// Declares [`Method`], [`Method::ALL`] and the table of entries from one line per method:
/// its doc, its variant and where its entry lives.
macro_rules! methods {
    ($($(#[doc = $doc:literal])+ $variant:ident => $entry:path,)+) => {
        /// How a convolution is computed.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Method {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl Method {
            /// Every method, in the order of its variants.
            pub const ALL: [Method; [$(Method::$variant),+].len()] = [$(Method::$variant),+];
        }

        /// The entries of every method, in the order of [`Method`]'s variants.
        const TABLE: [&MethodEntry; Method::ALL.len()] = [$(&$entry),+];
    };
}

methods! {
    /// Naive loops: the oracle every other method is tested against.
    Reference => reference::ENTRY,
    /// im2col, then a dense GEMM: the conventional method.
    Dense => dense::ENTRY,
    /// Dense im2col, then compression to CSR, then sparse x dense: the conventional sparse
    /// method, kept to show what Direct Conversion saves.
    LoweredCsr => lowered_csr::ENTRY,
    /// Direct Conversion of the input to the CSR form of the lowered matrix; sparse
    /// activations x dense weights.
    Im2Csr => im2csr::ENTRY,
    /// Direct Conversion to CSOA (each non-zero activation stored once); sparse activations
    /// x sparse weights.
    Im2Csoa => im2csoa::ENTRY,
    /// Direct sparse convolution: sparse weights x dense activations, no lowering.
    SparseWeight => sparse_weight::ENTRY,
}

/// Which zeros a method's format skips: the work it does is the dense multiply-adds times
/// the densities of these operands (what effective GFLOP/s counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skips {
    pub input_zeros: bool,
    pub weight_zeros: bool,
}

/// Everything the engine knows of one method.
pub(crate) struct MethodEntry {
    /// The name used on the command line, in profiles and in reports.
    pub name: &'static str,
    pub skips: Skips,
    /// The names of its cost terms, in coefficient order; none for a method the cost model
    /// does not predict (the reference, an oracle, never a choice).
    pub terms: &'static [&'static str],
    /// The units of work of each term for a layer of this size, input density `d` and weights
    /// `w`, in the order of `terms`; unused slots are 0.
    pub term_values: fn(size: &LayerSize, d: f64, w: WeightZeros) -> [f64; MAX_TERMS],
    /// At most how many bytes of packed weights preparing the method takes (saturating),
    /// when `nonzeros` of the weights are not zero and their zeros lie as `zeros` says.
    pub prepared_bytes: fn(spec: &ConvSpec, nonzeros: usize, zeros: WeightZeros) -> usize,
    /// Whether it multiplies by the weight panels that the methods which read them share.
    pub reads_panels: bool,
    pub prepare: Prepare,
}

/// Packs `weights` for `spec`, with the instruction set's kernels (panels packed once in
/// `shared`).
pub(crate) type Prepare = fn(
    spec: &ConvSpec,
    weights: &[f32],
    epilogue: Epilogue,
    isa: Isa,
    shared: &mut SharedPanels,
) -> Result<Box<dyn ConvKernel>>;

/// The cost terms of a method the model does not predict.
pub(crate) fn no_terms(_: &LayerSize, _: f64, _: WeightZeros) -> [f64; MAX_TERMS] {
    [0.0; MAX_TERMS]
}

impl Method {
    pub(crate) const fn entry(self) -> &'static MethodEntry {
        TABLE[self as usize]
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        self.entry().name
    }

    /// Which zeros the method skips.
    pub fn skips(self) -> Skips {
        self.entry().skips
    }

    /// At most how many bytes of packed weights preparing this method for `spec` takes
    /// (saturating), when `nonzeros` of its weights are not zero: the panels of the
    /// sparse-activation methods pad each group's filters to whole blocks of 128 output
    /// channels, so a depthwise layer grows a hundredfold; sparse-weight keeps only the
    /// non-zeros.
    pub fn prepared_bytes(self, spec: &ConvSpec, nonzeros: usize, zeros: WeightZeros) -> usize {
        let weights = spec.weight_len().unwrap_or(usize::MAX);
        (self.entry().prepared_bytes)(spec, nonzeros.min(weights), zeros)
    }

    /// At most how many bytes of packed weights [`Conv::prepare_methods`](super::Conv)
    /// takes for `methods` (saturating), `nonzeros` as in [`Method::prepared_bytes`]: the
    /// panels the sparse-activation methods share count once.
    pub fn prepared_bytes_of(
        methods: &[Method],
        spec: &ConvSpec,
        nonzeros: usize,
        zeros: WeightZeros,
    ) -> usize {
        let mut panels = false;
        methods.iter().fold(0usize, |sum, &m| {
            let shares = m.reads_panels();
            let bytes = if shares && panels {
                0
            } else {
                m.prepared_bytes(spec, nonzeros, zeros)
            };
            panels |= shares;
            sum.saturating_add(bytes)
        })
    }

    /// The names of `methods`, comma-separated, for messages.
    pub fn names(methods: &[Method]) -> String {
        methods
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether the method multiplies by the shared weight panels.
    pub(crate) fn reads_panels(self) -> bool {
        self.entry().reads_panels
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| Error::UnknownName {
                kind: "convolution method",
                name: s.to_string(),
                expected: Method::ALL.map(Method::name).join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table is in the variants' order, and names are distinct.
    #[test]
    fn each_variant_finds_its_own_entry() {
        for (i, m) in Method::ALL.into_iter().enumerate() {
            assert_eq!(m as usize, i);
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
        }
    }
}
