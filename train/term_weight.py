"""The weight of a term added to the score logit, chosen on val photos: one rule for every such term.

The naturalness term (fuse_naturalness.py) and the low-level prior's readout (fit_prior.py) both move the score
head's logit z by a term t that the heads never saw. Each picks its weight the same way, so that the two steps
cannot drift apart: for every factor f of a grid the fused logit is z + f · sd(z)/sd(t) · t, and the factor with
the best val cross-content SRCC *with the hard negatives in* wins (both absolute goals, ordering across contents
and clean above junk, in one reading; ties: the smaller factor, so a term that does not help gets 0 when 0 is in
the grid). Eval's reading without the hard negatives is recorded beside it, not chosen by.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .evaluate import cross_content_srcc
from .manifest import Manifest

__all__ = ["choose_weight"]


def choose_weight(ids: list[str], logit: np.ndarray, term: np.ndarray, manifest: Manifest,
                  factors: Sequence[float], name: str) -> dict:
    """{name: best factor, "weight", "weight_per_<name>", "grid": one row per factor}; rows name the factor
    `name` too, so each step's records keep their own vocabulary (k, c)."""
    per = float(np.std(logit) / max(np.std(term), 1e-12))
    tasks = sorted({manifest.images[i].task for i in ids})
    rows = []
    for f in factors:
        fused = dict(zip(ids, (logit + f * per * term).tolist()))
        rows.append({name: float(f), "weight": float(f * per),
                     "val_cross_content_srcc": cross_content_srcc(fused, manifest, ids, tasks,
                                                                  hard_negatives=True)["all"],
                     "val_cross_content_srcc_without_hard_negatives": cross_content_srcc(
                         fused, manifest, ids, tasks)["all"]})
    scored = [r for r in rows if r["val_cross_content_srcc"] is not None]
    if not scored:
        raise ValueError("the val manifest needs images of at least two contents to choose the weight")
    best = max(scored, key=lambda r: (r["val_cross_content_srcc"], -r[name]))
    return {name: best[name], "weight": best["weight"], f"weight_per_{name}": per, "grid": rows}
