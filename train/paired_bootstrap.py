"""How firm is a difference between two models? A paired bootstrap over the photos of one evaluation.

Why: on the 61 test photos, the default model's candidates differed from it by 0.001–0.011 in mean pair ACC,
and resampling the photos put the standard deviation of those differences at ~0.007 (README, "Candidate v22"):
the ship rule's first key was reading which photos happened to be drawn. This module makes that check a
command. It reads two `fgresq-sdk eval --out` folders made on the same manifest (their eval-images.csv, eval-pairs.csv
and eval-junk.csv), draws photos with replacement — the same draw for both models, so what the photos share
cancels — and reports, for every statistic, both models' values on the photos as drawn (equal to eval.json's)
and the distribution of B − A over the draws.

Statistics (the comparison head's and the score's, as `eval` computes them):
* ``pair_acc`` — mean over tasks of the pair ACC on ranked pairs (eval.json methods.FGResQ.average.acc);
* ``cross_content_srcc`` — SRCC of the score against the unit-scaled MOS over all images of all tasks (the
  generator's hard negatives left out, as eval does);
* ``junk_vs_clean`` — share of (clean reference, hard negative) pairs in which the clean photo scores higher.

The unit is the photo: an image's content id without its crop suffix (``_c<k>``), since crops of one photo
are not independent. A drawn photo brings all its images, pairs, its references and their hard negatives.

    python -m fgresq_sdk.train.paired_bootstrap EVAL_A EVAL_B [--draws 2000] [--seed 0] [--json OUT]
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from . import metrics as M
from .evaluate import RECORD_FILES

STATISTICS = ("pair_acc", "cross_content_srcc", "junk_vs_clean")
SCORE_COLUMN = "FGResQ"

__all__ = ["STATISTICS", "EvalRecords", "load_records", "photo_of", "statistics", "paired_bootstrap", "main"]


class BootstrapError(ValueError):
    """Two evaluations that cannot be compared (missing files, different images or pairs)."""


def photo_of(content_id: str) -> str:
    """The photo a content id comes from: the id without its crop suffix."""
    return re.sub(r"_c\d+$", "", content_id)


@dataclass
class EvalRecords:
    """One evaluation's rows as arrays, every row tagged with the index of its photo in ``photos``."""
    photos: list[str]
    image_ids: list[str]
    image_photo: np.ndarray      # [I]
    score: np.ndarray            # [I] the model's score (NaN where it has none)
    quality: np.ndarray          # [I] MOS on the [0, 1] scale, 1 = best
    pair_keys: list[tuple[str, str]]
    pair_photo: np.ndarray       # [P]
    pair_task: np.ndarray        # [P] task index into ``tasks``
    tasks: list[str]
    hits: np.ndarray             # [P] 1 / 0 / 0.5, NaN for pairs labelled similar
    ref_photo: np.ndarray        # [R] the photo of each clean reference
    clean: np.ndarray            # [R] clean references' scores
    junk: np.ndarray             # [R, K] scores of the hard negatives made from each reference

    @cached_property
    def junk_wins(self) -> np.ndarray:
        """[R, R]: share of reference q's hard negatives that reference p's clean score beats. Fixed by the
        scores, so every draw re-weights it instead of comparing all scores again."""
        return (self.clean[:, None, None] > self.junk[None, :, :]).mean(axis=2)


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        raise BootstrapError(f"{path}: not found (made by `fgresq-sdk eval --out` since 2026-12-02)")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _num(text: str) -> float:
    return float(text) if text not in ("", None) else float("nan")


def load_records(folder) -> EvalRecords:
    """An eval folder's row files (evaluate.RECORD_FILES: the names write_report gives them) as arrays (see
    EvalRecords)."""
    folder = Path(folder)
    images_csv, pairs_csv, junk_csv = (folder / RECORD_FILES[k] for k in ("images", "pairs", "junk"))
    images = _read_csv(images_csv)
    pairs = _read_csv(pairs_csv)
    junk_rows = _read_csv(junk_csv) if junk_csv.is_file() else []
    if not images or SCORE_COLUMN not in images[0]:
        raise BootstrapError(f"{images_csv}: no {SCORE_COLUMN} scores")
    photo_by_image = {r["image_id"]: photo_of(r["content_id"]) for r in images}
    photo_by_ref = {r["reference"]: photo_of(r["content_id"]) for r in images if r.get("reference")}
    photos = sorted(set(photo_by_image.values()))
    images = [r for r in images if r.get("hard_negative") != "1"]  # out of cross-content SRCC, as in eval
    index = {p: k for k, p in enumerate(photos)}
    tasks = sorted({r["task"] for r in pairs})
    refs = sorted({r["reference"] for r in junk_rows if r["kind"] == "clean"})
    kinds = sorted({r["kind"] for r in junk_rows} - {"clean"})
    clean = np.full(len(refs), np.nan)
    junk = np.full((len(refs), len(kinds)), np.nan)
    ref_index, kind_index = {r: k for k, r in enumerate(refs)}, {k: j for j, k in enumerate(kinds)}
    for r in junk_rows:
        if r["kind"] == "clean":
            clean[ref_index[r["reference"]]] = _num(r["score"])
        else:
            junk[ref_index[r["reference"]], kind_index[r["kind"]]] = _num(r["score"])
    missing = [r for r in refs if r not in photo_by_ref]
    if missing:
        raise BootstrapError(f"{junk_csv}: reference {missing[0]!r} belongs to no image")
    labels = [r["label"] for r in pairs]
    pref = np.array([_num(r["p_first_better"]) for r in pairs], np.float64)
    return EvalRecords(
        photos=photos, image_ids=[r["image_id"] for r in images],
        image_photo=np.array([index[photo_by_image[r["image_id"]]] for r in images], np.int64),
        score=np.array([_num(r[SCORE_COLUMN]) for r in images], np.float64),
        quality=np.array([_num(r["unit_quality"]) for r in images], np.float64),
        pair_keys=[(r["a"], r["b"]) for r in pairs],
        pair_photo=np.array([index[photo_by_image[r["a"]]] for r in pairs], np.int64),
        pair_task=np.array([tasks.index(r["task"]) for r in pairs], np.int64), tasks=tasks,
        hits=M.pair_hits(pref, labels) if pairs else np.zeros(0),
        ref_photo=np.array([index[photo_by_ref[r]] for r in refs], np.int64), clean=clean, junk=junk)


def _check_same_items(a: EvalRecords, b: EvalRecords) -> None:
    if a.image_ids != b.image_ids or a.photos != b.photos:
        raise BootstrapError("the two evaluations hold different images: run both on the same manifest")
    if a.pair_keys != b.pair_keys:
        raise BootstrapError("the two evaluations hold different pairs: run both on the same manifest")
    if not np.array_equal(a.ref_photo, b.ref_photo) or a.junk.shape != b.junk.shape:
        raise BootstrapError("the two evaluations hold different junk-vs-clean references")


def _spearman_weighted(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """SRCC of the sample in which item k occurs w[k] times (average ranks for ties, as scipy's)."""
    from scipy.stats import spearmanr

    keep = (w > 0) & np.isfinite(x) & np.isfinite(y)
    xs, ys = np.repeat(x[keep], w[keep]), np.repeat(y[keep], w[keep])
    if xs.size < 3 or np.all(xs == xs[0]) or np.all(ys == ys[0]):
        return float("nan")
    return float(spearmanr(xs, ys).statistic)


def statistics(rec: EvalRecords, photo_weight: np.ndarray | None = None) -> dict[str, float]:
    """The three statistics with every photo counted photo_weight[p] times (None: once each, eval's numbers)."""
    w = np.ones(len(rec.photos), np.int64) if photo_weight is None else np.asarray(photo_weight, np.int64)
    out: dict[str, float] = {}
    pw, ranked = w[rec.pair_photo], ~np.isnan(rec.hits)
    accs = []
    for t in range(len(rec.tasks)):
        sel = ranked & (rec.pair_task == t) & (pw > 0)
        if sel.any():
            accs.append(float((rec.hits[sel] * pw[sel]).sum() / pw[sel].sum()))
    out["pair_acc"] = float(np.mean(accs)) if accs else float("nan")
    out["cross_content_srcc"] = _spearman_weighted(rec.score, rec.quality, w[rec.image_photo])
    if rec.clean.size and rec.junk.size:
        rw = w[rec.ref_photo].astype(np.float64)
        total = rw.sum() ** 2
        out["junk_vs_clean"] = float(rw @ rec.junk_wins @ rw / total) if total else float("nan")
    else:
        out["junk_vs_clean"] = float("nan")
    return out


def paired_bootstrap(a: EvalRecords, b: EvalRecords, draws: int = 2000, seed: int = 0) -> dict:
    """Both models' statistics on the photos as drawn and, over `draws` resamplings of the photos with
    replacement (the same resampling for both), the mean, sd, 2.5/97.5 % percentiles of B − A and the share
    of draws in which B is higher."""
    _check_same_items(a, b)
    rng = np.random.default_rng(seed)
    n = len(a.photos)
    diffs = {s: [] for s in STATISTICS}
    for _ in range(int(draws)):
        w = np.bincount(rng.integers(0, n, n), minlength=n)
        sa, sb = statistics(a, w), statistics(b, w)
        for s in STATISTICS:
            diffs[s].append(sb[s] - sa[s])
    base_a, base_b = statistics(a), statistics(b)
    out = {"photos": n, "draws": int(draws), "seed": int(seed), "statistics": {}}
    for s in STATISTICS:
        d = np.asarray(diffs[s], np.float64)
        d = d[np.isfinite(d)]
        row = {"a": base_a[s], "b": base_b[s], "b_minus_a": base_b[s] - base_a[s]}
        if d.size:
            row.update({"mean_diff": float(d.mean()), "sd_diff": float(d.std(ddof=1)) if d.size > 1 else 0.0,
                        "ci95": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))],
                        "share_b_higher": float((d > 0).mean())})
        out["statistics"][s] = row
    return out


def render(result: dict, name_a: str, name_b: str) -> str:
    lines = [f"paired photo bootstrap: {result['photos']} photos, {result['draws']} draws (seed {result['seed']})",
             f"A = {name_a}", f"B = {name_b}",
             f"{'statistic':<20} {'A':>7} {'B':>7} {'B-A':>8} {'sd':>7}   {'95 % interval':<19} {'P(B>A)':>6}"]
    for s, r in result["statistics"].items():
        if "ci95" in r:
            lo, hi = r["ci95"]
            lines.append(f"{s:<20} {r['a']:7.4f} {r['b']:7.4f} {r['b_minus_a']:+8.4f} {r['sd_diff']:7.4f}   "
                         f"[{lo:+.4f}, {hi:+.4f}]   {r['share_b_higher']:6.3f}")
        else:
            lines.append(f"{s:<20} {'-':>7} {'-':>7}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fgresq_sdk.train.paired_bootstrap",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("eval_a", type=Path, help="an `fgresq-sdk eval --out` folder (model A)")
    ap.add_argument("eval_b", type=Path, help="the same manifest evaluated with model B")
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the result here as JSON")
    args = ap.parse_args(argv)
    if args.draws < 1:
        print("Error: --draws must be >= 1", file=sys.stderr)
        return 2
    try:
        result = paired_bootstrap(load_records(args.eval_a), load_records(args.eval_b), args.draws, args.seed)
    except BootstrapError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render(result, str(args.eval_a), str(args.eval_b)))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
