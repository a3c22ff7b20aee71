//! A tiny serialized ONNX model built in code, for the documentation example and tests.

use crate::onnx::proto::{
    tensor_proto::DataType, tensor_shape_proto::dimension::Value as DimValue,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use prost::Message;

fn float_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: Some(DimValue::DimValue(d)),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Conv (input `x`: 1x1x4x4; filter 0 all ones, filter 1 all minus ones; 3x3, pad 1)
/// followed by Relu (output `y`: 1x2x4x4), opset 13.
pub fn example_model() -> Vec<u8> {
    let mut weights = vec![1.0f32; 9];
    weights.extend([-1.0f32; 9]);
    let node =
        |op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>| NodeProto {
            op_type: Some(op.into()),
            name: Some(format!("{op}_0")),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        };
    let pads = AttributeProto {
        name: Some("pads".into()),
        ints: vec![1, 1, 1, 1],
        r#type: Some(7),
        ..Default::default()
    };
    let graph = GraphProto {
        name: Some("example".into()),
        node: vec![
            node("Conv", &["x", "w"], "c", vec![pads]),
            node("Relu", &["c"], "y", vec![]),
        ],
        initializer: vec![TensorProto {
            name: Some("w".into()),
            dims: vec![2, 1, 3, 3],
            data_type: Some(DataType::Float as i32),
            float_data: weights,
            ..Default::default()
        }],
        input: vec![float_info("x", &[1, 1, 4, 4])],
        output: vec![float_info("y", &[1, 2, 4, 4])],
        ..Default::default()
    };
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The example model with `extra` more Conv (2 -> 2, 3x3, pad 1) + Relu pairs after its own,
/// `Conv_1`, `Relu_1`, ... (output `y{extra}`): a chain of layers of two shapes, for tests.
#[cfg(test)]
pub(crate) fn example_chain(extra: usize) -> Vec<u8> {
    let mut proto = ModelProto::decode(&example_model()[..]).expect("the example decodes");
    let graph = proto.graph.as_mut().expect("the example has a graph");
    let (conv, relu) = (graph.node[0].clone(), graph.node[1].clone());
    let mut w2 = graph.initializer[0].clone();
    (w2.name, w2.dims) = (Some("w2".into()), vec![2, 2, 3, 3]);
    w2.float_data = (0..36).map(|i| (i % 5) as f32 - 2.0).collect();
    graph.initializer.push(w2);
    for i in 0..extra {
        let rename = |n: &NodeProto, inputs: Vec<String>, output: String| NodeProto {
            name: Some(format!("{}_{}", n.op_type(), i + 1)),
            input: inputs,
            output: vec![output],
            ..n.clone()
        };
        let (x, c, y) = (
            format!("y{i}"),
            format!("c{}", i + 1),
            format!("y{}", i + 1),
        );
        graph
            .node
            .push(rename(&conv, vec![x, "w2".into()], c.clone()));
        graph.node.push(rename(&relu, vec![c], y));
    }
    graph.node[1].output = vec!["y0".into()];
    graph.output[0].name = Some(format!("y{extra}"));
    proto.encode_to_vec()
}
