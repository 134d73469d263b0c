"""Fit the NIQE pristine model: the Gaussian of the sharpest patches of clean fit photos.

The statistics and the distance live in fgresq_sdk/niqe.py (numpy only; the runtime uses them for bundles with a
naturalness term, eval as a no-reference baseline beside Laplacian variance). NIQE (Mittal, Soundararajan & Bovik,
2013) is the classical *opinion-unaware* peer: it learns nothing from quality labels, only what undistorted photos
look like, so it is a fair no-reference comparison for a model trained on synthetic labels.

Patches kept for the fit: those whose sharpness (mean local contrast) is above 0.75 x the image's sharpest patch,
flat ones excluded. Differences from the authors' MATLAB release, chosen for this data: 64-pixel patches (the
synthetic crops are 256 px; the original 96-pixel patches would leave 4 per image), a 2x2-mean downsample instead
of bicubic, and the pristine model fitted on the fit split's clean references (`train/data/niqe-pristine-set2.json`,
never on val, test or mate-backgrounds photos), not on the authors' 125 photos.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from fgresq_sdk.niqe import FORMAT, N_FEATURES, PATCH, Pristine, features

SHARPNESS_FRACTION = 0.75
DEFAULT_PRISTINE = Path(__file__).resolve().parent / "data" / "niqe-pristine-set2.json"


def fit_pristine(lumas, patch: int = PATCH, sharpness_fraction: float = SHARPNESS_FRACTION) -> dict:
    """The pristine multivariate Gaussian over the sharpest patches of clean photos."""
    kept, n_images = [], 0
    for luma in lumas:
        f, sharp = features(luma, patch)
        if sharp.max() <= 0:
            continue  # a flat image has no sharp patch to learn from
        kept.append(f[sharp > sharpness_fraction * sharp.max()])
        n_images += 1
    if not kept:
        raise ValueError("no usable (non-flat) images to fit the pristine model")
    f = np.concatenate(kept)
    f = f[np.all(np.isfinite(f), axis=1)]
    if len(f) <= N_FEATURES:
        raise ValueError(f"only {len(f)} usable patches; the pristine model needs more than {N_FEATURES}")
    model = {"format": FORMAT, "patch": patch, "sharpness_fraction": sharpness_fraction,
             "n_images": n_images, "n_patches": int(len(f)),
             "mean": f.mean(axis=0).tolist(), "cov": np.cov(f, rowvar=False).tolist()}
    Pristine.from_dict(model, where=f"the Gaussian of {len(f)} patches")  # usable by the runtime, or ValueError
    return model


def load_pristine(path: Path | str | None = None) -> Pristine:
    """The pristine model in a JSON file (default: the shipped one, fitted on the fit split's references)."""
    p = Path(path) if path is not None else DEFAULT_PRISTINE
    return Pristine.from_bytes(p.read_bytes(), where=str(p))


def _fit_main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fgresq_sdk.train.niqe",
                                 description="Fit the NIQE pristine model on a folder of clean images.")
    ap.add_argument("--references", type=Path, required=True,
                    help="folder of clean images (e.g. a fit folder's references/; never val/test/mate photos)")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write (refused if it exists)")
    ap.add_argument("--source", default="", help="where the images came from, recorded in the file")
    args = ap.parse_args(argv)
    from fgresq_sdk.preprocess import load_image

    from .metrics import to_luma

    if args.out.exists():
        print(f"error: {args.out} exists; choose a new file (nothing was overwritten)", file=sys.stderr)
        return 2
    files = sorted(p for p in args.references.glob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not files:
        print(f"error: {args.references}: no .png/.jpg images", file=sys.stderr)
        return 2
    digest = hashlib.sha256()
    lumas = []
    for p in files:
        digest.update(p.name.encode() + p.read_bytes())
        lumas.append(to_luma(np.asarray(load_image(str(p), name=str(p)))))
    try:
        model = fit_pristine(lumas)
    except ValueError as exc:
        print(f"error: {args.references}: {exc}", file=sys.stderr)
        return 2
    model.update({"source": args.source, "images_sha256": digest.hexdigest()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(model) + "\n")
    print(json.dumps({k: model[k] for k in ("n_images", "n_patches", "patch")}))
    return 0


if __name__ == "__main__":
    sys.exit(_fit_main())
