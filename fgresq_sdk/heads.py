"""The comparison head in numpy, split so that N images need N encoder passes, not N².

compare_head is Linear(6D, 3) on [q_i, q_j]: logits_ij = W_a·q_i + W_b·q_j + b with W = [W_a | W_b].
So each image contributes two 3-vectors (its "first" and "second" terms) and all N² pairs are sums.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOGIT_ORDER = ("first_better", "second_better", "similar")


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


@dataclass
class CompareHeadNP:
    weight: np.ndarray  # [3, 6D]
    bias: np.ndarray  # [3]

    @classmethod
    def from_npz(cls, path) -> "CompareHeadNP":
        with np.load(path, allow_pickle=False) as z:
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

    def all_pairs_probs(self, q: np.ndarray) -> np.ndarray:
        """[N, N, 3] probabilities for every ordered pair (i first, j second)."""
        a, b = self.split_terms(q)
        logits = a[:, None, :] + b[None, :, :] + self.bias
        return softmax(logits, axis=-1)
