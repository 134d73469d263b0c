"""Pair ACC split by the generator implementation each (content, task) of a synthetic manifest drew.

Why: each task's synthetic data mixes several implementations of its artefact (`synthetic.IMPLEMENTATIONS`:
e.g. deraining = streaks, two streak layers, drops), and a task's mean pair ACC hides the one a model inverts
(v10 read raindrops at 0.14 while streaks scored 0.89). The generator records the implementation of every
(content, task) in the manifest's recipe (`implementations`); manifests without it (older ones, or human-rated
data) get no breakdown. Only ranked pairs of two degraded versions count: `similar` pairs and pairs with a hard
negative (`<content>/<task>/J`) are left out, as the junk check covers those.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from . import metrics as M
from .manifest import implementation_key


def implementation_of_pair(implementations: dict, manifest, pair) -> str | None:
    """The generator implementation the (content, task) of `pair` drew, from a manifest recipe's `implementations`
    (None where it records none): the one lookup the breakdown and `subset --exclude-implementations` share."""
    r = manifest.images[pair.a]
    return implementations.get(implementation_key(r.content_id, r.task))


def implementation_accuracy(manifest, pairs, pref: np.ndarray, method_scores: dict[str, dict[str, float]],
                            model_name: str = "FGResQ") -> dict:
    """{task: {implementation: {"n_contents", "n_pairs", <method>: ACC}}} for the ranked pairs in `pairs`.

    pref[k]: the model's symmetrised P(a ≻ b) of pairs[k]; method_scores: per method, image id -> score (higher
    is better) for the score-only methods; the model's own entry is ignored there (its ACC comes from pref).
    """
    impl = (getattr(manifest, "recipe", None) or {}).get("implementations") or {}
    if not impl:
        return {}
    from .synthetic import has_hard_negative  # only manifests the generator wrote get here

    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for k, p in enumerate(pairs):
        if p.label == "similar" or has_hard_negative(p):
            continue
        name = implementation_of_pair(impl, manifest, p)
        if name:
            groups[(manifest.images[p.a].task, name)].append(k)
    pref = np.asarray(pref)
    out: dict[str, dict] = {}
    for (task, name), ks in sorted(groups.items()):
        labels = [pairs[k].label for k in ks]
        row = {"n_contents": len({manifest.images[pairs[k].a].content_id for k in ks}), "n_pairs": len(ks),
               model_name: M.pair_accuracy(pref[ks], labels)}
        for method, sc in method_scores.items():
            if method == model_name:
                continue
            acc, n_used, _ = M.scored_pairs_accuracy([pairs[k] for k in ks], sc)
            row[method] = acc if n_used else None
        out.setdefault(task, {})[name] = row
    return out

