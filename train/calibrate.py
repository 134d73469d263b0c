"""Spread a trained model's scores over (0, 1) without changing any order: an affine map of the score logit.

Trained from scratch, the score head's logits can span hundreds of units (the v6 default: −23 … 345 on the
val photos), so sigmoid(logit) prints 1.0000 for most images and ``fgresq-sdk score`` tells a user nothing. The
score is sigmoid(k·(w·q + b)); replacing k and b (w, the towers and the comparison head untouched) maps the
logit z to α·z + β, a strictly increasing function, so every ranking, SRCC, pair ACC and comparison stays what
it was. α and β are set on *val* images so that their 5th / 95th score-logit percentiles land at scores 0.05 /
0.95: a score then reads as "where this image falls among the val photos' versions".

``python -m fgresq_sdk.train.calibrate --checkpoint CKPT --manifest VAL --out CKPT2``
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from fgresq_sdk.model import load_checkpoint, save_checkpoint

from .allocator import keep_freed_memory
from .datasets import TransformSpec
from .manifest import Manifest
from .stage2 import manifest_features

LOW, HIGH = 0.05, 0.95  # the scores the val logits' 5th and 95th percentiles are mapped to


@torch.no_grad()
def score_logits(model, manifest: Manifest, batch_size: int = 32) -> np.ndarray:
    """k·(w·q + b) of every manifest image through the inference preprocessing."""
    ids, q = manifest_features(model, manifest, TransformSpec.from_config(model.cfg), batch_size=batch_size)
    return logits_of_features(model, q) if ids else np.zeros(0, dtype=np.float32)


def logits_of_features(model, q: torch.Tensor) -> np.ndarray:
    """The float32 score logits [N] of features q [N, F], in one product: the values the calibration is read from
    (train/fit_prior.py --calibrate reads them from its own val pass the same way, to the bit)."""
    return model.score_logit(q).squeeze(-1).cpu().numpy()


def percentile_affine(logits: np.ndarray, low: float = LOW,
                      high: float = HIGH) -> tuple[float, float, float, float]:
    """(α, β) mapping the 5th / 95th percentiles of `logits` to the logits of scores `low` / `high`, and those two
    percentiles (z5, z95) for the record."""
    z5, z95 = (float(v) for v in np.percentile(logits, [5, 95]))
    if not z95 - z5 > 1e-6:
        raise ValueError("the val images' score logits do not spread: nothing to calibrate against")
    t_lo, t_hi = math.log(low / (1 - low)), math.log(high / (1 - high))
    alpha = (t_hi - t_lo) / (z95 - z5)
    return alpha, t_lo - alpha * z5, z5, z95


def calibrate(model, logits: np.ndarray, low: float = LOW, high: float = HIGH) -> dict:
    """Set the model's score scale and head bias so that the 5th / 95th percentiles of `logits` score low / high."""
    alpha, beta, z5, z95 = percentile_affine(logits, low, high)
    k = model.score_scale
    new_k = alpha * k
    with torch.no_grad():  # k'·(w·q + b') = α·k·(w·q + b) + β
        model.head.bias += beta / new_k
    model.score_scale = new_k
    model.cfg["score_scale"] = new_k
    return {"alpha": alpha, "beta": beta, "score_scale": new_k, "logit_p5": z5, "logit_p95": z95,
            "scores": [low, high], "images": int(logits.size)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fgresq_sdk.train.calibrate")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--manifest", required=True, help="val manifest (never the test photos)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--force", action="store_true", help="replace --out if it exists")
    a = ap.parse_args(argv)
    if Path(a.out).exists() and not a.force:
        print(f"error: {a.out}: exists (pass --force to replace it)", file=sys.stderr)
        return 2
    keep_freed_memory()  # scoring the val photos in torch: the same page-fault churn as training
    model = load_checkpoint(a.checkpoint).eval()
    record = calibrate(model, score_logits(model, Manifest.load(a.manifest)))
    record["manifest"] = str(a.manifest)
    save_checkpoint(model, a.out, source=f"{a.checkpoint}, score calibrated on {a.manifest}",
                    extra={"score_calibration": json.dumps(record, sort_keys=True)})
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
