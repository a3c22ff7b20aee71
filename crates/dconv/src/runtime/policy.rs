//! [`Policy`]: how each convolution of a model picks its method.

use crate::conv::Method;
use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// Input sparsity (fraction of zeros) from which the Direct Conversion methods beat dense.
const SPARSE_INPUT: f64 = 0.4;
/// Weight sparsity from which im2CSOA beats im2CSR on sparse inputs.
const SPARSE_WEIGHTS_WITH_SPARSE_INPUT: f64 = 0.5;
/// Weight sparsity from which the direct sparse-weight convolution beats dense on dense inputs.
const SPARSE_WEIGHTS_ALONE: f64 = 0.6;

/// The method choice of every convolution in a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Per layer and per input, by a rule on the measured input sparsity and the weight
    /// sparsity (from the crossovers measured in BENCHMARKS.md).
    #[default]
    Auto,
    /// Every convolution uses this method.
    Force(Method),
}

impl Policy {
    /// The methods a convolution with this weight sparsity may use, to prepare at plan time.
    pub(crate) fn candidates(self, weight_sparsity: f64) -> Vec<Method> {
        match self {
            Policy::Force(m) => vec![m],
            Policy::Auto => {
                let mut methods = vec![Method::Dense, Method::Im2Csr];
                if weight_sparsity >= SPARSE_WEIGHTS_WITH_SPARSE_INPUT {
                    methods.push(Method::Im2Csoa);
                }
                if weight_sparsity >= SPARSE_WEIGHTS_ALONE {
                    methods.push(Method::SparseWeight);
                }
                methods
            }
        }
    }

    /// The method for one run of a convolution.
    pub(crate) fn choose(self, input_sparsity: f64, weight_sparsity: f64) -> Method {
        match self {
            Policy::Force(m) => m,
            Policy::Auto if input_sparsity >= SPARSE_INPUT => {
                if weight_sparsity >= SPARSE_WEIGHTS_WITH_SPARSE_INPUT {
                    Method::Im2Csoa
                } else {
                    Method::Im2Csr
                }
            }
            Policy::Auto if weight_sparsity >= SPARSE_WEIGHTS_ALONE => Method::SparseWeight,
            Policy::Auto => Method::Dense,
        }
    }

    /// Whether runs need the input sparsity of each convolution.
    pub(crate) fn needs_sparsity(self) -> bool {
        self == Policy::Auto
    }

    /// `auto` and every method name, for help texts and tests.
    pub const ALL: [Policy; 7] = [
        Policy::Auto,
        Policy::Force(Method::Reference),
        Policy::Force(Method::Dense),
        Policy::Force(Method::LoweredCsr),
        Policy::Force(Method::Im2Csr),
        Policy::Force(Method::Im2Csoa),
        Policy::Force(Method::SparseWeight),
    ];
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Auto => f.write_str("auto"),
            Policy::Force(m) => f.write_str(m.name()),
        }
    }
}

impl FromStr for Policy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "auto" {
            return Ok(Policy::Auto);
        }
        s.parse::<Method>()
            .map(Policy::Force)
            .map_err(|_| Error::UnknownName {
                kind: "policy",
                name: s.to_string(),
                expected: Policy::ALL.map(|p| p.to_string()).join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_rule() {
        let auto = Policy::Auto;
        assert_eq!(auto.choose(0.1, 0.0), Method::Dense);
        assert_eq!(auto.choose(0.5, 0.0), Method::Im2Csr);
        assert_eq!(auto.choose(0.5, 0.7), Method::Im2Csoa);
        assert_eq!(auto.choose(0.1, 0.7), Method::SparseWeight);
        for (input, weights) in [(0.1, 0.0), (0.5, 0.0), (0.5, 0.7), (0.1, 0.7)] {
            let m = auto.choose(input, weights);
            assert!(auto.candidates(weights).contains(&m));
        }
    }

    #[test]
    fn names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(p.to_string().parse::<Policy>().unwrap(), p);
        }
        assert!("fast".parse::<Policy>().is_err());
    }
}
