//! Hard limits on what an untrusted model may ask for, checked before anything is allocated.
//! Real CNNs stay far below every one of them.

use crate::error::{Error, Result};
use crate::tensor::element_count;

/// Most axes a tensor may have (ONNX CNNs use at most 6, during NHWC/NCHW shuffles).
pub const MAX_RANK: usize = 8;
/// Most nodes a graph may have (VGG-16 has about 40, large detectors a few thousand).
pub const MAX_NODES: usize = 100_000;
/// Most inputs or outputs one node may have.
pub const MAX_NODE_ARITY: usize = 1024;
/// Most values in a list attribute (`pads`, `perm`, `value_ints`...).
pub const MAX_ATTRIBUTE_VALUES: usize = 4096;
/// Most strided copies one data-movement step may make (a Pad in mode reflect or wrap with
/// pads many times its data's length needs a copy per repeat).
pub const MAX_COPY_PARTS: usize = 1 << 12;
/// Most bytes a plan's buffers may take when the session sets no budget: sizes come from the
/// model file (a padding of a million pixels is a few bytes of protobuf), so without a bound
/// a stranger's model could make a run allocate terabytes. `--max-memory` raises it.
pub const DEFAULT_MAX_MEMORY: usize = 16 << 30;

/// The element count of `shape`, refused when its rank or its count is out of bounds;
/// `what` names the tensor in the error.
pub fn checked_elements(shape: &[usize], what: &str) -> Result<usize> {
    if shape.len() > MAX_RANK {
        return Err(Error::InvalidModel(format!(
            "{what} has rank {} (at most {MAX_RANK} axes)",
            shape.len()
        )));
    }
    element_count(shape).map_err(|_| {
        Error::InvalidModel(format!("{what} of shape {shape:?} has too many elements"))
    })
}

/// The product of `factors`, saturating: a size computed from a model's numbers must not
/// wrap around to something small.
pub(crate) fn saturating_product(factors: &[usize]) -> usize {
    factors.iter().fold(1usize, |acc, &f| acc.saturating_mul(f))
}

/// Parses a byte count: a number with an optional K, M or G suffix (powers of 1024).
pub fn parse_bytes(text: &str) -> Result<usize> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 10),
        Some((i, 'm' | 'M')) => (&text[..i], 20),
        Some((i, 'g' | 'G')) => (&text[..i], 30),
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::InvalidArgument(format!(
            "'{text}' is not a byte count (a number with an optional K, M or G suffix)"
        )));
    }
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1usize << shift))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "'{text}' is more bytes than this machine can address"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_take_binary_suffixes() {
        assert_eq!(parse_bytes("512").unwrap(), 512);
        assert_eq!(parse_bytes("4K").unwrap(), 4096);
        assert_eq!(parse_bytes("3m").unwrap(), 3 << 20);
        assert_eq!(parse_bytes("2G").unwrap(), 2 << 30);
        for bad in ["", "G", "-1", "+1", "1.5G", "1T", "1 G"] {
            let err = parse_bytes(bad).unwrap_err().to_string();
            assert!(err.contains("is not a byte count"), "{bad}: {err}");
        }
        let err = parse_bytes("99999999999999999999G")
            .unwrap_err()
            .to_string();
        assert!(err.contains("more bytes than"), "{err}");
    }

    #[test]
    fn shapes_beyond_the_limits_are_refused() {
        assert_eq!(checked_elements(&[2, 3], "t").unwrap(), 6);
        assert!(checked_elements(&[1; MAX_RANK + 1], "t").is_err());
        assert!(checked_elements(&[usize::MAX, 2], "t").is_err());
    }
}
