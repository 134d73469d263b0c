"""export/read_back.py: a bundle's torch model read back from its graph and heads, for bundles shipped without
their checkpoint (the embedded default)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import PRIOR_SHAPES, needs_torch, random_convs


def _prior_model(seed: int):
    import torch

    from fgresq_sdk.model import FGResQ
    from fgresq_sdk.train.fit_prior import PRIOR, attach_prior

    torch.manual_seed(seed)
    model = attach_prior(FGResQ("fgresq-compact-cnn-ms2").eval(), [random_convs(PRIOR_SHAPES, seed=s) for s in (5, 6)],
                         3, prior=dict(PRIOR, kurtosis=True, classical=True))
    with torch.no_grad():  # a prior term that moves the score, as a fitted one does (distinct biases too: the
        # exporter stores identical tensors, such as two zero biases, once under one of their names)
        for p in (model.prior.readout.weight, model.prior.gate.weight, model.prior.readout.bias, model.prior.gate.bias):
            p.copy_(torch.randn_like(p) * 0.05)
    return model


def _without_checkpoint(bundle, out):
    """The bundle as the embedded default ships: no checkpoint file, its manifest entry gone."""
    shutil.copytree(bundle, out)
    (out / "model.safetensors").unlink()
    manifest = json.loads((out / "model.json").read_text())
    del manifest["files"]["checkpoint"]
    (out / "model.json").write_text(json.dumps(manifest, indent=1))
    return out


@needs_torch
def test_weights_come_back_exactly_and_the_prior_can_be_dropped(tmp_path):
    import torch

    from fgresq_sdk.export.onnx_export import export_bundle
    from fgresq_sdk.export.read_back import main

    model = _prior_model(seed=0)
    bundle = _without_checkpoint(export_bundle(model, tmp_path / "b", source="test"), tmp_path / "shipped")
    assert main([str(bundle), "--out", str(tmp_path / "full.safetensors")]) == 0
    assert main([str(bundle), "--out", str(tmp_path / "plain.safetensors"), "--drop-prior"]) == 0

    from fgresq_sdk.model import load_checkpoint, read_checkpoint_metadata

    full, plain = load_checkpoint(tmp_path / "full.safetensors"), load_checkpoint(tmp_path / "plain.safetensors")
    want = model.state_dict()
    for k, v in full.state_dict().items():
        if k != "degradation_proj":  # training only: not in the graph, left at init and recorded
            assert torch.equal(v, want[k]), k
    record = json.loads(read_checkpoint_metadata(tmp_path / "full.safetensors")["read_back"])
    assert record["training_only_left_at_init"] == ["degradation_proj"]
    assert record["max_abs_score_delta"] <= 1e-4
    assert plain.prior is None and "prior" not in plain.cfg and full.cfg["prior"]["kurtosis"] is True
    assert full.cfg["prior"]["classical"] is True
    x = torch.randn(2, 3, 224, 224) * 0.5
    with torch.no_grad():
        q_full, s_full = full(x)
        q_plain, s_plain = plain(x)
        assert torch.equal(q_full, q_plain)  # the prior never touches the features
        assert torch.allclose(s_plain, torch.sigmoid(model.score_logit(q_plain)).squeeze(-1), atol=1e-6)
        assert (s_full - s_plain).abs().max() > 1e-3  # ... and the dropped term did move the score


@needs_torch
def test_bundles_that_cannot_come_back_exactly_are_refused_in_one_line(tmp_path, tiny_bundle, capsys):
    from fgresq_sdk.bundle import sha256_file
    from fgresq_sdk.export.onnx_export import export_bundle
    from fgresq_sdk.export.read_back import main

    # the ViT's attention is re-written at export (separate q/k/v): its weights are not the graph's initializers
    out = tmp_path / "vit.safetensors"
    assert main([str(tiny_bundle), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not hold" in err and not out.exists()
    # a graph whose head was changed after export: heads.npz and encoder.onnx disagree
    bundle = export_bundle(_prior_model(seed=1), tmp_path / "b", source="test")
    heads = dict(np.load(bundle / "heads.npz"))
    heads["head_bias"] = heads["head_bias"] + 1.0
    np.savez(bundle / "heads.npz", **heads)
    manifest = json.loads((bundle / "model.json").read_text())  # listed with its new digest: the files agree
    manifest["files"]["heads"]["sha256"] = sha256_file(bundle / "heads.npz")
    (bundle / "model.json").write_text(json.dumps(manifest, indent=1))
    assert main([str(bundle), "--out", str(out)]) == 2
    assert "head.bias differs between encoder.onnx and heads.npz" in capsys.readouterr().err and not out.exists()
    # a user's file is not replaced without --force
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(b"user data")
    assert main([str(tiny_bundle), "--out", str(mine)]) == 2
    assert "exists" in capsys.readouterr().err and mine.read_bytes() == b"user data"


@needs_torch
def test_the_embedded_default_reads_back_within_the_parity_bound():
    from fgresq_sdk.bundle import default_bundle_path
    from fgresq_sdk.export.read_back import read_back

    path = default_bundle_path()
    if path is None:
        pytest.skip("no embedded default in this install")
    model, record = read_back(path, drop_prior=True)
    assert model.prior is None and record["max_abs_score_delta"] <= 1e-4 and record["max_abs_feature_delta"] <= 1e-3
