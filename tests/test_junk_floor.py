"""The prior's junk floor: it moves the comparisons of an image whose score logit is below its threshold against
images above it, by κ, and nothing else (torch, the exported graph and read_back alike); its fit chooses what its
grid says and gives no weight where the comparisons are already right."""
from __future__ import annotations

import numpy as np
import pytest

from .conftest import HAS_TORCH, photo
from .test_pair_term import exported_and_read_back, model_with_pair_term
from .test_prior import prior_inputs

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs torch")


def test_the_floor_is_chosen_by_val_pair_acc_and_gets_no_weight_where_comparisons_are_right():
    from fgresq_sdk.train.junk_floor import choose_floor, floor_margin

    rng = np.random.default_rng(0)
    n_clean, n_junk = 200, 20
    logit = np.concatenate([rng.normal(2.0, 1.0, n_clean), rng.normal(-6.0, 0.5, n_junk)])
    junk = np.arange(n_clean + n_junk) >= n_clean
    a = rng.integers(0, n_clean + n_junk, 1500)
    b = rng.integers(0, n_clean + n_junk, 1500)
    keep = (a != b) & ~(junk[a] & junk[b])  # restored versions against each other and against junk
    a, b = a[keep], b[keep]
    y = (logit[a] > logit[b]).astype(float)
    # a margin right on every pair of two restored versions, wrong (strongly) on every pair with a hard negative
    margin = np.where(y > 0.5, 1.0, -1.0) * np.where(junk[a] | junk[b], -3.0, 1.0)
    t, kappa, rows = choose_floor(margin, logit, a, b, y, logit[~junk])
    assert kappa > 0 and t <= logit[~junk].min() + 1e-12  # the lowest quantile already separates them
    fixed = margin + kappa * floor_margin(logit, a, b, t)
    assert np.all(np.sign(fixed) == np.where(y > 0.5, 1.0, -1.0))
    assert {r["kappa"] for r in rows} >= {0.0, kappa} and len(rows) % len({r["kappa"] for r in rows}) == 0
    # comparisons already right everywhere: the tie goes to κ = 0, the floor does nothing
    right = np.where(y > 0.5, 1.0, -1.0)
    assert choose_floor(right, logit, a, b, y, logit[~junk])[1] == 0.0
    # the floor's margin: a step, one unit against an image below t; two on the same side of it do not move
    np.testing.assert_allclose(floor_margin(np.array([5.0, -1.0, -3.0]), np.array([0, 1, 2]), np.array([1, 2, 0]), 0.0),
                               [1.0, 0.0, -1.0])


@needs_torch
def test_the_floor_moves_only_comparisons_of_images_below_it_and_survives_export_and_read_back(tmp_path):
    import copy

    import torch

    from fgresq_sdk.heads import CompareHeadNP
    from fgresq_sdk.train.junk_floor import install_junk_floor

    _, model, _ = model_with_pair_term(junk_floor=True)
    x = torch.randn(6, 3, 224, 224) * torch.tensor([0.05, 0.1, 0.3, 0.6, 1.0, 1.5]).reshape(6, 1, 1, 1)
    with torch.no_grad():
        q0, s0 = model(x)  # slope 0: the floor is in the graph but moves nothing
        logit = torch.logit(s0.double()).numpy()
    t = float(np.median(logit))
    below = logit < t
    assert 0 < below.sum() < len(below)
    kappa = 3.0
    install_junk_floor(model, t, kappa)
    with torch.no_grad():
        q, s = model(x)
    assert torch.equal(s, s0)  # the score is read before the floor
    np.testing.assert_array_equal(q[~below].numpy(), q0[~below].numpy())  # images above it: not moved at all
    head = CompareHeadNP(model.compare_head.weight.detach().double().numpy(),
                         model.compare_head.bias.detach().double().numpy())
    ia, ib = np.array([0, 1, 2, 3, 4, 5, 0]), np.array([5, 4, 3, 2, 1, 0, 1])
    moved = head.pair_logits(q.double().numpy()[ia], q.double().numpy()[ib])
    plain = head.pair_logits(q0.double().numpy()[ia], q0.double().numpy()[ib])
    step = (logit < t).astype(np.float64)
    d = -0.5 * kappa * (step[ia] - step[ib])  # the unit's difference; the margin moves by twice it
    assert (d == 0).any() and (d != 0).any()  # pairs on one side of t and pairs across it
    assert np.abs(d).max() > 0.1
    np.testing.assert_allclose(moved - plain, np.stack([d, -d, 0 * d], 1), atol=2e-4 * max(1.0, np.abs(d).max()))
    # a prior without the pair term has no direction to move along
    from fgresq_sdk.model import FGResQ
    cfg = copy.deepcopy(model.cfg)
    cfg["prior"]["pair"] = False
    with pytest.raises(ValueError, match="junk_floor"):
        FGResQ(cfg)
    # the exported graph computes the same, and reads back into the same floor
    again = exported_and_read_back(model, x, q, s, tmp_path)
    assert again.cfg["prior"]["junk_floor"] is True
    assert torch.equal(again.prior.junk_threshold, model.prior.junk_threshold)
    assert torch.equal(again.prior.junk_slope, model.prior.junk_slope)


@needs_torch
def test_fit_prior_with_the_floor_chooses_it_on_the_score_val_and_records_what_it_decides(tmp_path, capsys):
    from fgresq_sdk.train import fit_prior as fp
    from fgresq_sdk.train.synthetic import generate

    ckpt, stems = prior_inputs(tmp_path)
    photos = [(n, photo(n)) for n in ("astronaut", "coffee", "chelsea", "rocket", "brick", "camera", "grass", "gravel")]
    kw = dict(size=64, levels=4, tasks=("deblurring", "denoising"), junk=True,
              junk_weights={"grey_noise": 1.0, "resized_noise": 1.0, "flat": 1.0})
    generate(photos[:6], tmp_path / "fit-j", seed=0, **kw)
    generate(photos[6:] + photos[:2], tmp_path / "val-j", seed=2, **kw)
    model, rec = fp.fit_prior(ckpt, stems, tmp_path / "fit-j", tmp_path / "val-j", lambdas=(1.0,), cs=(0.0, 1.0),
                              check_sha256=False, pair=True, junk_floor=True)
    jf = rec["junk_floor"]
    best = max(jf["grid"], key=lambda r: (round(r["val_pair_acc"], 3), -r["kappa"], -r["quantile"]))
    assert (jf["threshold"], jf["kappa"]) == (best["threshold"], best["kappa"])
    assert jf["val_pair_acc"]["after"] == pytest.approx(best["val_pair_acc"], abs=1e-12)
    assert jf["val_pair_acc"]["after"] >= jf["val_pair_acc"]["before"]
    assert jf["hard_negative_pairs"] > 0 and model.cfg["prior"]["junk_floor"] is True
    assert float(model.prior.junk_slope) == pytest.approx(0.5 * jf["kappa"])
    with pytest.raises(ValueError, match="needs the pair term"):
        fp.fit_prior(ckpt, stems, tmp_path / "fit-j", tmp_path / "val-j", check_sha256=False, junk_floor=True)
    out = tmp_path / "no.safetensors"
    with pytest.raises(SystemExit) as stop:
        fp.main(["--checkpoint", str(ckpt), "--weights", str(tmp_path), "--fit-manifest", str(tmp_path / "fit-j"),
                 "--val-manifest", str(tmp_path / "val-j"), "--out", str(out), "--junk-floor"])
    assert stop.value.code == 2 and "--junk-floor needs --pair-term" in capsys.readouterr().err and not out.exists()
