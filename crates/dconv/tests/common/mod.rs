//! Builders of ONNX nodes, attributes and initializers for the tests that write small models
//! by hand.
//! Each test binary compiles this module and uses some of it.
#![allow(dead_code)]

use dconv::conv::Method;
use dconv::onnx::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, NodeProto, TensorProto,
};
use dconv::Policy;

/// `auto` and every method but the naive reference, whose loops take minutes over whole
/// models and do not depend on the instruction set (their tests run once, apart).
pub fn fast_policies() -> Vec<Policy> {
    Policy::ALL
        .into_iter()
        .filter(|&p| p != Policy::Force(Method::Reference))
        .collect()
}

/// A node named after its op and output.
pub fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(format!("{op}_{output}")),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

fn attribute(
    name: &str,
    kind: AttributeType,
    fill: impl FnOnce(&mut AttributeProto),
) -> AttributeProto {
    let mut a = AttributeProto {
        name: Some(name.into()),
        r#type: Some(kind as i32),
        ..Default::default()
    };
    fill(&mut a);
    a
}

pub fn int(name: &str, value: i64) -> AttributeProto {
    attribute(name, AttributeType::Int, |a| a.i = Some(value))
}

pub fn ints(name: &str, values: &[i64]) -> AttributeProto {
    attribute(name, AttributeType::Ints, |a| a.ints = values.to_vec())
}

pub fn float(name: &str, value: f32) -> AttributeProto {
    attribute(name, AttributeType::Float, |a| a.f = Some(value))
}

pub fn string(name: &str, value: &str) -> AttributeProto {
    attribute(name, AttributeType::String, |a| {
        a.s = Some(value.as_bytes().to_vec())
    })
}

/// A float initializer of shape `dims` (`&[]` for a scalar).
pub fn floats(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Float as i32),
        float_data: values.to_vec(),
        ..Default::default()
    }
}

/// A 1-D int64 initializer.
pub fn int64s(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: vec![values.len() as i64],
        data_type: Some(DataType::Int64 as i32),
        int64_data: values.to_vec(),
        ..Default::default()
    }
}
