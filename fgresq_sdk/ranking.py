"""Turn pairwise comparison probabilities into one ranking.

Method (documented in the README): the comparison head gives, for each ordered pair, probabilities of
(first better, second better, similar). A pair's preference is P(i≻j) = p_first + ½·p_similar; the head
is not exactly antisymmetric, so both orders are averaged: P̃_ij = ½(P(i≻j) + 1 − P(j≻i)). Strengths
come from a Bradley–Terry fit on those soft outcomes (Hunter's MM iterations) with a weak prior (each
item also plays half a win and half a loss against a virtual average item), which keeps strengths finite
when one image beats all others with certainty. Ties in strength fall back to the regression score.
Adjacent images whose symmetrised p_similar is the largest of the three outcomes are put in one tier:
the model judges them of similar quality.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRIOR_GAMES = 0.5


def preference(probs: np.ndarray) -> np.ndarray:
    """P(first ≻ second) = p_first + ½·p_similar, from probabilities [..., 3] in the head's order."""
    p = np.asarray(probs, np.float64)
    return p[..., 0] + 0.5 * p[..., 2]


def symmetric_preferences(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From all-pairs probs [N,N,3] → (P̃ [N,N] with P̃_ij + P̃_ji = 1, symmetric p_similar [N,N])."""
    pref = preference(probs)
    sym = 0.5 * (pref + 1.0 - pref.T)
    sim = 0.5 * (probs[..., 2] + probs[..., 2].T)
    np.fill_diagonal(sym, 0.5)
    np.fill_diagonal(sim, 1.0)
    return sym, sim


def bradley_terry(pref: np.ndarray, prior: float = PRIOR_GAMES, tol: float = 1e-10, max_iter: int = 5000) -> np.ndarray:
    """Log-strengths θ (mean zero) maximising Σ P̃_ij·log σ(θ_i − θ_j) plus the virtual-item prior."""
    n = pref.shape[0]
    if n == 1:
        return np.zeros(1)
    off = ~np.eye(n, dtype=bool)
    wins = (pref * off).sum(axis=1) + prior  # prior: half a win against the virtual item (strength 1)
    pi = np.ones(n)
    for _ in range(max_iter):
        denom = (off / (pi[:, None] + pi[None, :])).sum(axis=1) + 2 * prior / (pi + 1.0)
        new = wins / denom
        if np.max(np.abs(np.log(new) - np.log(pi))) < tol:
            pi = new
            break
        pi = new
    theta = np.log(pi)
    return theta - theta.mean()


@dataclass
class Ranking:
    order: np.ndarray  # indices, best first
    strength: np.ndarray  # Bradley–Terry log-strength per input index
    win_rate: np.ndarray  # mean P̃_ij over the others, per input index
    tier: np.ndarray  # similar-quality tier per input index (1 = best tier)
    preference: np.ndarray  # P̃ [N, N]
    similar: np.ndarray  # symmetric p_similar [N, N]


def rank_from_probs(probs: np.ndarray, scores: np.ndarray) -> Ranking:
    n = probs.shape[0]
    pref, sim = symmetric_preferences(probs)
    theta = bradley_terry(pref)
    win = (pref.sum(axis=1) - 0.5) / max(n - 1, 1) if n > 1 else np.ones(1)
    order = np.lexsort((-np.asarray(scores, np.float64), -np.round(theta, 9)))
    tier = np.zeros(n, dtype=int)
    current = 1
    for k, idx in enumerate(order):
        if k > 0:
            prev = order[k - 1]
            p_sim = sim[prev, idx]
            if not (p_sim > pref[prev, idx] - 0.5 * p_sim and p_sim > pref[idx, prev] - 0.5 * p_sim):
                current += 1
        tier[idx] = current
    return Ranking(order=order, strength=theta, win_rate=win, tier=tier, preference=pref, similar=sim)
