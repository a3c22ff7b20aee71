//! [`Policy`]: how each convolution of a model picks its method.

use crate::conv::select::{CostProfile, LayerCosts, WeightZeros, MODELED};
use crate::conv::{ConvSpec, Method};
use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// The method choice of every convolution in a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Per layer and per input, the method of least predicted time by the session's
    /// [`CostProfile`], from the measured input sparsity and the weight sparsity.
    #[default]
    Auto,
    /// Every convolution uses this method.
    Force(Method),
}

impl Policy {
    /// `auto` and every method name, for help texts and tests.
    pub const ALL: [Policy; Method::ALL.len() + 1] = {
        let mut all = [Policy::Auto; Method::ALL.len() + 1];
        let mut i = 0;
        while i < Method::ALL.len() {
            all[i + 1] = Policy::Force(Method::ALL[i]);
            i += 1;
        }
        all
    };
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

/// What planning needs to prepare each convolution's methods and to pick one per run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Selection {
    pub policy: Policy,
    pub profile: CostProfile,
    /// Prepare every modeled method, not only those the policy may pick: analysis times
    /// them all.
    pub prepare_every_method: bool,
    /// Prepare, of the methods `auto` may pick for a convolution, only the one whose packed
    /// weights are smallest: the plan a session falls back to when the methods do not all
    /// fit its memory budget.
    pub lean: bool,
}

impl Selection {
    /// The methods to prepare for a layer with these weights.
    pub fn methods(&self, spec: &ConvSpec, weights: WeightZeros) -> Vec<Method> {
        match self.policy {
            _ if self.prepare_every_method => MODELED.to_vec(),
            Policy::Force(m) => vec![m],
            Policy::Auto => self.profile.winners(spec, weights),
        }
    }

    /// How the layer picks among its `prepared` methods at run time: by the input's
    /// sparsity only when there is a choice, since counting the zeros of an input that no
    /// producer counted is a pass over it (a small layer's whole time, on MobileNets).
    pub fn choice(&self, spec: &ConvSpec, weights: WeightZeros, prepared: &[Method]) -> Choice {
        match (self.policy, prepared) {
            (Policy::Force(m), _) => Choice::Fixed(m),
            (Policy::Auto, &[only]) => Choice::Fixed(only),
            (Policy::Auto, _) => {
                Choice::Cheapest(LayerCosts::new(&self.profile, spec, weights, prepared))
            }
        }
    }
}

/// How one convolution picks its method for a run.
#[derive(Debug, Clone)]
pub(crate) enum Choice {
    Fixed(Method),
    /// The least predicted time at the run's input sparsity.
    Cheapest(LayerCosts),
}

impl Choice {
    /// Whether the choice needs the input's sparsity.
    pub fn needs_sparsity(&self) -> bool {
        matches!(self, Choice::Cheapest(_))
    }

    /// The method for a run at `input_sparsity` (ignored by a fixed choice).
    pub fn choose(&self, input_sparsity: f64) -> Method {
        match self {
            Choice::Fixed(m) => *m,
            Choice::Cheapest(costs) => costs.cheapest(input_sparsity),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_among_what_it_prepares() {
        let spec = ConvSpec::new(512, 30, 30, 512, [3, 3]).with_padding([1, 1, 1, 1]);
        let auto = Selection::default();
        for weights in [0.0, 0.5, 0.9].map(WeightZeros::unstructured) {
            let prepared = auto.methods(&spec, weights);
            let choice = auto.choice(&spec, weights, &prepared);
            for step in 0..=10 {
                let m = choice.choose(step as f64 / 10.0);
                assert!(prepared.contains(&m), "{m} not in {prepared:?}");
            }
        }
        let dense = Selection {
            policy: Policy::Force(Method::Dense),
            ..Selection::default()
        };
        assert_eq!(
            dense.methods(&spec, WeightZeros::unstructured(0.9)),
            vec![Method::Dense]
        );
        let every = Selection {
            prepare_every_method: true,
            ..dense
        };
        assert_eq!(
            every.methods(&spec, WeightZeros::unstructured(0.0)),
            MODELED.to_vec()
        );
        assert!(!dense
            .choice(&spec, WeightZeros::unstructured(0.0), &[Method::Dense])
            .needs_sparsity());
        // Auto with one method left to pick needs no sparsity either; with two it does.
        assert!(!auto
            .choice(&spec, WeightZeros::unstructured(0.0), &[Method::Dense])
            .needs_sparsity());
        let two = [Method::Dense, Method::Im2Csr];
        assert!(auto
            .choice(&spec, WeightZeros::unstructured(0.0), &two)
            .needs_sparsity());
    }

    #[test]
    fn names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(p.to_string().parse::<Policy>().unwrap(), p);
        }
        assert!("fast".parse::<Policy>().is_err());
    }
}
