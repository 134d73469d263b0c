"""int8 and multi-crop: geometry, exactness of the averaging, and accuracy against fp32."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from conftest import needs_torch
from fgresq_sdk.crops import crop_boxes, crop_centres, crop_views


@pytest.mark.parametrize("k", [1, 2, 4, 5, 9])
def test_crop_boxes_inside_and_aligned(k):
    for w, h in [(2048, 1080), (300, 224), (224, 640)]:
        boxes = crop_boxes(w, h, k, 224)
        assert len(boxes) == k == len(crop_centres(k))
        for left, top, right, bottom in boxes:
            assert 0 <= left and right <= w and 0 <= top and bottom <= h
            assert right - left == 224 and bottom - top == 224
    # same size → same pixel boxes, whatever the content: pairs compare like with like
    assert crop_boxes(1920, 1080, k, 224) == crop_boxes(1920, 1080, k, 224)


def test_crop_views_are_native_resolution_pixels():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(600, 800, 3), dtype=np.uint8)
    views = crop_views(Image.fromarray(arr), 4, 224, mean=(0, 0, 0), std=(1, 1, 1))
    assert views.shape == (4, 3, 224, 224)
    left, top, right, bottom = crop_boxes(800, 600, 4, 224)[3]
    assert np.allclose(views[3].transpose(1, 2, 0) * 255, arr[top:bottom, left:right], atol=1e-3)
    small = crop_views(Image.fromarray(arr[:100, :150]), 2, 224)
    assert small.shape == (2, 3, 224, 224)


@needs_torch
def test_multicrop_averages_features_and_scores_exactly(tiny_bundle, photo_paths):
    import torch

    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.model import load_checkpoint
    from fgresq_sdk.preprocess import load_image
    from fgresq_sdk.scorer import Scorer

    k = 4
    scorer = Scorer(tiny_bundle, crops=k, batch_size=3)
    q, s = scorer.encode(photo_paths)
    assert scorer.encoded_images == k * len(photo_paths)
    model = load_checkpoint(load_bundle(tiny_bundle).path("checkpoint"))
    for i, p in enumerate(photo_paths):
        with torch.no_grad():
            qt, st = model(torch.from_numpy(crop_views(load_image(p), k)))
        assert np.allclose(q[i], qt.mean(0).numpy(), atol=1e-4)
        assert abs(s[i] - st.mean().item()) <= 1e-4
    # comparison logits of averaged features == average of per-crop-pair logits (the head is linear)
    a, b = scorer.head.split_terms(q[:2])
    assert np.allclose(a[0] + b[1] + scorer.head.bias, scorer.head.pair_logits(q[0:1], q[1:2])[0])


@needs_torch
def test_int8_bundle_accuracy_against_fp32(tiny_bundle, photo_paths, tmp_path):
    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.export.quantize import quantize_bundle
    from fgresq_sdk.scorer import Scorer

    int8 = load_bundle(quantize_bundle(tiny_bundle, tmp_path / "int8"))
    assert int8.precision == "int8" and not int8.has("checkpoint")
    assert int8.manifest["quantization"]["fp32_encoder_sha256"] == load_bundle(tiny_bundle).manifest["files"]["encoder"]["sha256"]
    q32, s32 = Scorer(tiny_bundle).encode(photo_paths)
    q8, s8 = Scorer(int8).encode(photo_paths)
    assert np.max(np.abs(s8 - s32)) <= 0.02
    head = Scorer(tiny_bundle).head
    pairs = list(itertools.permutations(range(len(photo_paths)), 2))
    i, j = map(list, zip(*pairs))
    same = head.all_pairs_probs(q32)[i, j].argmax(-1) == head.all_pairs_probs(q8)[i, j].argmax(-1)
    assert same.mean() >= 0.9


@needs_torch
def test_fp16_onnx_bundle_on_cpu_within_fp16_tolerance(tiny_bundle, photo_paths, tmp_path):
    from fgresq_sdk.export.half import half_bundle
    from fgresq_sdk.scorer import Scorer

    half = half_bundle(tiny_bundle, tmp_path / "fp16")
    s32 = Scorer(tiny_bundle).score(photo_paths)
    s16 = Scorer(half).score(photo_paths)
    assert np.max(np.abs(s16 - s32)) <= 5e-3
