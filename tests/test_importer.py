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


@pytest.fixture(scope="module")
def png_photos(tmp_path_factory, photo_paths):
    """Real photos as PNG at assorted sizes (PNG: OpenCV's and Pillow's decoders agree exactly)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("png")
    out = []
    for i, p in enumerate(photo_paths):
        im = Image.open(p).convert("RGB")
        if i % 2:
            im = im.resize((im.width * 3 // 4 + 1, im.height // 2 + 3))
        out.append(root / f"{p.stem}.png")
        im.save(out[-1])
    return out


def _release_batch(paths):
    import torch

    from official_format import release_preprocess

    return torch.from_numpy(np.stack([release_preprocess(p) for p in paths]))


@pytest.mark.slow
def test_imported_torch_model_matches_the_current_release(official_b16, imported_b16, png_photos):
    """Default import-official = the authors' current inference code: cv2 resize 256 + center crop 224, k = 0.3."""
    import torch

    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.model import load_checkpoint
    from fgresq_sdk.preprocess import preprocess
    from official_format import RELEASE_SCORE_SCALE

    _, sd, img, deg = official_b16
    q_ref, s_ref = reference_forward(sd, img, deg, _release_batch(png_photos), score_scale=RELEASE_SCORE_SCALE)
    bundle = load_bundle(imported_b16)
    assert bundle.manifest["score_scale"] == RELEASE_SCORE_SCALE
    assert bundle.preprocess["resize"] == {"method": "bilinear-cv2", "size": [256, 256]}
    model = load_checkpoint(bundle.path("checkpoint"))
    x = torch.from_numpy(np.stack([preprocess(p, bundle.preprocess) for p in png_photos]))
    with torch.no_grad():
        q, s = model(x)
        p = torch.softmax(model.compare_logits(q[:-1], q[1:]), dim=1)
    p_ref = reference_compare(sd, q_ref[:-1], q_ref[1:])
    assert float(s_ref.std()) > 1e-3, "reference scores are degenerate; the test would prove nothing"
    assert torch.max(torch.abs(s - s_ref)).item() <= 1e-4
    assert torch.max(torch.abs(p - p_ref)).item() <= 1e-4
    # The old behaviour (squash + k = 1) is measurably different: the test can tell them apart.
    _, s_old = reference_forward(sd, img, deg, _batch(png_photos))
    assert torch.max(torch.abs(s_old - s_ref)).item() > 1e-3


@pytest.mark.slow
def test_imported_bundle_runs_torch_free_backend(official_b16, imported_b16, png_photos):
    """The imported bundle's ONNX graphs reproduce the release: score, and compare --raw = predict_pair."""
    from fgresq_sdk.scorer import Scorer
    from official_format import RELEASE_SCORE_SCALE

    _, sd, img, deg = official_b16
    q_ref, s_ref = reference_forward(sd, img, deg, _release_batch(png_photos), score_scale=RELEASE_SCORE_SCALE)
    scorer = Scorer(imported_b16, backend="onnxruntime", batch_size=4)
    scores = scorer.score(png_photos)
    assert np.max(np.abs(scores - s_ref.numpy())) <= 1e-4
    for a, b in [(0, 1), (1, 0), (2, 5)]:
        p_ref = reference_compare(sd, q_ref[a:a + 1], q_ref[b:b + 1])[0].numpy()
        raw = scorer.compare(png_photos[a], png_photos[b], raw=True)
        got = np.array([raw.p_first_better, raw.p_second_better, raw.p_similar])
        assert np.max(np.abs(got - p_ref)) <= 1e-4
        # The default answer is the order-symmetrised one built from the same two forwards.
        back = reference_compare(sd, q_ref[b:b + 1], q_ref[a:a + 1])[0].numpy()
        sym = scorer.compare(png_photos[a], png_photos[b])
        want = [(p_ref[0] + back[1]) / 2, (p_ref[1] + back[0]) / 2, (p_ref[2] + back[2]) / 2]
        assert np.max(np.abs(np.array([sym.p_first_better, sym.p_second_better, sym.p_similar]) - want)) <= 1e-4


@pytest.mark.slow
def test_jpeg_delta_against_the_release_is_small(official_b16, imported_b16, photo_paths):
    """JPEG: OpenCV's and Pillow's decoders may differ slightly; the measured delta stays small."""
    from fgresq_sdk.scorer import Scorer
    from official_format import RELEASE_SCORE_SCALE

    jpegs = [p for p in photo_paths if p.suffix == ".jpg"]
    _, sd, img, deg = official_b16
    _, s_ref = reference_forward(sd, img, deg, _release_batch(jpegs), score_scale=RELEASE_SCORE_SCALE)
    delta = np.max(np.abs(Scorer(imported_b16).score(jpegs) - s_ref.numpy()))
    print(f"JPEG |Δscore| vs the release: {delta:.2e}")
    assert delta <= 5e-3


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


def _import_cli(tmp_path, *options):
    import torch

    sd, img, deg = official_state(TINY, seed=13)
    ckpt = tmp_path / "FGResQ_v2.pth"
    if not ckpt.exists():
        torch.save({"state_dict": sd}, ckpt)
    out = tmp_path / ("b" + "".join(o.strip("-") for o in options))
    exe = Path(sys.executable).parent / "fgresq-sdk"
    res = subprocess.run([str(exe), "import-official", str(ckpt), "--config", "fgresq-vit-tiny", "--out", str(out),
                          *options], capture_output=True, text=True)
    return res, out, (sd, img, deg)


def test_import_defaults_follow_the_current_release_and_options_select_older(tmp_path, png_photos):
    import json

    import torch

    from fgresq_sdk.scorer import Scorer
    from official_format import RELEASE_SCORE_SCALE

    res, out, (sd, img, deg) = _import_cli(tmp_path)
    assert res.returncode == 0, res.stderr
    assert "follows the authors' current release" in res.stderr
    m = json.loads((out / "model.json").read_text())
    assert m["score_scale"] == RELEASE_SCORE_SCALE and m["preprocess"]["crop"]["size"] == [224, 224]
    _, s_ref = reference_forward(sd, img, deg, _release_batch(png_photos), score_scale=RELEASE_SCORE_SCALE)
    assert np.max(np.abs(Scorer(out).score(png_photos) - s_ref.numpy())) <= 1e-4
    # Earlier behaviour on request: squash to 224 with antialiasing, k = 1.
    res, old, _ = _import_cli(tmp_path, "--preprocess", "squash", "--score-scale", "1")
    assert res.returncode == 0 and "differs from the current release" in res.stderr
    _, s_old = reference_forward(sd, img, deg, _batch(png_photos))
    assert np.max(np.abs(Scorer(old).score(png_photos) - s_old.numpy())) <= 1e-4
    assert float(torch.max(torch.abs(s_old - s_ref))) > 1e-3
    res, _, _ = _import_cli(tmp_path, "--preprocess", "lanczos")
    assert res.returncode == 2 and "unknown --preprocess" in res.stderr and "Traceback" not in res.stderr
