"""Model-only and end-to-end throughput per backend and precision, rank vs the per-pair baseline, and the
ranking stage alone (soft wins + Bradley–Terry fit + tiers) at thousands of images."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from fgresq_sdk.backends.probe import importable
from fgresq_sdk.ranking import fit_bradley_terry, soft_wins
from fgresq_sdk.scorer import Scorer

HAS_TORCH = importable("torch")


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


# -- the ranking stage at scale ---------------------------------------------------------------------------
RANK_SIZES = [1000, 2000, 8192]  # 8192: the old CLI cap (about 4 s here, where the old fit took ~20 min)


@pytest.fixture(scope="module")
def feature_model(bench_bundle, bench_images):
    """(scorer, mean, covariance) of the model's features on the bench photos: thousands of realistic
    features are drawn from it, since encoding thousands of images would dominate the run."""
    s = Scorer(bench_bundle, batch_size=16)
    q, _ = s.encode(bench_images)
    q = q.astype(np.float64)
    return s, q.mean(axis=0), np.cov(q.T)


def _features(feature_model, n: int) -> tuple[np.ndarray, np.ndarray]:
    _, mean, cov = feature_model
    rng = np.random.default_rng(n)
    return rng.multivariate_normal(mean, cov, size=n, method="eigh"), rng.uniform(size=n)


@pytest.mark.parametrize("n", RANK_SIZES)
def test_rank_stage(benchmark, feature_model, n):
    """Scorer.rank_features without the encoder: all pairs from the head terms, the fit, the tiers. Compare
    with n × the per-image time of test_end_to_end_onnxruntime_fp32 (÷ 64): the ranking of 2000 images
    must cost at most half of encoding them."""
    scorer = feature_model[0]
    q, scores = _features(feature_model, n)
    names = [str(i) for i in range(n)]
    res = benchmark.pedantic(scorer.rank_features, args=(names, q, scores), rounds=1 if n > 4000 else 3,
                             iterations=1)
    benchmark.extra_info.update(n=n, converged=res.ranking.converged, newton_steps=res.ranking.iterations)
    assert res.ranking.converged


@pytest.mark.parametrize("n", RANK_SIZES)
def test_bradley_terry_fit(benchmark, feature_model, n):
    """The Newton fit alone, from the soft wins (what the old MM loop spent its 5000 iterations on)."""
    q, _ = _features(feature_model, n)
    wins = soft_wins(feature_model[0].head.pair_terms(q))
    fit = benchmark.pedantic(fit_bradley_terry, args=(wins,), rounds=1 if n > 4000 else 3, iterations=1)
    benchmark.extra_info.update(n=n, converged=fit.converged, newton_steps=fit.iterations)
    assert fit.converged


def test_resize_bilinear_cv2_large_photo(benchmark):
    """The numpy cv2-compatible resize (official preprocessing) of a 4000×3000 photo to 256×256."""
    import numpy as np

    from fgresq_sdk.preprocess import resize_bilinear_cv2

    src = np.random.default_rng(3).integers(0, 256, size=(3000, 4000, 3), dtype=np.uint8)
    out = benchmark(resize_bilinear_cv2, src, 256, 256)
    assert out.shape == (256, 256, 3)
