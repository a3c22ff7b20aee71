//! Convolution layers of well-known networks, with the input sparsity measured on them, so
//! that benchmarks and tools can run real shapes at realistic sparsities without the model.

pub mod vgg16;

use crate::conv::ConvSpec;
use crate::error::{Error, Result};

/// One convolution layer of a known network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvLayer {
    /// The layer's name inside its model, e.g. `conv4_2`.
    pub name: &'static str,
    /// The convolution's shape, batch 1, without bias or fused activation: what the
    /// convolution methods are benchmarked on.
    pub spec: ConvSpec,
    /// Fraction of zeros in the layer's input, measured on real inputs.
    pub input_sparsity: f64,
}

/// Every model with a layer table: its name and its convolutions in order.
pub const MODELS: [(&str, &[ConvLayer]); 1] = [("vgg16", &vgg16::CONV_LAYERS)];

/// Finds a layer by its qualified name, `model.layer` (e.g. `vgg16.conv4_2`).
pub fn conv_layer(qualified_name: &str) -> Result<&'static ConvLayer> {
    let all_names = || {
        MODELS
            .iter()
            .flat_map(|(model, layers)| layers.iter().map(move |l| format!("{model}.{}", l.name)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let unknown = || Error::UnknownName {
        kind: "layer",
        name: qualified_name.to_string(),
        expected: all_names(),
    };
    let (model, layer) = qualified_name.split_once('.').ok_or_else(unknown)?;
    MODELS
        .iter()
        .find(|(name, _)| *name == model)
        .and_then(|(_, layers)| layers.iter().find(|l| l.name == layer))
        .ok_or_else(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layer_is_valid_and_found_by_name() {
        for (model, layers) in MODELS {
            for layer in layers {
                layer.spec.validate().unwrap();
                assert!((0.0..=1.0).contains(&layer.input_sparsity));
                let found = conv_layer(&format!("{model}.{}", layer.name)).unwrap();
                assert_eq!(found, layer);
            }
        }
    }

    #[test]
    fn unknown_layers_are_errors() {
        for name in ["vgg16", "vgg16.conv9_9", "resnet.conv1", ""] {
            assert!(conv_layer(name).is_err(), "{name}");
        }
    }
}
