"""The cache of ONNX Runtime's optimized encoder graphs (fgresq_sdk/ort_cache.py): a second process loads the
optimized graph instead of optimizing again, and the cached files are checked like bundle files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fgresq_sdk import ort_cache
from fgresq_sdk.bundle import default_bundle_path, load_bundle

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="the cache needs /proc/self/fd (Linux)")


@pytest.fixture()
def cache_env(tmp_path, monkeypatch):
    """A private cache folder for this test (the verification cache too)."""
    folder = tmp_path / "user-cache"
    monkeypatch.setenv("FGRESQ_CACHE_DIR", str(folder))
    monkeypatch.delenv("FGRESQ_ORT_CACHE", raising=False)
    return folder / ort_cache.CACHE_SUBDIR


@pytest.fixture(scope="module")
def bundle_copy(tmp_path_factory):
    """The embedded default model, copied (tests below corrupt and move their own copies)."""
    src = default_bundle_path()
    if src is None:
        pytest.skip("this build has no embedded default model")
    dst = tmp_path_factory.mktemp("bundle") / "default"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__*"))
    return dst


def _images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 3, 224, 224)).astype(np.float32)


def _backend(root, **kw):
    from fgresq_sdk.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(load_bundle(root, **kw))


def _entries(cache_root) -> dict:
    return json.loads((cache_root / ort_cache.INDEX_FILE).read_text())["entries"]


def test_second_load_uses_the_optimized_graph_with_the_same_results(bundle_copy, cache_env, monkeypatch):
    first = _backend(bundle_copy)
    assert first.graph_cache == "written"
    (key, entry), = _entries(cache_env).items()
    folder = cache_env / key
    assert sorted(p.name for p in folder.iterdir()) == [ort_cache.GRAPH_FILE, ort_cache.WEIGHTS_FILE]
    assert entry["encoder_sha256"] == load_bundle(bundle_copy).entry("encoder")["sha256"]
    assert len(entry["graph_sha256"]) == len(entry["weights_sha256"]) == 64
    assert oct(cache_env.stat().st_mode & 0o777) == "0o700" and oct(folder.stat().st_mode & 0o777) == "0o700"

    second = _backend(bundle_copy)
    assert second.graph_cache == "hit"
    monkeypatch.setenv("FGRESQ_ORT_CACHE", "0")
    plain = _backend(bundle_copy)
    assert plain.graph_cache == "off"
    x = _images()
    q0, s0 = plain.encode(x)
    for b in (first, second):
        q, s = b.encode(x)
        np.testing.assert_allclose(q, q0, rtol=0, atol=1e-5)
        np.testing.assert_allclose(s, s0, rtol=0, atol=1e-6)


def test_a_second_process_loads_from_the_cache(bundle_copy, cache_env):
    code = ("import sys; from fgresq_sdk.scorer import Scorer; "
            f"print(Scorer({str(bundle_copy)!r}).backend.graph_cache)")
    env = dict(os.environ)
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
            for _ in range(2)]
    assert [r.stdout.strip() for r in runs] == ["written", "hit"], [r.stderr for r in runs]


def test_key_follows_encoder_runtime_and_cpu(monkeypatch):
    base = ort_cache.cache_key("a" * 64, "1.32.0", "ORT_ENABLE_ALL")
    assert ort_cache.cache_key("b" * 64, "1.32.0", "ORT_ENABLE_ALL") != base
    assert ort_cache.cache_key("a" * 64, "1.33.0", "ORT_ENABLE_ALL") != base
    assert ort_cache.cache_key("a" * 64, "1.32.0", "ORT_ENABLE_EXTENDED") != base
    monkeypatch.setattr(ort_cache, "simd_flags", lambda: ["avx2", "fma"])
    assert ort_cache.cache_key("a" * 64, "1.32.0", "ORT_ENABLE_ALL") != base


@pytest.mark.parametrize("damage", ["weights", "graph", "index"])
def test_a_changed_cache_entry_is_not_used_and_is_rebuilt(bundle_copy, cache_env, damage):
    _backend(bundle_copy)
    (key, _), = _entries(cache_env).items()
    folder = cache_env / key
    if damage == "index":
        index = json.loads((cache_env / ort_cache.INDEX_FILE).read_text())
        index["entries"][key]["weights_sha256"] = "0" * 64
        (cache_env / ort_cache.INDEX_FILE).write_text(json.dumps(index))
    else:
        target = folder / (ort_cache.WEIGHTS_FILE if damage == "weights" else ort_cache.GRAPH_FILE)
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01  # one flipped bit, same size
        target.write_bytes(bytes(data))
    again = _backend(bundle_copy)
    assert again.graph_cache == "written"  # the damaged entry was dropped, the graph optimized anew
    assert _backend(bundle_copy).graph_cache == "hit"
    q, s = again.encode(_images())
    os.environ["FGRESQ_ORT_CACHE"] = "0"
    try:
        q0, s0 = _backend(bundle_copy).encode(_images())
    finally:
        del os.environ["FGRESQ_ORT_CACHE"]
    np.testing.assert_allclose(s, s0, rtol=0, atol=1e-6)


def test_a_folder_others_can_write_is_not_used(bundle_copy, cache_env):
    cache_env.mkdir(parents=True)
    os.chmod(cache_env, 0o777)
    assert _backend(bundle_copy).graph_cache == "off"
    assert not (cache_env / ort_cache.INDEX_FILE).exists()


def test_the_bundle_is_still_verified_when_a_cached_graph_exists(bundle_copy, cache_env, tmp_path):
    from fgresq_sdk.errors import BundleError

    bad = tmp_path / "bad"
    shutil.copytree(bundle_copy, bad)
    _backend(bad)  # cache written for this encoder's sha256
    enc = bad / load_bundle(bad).entry("encoder")["path"]
    data = bytearray(enc.read_bytes())
    data[100] ^= 0x01
    enc.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        _backend(bad)


def test_unverified_bundles_do_not_use_the_cache(bundle_copy, cache_env):
    assert _backend(bundle_copy, verify=False).graph_cache == "off"
    assert not (cache_env / ort_cache.INDEX_FILE).exists()


def test_least_recently_used_entries_are_evicted(bundle_copy, cache_env, monkeypatch, tmp_path):
    import onnxruntime as ort

    monkeypatch.setattr(ort_cache, "MAX_ENTRIES", 1)
    _backend(bundle_copy)
    (first_key, _), = _entries(cache_env).items()
    # Another "runtime version" makes another entry for the same bundle; the older one goes.
    monkeypatch.setattr(ort, "__version__", ort.__version__ + "-other")
    _backend(bundle_copy)
    (second_key, _), = _entries(cache_env).items()
    assert second_key != first_key
    assert sorted(p.name for p in cache_env.iterdir() if not p.name.startswith(".")) == \
        sorted([second_key, ort_cache.INDEX_FILE])


def test_a_graph_that_does_not_load_back_is_not_written_again(bundle_copy, cache_env, monkeypatch):
    _backend(bundle_copy)
    (key, _), = _entries(cache_env).items()
    cache = ort_cache.GraphCache(cache_env)

    def broken(graph, folder):
        raise RuntimeError("cannot load")

    assert cache.load(key, broken) is None
    assert _entries(cache_env)[key]["failed"].startswith("RuntimeError")
    assert not (cache_env / key).exists()
    assert _backend(bundle_copy).graph_cache == "off"
