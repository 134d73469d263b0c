"""The comparison head in numpy, split so that N images need N encoder passes, not N².

compare_head is Linear(6D, 3) on [q_i, q_j]: logits_ij = W_a·q_i + W_b·q_j + b with W = [W_a | W_b].
So each image contributes two 3-vectors (its "first" and "second" terms) and all N² pairs are sums.

This is the only implementation of the head at inference time: compare, rank and bench, local with every
backend and remote (server features, head weights sent once), all evaluate it here in float64 from the
bundle's heads.npz, so the same features give the same answer wherever they were encoded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .verdict import LOGIT_ORDER, symmetrise

__all__ = ["HEADS_NPZ_KEYS", "LOGIT_ORDER", "CompareHeadNP", "PairTerms", "similar_shift", "softmax",
           "tempered_compare_head"]

# heads.npz: its key -> the torch model's parameter it holds. The one table for writing the file (export's
# head_arrays), reading it here, and reading a bundle back into a model (export/read_back.py), so they cannot drift.
HEADS_NPZ_KEYS = {"head_weight": "head.weight", "head_bias": "head.bias",
                  "compare_weight": "compare_head.weight", "compare_bias": "compare_head.bias"}


def similar_shift(similar_offset: float) -> np.ndarray:
    """The calibration's logit shift in LOGIT_ORDER: δ on `similar`, 0 on the two ranked verdicts. One place
    for it, so that the head calibrate_compare writes and the probabilities it fits by cannot disagree on which
    logit δ moves."""
    shift = np.zeros(len(LOGIT_ORDER))
    shift[LOGIT_ORDER.index("similar")] = similar_offset
    return shift


def tempered_compare_head(weight: np.ndarray, bias: np.ndarray, temperature: float, similar_offset: float, *,
                          undo: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The comparison head whose logits are the given head's / T + (0, 0, δ), in float64: what
    train/calibrate_compare.py writes into heads.npz (model.json "compare_calibration"); with `undo`, the head it
    was fitted on from the calibrated one (export/read_back.py). One function both ways, so the two cannot drift."""
    w, b = np.asarray(weight, np.float64), np.asarray(bias, np.float64)
    shift = similar_shift(similar_offset)
    if undo:
        return w * temperature, (b - shift) * temperature
    return w / temperature, b / temperature + shift


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


@dataclass
class CompareHeadNP:
    weight: np.ndarray  # [3, 6D]
    bias: np.ndarray  # [3]

    @classmethod
    def from_npz(cls, path_or_bytes) -> "CompareHeadNP":
        """From a heads.npz path, or its (already verified) bytes."""
        import io

        src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
        with np.load(src, allow_pickle=False) as z:
            return cls(z["compare_weight"].astype(np.float64), z["compare_bias"].astype(np.float64))

    @property
    def dim(self) -> int:
        return self.weight.shape[1] // 2

    def split_terms(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-image terms: (as first image [N,3], as second image [N,3])."""
        q = np.asarray(q, np.float64)
        d = self.dim
        return q @ self.weight[:, :d].T, q @ self.weight[:, d:].T

    def pair_logits(self, q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
        d = self.dim
        return np.asarray(q0, np.float64) @ self.weight[:, :d].T + np.asarray(q1, np.float64) @ self.weight[:, d:].T \
            + self.bias

    def indexed_pair_logits(self, q: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits [N, 3] of the pairs (q[a], q[b]) in both presentation orders, (a first, b first), from each
        image's two terms: evaluation and calibration read thousands of pairs of a few hundred images."""
        first, second = self.split_terms(q)
        return first[a] + second[b] + self.bias, first[b] + second[a] + self.bias

    def compare(self, fa: np.ndarray, fb: np.ndarray, raw: bool = False) -> np.ndarray:
        """Probabilities [3] (LOGIT_ORDER) that a is better, b is better, or both similar: the decision path
        of every `compare`. raw=True: the head on (a, b) only; else (a, b) and (b, a) symmetrised."""
        logits = self.pair_logits(np.stack([fa, fb]), np.stack([fb, fa]))
        p = softmax(logits)
        return p[0] if raw else symmetrise(p[0], p[1])

    def all_pairs_probs(self, q: np.ndarray) -> np.ndarray:
        """[N, N, 3] probabilities for every ordered pair (i first, j second).

        Float64 and N²·3 values: fine for the few hundred images of a bench or a test, too big for ranking
        thousands (8192 images: 1.6 GB). Ranking uses `pair_terms`, which computes blocks on demand.
        """
        a, b = self.split_terms(q)
        logits = a[:, None, :] + b[None, :, :] + self.bias
        return softmax(logits, axis=-1)

    def pair_terms(self, q: np.ndarray) -> "PairTerms":
        """The head reduced to O(N) per-image terms, from which any block of pair probabilities follows."""
        a, b = self.split_terms(q)
        return PairTerms(a, b + self.bias)


@dataclass
class PairTerms:
    """Pair probabilities of N images from their split head terms, computed for the blocks asked for.

    logits_ij = first_i + second_j (bias folded into `second`), so exp(logits_ij,k) = F_ik·G_jk with per-image
    factors F = exp(first), G = exp(second). A block of probabilities is then outer products and one
    division: no exp per pair, and no [N, N, 3] array ever exists. Each image's factors are scaled by its
    largest one (softmax is unchanged by a per-pair constant), so they lie in (0, 1] and cannot overflow.
    """

    first: np.ndarray  # [N, 3] logit terms of each image as the first of a pair
    second: np.ndarray  # [N, 3] as the second, head bias included

    def __post_init__(self):
        self.first = np.asarray(self.first, np.float64).reshape(-1, 3)
        self.second = np.asarray(self.second, np.float64).reshape(-1, 3)
        self._f = np.exp(self.first - self.first.max(axis=1, keepdims=True)) if self.n else self.first
        self._g = np.exp(self.second - self.second.max(axis=1, keepdims=True)) if self.n else self.second

    @property
    def n(self) -> int:
        return self.first.shape[0]

    def pair_probs(self, i, j) -> np.ndarray:
        """Probabilities [..., 3] of the pairs (i[k] first, j[k] second), elementwise like numpy indexing."""
        return softmax(self.first[i] + self.second[j], axis=-1)

    def block_probs(self, rows, cols) -> np.ndarray:
        """Probabilities [R, C, 3] of every (row first, column second) pair of a block."""
        return softmax(self.first[rows][:, None, :] + self.second[cols][None, :, :], axis=-1)

    def _block_exps(self, rows, cols) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f, g = self._f[rows], self._g[cols]
        return tuple(np.multiply.outer(f[:, k], g[:, k]) for k in range(3))

    def preference_block(self, rows, cols) -> np.ndarray:
        """P(row ≻ column) = p_first + ½·p_similar [R, C], rows as the first image (not yet symmetrised)."""
        e0, e1, e2 = self._block_exps(rows, cols)
        den = e0 + e1 + e2
        if not np.all(den > 1e-290):  # logits hundreds apart underflow: take the exact softmax instead
            p = self.block_probs(rows, cols)
            return p[..., 0] + 0.5 * p[..., 2]
        e2 *= 0.5
        e0 += e2
        e0 /= den
        return e0

    def similar_block(self, rows, cols) -> np.ndarray:
        """p_similar [R, C] with rows as the first image (not yet symmetrised)."""
        e0, e1, e2 = self._block_exps(rows, cols)
        den = e0 + e1 + e2
        if not np.all(den > 1e-290):
            return self.block_probs(rows, cols)[..., 2]
        e2 /= den
        return e2
