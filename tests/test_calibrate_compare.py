"""Calibrated comparison probabilities (train/calibrate_compare.py): the fit, the bundle it writes, the default."""
from __future__ import annotations

import numpy as np
import pytest

from fgresq_sdk.bundle import default_bundle_path, load_bundle
from fgresq_sdk.heads import CompareHeadNP

from conftest import needs_torch


def _planted(n: int, temperature: float, delta: float, seed: int = 0):
    """Pairs whose labels are drawn from softmax(l / T + (0, 0, δ)) of logits l (both presentation orders
    antisymmetric, so the symmetrised probabilities are that softmax), l scaled by T so that they look as
    overconfident as a head trained for decisions."""
    rng = np.random.default_rng(seed)
    d = rng.normal(0.0, 3.0, n)
    true = np.stack([d / 2, -d / 2, np.zeros(n)], 1)
    shift = np.array([0.0, 0.0, delta])
    p = np.exp(true + shift)
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    l_ab = true * temperature
    return l_ab, l_ab[:, [1, 0, 2]], y


@needs_torch
def test_the_fit_recovers_a_planted_temperature_and_offset_and_keeps_the_decisions():
    from fgresq_sdk.train.calibrate_compare import calibrated_probs, fit_calibration, readings

    l_ab, l_ba, y = _planted(6000, temperature=12.0, delta=0.8)
    t, d = fit_calibration(l_ab, l_ba, y)
    assert t == pytest.approx(12.0, rel=0.1) and d == pytest.approx(0.8, abs=0.15)
    before, after = readings(l_ab, l_ba, y, 1.0, 0.0), readings(l_ab, l_ba, y, t, d)
    assert after["three_way_nll"] < 0.5 * before["three_way_nll"]
    assert after["ranked_acc"] == before["ranked_acc"]  # antisymmetric logits: T cannot move a decision
    pref1, _ = calibrated_probs(l_ab, l_ba, 1.0, 0.0)
    pref, three = calibrated_probs(l_ab, l_ba, t, d)
    assert np.array_equal(pref1 > 0.5, pref > 0.5) and np.allclose(three.sum(1), 1.0)
    with pytest.raises(ValueError, match="first / second / similar"):
        fit_calibration(l_ab, l_ba, np.full(len(y), 5))


@needs_torch
def test_the_bundle_it_writes_reports_tempered_probabilities_and_the_same_scores(tiny_bundle, tmp_path, capsys):
    from fgresq_sdk.scorer import Scorer
    from fgresq_sdk.train import calibrate_compare
    from fgresq_sdk.train.manifest import Manifest

    from .test_eval import build_tiny_manifest

    build_tiny_manifest(tmp_path / "data").save(tmp_path / "val")
    out = tmp_path / "calibrated"
    args = ["--model", str(tiny_bundle), "--val-manifest", str(tmp_path / "val"), "--out", str(out)]
    assert calibrate_compare.main(args) == 0
    new = load_bundle(out)
    new.verify_all()
    sec = new.manifest["compare_calibration"]
    t, d = sec["temperature"], sec["similar_offset"]
    assert t > 0 and sec["fit"]["after"]["three_way_nll"] <= sec["fit"]["before"]["three_way_nll"] + 1e-9
    assert (out / new.entry("encoder")["path"]).read_bytes() == (tiny_bundle / new.entry("encoder")["path"]).read_bytes()
    old_head = CompareHeadNP.from_npz(str(tiny_bundle / "heads.npz"))
    new_head = CompareHeadNP.from_npz(str(out / "heads.npz"))
    man = Manifest.load(tmp_path / "val")
    paths = [man.image_path(i) for i in sorted(man.images)][:6]
    q_old, s_old = Scorer(tiny_bundle).encode(paths)
    q_new, s_new = Scorer(out).encode(paths)
    assert np.array_equal(s_old, s_new) and np.array_equal(q_old, q_new)
    first, second = old_head.split_terms(q_old)
    logits = first[:, None, :] + second[None, :, :] + old_head.bias
    want = np.exp(logits / t + np.array([0.0, 0.0, d]))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(new_head.all_pairs_probs(q_new), want, atol=1e-5)
    # the runtime's compare reads the new head: its verdict probabilities are the tempered ones
    c_old, c_new = Scorer(tiny_bundle).compare(paths[0], paths[1]), Scorer(out).compare(paths[0], paths[1])
    assert c_new.probs != pytest.approx(c_old.probs, abs=1e-6)
    # a second calibration, or an --out that holds the user's files: one line, nothing written or removed
    capsys.readouterr()
    assert calibrate_compare.main(["--model", str(out)] + args[2:4] + ["--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already calibrated" in err[0] and not (tmp_path / "again").exists()
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    assert calibrate_compare.main(args[:4] + ["--out", str(keep)]) == 2
    assert (keep / "notes.txt").read_text() == "mine"


def test_the_embedded_default_states_probabilities_short_of_certainty():
    """Before calibration the default called 2,102 of the test photos' 2,140 ranked pairs at P >= 0.99, most at
    1 - 1e-15, and 3.2 % of those were wrong. Calibrated on the val photos, a clear pair still reads near 1 and
    a subtle one does not read as certain."""
    from PIL import Image, ImageFilter

    from fgresq_sdk.scorer import Scorer

    from conftest import PHOTOS, photo

    bundle = load_bundle(default_bundle_path())
    sec = bundle.manifest["compare_calibration"]
    assert sec["temperature"] > 1 and sec["fit"]["after"]["three_way_nll"] < sec["fit"]["before"]["three_way_nll"]
    im = Image.fromarray(photo(PHOTOS[0]))
    sharp, soft, blurred = im, im.filter(ImageFilter.GaussianBlur(0.6)), im.filter(ImageFilter.GaussianBlur(4))
    scorer = Scorer(bundle.root)
    clear, subtle = scorer.compare(sharp, blurred), scorer.compare(sharp, soft)
    assert clear.p_first_better > 0.9
    assert max(subtle.probs) < 0.999, subtle.probs


@needs_torch
def test_read_back_returns_the_head_the_calibration_was_fitted_on():
    """export/read_back.py undoes the temperature and offset, so a refit on the read-back model (fit_prior's pair
    term weighs the head's margin) sees the head as trained, not as tempered for display."""
    from fgresq_sdk.export.read_back import read_back

    bundle = load_bundle(default_bundle_path())
    sec = bundle.manifest["compare_calibration"]
    t, d = sec["temperature"], sec["similar_offset"]
    model, _ = read_back(bundle.root)
    tempered = CompareHeadNP.from_npz(str(bundle.root / "heads.npz"))
    w = model.compare_head.weight.detach().double().numpy()
    b = model.compare_head.bias.detach().double().numpy()
    assert np.abs(w).max() > 1.5 * np.abs(tempered.weight).max()  # not the tempered head
    np.testing.assert_allclose(w / t, tempered.weight, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(b / t + np.array([0.0, 0.0, d]), tempered.bias, rtol=1e-6, atol=1e-6)
