"""Probe: how far would a label-free naturalness term lift the score's absolute sense?

The model's pair decisions come from the comparison head, but cross-content SRCC and junk-vs-clean read the score,
and the NIQE-style distance (train/niqe.py) beats the shipped model on junk without ever seeing a label. This
probe reads two finished evaluations (the rows `fgresq-sdk eval --out` writes beside eval.json), recomputes the
NIQE-style distance d of the same junk images, and scores every image as

    logit(score) - w * log d,    w = k * sd(logit score) / sd(log d) on the val images,

for a grid of k; k is chosen on val by cross-content SRCC and the test numbers of every k are printed beside it.
Nothing is trained and nothing is written: it decides whether the term is worth building into the runtimes.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

from . import niqe
from .evaluate import NoReferenceScorer, cross_content_srcc, junk_vs_clean, scene_weighted_correlations, unit_quality
from .manifest import Manifest

NIQE_COLUMN = "NIQE (NR)"
DEFAULT_KS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def _log_distance(neg_d: float) -> float:
    """log d from the eval's NIQE column (which holds -d, higher = better)."""
    return math.log(max(-neg_d, 1e-6))


class EvalSide:
    """One evaluation's per-image and per-junk terms: model logits and NIQE log-distances, joined by image id and
    by (reference, junk kind)."""

    def __init__(self, eval_dir: Path, manifest_dir: Path, pristine: dict):
        self.manifest = Manifest.load(manifest_dir)
        rows = list(csv.DictReader(open(Path(eval_dir) / "eval-images.csv", newline="")))
        if not rows or NIQE_COLUMN not in rows[0]:
            raise ValueError(f"{eval_dir}: eval-images.csv has no {NIQE_COLUMN!r} column (rerun eval with this SDK)")
        self.ids = [r["image_id"] for r in rows]
        self.logit = {r["image_id"]: _logit(float(r["FGResQ"])) for r in rows}
        self.logd = {r["image_id"]: _log_distance(float(r[NIQE_COLUMN])) for r in rows}
        junk = list(csv.DictReader(open(Path(eval_dir) / "eval-junk.csv", newline="")))
        self.junk_logit = {(r["reference"], r["kind"]): _logit(float(r["score"])) for r in junk}
        nat = junk_vs_clean(NoReferenceScorer(lambda luma: -niqe.distance(luma, pristine)), self.manifest)
        self.junk_logd = {(r["reference"], r["kind"]): _log_distance(r["score"]) for r in nat.get("scores", [])}
        if set(self.junk_logd) != set(self.junk_logit):
            raise ValueError(f"{eval_dir}: its junk rows are not the junk of {manifest_dir}")

    def measure(self, w: float) -> dict:
        fused = {i: self.logit[i] - w * self.logd[i] for i in self.ids}
        man = self.manifest
        tasks = sorted({man.images[i].task for i in self.ids})
        within = {}
        for t in tasks:
            tid = [i for i in self.ids if man.images[i].task == t]
            within[t] = scene_weighted_correlations([fused[i] for i in tid], [unit_quality(man, i) for i in tid],
                                                    [str(man.images[i].scene) for i in tid])["srcc"]
        key = {k: self.junk_logit[k] - w * self.junk_logd[k] for k in self.junk_logit}
        clean = np.array([v for (_, kind), v in key.items() if kind == "clean"])
        kinds = sorted({kind for _, kind in key if kind != "clean"})
        per_kind = {kind: float((clean[:, None] > np.array([v for (_, k2), v in key.items() if k2 == kind])[None, :])
                                .mean()) for kind in kinds}
        junk_all = np.array([v for (_, kind), v in key.items() if kind != "clean"])
        return {"cross_content_srcc": cross_content_srcc(fused, man, self.ids, tasks)["all"],
                "junk_vs_clean": float((clean[:, None] > junk_all[None, :]).mean()), "junk_per_kind": per_kind,
                "within_photo_srcc": float(np.nanmean(list(within.values()))), "within_photo_srcc_by_task": within}


def probe(val: EvalSide, test: EvalSide, ks=DEFAULT_KS) -> dict:
    scale = float(np.std(list(val.logit.values())) / max(np.std(list(val.logd.values())), 1e-12))
    rows = [{"k": k, "w": k * scale, "val": val.measure(k * scale), "test": test.measure(k * scale)} for k in ks]
    best = max(rows, key=lambda r: (r["val"]["cross_content_srcc"], -r["k"]))  # ties: the smaller weight
    return {"weight_per_k": scale, "chosen_k": best["k"], "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fgresq_sdk.train.score_fusion", description=__doc__.splitlines()[0])
    ap.add_argument("--val-eval", type=Path, required=True, help="eval --out folder on the val photos")
    ap.add_argument("--val-manifest", type=Path, required=True)
    ap.add_argument("--test-eval", type=Path, required=True, help="eval --out folder on the test photos")
    ap.add_argument("--test-manifest", type=Path, required=True)
    ap.add_argument("--ks", default=",".join(str(k) for k in DEFAULT_KS), help="comma-separated k grid")
    ap.add_argument("--pristine", type=Path, default=None, help="NIQE pristine model (default: the shipped one)")
    args = ap.parse_args(argv)
    try:
        pristine = niqe.load_pristine(args.pristine)
        val = EvalSide(args.val_eval, args.val_manifest, pristine)
        test = EvalSide(args.test_eval, args.test_manifest, pristine)
        ks = [float(k) for k in args.ks.split(",") if k.strip()]
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    res = probe(val, test, ks)
    for r in res["rows"]:
        v, t = r["val"], r["test"]
        mark = "  <- chosen on val" if r["k"] == res["chosen_k"] else ""
        print(f"k={r['k']:<5g} val cross-content {v['cross_content_srcc']:.3f} junk {v['junk_vs_clean']:.3f} | test "
              f"cross-content {t['cross_content_srcc']:.3f} junk {t['junk_vs_clean']:.3f} within-photo SRCC "
              f"{t['within_photo_srcc']:.3f}{mark}", file=sys.stderr)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
