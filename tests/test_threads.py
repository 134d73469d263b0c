"""One Scorer shared by many threads gives the results a single thread gives."""
from __future__ import annotations

import concurrent.futures as cf

import numpy as np

from fgresq_sdk.scorer import Scorer


def test_eight_threads_score_concurrently_like_sequential(tiny_bundle, photo_paths):
    s = Scorer(tiny_bundle, backend="onnxruntime", batch_size=2)
    assert s.thread_safe and s.describe()["thread_safe"] is True
    jobs = [photo_paths[i % len(photo_paths):] + photo_paths[:i % len(photo_paths)] for i in range(16)]
    sequential = [s.score(j) for j in jobs]
    before = s.encoded_images
    with cf.ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(s.score, jobs))
    for a, b in zip(sequential, concurrent):
        # Same batches, same graph: only thread scheduling differs (ORT's reductions are deterministic
        # per batch, but allow for CPUs where they are not).
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    assert s.encoded_images - before == sum(len(j) for j in jobs)  # the counter is not racy
    pairs = [(photo_paths[i], photo_paths[-1 - i]) for i in range(4)] * 4
    seq = [s.compare(a, b).p_first_better for a, b in pairs]
    with cf.ThreadPoolExecutor(8) as pool:
        par = list(pool.map(lambda ab: s.compare(*ab).p_first_better, pairs))
    np.testing.assert_allclose(par, seq, rtol=0, atol=1e-6)


def test_backends_declare_thread_safety():
    from fgresq_sdk.backends.base import Backend
    from fgresq_sdk.backends.onnxruntime_backend import OnnxRuntimeBackend
    from fgresq_sdk.backends.tensorrt_backend import TensorRTBackend

    assert Backend.thread_safe is False  # a backend that says nothing is serialised
    assert OnnxRuntimeBackend.thread_safe is True
    assert TensorRTBackend.thread_safe is False


def test_a_backend_that_is_not_thread_safe_is_called_one_at_a_time(tiny_bundle, photo_paths, monkeypatch):
    import threading
    import time

    s = Scorer(tiny_bundle, backend="onnxruntime", batch_size=1)
    inner = s.backend.encode
    active, peak = [0], [0]
    guard = threading.Lock()

    def encode(x):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.01)  # widen the window in which an unserialised call would overlap
        try:
            return inner(x)
        finally:
            with guard:
                active[0] -= 1

    monkeypatch.setattr(s.backend, "encode", encode)
    monkeypatch.setattr(type(s.backend), "thread_safe", False)
    s2 = Scorer(s.bundle, backend="onnxruntime", batch_size=1)  # picks up thread_safe=False → a lock
    monkeypatch.setattr(s2.backend, "encode", encode)
    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(s2.score, [photo_paths[:2]] * 8))
    assert peak[0] == 1
