"""Leave-groups-out folds for the low-level prior's λ searches (train/fit_prior.py, train/pair_term.py).

Why one place: both hold out whole photos (their content ids), so that no fold scores images of a photo it fitted on,
and both must split them the same seeded way.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

__all__ = ["leave_groups_out"]


def leave_groups_out(groups: np.ndarray, folds: int = 5, seed: int = 0,
                     what: str = "the readout") -> Iterator[np.ndarray]:
    """For each of `folds` folds, the boolean mask of the held-out items: every `folds`-th group of a seeded
    permutation of the distinct groups. Raises when there are fewer groups than folds."""
    uniq = np.unique(groups)
    if len(uniq) < folds:
        raise ValueError(f"need at least {folds} fit contents for {what}, got {len(uniq)}")
    perm = np.random.default_rng(seed).permutation(len(uniq))
    for k in range(folds):
        yield np.isin(groups, uniq[perm[k::folds]])
