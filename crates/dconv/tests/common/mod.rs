//! Builders of ONNX nodes and attributes for the tests that write small models by hand.
//! Each test binary compiles this module and uses some of it.
#![allow(dead_code)]

use dconv::onnx::proto::{attribute_proto::AttributeType, AttributeProto, NodeProto};

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
