"""The official-checkpoint importer against an independent forward built from transformers' modules."""
from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_torch
from official_format import TINY, hf_tower, official_state, reference_compare, reference_forward

pytestmark = needs_torch

def _batch(paths):
    import torch

    from fgresq_sdk.preprocess import preprocess

    return torch.from_numpy(np.stack([preprocess(p) for p in paths]))


@pytest.mark.slow
def test_imported_torch_model_matches_transformers_reference(official_b16, imported_b16, photo_paths):
    import torch

    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.model import load_checkpoint

    _, sd, img, deg = official_b16
    x = _batch(photo_paths)
    q_ref, s_ref = reference_forward(sd, img, deg, x)
    model = load_checkpoint(load_bundle(imported_b16).path("checkpoint"))
    with torch.no_grad():
        q, s = model(x)
        p = torch.softmax(model.compare_logits(q[:-1], q[1:]), dim=1)
    p_ref = reference_compare(sd, q_ref[:-1], q_ref[1:])
    assert float(s_ref.std()) > 1e-3, "reference scores are degenerate; the test would prove nothing"
    assert torch.max(torch.abs(s - s_ref)).item() <= 1e-4
    assert torch.max(torch.abs(p - p_ref)).item() <= 1e-4
    assert torch.equal(p.argmax(1), p_ref.argmax(1))


@pytest.mark.slow
def test_imported_bundle_runs_torch_free_backend(official_b16, imported_b16, photo_paths):
    """The imported bundle's ONNX graphs reproduce the transformers reference too."""
    from fgresq_sdk.scorer import Scorer

    _, sd, img, deg = official_b16
    q_ref, s_ref = reference_forward(sd, img, deg, _batch(photo_paths))
    scorer = Scorer(imported_b16, backend="onnxruntime", batch_size=4)
    scores = scorer.score(photo_paths)
    assert np.max(np.abs(scores - s_ref.numpy())) <= 1e-4
    cmp = scorer.compare(photo_paths[0], photo_paths[1])
    p_ref = reference_compare(sd, q_ref[0:1], q_ref[1:2])[0].numpy()
    got = np.array([cmp.p_first_better, cmp.p_second_better, cmp.p_similar])
    assert np.max(np.abs(got - p_ref)) <= 1e-4


def test_transformers_v5_names_accepted(tmp_path, photo_paths):
    import torch

    from fgresq_sdk.export.official_import import load_official

    sd, img, deg = official_state(TINY, seed=5, legacy_names=False)
    path = tmp_path / "FGResQ.pth"
    torch.save({"model": sd}, path)
    model = load_official(path, config="fgresq-vit-tiny")
    x = _batch(photo_paths[:3])
    _, s_ref = reference_forward(sd, img, deg, x)
    with torch.no_grad():
        _, s = model(x)
    assert torch.max(torch.abs(s - s_ref)).item() <= 1e-4


def test_separate_degradation_checkpoint_overrides_tower(tmp_path, photo_paths):
    import torch

    from fgresq_sdk.export.official_import import load_official

    sd, img, _ = official_state(TINY, seed=7)
    other = hf_tower(TINY, seed=42)
    torch.save(sd, tmp_path / "FGResQ.pth")
    dsd = {"clip_model.vision_model." + k: v for k, v in other.state_dict().items()}
    dsd["clip_model.visual_projection.weight"] = torch.randn(64, 64)
    dsd["clip_model.text_model.embeddings.token_embedding.weight"] = torch.randn(10, 64)
    torch.save(dsd, tmp_path / "Degradation.pth")
    model = load_official(tmp_path / "FGResQ.pth", "fgresq-vit-tiny", degradation=tmp_path / "Degradation.pth")
    _, s_ref = reference_forward(sd, img, other, _batch(photo_paths[:2]))
    with torch.no_grad():
        _, s = model(_batch(photo_paths[:2]))
    assert torch.max(torch.abs(s - s_ref)).item() <= 1e-4
    assert torch.allclose(model.degradation_proj, dsd["clip_model.visual_projection.weight"].T)


@pytest.mark.parametrize("damage, expect", [
    ("drop", "missing keys"),
    ("extra", "unexpected keys"),
    ("wrong_config", "wrong shapes"),
])
def test_refuses_mismatched_checkpoints(tmp_path, damage, expect):
    import torch

    from fgresq_sdk.errors import BundleError
    from fgresq_sdk.export.official_import import load_official

    sd, _, _ = official_state(TINY, seed=9)
    config = "fgresq-vit-tiny"
    if damage == "drop":
        del sd["task_cls_clip.vision_model.encoder.layers.1.mlp.fc2.bias"]
    elif damage == "extra":
        sd["clip_model.vision_model.some_new_layer.weight"] = torch.zeros(3)
    else:
        config = "fgresq-vit-b16"
    torch.save(sd, tmp_path / "FGResQ.pth")
    with pytest.raises(BundleError) as info:
        load_official(tmp_path / "FGResQ.pth", config)
    msg = str(info.value)
    assert expect in msg and "FGResQ.pth" in msg
    if damage == "drop":
        assert "task_cls_clip" not in msg or "degradation_tower.transformer.resblocks.1.mlp.c_proj.bias" in msg


class _Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_refuses_pickled_objects_and_cli_reports_one_line(tmp_path):
    path = tmp_path / "FGResQ.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    exe = Path(sys.executable).parent / "fgresq-sdk"
    res = subprocess.run([str(exe), "import-official", str(path), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "pickle code ran" not in res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "weights-only" in lines[0]
    assert not (tmp_path / "out").exists()


def test_compare_order_stored_keeps_rows_and_released_swaps_them(tmp_path):
    import torch

    from fgresq_sdk.export.official_import import load_official

    sd, _, _ = official_state(TINY, seed=11)
    torch.save(sd, tmp_path / "FGResQ.pth")
    stored = load_official(tmp_path / "FGResQ.pth", "fgresq-vit-tiny", compare_order="stored")
    released = load_official(tmp_path / "FGResQ.pth", "fgresq-vit-tiny")
    w = sd["compare_head.weight"]
    assert torch.equal(stored.compare_head.weight, w)
    assert torch.equal(released.compare_head.weight, w[[1, 0, 2]])
