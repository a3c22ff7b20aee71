#!/usr/bin/env python3
"""What the Python binding adds to a run, measured in one process run (issue #19):

    .venv/bin/python python/benches/call_overhead.py [--rounds N] [--runs R] [--threads T]

1. The dense VGG-16 (models/vgg16.onnx) on a photograph's input: the median of R
   `session.run` calls against the median `dconv bench` reports for R runs of the same model,
   input and threads, alternated over N rounds (this machine is shared: the ratio is taken
   per round, and the rounds' median ratio is reported).
2. A 1x1-pixel model (a 1x1 Conv on a 1x1x1x1 input, built here), at 0 (every core, the
   default), 1 and 2 threads: a whole `session.run` call from Python against a `dconv bench`
   run, alternated over N rounds; the median of the rounds' differences is what the binding
   adds.
Needs the release dconv (target/release/dconv) and the package installed in the venv.
"""
import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

import dconv

REPO = Path(__file__).resolve().parents[2]


def median_run_ms(session, feed, runs, warmup=2):
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def bench_median_ms(model, input_path, runs, threads):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([str(REPO / "target" / "release" / "dconv"), "bench", str(model),
                        "--input", str(input_path), "--runs", str(runs), "--warmup", "2",
                        "--threads", str(threads), "--json", out.name],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.loads(Path(out.name).read_text())["median_ms"]


def pixel_model():
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1, 1], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "pixel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 1])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    model = REPO / "models" / "vgg16.onnx"
    input_path = REPO / "models" / "photos" / "coffee.input.npy"
    options = dconv.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = dconv.InferenceSession(str(model), options)
    feed = {"input": np.load(input_path)}
    ratios = []
    for round_ in range(args.rounds):
        python_ms = median_run_ms(session, feed, args.runs)
        cli_ms = bench_median_ms(model, input_path, args.runs, args.threads)
        ratios.append(python_ms / cli_ms)
        print(f"round {round_ + 1}: Python run {python_ms:.2f} ms, dconv bench {cli_ms:.2f} ms, "
              f"ratio {python_ms / cli_ms:.4f}")
    print(f"dense VGG-16, {args.threads} thread(s): median ratio Python / dconv bench = "
          f"{statistics.median(ratios):.4f}")

    # A run's fixed cost depends on the session's threads: 0 (the default) runs on rayon's
    # global pool from the calling thread; a session with a pool of its own hands each run
    # to that pool's threads, which must be woken. `dconv bench` pays the same, so the
    # binding's cost is the difference of the two, measured alternately.
    with tempfile.TemporaryDirectory() as folder:
        model_path, input_path = Path(folder) / "pixel.onnx", Path(folder) / "pixel.npy"
        model_path.write_bytes(pixel_model())
        x = {"x": np.ones((1, 1, 1, 1), np.float32)}
        np.save(input_path, x["x"])
        for threads in (0, 1, 2):
            pixel_options = dconv.SessionOptions()
            pixel_options.intra_op_num_threads = threads
            pixel = dconv.InferenceSession(str(model_path), pixel_options)
            calls, python_us, cli_us = 20000, [], []
            for _ in range(1000):
                pixel.run(None, x)
            for _ in range(args.rounds):
                started = time.perf_counter()
                for _ in range(calls):
                    pixel.run(None, x)
                python_us.append(1e6 * (time.perf_counter() - started) / calls)
                cli_us.append(1e3 * bench_median_ms(model_path, input_path, calls, threads))
            extra = statistics.median(p - c for p, c in zip(python_us, cli_us))
            print(f"1x1-pixel model, intra_op_num_threads={threads}: a Python run() call "
                  f"{statistics.median(python_us):.1f} us, a `dconv bench` run "
                  f"{statistics.median(cli_us):.1f} us (medians of {args.rounds} rounds of "
                  f"{calls}); the binding adds {extra:.1f} us")

if __name__ == "__main__":
    main()
