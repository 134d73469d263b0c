"""The encoder batch a Scorer picks when none is asked for (scorer.default_batch_size), and that it changes only
speed: the embedded conv-stats default runs 2 images per call on a CPU, every other case 16, and the scores,
rankings and pair decisions agree with a batch of 16 to float noise."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fgresq_sdk.bundle import default_bundle_path
from fgresq_sdk.scorer import CPU_CONV_STATS_BATCH, DEFAULT_BATCH, Scorer, default_batch_size

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONV = {"vision_cfg": {"kind": "conv-stats"}}
VIT = {"vision_cfg": {"width": 192, "layers": 12, "patch_size": 16}}


@pytest.mark.parametrize("config, device, expected", [
    (CONV, "cpu", CPU_CONV_STATS_BATCH), (CONV, "cuda", DEFAULT_BATCH), (CONV, "cuda:1", DEFAULT_BATCH),
    (VIT, "cpu", DEFAULT_BATCH), (VIT, "cuda:0", DEFAULT_BATCH), ({}, "cpu", DEFAULT_BATCH)])
def test_default_batch_size_by_tower_and_device(config, device, expected):
    assert default_batch_size(config, device) == expected


def _example_images() -> list[Path]:
    images = sorted(EXAMPLES.rglob("*.png"))
    assert len(images) >= 6, "examples/ should hold the quick start's images"
    return images


def _recording(scorer: Scorer) -> list[int]:
    """The batch of every encoder call the scorer makes from now on (on all cores or, for calls of more than one
    batch on a CPU, one core per batch)."""
    sizes: list[int] = []

    def spy(encode):
        def call(x):
            sizes.append(int(x.shape[0]))
            return encode(x)
        return call
    scorer.backend.encode = spy(scorer.backend.encode)
    scorer.backend.encode_one_core = spy(scorer.backend.encode_one_core)
    return sizes


def test_embedded_default_encodes_two_at_a_time_with_the_same_answers():
    if default_bundle_path() is None:
        pytest.skip("this build has no embedded default model")
    images = _example_images()
    auto = Scorer(backend="onnxruntime")
    assert auto.bundle.config["vision_cfg"]["kind"] == "conv-stats"
    assert auto.batch_size == CPU_CONV_STATS_BATCH
    fixed = Scorer(backend="onnxruntime", batch_size=16)
    assert fixed.batch_size == 16
    auto_calls, fixed_calls = _recording(auto), _recording(fixed)
    a, b = auto.score(images), fixed.score(images)
    assert max(auto_calls) == CPU_CONV_STATS_BATCH and sum(auto_calls) == len(images)
    assert fixed_calls == [len(images)]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    for group in ("brick-super-resolution", "rocket-dehazing"):
        paths = sorted((EXAMPLES / group).glob("*.png"))
        ra, rb = auto.rank(paths), fixed.rank(paths)
        assert [e["path"] for e in ra.entries()] == [e["path"] for e in rb.entries()]
        assert [e["path"] for e in ra.entries()] == [str(p) for p in paths]  # L0 > L2 > L4, the quick start
        pa, pb = auto.compare(paths[0], paths[-1]), fixed.compare(paths[0], paths[-1])
        np.testing.assert_allclose(pa.probs, pb.probs, rtol=0, atol=1e-5)


def test_vit_bundle_keeps_sixteen_and_an_explicit_batch_wins(tiny_bundle):
    assert Scorer(tiny_bundle, backend="onnxruntime").batch_size == DEFAULT_BATCH
    assert Scorer(tiny_bundle, backend="onnxruntime", batch_size=3).batch_size == 3
    assert Scorer(tiny_bundle, backend="onnxruntime", batch_size=0).batch_size == 1  # as before: at least one
