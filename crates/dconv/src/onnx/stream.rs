//! Reads a model file an initializer at a time: each of the graph's initializers is read and
//! handed over on its own, and only the rest of the model (nodes, inputs, metadata) is decoded
//! as a whole. A file read whole and then decoded holds its encoded weights until the last
//! of them is decoded: AlexNet (244 MB) peaked at 481 MB, file and weights side by side.
//!
//! The walk knows the protobuf wire format and two field numbers, ModelProto's `graph` (7)
//! and GraphProto's `initializer` (5); every other field is copied as it stands, to be
//! decoded by prost with the rest. Lengths read from the file are checked against the bytes
//! the file has left before anything is allocated for them.

use super::proto::{GraphProto, ModelProto, TensorProto};
use crate::error::{Error, Result};
use prost::Message;
use std::io::Read;

/// ModelProto's field number of its graph.
const MODEL_GRAPH: u64 = 7;
/// GraphProto's field number of an initializer.
const GRAPH_INITIALIZER: u64 = 5;
/// The wire type of a length-delimited field (messages, bytes, strings, packed numbers).
const LENGTH_DELIMITED: u64 = 2;

/// Reads the ModelProto of `len` bytes from `reader`, giving each initializer of its graph
/// to `initializer` as soon as it is read; the model returned holds none of them.
pub(super) fn read_model(
    reader: impl Read,
    len: u64,
    mut initializer: impl FnMut(TensorProto) -> Result<()>,
) -> Result<ModelProto> {
    let mut file = Fields {
        reader,
        left: len,
        end: 0,
    };
    let (mut model_rest, mut graph_rest) = (Vec::new(), Vec::new());
    let mut has_graph = false;
    while let Some((tag, number, wire)) = file.next_field()? {
        if number == MODEL_GRAPH && wire == LENGTH_DELIMITED {
            has_graph = true;
            let graph_len = file.varint()?;
            let outer = file.enter(graph_len)?;
            while let Some((tag, number, wire)) = file.next_field()? {
                if number == GRAPH_INITIALIZER && wire == LENGTH_DELIMITED {
                    let message = file.length_delimited()?;
                    initializer(
                        TensorProto::decode(bytes::Bytes::from(message)).map_err(not_onnx)?,
                    )?;
                } else {
                    file.copy_field(tag, wire, &mut graph_rest)?;
                }
            }
            file.leave(outer);
        } else {
            file.copy_field(tag, wire, &mut model_rest)?;
        }
    }
    let mut model = ModelProto::decode(model_rest.as_slice()).map_err(not_onnx)?;
    if has_graph {
        model.graph = Some(GraphProto::decode(graph_rest.as_slice()).map_err(not_onnx)?);
    }
    Ok(model)
}

/// A file prost cannot decode.
pub(super) fn not_onnx(e: prost::DecodeError) -> Error {
    Error::InvalidModel(format!("not an ONNX model: {e}"))
}

fn truncated() -> Error {
    Error::InvalidModel("not an ONNX model: the file ends inside a field".into())
}

/// A read that failed: the file ended early, or reading it did.
fn read_failed(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        truncated()
    } else {
        Error::Io {
            path: "the model file".into(),
            message: e.to_string(),
        }
    }
}

/// The fields of a protobuf message being read: `left` bytes of the file remain, of which
/// the message being walked ends where `end` remain.
struct Fields<R> {
    reader: R,
    left: u64,
    end: u64,
}

impl<R: Read> Fields<R> {
    /// The next field's tag, number and wire type, or None at the end of the message.
    fn next_field(&mut self) -> Result<Option<(u64, u64, u64)>> {
        if self.left == self.end {
            return Ok(None);
        }
        let tag = self.varint()?;
        if tag >> 3 == 0 {
            return Err(Error::InvalidModel(
                "not an ONNX model: a field numbered 0".into(),
            ));
        }
        Ok(Some((tag, tag >> 3, tag & 7)))
    }

    /// Walks a nested message of `len` bytes; returns what [`leave`](Self::leave) restores.
    fn enter(&mut self, len: u64) -> Result<u64> {
        let outer = self.end;
        self.end = self
            .left
            .checked_sub(len)
            .filter(|&e| e >= outer)
            .ok_or_else(truncated)?;
        Ok(outer)
    }

    fn leave(&mut self, outer: u64) {
        self.end = outer;
    }

    fn byte(&mut self) -> Result<u8> {
        if self.left == self.end {
            return Err(truncated());
        }
        let mut b = [0u8];
        self.reader.read_exact(&mut b).map_err(read_failed)?;
        self.left -= 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Error::InvalidModel(
            "not an ONNX model: a varint longer than 10 bytes".into(),
        ))
    }

    /// `n` bytes, allocated only once the message is known to hold them.
    fn bytes(&mut self, n: u64) -> Result<Vec<u8>> {
        if n > self.left - self.end {
            return Err(truncated());
        }
        let mut data = vec![0; n as usize];
        self.reader.read_exact(&mut data).map_err(read_failed)?;
        self.left -= n;
        Ok(data)
    }

    /// A length-delimited field's payload.
    fn length_delimited(&mut self) -> Result<Vec<u8>> {
        let n = self.varint()?;
        self.bytes(n)
    }

    /// Appends the field, tag and all, to `out` as the file encodes it.
    fn copy_field(&mut self, tag: u64, wire: u64, out: &mut Vec<u8>) -> Result<()> {
        prost::encoding::encode_varint(tag, out);
        match wire {
            0 => prost::encoding::encode_varint(self.varint()?, out),
            1 => out.extend(self.bytes(8)?),
            5 => out.extend(self.bytes(4)?),
            LENGTH_DELIMITED => {
                let payload = self.length_delimited()?;
                prost::encoding::encode_varint(payload.len() as u64, out);
                out.extend(payload);
            }
            other => {
                return Err(Error::InvalidModel(format!(
                    "not an ONNX model: wire type {other}"
                )))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::proto::{NodeProto, TensorProto};
    use super::*;
    use crate::runtime::example_model;

    /// A model whose graph holds initializers between its nodes, with fields of every wire
    /// type around it.
    fn sample() -> Vec<u8> {
        let tensor = |name: &str, n: u32| TensorProto {
            name: Some(name.into()),
            dims: vec![n as i64],
            data_type: Some(1),
            raw_data: Some((0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()),
            ..Default::default()
        };
        let mut model = ModelProto::decode(example_model().as_slice()).unwrap();
        let graph = model.graph.as_mut().unwrap();
        graph.initializer.push(tensor("big", 1000));
        graph.initializer.insert(0, tensor("small", 3));
        graph.node.push(NodeProto {
            op_type: Some("Identity".into()),
            ..Default::default()
        });
        model.ir_version = Some(8);
        model.model_version = Some(-3);
        model.encode_to_vec()
    }

    fn streamed(bytes: &[u8]) -> Result<(ModelProto, Vec<TensorProto>)> {
        let mut tensors = Vec::new();
        let model = read_model(bytes, bytes.len() as u64, |t| {
            tensors.push(t);
            Ok(())
        })?;
        Ok((model, tensors))
    }

    #[test]
    fn streaming_gives_the_model_prost_gives() {
        for bytes in [sample(), example_model()] {
            let mut whole = ModelProto::decode(bytes.as_slice()).unwrap();
            let (model, tensors) = streamed(&bytes).unwrap();
            let initializers = std::mem::take(&mut whole.graph.as_mut().unwrap().initializer);
            assert_eq!(model, whole);
            assert_eq!(tensors, initializers);
        }
    }

    /// Every prefix of a file is refused or read as prost reads it, without a panic; and a
    /// length past the file's end is refused before it is allocated.
    #[test]
    fn truncated_files_are_refused_like_prost_refuses_them() {
        let bytes = sample();
        for len in 0..bytes.len() {
            let prefix = &bytes[..len];
            let whole = ModelProto::decode(prefix);
            match streamed(prefix) {
                Ok((model, tensors)) => {
                    let mut whole = whole.expect("prost reads what streaming read");
                    if let Some(graph) = whole.graph.as_mut() {
                        assert_eq!(std::mem::take(&mut graph.initializer), tensors);
                    }
                    assert_eq!(model, whole, "prefix of {len}");
                }
                Err(e) => {
                    assert!(whole.is_err(), "prefix of {len}: streaming refused it: {e}");
                    assert!(e.to_string().contains("not an ONNX model"), "{e}");
                }
            }
        }
        // A graph claiming 2^62 bytes in a file of a few.
        let mut huge = vec![(MODEL_GRAPH << 3 | LENGTH_DELIMITED) as u8];
        prost::encoding::encode_varint(1 << 62, &mut huge);
        assert!(streamed(&huge).is_err());
    }
}
