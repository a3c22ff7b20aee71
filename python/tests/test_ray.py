"""python/examples/ray_batch.py on a local Ray instance: the photographs classified through
Ray Data with one dconv session per actor give the results of single-process dconv and of
ONNX Runtime."""
import importlib.util
import json

import numpy as np
import onnxruntime as ort
import pytest
import ray

import dconv
from conftest import IMAGES, REPO, assert_agrees, required, vgg16

SIZE, LAYOUT, SCALE = (240, 240), "nhwc", 1 / 255


def example():
    path = REPO / "python" / "examples" / "ray_batch.py"
    spec = importlib.util.spec_from_file_location("ray_batch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    yield
    ray.shutdown()


def photographs():
    paths = sorted(p for p in required(IMAGES, "../shared is beside the repository").iterdir()
                   if p.suffix == ".png")
    assert len(paths) >= 3
    return paths


def test_the_pipeline_equals_single_process_dconv_and_onnxruntime(local_ray):
    ray_batch = example()
    model = vgg16("vgg16-deep-compression")
    paths = photographs()
    # Batches of 2 over 3 images: one actor sees a batch of 2, one a batch of 1.
    results = ray_batch.classify(model, paths, size=SIZE, layout=LAYOUT, scale=SCALE,
                                 concurrency=2, batch_size=2, top=4)
    assert [r["path"] for r in results] == [str(p) for p in paths]
    ours = dconv.InferenceSession(str(model))
    theirs = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for path, result in zip(paths, results):
        x = ray_batch.preprocess(path.read_bytes(), SIZE, LAYOUT, SCALE)[None]
        single = ours.run(None, {"input": x})[0][0]
        reference = theirs.run(None, {"input": x})[0][0]
        scores = np.array(result["scores"], np.float32)
        assert result["classes"] == [int(c) for c in np.argsort(-reference, kind="stable")]
        assert_agrees(scores, single[result["classes"]], f"{path.name} against dconv")
        assert_agrees(scores, reference[result["classes"]], f"{path.name} against ORT")


def test_the_command_writes_a_json_line_per_image(local_ray, tmp_path):
    out = tmp_path / "top.jsonl"
    example().main([str(vgg16()), str(IMAGES), "--size", "240x240", "--layout", "nhwc",
                    "--scale", str(SCALE), "--top", "1", "--batch-size", "1", "--output", str(out)])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["path"] for line in lines] == [str(p) for p in photographs()]
    assert all(len(line["classes"]) == 1 and 0 <= line["classes"][0] < 4 for line in lines)


@pytest.mark.parametrize("args, message", [
    (["--size", "240"], "expected HxW"),
    (["--size", "240x240", "--concurrency", "0"], "--concurrency must be at least 1"),
])
def test_the_command_refuses_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as exit:
        example().main([str(vgg16()), str(IMAGES), "--layout", "nhwc", *args])
    assert exit.value.code == 2
    assert message in capsys.readouterr().err
