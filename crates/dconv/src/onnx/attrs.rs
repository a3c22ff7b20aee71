//! Typed access to a node's attributes, with errors that name the attribute.

use super::proto::AttributeProto;
use super::tensor_proto::decode_tensor;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The attributes of one node.
#[derive(Clone, Copy)]
pub(crate) struct Attrs<'a>(pub &'a [AttributeProto]);

impl<'a> Attrs<'a> {
    fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.0.iter().find(|a| a.name() == name)
    }
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i())
    }
    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map_or(default, |a| a.f())
    }
    pub fn ints(&self, name: &str) -> Option<&'a [i64]> {
        self.get(name).map(|a| a.ints.as_slice())
    }
    pub fn floats(&self, name: &str) -> Option<&'a [f32]> {
        self.get(name).map(|a| a.floats.as_slice())
    }
    pub fn string(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(|a| String::from_utf8_lossy(a.s()).into_owned())
    }
    /// The value of string attribute `name` (`default` when absent) among `options`; any
    /// other value is an error that lists them.
    pub fn choice<T: Copy>(&self, name: &str, default: &str, options: &[(&str, T)]) -> Result<T> {
        let value = self.string(name).unwrap_or_else(|| default.to_string());
        options
            .iter()
            .find(|(known, _)| *known == value)
            .map(|&(_, t)| t)
            .ok_or_else(|| {
                let known: Vec<&str> = options.iter().map(|(k, _)| *k).collect();
                Error::InvalidModel(format!(
                    "attribute {name} is '{value}' (expected one of: {})",
                    known.join(", ")
                ))
            })
    }
    pub fn tensor(&self, name: &str) -> Result<Option<Tensor>> {
        self.get(name)
            .and_then(|a| a.t.as_ref())
            .map(|t| decode_tensor(t, None))
            .transpose()
    }

    /// A list of non-negative sizes (kernel shape, strides, pads...).
    pub fn sizes(&self, name: &str) -> Result<Option<Vec<usize>>> {
        self.ints(name)
            .map(|v| {
                v.iter()
                    .map(|&x| {
                        usize::try_from(x).map_err(|_| {
                            Error::InvalidModel(format!(
                                "attribute {name} has a negative value {x}"
                            ))
                        })
                    })
                    .collect()
            })
            .transpose()
    }
}
