"""Start-up: the encoder session from ONNX Runtime's cached optimized graph vs optimizing the bundle's graph.

Both keep the verification cache warm (no re-hashing); only the graph cache differs. For the paper config
(FGRESQ_BENCH_MODEL=<ViT-B/16 bundle>) the whole-process numbers are in cpu_speed.py (next to this file).
"""
from __future__ import annotations

import pytest

from fgresq_sdk.backends.onnxruntime_backend import OnnxRuntimeBackend


@pytest.fixture()
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FGRESQ_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("graph_cache", ["hit", "off"])
def test_encoder_session_start(benchmark, bench_bundle, private_cache, monkeypatch, graph_cache):
    OnnxRuntimeBackend(bench_bundle)  # writes the optimized graph, warms the verification cache
    if graph_cache == "off":
        monkeypatch.setenv("FGRESQ_ORT_CACHE", "0")
    backend = benchmark.pedantic(OnnxRuntimeBackend, args=(bench_bundle,), rounds=3, iterations=1)
    assert backend.graph_cache == graph_cache
