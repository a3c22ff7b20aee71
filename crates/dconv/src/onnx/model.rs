//! [`Model`]: a decoded ONNX model whose graph has been checked to be well formed.

use super::proto::{
    tensor_shape_proto::dimension::Value as DimValue, ModelProto, NodeProto, TensorProto,
};
use super::stream::{not_onnx, read_model};
use super::tensor_proto::decode_tensor;
use crate::error::{Error, Result};
use crate::limits::{MAX_ATTRIBUTE_VALUES, MAX_NODES, MAX_NODE_ARITY};
use crate::tensor::Tensor;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

/// The default-domain opsets dconv implements.
pub const OPSETS: std::ops::RangeInclusive<i64> = 6..=22;

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
    /// Shared with the plans built from the model, which hold them as constants without a
    /// copy.
    pub(crate) initializers: HashMap<String, Arc<Tensor>>,
    inputs: Vec<ModelInput>,
    outputs: Vec<String>,
    /// The shape each output declares, if it declares one (bindings report it before a run).
    output_shapes: Vec<Option<Vec<Dim>>>,
    opset: i64,
}

impl Model {
    /// Reads and checks the model at `path`; external data must sit in the same folder. Each
    /// initializer is decoded as it is read ([`read_model`]), so that loading never holds a
    /// weight both encoded and decoded but for the one being decoded.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let io = |e: std::io::Error| Error::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let metadata = file.metadata().map_err(io)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut initializers = HashMap::new();
        let mut decode = |t: TensorProto| {
            initializers.insert(
                t.name().to_string(),
                Arc::new(decode_tensor(&t, Some(base))?),
            );
            Ok(())
        };
        let proto = if metadata.is_file() {
            read_model(std::io::BufReader::new(file), metadata.len(), &mut decode)?
        } else {
            // A pipe has no length to walk within: read it whole first.
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(io)?;
            read_model(bytes.as_slice(), bytes.len() as u64, &mut decode)?
        };
        Model::from_parts(proto, initializers)
    }

    /// Decodes a serialized `ModelProto`; `base` is the folder of external data (None refuses it).
    pub fn from_bytes(bytes: &[u8], base: Option<&Path>) -> Result<Model> {
        let mut proto = ModelProto::decode(bytes).map_err(not_onnx)?;
        let mut initializers = HashMap::new();
        if let Some(graph) = proto.graph.as_mut() {
            // Each tensor's encoded data is released as soon as it is decoded.
            for t in std::mem::take(&mut graph.initializer) {
                initializers.insert(t.name().to_string(), Arc::new(decode_tensor(&t, base)?));
            }
        }
        Model::from_parts(proto, initializers)
    }

    /// The model of `proto`, whose initializers have been decoded into `initializers`.
    fn from_parts(proto: ModelProto, initializers: HashMap<String, Arc<Tensor>>) -> Result<Model> {
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
        let output_shapes = graph.output.iter().map(declared_shape).collect();
        check_graph(&graph.node, &initializers, &inputs, &outputs)?;
        Ok(Model {
            nodes: graph.node,
            initializers,
            inputs,
            outputs,
            output_shapes,
            opset,
        })
    }

    pub fn inputs(&self) -> &[ModelInput] {
        &self.inputs
    }
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }
    /// The shapes the outputs declare, in [`outputs`](Self::outputs)' order (None where an
    /// output declares none); the actual shapes depend on the inputs' shapes.
    pub fn declared_output_shapes(&self) -> &[Option<Vec<Dim>>] {
        &self.output_shapes
    }
    /// The default-domain opset the model was exported for.
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// The model with `names` (tensors its nodes compute, or its inputs) added after its
    /// outputs, so that a run returns them too; names already among the outputs are
    /// skipped. A Conv whose own output is asked for no longer has the BatchNormalization
    /// or activation after it fused in.
    pub fn with_outputs<S: AsRef<str>>(mut self, names: &[S]) -> Result<Model> {
        for name in names.iter().map(AsRef::as_ref) {
            if self.outputs.iter().any(|o| o == name) {
                continue;
            }
            let known = self.inputs.iter().any(|i| i.name == name)
                || self.initializers.contains_key(name)
                || self
                    .nodes
                    .iter()
                    .any(|n| n.output.iter().any(|o| o == name));
            if name.is_empty() || !known {
                return Err(Error::InvalidArgument(format!(
                    "the model has no tensor '{name}' to output"
                )));
            }
            self.outputs.push(name.to_string());
            self.output_shapes.push(None);
        }
        Ok(self)
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

/// How a node is named in errors: its name, or `#index` when it has none.
pub(crate) fn node_label(node: &Node, index: usize) -> String {
    if node.name().is_empty() {
        format!("#{index}")
    } else {
        node.name().to_string()
    }
}

/// The structural checks of a graph, each failure naming the node: sizes within
/// [`limits`](crate::limits), operators of the default domain with the inputs their op
/// takes, every input produced before it is used (which also rules out cycles), every
/// tensor produced once, and every graph output produced.
fn check_graph(
    nodes: &[Node],
    initializers: &HashMap<String, Arc<Tensor>>,
    inputs: &[ModelInput],
    outputs: &[String],
) -> Result<()> {
    if nodes.len() > MAX_NODES {
        return Err(Error::InvalidModel(format!(
            "the graph has {} nodes (at most {MAX_NODES})",
            nodes.len()
        )));
    }
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        for output in node.output.iter().filter(|o| !o.is_empty()) {
            producer.entry(output.as_str()).or_insert(i);
        }
    }
    let mut known: HashSet<&str> = initializers.keys().map(String::as_str).collect();
    known.extend(inputs.iter().map(|i| i.name.as_str()));
    for (i, node) in nodes.iter().enumerate() {
        let in_node = |e: Error| Error::Node {
            node: node_label(node, i),
            op: node.op_type().to_string(),
            source: Box::new(e),
        };
        check_node(node).map_err(in_node)?;
        for input in node.input.iter().filter(|i| !i.is_empty()) {
            if !known.contains(input.as_str()) {
                let msg = match producer.get(input.as_str()) {
                    Some(&j) => format!(
                        "input '{input}' is produced by node '{}', which comes at or after it \
                         (a cycle, or nodes out of topological order)",
                        node_label(&nodes[j], j)
                    ),
                    None => format!(
                        "input '{input}' is produced by no node, initializer or graph input"
                    ),
                };
                return Err(in_node(Error::InvalidModel(msg)));
            }
        }
        for output in node.output.iter().filter(|o| !o.is_empty()) {
            if !known.insert(output.as_str()) {
                return Err(in_node(Error::InvalidModel(format!(
                    "output '{output}' is already produced by another node, initializer or input"
                ))));
            }
        }
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

/// One node on its own: its domain, the number of its inputs and outputs, and the sizes of
/// its list attributes.
fn check_node(node: &Node) -> Result<()> {
    if !matches!(node.domain(), "" | "ai.onnx") {
        return Err(Error::Unsupported(format!(
            "operator domain '{}'",
            node.domain()
        )));
    }
    if node.input.len() > MAX_NODE_ARITY || node.output.len() > MAX_NODE_ARITY {
        return Err(Error::InvalidModel(format!(
            "{} inputs and {} outputs (at most {MAX_NODE_ARITY} each)",
            node.input.len(),
            node.output.len()
        )));
    }
    if let Some((min, max)) = input_arity(node.op_type()) {
        let given = node.input.len();
        if given < min || given > max {
            let expected = match (min, max) {
                (a, b) if a == b => format!("{a}"),
                (a, usize::MAX) => format!("at least {a}"),
                (a, b) => format!("{a} to {b}"),
            };
            return Err(Error::InvalidModel(format!(
                "{} takes {expected} inputs, the node has {given}",
                node.op_type()
            )));
        }
        if node.output.first().is_none_or(String::is_empty) {
            return Err(Error::InvalidModel(format!(
                "{} needs an output",
                node.op_type()
            )));
        }
    }
    for a in &node.attribute {
        let values = a.ints.len().max(a.floats.len()).max(a.strings.len());
        if values > MAX_ATTRIBUTE_VALUES {
            return Err(Error::InvalidModel(format!(
                "attribute {} has {values} values (at most {MAX_ATTRIBUTE_VALUES})",
                a.name()
            )));
        }
    }
    Ok(())
}

/// The fewest and most inputs (counting empty optional ones) each supported operator takes;
/// None for operators dconv does not know (refused when planned).
fn input_arity(op: &str) -> Option<(usize, usize)> {
    let any = usize::MAX;
    Some(match op {
        "Constant" => (0, 0),
        "Relu" | "Sigmoid" | "LeakyRelu" | "HardSigmoid" | "HardSwish" | "Tanh" | "Exp" | "Neg"
        | "Sqrt" | "Reciprocal" | "Abs" | "MaxPool" | "AveragePool" | "GlobalAveragePool"
        | "GlobalMaxPool" | "LRN" | "Softmax" | "Flatten" | "Transpose" | "Shape"
        | "ConstantOfShape" | "Cast" | "Identity" => (1, 1),
        "Add" | "Sub" | "Mul" | "Div" | "PRelu" | "Pow" | "MatMul" | "Gather" => (2, 2),
        "Max" | "Min" | "Sum" | "Concat" => (1, any),
        "Conv" | "ConvTranspose" | "Gemm" => (2, 3),
        "Clip" | "Dropout" => (1, 3),
        "BatchNormalization" => (5, 5),
        "Reshape" | "Squeeze" | "Unsqueeze" | "Upsample" => (1, 2),
        "Slice" => (1, 5),
        "Pad" | "Resize" => (1, 4),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intermediate_tensor_asked_for_is_returned_after_the_outputs() {
        use crate::runtime::{example_model, Session, SessionOptions};
        let model = Model::from_bytes(&example_model(), None).unwrap();
        let model = model.with_outputs(&["c", "y"]).unwrap();
        assert_eq!(model.outputs(), ["y", "c"]);
        let session = Session::new(&model, SessionOptions::default()).unwrap();
        let input = Tensor::from_f32(vec![1, 1, 4, 4], vec![1.0; 16]).unwrap();
        let outputs = session.run(&[("x", input)]).unwrap();
        let (c, y) = (outputs[1].1.to_f32_vec(), outputs[0].1.to_f32_vec());
        assert_eq!(outputs[1].0, "c");
        // The Conv's own output, before the Relu that is no longer fused into it.
        assert_eq!((c[5], c[16 + 5]), (9.0, -9.0));
        let relu: Vec<f32> = c.iter().map(|v| v.max(0.0)).collect();
        assert_eq!(y, relu);

        let model = Model::from_bytes(&example_model(), None).unwrap();
        let err = model.with_outputs(&["nowhere"]).unwrap_err();
        assert!(err.to_string().contains("'nowhere'"), "{err}");
    }
}
