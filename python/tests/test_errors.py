"""Untrusted models and inputs raise dconv.InvalidArgument (a ValueError) with the CLI's
one-line message; nothing crashes the interpreter."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import dconv
from conftest import vgg16


def conv_model(**conv_attrs):
    """A 1x1x4x4 -> Conv 3x3 model, with `conv_attrs` on its Conv."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 3, 3], np.ones(18, np.float32))
    conv = helper.make_node("Conv", ["x", "w"], ["y"], **conv_attrs)
    graph = helper.make_graph(
        [conv], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def run(model_bytes, feed=None):
    session = dconv.InferenceSession(model_bytes)
    return session.run(None, feed or {"x": np.ones((1, 1, 4, 4), np.float32)})


def with_initializer(dims, data):
    model = conv_model()
    w = model.graph.initializer[0]
    del w.dims[:]
    w.dims.extend(dims)
    w.raw_data = data
    del w.float_data[:]
    return model


MALFORMED = {
    "not a model": b"this is not an ONNX model",
    "empty": b"",
    "truncated": conv_model().SerializeToString()[:40],
    "zero stride": conv_model(strides=[0, 0]).SerializeToString(),
    "negative padding": conv_model(pads=[-1, 0, 0, 0]).SerializeToString(),
    "kernel larger than input": conv_model(dilations=[5, 5]).SerializeToString(),
    "groups that do not divide": conv_model(group=3).SerializeToString(),
    "weights shorter than their shape": with_initializer([2, 1, 3, 3], b"\0" * 8).SerializeToString(),
    "a shape of 2^62 elements": with_initializer([1 << 31, 1 << 31, 1, 1], b"").SerializeToString(),
    "external data outside the folder": None,
    "an unknown operator": None,
    "a dangling input": None,
    "an unsupported opset": None,
}


def _external():
    model = conv_model()
    w = model.graph.initializer[0]
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../../etc/passwd")
    return model.SerializeToString()


def _unknown_op():
    model = conv_model()
    model.graph.node[0].op_type = "NoSuchOperator"
    return model.SerializeToString()


def _dangling():
    model = conv_model()
    model.graph.node[0].input[0] = "nowhere"
    return model.SerializeToString()


def _opset():
    model = conv_model()
    model.opset_import[0].version = 999
    return model.SerializeToString()


MALFORMED["external data outside the folder"] = _external()
MALFORMED["an unknown operator"] = _unknown_op()
MALFORMED["a dangling input"] = _dangling()
MALFORMED["an unsupported opset"] = _opset()


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_models_raise_invalid_argument(case):
    with pytest.raises(dconv.InvalidArgument) as error:
        run(MALFORMED[case])
    message = str(error.value)
    assert message and "\n" not in message, f"{case}: {message!r}"
    assert isinstance(error.value, ValueError)


def test_a_missing_file_names_it():
    with pytest.raises(dconv.InvalidArgument, match="no-such-model.onnx"):
        dconv.InferenceSession("no-such-model.onnx")


def test_a_path_of_another_type_is_refused():
    with pytest.raises(dconv.InvalidArgument, match="path"):
        dconv.InferenceSession(42)


@pytest.fixture(scope="module")
def session():
    return dconv.InferenceSession(conv_model().SerializeToString())


@pytest.mark.parametrize("feed, message", [
    ({"nope": np.ones((1, 1, 4, 4), np.float32)}, "no input 'nope'"),
    ({}, "input 'x' was not given"),
    ({"x": np.ones((1, 1, 5, 4), np.float32)}, r"shape \[1, 1, 5, 4\]"),
    ({"x": np.ones((1, 4, 4), np.float32)}, r"shape \[1, 4, 4\]"),
    ({"x": np.ones((1, 1, 4, 4), np.complex64)}, "complex64"),
    ({"x": np.array([["a"] * 4] * 4)}, "dtype"),
    ({"x": [[object()]]}, "dtype object"),
    ({1: np.ones((1, 1, 4, 4), np.float32)}, "input names"),
])
def test_bad_inputs_raise_invalid_argument(session, feed, message):
    with pytest.raises(dconv.InvalidArgument, match=message):
        session.run(None, feed)


def test_unknown_output_names_raise_invalid_argument(session):
    with pytest.raises(dconv.InvalidArgument, match="invalid output name 'z'"):
        session.run(["z"], {"x": np.ones((1, 1, 4, 4), np.float32)})


def test_outputs_come_in_the_order_asked_and_may_repeat(session):
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    (y,) = session.run(None, {"x": x})
    first, second = session.run(["y", "y"], {"x": x})
    np.testing.assert_array_equal(first, y)
    np.testing.assert_array_equal(second, y)
    assert first is not second


@pytest.mark.parametrize("attribute, value, message", [
    ("policy", "fastest", "unknown policy 'fastest'"),
    ("profile", "/no/such/profile.json", "profile.json"),
])
def test_bad_options_raise_invalid_argument(attribute, value, message):
    options = dconv.SessionOptions()
    setattr(options, attribute, value)
    with pytest.raises(dconv.InvalidArgument, match=message):
        dconv.InferenceSession(conv_model().SerializeToString(), options)


def test_a_memory_budget_too_small_is_refused_at_run():
    options = dconv.SessionOptions()
    options.max_memory = 1000
    session = dconv.InferenceSession(str(vgg16("vgg16-pruned90")), options)
    with pytest.raises(dconv.InvalidArgument, match="memory budget"):
        session.run(None, {"input": np.zeros((1, 240, 240, 3), np.float32)})
