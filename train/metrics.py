"""Evaluation metrics for FGResQ (numpy + scipy; the PSNR/SSIM helpers import scikit-image lazily).

Score metrics follow common IQA practice:

* SRCC / KRCC: Spearman / Kendall (tau-b) rank correlation, as scipy computes them.
* PLCC: Pearson correlation after the standard 4-parameter logistic mapping of the predictions onto
  the MOS scale (VQEG), ``f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``, fitted with
  ``scipy.optimize.curve_fit``. When the fit is impossible (fewer than ``MIN_LOGISTIC_POINTS`` points,
  no convergence, a degenerate curve) the raw Pearson correlation is used instead; ``plcc_detail``
  says which. The free fit may pick a *decreasing* curve (b1 < b2), after which Pearson(f(x), MOS) is
  positive even for an anti-correlated predictor; by default (``signed=True``) the value then gets a
  minus sign, so PLCC keeps the direction like SRCC does. For increasing fits (any sensible
  higher-is-better predictor) the value is the classic one; ``signed=False`` gives the classic
  sign-free number always.

Pair metrics follow the paper (FGResQ, Table 3):

* ACC (``pair_accuracy``): over the pairs labelled ``first`` / ``second`` only, the fraction
  where the model prefers the right image. Ties (exactly equal preference) count as half right.
* ``three_way_accuracy``: argmax of (a better, b better, similar) against the label, ``similar`` included.

Range SRCC (``range_srcc``, the paper's Table 2): MOS is min-max normalised to [0, 1] per group (scene),
split into [0, 0.2), [0.2, 0.4), [0.4, 0.6), [0.6, 0.8), [0.8, 1.0], and SRCC is computed within each
range and overall; a range with fewer than ``min_items`` items gives NaN (shown as "-").
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import optimize, stats

from fgresq_sdk.ranking import preference

from .manifest import LABELS

RANGE_EDGES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; capped so that correlations stay finite
# Below this many points a 4-parameter logistic nearly interpolates the data and PLCC means little;
# raw Pearson is used instead (reported as method "pearson").
MIN_LOGISTIC_POINTS = 8

__all__ = [
    "LABELS", "RANGE_EDGES", "PSNR_CAP_DB", "MIN_LOGISTIC_POINTS", "PlccResult", "RangeSrcc",
    "srcc", "krcc", "pearson", "logistic4", "fit_logistic4", "plcc", "plcc_detail",
    "label_indices", "preference_from_probs", "symmetrised_pair_probs", "pair_hits", "pair_accuracy",
    "score_pair_accuracy", "scored_pairs_accuracy", "three_way_accuracy", "range_labels", "range_srcc",
    "normalise_per_group", "psnr", "ssim", "to_luma",
]


# -- correlations --------------------------------------------------------------------------------------
def _pair_arrays(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"length mismatch: {x.size} predictions vs {y.size} targets")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _degenerate(x: np.ndarray, y: np.ndarray, min_n: int = 2) -> bool:
    return x.size < min_n or np.ptp(x) == 0 or np.ptp(y) == 0


def srcc(pred, target) -> float:
    """Spearman rank correlation (NaN when fewer than 2 finite pairs or either side is constant)."""
    x, y = _pair_arrays(pred, target)
    if _degenerate(x, y):
        return float("nan")
    return float(stats.spearmanr(x, y)[0])


def krcc(pred, target) -> float:
    """Kendall rank correlation, tau-b (NaN when degenerate)."""
    x, y = _pair_arrays(pred, target)
    if _degenerate(x, y):
        return float("nan")
    return float(stats.kendalltau(x, y)[0])


def pearson(pred, target) -> float:
    """Raw Pearson linear correlation (NaN when degenerate)."""
    x, y = _pair_arrays(pred, target)
    if _degenerate(x, y):
        return float("nan")
    return float(stats.pearsonr(x, y)[0])


def logistic4(x, b1, b2, b3, b4):
    """The 4-parameter logistic f(x) = (b1 − b2) / (1 + exp(−(x − b3)/|b4|)) + b2."""
    z = -(np.asarray(x, np.float64) - b3) / (np.abs(b4) + 1e-12)
    return (b1 - b2) / (1.0 + np.exp(np.clip(z, -700.0, 700.0))) + b2


@dataclass
class PlccResult:
    value: float
    method: str  # "logistic4" or "pearson" (the fallback)
    params: tuple[float, float, float, float] | None = None  # b1..b4 on the prediction's own scale
    reason: str | None = None  # why the fallback was used
    mapped: np.ndarray | None = field(default=None, repr=False)  # f(pred) for the finite pairs

    def to_dict(self) -> dict:
        return {"value": self.value, "method": self.method,
                "params": list(self.params) if self.params is not None else None, "reason": self.reason}


def fit_logistic4(pred, target, maxfev: int = 20000) -> tuple[float, float, float, float]:
    """Least-squares fit of ``logistic4`` mapping pred → target. Raises RuntimeError when it cannot fit.

    The predictions are standardised before fitting (the logistic family is closed under affine maps
    of x, so this changes conditioning, not the optimum); several starting slopes are tried from the
    usual initial guess b1 = max(MOS), b2 = min(MOS) (swapped for a decreasing relation), b3 = mean,
    and the lowest residual wins. Returned parameters are on the prediction's original scale.
    """
    x, y = _pair_arrays(pred, target)
    if x.size < 5:  # curve_fit itself needs more points than parameters
        raise RuntimeError(f"needs at least 5 points for a 4-parameter fit, got {x.size}")
    if _degenerate(x, y):
        raise RuntimeError("constant predictions or targets")
    mu, sd = float(x.mean()), float(x.std())
    z = (x - mu) / sd
    rising = stats.spearmanr(x, y)[0] >= 0
    hi, lo = float(y.max()), float(y.min())
    b1, b2 = (hi, lo) if rising else (lo, hi)
    span = hi - lo
    best = None
    for slope in (1.0, 0.3, 3.0):
        p0 = (b1, b2, 0.0, slope)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params, _ = optimize.curve_fit(logistic4, z, y, p0=p0, maxfev=maxfev)
        except (RuntimeError, ValueError, optimize.OptimizeWarning, FloatingPointError):
            continue
        fz = logistic4(z, *params)
        if not np.all(np.isfinite(fz)) or np.ptp(fz) <= 1e-12 * max(span, 1e-12):
            continue
        sse = float(np.sum((fz - y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, params)
    if best is None:
        raise RuntimeError("logistic fit did not converge")
    c1, c2, c3, c4 = (float(v) for v in best[1])
    return c1, c2, c3 * sd + mu, abs(c4) * sd


def plcc_detail(pred, target, signed: bool = True, min_points: int = MIN_LOGISTIC_POINTS) -> PlccResult:
    """PLCC after the 4-parameter logistic mapping, falling back to raw Pearson; reports which was used.

    signed: give the value a minus sign when the fitted curve is decreasing (see the module docstring).
    min_points: fewer finite pairs than this → raw Pearson (reason says so).
    """
    x, y = _pair_arrays(pred, target)
    if _degenerate(x, y):
        return PlccResult(float("nan"), "pearson", reason="degenerate input (constant or < 2 points)")
    if x.size < max(5, min_points):
        return PlccResult(float(stats.pearsonr(x, y)[0]), "pearson",
                          reason=f"{x.size} points, logistic fit needs at least {max(5, min_points)}")
    try:
        params = fit_logistic4(x, y)
    except RuntimeError as exc:
        return PlccResult(float(stats.pearsonr(x, y)[0]), "pearson", reason=str(exc))
    fx = logistic4(x, *params)
    if np.ptp(fx) == 0:
        return PlccResult(float(stats.pearsonr(x, y)[0]), "pearson", reason="fitted curve is flat")
    value = float(stats.pearsonr(fx, y)[0])
    if signed and params[0] < params[1]:  # decreasing curve: the predictor runs against the target
        value = -value
    return PlccResult(value, "logistic4", params=params, mapped=fx)


def plcc(pred, target, signed: bool = True) -> float:
    """PLCC (logistic-mapped; see ``plcc_detail`` for which mapping was used)."""
    return plcc_detail(pred, target, signed=signed).value


# -- pairs ------------------------------------------------------------------------------------------------
def label_indices(labels: Sequence) -> np.ndarray:
    """Labels as indices 0 = first, 1 = second, 2 = similar (accepts the strings or ints)."""
    out = np.empty(len(labels), dtype=np.int64)
    for i, lab in enumerate(labels):
        if isinstance(lab, (int, np.integer)) and 0 <= int(lab) <= 2:
            out[i] = int(lab)
        elif isinstance(lab, str) and lab in LABELS:
            out[i] = LABELS.index(lab)
        else:
            raise ValueError(f"unknown pair label {lab!r} (expected one of {LABELS} or 0/1/2)")
    return out


# P(first ≻ second) = p_first + ½·p_similar: the runtime's definition, so eval and rank cannot drift apart.
preference_from_probs = preference


def symmetrised_pair_probs(p_ab, p_ba) -> tuple[np.ndarray, np.ndarray]:
    """Combine both presentation orders of each pair.

    p_ab: [N, 3] head probabilities with a shown first; p_ba: [N, 3] with b shown first.
    Returns (P̃ [N] = ½(P(a≻b) + 1 − P(b≻a)), symmetric 3-way probs [N, 3] in the order
    (a better, b better, similar) = ½(p_ab + p_ba with its first two columns swapped)).
    """
    p_ab = np.asarray(p_ab, np.float64)
    p_ba = np.asarray(p_ba, np.float64)
    pref = 0.5 * (preference_from_probs(p_ab) + 1.0 - preference_from_probs(p_ba))
    three = 0.5 * (p_ab + p_ba[:, [1, 0, 2]])
    return pref, three


def _prefers_a(pred) -> np.ndarray:
    """+1 where a is preferred, −1 where b, 0 for an exact tie, from any accepted prediction shape."""
    p = np.asarray(pred, np.float64)
    if p.ndim == 1:  # P(a ≻ b) in [0, 1]
        return np.sign(p - 0.5)
    if p.ndim == 2 and p.shape[1] in (2, 3):  # (score_a, score_b) or (p_a, p_b[, p_similar])
        return np.sign(p[:, 0] - p[:, 1])
    raise ValueError(f"predictions must be [N] P(a better), [N,2] scores or [N,3] probabilities, got {p.shape}")


def pair_hits(pred, labels) -> np.ndarray:
    """Per pair: 1 where the model orders a ranked pair right, 0 where wrong, 0.5 for an exact tie, NaN for a
    pair labelled ``similar`` (pred as in ``pair_accuracy``). Why per pair: a resampling of photos
    (train/paired_bootstrap.py) re-weights these, and it must count them exactly as ACC does."""
    lab = label_indices(labels)
    side = _prefers_a(pred)
    if side.shape[0] != lab.shape[0]:
        raise ValueError(f"length mismatch: {side.shape[0]} predictions vs {lab.shape[0]} labels")
    want = np.where(lab == 0, 1.0, -1.0)
    hits = (side == want).astype(np.float64) + 0.5 * (side == 0)
    return np.where(lab < 2, hits, np.nan)


def pair_accuracy(pred, labels) -> float:
    """The paper's ACC: over pairs labelled first / second, the fraction the model orders right.

    pred: [N] P(a ≻ b); or [N, 2] (score of a, score of b), higher is better; or [N, 3] probabilities
    (a better, b better, similar), compared on the first two. Pairs labelled ``similar`` are ignored;
    exact ties count as half right. NaN when there is no ranked pair.
    """
    hits = pair_hits(pred, labels)
    ranked = ~np.isnan(hits)
    return float(hits[ranked].mean()) if ranked.any() else float("nan")


def score_pair_accuracy(score_a, score_b, labels, higher_is_better: bool = True) -> float:
    """ACC for score-only methods (PSNR, SSIM vs the clean reference, any IQA score)."""
    a = np.asarray(score_a, np.float64)
    b = np.asarray(score_b, np.float64)
    if not higher_is_better:
        a, b = -a, -b
    return pair_accuracy(np.stack([a, b], axis=1), labels)


def scored_pairs_accuracy(pairs, scores) -> tuple[float, int, int]:
    """ACC of a score-only method over the manifest pairs (objects with .a, .b, .label) whose two images it scored.

    Why one function: a full-reference method has no score for images without a reference, so every table
    (per task, per implementation) must count the same subset of pairs. Returns (ACC, pairs used, ranked pairs
    used); ACC is NaN when no ranked pair is left.
    """
    both = [p for p in pairs if p.a in scores and p.b in scores]
    labels = [p.label for p in both]
    n_ranked = sum(lab != "similar" for lab in labels)
    acc = (score_pair_accuracy([scores[p.a] for p in both], [scores[p.b] for p in both], labels)
           if n_ranked else float("nan"))
    return acc, len(both), n_ranked


def three_way_accuracy(probs, labels) -> float:
    """Argmax of [N, 3] (a better, b better, similar) probabilities against the label, `similar` included."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"probabilities must be [N, 3], got {p.shape}")
    lab = label_indices(labels)
    if lab.size == 0:
        return float("nan")
    if lab.shape[0] != p.shape[0]:
        raise ValueError(f"length mismatch: {p.shape[0]} predictions vs {lab.shape[0]} labels")
    return float((np.argmax(p, axis=1) == lab).mean())


# -- Table 2: SRCC within normalised-MOS ranges ----------------------------------------------------------------
def range_labels(edges: Sequence[float] = RANGE_EDGES) -> list[str]:
    """["[0.0,0.2)", ..., "[0.8,1.0]"]: the last range is closed."""
    out = []
    for i in range(len(edges) - 1):
        close = "]" if i == len(edges) - 2 else ")"
        out.append(f"[{edges[i]:.1f},{edges[i + 1]:.1f}{close}")
    return out


def normalise_per_group(values, groups=None) -> np.ndarray:
    """Min-max normalise to [0, 1] within each group; a group whose values are all equal gets NaN."""
    v = np.asarray(values, np.float64).ravel()
    g = np.zeros(v.size, dtype=np.int64) if groups is None else np.asarray(groups, dtype=object).ravel()
    if g.shape != v.shape:
        raise ValueError("groups must have one entry per value")
    out = np.full(v.size, np.nan)
    for key in dict.fromkeys(g.tolist()):
        idx = np.flatnonzero(g == key)
        sub = v[idx]
        fin = np.isfinite(sub)
        if fin.sum() < 2:
            continue
        lo, hi = sub[fin].min(), sub[fin].max()
        if hi > lo:
            out[idx] = (sub - lo) / (hi - lo)
    return out


@dataclass
class RangeSrcc:
    labels: list[str]
    srcc: list[float]  # one per range
    n: list[int]  # items per range
    overall: float
    n_overall: int

    def to_dict(self) -> dict:
        d = {lab: v for lab, v in zip(self.labels, self.srcc)}
        d["overall"] = self.overall
        d["n"] = {**{lab: k for lab, k in zip(self.labels, self.n)}, "overall": self.n_overall}
        return d


def range_srcc(pred, mos, groups=None, edges: Sequence[float] = RANGE_EDGES, min_items: int = 3,
                normalised: bool = False) -> RangeSrcc:
    """SRCC within normalised-MOS ranges (the paper's Table 2) and overall.

    MOS is min-max normalised per group (pass the scene of each item; None = one group), then items are
    pooled across groups into the ranges [e0, e1), ..., [e_{k-1}, e_k] (last closed). Ranges with fewer
    than ``min_items`` items give NaN. Items whose group has no MOS spread, or non-finite values, are left out.
    ``normalised=True``: mos is already on [0, 1] (e.g. normalised with each scene's full range) and is
    used as given; ``groups`` is then ignored.
    """
    p = np.asarray(pred, np.float64).ravel()
    m = np.asarray(mos, np.float64).ravel() if normalised else normalise_per_group(mos, groups)
    if p.shape != m.shape:
        raise ValueError(f"length mismatch: {p.size} predictions vs {m.size} MOS values")
    keep = np.isfinite(p) & np.isfinite(m)
    p, m = p[keep], m[keep]
    edges = np.asarray(edges, np.float64)
    labels = range_labels(edges)
    vals, counts = [], []
    for i in range(len(edges) - 1):
        last = i == len(edges) - 2
        sel = (m >= edges[i]) & ((m <= edges[i + 1]) if last else (m < edges[i + 1]))
        counts.append(int(sel.sum()))
        vals.append(srcc(p[sel], m[sel]) if sel.sum() >= min_items else float("nan"))
    overall = srcc(p, m) if p.size >= min_items else float("nan")
    return RangeSrcc(labels=labels, srcc=vals, n=counts, overall=overall, n_overall=int(p.size))


# -- full-reference baselines -----------------------------------------------------------------------------
def to_luma(img) -> np.ndarray:
    """float64 luma (ITU-R BT.601 Y' of R'G'B', on the input's own scale) of an HxW or HxWxC image."""
    a = np.asarray(img, np.float64)
    if a.ndim == 2:
        return a
    if a.ndim == 3 and a.shape[2] >= 3:
        return 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]
    if a.ndim == 3 and a.shape[2] == 1:
        return a[..., 0]
    raise ValueError(f"expected an HxW or HxWxC image, got shape {a.shape}")


def _check_fr(img, ref) -> tuple[np.ndarray, np.ndarray]:
    a, r = np.asarray(img), np.asarray(ref)
    if a.shape != r.shape:
        raise ValueError(f"image {a.shape} and reference {r.shape} differ in size")
    return a, r


def psnr(img, ref, data_range: float = 255.0, cap: float = PSNR_CAP_DB) -> float:
    """PSNR in dB of img against its clean reference (skimage); identical images give ``cap``."""
    from skimage.metrics import peak_signal_noise_ratio

    a, r = _check_fr(img, ref)
    a, r = a.astype(np.float64), r.astype(np.float64)
    if np.array_equal(a, r):
        return float(cap)
    return float(min(peak_signal_noise_ratio(r, a, data_range=data_range), cap))


def ssim(img, ref, data_range: float = 255.0) -> float:
    """SSIM (Wang et al. 2004, skimage's default 7x7 window) of img against its reference.

    HxWxC images are compared per channel and averaged; pass ``to_luma(...)`` for the grayscale SSIM.
    """
    from skimage.metrics import structural_similarity

    a, r = _check_fr(img, ref)
    a, r = a.astype(np.float64), r.astype(np.float64)
    if min(a.shape[:2]) < 7:
        raise ValueError(f"image {a.shape} is smaller than SSIM's 7x7 window")
    channel_axis = -1 if a.ndim == 3 else None
    return float(structural_similarity(r, a, data_range=data_range, channel_axis=channel_axis))
