"""Evaluate a model bundle on a manifest with the paper's protocol (FGResQ, Tables 2 and 3).

What is measured, per restoration task and averaged over the tasks present:

* SRCC / PLCC of the regression score against MOS. MOS scales differ between scenes (source datasets
  annotate on their own scales), so both are computed within each scene and then averaged over the
  task's scenes weighted by image count. Scenes with fewer than 3 images are left out. PLCC uses the
  4-parameter logistic mapping; where a scene cannot be fitted, raw Pearson is used (counted per method).
* ACC of the comparison head on ranked pairs (labels first / second): each pair is run in both
  orders and the symmetrised preference P̃ = ½(P(a≻b) + 1 − P(b≻a)), P(x≻y) = p_first + ½·p_similar,
  decides; exact ties count half. Also a 3-way accuracy (a better / b better / similar, `similar`
  pairs included) from the order-averaged probabilities.
* Table-2 style SRCC within normalised-MOS ranges: MOS min-max normalised per scene, items pooled
  over the scenes of a task (and over all tasks), SRCC inside [0,0.2) … [0.8,1.0] and overall.
* Full-reference baselines PSNR and SSIM (on the BT.601 luma, against the clean reference) with the
  same SRCC / PLCC / ACC, on the images that have a reference; pairs need both references.

Every image is encoded once; all pair probabilities come from the per-image head terms.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from . import metrics as M
from .by_implementation import implementation_accuracy
from .logs import jsonable
from .manifest import TASKS, Manifest

# Column order of the paper's Table 3.
PAPER_TASK_ORDER = ("deblurring", "denoising", "deraining", "dehazing", "mixture", "super_resolution")
TASK_TITLES = {
    "deblurring": "Deblurring", "denoising": "Denoising", "deraining": "Deraining", "dehazing": "Dehazing",
    "mixture": "MixtureRestoration", "super_resolution": "SuperResolution",
}
METHODS = ("FGResQ", "PSNR", "SSIM", "LapVar (NR)", "NIQE (NR)")
MIN_SCENE_ITEMS = 3

__all__ = ["evaluate", "write_report", "render_markdown", "eval_main", "scene_weighted_correlations",
           "METHODS", "PAPER_TASK_ORDER"]

PROTOCOL_NOTES = [
    "SRCC/PLCC are computed within each scene (MOS scales differ per scene) and averaged over the "
    "task's scenes weighted by image count; scenes with fewer than 3 images are skipped.",
    "PLCC: Pearson after a 4-parameter logistic fit per scene; raw Pearson where the fit fails or the "
    "scene has fewer than 8 images (see plcc_methods). A decreasing fitted curve gives a negative PLCC "
    "(the sign follows the direction, like SRCC).",
    "ACC: pairs labelled a_better/b_better only; FGResQ uses the symmetrised preference "
    "P~ = 1/2(P(a>b) + 1 - P(b>a)), P(x>y) = p_first + 1/2 p_similar; ties count half.",
    "ACC3: argmax of the order-averaged (a better, b better, similar) probabilities, similar pairs included.",
    "PSNR/SSIM: luma (BT.601) against the clean reference, higher is better; only images with a "
    "reference (pairs: both). PSNR of an identical image is capped at 100 dB.",
    "Range SRCC: MOS min-max normalised per scene (observed min/max of the scene's images in the "
    "manifest, not the declared mos_range), items pooled across the scenes of a task (or all tasks), "
    "SRCC within each range; '-' = fewer than 3 items or not available.",
    "LapVar (NR): no-reference classical baseline, variance of the Laplacian of the luma (higher = sharper); "
    "a no-reference model should also be compared with no-reference peers.",
    "NIQE (NR): opinion-unaware no-reference baseline (fgresq_sdk/niqe.py, pristine model fitted by train/niqe.py), "
    "minus the distance of an image's natural-scene statistics from a model of clean fit photos (higher = more "
    "natural); 64-pixel patches, flat patches left out, an all-flat image at the maximum distance.",
    "Cross-content SRCC: SRCC over all images of a task pooled across contents and scenes, MOS scaled to [0, 1] "
    "by each scene's declared mos_range; the generator's hard negatives (<content>/<task>/J, strength 1) are left "
    "out, as the junk-vs-clean check reads them (a val manifest made with --junk holds them, a test manifest "
    "does not: with them val read 0.60 where test read 0.39, without them 0.46).",
    "Junk vs clean: every clean reference against five hard negatives made from every reference (pure noise, "
    "flat frame, extreme blur, extreme JPEG, banding), share of pairs where the clean photo scores higher.",
    "Average: mean over the tasks that have a value.",
]

# the notes that describe a baseline: left out of a report made without them
BASELINE_NOTES = ("PSNR/SSIM:", "LapVar (NR):", "NIQE (NR):")


def _load_manifest(manifest):
    if isinstance(manifest, (str, Path)):
        return Manifest.load(Path(manifest))
    return manifest


def _make_scorer(bundle_or_scorer, backend: str, device: str, batch_size: int | None):
    from fgresq_sdk.scorer import Scorer

    if isinstance(bundle_or_scorer, Scorer):
        return bundle_or_scorer
    return Scorer(bundle_or_scorer, backend=backend, device=device, batch_size=batch_size)


def _finite_mean(values) -> float:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return float(np.mean(v)) if v else float("nan")


# -- per-scene correlations -----------------------------------------------------------------------------
def scene_weighted_correlations(pred, mos, scenes, min_items: int = MIN_SCENE_ITEMS) -> dict:
    """SRCC, PLCC (logistic) and KRCC within each scene, averaged over scenes weighted by image count.

    Returns {"srcc", "plcc", "krcc", "n_images" (used), "n_scenes" (used), "scenes_skipped",
    "plcc_methods": {"logistic4": k, "pearson": j}, "per_scene": {scene: {...}}}.
    """
    pred = np.asarray(pred, np.float64)
    mos = np.asarray(mos, np.float64)
    scenes = np.asarray(scenes, dtype=object)
    per_scene: dict[str, dict] = {}
    methods = {"logistic4": 0, "pearson": 0}
    acc = {"srcc": [], "plcc": [], "krcc": []}
    skipped = []
    for scene in dict.fromkeys(scenes.tolist()):
        idx = np.flatnonzero(scenes == scene)
        x, y = pred[idx], mos[idx]
        fin = np.isfinite(x) & np.isfinite(y)
        n = int(fin.sum())
        if n < min_items:
            skipped.append({"scene": str(scene), "n": n, "reason": f"fewer than {min_items} images"})
            continue
        s, k = M.srcc(x, y), M.krcc(x, y)
        pl = M.plcc_detail(x, y)
        if not math.isfinite(s):
            skipped.append({"scene": str(scene), "n": n, "reason": "constant MOS or predictions"})
            continue
        methods[pl.method] += 1
        per_scene[str(scene)] = {"n": n, "srcc": s, "plcc": pl.value, "krcc": k, "plcc_method": pl.method,
                                 **({"plcc_fallback_reason": pl.reason} if pl.reason else {})}
        for name, v in (("srcc", s), ("plcc", pl.value), ("krcc", k)):
            if math.isfinite(v):
                acc[name].append((v, n))

    def wmean(items):
        if not items:
            return float("nan")
        v, w = np.array(items, np.float64).T
        return float(np.sum(v * w) / np.sum(w))

    return {"srcc": wmean(acc["srcc"]), "plcc": wmean(acc["plcc"]), "krcc": wmean(acc["krcc"]),
            "n_images": int(sum(d["n"] for d in per_scene.values())), "n_scenes": len(per_scene),
            "scenes_skipped": skipped, "plcc_methods": methods, "per_scene": per_scene}


# -- full-reference baselines ---------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _luma_of(path: str) -> np.ndarray:
    from fgresq_sdk.preprocess import load_image

    return M.to_luma(np.asarray(load_image(path, name=path)))


def _fr_one(job: tuple[str, str]) -> tuple[dict | None, str | None]:
    """PSNR and SSIM of one (image, reference) pair of paths, or the error's first line (one bad file must not
    stop the evaluation). Module-level: it runs in the baseline processes."""
    image, ref = job
    try:
        img, rl = _luma_of(image), _luma_of(ref)
        return {"PSNR": M.psnr(img, rl), "SSIM": M.ssim(img, rl)}, None
    except Exception as exc:  # noqa: BLE001
        return None, str(exc).splitlines()[0]


def _fr_scores(manifest, ids: list[str], errors: list[dict], log: Callable[[str], None],
               pool=None) -> dict[str, dict]:
    """{image_id: {"PSNR": v, "SSIM": v}} for the images that have a usable reference."""
    with_ref = [(iid, manifest.reference_path(iid)) for iid in ids]
    with_ref = [(iid, ref) for iid, ref in with_ref if ref is not None]
    jobs = [(str(manifest.image_path(iid)), str(ref)) for iid, ref in with_ref]
    out: dict[str, dict] = {}
    for k, ((iid, _), (value, error)) in enumerate(zip(with_ref, _map(_fr_one, jobs, pool))):
        if error is None:
            out[iid] = value
        else:
            errors.append({"image_id": iid, "stage": "baselines", "error": error})
        if (k + 1) % 500 == 0:
            log(f"baselines: {k + 1}/{len(jobs)} images with a reference")
    _luma_of.cache_clear()
    return out


# -- where the baselines run ----------------------------------------------------------------------------
PARALLEL_MIN_IMAGES = 200  # below this, a process pool's start (~2 s of imports) costs more than it saves


def _map(fn, jobs: list, pool) -> list:
    """fn over jobs in order: in the pool's processes when there is one, else here."""
    if pool is None:
        return [fn(j) for j in jobs]
    return list(pool.map(fn, jobs, chunksize=16))


@contextlib.contextmanager
def baseline_pool(n_images: int):
    """A process pool for the baselines (PSNR/SSIM, the no-reference peers and their junk check), or None.

    Why processes: the baselines are numpy and scipy on one image at a time, and in threads the NIQE statistic
    ran only 1.3x faster on 2 cores (its many small array operations hold the GIL); each image is independent,
    so the values are the sequential ones exactly, in any number of processes. One worker per usable core
    (the model's encoding is done by then); none for small manifests or a single core. Spawned, not forked: the
    parent already runs ONNX Runtime's threads."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores < 2 or n_images < PARALLEL_MIN_IMAGES:
        yield None
        return
    with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


# -- no-reference classical baseline -------------------------------------------------------------------
def laplacian_variance(luma: np.ndarray) -> float:
    """No-reference sharpness statistic: variance of the 4-neighbour Laplacian of the luma (0-255 scale).

    Higher reads as sharper/better. Blind to noise (noise raises it) - a classical NR peer, not a good metric."""
    from scipy import ndimage

    return float(ndimage.laplace(np.asarray(luma, np.float64), mode="reflect").var())


class NiqeBaseline:
    """The NIQE peer as a picklable callable (luma -> minus the distance: higher = better), so that it runs in
    the baseline processes."""

    def __init__(self, pristine):
        self.pristine = pristine

    def __call__(self, luma: np.ndarray) -> float:
        return -self.pristine.distance(luma)


def _nr_functions(errors: list[dict]) -> dict[str, Callable[[np.ndarray], float]]:
    """{method: luma (0-255) -> score, higher = better} of the no-reference baselines; NIQE only where its
    pristine model loads (the reason is recorded otherwise)."""
    from . import niqe

    fns: dict[str, Callable[[np.ndarray], float]] = {"LapVar (NR)": laplacian_variance}
    try:
        pristine = niqe.load_pristine()
    except (OSError, ValueError) as exc:
        errors.append({"image_id": "", "stage": "nr_baseline", "error": f"NIQE skipped: {exc}"})
    else:
        fns["NIQE (NR)"] = NiqeBaseline(pristine)
    return fns


def _nr_one(job) -> dict[str, tuple[float | None, str | None]]:
    """{method: (value, error)} of every no-reference function on one image (a path, or an RGB array)."""
    image, fns = job
    out = {}
    try:
        luma = _luma_of(image) if isinstance(image, str) else M.to_luma(image)
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the evaluation
        return {name: (None, str(exc).splitlines()[0]) for name in fns}
    for name, fn in fns.items():
        try:
            out[name] = (fn(luma), None)
        except Exception as exc:  # noqa: BLE001
            out[name] = (None, str(exc).splitlines()[0])
    return out


def _nr_scores(manifest, ids: list[str], errors: list[dict], fns, pool=None) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {name: {} for name in fns}
    jobs = [(str(manifest.image_path(iid)), fns) for iid in ids]
    for iid, values in zip(ids, _map(_nr_one, jobs, pool)):
        for name, (value, error) in values.items():
            if error is None:
                out[name][iid] = value
            else:
                errors.append({"image_id": iid, "stage": "nr_baseline", "method": name, "error": error})
    _luma_of.cache_clear()
    return out


def hard_negative(manifest, image_id: str) -> bool:
    """The generator's hard negative of a (content, task): image <content>/<task>/J at strength 1 (the strength
    as well, so that a user's manifest whose ids happen to end in /J is not affected)."""
    from .synthetic import is_hard_negative

    return manifest.images[image_id].strength == 1.0 and is_hard_negative(image_id)


def cross_content_srcc(scores: dict[str, float], manifest, ids: list[str], tasks: list[str], *,
                       hard_negatives: bool = False) -> dict:
    """SRCC over all images of a task pooled across contents (and over everything), MOS mapped to [0, 1]
    by each scene's declared mos_range (quality direction respected): an absolute-scale check, unlike the
    per-scene SRCC which the paper averages. The generator's hard negatives are left out: they sit far below
    every level, so a manifest that holds them (val) read much higher than one that does not (test) for the
    same model, and junk_vs_clean measures them on their own. hard_negatives=True keeps them (one number for
    both absolute goals: fuse_naturalness chooses its weight by it)."""
    from scipy.stats import spearmanr

    out = {}
    ids = [i for i in ids if hard_negatives or not hard_negative(manifest, i)]
    for t in list(tasks) + ["all"]:
        tid = [i for i in ids if i in scores and (t == "all" or manifest.images[i].task == t)]
        if len({manifest.images[i].content_id for i in tid}) < 2:
            out[t] = None
            continue
        out[t] = float(spearmanr([scores[i] for i in tid], [manifest.unit_quality(i) for i in tid]).statistic)
    return out


def junk_vs_clean(scorer, manifest, seed: int = 0, peers: dict | None = None, pool=None) -> dict:
    """Clean references against hard negatives made from every reference (colour and grey noise, flat frame,
    extreme blur, extreme JPEG, heavy banding: synthetic.JUNK_KINDS, junk_image): share of (clean, junk) pairs
    over all contents in which the clean photo scores higher. Every kind counts, whether or not a recipe drew
    it: issue 13's target names noise, and noise without colour is noise (grey noise joined on 2026-12-05, resized
    noise later that day; the readings before are of the first five, then six kinds). The same pairs are also
    read as `compare` and `rank` decide them (`compare_clean_wins`: the comparison head, both orders symmetrised,
    prefers the clean photo): rank orders a folder by comparisons, and a score that knows junk did not make the
    comparisons know it (2026-12-05: grey noise above the astronaut in `rank`).

    peers ({name: luma -> score}, the no-reference baselines): read on the same images in the same pass (in
    `pool` when given), their shares under "peers" (without the per-image rows). The junk is made once, one kind
    at a time, for the model and every peer: it was made once per reader, and holding every kind at once would
    hold seven images per reference."""
    from fgresq_sdk.preprocess import load_image

    from .synthetic import JUNK_KINDS, _crc, junk_image

    # seeded by the reference's name inside the manifest, not by where the manifest lies: the same test set
    # gets the same junk in any work folder (it was keyed by the full path, so moving the data changed it)
    paths = {manifest.images[i].reference: str(manifest.reference_path(i)) for i in manifest.images
             if manifest.images[i].reference}
    if not paths:
        return {}
    rels = sorted(paths)
    clean = [np.asarray(load_image(paths[rel], name=paths[rel])) for rel in rels]
    compares = hasattr(scorer, "head")  # a model; a no-reference statistic has a score and nothing to compare with
    read = scorer.encode if compares else (lambda arrays: (None, scorer.score(arrays)))
    c_q, c_sc = (None if v is None else np.asarray(v, np.float64) for v in read(clean))
    peer_clean = _peer_scores(peers, clean, pool) if peers else {}
    junk_scores, junk_q, peer_junk = {}, {}, {name: {} for name in peer_clean}
    for kind in JUNK_KINDS:
        junk = [junk_image(kind, c.astype(np.float32), np.random.default_rng([seed, _crc(rel), 7]))
                for c, rel in zip(clean, rels)]
        junk_q[kind], junk_scores[kind] = (None if v is None else np.asarray(v, np.float64) for v in read(junk))
        for name, values in (_peer_scores(peers, junk, pool).items() if peers else ()):
            peer_junk[name][kind] = values
    out = _junk_shares(rels, c_sc, junk_scores, scorer.head if compares else None, c_q, junk_q)
    if peers:
        out["peers"] = {}
        for name, c in peer_clean.items():
            failed = [v for v in (c, *peer_junk[name].values()) if isinstance(v, str)]
            if failed:  # informational, as the model's own check
                out["peers"][name] = {"error": failed[0]}
            else:
                out["peers"][name] = _junk_shares(rels, c, peer_junk[name])
                out["peers"][name].pop("scores")
    return out


def _peer_scores(peers: dict, arrays: list, pool) -> dict[str, np.ndarray | str]:
    """{peer: its scores of the RGB arrays, or the first error's line} (in the pool's processes when given). A
    failure of the pool itself is the peers' error too: it must not take the model's own junk check with it."""
    try:
        rows = _map(_nr_one, [(a, peers) for a in arrays], pool)
    except Exception as exc:  # noqa: BLE001 - e.g. a worker process killed for memory
        return {name: str(exc).splitlines()[0] if str(exc) else type(exc).__name__ for name in peers}
    out = {}
    for name in peers:
        bad = next((r[name][1] for r in rows if r[name][1] is not None), None)
        out[name] = bad if bad is not None else np.array([r[name][0] for r in rows], np.float64)
    return out


def _junk_shares(rels: list[str], c_sc: np.ndarray, junk_scores: dict[str, np.ndarray], head=None, c_q=None,
                 junk_q: dict | None = None) -> dict:
    """junk_vs_clean's numbers from the scores (and, for a model, the features) of the clean references and of
    each kind's hard negatives."""
    per_kind, w_all = {}, []
    rows = [{"reference": rel, "kind": "clean", "score": float(v)} for rel, v in zip(rels, c_sc)]
    for kind, j in junk_scores.items():
        rows += [{"reference": rel, "kind": kind, "score": float(v)} for rel, v in zip(rels, j)]
        per_kind[kind] = {"clean_wins": float((c_sc[:, None] > j[None, :]).mean()), "junk_mean_score": float(j.mean())}
        if head is not None:
            w_all.append(compare_wins(head, c_q, junk_q[kind]))
            per_kind[kind]["compare_clean_wins"] = float(w_all[-1].mean())
    j = np.concatenate(list(junk_scores.values()))
    out = {"n_clean": len(rels), "n_junk": int(j.size), "clean_wins": float((c_sc[:, None] > j[None, :]).mean())}
    if head is not None:
        out["compare_clean_wins"] = float(np.concatenate(w_all, axis=1).mean())
    return {**out, "clean_mean_score": float(c_sc.mean()), "per_kind": per_kind, "scores": rows}


def compare_wins(head, q_clean: np.ndarray, q_junk: np.ndarray) -> np.ndarray:
    """[C, J] booleans: the comparison of clean photo c and junk j, both orders symmetrised (compare's decision
    path), prefers c."""
    from fgresq_sdk.heads import softmax

    q = np.concatenate([q_clean, q_junk])
    c, j = np.meshgrid(np.arange(len(q_clean)), len(q_clean) + np.arange(len(q_junk)), indexing="ij")
    l_cj, l_jc = head.indexed_pair_logits(q, c.ravel(), j.ravel())
    pref, _ = M.symmetrised_pair_probs(softmax(l_cj), softmax(l_jc))
    return (pref > 0.5).reshape(c.shape)


# -- the evaluation ---------------------------------------------------------------------------------------
def evaluate(bundle_or_scorer, manifest, backend: str = "onnxruntime", *, device: str = "cpu",
             batch_size: int | None = None, baselines: bool = True,
             log: Callable[[str], None] | None = None) -> dict:
    """Run the paper's evaluation of a bundle (folder, Bundle or ready Scorer) on a manifest.

    manifest: a Manifest or the folder to ``Manifest.load``. Returns a JSON-ready dict (NaN as None):
    per-method per-task metrics and averages, Table-2 range SRCC, counts, errors and protocol notes.
    """
    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    manifest = _load_manifest(manifest)
    scorer = _make_scorer(bundle_or_scorer, backend, device, batch_size)
    errors: list[dict] = []

    ids = list(manifest.images.keys())
    recs = [manifest.images[i] for i in ids]
    known = TASKS
    present = [t for t in PAPER_TASK_ORDER if any(r.task == t for r in recs)]
    present += sorted({r.task for r in recs} - set(present))  # tasks outside the six, after them
    unknown_tasks = sorted({r.task for r in recs} - set(known))

    # 1. encode every image once
    log(f"encoding {len(ids)} images")
    paths = [manifest.image_path(i) for i in ids]
    feats: dict[str, np.ndarray] = {}
    score: dict[str, float] = {}
    for enc in scorer.iter_encode(paths, names=ids):
        iid = ids[enc.index]
        if enc.error is not None:
            errors.append({"image_id": iid, "stage": "encode", "error": enc.error})
        else:
            feats[iid] = np.asarray(enc.features)
            score[iid] = float(enc.score)
    t_encode = time.perf_counter() - t0

    # 2. pair probabilities, both orders, from per-image head terms
    enc_ids = [i for i in ids if i in feats]
    pos = {iid: k for k, iid in enumerate(enc_ids)}
    pairs, skipped_pairs = [], 0
    for p in manifest.pairs:
        if p.a in pos and p.b in pos:
            pairs.append(p)
        else:
            skipped_pairs += 1
            missing = [x for x in (p.a, p.b) if x not in pos]
            why = "not in manifest" if any(x not in manifest.images for x in missing) else "not encoded"
            errors.append({"pair": [p.a, p.b], "stage": "pairs", "error": f"{', '.join(missing)}: {why}"})
    from fgresq_sdk.heads import softmax

    if enc_ids and pairs:
        q = np.stack([feats[i] for i in enc_ids])
        l_ab, l_ba = scorer.head.indexed_pair_logits(q, np.array([pos[p.a] for p in pairs]),
                                                     np.array([pos[p.b] for p in pairs]))
        pref, three = M.symmetrised_pair_probs(softmax(l_ab), softmax(l_ba))
    else:
        pref, three = np.zeros(0), np.zeros((0, 3))
    labels = [p.label for p in pairs]
    pair_task = [manifest.images[p.a].task for p in pairs]

    # 3. the baselines (PSNR/SSIM against the references, the no-reference peers on every image) and the
    #    junk-vs-clean check (the model and, with the baselines, its no-reference peers on the same images), all
    #    in one process pool when it pays (baseline_pool)
    nr_fns = _nr_functions(errors) if baselines else {}
    fr, nr = {}, {}
    with baseline_pool(len(ids) if baselines else 0) as pool:
        if baselines:
            fr = _fr_scores(manifest, ids, errors, log, pool)
            nr = _nr_scores(manifest, ids, errors, nr_fns, pool)
        try:
            junk = junk_vs_clean(scorer, manifest, peers=nr_fns, pool=pool)  # the model's own check, baselines or not
        except Exception as exc:  # informational; never stops the evaluation
            junk = {"error": str(exc).splitlines()[0]}
    junk_rows = junk.pop("scores", []) if isinstance(junk, dict) else []
    junk_nr = junk.pop("peers", {}) if isinstance(junk, dict) else {}
    t_all = time.perf_counter() - t0

    # 4. metrics per task and method
    scene_of = {i: str(manifest.images[i].scene) for i in ids}
    flipped = sorted(str(k) for k, v in (getattr(manifest, "scenes", None) or {}).items()
                     if isinstance(v, dict) and v.get("higher_is_better", True) is False)
    # Quality = MOS, or −MOS for scenes annotated lower-is-better (DMOS), so that every correlation
    # below is positive for a good predictor.
    mos_of = {i: (-1.0 if scene_of[i] in flipped else 1.0) * float(manifest.images[i].mos) for i in ids}
    method_scores = {"FGResQ": score}
    if baselines:
        method_scores["PSNR"] = {i: v["PSNR"] for i, v in fr.items()}
        method_scores["SSIM"] = {i: v["SSIM"] for i, v in fr.items()}
        method_scores.update(nr)
    scene_range = _scene_mos_ranges(ids, mos_of, scene_of)

    methods_out: dict[str, dict] = {}
    range_out: dict[str, dict] = {"labels": M.range_labels(), "all": {}, "per_task": {t: {} for t in present}}
    for name, sc in method_scores.items():
        per_task = {}
        for t in present:
            tid = [i for i in ids if manifest.images[i].task == t and i in sc]
            corr = scene_weighted_correlations([sc[i] for i in tid], [mos_of[i] for i in tid],
                                               [scene_of[i] for i in tid])
            sel = [k for k, p in enumerate(pairs) if pair_task[k] == t]
            lab_t = [labels[k] for k in sel]
            n_ranked_t = sum(lab != "similar" for lab in lab_t)
            if name == "FGResQ":
                acc = M.pair_accuracy(pref[sel], lab_t) if n_ranked_t else float("nan")
                acc3 = M.three_way_accuracy(three[sel], lab_t) if sel else float("nan")
                n_pairs_used = len(sel)
            else:
                acc, n_pairs_used, n_ranked_t = M.scored_pairs_accuracy([pairs[k] for k in sel], sc)
                acc3 = None
            per_task[t] = {"srcc": corr["srcc"], "plcc": corr["plcc"], "krcc": corr["krcc"], "acc": acc,
                           "acc3": acc3, "n_images": corr["n_images"], "n_scenes": corr["n_scenes"],
                           "n_pairs": n_pairs_used, "n_ranked_pairs": n_ranked_t,
                           "plcc_methods": corr["plcc_methods"], "scenes_skipped": corr["scenes_skipped"],
                           "per_scene": corr["per_scene"]}
            rs = _range_for(sc, tid, mos_of, scene_of, scene_range)
            range_out["per_task"][t][name] = rs
        avg = {k: _finite_mean(per_task[t][k] for t in present) for k in ("srcc", "plcc", "krcc", "acc")}
        if name == "FGResQ":
            avg["acc3"] = _finite_mean(per_task[t]["acc3"] for t in present)
        avg["n_tasks"] = {k: sum(1 for t in present if per_task[t][k] is not None and math.isfinite(per_task[t][k]))
                          for k in ("srcc", "plcc", "acc")}
        methods_out[name] = {"per_task": per_task, "average": avg}
        all_ids = [i for i in ids if i in sc]
        range_out["all"][name] = _range_for(sc, all_ids, mos_of, scene_of, scene_range)

    tasks_out = {}
    for t in present:
        tid = [i for i in ids if manifest.images[i].task == t]
        tp = [p for k, p in enumerate(manifest.pairs) if manifest.images.get(p.a) is not None
              and manifest.images[p.a].task == t]
        tasks_out[t] = {
            "n_images": len(tid), "n_encoded": sum(i in feats for i in tid),
            "n_with_reference": sum(manifest.reference_path(i) is not None for i in tid),
            "n_scenes": len({scene_of[i] for i in tid}),
            "n_pairs": len(tp), "n_ranked_pairs": sum(p.label != "similar" for p in tp),
            "n_similar_pairs": sum(p.label == "similar" for p in tp),
        }

    cross = {name: cross_content_srcc(sc, manifest, ids, present) for name, sc in method_scores.items()}
    by_impl = implementation_accuracy(manifest, pairs, pref, method_scores)
    records = {
        "images": [{"image_id": i, "content_id": manifest.images[i].content_id, "task": manifest.images[i].task,
                    "scene": scene_of[i], "reference": manifest.images[i].reference or "",
                    "unit_quality": manifest.unit_quality(i), "hard_negative": int(hard_negative(manifest, i)),
                    **{name: sc.get(i) for name, sc in method_scores.items()}} for i in ids],
        "pairs": [{"a": p.a, "b": p.b, "task": t, "label": p.label, "p_first_better": float(v)}
                  for p, t, v in zip(pairs, pair_task, pref)],
        "junk": junk_rows,
    }
    try:
        model_desc = scorer.describe()
    except Exception:  # pragma: no cover - describe is informational only
        model_desc = {}
    result = {
        "model": model_desc,
        "manifest": str(getattr(manifest, "root", "")),
        "tasks_present": present,
        "tasks_absent": [t for t in PAPER_TASK_ORDER if t not in present],
        "unknown_tasks": unknown_tasks,
        "counts": {"images": len(ids), "images_encoded": len(feats), "pairs": len(manifest.pairs),
                   "pairs_evaluated": len(pairs), "pairs_skipped": skipped_pairs,
                   "images_with_reference": len(fr) if baselines else None},
        "tasks": tasks_out,
        "methods": methods_out,
        "range_srcc": range_out,
        "cross_content_srcc": cross,
        "by_implementation": by_impl,
        "junk_vs_clean": junk,
        "junk_vs_clean_baselines": junk_nr,
        "records": records,
        "protocol": {"notes": [n for n in PROTOCOL_NOTES if baselines or not n.startswith(BASELINE_NOTES)]
                     + ([] if baselines else ["Baselines (PSNR/SSIM, LapVar, NIQE) not computed (--no-baselines)."])
                     + ([f"MOS negated (lower is better) for scenes: {', '.join(flipped)}."] if flipped else []),
                     "lower_is_better_scenes": flipped, "min_scene_items": MIN_SCENE_ITEMS,
                     "symmetrised_pairs": True, "fr_channel": "luma_bt601",
                     "psnr_cap_db": M.PSNR_CAP_DB, "range_normalisation": "per-scene observed min-max"},
        "errors": errors,
        # pairs_and_baselines: the pair probabilities, the junk-vs-clean check (model and peers) and the baselines
        "timing_s": {"encode": round(t_encode, 3), "pairs_and_baselines": round(t_all - t_encode, 3),
                     "metrics": round(time.perf_counter() - t_all - t0, 3),
                     "total": round(time.perf_counter() - t0, 3)},
    }
    return jsonable(result)


def _scene_mos_ranges(ids, mos_of, scene_of) -> dict[str, tuple[float, float]]:
    """Per-scene observed (min, max) of the (sign-corrected) MOS over all the scene's images."""
    by: dict[str, list[float]] = {}
    for i in ids:
        if math.isfinite(mos_of[i]):
            by.setdefault(scene_of[i], []).append(mos_of[i])
    return {s: (min(v), max(v)) for s, v in by.items()}


def _range_for(sc: dict, ids: list[str], mos_of, scene_of, scene_range) -> dict:
    """Table-2 range SRCC on ids, MOS normalised with each scene's full range (all its images)."""
    norm = []
    for i in ids:
        lo, hi = scene_range.get(scene_of[i], (math.nan, math.nan))
        norm.append((mos_of[i] - lo) / (hi - lo) if hi > lo else math.nan)
    rs = M.range_srcc([sc[i] for i in ids], norm, normalised=True)
    return rs.to_dict()


# -- report -----------------------------------------------------------------------------------------------
def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def implementation_table(by_impl: dict, methods: list[str]) -> list[str]:
    """Markdown lines of `evaluate`'s per-implementation pair ACC: one row per (task, implementation), a column
    per method; [] when the manifest recorded no implementations."""
    if not by_impl:
        return []
    rows = [[TASK_TITLES.get(task, task), name, str(row["n_contents"]), str(row["n_pairs"])]
            + [_fmt(row.get(m)) for m in methods] for task, impls in by_impl.items() for name, row in impls.items()]
    return (["## Pair ACC by generator implementation (ranked pairs without hard negatives)", ""]
            + _table(["Task", "Implementation", "contents", "pairs"] + list(methods), rows) + [""])


def render_markdown(result: dict) -> str:
    """The report as Markdown: Table 3 layout (methods × task SRCC/PLCC/ACC), counts, Table 2 layout."""
    methods = [m for m in METHODS if m in result["methods"]]
    present = result["tasks_present"]
    cols = list(PAPER_TASK_ORDER) + [t for t in present if t not in PAPER_TASK_ORDER]
    model = result.get("model", {}).get("model", {}) if isinstance(result.get("model"), dict) else {}
    name = model.get("name") if isinstance(model, dict) else None
    c = result["counts"]
    lines = ["# FGResQ evaluation", ""]
    views = (result.get("model") or {}).get("views") or {}
    view_note = "".join([f", {views['crops']} crops" if views.get("crops", 1) > 1 else "",
                         ", + mirrored views" if views.get("flip") else "",
                         ", the model averages each view with its mirror image" if views.get("model_mirror") else ""])
    lines.append(f"- model: {name or '?'} (backend: {result.get('model', {}).get('backend', '?')}{view_note})")
    lines.append(f"- manifest: {result['manifest']}")
    lines.append(f"- images: {c['images']} ({c['images_encoded']} encoded"
                 + (f", {c['images_with_reference']} with reference" if c.get("images_with_reference") is not None else "")
                 + f"); pairs: {c['pairs']} ({c['pairs_evaluated']} evaluated)")
    if result["tasks_absent"]:
        lines.append(f"- tasks not in this manifest: {', '.join(result['tasks_absent'])} (shown as '-')")
    lines.append("- SRCC/PLCC: within each scene (MOS scales differ per scene), averaged over scenes "
                 "weighted by image count")
    lines.append("")

    def task_block(tasks: list[str], with_avg: bool) -> list[str]:
        header = ["Method"]
        for t in tasks:
            header += [f"{TASK_TITLES.get(t, t)} SRCC", "PLCC", "ACC"]
        if with_avg:
            header += ["Average SRCC", "PLCC", "ACC"]
        rows = []
        for m in methods:
            pt = result["methods"][m]["per_task"]
            row = [m]
            for t in tasks:
                d = pt.get(t, {})
                row += [_fmt(d.get("srcc")), _fmt(d.get("plcc")), _fmt(d.get("acc"))]
            if with_avg:
                a = result["methods"][m]["average"]
                row += [_fmt(a.get("srcc")), _fmt(a.get("plcc")), _fmt(a.get("acc"))]
            rows.append(row)
        return _table(header, rows)

    lines.append("## Per-task SRCC / PLCC / ACC (paper Table 3 layout)")
    lines.append("")
    lines += task_block(cols[:3], with_avg=False)
    lines.append("")
    lines += task_block(cols[3:], with_avg=True)
    lines.append("")

    lines.append("## Counts and FGResQ 3-way accuracy")
    lines.append("")
    rows = []
    fg = result["methods"].get("FGResQ", {}).get("per_task", {})
    for t in present:
        d = result["tasks"][t]
        plm = fg.get(t, {}).get("plcc_methods", {})
        rows.append([TASK_TITLES.get(t, t), str(d["n_images"]), str(d["n_with_reference"]), str(d["n_scenes"]),
                     str(d["n_pairs"]), str(d["n_ranked_pairs"]), str(d["n_similar_pairs"]),
                     _fmt(fg.get(t, {}).get("acc3")),
                     f"{plm.get('logistic4', 0)}/{plm.get('pearson', 0)}"])
    avg3 = result["methods"].get("FGResQ", {}).get("average", {}).get("acc3")
    rows.append(["Average", "", "", "", "", "", "", _fmt(avg3), ""])
    lines += _table(["Task", "images", "with ref", "scenes", "pairs", "ranked", "similar", "ACC3 (FGResQ)",
                     "PLCC fits logistic/pearson (FGResQ)"], rows)
    lines.append("")

    lines.append("## SRCC within normalised MOS ranges (paper Table 2 layout)")
    lines.append("")
    labs = result["range_srcc"]["labels"]
    rows = []
    for scope, title in [("all", "All tasks")] + [(t, TASK_TITLES.get(t, t)) for t in present]:
        block = result["range_srcc"]["all"] if scope == "all" else result["range_srcc"]["per_task"][scope]
        for m in methods:
            d = block.get(m)
            if d is None:
                continue
            rows.append([title, m] + [_fmt(d.get(lab)) for lab in labs] + [_fmt(d.get("overall")),
                                                                           str(d["n"]["overall"])])
    lines += _table(["Scope", "Method"] + labs + ["Overall", "n"], rows)
    lines.append("")
    cross = result.get("cross_content_srcc") or {}
    if cross:
        lines.append("## Cross-content SRCC (all images of a task pooled over contents, MOS scaled by scene range)")
        lines.append("")
        rows = [["pooled", m] + [_fmt((cross.get(m) or {}).get(t)) for t in present]
                + [_fmt((cross.get(m) or {}).get("all"))] for m in methods if m in cross]
        lines += _table(["Scope", "Method"] + [TASK_TITLES.get(t, t) for t in present] + ["All tasks"], rows)
        lines.append("")
    junk = result.get("junk_vs_clean") or {}
    if junk.get("per_kind"):
        lines.append("## Junk vs clean (clean references against hard negatives made from every reference)")
        lines.append("")
        peers = {m: r for m, r in (result.get("junk_vs_clean_baselines") or {}).items() if r.get("per_kind")}
        rows = [[k, _fmt(v["clean_wins"]), _fmt(v.get("compare_clean_wins")), _fmt(v["junk_mean_score"])]
                + [_fmt(r["per_kind"].get(k, {}).get("clean_wins")) for r in peers.values()]
                for k, v in junk["per_kind"].items()]
        rows.append(["all", _fmt(junk["clean_wins"]), _fmt(junk.get("compare_clean_wins")),
                     f"clean mean {_fmt(junk['clean_mean_score'])}"] + [_fmt(r["clean_wins"]) for r in peers.values()])
        lines += _table(["Junk kind", "clean wins", "clean wins (compare)", "mean score"]
                        + [f"{m}: clean wins" for m in peers], rows)
        lines.append("")
    lines += implementation_table(result.get("by_implementation") or {}, methods)
    lines.append("## Notes")
    lines.append("")
    lines += [f"- {n}" for n in result["protocol"]["notes"]]
    n_err = len(result.get("errors", []))
    if n_err:
        lines.append(f"- {n_err} problem(s) recorded under `errors` in the JSON report.")
    lines.append("")
    return "\n".join(lines)


RECORD_FILES = {"images": "eval-images.csv", "pairs": "eval-pairs.csv", "junk": "eval-junk.csv"}


def write_report(result: dict, out_dir) -> tuple[Path, Path]:
    """Write eval.json and eval.md into out_dir (created), and the per-image, per-pair and junk scores the
    metrics came from as eval-images.csv, eval-pairs.csv and eval-junk.csv (RECORD_FILES). Why the rows: a difference
    between two models is only as firm as the photos behind it, and train/paired_bootstrap.py resamples
    photos from these files; eval.json keeps the summaries. Returns the paths of eval.json and eval.md."""
    import csv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in result.items() if k != "records"}
    for key, name in RECORD_FILES.items():
        rows = (result.get("records") or {}).get(key) or []
        with open(out / name, "w", newline="", encoding="utf-8") as f:
            if rows:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows({k: ("" if v is None else repr(v) if isinstance(v, float) else v)
                             for k, v in r.items()} for r in rows)
    jp, mp = out / "eval.json", out / "eval.md"
    jp.write_text(json.dumps(jsonable(summary), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    mp.write_text(render_markdown(summary), encoding="utf-8")
    return jp, mp


def eval_main(model: Path | None, manifest: Path, out: Path | None, backend: str = "onnxruntime",
              crops: int = 1, flip: bool = False, baselines: bool = True) -> dict:
    """What `fgresq-sdk eval --model DIR --manifest M --out DIR` runs: evaluate, write, print Markdown.

    model None means the SDK's embedded default model. crops/flip: the views each image is encoded with, as
    `rank --crops K --flip` would (recorded in eval.json's model.views). Progress goes to stderr, the Markdown
    to stdout. baselines=False leaves PSNR/SSIM and the no-reference peers out (they do not depend on the model,
    and take more than half of the time: 298 s with them, 141 s without on the recipe's test photos, AMD EPYC Zen 3);
    the model's own junk-vs-clean check stays.
    """
    from fgresq_sdk.scorer import Scorer

    scorer = Scorer(model, backend=backend, crops=crops, flip=flip)
    result = evaluate(scorer, manifest, log=lambda m: print(m, file=sys.stderr), baselines=baselines)
    if out is not None:
        jp, mp = write_report(result, out)
        print(f"wrote {jp} and {mp}", file=sys.stderr)
    sys.stdout.write(render_markdown(result))
    sys.stdout.flush()
    return result
