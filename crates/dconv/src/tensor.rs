//! [`Tensor`]: a shape and its elements, f32 for activations and weights, i64 for the shape
//! arithmetic that ONNX models do on constants.

use crate::error::{Error, Result};

/// The elements of a tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A dense, row-major tensor whose element count always matches its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    /// A float tensor; fails when `data` does not hold exactly the shape's element count.
    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor> {
        Tensor::new(shape, TensorData::F32(data))
    }

    /// An integer tensor; fails when `data` does not hold exactly the shape's element count.
    pub fn from_i64(shape: Vec<usize>, data: Vec<i64>) -> Result<Tensor> {
        Tensor::new(shape, TensorData::I64(data))
    }

    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Tensor> {
        let expected = element_count(&shape)?;
        let actual = match &data {
            TensorData::F32(d) => d.len(),
            TensorData::I64(d) => d.len(),
        };
        if expected != actual {
            return Err(Error::InvalidModel(format!(
                "a tensor of shape {shape:?} needs {expected} elements, got {actual}"
            )));
        }
        Ok(Tensor { shape, data })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn data(&self) -> &TensorData {
        &self.data
    }
    pub fn len(&self) -> usize {
        match &self.data {
            TensorData::F32(d) => d.len(),
            TensorData::I64(d) => d.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements, if this is a float tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(d) => Some(d),
            TensorData::I64(_) => None,
        }
    }

    /// The elements as floats (integers converted).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(d) => d.clone(),
            TensorData::I64(d) => d.iter().map(|&v| v as f32).collect(),
        }
    }

    /// The elements as integers (floats truncated toward zero, as ONNX Cast does).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match &self.data {
            TensorData::F32(d) => d.iter().map(|&v| v as i64).collect(),
            TensorData::I64(d) => d.clone(),
        }
    }

    /// Splits into shape and elements.
    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }

    /// The same elements under another shape with the same element count.
    pub fn reshaped(self, shape: Vec<usize>) -> Result<Tensor> {
        Tensor::new(shape, self.data)
    }
}

/// A borrowed float tensor: how a run reads an input that lives elsewhere (a numpy array,
/// a memory-mapped file) without first copying it into a [`Tensor`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TensorView<'a> {
    shape: &'a [usize],
    data: &'a [f32],
}

impl<'a> TensorView<'a> {
    /// A view; fails when `data` does not hold exactly the shape's element count.
    pub fn new(shape: &'a [usize], data: &'a [f32]) -> Result<TensorView<'a>> {
        let expected = element_count(shape)?;
        if expected != data.len() {
            return Err(Error::InvalidArgument(format!(
                "a tensor of shape {shape:?} needs {expected} elements, got {}",
                data.len()
            )));
        }
        Ok(TensorView { shape, data })
    }
    pub fn shape(&self) -> &'a [usize] {
        self.shape
    }
    pub fn data(&self) -> &'a [f32] {
        self.data
    }
}

/// What a session run takes as an input: an owned [`Tensor`] or a [`TensorView`].
pub trait AsTensorView {
    /// The float view of the tensor; None for a tensor of another element type.
    fn tensor_view(&self) -> Option<TensorView<'_>>;
}

impl AsTensorView for Tensor {
    fn tensor_view(&self) -> Option<TensorView<'_>> {
        Some(TensorView {
            shape: &self.shape,
            data: self.as_f32()?,
        })
    }
}

impl AsTensorView for TensorView<'_> {
    fn tensor_view(&self) -> Option<TensorView<'_>> {
        Some(*self)
    }
}

/// The number of elements of `shape`, or an error when it overflows.
pub fn element_count(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or(Error::Overflow("tensor element count"))
}
