//! [`Model`]: a decoded ONNX model whose graph has been checked to be well formed.

use super::proto::{tensor_shape_proto::dimension::Value as DimValue, ModelProto, NodeProto};
use super::tensor_proto::decode_tensor;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The default-domain opsets dconv implements.
pub const OPSETS: std::ops::RangeInclusive<i64> = 6..=21;

/// One dimension of a declared input shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// Unknown until an actual input is given (a symbolic name or nothing).
    Dynamic(String),
}

/// A graph input the caller must feed.
#[derive(Debug, Clone)]
pub struct ModelInput {
    pub name: String,
    /// The declared shape, when the model declares one.
    pub shape: Option<Vec<Dim>>,
}

/// One operator application.
pub type Node = NodeProto;

/// A loaded ONNX model: nodes in topological order, initializers decoded, and the inputs the
/// caller feeds (initializers listed as inputs by old exporters are not among them).
#[derive(Debug)]
pub struct Model {
    pub(crate) nodes: Vec<Node>,
    pub(crate) initializers: HashMap<String, Tensor>,
    inputs: Vec<ModelInput>,
    outputs: Vec<String>,
    opset: i64,
}

impl Model {
    /// Reads and checks the model at `path`; external data must sit in the same folder.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Model::from_bytes(&bytes, Some(base))
    }

    /// Decodes a serialized `ModelProto`; `base` is the folder of external data (None refuses it).
    pub fn from_bytes(bytes: &[u8], base: Option<&Path>) -> Result<Model> {
        let proto = ModelProto::decode(bytes)
            .map_err(|e| Error::InvalidModel(format!("not an ONNX model: {e}")))?;
        let opset = proto
            .opset_import
            .iter()
            .find(|o| matches!(o.domain(), "" | "ai.onnx"))
            .map_or(1, |o| o.version());
        if !OPSETS.contains(&opset) {
            return Err(Error::Unsupported(format!(
                "opset {opset} (dconv implements opsets {} to {})",
                OPSETS.start(),
                OPSETS.end()
            )));
        }
        let graph = proto
            .graph
            .ok_or_else(|| Error::InvalidModel("the model has no graph".into()))?;
        let mut initializers = HashMap::new();
        for t in &graph.initializer {
            initializers.insert(t.name().to_string(), decode_tensor(t, base)?);
        }
        let inputs = graph
            .input
            .iter()
            .filter(|i| !initializers.contains_key(i.name()))
            .map(|i| ModelInput {
                name: i.name().to_string(),
                shape: declared_shape(i),
            })
            .collect::<Vec<_>>();
        let outputs: Vec<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
        check_graph(&graph.node, &initializers, &inputs, &outputs)?;
        Ok(Model {
            nodes: graph.node,
            initializers,
            inputs,
            outputs,
            opset,
        })
    }

    pub fn inputs(&self) -> &[ModelInput] {
        &self.inputs
    }
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }
    /// The default-domain opset the model was exported for.
    pub fn opset(&self) -> i64 {
        self.opset
    }
}

fn declared_shape(info: &super::proto::ValueInfoProto) -> Option<Vec<Dim>> {
    use super::proto::type_proto::Value;
    let Some(Value::TensorType(t)) = info.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let shape = t.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(DimValue::DimValue(v)) if *v >= 0 => Dim::Fixed(*v as usize),
                Some(DimValue::DimParam(p)) => Dim::Dynamic(p.clone()),
                _ => Dim::Dynamic(String::new()),
            })
            .collect(),
    )
}

/// Every node input must be produced before it is used, and every output must be produced.
fn check_graph(
    nodes: &[Node],
    initializers: &HashMap<String, Tensor>,
    inputs: &[ModelInput],
    outputs: &[String],
) -> Result<()> {
    let mut known: HashSet<&str> = initializers.keys().map(String::as_str).collect();
    known.extend(inputs.iter().map(|i| i.name.as_str()));
    for node in nodes {
        for input in node.input.iter().filter(|i| !i.is_empty()) {
            if !known.contains(input.as_str()) {
                return Err(Error::Node {
                    node: node.name().to_string(),
                    op: node.op_type().to_string(),
                    source: Box::new(Error::InvalidModel(format!(
                        "input '{input}' is not produced by an earlier node"
                    ))),
                });
            }
        }
        known.extend(node.output.iter().map(String::as_str));
    }
    for output in outputs {
        if !known.contains(output.as_str()) {
            return Err(Error::InvalidModel(format!(
                "graph output '{output}' is never produced"
            )));
        }
    }
    Ok(())
}
