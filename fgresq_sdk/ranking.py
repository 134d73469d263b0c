"""Turn pairwise comparison probabilities into one ranking.

Method (documented in the README): the comparison head gives, for each ordered pair, probabilities of
(first better, second better, similar). A pair's preference is P(i≻j) = p_first + ½·p_similar; the head
is not exactly antisymmetric, so both orders are averaged: P̃_ij = ½(P(i≻j) + 1 − P(j≻i)). Strengths
come from a Bradley–Terry fit on those soft outcomes with a weak prior (each item also plays half a win and
half a loss against a virtual item of strength 1), which keeps strengths finite when one image beats all
others with certainty. Ties in strength fall back to the regression score. Adjacent images for which
`compare` says `similar` (fgresq_sdk.verdict: symmetrised p_similar the most likely outcome, or no image
preferred by more than its tie margin) are put in one tier: the model judges them of similar quality.

Scale. Every pair plays exactly one (soft) game, so the Bradley–Terry likelihood depends on the data only
through each item's total of soft wins: the fit needs O(N) data, not the N×N matrix. The totals are summed
block by block from the pair source (the head's per-image terms, see `heads.PairTerms`), and the fit is
Newton's method on the log-likelihood in θ = log-strength, which the prior makes strictly concave:
quadratic convergence in ~10 steps whatever N. (Hunter's MM, used before, contracts the common-shift
direction by only ~1 − 1/N per step, so it needed ~N·log(1/tol) iterations and never met its tolerance.)
Each Newton system is solved by conjugate gradients on the Hessian, kept as one float32 N×N matrix; the
preference matrix itself is only built when asked for (`Ranking.preference`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .verdict import similar_mask, symmetrise

PRIOR_GAMES = 0.5
RTOL = 1e-9  # Newton stops when its step is below RTOL·max(1, max|θ|)
MAX_NEWTON = 60
TILE = 256  # pair tiles of TILE×TILE: 512 KiB per float64 temporary, stays in cache
_TILE_TEMPS = 12  # float64 tile temporaries alive at once (block probabilities, σ, S, …)


class PairSource(Protocol):
    """Pair probabilities of N items, computed for the blocks asked for (rows are the first image)."""

    @property
    def n(self) -> int: ...

    def pair_probs(self, i, j) -> np.ndarray:
        """[K, 3] probabilities of the pairs (i[k] first, j[k] second)."""

    def preference_block(self, rows, cols) -> np.ndarray:
        """[R, C] P(row ≻ column) = p_first + ½·p_similar, not symmetrised."""

    def similar_block(self, rows, cols) -> np.ndarray:
        """[R, C] p_similar, not symmetrised."""


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


@dataclass
class DenseProbs:
    """A `PairSource` over an all-pairs array [N, N, 3] that the caller already holds (tests, small N)."""

    probs: np.ndarray

    def __post_init__(self):
        self.probs = np.asarray(self.probs, np.float64)

    @property
    def n(self) -> int:
        return self.probs.shape[0]

    def pair_probs(self, i, j) -> np.ndarray:
        return self.probs[i, j]

    def preference_block(self, rows, cols) -> np.ndarray:
        return preference(self.probs[rows][:, cols])

    def similar_block(self, rows, cols) -> np.ndarray:
        return self.probs[rows][:, cols, 2]


# -- blockwise pair matrices ---------------------------------------------------------------------------
def tiles(n: int, tile: int | None = None):
    """(rows, cols) slices of the square tiles on or above the diagonal: each unordered pair once."""
    tile = tile or TILE
    starts = range(0, n, tile)
    for r in starts:
        for c in starts:
            if c >= r:
                yield slice(r, min(n, r + tile)), slice(c, min(n, c + tile))


def _as_index(idx, n: int) -> np.ndarray:
    return np.arange(n)[idx] if isinstance(idx, slice) else np.asarray(idx, dtype=np.intp).reshape(-1)


def _fill_self_pairs(block: np.ndarray, rows: np.ndarray, cols: np.ndarray, value: float) -> None:
    """Set the entries where a row and a column are the same item (the diagonal of the full matrix)."""
    r, c = np.nonzero(rows[:, None] == cols[None, :])
    block[r, c] = value


def symmetric_preference_block(pairs: PairSource, rows, cols) -> np.ndarray:
    """P̃ [R, C] (float64): ½(P(i≻j) + 1 − P(j≻i)), ½ where row and column are the same item."""
    block = pairs.preference_block(rows, cols)
    block += 1.0
    block -= pairs.preference_block(cols, rows).T
    block *= 0.5
    _fill_self_pairs(block, _as_index(rows, pairs.n), _as_index(cols, pairs.n), 0.5)
    return block


def symmetric_similar_block(pairs: PairSource, rows, cols) -> np.ndarray:
    """Symmetric p_similar [R, C] (float64): ½(p_sim(i, j) + p_sim(j, i)), 1 where row is column."""
    block = pairs.similar_block(rows, cols)
    block += pairs.similar_block(cols, rows).T
    block *= 0.5
    _fill_self_pairs(block, _as_index(rows, pairs.n), _as_index(cols, pairs.n), 1.0)
    return block


def preference_matrix(pairs: PairSource, dtype=np.float32) -> np.ndarray:
    """The full P̃ [N, N], tile by tile (the lower triangle as 1 − the upper): the only N×N array is the
    result, and P̃_ij + P̃_ji = 1 up to the rounding of `dtype`."""
    out = np.empty((pairs.n, pairs.n), dtype)
    for rows, cols in tiles(pairs.n):
        block = symmetric_preference_block(pairs, rows, cols)
        out[rows, cols] = block
        if rows != cols:
            out[cols, rows] = 1.0 - block.T
    return out


def similar_matrix(pairs: PairSource, dtype=np.float32) -> np.ndarray:
    """The full symmetric p_similar [N, N], tile by tile."""
    out = np.empty((pairs.n, pairs.n), dtype)
    for rows, cols in tiles(pairs.n):
        block = symmetric_similar_block(pairs, rows, cols)
        out[rows, cols] = block
        out[cols, rows] = block.T
    return out


def soft_wins(pairs: PairSource) -> np.ndarray:
    """Σ_{j≠i} P̃_ij per item (float64): all the Bradley–Terry fit needs from the N² pairs."""
    wins = np.zeros(pairs.n)
    for rows, cols in tiles(pairs.n):
        block = symmetric_preference_block(pairs, rows, cols)
        if rows == cols:
            wins[rows] += block.sum(axis=1) - 0.5
        else:
            wins[rows] += block.sum(axis=1)
            wins[cols] += block.shape[0] - block.sum(axis=0)  # P̃_ji = 1 − P̃_ij
    return wins


# -- the Bradley–Terry fit -----------------------------------------------------------------------------
@dataclass
class BTFit:
    theta: np.ndarray  # log-strengths, mean zero
    converged: bool  # the last Newton step was below the tolerance
    iterations: int  # Newton steps taken


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _pairwise_pass(theta: np.ndarray, hess: np.ndarray | None, deg: np.ndarray | None) -> np.ndarray:
    """Σ_{j≠i} σ(θ_i − θ_j) per item; with `hess`, also S_ij = σ(1 − σ) (float32, zero diagonal) and its row
    sums into `deg`. One pass over the upper tiles (σ_ji = 1 − σ_ij, S symmetric): the fit's only O(N²)
    work per step besides CG. σ_ij = π_i/(π_i + π_j) with π = e^(θ − max θ) ∈ (0, 1]: no exp per pair."""
    n = theta.size
    expected = np.zeros(n)
    if hess is not None:
        deg[:] = 0.0
    spread = float(theta.max() - theta.min()) if n else 0.0
    pi = np.exp(theta - theta.max()) if spread < 600.0 else None  # else π_i + π_j could underflow to 0
    for rows, cols in tiles(n):
        sig = _sigmoid_tile(theta, pi, rows, cols)
        if rows == cols:
            np.fill_diagonal(sig, 0.5)
            expected[rows] += sig.sum(axis=1) - 0.5
        else:
            expected[rows] += sig.sum(axis=1)
            expected[cols] += sig.shape[0] - sig.sum(axis=0)
        if hess is not None:
            _store_curvature(sig, rows, cols, hess, deg)
    return expected


def _sigmoid_tile(theta: np.ndarray, pi: np.ndarray | None, rows: slice, cols: slice) -> np.ndarray:
    """σ(θ_i − θ_j) for a tile, float64."""
    if pi is not None:
        sig = np.add.outer(pi[rows], pi[cols])
        np.divide(pi[rows, None], sig, out=sig)
        return sig
    with np.errstate(over="ignore"):
        sig = np.subtract.outer(theta[cols], theta[rows]).T  # θ_j − θ_i
        sig = np.exp(sig)  # overflow → inf → σ = 0, as it should
        sig += 1.0
        return np.reciprocal(sig, out=sig)


def _store_curvature(sig: np.ndarray, rows: slice, cols: slice, hess: np.ndarray, deg: np.ndarray) -> None:
    """S = σ(1 − σ) of a tile into hess (float32, both triangles, zero diagonal) and its sums into deg,
    summed from the float32 values so that L = diag(deg) − S has L·1 = 0 as exactly as it can."""
    s = hess[rows, cols]
    np.multiply(sig, 1.0 - sig, out=s, casting="same_kind")
    if rows == cols:
        np.fill_diagonal(s, 0.0)
        deg[rows] += s.sum(axis=1, dtype=np.float64)
        return
    hess[cols, rows] = s.T
    deg[rows] += s.sum(axis=1, dtype=np.float64)
    deg[cols] += s.sum(axis=0, dtype=np.float64)


def _gradient(theta, wins, prior, hess=None, deg=None) -> np.ndarray:
    """∂ℓ/∂θ: soft wins (the prior's half win included) minus the wins θ predicts."""
    return wins + prior - _pairwise_pass(theta, hess, deg) - 2.0 * prior * _sigmoid(theta)


def _prior_curvature(theta: np.ndarray, prior: float) -> np.ndarray:
    s = _sigmoid(theta)
    return 2.0 * prior * s * (1.0 - s)


def _newton_direction(hess: np.ndarray, deg: np.ndarray, c: np.ndarray, g: np.ndarray, eta: float,
                      max_iter: int = 500) -> np.ndarray:
    """Solve (L + diag c)·δ = g by preconditioned conjugate gradients, to a relative residual `eta`.

    L = diag(deg) − S is the Laplacian of the pair curvatures S (float32): L·1 = 0, so the common shift of
    all strengths is held only by the weak prior (c) and would need ~√(N/prior) CG steps. The preconditioner
    therefore solves that direction exactly (coarse correction 1·Σr/Σc) and the rest by the diagonal:
    M⁻¹r = r/(deg + c) + 1·Σr/Σc, symmetric positive definite, so plain PCG applies.
    """
    diag = deg + c
    c_sum = float(c.sum())

    def apply(v):
        w = v - v.mean()  # L·1 = 0: apply L to the centred vector, so float32 S never sees the big mean
        return deg * w - (hess @ w.astype(np.float32)).astype(np.float64) + c * v

    def precondition(r):
        return r / diag + r.sum() / c_sum

    x = np.zeros_like(g)
    r = g.copy()
    target = eta * np.linalg.norm(g)
    if target == 0.0:
        return x
    z = precondition(r)
    p = z.copy()
    rz = r @ z
    for _ in range(max_iter):
        ap = apply(p)
        alpha = rz / (p @ ap)
        x += alpha * p
        r -= alpha * ap
        if np.linalg.norm(r) <= target:
            break
        z = precondition(r)
        rz, rz_old = r @ z, rz
        p = z + (rz / rz_old) * p
    return x


def _initial_theta(wins: np.ndarray, prior: float) -> np.ndarray:
    """Start from each item's win-rate logit (with the prior's half win and loss): a few Newton steps fewer
    than from zero, and the right order of magnitude when strengths are far apart."""
    games = wins.size - 1 + 2.0 * prior
    rate = (wins + prior) / games
    return np.log(rate) - np.log1p(-rate)


def _line_search(theta, step, g, wins, prior, hess, deg):
    """Largest t in 1, ½, ¼, … whose point lowers ‖∇ℓ‖ (the Newton direction is a descent direction for
    it); fills hess/deg for the accepted point. Returns (θ, ∇ℓ, ok)."""
    norm = np.linalg.norm(g)
    t = 1.0
    for _ in range(40):
        trial = theta + t * step
        g_trial = _gradient(trial, wins, prior, hess, deg)
        if np.linalg.norm(g_trial) <= (1.0 - 1e-4 * t) * norm:
            return trial, g_trial, True
        t *= 0.5
    return theta, g, False


def fit_bradley_terry(wins: np.ndarray, prior: float = PRIOR_GAMES, rtol: float = RTOL,
                      max_iter: int = MAX_NEWTON) -> BTFit:
    """Log-strengths θ maximising Σ_{i≠j} P̃_ij·log σ(θ_i − θ_j) + the virtual-item prior, by Newton.

    `wins` [N]: Σ_{j≠i} P̃_ij per item (soft wins against the others; see `soft_wins`). Each item also plays
    2·prior games against a virtual item of strength 1 (θ = 0) and wins half of them; prior > 0 makes the
    log-likelihood strictly concave, so Newton converges from any start (damped by a line search on ‖∇ℓ‖).
    Stops when a step is below rtol·max(1, max|θ|); `converged` says whether that happened within max_iter.
    Memory: one float32 N×N Hessian (4·N² bytes) and tile temporaries; nothing N×N per iteration.
    """
    wins = np.asarray(wins, np.float64).reshape(-1)
    if prior <= 0:
        raise ValueError("prior must be > 0: without it the strengths are defined only up to a shift")
    n = wins.size
    if n == 0:
        return BTFit(np.zeros(0), True, 0)
    theta = _initial_theta(wins, prior)
    hess = np.empty((n, n), np.float32)
    deg = np.empty(n)
    g = _gradient(theta, wins, prior, hess, deg)
    g0 = np.linalg.norm(g) or 1.0
    for it in range(1, max_iter + 1):
        eta = min(0.1, max(1e-6, np.linalg.norm(g) / g0))  # inexact Newton: loose early, tight at the end
        step = _newton_direction(hess, deg, _prior_curvature(theta, prior), g, eta)
        if np.max(np.abs(step)) <= rtol * max(1.0, float(np.max(np.abs(theta)))):
            return BTFit(_centred(theta + step), True, it)
        theta, g, ok = _line_search(theta, step, g, wins, prior, hess, deg)
        if not ok:  # no step lowers ‖∇ℓ‖: fine if that is because ∇ℓ is at float64 rounding level already
            return BTFit(_centred(theta), bool(np.max(np.abs(g)) <= 1e-12 * (n + 1)), it)
    return BTFit(_centred(theta), False, max_iter)


def _centred(theta: np.ndarray) -> np.ndarray:
    return theta - theta.mean()


def bradley_terry(pref: np.ndarray, prior: float = PRIOR_GAMES, tol: float = RTOL,
                  max_iter: int = MAX_NEWTON) -> np.ndarray:
    """Log-strengths θ (mean zero) from a full P̃ [N, N]; kept for callers of the old dense API."""
    pref = np.asarray(pref, np.float64)
    wins = pref.sum(axis=1) - np.diagonal(pref)
    return fit_bradley_terry(wins, prior, tol, max_iter).theta


# -- memory ----------------------------------------------------------------------------------------------
def rank_memory_bytes(n: int, keep_preference: bool = False) -> int:
    """Peak bytes that ranking n images needs beyond their features.

    The fit's float32 Hessian (4·n²) plus tile temporaries and O(n) vectors. With keep_preference,
    also the float32 P̃ matrix that `Ranking.preference` builds and keeps (report heat maps,
    `RankResult.p_better_matrix()`); it is built after the fit has freed its Hessian, so it adds to the
    peak only when kept alongside the next fit (as when several groups are ranked before a report).
    """
    n = int(n)
    temporaries = _TILE_TEMPS * 8 * TILE * TILE
    return 4 * n * n * (2 if keep_preference else 1) + temporaries + 256 * n


def max_rank_size(budget_bytes: int, keep_preference: bool = False) -> int:
    """Largest n with rank_memory_bytes(n, keep_preference) ≤ budget_bytes (0 if not even one fits)."""
    per_pair = 8 if keep_preference else 4
    fixed = rank_memory_bytes(0, keep_preference)
    room = max(int(budget_bytes) - fixed, 0)
    n = int((-256 + np.sqrt(256.0 ** 2 + 4.0 * per_pair * room)) / (2 * per_pair))  # per_pair·n² + 256·n = room
    while rank_memory_bytes(n + 1, keep_preference) <= budget_bytes:
        n += 1
    while n > 0 and rank_memory_bytes(n, keep_preference) > budget_bytes:
        n -= 1
    return n


# -- ranking -----------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Ranking:
    """A ranking of N items. Pair matrices are not stored: `preference` builds P̃ on first use (float32,
    4·N² bytes, then kept); `preference_of` / `similar_of` / `pair_probs` give any block without it."""

    order: np.ndarray  # indices, best first
    strength: np.ndarray  # Bradley–Terry log-strength per input index
    win_rate: np.ndarray  # mean P̃_ij over the others, per input index (NaN for a single item: no others)
    tier: np.ndarray  # similar-quality tier per input index (1 = best tier)
    converged: bool = True  # the Bradley–Terry fit met its tolerance
    iterations: int = 0  # Newton steps the fit took
    pairs: PairSource | None = field(default=None, repr=False)
    _preference: np.ndarray | None = field(default=None, init=False, repr=False)

    @property
    def n(self) -> int:
        return int(self.strength.shape[0])

    @property
    def preference(self) -> np.ndarray:
        """P̃ [N, N] float32, P(row better than column) as fitted; built once, on first use."""
        if self._preference is None:
            self._preference = preference_matrix(self.pairs) if self.n else np.zeros((0, 0), np.float32)
        return self._preference

    @property
    def similar(self) -> np.ndarray:
        """Symmetric p_similar [N, N] float32, built on each call (4·N² bytes; prefer `similar_of`)."""
        return similar_matrix(self.pairs) if self.n else np.zeros((0, 0), np.float32)

    def preference_of(self, rows, cols) -> np.ndarray:
        """P̃ for rows × cols (index arrays or slices), float64, without building the full matrix."""
        if self._preference is not None:
            return np.asarray(self._preference[rows][:, cols], np.float64)
        return symmetric_preference_block(self.pairs, rows, cols)

    def similar_of(self, rows, cols) -> np.ndarray:
        """Symmetric p_similar for rows × cols, float64, without building the full matrix."""
        return symmetric_similar_block(self.pairs, rows, cols)

    def pair_probs(self, i, j) -> np.ndarray:
        """Head probabilities [..., 3] (first better, second better, similar) of the pairs (i first, j second)."""
        return self.pairs.pair_probs(i, j)


def _tiers(pairs: PairSource, order: np.ndarray) -> np.ndarray:
    """Tier per input index: a new tier starts unless `compare` would say `similar` for the pair of
    adjacent items (order-symmetrised probabilities, fgresq_sdk.verdict's rule): identical copies
    always share a tier."""
    n = order.size
    tier = np.zeros(n, dtype=int)
    if n == 0:
        return tier
    prev, cur = order[:-1], order[1:]
    ahead = np.asarray(pairs.pair_probs(prev, cur), np.float64).reshape(-1, 3)
    behind = np.asarray(pairs.pair_probs(cur, prev), np.float64).reshape(-1, 3)
    sym = symmetrise(ahead, behind)
    same = similar_mask(sym[:, 0], sym[:, 1], sym[:, 2])
    tier[order] = 1 + np.concatenate([[0], np.cumsum(~same)])
    return tier


def rank_pairs(pairs: PairSource, scores: np.ndarray, prior: float = PRIOR_GAMES, rtol: float = RTOL) -> Ranking:
    """Rank N items from a pair source: soft wins blockwise, Newton fit, ties by score, tiers."""
    n = pairs.n
    scores = np.asarray(scores, np.float64).reshape(-1)
    wins = soft_wins(pairs) if n else np.zeros(0)
    fit = fit_bradley_terry(wins, prior, rtol)
    win_rate = wins / (n - 1) if n > 1 else np.full(n, np.nan)
    order = np.lexsort((-scores, -np.round(fit.theta, 9)))
    return Ranking(order=order, strength=fit.theta, win_rate=win_rate, tier=_tiers(pairs, order),
                   converged=fit.converged, iterations=fit.iterations, pairs=pairs)


def rank_from_probs(probs: np.ndarray, scores: np.ndarray) -> Ranking:
    """Rank from an all-pairs array [N, N, 3] the caller already holds."""
    return rank_pairs(DenseProbs(probs), scores)
