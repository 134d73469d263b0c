"""int8 bundles keep the decisions of fp32 on any x86-64 CPU (AVX2-only and AVX-512 VNNI alike).

Judged on the embedded default model (trained: random weights make near-ties everywhere) on groups of
versions of one photo, as in ranking. Tolerances from measurement: max |Δscore| 0.0066 (batch 1) /
0.0083 (batch 8) on an AMD EPYC with AVX-512 VNNI; 0.0134 / 0.0090 for this scheme on an AMD Zen 3
without AVX-512 (../shared/notes/int8-on-avx2.md), against 0.24 for the old full-range U8S8 scheme there.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image, ImageFilter

from conftest import PHOTOS, needs_torch, photo

MAX_SCORE_DELTA = 0.03
MIN_SAME_VERDICT = 0.99


def _groups() -> tuple[list[np.ndarray], list[list[int]]]:
    """Five versions of each photo, from sharp to strongly blurred (a clear quality order)."""
    images, groups = [], []
    for name in PHOTOS:
        im = Image.fromarray(photo(name))
        group = []
        for radius in (0, 1, 2, 3, 5):
            group.append(len(images))
            images.append(np.asarray(im.filter(ImageFilter.GaussianBlur(radius)) if radius else im))
        groups.append(group)
    return images, groups


@pytest.fixture(scope="module")
def int8_default(tmp_path_factory):
    from fgresq_sdk.bundle import default_bundle_path
    from fgresq_sdk.export.quantize import quantize_bundle

    return quantize_bundle(default_bundle_path(), tmp_path_factory.mktemp("int8") / "default-int8")


@needs_torch
@pytest.mark.parametrize("batch", [1, 8])
def test_int8_keeps_fp32_decisions_on_the_default_model(int8_default, batch):
    from fgresq_sdk.bundle import default_bundle_path, load_bundle
    from fgresq_sdk.scorer import Scorer

    int8 = load_bundle(int8_default)
    q = int8.manifest["quantization"]
    assert int8.precision == "int8" and not int8.has("checkpoint")
    assert "reduce_range" in q["weights"] and q["fp32_nodes"] > 0
    assert q["fp32_encoder_sha256"] == load_bundle(default_bundle_path()).manifest["files"]["encoder"]["sha256"]
    images, groups = _groups()
    fp32, i8 = Scorer(batch_size=batch), Scorer(int8, batch_size=batch)
    q32, s32 = fp32.encode(images)
    q8, s8 = i8.encode(images)
    assert np.max(np.abs(s8 - s32)) <= MAX_SCORE_DELTA
    pairs = [p for g in groups for p in itertools.permutations(g, 2)]
    i, j = map(list, zip(*pairs))
    p32, p8 = fp32.head.all_pairs_probs(q32)[i, j], fp32.head.all_pairs_probs(q8)[i, j]
    assert (p32.argmax(-1) == p8.argmax(-1)).mean() >= MIN_SAME_VERDICT
    clear = np.abs(s32[i] - s32[j]) >= 0.01  # pairs fp32 separates by a real margin keep their order
    assert ((s32[i] > s32[j]) == (s8[i] > s8[j]))[clear].all()
