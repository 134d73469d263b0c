"""Calls of more than one batch on a CPU run each batch on one core, several at once (Scorer._iter_one_core): the
same answers, in the same order, with bad inputs reported where they are, as the one-batch-on-all-cores path."""
from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from fgresq_sdk.backends.onnxruntime_backend import OnnxRuntimeBackend
from fgresq_sdk.bundle import load_bundle
from fgresq_sdk.errors import BackendError
from fgresq_sdk.scorer import Scorer


def _spied(scorer: Scorer) -> dict[str, list[int]]:
    """Batch sizes of the scorer's encoder calls from now on, by path, and the threads that ran them."""
    calls: dict[str, list] = {"all_cores": [], "one_core": [], "threads": []}

    def spy(key, encode):
        def call(x):
            calls[key].append(int(x.shape[0]))
            calls["threads"].append(threading.current_thread().name)
            return encode(x)
        return call
    scorer.backend.encode = spy("all_cores", scorer.backend.encode)
    scorer.backend.encode_one_core = spy("one_core", scorer.backend.encode_one_core)
    return calls


def _all_cores(scorer: Scorer) -> Scorer:
    """The same scorer's settings with one-core batches turned off: the reference path."""
    ref = Scorer(scorer.bundle, backend="onnxruntime", batch_size=scorer.batch_size, threads=2)
    ref.backend.one_core_workers = 0
    return ref


def test_workers_follow_the_threads_on_the_cpu(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    assert OnnxRuntimeBackend(bundle, threads=2).one_core_workers == 2
    assert OnnxRuntimeBackend(bundle, threads=3).one_core_workers == 3
    one = OnnxRuntimeBackend(bundle, threads=1)
    assert one.one_core_workers == 0  # one thread: nothing to run side by side
    with pytest.raises(BackendError, match="one core each"):
        one.encode_one_core(np.zeros((1, 3, 224, 224), np.float32))


def test_many_batches_run_one_core_each_with_the_same_answers(tiny_bundle, photo_paths):
    s = Scorer(tiny_bundle, backend="onnxruntime", batch_size=2, threads=2)
    items = list(photo_paths) * 3  # several batches, more than the workers have at once
    calls = _spied(s)
    before = s.encoded_images
    got = s.score(items)
    assert calls["all_cores"] == [] and sum(calls["one_core"]) == len(items)
    assert max(calls["one_core"]) == 2
    assert all(t.startswith("fgresq-encode") for t in calls["threads"])
    assert s.encoded_images - before == len(items)
    want = _all_cores(s).score(items)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # the features too: rank and compare read them
    qa, _ = s.encode(items, features_only=True)
    qb, _ = _all_cores(s).encode(items, features_only=True)
    np.testing.assert_allclose(qa, qb, rtol=0, atol=1e-5)
    ra, rb = s.rank(items), _all_cores(s).rank(items)
    np.testing.assert_allclose(ra.scores, rb.scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ra.ranking.strength, rb.ranking.strength, rtol=0, atol=1e-3)


def test_one_batch_stays_on_all_cores(tiny_bundle, photo_paths):
    """A call that fits one batch (compare, a single image, a small folder) keeps the lowest latency: the session
    that spreads one batch over every core."""
    s = Scorer(tiny_bundle, backend="onnxruntime", batch_size=4, threads=2)
    calls = _spied(s)
    s.score(photo_paths[:4])
    s.compare(photo_paths[0], photo_paths[1])
    assert calls["one_core"] == [] and calls["all_cores"] == [4, 2]


def test_bad_inputs_keep_their_place_and_the_rest_is_scored(tiny_bundle, photo_paths, tmp_path):
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"this is text")
    missing = tmp_path / "missing.png"
    items = [photo_paths[0], bad, photo_paths[1], photo_paths[2], missing, photo_paths[3], photo_paths[0]]
    s = Scorer(tiny_bundle, backend="onnxruntime", batch_size=2, threads=2)
    calls = _spied(s)
    got = list(s.iter_encode(items))
    want = list(_all_cores(s).iter_encode(items))
    assert calls["one_core"] and not calls["all_cores"]
    assert [e.index for e in got] == list(range(len(items)))
    assert [e.name for e in got] == [e.name for e in want]
    assert [e.error is None for e in got] == [True, False, True, True, False, True, True]
    assert [e.error for e in got] == [e.error for e in want]
    for a, b in zip(got, want):
        if a.error is None:
            assert a.score == pytest.approx(b.score, abs=1e-5)
            np.testing.assert_allclose(a.features, b.features, rtol=0, atol=1e-5)


def test_a_batch_of_only_bad_inputs_and_a_caller_that_stops_early(tiny_bundle, photo_paths, tmp_path):
    bads = []
    for k in range(2):
        bads.append(tmp_path / f"bad{k}.jpg")
        bads[-1].write_bytes(b"\xff\xd8 truncated")
    s = Scorer(tiny_bundle, backend="onnxruntime", batch_size=2, threads=2)
    got = list(s.iter_encode(bads + list(photo_paths)))
    assert [e.error is not None for e in got] == [True, True] + [False] * len(photo_paths)
    # a consumer that reads one result does not wait for, nor encode, the whole of a long input
    many = list(photo_paths) * 20
    before = s.encoded_images
    first = next(iter(s.iter_encode(many)))
    assert first.error is None and first.index == 0
    assert s.encoded_images - before < len(many)


def test_a_backend_without_one_core_batches_or_thread_safety_keeps_one_path(tiny_bundle, photo_paths,
                                                                           monkeypatch):
    s = Scorer(tiny_bundle, backend="onnxruntime", batch_size=2, threads=2)
    monkeypatch.setattr(type(s.backend), "thread_safe", False)  # serialised backends are never run side by side
    calls = _spied(s)
    s.score(list(photo_paths) * 2)
    assert calls["one_core"] == [] and sum(calls["all_cores"]) == 2 * len(photo_paths)


def test_a_broken_encoder_fails_the_call_not_silently(tiny_bundle, photo_paths):
    s = Scorer(tiny_bundle, backend="onnxruntime", batch_size=2, threads=2)

    def broken(x):
        raise BackendError("the encoder failed")
    s.backend.encode_one_core = broken
    with pytest.raises(BackendError, match="the encoder failed"):
        s.score(list(photo_paths) * 2)
