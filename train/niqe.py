"""NIQE-style no-reference baseline: distance of an image's natural-scene statistics from those of clean photos.

Laplacian variance (the eval's first no-reference peer) only measures sharpness, so it is perfect where a task
only blurs (dehazing's veil lowers it monotonically) and inverted where a task adds high frequencies (noise,
rain). NIQE (Mittal, Soundararajan & Bovik, "Making a completely blind image quality analyzer", 2013) is the
classical *opinion-unaware* peer: it learns nothing from quality labels, only what undistorted photos look like,
so it is a fair no-reference comparison for a model trained on synthetic labels.

The statistics, per patch and at two scales (the luma and its 2x2-mean downsample):
* MSCN coefficients (local mean subtracted, divided by local contrast; Gaussian window 7x7, sigma 7/6, C = 1
  on the 0-255 scale) fitted with a generalised Gaussian (shape, variance): 2 numbers;
* their products with the horizontal, vertical and both diagonal neighbours fitted with an asymmetric
  generalised Gaussian (shape, mean, left and right variance): 16 numbers.
36 features per patch. The pristine model is a multivariate Gaussian over the sharpest patches of clean fit
photos (patch sharpness = mean local contrast, kept above 0.75 x the image's sharpest patch); an image's
quality is the Mahalanobis-type distance between the pristine Gaussian and the Gaussian of its own patches
(pooled covariance), lower = better.

Differences from the authors' MATLAB release, chosen for this data: 64-pixel patches (the synthetic crops are
256 px; the original 96-pixel patches would leave 4 per image), a 2x2-mean downsample instead of bicubic, and the
pristine model fitted on the fit split's clean references (`train/data/niqe-pristine-set2.json`, never on val,
test or mate-backgrounds photos), not on the authors' 125 photos.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

FORMAT = "fgresq-niqe-pristine/1"
PATCH = 64
SHARPNESS_FRACTION = 0.75
N_FEATURES = 36
DEFAULT_PRISTINE = Path(__file__).resolve().parent / "data" / "niqe-pristine-set2.json"
_C = 1.0  # MSCN stabiliser on the 0-255 scale


@lru_cache(maxsize=1)
def _shape_grid() -> tuple[np.ndarray, np.ndarray]:
    """Shape values and their moment ratio Γ(1/a)Γ(3/a)/Γ(2/a)², shared by both fits (the AGGD uses its inverse)."""
    alpha = np.arange(0.2, 10.0, 0.001)
    lg = np.vectorize(math.lgamma)
    rho = np.exp(lg(1 / alpha) + lg(3 / alpha) - 2 * lg(2 / alpha))
    return alpha, rho


def _nearest_shape(rho: np.ndarray) -> np.ndarray:
    """Moment-matching estimate: the grid shape whose ratio is nearest (the ratio falls with the shape)."""
    alpha, grid = _shape_grid()
    order = grid[::-1]  # increasing
    idx = np.clip(np.searchsorted(order, rho), 1, len(order) - 1)
    pick = np.where(np.abs(order[idx] - rho) < np.abs(order[idx - 1] - rho), idx, idx - 1)
    return alpha[::-1][pick]


def ggd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shape, variance) of a zero-mean generalised Gaussian per row of x (N, M), by moment matching."""
    x = np.asarray(x, np.float64)
    var = np.mean(x * x, axis=-1)
    mabs = np.mean(np.abs(x), axis=-1)
    rho = np.divide(var, mabs * mabs, out=np.full_like(var, np.inf), where=mabs > 0)
    return _nearest_shape(rho), var


def aggd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(shape, mean, left variance, right variance) of an asymmetric generalised Gaussian per row of x (N, M)."""
    x = np.asarray(x, np.float64)
    neg, pos = x < 0, x > 0
    lvar = np.sum(np.where(neg, x * x, 0.0), axis=-1) / np.maximum(neg.sum(-1), 1)
    rvar = np.sum(np.where(pos, x * x, 0.0), axis=-1) / np.maximum(pos.sum(-1), 1)
    sl, sr = np.sqrt(lvar), np.sqrt(rvar)
    gamma = np.divide(sl, sr, out=np.ones_like(sl), where=sr > 0)
    mabs = np.mean(np.abs(x), axis=-1)
    msq = np.mean(x * x, axis=-1)
    r_hat = np.divide(mabs * mabs, msq, out=np.zeros_like(msq), where=msq > 0)
    big_r = r_hat * (gamma ** 3 + 1) * (gamma + 1) / (gamma ** 2 + 1) ** 2
    # the AGGD ratio Γ(2/a)²/(Γ(1/a)Γ(3/a)) is the GGD ratio's inverse
    rho = np.divide(1.0, big_r, out=np.full_like(big_r, np.inf), where=big_r > 0)
    shape = _nearest_shape(rho)
    g1, g2, g3 = (np.exp(np.vectorize(math.lgamma)(k / shape)) for k in (1, 2, 3))
    mean = (sr - sl) * (g2 / g1) * np.sqrt(g1 / g3)
    return shape, mean, lvar, rvar


def mscn(luma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(MSCN coefficients, local contrast) of a luma on the 0-255 scale."""
    from scipy import ndimage

    i = np.asarray(luma, np.float64)
    mu = ndimage.gaussian_filter(i, 7 / 6, truncate=2.5, mode="nearest")
    sigma = np.sqrt(np.abs(ndimage.gaussian_filter(i * i, 7 / 6, truncate=2.5, mode="nearest") - mu * mu))
    return (i - mu) / (sigma + _C), sigma


def _patches(a: np.ndarray, size: int) -> np.ndarray:
    """(N, size, size) non-overlapping patches covering the image's top-left whole-patch grid."""
    ny, nx = a.shape[0] // size, a.shape[1] // size
    return a[:ny * size, :nx * size].reshape(ny, size, nx, size).swapaxes(1, 2).reshape(ny * nx, size, size)


def _scale_features(luma: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 18) features and (N,) sharpness of the patches of one scale."""
    m, sigma = mscn(luma)
    p = _patches(m, size)
    n = len(p)
    shifted = (p[:, :, :-1] * p[:, :, 1:],            # horizontal
               p[:, :-1, :] * p[:, 1:, :],            # vertical
               p[:, :-1, :-1] * p[:, 1:, 1:],         # main diagonal
               p[:, 1:, :-1] * p[:, :-1, 1:])         # anti-diagonal
    cols = list(ggd_fit(p.reshape(n, -1)))
    for s in shifted:
        cols.extend(aggd_fit(s.reshape(n, -1)))
    return np.stack(cols, axis=1), _patches(sigma, size).reshape(n, -1).mean(axis=1)


def features(luma: np.ndarray, patch: int = PATCH) -> tuple[np.ndarray, np.ndarray]:
    """(N, 36) patch features at two scales and (N,) patch sharpness (scale 1) of a 0-255 luma."""
    luma = np.asarray(luma, np.float64)
    if luma.ndim != 2 or min(luma.shape) < patch:
        raise ValueError(f"NIQE needs a luma of at least {patch}x{patch} pixels, got shape {luma.shape}")
    f1, sharp = _scale_features(luma, patch)
    h, w = (luma.shape[0] // 2) * 2, (luma.shape[1] // 2) * 2
    half = luma[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    f2, _ = _scale_features(half, patch // 2)
    return np.concatenate([f1, f2[:len(f1)]], axis=1), sharp


def fit_pristine(lumas, patch: int = PATCH, sharpness_fraction: float = SHARPNESS_FRACTION) -> dict:
    """The pristine multivariate Gaussian over the sharpest patches of clean photos."""
    kept, n_images = [], 0
    for luma in lumas:
        f, sharp = features(luma, patch)
        if sharp.max() <= 0:
            continue  # a flat image has no sharp patch to learn from
        kept.append(f[sharp > sharpness_fraction * sharp.max()])
        n_images += 1
    if not kept:
        raise ValueError("no usable (non-flat) images to fit the pristine model")
    f = np.concatenate(kept)
    f = f[np.all(np.isfinite(f), axis=1)]
    if len(f) <= N_FEATURES:
        raise ValueError(f"only {len(f)} usable patches; the pristine model needs more than {N_FEATURES}")
    return {"format": FORMAT, "patch": patch, "sharpness_fraction": sharpness_fraction,
            "n_images": n_images, "n_patches": int(len(f)),
            "mean": f.mean(axis=0).tolist(), "cov": np.cov(f, rowvar=False).tolist()}


def load_pristine(path: Path | str | None = None) -> dict:
    p = Path(path) if path is not None else DEFAULT_PRISTINE
    model = json.loads(p.read_text())
    if model.get("format") != FORMAT or len(model.get("mean", [])) != N_FEATURES:
        raise ValueError(f"{p}: not a {FORMAT} file with {N_FEATURES} features")
    return model


def distance(luma: np.ndarray, model: dict) -> float:
    """NIQE distance of a 0-255 luma from the pristine model (lower = closer to clean photos)."""
    f, _ = features(luma, int(model["patch"]))
    f = f[np.all(np.isfinite(f), axis=1)]
    if not len(f):
        return float("inf")
    mu_p, cov_p = np.asarray(model["mean"]), np.asarray(model["cov"])
    cov_t = np.cov(f, rowvar=False) if len(f) > 1 else np.zeros_like(cov_p)
    d = mu_p - f.mean(axis=0)
    return float(math.sqrt(max(d @ np.linalg.pinv((cov_p + cov_t) / 2) @ d, 0.0)))


def _fit_main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fgresq_sdk.train.niqe",
                                 description="Fit the NIQE pristine model on a folder of clean images.")
    ap.add_argument("--references", type=Path, required=True,
                    help="folder of clean images (e.g. a fit folder's references/; never val/test/mate photos)")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write (refused if it exists)")
    ap.add_argument("--source", default="", help="where the images came from, recorded in the file")
    args = ap.parse_args(argv)
    from fgresq_sdk.preprocess import load_image

    from .metrics import to_luma

    if args.out.exists():
        print(f"error: {args.out} exists; choose a new file (nothing was overwritten)", file=sys.stderr)
        return 2
    files = sorted(p for p in args.references.glob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not files:
        print(f"error: {args.references}: no .png/.jpg images", file=sys.stderr)
        return 2
    digest = hashlib.sha256()
    lumas = []
    for p in files:
        digest.update(p.name.encode() + p.read_bytes())
        lumas.append(to_luma(np.asarray(load_image(str(p), name=str(p)))))
    try:
        model = fit_pristine(lumas)
    except ValueError as exc:
        print(f"error: {args.references}: {exc}", file=sys.stderr)
        return 2
    model.update({"source": args.source, "images_sha256": digest.hexdigest()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(model) + "\n")
    print(json.dumps({k: model[k] for k in ("n_images", "n_patches", "patch")}))
    return 0


if __name__ == "__main__":
    sys.exit(_fit_main())
