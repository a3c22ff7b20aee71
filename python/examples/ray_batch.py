#!/usr/bin/env python3
"""Classify a folder of photographs with dconv on a Ray cluster (Ray Data's map_batches).

    python ray_batch.py MODEL IMAGES_DIR --size HxW --layout nchw|nhwc
        [--scale S] [--mean R,G,B] [--std R,G,B] [--concurrency N] [--batch-size B]
        [--threads T] [--top K] [--engine dconv|onnxruntime] [--repeat R]
        [--address ADDRESS] [--num-cpus C] [--output FILE.jsonl]

Ray Data reads the image files, a pool of N actors each loads MODEL once (one
dconv.InferenceSession per actor, with T threads) and classifies batches of B images, and
the top K classes of every file are written as JSON lines (to FILE.jsonl, or stdout). The
throughput goes to stderr. Each image is decoded to RGB, resized (bilinear) to HxW, then
(pixel * S - mean) / std, in the model's layout.

Without --address, Ray starts on this machine (--num-cpus, default all). On a cluster,
start the head once (`ray start --head`), join each worker node (`ray start
--address=HEAD_IP:6379`), and give the same command with --address=HEAD_IP:6379 (or
`auto` on a cluster node): the actors then spread over the nodes. The model and the images
must be readable at the same paths on every node (a shared file system), or IMAGES_DIR an
URL Ray Data reads (s3://, gs://). --engine onnxruntime runs the same pipeline with ONNX
Runtime, to compare.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import ray
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def preprocess(data: bytes, size, layout, scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
    """One encoded image as a float32 [H, W, 3] ('nhwc') or [3, H, W] ('nchw') array."""
    import io

    height, width = size
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB").resize((width, height), Image.BILINEAR)
    x = (np.asarray(rgb, np.float32) * np.float32(scale) - np.float32(mean)) / np.float32(std)
    return np.ascontiguousarray(x.transpose(2, 0, 1) if layout == "nchw" else x)


def open_session(model, engine, threads):
    """A session of `engine` on `model` with `threads` threads per run."""
    if engine == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    import dconv

    options = dconv.SessionOptions()
    options.intra_op_num_threads = threads
    return dconv.InferenceSession(model, options)


class Classifier:
    """One per Ray actor: loads the model once, then classifies every batch it is given."""

    def __init__(self, model, engine, threads, preprocessing, top):
        self.session = open_session(model, engine, threads)
        first = self.session.get_inputs()[0]
        self.input = first.name
        # A model whose batch dimension is fixed (at 1) takes the images one at a time.
        self.fixed_batch = isinstance(first.shape[0], int) if first.shape else False
        self.preprocessing = preprocessing
        self.top = top

    def __call__(self, batch):
        x = np.stack([preprocess(b, **self.preprocessing) for b in batch["bytes"]])
        if self.fixed_batch:
            logits = np.concatenate([self.session.run(None, {self.input: x[i:i + 1]})[0]
                                     for i in range(len(x))])
        else:
            logits = self.session.run(None, {self.input: x})[0]
        logits = logits.reshape(len(x), -1)
        order = np.argsort(-logits, axis=1, kind="stable")[:, :self.top]
        return {"path": batch["path"], "classes": order,
                "scores": np.take_along_axis(logits, order, axis=1)}


def classify(model, paths, *, size, layout, scale=1.0, mean=(0.0, 0.0, 0.0),
             std=(1.0, 1.0, 1.0), engine="dconv", concurrency=2, batch_size=8, threads=1, top=5):
    """The top classes of every image in `paths` (local paths or URLs Ray reads), one dict
    per image, in the order of `paths`. Ray must be initialised."""
    preprocessing = dict(size=tuple(size), layout=layout, scale=scale, mean=tuple(mean),
                         std=tuple(std))
    # Reading files is I/O: one read task at a time, reserving no CPU, or actors holding every
    # CPU of the cluster (concurrency x threads) would wait forever for their input (and
    # CPU-less tasks without a limit start a worker process each).
    rows = (ray.data.read_binary_files([str(p) for p in paths], include_paths=True,
                                       concurrency=1, ray_remote_args={"num_cpus": 0},
                                       # A block per batch: fewer, larger read tasks.
                                       override_num_blocks=max(1, len(paths) // batch_size))
            .map_batches(Classifier, batch_size=batch_size, batch_format="numpy",
                         compute=ray.data.ActorPoolStrategy(size=concurrency),
                         num_cpus=threads,
                         fn_constructor_kwargs=dict(model=str(model), engine=engine,
                                                    threads=threads,
                                                    preprocessing=preprocessing, top=top))
            .take_all())
    # Ray Data reports a local file without its leading "/"; keys compare resolved paths.
    by_path = {}
    for row in rows:
        by_path.setdefault(str(Path("/", row["path"]).resolve()), []).append(row)
    results = []
    for p in paths:
        row = by_path[str(Path(p).resolve())].pop()
        results.append({"path": str(p), "classes": [int(c) for c in row["classes"]],
                        "scores": [float(s) for s in row["scores"]]})
    return results


def floats3(text):
    values = [float(v) for v in text.split(",")]
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers R,G,B, got '{text}'")
    return values


def size_arg(text):
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, such as 224x224, got '{text}'") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"the size must be positive, got '{text}'")
    return height, width


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="ray_batch.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("images", type=Path, metavar="IMAGES_DIR")
    parser.add_argument("--size", type=size_arg, required=True, help="HxW, such as 224x224")
    parser.add_argument("--layout", choices=["nchw", "nhwc"], required=True)
    parser.add_argument("--scale", type=float, default=1.0, help="pixel (0-255) multiplier")
    parser.add_argument("--mean", type=floats3, default=[0.0, 0.0, 0.0])
    parser.add_argument("--std", type=floats3, default=[1.0, 1.0, 1.0])
    parser.add_argument("--concurrency", type=int, default=2, help="actors (sessions)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="threads (CPUs) per actor")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--engine", choices=["dconv", "onnxruntime"], default="dconv")
    parser.add_argument("--repeat", type=int, default=1,
                        help="classify every image R times (to measure throughput)")
    parser.add_argument("--address", help="a running Ray cluster's address (default: a local one)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance")
    parser.add_argument("--output", type=Path, help="JSON lines file (default: stdout)")
    args = parser.parse_args(argv)
    for name in ("concurrency", "batch_size", "threads", "top", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if not args.model.is_file():
        sys.exit(f"ray_batch.py: {args.model} is not a file")
    if not args.images.is_dir():
        sys.exit(f"ray_batch.py: {args.images} is not a folder")
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        sys.exit(f"ray_batch.py: no .png or .jpg images in {args.images}")
    if not ray.is_initialized():
        ray.init(address=args.address, num_cpus=args.num_cpus, log_to_driver=False)
    started = time.perf_counter()
    results = classify(args.model, paths * args.repeat, size=args.size, layout=args.layout,
                       scale=args.scale, mean=args.mean, std=args.std, engine=args.engine,
                       concurrency=args.concurrency, batch_size=args.batch_size,
                       threads=args.threads, top=args.top)
    elapsed = time.perf_counter() - started
    lines = "".join(json.dumps(r) + "\n" for r in results[:len(paths)])
    if args.output:
        args.output.write_text(lines)
    else:
        sys.stdout.write(lines)
    print(f"ray_batch.py: {len(results)} images in {elapsed:.2f} s, "
          f"{len(results) / elapsed:.2f} images/s ({args.engine}, {args.concurrency} actors "
          f"x {args.threads} threads, batches of {args.batch_size})", file=sys.stderr)


if __name__ == "__main__":
    main()
