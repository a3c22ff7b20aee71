"""dconv: CPU inference of convolutional networks that turns the zeros a network already has
(ReLU's in activations, pruning's in weights) into speed.

The API is ONNX Runtime's for the common calls, so that ``import dconv as ort`` runs code
written for it::

    import dconv
    session = dconv.InferenceSession("model.onnx")
    outputs = session.run(None, {session.get_inputs()[0].name: x})

dconv's own: ``SessionOptions.policy``, ``.max_memory`` and ``.profile``,
``InferenceSession.run_with_stats`` (per-layer method, sparsity and time) and ``prune``.
"""
from ._dconv import (
    InferenceSession,
    InvalidArgument,
    NodeArg,
    SessionOptions,
    __version__,
    get_available_providers,
    prune,
)

__all__ = [
    "InferenceSession",
    "InvalidArgument",
    "NodeArg",
    "SessionOptions",
    "__version__",
    "get_available_providers",
    "prune",
]
