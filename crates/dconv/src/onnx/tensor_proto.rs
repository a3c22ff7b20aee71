//! Decoding of `TensorProto`s (initializers, constants, test data) into [`Tensor`]s.
//!
//! The data may sit in `raw_data` (little-endian), in the typed repeated fields, or in an
//! external file next to the model. Every size comes from the file and is untrusted: element
//! counts are checked against the bytes actually present before anything is allocated, and
//! external paths must stay inside the model's folder.

use super::proto::tensor_proto::{DataLocation, DataType};
use super::proto::TensorProto;
use crate::error::{Error, Result};
use crate::limits::checked_elements;
use crate::tensor::{Tensor, TensorData};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

/// Decodes `t`; `base` is the folder that external data paths are relative to (None when the
/// tensor did not come from a model file, and external data is then refused).
pub fn decode_tensor(t: &TensorProto, base: Option<&Path>) -> Result<Tensor> {
    let name = t.name();
    let invalid = |msg: String| Error::InvalidModel(format!("tensor '{name}': {msg}"));
    let shape = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| invalid(format!("negative dimension {d}"))))
        .collect::<Result<Vec<usize>>>()?;
    let count = checked_elements(&shape, &format!("tensor '{name}'"))?;
    let dtype = DataType::try_from(t.data_type())
        .map_err(|_| invalid(format!("unknown data type {}", t.data_type())))?;
    let width = match dtype {
        DataType::Float | DataType::Int32 => 4,
        DataType::Double | DataType::Int64 => 8,
        DataType::Int16 => 2,
        DataType::Int8 | DataType::Uint8 | DataType::Bool => 1,
        other => {
            return Err(Error::Unsupported(format!(
                "tensor '{name}' has data type {}",
                other.as_str_name()
            )))
        }
    };
    let byte_len = count
        .checked_mul(width)
        .ok_or_else(|| invalid(format!("shape {shape:?} has too many bytes")))?;

    let external;
    let raw: Option<&[u8]> = if t.data_location() == DataLocation::External {
        external = read_external(t, base, byte_len).map_err(|e| match e {
            Error::InvalidModel(m) => invalid(m),
            other => other,
        })?;
        Some(&external)
    } else if t.raw_data.is_some() {
        Some(t.raw_data())
    } else {
        None
    };

    let data = if let Some(raw) = raw {
        if raw.len() != byte_len {
            return Err(invalid(format!(
                "shape {shape:?} needs {byte_len} bytes of data, found {}",
                raw.len()
            )));
        }
        decode_raw(dtype, raw)
    } else {
        decode_typed(t, dtype, count).map_err(invalid)?
    };
    Tensor::new(shape, data)
}

fn decode_raw(dtype: DataType, raw: &[u8]) -> TensorData {
    fn chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        raw.chunks_exact(N)
            .map(|c| c.try_into().expect("chunks_exact yields N bytes"))
    }
    match dtype {
        DataType::Float => TensorData::F32(chunks::<4>(raw).map(f32::from_le_bytes).collect()),
        DataType::Double => TensorData::F32(
            chunks::<8>(raw)
                .map(|b| f64::from_le_bytes(b) as f32)
                .collect(),
        ),
        DataType::Int64 => TensorData::I64(chunks::<8>(raw).map(i64::from_le_bytes).collect()),
        DataType::Int32 => TensorData::I64(
            chunks::<4>(raw)
                .map(|b| i32::from_le_bytes(b) as i64)
                .collect(),
        ),
        DataType::Int16 => TensorData::I64(
            chunks::<2>(raw)
                .map(|b| i16::from_le_bytes(b) as i64)
                .collect(),
        ),
        DataType::Int8 => TensorData::I64(raw.iter().map(|&b| b as i8 as i64).collect()),
        _ => TensorData::I64(raw.iter().map(|&b| b as i64).collect()),
    }
}

/// Reads the typed repeated field that ONNX uses for `dtype`, checking its length.
fn decode_typed(
    t: &TensorProto,
    dtype: DataType,
    count: usize,
) -> std::result::Result<TensorData, String> {
    let check = |field: &str, len: usize| {
        if len == count {
            Ok(())
        } else {
            Err(format!("{field} has {len} values, the shape needs {count}"))
        }
    };
    Ok(match dtype {
        DataType::Float => {
            check("float_data", t.float_data.len())?;
            TensorData::F32(t.float_data.clone())
        }
        DataType::Double => {
            check("double_data", t.double_data.len())?;
            TensorData::F32(t.double_data.iter().map(|&v| v as f32).collect())
        }
        DataType::Int64 => {
            check("int64_data", t.int64_data.len())?;
            TensorData::I64(t.int64_data.clone())
        }
        _ => {
            check("int32_data", t.int32_data.len())?;
            TensorData::I64(t.int32_data.iter().map(|&v| v as i64).collect())
        }
    })
}

/// Reads `byte_len` bytes of external data, confined to `base`.
fn read_external(t: &TensorProto, base: Option<&Path>, byte_len: usize) -> Result<Vec<u8>> {
    let base = base.ok_or_else(|| {
        Error::InvalidModel("external data is only allowed in a model file".into())
    })?;
    let (mut location, mut offset, mut length) = (None, 0u64, None);
    for entry in &t.external_data {
        let value = entry.value();
        let number = || {
            value.parse::<u64>().map_err(|_| {
                Error::InvalidModel(format!("external data {}={value:?}", entry.key()))
            })
        };
        match entry.key() {
            "location" => location = Some(value.to_string()),
            "offset" => offset = number()?,
            "length" => length = Some(number()?),
            _ => {}
        }
    }
    let location =
        location.ok_or_else(|| Error::InvalidModel("external data without a location".into()))?;
    let relative = Path::new(&location);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(Error::InvalidModel(format!(
            "external data path {location:?} must be relative and stay in the model's folder"
        )));
    }
    let path = base.join(relative);
    let io = |e: std::io::Error| Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    // Symlinks may not lead out of the folder: compare the resolved paths.
    let folder = base.canonicalize().map_err(io)?;
    if !path.canonicalize().map_err(io)?.starts_with(&folder) {
        return Err(Error::InvalidModel(format!(
            "external data path {location:?} leads out of the model's folder"
        )));
    }
    let mut file = File::open(&path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let wanted = byte_len as u64;
    if length.is_some_and(|l| l != wanted) {
        return Err(Error::InvalidModel(format!(
            "external data length {} does not match the {wanted} bytes the shape needs",
            length.unwrap_or(0)
        )));
    }
    if offset.checked_add(wanted).is_none_or(|end| end > file_len) {
        return Err(Error::InvalidModel(format!(
            "external data {location:?} has {file_len} bytes, {wanted} needed from offset {offset}"
        )));
    }
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut bytes = vec![0u8; byte_len];
    file.read_exact(&mut bytes).map_err(io)?;
    Ok(bytes)
}

/// Decodes a standalone serialized `TensorProto` (the `input_0.pb` files of ONNX test data).
pub fn read_tensor_file(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let proto = <TensorProto as prost::Message>::decode(bytes.as_slice())
        .map_err(|e| Error::InvalidModel(format!("{}: not a TensorProto: {e}", path.display())))?;
    decode_tensor(&proto, None)
}
