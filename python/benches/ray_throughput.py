#!/usr/bin/env python3
"""Images per second of python/examples/ray_batch.py's pipeline with dconv and with ONNX
Runtime, on the same model, photographs and concurrency, alternated in one Ray instance
(issue #19):

    .venv/bin/python python/benches/ray_throughput.py [--model M] [--rounds N] [--repeat R]
        [--concurrency C] [--batch-size B]

Each round runs both engines on the photographs of ../shared/images, each repeated R times,
and prints both throughputs and their ratio; the rounds' median ratio closes the report.
A pipeline's time includes starting its actors and loading the model once per actor.
"""
import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import ray

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO.parent / "shared" / "images"


def load_example():
    spec = importlib.util.spec_from_file_location(
        "ray_batch", REPO / "python" / "examples" / "ray_batch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path,
                        default=REPO / "models" / "vgg16-deep-compression.onnx",
                        help="default: the Deep Compression VGG-16 that `dconv demo` writes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    ray_batch = load_example()
    paths = sorted(p for p in IMAGES.iterdir() if p.suffix == ".png") * args.repeat
    ray.init(num_cpus=args.concurrency, log_to_driver=False, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ratios = []
    for round_ in range(args.rounds):
        rate = {}
        for engine in ("onnxruntime", "dconv"):
            started = time.perf_counter()
            ray_batch.classify(args.model, paths, size=(240, 240), layout="nhwc",
                               scale=1 / 255, engine=engine, concurrency=args.concurrency,
                               batch_size=args.batch_size, threads=1)
            rate[engine] = len(paths) / (time.perf_counter() - started)
        ratios.append(rate["dconv"] / rate["onnxruntime"])
        print(f"round {round_ + 1}: {len(paths)} images, ONNX Runtime {rate['onnxruntime']:.2f} "
              f"images/s, dconv {rate['dconv']:.2f} images/s, ratio {ratios[-1]:.2f}x", flush=True)
    print(f"{args.model.name}, {args.concurrency} actors x 1 thread, batches of "
          f"{args.batch_size}: median ratio dconv / ONNX Runtime = {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
