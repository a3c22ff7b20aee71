"""Photographs to model inputs, bit for bit as dconv's Rust loader (dconv::io::image) does it.

Decode to 8-bit RGB (alpha dropped, grey copied to three channels), then bilinear resize with
half-pixel centres and no antialiasing, sample positions clamped to the image, all in float64:
    s = clip((o + 0.5) * in_len / out_len - 0.5, 0, in_len - 1), lo = floor(s),
    hi = min(lo + 1, in_len - 1), f = s - lo,
    top = p[y0,x0] + (p[y0,x1] - p[y0,x0]) * fx (bottom likewise), v = top + (bottom - top) * fy,
then (v * scale - mean) / std in float64 from float32 parameters, rounded once to float32.
The same float64 operations in the same order give the same bits as the Rust code. PNG
decoding is lossless, so 8-bit PNGs agree exactly; JPEG decoders (Pillow's libjpeg vs the
Rust zune-jpeg) may differ by a level, so feed dconv's own .npy where that matters.
"""
import numpy as np
from PIL import Image

# As in the Rust loader: 16384 x 16384 at most.
Image.MAX_IMAGE_PIXELS = 1 << 28


def _sample_positions(in_len: int, out_len: int):
    s = (np.arange(out_len, dtype=np.float64) + 0.5) * (in_len / out_len) - 0.5
    s = np.clip(s, 0.0, float(in_len - 1))
    lo = np.floor(s)
    frac = s - lo
    lo = lo.astype(np.intp)
    hi = np.minimum(lo + 1, in_len - 1)
    return lo, hi, frac


def load_image(path, height: int, width: int, layout: str, scale: float,
               mean=None, std=None, box=None) -> np.ndarray:
    """A float32 [1, 3, H, W] (layout 'nchw') or [1, H, W, 3] ('nhwc') tensor; of the
    photograph's pixels box = (left, top, right, bottom) only when given."""
    with Image.open(path) as image:
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            raise ValueError(f"{path}: {image.mode} (16-bit or float) images are not supported "
                             "here; let dconv make the input .npy")
        rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    if box is not None:
        left, top, right, bottom = box
        if not (0 <= left < right <= rgb.shape[1] and 0 <= top < bottom <= rgb.shape[0]):
            raise ValueError(f"{path}: box {box} is not inside its "
                             f"{rgb.shape[1]}x{rgb.shape[0]} pixels")
        rgb = rgb[top:bottom, left:right]
    y0, y1, fy = _sample_positions(rgb.shape[0], height)
    x0, x1, fx = _sample_positions(rgb.shape[1], width)
    fx = fx[None, :, None]
    top = rgb[y0][:, x0] + (rgb[y0][:, x1] - rgb[y0][:, x0]) * fx
    bottom = rgb[y1][:, x0] + (rgb[y1][:, x1] - rgb[y1][:, x0]) * fx
    value = top + (bottom - top) * fy[:, None, None]
    as_f64 = lambda v, default: np.asarray(v if v is not None else default, np.float32).astype(np.float64)
    scale = float(np.float32(scale))
    tensor = ((value * scale - as_f64(mean, [0, 0, 0])) / as_f64(std, [1, 1, 1])).astype(np.float32)
    if layout == "nchw":
        tensor = tensor.transpose(2, 0, 1)
    elif layout != "nhwc":
        raise ValueError(f"unknown layout '{layout}' (expected nchw or nhwc)")
    return np.ascontiguousarray(tensor[None])
