"""ONNX Runtime as the reference: one thread (unless asked), sequential, default graph
optimizations, CPU."""
import time

import numpy as np
import onnxruntime as ort


def session(model_bytes_or_path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Errors only: a warning per unused initializer (the zoo's models keep their reshapes'
    # shape constants) would bury the comparison's one line.
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes_or_path, options, providers=["CPUExecutionProvider"])


def run_timed(sess: ort.InferenceSession, feeds: dict) -> tuple[list[np.ndarray], float]:
    """Outputs and the milliseconds of a warm run (one warm-up run first)."""
    sess.run(None, feeds)
    start = time.perf_counter()
    outputs = sess.run(None, feeds)
    return outputs, (time.perf_counter() - start) * 1e3
