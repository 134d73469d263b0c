"""The low-level prior's junk floor (fgresq_sdk.model.LowLevelPrior, config "junk_floor"): how it is fitted.

Why: the score learns what junk looks like from the score steps' hard negatives (grey noise, noise brought down by
the bundle's resize, flat frames, ...), but a comparison is the head's margin plus the pair term, both fitted on
versions of one photo: neither ever saw a pair of a photo and grey noise. So `compare` and `rank` (win rates of
comparisons) could put a noise PNG above a clean photo that `score` rates far higher (2026-12-05: a 400x300 grey-
noise frame scored 0.59 against the astronaut's 0.93, yet won the comparison; on the val photos' grey-noise pairs
the comparison was right on 0.656, the score on 1.000). The floor hands such pairs to the score: an image whose
score logit ℓ is below a threshold t loses κ of margin in every comparison with an image above t. A step, not a
ramp: two images on the same side of t compare exactly as before, so the order among heavily degraded versions
(the head's and pair term's job, which they do better than the score) is not handed to the score either.

Steps, deterministic:
1. on the val photos with hard negatives (the score's val folder): every ranked pair's margin as the model stands
   (the comparison head's, both orders averaged, plus the pair term), and every image's score logit ℓ;
2. t from a grid of low quantiles of ℓ over the images that are not hard negatives (the lowest of them, 1 %,
   2 %, 5 %): below every (or nearly every) restored version the val photos show;
3. κ from a grid with 0 in it, (t, κ) by val pair ACC over every ranked pair at three decimals (eval's rule and
   the epoch choice's key; ties: the smaller κ, then the smaller t): a floor that does not help gets no weight;
4. the floor enters the model as the pair term does (a unit along the pair direction, train/pair_term.py):
   u(x) −= (κ/2) · [ℓ(x) < t], so a comparison's margin gains −κ · ([ℓ(a) < t] − [ℓ(b) < t]).
"""
from __future__ import annotations

import numpy as np
import torch

from .pair_term import _acc, head_margin, ranked_pairs
from .synthetic import is_hard_negative

__all__ = ["DEFAULT_QUANTILES", "DEFAULT_KAPPAS", "floor_margin", "choose_floor", "install_junk_floor",
           "fit_junk_floor"]

DEFAULT_QUANTILES = (0.0, 0.01, 0.02, 0.05)
DEFAULT_KAPPAS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


def floor_margin(logit: np.ndarray, a: np.ndarray, b: np.ndarray, threshold: float) -> np.ndarray:
    """−([ℓ(a) < t] − [ℓ(b) < t]): the floor's margin for (a, b) per unit of κ."""
    below = (np.asarray(logit, np.float64) < threshold).astype(np.float64)
    return below[b] - below[a]


def choose_floor(margin: np.ndarray, logit: np.ndarray, a: np.ndarray, b: np.ndarray, a_better: np.ndarray,
                 clean_logits: np.ndarray, quantiles=DEFAULT_QUANTILES,
                 kappas=DEFAULT_KAPPAS) -> tuple[float, float, list[dict]]:
    """(t, κ, grid rows): the best val pair ACC of margin + κ·floor at three decimals (ties: the smaller κ, then
    the smaller quantile); t is the quantile of `clean_logits` (the images that are not hard negatives)."""
    rows = []
    for q in quantiles:
        t = float(np.quantile(np.asarray(clean_logits, np.float64), q))
        fm = floor_margin(logit, a, b, t)
        for kappa in kappas:
            rows.append({"quantile": float(q), "threshold": t, "kappa": float(kappa),
                         "val_pair_acc": _acc(margin + kappa * fm, a_better)})
    best = max(rows, key=lambda r: (round(r["val_pair_acc"], 3), -r["kappa"], -r["quantile"]))
    return best["threshold"], best["kappa"], rows


def install_junk_floor(model, threshold: float, kappa: float) -> None:
    """Write t and κ/2 into `model.prior` (which must have "junk_floor")."""
    prior = model.prior
    if prior is None or prior.junk_threshold is None:
        raise ValueError("the model's prior has no junk floor (config prior 'junk_floor': true)")
    with torch.no_grad():
        prior.junk_threshold.fill_(float(threshold))
        prior.junk_slope.fill_(0.5 * float(kappa))


def fit_junk_floor(model, manifest, ids: list[str], stats: np.ndarray, q: np.ndarray, head_logit: np.ndarray) -> dict:
    """The floor of `model` (its prior fitted, the pair term installed) chosen on `manifest` (val photos with hard
    negatives), from what fit_prior has read of it: the prior's raw statistics, the quality features without any
    pair term and the head's score logits of the images `ids`. Writes the floor into `model` and returns its
    record."""
    with torch.no_grad():
        term, unit = model.prior.read(torch.from_numpy(np.ascontiguousarray(stats, np.float64)).float())
    logit = np.asarray(head_logit, np.float64) + term.squeeze(-1).double().numpy()
    u = unit.squeeze(-1).double().numpy()  # the floor exists only with the pair term (LowLevelPrior)
    a, b, y, _ = ranked_pairs(manifest, ids)
    margin = head_margin(model.compare_head.weight.detach().numpy(), q, a, b) + 2.0 * (u[a] - u[b])
    junk = np.array([is_hard_negative(i) for i in ids])
    if junk.all():
        raise ValueError(f"{manifest.root}: every image is a hard negative; the floor needs restored versions too")
    t, kappa, rows = choose_floor(margin, logit, a, b, y, logit[~junk])
    install_junk_floor(model, t, kappa)
    pair_junk = junk[a] | junk[b]
    final = margin + kappa * floor_margin(logit, a, b, t)
    acc = lambda m, sel: _acc(m[sel], y[sel]) if sel.any() else None  # noqa: E731
    return {"val_pairs": int(len(y)), "hard_negative_pairs": int(pair_junk.sum()), "threshold": t, "kappa": kappa,
            "grid": rows, "images_below": int((logit < t).sum()), "hard_negatives_below": int((logit[junk] < t).sum()),
            "val_pair_acc": {"before": _acc(margin, y), "after": _acc(final, y),
                             "hard_negative_pairs_before": acc(margin, pair_junk),
                             "hard_negative_pairs_after": acc(final, pair_junk),
                             "other_pairs_before": acc(margin, ~pair_junk),
                             "other_pairs_after": acc(final, ~pair_junk)}}
