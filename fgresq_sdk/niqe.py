"""NIQE-style naturalness: how far an image's natural-scene statistics are from those of clean photos.

The comparison head orders versions of one photo well, but the score head has little absolute sense: pure noise
or a flat frame can outscore a clean photo. NIQE (Mittal, Soundararajan & Bovik, "Making a completely blind image
quality analyzer", 2013) learns nothing from quality labels, only what undistorted photos look like, and it reads
exactly that junk well. It lives here, numpy only, because the runtime adds it to the score of bundles that ask for
it (fgresq_sdk/naturalness.py); train/niqe.py fits the pristine model and eval reports it as a baseline, both with
this one implementation. cpp_bindings/src/niqe.cpp mirrors it step for step (tests/test_cpp_bindings.py: parity).

The statistics, per patch and at two scales (the luma and its 2x2-mean downsample):
* MSCN coefficients (local mean subtracted, divided by local contrast; separable 7-tap Gaussian, sigma 7/6,
  edge-replicated borders, C = 1 on the 0-255 scale) fitted with a generalised Gaussian (shape, variance);
* their products with the horizontal, vertical and both diagonal neighbours fitted with an asymmetric
  generalised Gaussian (shape, mean, left and right variance).
36 features per patch; shapes are moment-matched on a fixed grid (0.2, 0.201, ... 9.999).

A patch whose MSCN coefficients are numerically zero at either scale (a flat region: mean square below
FLAT_MEAN_SQUARE, where real textures and even 8-bit quantisation steps sit orders of magnitude above) has no
statistics, only rounding noise, so it is left out. An image whose patches are all flat is at FLAT_DISTANCE, a
finite "as far from a photo as this measure says": a flat frame is junk, and a finite number keeps every score
and JSON output finite.

The image's distance is the Mahalanobis-type distance between the pristine Gaussian and the Gaussian of its own
patches, with the pooled covariance (pristine + image) / 2; lower = more like a clean photo. The pristine
covariance is full rank (thousands of patches), so the pooled one is positive definite and is solved by Cholesky.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

FORMAT = "fgresq-niqe-pristine/1"
PATCH = 64
N_FEATURES = 36
SIGMA = 7 / 6
RADIUS = 3  # scipy's gaussian_filter(sigma 7/6, truncate 2.5) uses the same 7 taps
C = 1.0  # MSCN stabiliser on the 0-255 scale
FLAT_MEAN_SQUARE = 1e-6
FLAT_DISTANCE = 1e4
SHAPE_START, SHAPE_STEP, SHAPE_COUNT = 0.2, 0.001, 9800


@lru_cache(maxsize=1)
def _shape_grid() -> tuple[np.ndarray, np.ndarray]:
    """Shape values a and their moment ratio Γ(1/a)Γ(3/a)/Γ(2/a)², falling with a (the AGGD uses its inverse)."""
    alpha = SHAPE_START + SHAPE_STEP * np.arange(SHAPE_COUNT)
    lg = np.vectorize(math.lgamma)
    return alpha, np.exp(lg(1 / alpha) + lg(3 / alpha) - 2 * lg(2 / alpha))


def _nearest_shape(rho: np.ndarray) -> np.ndarray:
    """Moment-matching estimate: the grid shape whose ratio is nearest (ties: the larger shape)."""
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
    sq = x * x  # computed once: the same values every sum below used to recompute
    neg, pos = x < 0, x > 0
    lvar = np.sum(np.where(neg, sq, 0.0), axis=-1) / np.maximum(neg.sum(-1), 1)
    rvar = np.sum(np.where(pos, sq, 0.0), axis=-1) / np.maximum(pos.sum(-1), 1)
    sl, sr = np.sqrt(lvar), np.sqrt(rvar)
    gamma = np.divide(sl, sr, out=np.ones_like(sl), where=sr > 0)
    mabs = np.mean(np.abs(x), axis=-1)
    msq = np.mean(sq, axis=-1)
    r_hat = np.divide(mabs * mabs, msq, out=np.zeros_like(msq), where=msq > 0)
    big_r = r_hat * (gamma ** 3 + 1) * (gamma + 1) / (gamma ** 2 + 1) ** 2
    rho = np.divide(1.0, big_r, out=np.full_like(big_r, np.inf), where=big_r > 0)
    shape = _nearest_shape(rho)
    g1, g2, g3 = (np.exp(np.vectorize(math.lgamma)(k / shape)) for k in (1, 2, 3))
    mean = (sr - sl) * (g2 / g1) * np.sqrt(g1 / g3)
    return shape, mean, lvar, rvar


@lru_cache(maxsize=1)
def _taps() -> np.ndarray:
    t = np.exp(-0.5 * (np.arange(-RADIUS, RADIUS + 1) / SIGMA) ** 2)
    return t / t.sum()


def gaussian_blur(a: np.ndarray) -> np.ndarray:
    """The 7x7 Gaussian as two 1-D passes (rows, then columns) with edge-replicated borders."""
    taps = _taps()
    out = np.asarray(a, np.float64)
    h, w = out.shape
    p = np.pad(out, ((RADIUS, RADIUS), (0, 0)), mode="edge")
    out = sum(taps[k] * p[k:k + h] for k in range(2 * RADIUS + 1))
    p = np.pad(out, ((0, 0), (RADIUS, RADIUS)), mode="edge")
    return sum(taps[k] * p[:, k:k + w] for k in range(2 * RADIUS + 1))


def mscn(luma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(MSCN coefficients, local contrast) of a luma on the 0-255 scale."""
    i = np.asarray(luma, np.float64)
    mu = gaussian_blur(i)
    sigma = np.sqrt(np.abs(gaussian_blur(i * i) - mu * mu))
    return (i - mu) / (sigma + C), sigma


def _patches(a: np.ndarray, size: int) -> np.ndarray:
    """(N, size, size) non-overlapping patches covering the image's top-left whole-patch grid."""
    ny, nx = a.shape[0] // size, a.shape[1] // size
    return a[:ny * size, :nx * size].reshape(ny, size, nx, size).swapaxes(1, 2).reshape(ny * nx, size, size)


def _scale_features(luma: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 18) features, (N,) sharpness and (N,) flat mask of the patches of one scale."""
    m, sigma = mscn(luma)
    p = _patches(m, size)
    n = len(p)
    shifted = (p[:, :, :-1] * p[:, :, 1:],            # horizontal
               p[:, :-1, :] * p[:, 1:, :],            # vertical
               p[:, :-1, :-1] * p[:, 1:, 1:],         # main diagonal
               p[:, 1:, :-1] * p[:, :-1, 1:])         # anti-diagonal
    flat = np.mean(p.reshape(n, -1) ** 2, axis=1) < FLAT_MEAN_SQUARE
    cols = list(ggd_fit(p.reshape(n, -1)))
    for s in shifted:
        cols.extend(aggd_fit(s.reshape(n, -1)))
    return np.stack(cols, axis=1), _patches(sigma, size).reshape(n, -1).mean(axis=1), flat


def features(luma: np.ndarray, patch: int = PATCH) -> tuple[np.ndarray, np.ndarray]:
    """(N, 36) patch features at two scales (NaN rows: flat patches) and (N,) patch sharpness of a 0-255 luma."""
    luma = np.asarray(luma, np.float64)
    if luma.ndim != 2 or min(luma.shape) < patch:
        raise ValueError(f"NIQE needs a luma of at least {patch}x{patch} pixels, got shape {luma.shape}")
    f1, sharp, flat1 = _scale_features(luma, patch)
    h, w = (luma.shape[0] // 2) * 2, (luma.shape[1] // 2) * 2
    half = luma[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    f2, _, flat2 = _scale_features(half, patch // 2)
    f = np.concatenate([f1, f2[:len(f1)]], axis=1)
    f[flat1 | flat2[:len(f1)]] = np.nan
    return f, sharp


@dataclass(frozen=True)
class Pristine:
    """The pristine multivariate Gaussian (train/niqe.py fits it on clean photos)."""

    mean: np.ndarray  # [36]
    cov: np.ndarray  # [36, 36], positive definite
    patch: int = PATCH

    @classmethod
    def from_dict(cls, model: dict, where: str = "pristine model") -> "Pristine":
        if not isinstance(model, dict) or model.get("format") != FORMAT:
            raise ValueError(f"{where}: not a {FORMAT} file")
        try:
            mean = np.asarray(model["mean"], np.float64)
            cov = np.asarray(model["cov"], np.float64)
            patch = model.get("patch", PATCH)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: mean/cov are not numbers") from None
        if mean.shape != (N_FEATURES,) or cov.shape != (N_FEATURES, N_FEATURES) or patch != PATCH:
            raise ValueError(f"{where}: needs a {N_FEATURES}-feature mean and covariance with {PATCH}-px patches")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
            raise ValueError(f"{where}: mean/cov are not finite")
        if not np.allclose(cov, cov.T):
            raise ValueError(f"{where}: covariance is not a finite symmetric matrix")
        try:
            np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            raise ValueError(f"{where}: covariance is not positive definite") from None
        return cls(mean, cov, int(patch))

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "pristine model") -> "Pristine":
        try:
            model = json.loads(data.decode("utf-8"))
        except ValueError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc})") from None
        return cls.from_dict(model, where)

    def distance(self, luma: np.ndarray) -> float:
        """Distance of a 0-255 luma from the pristine Gaussian (lower = closer to clean photos)."""
        f, _ = features(luma, self.patch)
        f = f[np.all(np.isfinite(f), axis=1)]
        if not len(f):
            return FLAT_DISTANCE
        cov_t = np.cov(f, rowvar=False) if len(f) > 1 else np.zeros_like(self.cov)
        d = self.mean - f.mean(axis=0)
        pooled = (self.cov + cov_t) / 2
        lower = np.linalg.cholesky(pooled)
        y = np.linalg.solve(lower, d)
        return float(min(math.sqrt(max(float(y @ y), 0.0)), FLAT_DISTANCE))


def luma_of_view(view: np.ndarray, mean, std) -> np.ndarray:
    """0-255 BT.601 luma of one normalised model input [3, H, W] (the bundle's mean/std undone)."""
    v = np.asarray(view, np.float64)
    rgb = (v * np.asarray(std, np.float64)[:, None, None] + np.asarray(mean, np.float64)[:, None, None]) * 255.0
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
