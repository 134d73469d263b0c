"""The naturalness term: a bundle's score, moved by how far the image is from clean photos' statistics.

The score head learnt quality from versions of one photo, so across photos it has little absolute sense: in eval
a clean photo beat junk (noise, flat frames, extreme blur or JPEG) in 94 % of pairs, while the label-free
NIQE-style distance d (fgresq_sdk/niqe.py) does so in 96 %. A bundle whose model.json has a `naturalness`
section scores

    score = sigmoid(scale · (logit(s) − weight · ln d) + offset)

where s is the encoder's score and d is read on the same pixels the encoder sees (each view of the bundle's
preprocessing, mean of ln d over the views). weight is chosen on val photos (train/fuse_naturalness.py) and
scale/offset recalibrate the fused logit the way train/calibrate.py does the model's. The term changes `score`
and whatever reads it, never the comparison head: compare and rank decisions stay the model's.

    "naturalness": {"method": "niqe-log-distance", "pristine": "<file role>", "weight": w,
                    "scale": a, "offset": b}

The pristine model is a bundle file like any other (sha256 checked when read). cpp_bindings/src/bundle.cpp
validates the section with the same rules.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BundleError
from .niqe import PATCH, Pristine, luma_of_view
from .preprocess import PreprocessSpec

SECTION = "naturalness"
METHOD = "niqe-log-distance"
_SCORE_CLAMP = 1e-7  # a float32 score's logit is only known to about ±16


def _finite(x: Any) -> bool:
    try:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    except OverflowError:  # an integer beyond float range
        return False


def validate_section(manifest: dict, where: str) -> None:
    """BundleError (one line) unless the optional section is well formed and names a listed file."""
    if SECTION not in manifest:
        return
    sec = manifest[SECTION]
    if not isinstance(sec, dict):
        raise BundleError(f"{where}: '{SECTION}' is not an object")
    if sec.get("method") != METHOD:
        raise BundleError(f"{where}: {SECTION}.method must be '{METHOD}' (got {json.dumps(sec.get('method'))}); "
                          "upgrade fgresq-sdk if the bundle is newer")
    role = sec.get("pristine")
    if not isinstance(role, str) or role not in manifest.get("files", {}):
        raise BundleError(f"{where}: {SECTION}.pristine must name a file listed in 'files' (got {json.dumps(role)})")
    for key in ("weight", "scale", "offset"):
        if not _finite(sec.get(key)):
            raise BundleError(f"{where}: {SECTION}.{key} must be a finite number")
    if sec["weight"] < 0 or sec["scale"] <= 0:
        raise BundleError(f"{where}: {SECTION} needs weight ≥ 0 and scale > 0")
    size = PreprocessSpec.from_dict(manifest["preprocess"], where=where).size
    if size < PATCH:  # refused at load, not at the first image
        raise BundleError(f"{where}: {SECTION} needs a model input of at least {PATCH} px (preprocess size {size})")


def score_logit(score: np.ndarray | float) -> np.ndarray:
    """logit of the encoder's score, clamped where float32 cannot tell it from 0 or 1."""
    s = np.clip(np.asarray(score, np.float64), _SCORE_CLAMP, 1 - _SCORE_CLAMP)
    return np.log(s) - np.log1p(-s)


@dataclass(frozen=True)
class NaturalnessTerm:
    pristine: Pristine
    weight: float
    scale: float
    offset: float
    mean: tuple[float, float, float]  # the bundle's normalisation, undone to read the pixels
    std: tuple[float, float, float]

    @classmethod
    def from_bundle(cls, bundle) -> "NaturalnessTerm | None":
        """The bundle's term (its pristine file read and verified), or None when it has none."""
        sec = bundle.manifest.get(SECTION)
        if sec is None:
            return None
        data = bundle.read(sec["pristine"])
        try:
            pristine = Pristine.from_bytes(data, where=str(bundle.path(sec["pristine"])))
        except ValueError as exc:
            raise BundleError(str(exc)) from None
        spec = bundle.preprocess_spec  # mean/std with the legacy defaults where the manifest has none
        return cls(pristine, float(sec["weight"]), float(sec["scale"]), float(sec["offset"]),
                   tuple(spec.mean), tuple(spec.std))

    def log_distance(self, views: np.ndarray) -> float:
        """Mean ln d over the views [V, 3, S, S] (normalised model inputs) of one image."""
        return float(np.mean([math.log(max(self.pristine.distance(luma_of_view(v, self.mean, self.std)), 1e-12))
                              for v in views]))

    def fuse(self, score: np.ndarray | float, log_distance: np.ndarray | float) -> np.ndarray:
        """The fused score in (0, 1) from the encoder's score and ln d."""
        z = self.scale * (score_logit(score) - self.weight * np.asarray(log_distance, np.float64)) + self.offset
        return 1.0 / (1.0 + np.exp(-z))

    def describe(self) -> dict:
        return {"method": METHOD, "weight": self.weight, "scale": self.scale, "offset": self.offset}
