//! Photographs (PNG, JPEG) turned into the float tensor a CNN takes as input.
//!
//! Preprocessing changes a classifier's logits, so what is done here is exact and fixed, and
//! `scripts/compare-ort` repeats it bit for bit in numpy:
//!
//! 1. Decode, then convert to 8-bit RGB: alpha is dropped (not composited), grey is copied to
//!    all three channels, 16-bit samples are rounded to 8 bits.
//! 2. Resize to `height` x `width` by **bilinear interpolation with half-pixel centres and no
//!    antialiasing** (the sampling of OpenCV's `INTER_LINEAR` and of PyTorch's
//!    `interpolate(mode="bilinear", align_corners=False)`): output pixel `(oy, ox)` samples the
//!    source at `sy = (oy + 0.5) * in_h / out_h - 0.5` (likewise `sx`), clamped to
//!    `[0, in_h - 1]`; with `y0 = floor(sy)`, `y1 = min(y0 + 1, in_h - 1)`, `fy = sy - y0`,
//!    `top = p[y0][x0] + (p[y0][x1] - p[y0][x0]) * fx`, `bottom` likewise on row `y1`, and
//!    `value = top + (bottom - top) * fy`. All of it in `f64`. Same-size input is copied
//!    unchanged.
//! 3. Normalize: `(value * scale - mean[c]) / std[c]` in `f64` (from the `f32` parameters),
//!    then rounded once to `f32`.
//!
//! Batch size 1; channels in RGB order; layout NCHW `[1, 3, H, W]` or NHWC `[1, H, W, 3]`.

use crate::error::{Error, Result};
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::str::FromStr;

/// Largest width or height decoded or produced; 16384 x 16384 = 2^28 pixels at most.
pub const MAX_SIDE: u32 = 16_384;
/// Most memory the decoder may take: an 8-bit RGBA image of the largest size.
const MAX_DECODE_BYTES: u64 = 4 << 28;

/// Where the channel dimension goes in the tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[1, 3, H, W]`: PyTorch-exported models.
    Nchw,
    /// `[1, H, W, 3]`: TensorFlow/Keras-exported models.
    Nhwc,
}

impl FromStr for Layout {
    type Err = Error;

    fn from_str(s: &str) -> Result<Layout> {
        match s.to_ascii_lowercase().as_str() {
            "nchw" => Ok(Layout::Nchw),
            "nhwc" => Ok(Layout::Nhwc),
            _ => Err(Error::UnknownName {
                kind: "layout",
                name: s.to_string(),
                expected: "nchw, nhwc".to_string(),
            }),
        }
    }
}

/// Loads the PNG or JPEG at `path` as a `[1, 3, height, width]` (NCHW) or
/// `[1, height, width, 3]` (NHWC) tensor of `(pixel * scale - mean) / std` per RGB channel,
/// after the bilinear resize described in the module documentation. `mean` defaults to 0 and
/// `std` to 1. Returns the shape and the elements in C order.
pub fn load_image(
    path: &Path,
    height: usize,
    width: usize,
    layout: Layout,
    scale: f32,
    mean: Option<[f32; 3]>,
    std: Option<[f32; 3]>,
) -> Result<(Vec<usize>, Vec<f32>)> {
    check_parameters(height, width, scale, mean, std)?;
    let image = decode_rgb8(path)?;
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let pixels = image.into_raw();
    let mean = mean.unwrap_or([0.0; 3]).map(f64::from);
    let std = std.unwrap_or([1.0; 3]).map(f64::from);
    let scale = f64::from(scale);

    let rows = sample_positions(in_h, height);
    let cols = sample_positions(in_w, width);
    let mut data = vec![0f32; 3 * height * width];
    for (oy, row) in rows.iter().enumerate() {
        for (ox, col) in cols.iter().enumerate() {
            for c in 0..3 {
                let at = |y: usize, x: usize| f64::from(pixels[(y * in_w + x) * 3 + c]);
                let top = at(row.lo, col.lo) + (at(row.lo, col.hi) - at(row.lo, col.lo)) * col.frac;
                let bottom =
                    at(row.hi, col.lo) + (at(row.hi, col.hi) - at(row.hi, col.lo)) * col.frac;
                let value = top + (bottom - top) * row.frac;
                let index = match layout {
                    Layout::Nchw => (c * height + oy) * width + ox,
                    Layout::Nhwc => (oy * width + ox) * 3 + c,
                };
                data[index] = ((value * scale - mean[c]) / std[c]) as f32;
            }
        }
    }
    let shape = match layout {
        Layout::Nchw => vec![1, 3, height, width],
        Layout::Nhwc => vec![1, height, width, 3],
    };
    Ok((shape, data))
}

fn check_parameters(
    height: usize,
    width: usize,
    scale: f32,
    mean: Option<[f32; 3]>,
    std: Option<[f32; 3]>,
) -> Result<()> {
    let side_ok = |n: usize| (1..=MAX_SIDE as usize).contains(&n);
    if !side_ok(height) || !side_ok(width) {
        return Err(Error::InvalidArgument(format!(
            "image size {height}x{width}: each side must be 1 to {MAX_SIDE}"
        )));
    }
    if !scale.is_finite() {
        return Err(Error::InvalidArgument(format!(
            "scale {scale} is not finite"
        )));
    }
    if mean.is_some_and(|m| m.iter().any(|v| !v.is_finite())) {
        return Err(Error::InvalidArgument(format!(
            "mean {mean:?} is not finite"
        )));
    }
    if std.is_some_and(|s| s.iter().any(|v| !v.is_finite() || *v == 0.0)) {
        return Err(Error::InvalidArgument(format!(
            "std {std:?} must be finite and non-zero"
        )));
    }
    Ok(())
}

/// Decodes the file as PNG or JPEG (told apart by content, not name), refusing images over
/// [`MAX_SIDE`] per side from their header, before the pixel buffer is allocated.
fn decode_rgb8(path: &Path) -> Result<image::RgbImage> {
    let bad = |msg: String| Error::Input {
        path: path.to_path_buf(),
        msg,
    };
    let file = File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let mut reader = ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    if reader.format().is_none() {
        return Err(bad("not a PNG or JPEG image".to_string()));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let decoder = reader
        .into_decoder()
        .map_err(|e| bad(format!("cannot decode: {e}")))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(bad(format!("image has no pixels ({w}x{h})")));
    }
    let image =
        DynamicImage::from_decoder(decoder).map_err(|e| bad(format!("cannot decode: {e}")))?;
    Ok(image.to_rgb8())
}

/// Where one output row (or column) samples the source: between `lo` and `hi`, `frac` of
/// the way to `hi`.
#[derive(Debug, PartialEq)]
struct Sample {
    lo: usize,
    hi: usize,
    frac: f64,
}

/// Half-pixel-centre sample positions of `out_len` outputs over `in_len` inputs.
fn sample_positions(in_len: usize, out_len: usize) -> Vec<Sample> {
    let ratio = in_len as f64 / out_len as f64;
    let last = (in_len - 1) as f64;
    (0..out_len)
        .map(|o| {
            let s = ((o as f64 + 0.5) * ratio - 0.5).clamp(0.0, last);
            let lo = s.floor();
            Sample {
                lo: lo as usize,
                hi: (lo as usize + 1).min(in_len - 1),
                frac: s - lo,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Rgb, RgbImage, Rgba, RgbaImage};

    /// A scratch file removed when the test ends.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn named(name: &str) -> TempFile {
            TempFile(
                std::env::temp_dir().join(format!("dconv-image-{}-{name}", std::process::id())),
            )
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A w x h PNG whose pixel (x, y) is (10x + y, 100 + y, 200 - x).
    fn gradient_png(name: &str, w: u32, h: u32) -> TempFile {
        let file = TempFile::named(&format!("{name}.png"));
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([(10 * x + y) as u8, (100 + y) as u8, (200 - x) as u8])
        })
        .save(&file.0)
        .unwrap();
        file
    }

    #[test]
    fn same_size_copies_pixels_in_both_layouts() {
        let png = gradient_png("same", 3, 2);
        let (shape, nhwc) = load_image(&png.0, 2, 3, Layout::Nhwc, 1.0, None, None).unwrap();
        assert_eq!(shape, vec![1, 2, 3, 3]);
        assert_eq!(&nhwc[..6], &[0.0, 100.0, 200.0, 10.0, 100.0, 199.0]);
        assert_eq!(&nhwc[15..], &[21.0, 101.0, 198.0]);
        let (shape, nchw) = load_image(&png.0, 2, 3, Layout::Nchw, 1.0, None, None).unwrap();
        assert_eq!(shape, vec![1, 3, 2, 3]);
        for y in 0..2 {
            for x in 0..3 {
                for c in 0..3 {
                    assert_eq!(nchw[(c * 2 + y) * 3 + x], nhwc[(y * 3 + x) * 3 + c]);
                }
            }
        }
    }

    #[test]
    fn normalizes_with_scale_mean_and_std() {
        let png = gradient_png("norm", 1, 1);
        let (_, data) = load_image(
            &png.0,
            1,
            1,
            Layout::Nhwc,
            0.5,
            Some([1.0, 2.0, 3.0]),
            Some([2.0, 4.0, 0.5]),
        )
        .unwrap();
        assert_eq!(
            data,
            vec![(0.0 - 1.0) / 2.0, (50.0 - 2.0) / 4.0, (100.0 - 3.0) / 0.5]
        );
    }

    #[test]
    fn downscaling_by_two_averages_each_two_by_two_block() {
        let png = gradient_png("down", 4, 4);
        let (_, small) = load_image(&png.0, 2, 2, Layout::Nhwc, 1.0, None, None).unwrap();
        let pixel = |x: f32, y: f32| [10.0 * x + y, 100.0 + y, 200.0 - x];
        for (oy, ox) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            // Centre of block (2ox..2ox+1, 2oy..2oy+1); the gradient is linear, so the
            // average equals the value at the centre.
            let expected = pixel(2.0 * ox as f32 + 0.5, 2.0 * oy as f32 + 0.5);
            assert_eq!(&small[(oy * 2 + ox) * 3..][..3], &expected);
        }
    }

    #[test]
    fn upscaling_clamps_at_the_edges() {
        let png = gradient_png("up", 2, 1);
        let (_, wide) = load_image(&png.0, 1, 4, Layout::Nchw, 1.0, None, None).unwrap();
        // Red row is 0, 10: samples at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
        assert_eq!(&wide[..4], &[0.0, 2.5, 7.5, 10.0]);
    }

    #[test]
    fn sample_positions_follow_half_pixel_centres() {
        let s = sample_positions(512, 240);
        let first = (0.5 * 512.0 / 240.0) - 0.5;
        assert_eq!(
            s[0],
            Sample {
                lo: 0,
                hi: 1,
                frac: first
            }
        );
        assert_eq!(s[239].hi, 511);
        assert!(sample_positions(1, 3).iter().all(|p| *p
            == Sample {
                lo: 0,
                hi: 0,
                frac: 0.0
            }));
    }

    #[test]
    fn grey_and_alpha_images_become_rgb() {
        let grey = TempFile::named("grey.png");
        GrayImage::from_pixel(1, 1, image::Luma([7]))
            .save(&grey.0)
            .unwrap();
        let (_, data) = load_image(&grey.0, 1, 1, Layout::Nhwc, 1.0, None, None).unwrap();
        assert_eq!(data, vec![7.0, 7.0, 7.0]);
        let rgba = TempFile::named("rgba.png");
        RgbaImage::from_pixel(1, 1, Rgba([1, 2, 3, 0]))
            .save(&rgba.0)
            .unwrap();
        let (_, data) = load_image(&rgba.0, 1, 1, Layout::Nhwc, 1.0, None, None).unwrap();
        assert_eq!(data, vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn reads_jpeg() {
        let jpeg = TempFile::named("flat.jpg");
        RgbImage::from_pixel(16, 16, Rgb([200, 100, 50]))
            .save(&jpeg.0)
            .unwrap();
        let (shape, data) = load_image(&jpeg.0, 8, 8, Layout::Nhwc, 1.0, None, None).unwrap();
        assert_eq!(shape, vec![1, 8, 8, 3]);
        // Lossy, but a flat colour survives within a few levels.
        for px in data.chunks(3) {
            for (got, want) in px.iter().zip([200.0, 100.0, 50.0]) {
                assert!((got - want).abs() <= 4.0, "{got} vs {want}");
            }
        }
    }

    #[test]
    fn undecodable_and_missing_files_are_input_errors() {
        let junk = TempFile::named("junk.png");
        std::fs::write(&junk.0, b"this is not an image").unwrap();
        let err = load_image(&junk.0, 2, 2, Layout::Nhwc, 1.0, None, None).unwrap_err();
        assert!(err.to_string().contains("not a PNG or JPEG"), "{err}");

        let png = gradient_png("cut", 8, 8);
        let bytes = std::fs::read(&png.0).unwrap();
        std::fs::write(&png.0, &bytes[..bytes.len() / 2]).unwrap();
        let err = load_image(&png.0, 2, 2, Layout::Nhwc, 1.0, None, None).unwrap_err();
        assert!(matches!(err, Error::Input { .. }), "{err}");

        let err = load_image(
            Path::new("/nonexistent.png"),
            2,
            2,
            Layout::Nhwc,
            1.0,
            None,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("cannot open"), "{err}");
    }

    /// A PNG whose header claims `w` x `h` pixels and whose data is one empty IDAT chunk.
    fn png_claiming(w: u32, h: u32) -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &b in bytes {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 {
                        (crc >> 1) ^ 0xedb8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let start = out.len();
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            let crc = crc32(&out[start..]);
            out.extend_from_slice(&crc.to_be_bytes());
        }
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut png, b"IHDR", &ihdr);
        chunk(&mut png, b"IDAT", &[]);
        chunk(&mut png, b"IEND", &[]);
        png
    }

    #[test]
    fn huge_images_are_refused_from_their_header() {
        for (w, h) in [
            (MAX_SIDE + 1, 1),
            (1, 100_000),
            (u32::MAX >> 1, u32::MAX >> 1),
        ] {
            let file = TempFile::named("huge.png");
            std::fs::write(&file.0, png_claiming(w, h)).unwrap();
            let err = load_image(&file.0, 2, 2, Layout::Nhwc, 1.0, None, None).unwrap_err();
            assert!(matches!(err, Error::Input { .. }), "{err}");
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        let png = gradient_png("params", 2, 2);
        let load = |h, w, scale, std| load_image(&png.0, h, w, Layout::Nhwc, scale, None, std);
        assert!(matches!(
            load(0, 2, 1.0, None),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            load(2, 20_000, 1.0, None),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            load(2, 2, f32::NAN, None),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            load(2, 2, 1.0, Some([1.0, 0.0, 1.0])),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!("NHWC".parse::<Layout>().unwrap(), Layout::Nhwc);
        assert!("hwc".parse::<Layout>().is_err());
    }
}
