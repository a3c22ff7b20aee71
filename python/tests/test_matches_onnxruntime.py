"""dconv.InferenceSession(...).run(None, feed) equals onnxruntime's run(None, feed) on every
model of the Rust test suite: ONNX's pytorch-converted operator tests (under every policy),
its nine light architectures and the real VGG-16 family on the photographs. The few opset-6
operator tests that ONNX Runtime no longer runs are compared with ONNX's expected outputs."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import dconv
from conftest import DATA, assert_agrees, photo_input, required, vgg16

POLICIES = ["auto", "reference", "dense", "lowered-csr", "im2csr", "im2csoa", "sparse-weight"]
# The operator tests of crates/dconv/tests/onnx_conformance.rs (PYTORCH_TESTS).
PYTORCH_PREFIXES = ["test_Conv1d", "test_Conv2d", "test_MaxPool1d", "test_MaxPool2d",
                    "test_AvgPool1d", "test_AvgPool2d", "test_BatchNorm2d", "test_LeakyReLU",
                    "test_PReLU_2d", "test_Linear"]
PYTORCH_EXACT = ["test_ReLU", "test_Softmax", "test_Sigmoid", "test_ZeroPad2d"]
LIGHT = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
         "shufflenet", "squeezenet", "vgg19", "zfnet512"]


def pytorch_tests():
    folder = required(DATA / "pytorch-converted", "run scripts/fetch-testdata")
    names = sorted(p.name for p in folder.iterdir()
                   if p.name in PYTORCH_EXACT or p.name.startswith(tuple(PYTORCH_PREFIXES)))
    assert len(names) > 30, f"only {len(names)} operator tests in {folder}"
    return names


def ort_outputs(model, feed):
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feed)


def dconv_outputs(model, feed, policy="auto"):
    options = dconv.SessionOptions()
    options.policy = policy
    return dconv.InferenceSession(str(model), options).run(None, feed)


def check(model, feed, policy="auto", expected=None):
    expected = expected if expected is not None else ort_outputs(model, feed)
    actual = dconv_outputs(model, feed, policy)
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_agrees(a, e, f"{model.name} output {i} under {policy}")


@pytest.mark.parametrize("name", pytorch_tests())
def test_operator_tests_under_every_policy(name):
    folder = DATA / "pytorch-converted" / name
    model = folder / "model.onnx"
    inputs = [i.name for i in onnx.load(str(model)).graph.input]
    data = folder / "test_data_set_0"
    feed = {inputs[0]: numpy_helper.to_array(onnx.load_tensor(str(data / "input_0.pb")))}
    try:
        expected = ort_outputs(model, feed)
    except ort.capi.onnxruntime_pybind11_state.NotImplemented:
        expected = [numpy_helper.to_array(onnx.load_tensor(str(data / "output_0.pb")))]
    for policy in POLICIES:
        check(model, feed, policy, expected)


@pytest.mark.parametrize("name", LIGHT)
def test_light_models(name):
    model = required(DATA / "light" / f"light_{name}.onnx", "run scripts/fetch-testdata")
    session = dconv.InferenceSession(str(model))
    first = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in first.shape]
    n = int(np.prod(shape))
    # ONNX's backend runner's input for the light models: arange(n) / n.
    feed = {first.name: (np.arange(n, dtype=np.float32) / n).reshape(shape)}
    expected = ort_outputs(model, feed)
    actual = session.run(None, feed)
    for a, e in zip(actual, expected):
        assert_agrees(a, e, name)


@pytest.mark.parametrize("model", ["vgg16", "vgg16-deep-compression", "vgg16-pruned90"])
@pytest.mark.parametrize("photo", ["astronaut", "chelsea", "coffee"])
def test_vgg16_family_on_photographs(model, photo):
    check(vgg16(model), {"input": photo_input(photo)})


def test_inputs_of_other_dtypes_and_layouts_are_converted():
    model = vgg16("vgg16-pruned90")
    x = photo_input("coffee")
    session = dconv.InferenceSession(str(model))
    expected = session.run(None, {"input": x})[0]
    as_f64 = session.run(None, {"input": x.astype(np.float64)})[0]
    fortran = session.run(None, {"input": np.asfortranarray(x)})[0]
    strided = session.run(None, {"input": np.repeat(x, 2, axis=0)[::2]})[0]
    for other in (as_f64, fortran, strided):
        np.testing.assert_array_equal(other, expected)
