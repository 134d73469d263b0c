"""Calibrate a bundle's comparison probabilities on val photos: a temperature and a `similar` offset in heads.npz.

Why: the comparison head is trained for decisions, not for probabilities. On the embedded default (with its pair
term) 2,102 of the test photos' 2,140 ranked pairs came out at P ≥ 0.99 (most at 1 − 1e-15) and 3.2 % of those
were wrong; the three-way negative log-likelihood was 9.5. A `compare` that says 1.000 where it is wrong one time in
thirty is not an answer to trust. Two numbers fitted on the val photos fix the scale without touching any decision
of the head:

    logits' = logits / T + (0, 0, δ)        (rows: first better, second better, similar)

T > 1 softens every probability (the order of first vs second is the sign of their logit difference, which T
keeps), δ moves mass to or from `similar`, whose share the head never learnt to state. (T, δ) minimise the
three-way NLL of the runtime's symmetrised probabilities (½(p_ab + p_ba with its first two columns swapped),
train/metrics.py) over every val pair, `similar` ones included. Written into heads.npz as compare_weight / T and
compare_bias / T + (0, 0, δ), so every runtime that reads heads.npz (Python, C/C++, Triton clients) reports the
calibrated probabilities without a code change; the encoder and the score are the source bundle's byte for byte.
Pair decisions can move only where the two presentation orders disagree (the symmetrised P̃ weighs them by
their confidence), which the record counts on val.

``python -m fgresq_sdk.train.calibrate_compare --model BUNDLE --val-manifest VAL --out NEW_BUNDLE``
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

from fgresq_sdk.bundle import MANIFEST, load_bundle
from fgresq_sdk.errors import BundleError, FGResQError
from fgresq_sdk.heads import CompareHeadNP, similar_shift, softmax, tempered_compare_head

from .manifest import LABELS, Manifest
from .metrics import symmetrised_pair_probs

SECTION = "compare_calibration"
METHOD = "temperature + similar offset, val three-way NLL"
# the grid that seeds the optimiser (the NLL is smooth in (ln T, δ) but flat far from its minimum)
T_GRID = tuple(2.0 ** k for k in range(0, 8))
DELTA_GRID = tuple(np.arange(-2.0, 4.01, 0.5))


def calibrated_probs(l_ab: np.ndarray, l_ba: np.ndarray, temperature: float, delta: float):
    """(P̃ [N], symmetrised three-way probabilities [N, 3]) under (T, δ)."""
    shift = similar_shift(delta)
    return symmetrised_pair_probs(softmax(l_ab / temperature + shift), softmax(l_ba / temperature + shift))


def three_way_nll(three: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(three[np.arange(len(y)), y], 1e-300, 1.0))))


def fit_calibration(l_ab: np.ndarray, l_ba: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(T, δ) minimising the symmetrised three-way NLL: the best point of a (T, δ) grid, then L-BFGS in (ln T, δ)."""
    import torch

    if len(y) == 0 or not np.isin(y, (0, 1, 2)).all():
        raise ValueError("calibration needs pairs labelled first / second / similar")
    grid = [(three_way_nll(calibrated_probs(l_ab, l_ba, t, d)[1], y), t, d) for t in T_GRID for d in DELTA_GRID]
    _, t0, d0 = min(grid)
    lab, lba = torch.from_numpy(np.asarray(l_ab, np.float64)), torch.from_numpy(np.asarray(l_ba, np.float64))
    yt = torch.from_numpy(np.asarray(y, np.int64))
    log_t = torch.tensor(float(np.log(t0)), dtype=torch.float64, requires_grad=True)
    delta = torch.tensor(float(d0), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t, delta], max_iter=200, tolerance_grad=1e-10, line_search_fn="strong_wolfe")
    on_similar = torch.from_numpy(similar_shift(1.0))

    def closure():
        opt.zero_grad()
        shift = on_similar * delta
        p_ab = torch.softmax(lab / log_t.exp() + shift, dim=1)
        p_ba = torch.softmax(lba / log_t.exp() + shift, dim=1)
        three = 0.5 * (p_ab + p_ba[:, [1, 0, 2]])
        loss = -torch.log(three[torch.arange(len(yt)), yt].clamp_min(1e-300)).mean()
        loss.backward()
        return loss

    opt.step(closure)
    t, d = float(log_t.detach().exp()), float(delta.detach())
    if not (np.isfinite(t) and np.isfinite(d)) or three_way_nll(calibrated_probs(l_ab, l_ba, t, d)[1], y) > min(grid)[0]:
        t, d = t0, d0  # the optimiser may not make things worse than its seed
    return t, d


def readings(l_ab: np.ndarray, l_ba: np.ndarray, y: np.ndarray, temperature: float, delta: float) -> dict:
    """What the record keeps of (T, δ) on a set of pairs: three-way NLL and ACC, ranked-pair ACC, and how often a
    ranked pair is called with P̃ ≥ 0.99 and how often that call is right."""
    pref, three = calibrated_probs(l_ab, l_ba, temperature, delta)
    ranked = y < 2
    right = (pref[ranked] > 0.5) == (y[ranked] == 0)
    sure = np.maximum(pref[ranked], 1 - pref[ranked]) >= 0.99
    return {"three_way_nll": round(three_way_nll(three, y), 4),
            "three_way_acc": round(float(np.mean(three.argmax(1) == y)), 4),
            "ranked_acc": round(float(right.mean()), 4) if ranked.any() else None,
            "ranked_at_p99": int(sure.sum()),
            "ranked_at_p99_right": round(float(right[sure].mean()), 4) if sure.any() else None}


def val_pairs(bundle, manifest: Manifest) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """(features of the val images, a, b, labels, errors) through the runtime's own views; unreadable images are
    left out (listed in errors) with their pairs."""
    from fgresq_sdk.scorer import Scorer

    ids = list(manifest.images)
    feats, kept, errors = [], {}, []
    # features only: the comparisons never read a score, so the naturalness term's distance is not computed
    for enc in Scorer(bundle, backend="onnxruntime").iter_encode([manifest.image_path(i) for i in ids], names=ids,
                                                                 features_only=True):
        if enc.error is not None:
            errors.append({"image_id": ids[enc.index], "error": enc.error})
            continue
        kept[ids[enc.index]] = len(feats)
        feats.append(enc.features)
    rows = [(kept[p.a], kept[p.b], LABELS.index(p.label)) for p in manifest.pairs
            if p.label in LABELS and p.a in kept and p.b in kept]
    if len(rows) < 10:
        raise ValueError(f"{manifest.root}: only {len(rows)} val pairs could be read; need at least 10")
    a, b, y = (np.array(c) for c in zip(*rows))
    return np.stack(feats).astype(np.float64), a, b, y, errors


def tempered_heads(heads_npz: bytes, temperature: float, delta: float) -> bytes:
    """heads.npz with the comparison head's rows divided by T and δ added to the `similar` bias (float32, as
    exported); every other array as it was."""
    with np.load(io.BytesIO(heads_npz), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    w, b = tempered_compare_head(arrays["compare_weight"], arrays["compare_bias"], temperature, delta)
    arrays["compare_weight"], arrays["compare_bias"] = w.astype(np.float32), b.astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def calibrate(model: Path, val_manifest: Path, out: Path, *, force: bool = False) -> dict:
    from fgresq_sdk.export.derive import amended_bundle
    from fgresq_sdk.export.staging import check_out_dir

    bundle = load_bundle(model)
    if SECTION in bundle.manifest:
        raise BundleError(f"{model}: its comparison head is already calibrated (fit on the bundle without it)")
    check_out_dir(out, force)  # a folder that is not ours is refused before the val photos are read
    manifest = Manifest.load(val_manifest)
    heads_npz = bundle.read("heads")
    head = CompareHeadNP.from_npz(heads_npz)
    q, a, b, y, errors = val_pairs(bundle, manifest)
    l_ab, l_ba = head.indexed_pair_logits(q, a, b)
    t, d = fit_calibration(l_ab, l_ba, y)
    section = {"method": METHOD, "temperature": t, "similar_offset": d,
               "fit": {"val_manifest": str(val_manifest), "val_pairs": int(len(y)),
                       "val_pairs_by_label": {k: int(np.sum(y == v)) for v, k in enumerate(LABELS)},
                       "val_errors": len(errors), "before": readings(l_ab, l_ba, y, 1.0, 0.0),
                       "after": readings(l_ab, l_ba, y, t, d)}}
    heads = tempered_heads(heads_npz, t, d)
    amended_bundle(bundle, out, files={"heads": (bundle.entry("heads")["path"], heads)}, section=(SECTION, section),
                   source_note="comparison probabilities calibrated on val photos", force=force)
    return section


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fgresq_sdk.train.calibrate_compare",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="bundle to start from (comparison head not calibrated)")
    ap.add_argument("--val-manifest", type=Path, required=True, help="val photos (never test or mate photos)")
    ap.add_argument("--out", type=Path, required=True, help="new bundle folder")
    ap.add_argument("--force", action="store_true", help="replace --out if it is a bundle")
    args = ap.parse_args(argv)
    try:
        section = calibrate(args.model, args.val_manifest, args.out, force=args.force)
    except (OSError, ValueError, KeyError, FGResQError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: section[k] for k in ("temperature", "similar_offset")} | section["fit"]))
    print(f"wrote {args.out / MANIFEST}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
