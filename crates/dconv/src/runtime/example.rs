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
