"""torch model vs ONNX Runtime (fp32) for the compact and the paper configs."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import needs_torch

pytestmark = needs_torch


def _both(bundle):
    from fgresq_sdk.scorer import Scorer

    return Scorer(bundle, backend="torch", batch_size=4), Scorer(bundle, backend="onnxruntime", batch_size=4)


def _check_parity(bundle, paths):
    ts, os_ = _both(bundle)
    qt, st = ts.encode(paths)
    qo, so = os_.encode(paths)
    assert float(np.std(st)) > 1e-3, "scores are degenerate; parity would prove nothing"
    dscore = float(np.max(np.abs(st - so)))
    assert dscore <= 1e-4, dscore
    pairs = list(itertools.permutations(range(len(paths)), 2))
    i, j = map(list, zip(*pairs))
    import torch

    from fgresq_sdk.heads import softmax

    # The torch model's own comparison head (training's) on torch features, against the one inference head
    # (heads.npz in numpy, used by compare and rank on every backend) on ONNX Runtime features.
    with torch.inference_mode():
        lt = ts.backend.model.compare_logits(torch.from_numpy(qt[i]), torch.from_numpy(qt[j])).float().numpy()
    lo = os_.head.pair_logits(qo[i], qo[j])

    # Verdicts agree wherever the two top logits are not a near-tie (on some CPU a 1e-6 tie can flip).
    top2 = np.sort(lt, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-3
    assert np.array_equal(lt.argmax(1)[clear], lo.argmax(1)[clear]), "compare verdicts differ between torch and ORT"
    assert clear.mean() >= 0.99

    assert np.max(np.abs(softmax(lt) - softmax(lo))) <= 1e-4
    # The all-pairs form of that head (per-image terms) equals it pair by pair.
    probs = os_.head.all_pairs_probs(qo)
    assert np.max(np.abs(probs[i, j] - softmax(lo))) <= 1e-12
    return dscore


def test_compact_config_torch_vs_onnxruntime(tiny_bundle, photo_paths):
    _check_parity(tiny_bundle, photo_paths)


@pytest.mark.slow
def test_paper_config_torch_vs_onnxruntime(imported_b16, photo_paths):
    _check_parity(imported_b16, photo_paths)


def test_arrays_pil_and_paths_give_identical_tensors(tiny_bundle, photo_paths):
    from PIL import Image

    from fgresq_sdk.scorer import Scorer

    s = Scorer(tiny_bundle)
    p = photo_paths[0]
    img = Image.open(p)
    by_path, by_pil, by_array = s.score([p]), s.score([img]), s.score([np.asarray(img.convert("RGB"))])
    assert by_path[0] == by_pil[0] == by_array[0]


def test_preprocessing_matches_torchvision(photo_paths):
    """Our PIL/numpy preprocessing is bit-identical to the official torchvision transform."""
    from PIL import Image
    from torchvision import transforms

    from fgresq_sdk.preprocess import CLIP_MEAN, CLIP_STD
    from fgresq_sdk.preprocess import preprocess

    tv = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                             transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    for p in photo_paths:
        ref = tv(Image.open(p).convert("RGB")).numpy()
        ours = preprocess(p)
        assert np.max(np.abs(ref - ours)) <= 1e-6, p
