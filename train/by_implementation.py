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

HARD_NEGATIVE_SUFFIX = "/J"  # synthetic.HARD_NEGATIVE_LEVEL; not imported, to keep evaluation free of the generator


def implementation_accuracy(manifest, pairs, pref: np.ndarray, method_scores: dict[str, dict[str, float]],
                            model_name: str = "FGResQ") -> dict:
    """{task: {implementation: {"n_contents", "n_pairs", <method>: ACC}}} for the ranked pairs in `pairs`.

    pref[k]: the model's symmetrised P(a ≻ b) of pairs[k]; method_scores: per method, image id -> score (higher
    is better) for the score-only methods; the model's own entry is ignored there (its ACC comes from pref).
    """
    impl = (getattr(manifest, "recipe", None) or {}).get("implementations") or {}
    if not impl:
        return {}
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for k, p in enumerate(pairs):
        if p.label == "similar" or p.a.endswith(HARD_NEGATIVE_SUFFIX) or p.b.endswith(HARD_NEGATIVE_SUFFIX):
            continue
        r = manifest.images[p.a]
        name = impl.get(f"{r.content_id}/{r.task}")
        if name:
            groups[(r.task, name)].append(k)
    out: dict[str, dict] = {}
    for (task, name), ks in sorted(groups.items()):
        labels = [pairs[k].label for k in ks]
        row = {"n_contents": len({manifest.images[pairs[k].a].content_id for k in ks}), "n_pairs": len(ks),
               model_name: M.pair_accuracy(np.asarray(pref)[ks], labels)}
        for method, sc in method_scores.items():
            if method == model_name:
                continue
            both = [k for k in ks if pairs[k].a in sc and pairs[k].b in sc]
            row[method] = (M.score_pair_accuracy([sc[pairs[k].a] for k in both], [sc[pairs[k].b] for k in both],
                                                 [pairs[k].label for k in both]) if both else None)
        out.setdefault(task, {})[name] = row
    return out


def render_implementation_table(by_impl: dict, methods: list[str], task_titles: dict[str, str]) -> list[str]:
    """Markdown lines: one row per (task, implementation), pair ACC per method; [] when there is nothing."""
    if not by_impl:
        return []

    def fmt(v):
        return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"

    lines = ["## Pair ACC by generator implementation (ranked pairs without hard negatives)", "",
             "| Task | Implementation | contents | pairs | " + " | ".join(methods) + " |",
             "|---|---|---|---|" + "---|" * len(methods)]
    for task, rows in by_impl.items():
        for name, row in rows.items():
            lines.append(f"| {task_titles.get(task, task)} | {name} | {row['n_contents']} | {row['n_pairs']} | "
                         + " | ".join(fmt(row.get(m)) for m in methods) + " |")
    return lines + [""]
