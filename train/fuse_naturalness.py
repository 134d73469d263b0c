"""Give a bundle the naturalness term (fgresq_sdk/naturalness.py), fitted on val photos: a new bundle folder.

The score head orders versions of one photo but has little sense of quality across photos; the NIQE-style
distance d has it without any label (eval: it beats the model on junk vs clean). This step scores every val image
with the bundle, reads ln d on the same views the encoder sees, and for each k of a grid fuses

    logit(score) − w · ln d,    w = k · sd(logit score) / sd(ln d)  (both over the val images),

keeping the k with the best cross-content SRCC on val (ties: the smaller k). The fused logit is then recalibrated
like train/calibrate.py (val 5th / 95th percentiles at scores 0.05 / 0.95). Nothing is learnt from test or
mate-backgrounds photos. The encoder, the heads and so compare and rank are the source bundle's, byte for byte.

``python -m fgresq_sdk.train.fuse_naturalness --model BUNDLE --val-manifest VAL --out NEW_BUNDLE``
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

from fgresq_sdk.bundle import MANIFEST, load_bundle
from fgresq_sdk.errors import BundleError, FGResQError
from fgresq_sdk.naturalness import METHOD, SECTION, NaturalnessTerm, score_logit
from fgresq_sdk.niqe import Pristine

from .calibrate import HIGH, LOW, percentile_affine
from .manifest import Manifest
from .niqe import DEFAULT_PRISTINE
from .term_weight import choose_weight

DEFAULT_KS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
PRISTINE_ROLE = "niqe_pristine"
PRISTINE_FILE = "niqe-pristine.json"


def val_terms(bundle, manifest: Manifest, pristine: Pristine) -> tuple[list[str], np.ndarray, np.ndarray, list]:
    """(image ids, score logits, ln d, errors) of the val images, through the runtime's own views."""
    from fgresq_sdk.scorer import Scorer

    scorer = Scorer(bundle, backend="onnxruntime")
    # weight 0, identity calibration: the Scorer reports ln d beside the model's own score
    spec = bundle.preprocess_spec  # mean/std with the legacy defaults, as NaturalnessTerm.from_bundle reads them
    scorer.naturalness = NaturalnessTerm(pristine, 0.0, 1.0, 0.0, tuple(spec.mean), tuple(spec.std))
    ids = list(manifest.images)
    kept, logit, logd, errors = [], [], [], []
    for enc in scorer.iter_encode([manifest.image_path(i) for i in ids], names=ids):
        if enc.error is not None:
            errors.append({"image_id": ids[enc.index], "error": enc.error})
            continue
        kept.append(ids[enc.index])
        logit.append(float(score_logit(enc.score)))
        logd.append(enc.log_distance)
    return kept, np.array(logit), np.array(logd), errors


def choose(ids: list[str], logit: np.ndarray, logd: np.ndarray, manifest: Manifest, ks=DEFAULT_KS) -> dict:
    """The k (and w) with the best val cross-content SRCC, and every k's SRCC (train/term_weight.py's rule: the
    hard negatives stay in, because the term exists for both absolute goals; without them it would trade the junk
    margin away unseen)."""
    return choose_weight(ids, logit, -logd, manifest, ks, "k")


def write_fused_bundle(bundle, out: Path, pristine: bytes, section: dict, force: bool = False) -> Path:
    """A copy of `bundle` (every file verified as copied) plus the pristine model (the bytes of its JSON file) and
    the naturalness section."""
    from fgresq_sdk.export.derive import amended_bundle

    return amended_bundle(bundle, out, files={PRISTINE_ROLE: (PRISTINE_FILE, pristine)}, section=(SECTION, section),
                          source_note="naturalness term fitted on val photos", force=force)


def fuse(model: Path, val_manifest: Path, out: Path, *, pristine_path: Path = DEFAULT_PRISTINE, ks=DEFAULT_KS,
         force: bool = False) -> dict:
    bundle = load_bundle(model)
    if SECTION in bundle.manifest:
        raise BundleError(f"{model}: already has a {SECTION} term (fit on the bundle without it)")
    manifest = Manifest.load(val_manifest)
    # read once: the model fitted with, the bytes shipped and the hash recorded are the same file content
    data = pristine_path.read_bytes()
    ids, logit, logd, errors = val_terms(bundle, manifest, Pristine.from_bytes(data, where=str(pristine_path)))
    if len(ids) < 10:
        raise ValueError(f"{val_manifest}: only {len(ids)} val images could be scored; need at least 10")
    pick = choose(ids, logit, logd, manifest, ks)
    scale, offset, _, _ = percentile_affine(logit - pick["weight"] * logd)
    section = {"method": METHOD, "pristine": PRISTINE_ROLE, "weight": pick["weight"], "scale": scale,
               "offset": offset,
               "fit": {"k": pick["k"], "weight_per_k": pick["weight_per_k"], "grid": pick["grid"],
                       "val_images": len(ids), "val_errors": len(errors), "val_manifest": str(val_manifest),
                       "calibration": {"scores": [LOW, HIGH], "percentiles": [5, 95]},
                       "pristine_sha256": hashlib.sha256(data).hexdigest()}}
    write_fused_bundle(bundle, out, data, section, force=force)
    return section


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fgresq_sdk.train.fuse_naturalness",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="bundle to start from (no naturalness term yet)")
    ap.add_argument("--val-manifest", type=Path, required=True, help="val photos (never test or mate photos)")
    ap.add_argument("--out", type=Path, required=True, help="new bundle folder")
    ap.add_argument("--pristine", type=Path, default=DEFAULT_PRISTINE, help="NIQE pristine model JSON")
    ap.add_argument("--ks", default=",".join(str(k) for k in DEFAULT_KS), help="comma-separated k grid")
    ap.add_argument("--force", action="store_true", help="replace --out if it is a bundle")
    args = ap.parse_args(argv)
    try:
        ks = [float(k) for k in args.ks.split(",") if k.strip()]
        if not ks or any(not (math.isfinite(k) and k >= 0) for k in ks):
            raise ValueError(f"--ks {args.ks!r}: needs finite k ≥ 0")
        section = fuse(args.model, args.val_manifest, args.out, pristine_path=args.pristine, ks=ks,
                       force=args.force)
    except (OSError, ValueError, KeyError, FGResQError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: section[k] for k in ("weight", "scale", "offset")} | {"k": section["fit"]["k"]}))
    print(f"wrote {args.out / MANIFEST}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
