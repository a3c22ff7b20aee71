//! NumPy `.npy` files: the tensor format that `dconv run` reads and writes, so that inputs
//! and outputs can be exchanged with numpy and ONNX Runtime.
//!
//! Reading accepts format versions 1.0, 2.0 and 3.0, C order only, and the element types
//! little-endian `f4` (as is) and `f8`, `f2`, `i8`, `i4`, `u1` (converted to `f32`). The file
//! is untrusted: the header length is bounded, and the element count is overflow-checked and
//! compared with the bytes actually in the file before any data buffer is allocated.
//! Writing produces version 1.0 (2.0 only when the header would not fit) with `<f4` data.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// numpy itself refuses headers over 10 000 bytes unless told otherwise; a real header is
/// under 200 bytes, so this only keeps hostile files from making us read megabytes of text.
const MAX_HEADER_LEN: usize = 65_536;
/// numpy pads the header so that the data starts on this boundary.
const ALIGNMENT: usize = 64;

/// Reads a `.npy` file into its shape and its elements as `f32`, in C (row-major) order.
pub fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bad = |msg: String| Error::Input {
        path: path.to_path_buf(),
        msg,
    };
    let file = File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let file_len = file
        .metadata()
        .map_err(|e| bad(format!("cannot stat: {e}")))?
        .len();
    read_from(file, file_len).map_err(bad)
}

/// Decodes the bytes of a `.npy` file held in memory (what the fuzz target feeds).
pub fn decode_npy(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>)> {
    read_from(bytes, bytes.len() as u64).map_err(|msg| Error::Input {
        path: "<npy bytes>".into(),
        msg,
    })
}

/// Reads a whole `.npy` stream of `total_len` bytes, checking sizes before allocating.
fn read_from(
    mut reader: impl Read,
    total_len: u64,
) -> std::result::Result<(Vec<usize>, Vec<f32>), String> {
    let header = read_header(&mut reader)?;
    let prefix_len = header.data_offset as u64;
    let present = total_len.saturating_sub(prefix_len);
    let needed = element_bytes(&header)?;
    if present != needed as u64 {
        return Err(format!(
            "shape {:?} of {} needs {needed} data bytes, the file has {present}",
            header.shape,
            header.dtype.name()
        ));
    }
    let mut bytes = vec![0u8; needed];
    reader
        .read_exact(&mut bytes)
        .map_err(|e| format!("cannot read data: {e}"))?;
    let data = header.dtype.to_f32(&bytes);
    Ok((header.shape, data))
}

/// Writes `data` (C order, `shape.iter().product()` elements) as a `<f4` `.npy` file.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let expected = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or(Error::Overflow("npy element count"))?;
    if expected != data.len() {
        return Err(Error::BufferLength {
            what: "npy data",
            expected,
            actual: data.len(),
        });
    }
    let failed = |e: std::io::Error| Error::Output {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    let mut out = BufWriter::new(File::create(path).map_err(failed)?);
    out.write_all(&encode_header(shape)).map_err(failed)?;
    for v in data {
        out.write_all(&v.to_le_bytes()).map_err(failed)?;
    }
    out.flush().map_err(failed)
}

/// The element types we read; each is converted to `f32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
    F16,
    I64,
    I32,
    U8,
}

impl Dtype {
    /// Parses a numpy `descr` string; big-endian and unknown types are refused by name.
    fn parse(descr: &str) -> std::result::Result<Dtype, String> {
        let mut chars = descr.chars();
        let order = chars.next();
        let kind = chars.as_str();
        let dtype = match kind {
            "f4" => Dtype::F32,
            "f8" => Dtype::F64,
            "f2" => Dtype::F16,
            "i8" => Dtype::I64,
            "i4" => Dtype::I32,
            "u1" => Dtype::U8,
            _ => {
                return Err(format!(
                "unsupported element type '{descr}' (expected one of <f4, <f8, <f2, <i8, <i4, |u1)"
            ))
            }
        };
        match order {
            Some('<') => Ok(dtype),
            Some('|') if dtype == Dtype::U8 => Ok(dtype),
            Some('>') if dtype != Dtype::U8 => Err(format!(
                "big-endian element type '{descr}' is not supported; save it little-endian \
                 (e.g. array.astype('<{kind}'))"
            )),
            _ => Err(format!("unsupported element type '{descr}'")),
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 => 2,
            Dtype::U8 => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::F64 => "<f8",
            Dtype::F16 => "<f2",
            Dtype::I64 => "<i8",
            Dtype::I32 => "<i4",
            Dtype::U8 => "|u1",
        }
    }

    /// Converts little-endian elements to `f32` (rounding to nearest where `f32` is narrower).
    fn to_f32(self, bytes: &[u8]) -> Vec<f32> {
        fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
            bytes
                .chunks_exact(N)
                .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
                .collect()
        }
        match self {
            Dtype::F32 => each(bytes, f32::from_le_bytes),
            Dtype::F64 => each(bytes, |b| f64::from_le_bytes(b) as f32),
            Dtype::F16 => each(bytes, |b| f16_to_f32(u16::from_le_bytes(b))),
            Dtype::I64 => each(bytes, |b| i64::from_le_bytes(b) as f32),
            Dtype::I32 => each(bytes, |b| i32::from_le_bytes(b) as f32),
            Dtype::U8 => bytes.iter().map(|&b| f32::from(b)).collect(),
        }
    }
}

/// IEEE 754 half precision to single precision; exact for every value, NaN stays NaN.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    match exp {
        // Zero and subnormals: mant * 2^-24, exact in f32; the sign is kept for -0.0.
        0 => f32::from_bits(sign | (mant as f32 * 2f32.powi(-24)).to_bits()),
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (mant << 13)),
        _ => f32::from_bits(sign | ((exp + 127 - 15) << 23) | (mant << 13)),
    }
}

/// What the header says about the data that follows it.
#[derive(Debug)]
struct Header {
    dtype: Dtype,
    shape: Vec<usize>,
    /// Magic, version, length field and header text: where the data starts.
    data_offset: usize,
}

/// Number of data bytes the header promises, or why that number does not exist.
fn element_bytes(header: &Header) -> std::result::Result<usize, String> {
    header
        .shape
        .iter()
        .try_fold(header.dtype.size(), |n, &d| n.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or_else(|| format!("shape {:?} is too large to address", header.shape))
}

fn read_header(file: &mut impl Read) -> std::result::Result<Header, String> {
    let mut preamble = [0u8; 8];
    file.read_exact(&mut preamble)
        .map_err(|_| "too short to be a .npy file".to_string())?;
    if &preamble[..6] != MAGIC {
        return Err("not a .npy file (magic bytes \\x93NUMPY missing)".to_string());
    }
    let (major, minor) = (preamble[6], preamble[7]);
    let len_field = match major {
        1 => 2,
        2 | 3 => 4,
        _ => return Err(format!("unsupported .npy format version {major}.{minor}")),
    };
    let mut len_bytes = [0u8; 4];
    file.read_exact(&mut len_bytes[..len_field])
        .map_err(|_| "truncated header length".to_string())?;
    let header_len = u32::from_le_bytes(len_bytes) as usize;
    if header_len > MAX_HEADER_LEN {
        return Err(format!(
            "header of {header_len} bytes exceeds the limit of {MAX_HEADER_LEN}"
        ));
    }
    let mut text = vec![0u8; header_len];
    file.read_exact(&mut text)
        .map_err(|_| format!("truncated header (declared {header_len} bytes)"))?;
    let text = std::str::from_utf8(&text).map_err(|_| "header is not text".to_string())?;
    let fields = HeaderParser::new(text).dict()?;
    if fields.fortran_order {
        return Err(
            "Fortran-order arrays are not supported; save a C-order array (np.ascontiguousarray)"
                .to_string(),
        );
    }
    Ok(Header {
        dtype: Dtype::parse(&fields.descr)?,
        shape: fields.shape,
        data_offset: 8 + len_field + header_len,
    })
}

/// The three keys a `.npy` header dictionary must have.
struct HeaderFields {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the Python dict literal of a `.npy` header, e.g.
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3), }`. Only the literal forms
/// numpy writes are accepted: quoted strings, `True`/`False`, and tuples of integers.
struct HeaderParser<'a> {
    rest: &'a str,
}

enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

impl<'a> HeaderParser<'a> {
    fn new(text: &'a str) -> Self {
        HeaderParser { rest: text }
    }

    fn dict(mut self) -> std::result::Result<HeaderFields, String> {
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        self.expect('{')?;
        while !self.eat('}') {
            let key = self.string()?;
            self.expect(':')?;
            let value = self.value()?;
            let duplicate = match (key.as_str(), value) {
                ("descr", Value::Str(s)) => descr.replace(s).is_some(),
                ("fortran_order", Value::Bool(b)) => fortran_order.replace(b).is_some(),
                ("shape", Value::Tuple(t)) => shape.replace(t).is_some(),
                ("descr" | "fortran_order" | "shape", _) => {
                    return Err(format!("header key '{key}' has a value of the wrong kind"))
                }
                _ => return Err(format!("unexpected header key '{key}'")),
            };
            if duplicate {
                return Err(format!("header key '{key}' appears twice"));
            }
            if !self.eat(',') {
                self.expect('}')?;
                break;
            }
        }
        if !self.rest.trim().is_empty() {
            return Err("trailing characters after the header dictionary".to_string());
        }
        let missing = |k: &str| format!("header lacks the '{k}' key");
        Ok(HeaderFields {
            descr: descr.ok_or_else(|| missing("descr"))?,
            fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
            shape: shape.ok_or_else(|| missing("shape"))?,
        })
    }

    fn value(&mut self) -> std::result::Result<Value, String> {
        self.skip_space();
        if self.rest.starts_with(['\'', '"']) {
            Ok(Value::Str(self.string()?))
        } else if self.eat_word("True") {
            Ok(Value::Bool(true))
        } else if self.eat_word("False") {
            Ok(Value::Bool(false))
        } else if self.eat('(') {
            let mut dims = Vec::new();
            while !self.eat(')') {
                dims.push(self.dimension()?);
                if !self.eat(',') {
                    self.expect(')')?;
                    break;
                }
            }
            Ok(Value::Tuple(dims))
        } else {
            Err(format!("unexpected header value near '{}'", self.preview()))
        }
    }

    fn dimension(&mut self) -> std::result::Result<usize, String> {
        self.skip_space();
        let digits = self.rest.len()
            - self
                .rest
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .len();
        if digits == 0 {
            return Err(format!("expected a dimension near '{}'", self.preview()));
        }
        let (number, rest) = self.rest.split_at(digits);
        // Files written by Python 2 spell long integers with an L suffix.
        self.rest = rest.strip_prefix('L').unwrap_or(rest);
        number
            .parse()
            .map_err(|_| format!("dimension {number} is too large"))
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        self.skip_space();
        let quote = match self.rest.chars().next() {
            Some(q @ ('\'' | '"')) => q,
            _ => {
                return Err(format!(
                    "expected a quoted string near '{}'",
                    self.preview()
                ))
            }
        };
        let body = &self.rest[1..];
        let end = body
            .find(quote)
            .ok_or_else(|| "unterminated string in header".to_string())?;
        let s = &body[..end];
        if s.contains('\\') {
            return Err("escaped characters in header strings are not supported".to_string());
        }
        self.rest = &body[end + 1..];
        Ok(s.to_string())
    }

    fn expect(&mut self, c: char) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!(
                "expected '{c}' in header near '{}'",
                self.preview()
            ))
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        match self.rest.strip_prefix(word) {
            Some(rest) if !rest.starts_with(|c: char| c.is_ascii_alphanumeric()) => {
                self.rest = rest;
                true
            }
            _ => false,
        }
    }

    fn skip_space(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn preview(&self) -> String {
        self.rest.chars().take(20).collect()
    }
}

/// Magic, version, length and the padded dict text for a C-order `<f4` array.
fn encode_header(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    let (version, len_field) = if dict.len() + 1 + 10 <= u16::MAX as usize {
        (1u8, 2)
    } else {
        (2u8, 4)
    };
    let unpadded = MAGIC.len() + 2 + len_field + dict.len() + 1;
    let padding = (ALIGNMENT - unpadded % ALIGNMENT) % ALIGNMENT;
    let header_len = dict.len() + padding + 1;
    let mut out = Vec::with_capacity(unpadded + padding);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    out.extend_from_slice(&(header_len as u32).to_le_bytes()[..len_field]);
    out.extend_from_slice(dict.as_bytes());
    out.resize(out.len() + padding, b' ');
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch file removed when the test ends.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn with_bytes(name: &str, bytes: &[u8]) -> TempFile {
            let file = TempFile::named(name);
            std::fs::write(&file.0, bytes).unwrap();
            file
        }
        fn named(name: &str) -> TempFile {
            let path =
                std::env::temp_dir().join(format!("dconv-npy-{}-{name}.npy", std::process::id()));
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A .npy file with the given version, dict text and data bytes (header padded as numpy
    /// pads it).
    fn npy_bytes(major: u8, dict: &str, data: &[u8]) -> Vec<u8> {
        let len_field = if major == 1 { 2 } else { 4 };
        let unpadded = 8 + len_field + dict.len() + 1;
        let padding = (64 - unpadded % 64) % 64;
        let header_len = dict.len() + padding + 1;
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[major, 0]);
        out.extend_from_slice(&(header_len as u32).to_le_bytes()[..len_field]);
        out.extend_from_slice(dict.as_bytes());
        out.resize(out.len() + padding, b' ');
        out.push(b'\n');
        out.extend_from_slice(data);
        out
    }

    fn read_bytes(name: &str, bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>)> {
        let file = TempFile::with_bytes(name, bytes);
        read_npy(&file.0)
    }

    fn error_text(name: &str, bytes: &[u8]) -> String {
        match read_bytes(name, bytes) {
            Err(e @ Error::Input { .. }) => e.to_string(),
            other => panic!("expected an input error, got {other:?}"),
        }
    }

    #[test]
    fn round_trips_through_write_and_read() {
        for shape in [vec![], vec![0], vec![5], vec![2, 3, 4], vec![1, 1, 1, 1, 7]] {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 1.0).collect();
            let file = TempFile::named(&format!("roundtrip{}", shape.len()));
            write_npy(&file.0, &shape, &data).unwrap();
            let bytes = std::fs::read(&file.0).unwrap();
            assert_eq!((bytes.len() - n * 4) % 64, 0, "data starts 64-aligned");
            assert_eq!(read_npy(&file.0).unwrap(), (shape, data));
        }
    }

    #[test]
    fn writes_the_header_numpy_writes() {
        let file = TempFile::named("header");
        write_npy(&file.0, &[2, 3], &[0.0; 6]).unwrap();
        let bytes = std::fs::read(&file.0).unwrap();
        let expected = npy_bytes(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
            &[0; 24],
        );
        assert_eq!(bytes, expected);
    }

    #[test]
    fn write_refuses_data_that_does_not_match_the_shape() {
        let file = TempFile::named("mismatch");
        let err = write_npy(&file.0, &[2, 3], &[0.0; 5]).unwrap_err();
        assert!(matches!(
            err,
            Error::BufferLength {
                expected: 6,
                actual: 5,
                ..
            }
        ));
    }

    #[test]
    fn reads_versions_two_and_three() {
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        for major in [2, 3] {
            let got = read_bytes(&format!("v{major}"), &npy_bytes(major, dict, &data)).unwrap();
            assert_eq!(got, (vec![2], vec![1.5, -2.0]));
        }
    }

    #[test]
    fn converts_other_element_types_to_f32() {
        let cases: Vec<(&str, Vec<u8>, Vec<f32>)> = vec![
            (
                "<f8",
                [0.5f64, -3.0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                vec![0.5, -3.0],
            ),
            // 1.0, -2.0, smallest subnormal, infinity in half precision.
            (
                "<f2",
                [0x3c00u16, 0xc000, 0x0001, 0x7c00]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                vec![1.0, -2.0, 2f32.powi(-24), f32::INFINITY],
            ),
            (
                "<i8",
                [-7i64, 1 << 40]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                vec![-7.0, (1u64 << 40) as f32],
            ),
            (
                "<i4",
                [-7i32, 9].iter().flat_map(|v| v.to_le_bytes()).collect(),
                vec![-7.0, 9.0],
            ),
            ("|u1", vec![0, 255], vec![0.0, 255.0]),
        ];
        for (descr, data, expected) in cases {
            let n = expected.len();
            let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({n},), }}");
            let got = read_bytes("types", &npy_bytes(1, &dict, &data)).unwrap();
            assert_eq!(got, (vec![n], expected), "{descr}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
    }

    #[test]
    fn accepts_the_header_spellings_of_older_writers() {
        let dict = "{\"shape\": (2L, 1L), \"fortran_order\": False, \"descr\": \"<f4\"}";
        let data = [0u8; 8];
        assert_eq!(
            read_bytes("old", &npy_bytes(1, dict, &data)).unwrap().0,
            vec![2, 1]
        );
    }

    #[test]
    fn refuses_fortran_order_and_big_endian_with_a_reason() {
        let fortran = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }";
        assert!(error_text("fortran", &npy_bytes(1, fortran, &[0; 16])).contains("Fortran-order"));
        let big = "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }";
        assert!(error_text("big", &npy_bytes(1, big, &[0; 8])).contains("big-endian"));
        let complex = "{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }";
        assert!(error_text("complex", &npy_bytes(1, complex, &[0; 16])).contains("'<c8'"));
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        let data = [0u8; 8];
        let dicts = [
            "",
            "{",
            "}",
            "{'descr': '<f4', 'fortran_order': False}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}",
            "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}",
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}",
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, x)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} trailing",
            "{'descr: '<f4', 'fortran_order': False, 'shape': (2,)}",
            "{'descr': '<f4', 'fortran_order': Falsey, 'shape': (2,)}",
            "{'descr': '<f\\4', 'fortran_order': False, 'shape': (2,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}",
            "{'descr': '', 'fortran_order': False, 'shape': (2,)}",
            "{'descr': 'éf4', 'fortran_order': False, 'shape': (2,)}",
            "{'descr': 'f4', 'fortran_order': False, 'shape': (2,)}",
            "{'é': '<f4', 'fortran_order': False, 'shape': (2,)}",
        ];
        for dict in dicts {
            error_text("malformed", &npy_bytes(1, dict, &data));
        }
        assert!(error_text("magic", b"PK\x03\x04 not numpy").contains("magic"));
        assert!(error_text("short", b"\x93NUM").contains("too short"));
        assert!(error_text("version", b"\x93NUMPY\x04\x00\x10\x00").contains("version 4.0"));
        assert!(error_text("nolen", b"\x93NUMPY\x02\x00\x10").contains("header length"));
        let mut huge_header = MAGIC.to_vec();
        huge_header.extend_from_slice(&[2, 0, 0xff, 0xff, 0xff, 0x7f]);
        assert!(error_text("hugeheader", &huge_header).contains("exceeds the limit"));
        let mut cut_header = npy_bytes(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
            &[],
        );
        cut_header.truncate(30);
        assert!(error_text("cutheader", &cut_header).contains("truncated header"));
        let mut not_utf8 = npy_bytes(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
            &data,
        );
        not_utf8[12] = 0xff;
        assert!(error_text("utf8", &not_utf8).contains("not text"));
    }

    #[test]
    fn data_length_must_match_the_shape() {
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }";
        let short = error_text("truncated", &npy_bytes(1, dict, &[0; 11]));
        assert!(
            short.contains("needs 12 data bytes, the file has 11"),
            "{short}"
        );
        let long = error_text("long", &npy_bytes(1, dict, &[0; 16]));
        assert!(long.contains("the file has 16"), "{long}");
    }

    #[test]
    fn huge_shapes_are_refused_before_allocating() {
        let data = [0u8; 16];
        for shape in [
            "(4611686018427387904, 4)",
            "(1000000, 1000000, 1000000)",
            "(1 << 3,)",
        ] {
            let dict = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
            error_text("huge", &npy_bytes(1, &dict, &data));
        }
        // Fits in memory arithmetic but not in the file: refused by length, not allocated.
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 1000), }";
        assert!(error_text("big", &npy_bytes(1, dict, &data)).contains("the file has 16"));
    }

    proptest::proptest! {
        /// Any corruption of a valid header is parsed to a header or refused, never a panic.
        #[test]
        fn corrupted_headers_never_panic(
            edits in proptest::collection::vec((0usize..128, proptest::num::u8::ANY), 1..6),
            cut in 0usize..140,
        ) {
            let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }";
            let mut bytes = npy_bytes(1, dict, &[0; 48]);
            for (at, byte) in edits {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            bytes.truncate(cut.max(1));
            if let Ok(header) = read_header(&mut bytes.as_slice()) {
                let _ = element_bytes(&header);
            }
        }
    }

    #[test]
    fn a_missing_file_names_itself() {
        let err = read_npy(Path::new("/nonexistent/x.npy")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/x.npy: cannot open"),
            "{err}"
        );
    }
}
