"""The low-level prior's pair term (fgresq_sdk.model.LowLevelPrior, config "pair"): how it is fitted.

Why: the towers, trained from scratch, order versions of one photo from what a few hundred photos taught them; the
prior's statistics (pretrained waifu2x convolutions and classical severity measures) carry more. In probe v37
(docs/default-model-history.md) a logistic regression of pair decisions on those statistics alone, fitted on fit
photos, ranked the val pairs (hard negatives left out) at 0.987 against the comparison head's 0.971, and head + term
ranked the held-out test photos' pairs at 0.962 against 0.944 (deblurring 0.893 → 0.967; dehazing 0.976 → 0.939).

Steps, all deterministic (float64, L-BFGS from zeros):
1. on the fit photos' ranked pairs (hard negatives included): logistic regression of "a is better" on z(a) − z(b),
   z the statistics standardised on the fit images, without intercept (the decision is antisymmetric); its L2
   weight λ by 5-fold leave-photos-out pair ACC (ties: the larger λ);
2. on the val photos: the comparison head's margin (its "first" minus "second" logit, both orders averaged) plus
   β · w·(z(a) − z(b)) for each β of a grid, keeping the best pair ACC over every ranked val pair at three decimals
   (the epoch choice's key; ties: the smaller β). β = 0 is in the grid: a term that does not help gets no weight;
3. the term enters the model as a shift of the features along v, the minimum-norm solution of W_first·v = (1, −1,
   0), W_second·v = (−1, 1, 0), head·v = 0, by u(x) = (β/2) · w·z(x): every comparison's margin gains β·w·(z(a) −
   z(b)), the "similar" logit and the score do not move.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from fgresq_sdk.heads import CompareHeadNP

from .folds import leave_groups_out
from .metrics import pair_accuracy

__all__ = ["DEFAULT_PAIR_LAMBDAS", "DEFAULT_BETAS", "ranked_pairs", "fit_logistic", "choose_pair_lambda",
           "head_margin", "choose_beta", "pair_direction", "install_pair_term"]

DEFAULT_PAIR_LAMBDAS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
DEFAULT_BETAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
LOGIT_ROWS = 3  # first better, second better, similar (fgresq_sdk.verdict.LOGIT_ORDER)


def ranked_pairs(manifest, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, a_better, content) over the manifest's pairs labelled first / second whose images are both in
    `ids`: indices into `ids`, 1.0 where a is the better one, and a's content id (the CV groups)."""
    at = {i: k for k, i in enumerate(ids)}
    rows = [(at[p.a], at[p.b], 1.0 if p.label == "first" else 0.0, manifest.images[p.a].content_id)
            for p in manifest.pairs if p.label in ("first", "second") and p.a in at and p.b in at]
    if not rows:
        raise ValueError(f"{manifest.root}: no ranked pairs among the images read")
    a, b, y, c = zip(*rows)
    return np.array(a), np.array(b), np.array(y), np.array(c)


def fit_logistic(dz: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """w minimising mean BCE(dz·w, y) + lam·|w|²/N, without intercept."""
    x = torch.from_numpy(np.ascontiguousarray(dz, np.float64))
    t = torch.from_numpy(np.asarray(y, np.float64))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, t) + lam * (w ** 2).sum() / len(t)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy().copy()


def _acc(margin: np.ndarray, a_better: np.ndarray) -> float:
    """Pair ACC of a margin (> 0: a is better), counted by eval's own rule (train/metrics.py: ties half right)."""
    margin = np.asarray(margin, np.float64)
    return pair_accuracy(np.stack([margin, np.zeros_like(margin)], axis=1), np.where(a_better > 0.5, 0, 1))


def choose_pair_lambda(dz: np.ndarray, y: np.ndarray, groups: np.ndarray, lambdas=DEFAULT_PAIR_LAMBDAS,
                       folds: int = 5, seed: int = 0) -> tuple[float, list[dict]]:
    """λ with the best mean held-out pair ACC over `folds` leave-groups-out folds (ties: the larger λ)."""
    accs = {lam: [] for lam in lambdas}
    for held in leave_groups_out(groups, folds, seed, what="the pair term"):
        for lam in lambdas:
            w = fit_logistic(dz[~held], y[~held], lam)
            accs[lam].append(_acc(dz[held] @ w, y[held]))
    rows = [{"lambda": float(lam), "cv_pair_acc": float(np.mean(accs[lam]))} for lam in lambdas]
    best = max(rows, key=lambda r: (round(r["cv_pair_acc"], 4), r["lambda"]))
    return best["lambda"], rows


def head_margin(compare_weight: np.ndarray, q: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The comparison head's "first" minus "second" logit for (a, b), averaged with minus that of (b, a): the bias
    cancels, and the sign is the symmetrised decision of a head whose "similar" logit does not separate them."""
    first, second = CompareHeadNP(np.asarray(compare_weight, np.float64), np.zeros(LOGIT_ROWS)).split_terms(q)
    d1, d2 = first[:, 0] - first[:, 1], second[:, 0] - second[:, 1]
    return 0.5 * ((d1[a] + d2[b]) - (d1[b] + d2[a]))


def choose_beta(margin: np.ndarray, term: np.ndarray, a_better: np.ndarray,
                betas=DEFAULT_BETAS) -> tuple[float, list[dict]]:
    """β of the grid with the best val pair ACC of margin + β·term at three decimals (ties: the smaller β)."""
    rows = [{"beta": float(beta), "val_pair_acc": _acc(margin + beta * term, a_better)} for beta in betas]
    best = max(rows, key=lambda r: (round(r["val_pair_acc"], 3), -r["beta"]))
    return best["beta"], rows


def pair_direction(compare_weight: np.ndarray, head_weight: np.ndarray) -> np.ndarray:
    """v with W_first·v = (1, −1, 0), W_second·v = (−1, 1, 0), head·v = 0 (minimum norm). Raises when the heads
    leave no such direction (the features too few, or the rows dependent)."""
    w = np.asarray(compare_weight, np.float64)
    f = w.shape[1] // 2
    h = np.asarray(head_weight, np.float64).reshape(1, -1)
    if w.shape[0] != LOGIT_ROWS or h.shape[1] != f:
        raise ValueError(f"heads of shapes {w.shape} and {h.shape} do not share one feature size")
    a = np.vstack([w[:, :f], w[:, f:], h])
    target = np.array([1.0, -1.0, 0.0, -1.0, 1.0, 0.0, 0.0])
    v, *_ = np.linalg.lstsq(a, target, rcond=None)
    if np.abs(a @ v - target).max() > 1e-6:
        raise ValueError("the comparison and score heads leave no feature direction for the pair term")
    return v


def install_pair_term(model, w: np.ndarray, mu: np.ndarray, sd: np.ndarray, beta: float) -> np.ndarray:
    """Write u(s) = (β/2)·w·(s − μ)/σ and its direction into `model.prior` (which must have "pair"); returns v."""
    prior = model.prior
    if prior is None or prior.pair is None:
        raise ValueError("the model's prior has no pair term (config prior 'pair': true)")
    v = pair_direction(model.compare_head.weight.detach().double().numpy(),
                       model.head.weight.detach().double().numpy())
    scale = 0.5 * float(beta) * np.asarray(w, np.float64) / sd
    with torch.no_grad():
        prior.pair.weight.copy_(torch.from_numpy(scale.reshape(1, -1)))
        prior.pair.bias.copy_(torch.tensor([-float(scale @ mu)], dtype=torch.float64))
        prior.pair_direction.copy_(torch.from_numpy(v))
    return v
