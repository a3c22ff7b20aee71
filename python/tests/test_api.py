"""The ONNX Runtime API surface: what `import dconv as ort` code calls, and dconv's extras."""
import numpy as np
import onnxruntime as ort
import pytest

import dconv
from conftest import assert_agrees, photo_input, vgg16


def test_version_and_providers():
    assert dconv.__version__.count(".") == 2
    assert dconv.get_available_providers() == ["CPUExecutionProvider"]


def test_inputs_and_outputs_are_described_as_onnxruntime_does():
    path = str(vgg16())
    ours = dconv.InferenceSession(path, providers=["CPUExecutionProvider"])
    theirs = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for mine, other in [(ours.get_inputs(), theirs.get_inputs()),
                        (ours.get_outputs(), theirs.get_outputs())]:
        assert [(a.name, a.shape, a.type) for a in mine] == [(a.name, a.shape, a.type) for a in other]
    assert ours.get_providers() == ["CPUExecutionProvider"]
    assert "NodeArg(name='input'" in repr(ours.get_inputs()[0])


def test_a_model_loads_from_bytes_and_from_a_path_alike():
    path = vgg16("vgg16-pruned90")
    x = {"input": photo_input("chelsea")}
    from_path = dconv.InferenceSession(path).run(None, x)[0]
    from_bytes = dconv.InferenceSession(path.read_bytes()).run(None, x)[0]
    np.testing.assert_array_equal(from_path, from_bytes)


def test_session_options_reach_the_session():
    options = dconv.SessionOptions()
    assert (options.intra_op_num_threads, options.policy, options.max_memory) == (0, "auto", None)
    options.intra_op_num_threads = 2
    options.policy = "im2csr"
    options.max_memory = 1 << 31
    session = dconv.InferenceSession(str(vgg16("vgg16-pruned90")), sess_options=options)
    kept = session.get_session_options()
    assert (kept.intra_op_num_threads, kept.policy, kept.max_memory) == (2, "im2csr", 1 << 31)
    _, layers = session.run_with_stats(None, {"input": photo_input("coffee")})
    methods = {row["method"] for row in layers if row["op"] == "Conv"}
    assert methods == {"im2csr"}


def test_run_with_stats_rows_describe_every_step():
    session = dconv.InferenceSession(str(vgg16("vgg16-pruned90")))
    x = {"input": photo_input("coffee")}
    outputs, layers = session.run_with_stats(None, x)
    np.testing.assert_array_equal(outputs[0], session.run(None, x)[0])
    convs = [row for row in layers if row["op"] == "Conv"]
    assert len(convs) == 13
    assert set(layers[0]) == {"name", "op", "method", "input_sparsity", "weight_sparsity",
                              "macs", "time_ms"}
    # The pruned model's convolutions after the first have about 90 % zero weights, and
    # ReLU leaves zeros in the inputs of the convolutions after the first.
    assert all(0.85 < row["weight_sparsity"] < 0.95 for row in convs[1:])
    assert convs[0]["input_sparsity"] < 0.01
    assert all(row["input_sparsity"] > 0.01 for row in convs[1:])
    assert all(row["time_ms"] > 0 and row["macs"] > 0 for row in convs)
    assert all(row["method"] is None and row["weight_sparsity"] is None
               for row in layers if row["op"] != "Conv")


def test_prune_writes_a_model_both_engines_run(tmp_path):
    out = tmp_path / "pruned.onnx"
    rows = dconv.prune(vgg16(), out, sparsity=0.7, skip_first=True)
    assert len(rows) == 12 and all(abs(r["sparsity_after"] - 0.7) < 0.01 for r in rows)
    x = {"input": photo_input("astronaut")}
    expected = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, x)[0]
    assert_agrees(dconv.InferenceSession(out).run(None, x)[0], expected, "pruned")
    per_layer = dconv.prune(vgg16(), tmp_path / "one.onnx", sparsity={rows[0]["node"]: 0.5})
    assert [r["node"] for r in per_layer] == [rows[0]["node"]]
    profile = dconv.prune(vgg16(), tmp_path / "dc.onnx", sparsity="deep-compression-vgg16")
    assert len(profile) == 13


def test_block_pruning_zeros_whole_blocks_of_16_output_channels(tmp_path):
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "blocks.onnx"
    rows = dconv.prune(vgg16(), out, sparsity=0.9, block=16, skip_first=True)
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    for row in rows:
        w = weights[row["initializer"]]
        blocks = w.reshape(w.shape[0] // 16, 16, -1)  # VGG-16's filter counts divide by 16
        zero = np.all(blocks == 0, axis=1)
        assert abs(zero.mean() - 0.9) < 0.01, row["node"]
        # Every block is all zero or has no zero: none is zeroed in part.
        assert np.all(zero | np.all(blocks != 0, axis=1)), row["node"]
    x = {"input": photo_input("coffee")}
    expected = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, x)[0]
    assert_agrees(dconv.InferenceSession(out).run(None, x)[0], expected, "block-pruned")


@pytest.mark.parametrize("kwargs, message", [
    ({"sparsity": "lottery"}, "unknown pruning profile"),
    ({"sparsity": 1.5}, "sparsity"),
    ({"sparsity": 0.5, "block": 0}, "block"),
])
def test_prune_refuses_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(dconv.InvalidArgument, match=message):
        dconv.prune(vgg16(), tmp_path / "out.onnx", **kwargs)


def test_help_reads_well():
    doc = dconv.InferenceSession.__doc__
    assert "providers" in doc and "InvalidArgument" in doc
    assert "output_names" in dconv.InferenceSession.run.__doc__
    assert "policy" in dconv.SessionOptions.__doc__
