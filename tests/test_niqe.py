"""The NIQE-style statistics (fgresq_sdk/niqe.py: eval's no-reference baseline and the runtime's naturalness term)
and the pristine-model fit (train/niqe.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from fgresq_sdk import niqe
from fgresq_sdk.train import niqe as niqe_fit
from fgresq_sdk.train.metrics import to_luma

from .conftest import photo

RNG = np.random.default_rng(7)
N = 200_000


def _aggd_sample(draw, left_scale: float, right_scale: float) -> np.ndarray:
    """An asymmetric generalised Gaussian: each side's mass is proportional to its scale."""
    left = RNG.random(N) < left_scale / (left_scale + right_scale)
    return np.where(left, -np.abs(draw(N)) * left_scale, np.abs(draw(N)) * right_scale)


def test_ggd_fit_recovers_gaussian_and_laplace_shapes():
    shape, var = niqe.ggd_fit(np.stack([RNG.normal(size=N) * 3.0, RNG.laplace(size=N)]))
    assert shape == pytest.approx([2.0, 1.0], abs=0.05)
    assert var == pytest.approx([9.0, 2.0], rel=0.03)


@pytest.mark.parametrize("draw,shape,mean", [(lambda n: RNG.normal(size=n), 2.0, np.sqrt(2 / np.pi)),
                                             (lambda n: RNG.laplace(size=n), 1.0, 1.0)])
def test_aggd_fit_recovers_shape_mean_and_side_variances(draw, shape, mean):
    a, m, lvar, rvar = niqe.aggd_fit(_aggd_sample(draw, 1.0, 2.0)[None])
    side_var = 1.0 if shape == 2.0 else 2.0  # variance of one unit-scale side
    assert a[0] == pytest.approx(shape, abs=0.05)
    assert m[0] == pytest.approx(mean, rel=0.05)
    assert (lvar[0], rvar[0]) == pytest.approx((side_var, 4 * side_var), rel=0.05)


def test_features_shape_and_small_image_error():
    luma = to_luma(photo("astronaut"))
    f, sharp = niqe.features(luma)
    assert f.shape == ((512 // 64) ** 2, niqe.N_FEATURES) and sharp.shape == (64,)
    assert np.all(np.isfinite(f)) and np.all(sharp >= 0)
    with pytest.raises(ValueError, match="at least 64x64"):
        niqe.features(luma[:40, :300])


def test_gaussian_blur_matches_scipy():
    """The runtime has no scipy: its separable filter must be scipy's gaussian_filter(7/6, truncate 2.5, nearest)."""
    a = RNG.uniform(0, 255, (67, 90))
    want = ndimage.gaussian_filter(a, 7 / 6, truncate=2.5, mode="nearest")
    assert np.abs(niqe.gaussian_blur(a) - want).max() < 1e-10


def test_shipped_pristine_model_is_a_valid_gaussian_from_fit_photos():
    raw = json.loads(niqe_fit.DEFAULT_PRISTINE.read_text())
    model = niqe_fit.load_pristine()  # validated: finite, symmetric, positive definite
    assert model.cov.shape == (36, 36) and np.linalg.eigvalsh(model.cov).min() > 0
    assert raw["n_images"] >= 300 and raw["patch"] == niqe.PATCH
    assert "fit split" in raw["source"] and "mate" not in raw["source"]


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_distance_grows_with_blur_noise_and_flatness(name):
    """A clean photo is nearer the pristine model than its blurred, noisy or flat versions."""
    model = niqe_fit.load_pristine()
    luma = to_luma(photo(name))[:256, :256]
    clean = model.distance(luma)
    blurred = model.distance(ndimage.gaussian_filter(luma, 3.0))
    noisy = model.distance(np.clip(luma + np.random.default_rng(0).normal(0, 30, luma.shape), 0, 255))
    flat = model.distance(np.full_like(luma, 128.0))
    assert clean < blurred and clean < noisy and clean < flat == niqe.FLAT_DISTANCE


def test_flat_patches_are_left_out_not_fitted_to_rounding_noise():
    """A patch whose MSCN coefficients are rounding noise has no statistics: its row is NaN (either scale), the
    rest of the image is measured as without it, and noise of 1e-9 grey levels does not make a flat frame textured."""
    model = niqe_fit.load_pristine()
    luma = to_luma(photo("astronaut"))[:256, :256]
    f_clean, _ = niqe.features(luma)
    part = luma.copy()
    part[:96, :] = 97.0  # the first patch row flat, and its 7x7 windows too (rows 64-95 reach into row 1's)
    f, _ = niqe.features(part)
    flat_rows = np.isnan(f).any(axis=1)
    assert flat_rows[:4].all() and not flat_rows[4:].any() and np.isnan(f[:4]).all()
    assert np.array_equal(f[8:], f_clean[8:])  # patches away from the flat band are measured as before
    assert model.distance(part) < niqe.FLAT_DISTANCE
    speck = np.full((224, 224), 128.0) + RNG.normal(0, 1e-9, (224, 224))
    assert model.distance(speck) == niqe.FLAT_DISTANCE


def test_luma_of_view_undoes_the_bundle_normalisation():
    img = photo("coffee")[:96, :128]
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    view = (img.transpose(2, 0, 1) / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert np.abs(niqe.luma_of_view(view.astype(np.float32), mean, std) - to_luma(img)).max() < 1e-3


@pytest.mark.parametrize("change,match", [(lambda m: m.update(format="other"), "fgresq-niqe-pristine/1"),
                                          (lambda m: m.update(mean=[0.0] * 35), "36-feature"),
                                          (lambda m: m.update(patch=96), "64-px"),
                                          (lambda m: m["cov"][0].__setitem__(0, -1.0), "positive definite"),
                                          (lambda m: m["cov"][0].__setitem__(1, 5.0), "symmetric"),
                                          (lambda m: m.update(mean="x"), "not numbers")])
def test_pristine_model_refuses_what_it_cannot_use(change, match):
    raw = json.loads(niqe_fit.DEFAULT_PRISTINE.read_text())
    change(raw)
    with pytest.raises(ValueError, match=match):
        niqe.Pristine.from_dict(raw, where="p.json")


def test_fit_cli_writes_a_model_and_never_overwrites(tmp_path, capsys):
    refs = tmp_path / "refs"
    refs.mkdir()
    out = tmp_path / "pristine.json"
    for name in ("coffee", "chelsea", "rocket"):  # 10 sharp patches between them: too few for 36 features
        Image.fromarray(photo(name)).save(refs / f"{name}.png")
    assert niqe_fit._fit_main(["--references", str(refs), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(refs) in err[0] and "usable patches" in err[0] and not out.exists()
    for name in ("astronaut", "camera", "coins", "immunohistochemistry"):
        Image.fromarray(photo(name)).save(refs / f"{name}.png")
    assert niqe_fit._fit_main(["--references", str(refs), "--out", str(out), "--source", "skimage"]) == 0
    niqe_fit.load_pristine(out)  # loads: a usable model
    model = json.loads(out.read_text())
    assert model["n_images"] == 7 and model["source"] == "skimage" and len(model["images_sha256"]) == 64
    before = out.read_bytes()
    capsys.readouterr()
    assert niqe_fit._fit_main(["--references", str(refs), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "exists" in err[0]
    assert out.read_bytes() == before
    assert niqe_fit._fit_main(["--references", str(tmp_path / "none"), "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_load_pristine_refuses_another_format(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other", "mean": [0.0] * 36}))
    with pytest.raises(ValueError, match="fgresq-niqe-pristine/1"):
        niqe_fit.load_pristine(bad)
