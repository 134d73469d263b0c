"""The NIQE-style no-reference baseline (train/niqe.py) that eval reports beside Laplacian variance."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from fgresq_sdk.train import niqe
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


def test_shipped_pristine_model_is_a_valid_gaussian_from_fit_photos():
    model = niqe.load_pristine()
    cov = np.asarray(model["cov"])
    assert cov.shape == (36, 36) and np.allclose(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > -1e-9  # positive semi-definite
    assert model["n_images"] >= 300 and model["patch"] == niqe.PATCH
    assert "fit split" in model["source"] and "mate" not in model["source"]


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_distance_grows_with_blur_noise_and_flatness(name):
    """A clean photo is nearer the pristine model than its blurred, noisy or flat versions."""
    model = niqe.load_pristine()
    luma = to_luma(photo(name))[:256, :256]
    clean = niqe.distance(luma, model)
    blurred = niqe.distance(ndimage.gaussian_filter(luma, 3.0), model)
    noisy = niqe.distance(np.clip(luma + np.random.default_rng(0).normal(0, 30, luma.shape), 0, 255), model)
    flat = niqe.distance(np.full_like(luma, 128.0), model)
    assert clean < blurred and clean < noisy and clean < flat


def test_fit_cli_writes_a_model_and_never_overwrites(tmp_path, capsys):
    refs = tmp_path / "refs"
    refs.mkdir()
    out = tmp_path / "pristine.json"
    for name in ("coffee", "chelsea", "rocket"):  # 10 sharp patches between them: too few for 36 features
        Image.fromarray(photo(name)).save(refs / f"{name}.png")
    assert niqe._fit_main(["--references", str(refs), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(refs) in err[0] and "usable patches" in err[0] and not out.exists()
    for name in ("astronaut", "camera", "coins", "immunohistochemistry"):
        Image.fromarray(photo(name)).save(refs / f"{name}.png")
    assert niqe._fit_main(["--references", str(refs), "--out", str(out), "--source", "skimage"]) == 0
    model = niqe.load_pristine(out)
    assert model["n_images"] == 7 and model["source"] == "skimage" and len(model["images_sha256"]) == 64
    before = out.read_bytes()
    capsys.readouterr()
    assert niqe._fit_main(["--references", str(refs), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "exists" in err[0]
    assert out.read_bytes() == before
    assert niqe._fit_main(["--references", str(tmp_path / "none"), "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_load_pristine_refuses_another_format(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other", "mean": [0.0] * 36}))
    with pytest.raises(ValueError, match="fgresq-niqe-pristine/1"):
        niqe.load_pristine(bad)
