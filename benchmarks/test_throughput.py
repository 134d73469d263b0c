"""Model-only and end-to-end throughput per backend and precision, and rank vs the per-pair baseline."""
from __future__ import annotations

import importlib.util
import itertools

import pytest

from fgresq_sdk.scorer import Scorer

HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_model_onnxruntime_fp32(benchmark, bench_bundle, batch):
    s = Scorer(bench_bundle)
    benchmark(s.backend.encode, batch)


def test_model_onnxruntime_int8(benchmark, int8_bundle, batch):
    s = Scorer(int8_bundle)
    benchmark(s.backend.encode, batch)


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_model_torch_fp32(benchmark, bench_bundle, batch):
    s = Scorer(bench_bundle, backend="torch")
    benchmark(s.backend.encode, batch)


def test_end_to_end_onnxruntime_fp32(benchmark, bench_bundle, bench_images):
    s = Scorer(bench_bundle, batch_size=8)
    benchmark(lambda: sum(1 for _ in s.iter_encode(bench_images)))


@pytest.mark.parametrize("n", [8, 32])
def test_rank(benchmark, bench_bundle, bench_images, n):
    s = Scorer(bench_bundle, batch_size=16)
    benchmark(s.rank, bench_images[:n])


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
@pytest.mark.parametrize("n", [8])
def test_rank_official_per_pair_baseline(benchmark, bench_bundle, bench_images, n):
    """Every pair re-encoded with the fp32 torch model at batch 1 (the released inference style)."""
    from fgresq_sdk.bench import official_style_compare
    from fgresq_sdk.model import load_checkpoint

    model = load_checkpoint(bench_bundle.path("checkpoint"))
    paths = bench_images[:n]

    def run():
        for i, j in itertools.combinations(range(n), 2):
            official_style_compare(model, paths[i], paths[j], bench_bundle.preprocess)

    benchmark.pedantic(run, rounds=2, iterations=1)
