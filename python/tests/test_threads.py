"""One session run from several Python threads at once gives the results of sequential runs,
and the GIL is released while a model runs."""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import dconv
from conftest import photo_input, vgg16


def test_concurrent_runs_equal_sequential_runs():
    options = dconv.SessionOptions()
    options.intra_op_num_threads = 1
    session = dconv.InferenceSession(str(vgg16("vgg16-pruned90")), options)
    photos = [photo_input(p) for p in ("astronaut", "chelsea", "coffee")]
    sequential = [session.run(None, {"input": x})[0] for x in photos]
    jobs = [i % len(photos) for i in range(12)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda i: session.run(None, {"input": photos[i]})[0], jobs))
    for i, result in zip(jobs, concurrent):
        np.testing.assert_array_equal(result, sequential[i])


def test_the_gil_is_released_while_a_model_runs():
    session = dconv.InferenceSession(str(vgg16()))
    x = photo_input("coffee")
    started, done = threading.Event(), threading.Event()

    def worker():
        started.set()
        session.run(None, {"input": x})
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    started.wait()
    # With the GIL held for the whole run, this loop could not go round until the run ends.
    spins = 0
    while not done.is_set():
        spins += 1
    thread.join()
    assert spins > 1000, f"the main thread went round {spins} times during a VGG-16 run"
