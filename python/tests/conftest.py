"""Shared paths and helpers of the Python package's tests (run by scripts/test-python, in the
repository's .venv, after scripts/test has fetched the test data)."""
import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

import dconv

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "onnx-1.23.2"
MODELS = REPO / "models"
IMAGES = REPO.parent / "shared" / "images"


def required(path: Path, how: str) -> Path:
    """`path`, failing the test (never skipping it) when the fetched data is missing."""
    if not path.exists():
        pytest.fail(f"{path} is missing: {how}", pytrace=False)
    return path


def vgg16(name: str = "vgg16") -> Path:
    """The real VGG-16 (scripts/fetch-models), its 90 %-pruned copy (scripts/make-test-models)
    or its copy pruned to Deep Compression's densities (made here, as `dconv demo` does)."""
    if name == "vgg16-deep-compression":
        return deep_compression_vgg16()
    return required(MODELS / f"{name}.onnx", "run scripts/fetch-models and scripts/make-test-models")


@functools.cache
def deep_compression_vgg16() -> Path:
    folder = tempfile.mkdtemp(prefix="dconv-tests-")
    atexit.register(shutil.rmtree, folder, True)
    out = Path(folder) / "vgg16-deep-compression.onnx"
    dconv.prune(vgg16(), out, sparsity="deep-compression-vgg16")
    return out


def photo_input(photo: str) -> np.ndarray:
    """dconv's own input tensor for a photograph (scripts/make-test-models)."""
    return np.load(required(MODELS / "photos" / f"{photo}.input.npy", "run scripts/make-test-models"))


def assert_agrees(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    """The tolerance of issue #19: |dconv - ORT| <= 1e-4 * max|ORT| + 1e-5, shapes equal."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    bound = 1e-4 * float(np.max(np.abs(expected), initial=0.0)) + 1e-5
    worst = float(np.max(np.abs(actual.astype(np.float64) - expected), initial=0.0))
    assert worst <= bound, f"{what}: max |dconv - ORT| = {worst:.3g} > {bound:.3g}"
