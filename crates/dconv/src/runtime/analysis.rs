//! [`LayerAnalysis`]: what every method would cost on each convolution of a model, measured
//! on the inputs the layers actually see in a run, next to what the cost model predicts and
//! what `auto` picks. [`Session::analyze`](super::Session::analyze) runs the model once with
//! every method prepared; at each convolution a [`Probe`] times all of them, interleaved,
//! before the run goes on.

use crate::conv::select::{LayerCosts, WeightZeros};
use crate::conv::{ConvSpec, Method, Workspace};
use crate::error::Result;
use crate::plan::conv_step::{zero_fraction, ConvStep};
use crate::plan::policy::Selection;
use crate::timing::Protocol;
use std::time::Duration;

/// One method on one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodTime {
    pub method: Method,
    /// Median of the timed runs.
    pub measured: Duration,
    /// What the session's cost profile predicts.
    pub predicted: Duration,
}

/// One convolution of the model.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerAnalysis {
    /// The Conv node's name.
    pub name: String,
    pub spec: ConvSpec,
    /// Fraction of zeros of the input this layer saw.
    pub input_sparsity: f64,
    /// Its weights' zeros (after BatchNormalization folding): how many, and how its
    /// filters share them in pairs.
    pub weights: WeightZeros,
    /// Multiply-adds of the dense convolution.
    pub macs: u64,
    /// The method `auto` picks for this input.
    pub auto: Method,
    /// Every method the profile models, in its order.
    pub methods: Vec<MethodTime>,
}

impl LayerAnalysis {
    /// The fastest method as measured.
    pub fn best(&self) -> Option<&MethodTime> {
        self.methods.iter().min_by_key(|m| m.measured)
    }

    /// The measured time of `method`.
    pub fn time_of(&self, method: Method) -> Option<Duration> {
        self.methods
            .iter()
            .find(|m| m.method == method)
            .map(|m| m.measured)
    }

    /// How much slower `auto`'s pick is than the best method: 0.03 means 3 % slower.
    pub fn auto_vs_best(&self) -> Option<f64> {
        let auto = self.time_of(self.auto)?.as_secs_f64();
        let best = self.best()?.measured.as_secs_f64();
        (best > 0.0).then(|| auto / best - 1.0)
    }
}

/// What a caller hears as each convolution has been timed: the layer, how many have been
/// timed so far (this one included), and how many the plan has.
pub type OnLayer<'a> = &'a mut (dyn FnMut(&LayerAnalysis, usize, usize) + Send);

/// Times every prepared method of each convolution a run reaches.
pub(crate) struct Probe<'a> {
    runs: usize,
    selection: Selection,
    /// Convolutions in the plan.
    convs: usize,
    on_layer: OnLayer<'a>,
    pub layers: Vec<LayerAnalysis>,
}

impl<'a> Probe<'a> {
    pub fn new(runs: usize, selection: Selection, convs: usize, on_layer: OnLayer<'a>) -> Self {
        Probe {
            runs: runs.max(1),
            selection,
            convs,
            on_layer,
            layers: Vec::new(),
        }
    }

    /// Called before `conv` runs on `input` (adding `residual`, when it has one): times every
    /// method by the [`Protocol`], with
    /// one warm-up run of each and `runs` rounds.
    pub fn before_conv(
        &mut self,
        name: &str,
        conv: &ConvStep,
        (input, input_sparsity): (&[f32], Option<f64>),
        residual: Option<&[f32]>,
        (output, pitch): (&mut [f32], usize),
        ws: &mut Workspace,
    ) -> Result<()> {
        let convs = conv.convs();
        let Some(first) = convs.first() else {
            return Ok(());
        };
        let spec = *first.spec();
        let sparsity = input_sparsity.unwrap_or_else(|| zero_fraction(input));
        let protocol = Protocol {
            warmup: 1,
            rounds: self.runs,
        };
        let samples = protocol.time(convs.len(), |i| {
            convs[i].run_into(input, residual, (&mut *output, pitch), ws)
        })?;
        let methods: Vec<Method> = convs.iter().map(|c| c.method()).collect();
        let costs = LayerCosts::new(
            &self.selection.profile,
            &spec,
            conv.weight_zeros(),
            &methods,
        );
        self.layers.push(LayerAnalysis {
            name: name.to_string(),
            spec,
            input_sparsity: sparsity,
            weights: conv.weight_zeros(),
            macs: spec.macs().unwrap_or(0),
            auto: conv.choose(input, Some(sparsity)),
            methods: methods
                .iter()
                .zip(&samples)
                .map(|(&method, s)| MethodTime {
                    method,
                    measured: s.median(),
                    predicted: Duration::from_secs_f64(
                        costs.predict(method, sparsity).unwrap_or(0.0).max(0.0) * 1e-9,
                    ),
                })
                .collect(),
        });
        let layer = self.layers.last().expect("just pushed");
        (self.on_layer)(layer, self.layers.len(), self.convs);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::runtime::example::example_chain;
    use crate::{Model, Session, SessionOptions, Tensor};

    #[test]
    fn each_layer_is_reported_as_soon_as_it_is_timed() {
        let model = Model::from_bytes(&example_chain(2), None).unwrap();
        let options = SessionOptions {
            threads: 1,
            ..Default::default()
        };
        let session = Session::new(&model, options).unwrap();
        let pixels = (0..16).map(|i| i as f32 - 5.0).collect();
        let input = Tensor::from_f32(vec![1, 1, 4, 4], pixels).unwrap();
        let mut heard = Vec::new();
        let mut on_layer = |layer: &super::LayerAnalysis, done: usize, convs: usize| {
            heard.push((layer.name.clone(), done, convs));
        };
        let layers = session
            .analyze_reporting(&[("x", input)], 1, &mut on_layer)
            .unwrap();
        let names: Vec<String> = layers.iter().map(|l| l.name.clone()).collect();
        assert_eq!(names, ["Conv_0", "Conv_1", "Conv_2"]);
        let expected: Vec<_> = names.into_iter().zip(1..).map(|(n, i)| (n, i, 3)).collect();
        assert_eq!(heard, expected);
    }
}
