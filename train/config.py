"""Training configs: the schema (every key with its default), shipped configs, and loading with checks.

A run's behaviour is fully described by its resolved config (written to ``out/config.json`` and into every
checkpoint), so the defaults live here as data and a config may set only keys this schema knows: a typo
fails at load time instead of silently training with a default. Torch-free, so configs can be listed and
checked without the training extra.
"""
from __future__ import annotations

import copy
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from .kernels import KERNELS
from .manifest import TASKS

__all__ = ["DEFAULTS", "DEFAULT_PROMPTS", "STAGES", "TrainError", "load_train_config", "list_train_configs"]

STAGES = ("dfl", "fgresq")

DEFAULT_PROMPTS = {
    "super_resolution": "a photo restored by super-resolution",
    "deblurring": "a photo restored by deblurring",
    "denoising": "a photo restored by denoising",
    "dehazing": "a photo restored by dehazing",
    "deraining": "a photo restored by deraining",
    "mixture": "a photo restored by mixed restoration",
}

# Every key a training config may set, with its default. Paths in a config are taken relative to the
# current directory (absolute paths as they are); CLI options override the config.
DEFAULTS: dict[str, Any] = {
    "name": "unnamed",
    "description": "",
    "model": "fgresq-vit-tiny",       # model config name or JSON path (fgresq_sdk.config.load_config)
    "manifest": None,                 # training manifest folder (or manifest.json)
    "val_manifest": None,             # optional validation manifest, evaluated after every epoch
    "val_fraction": 0.0,              # > 0: hold out this share of pairs (split_manifest, by content)
    "pretrained": None,               # local open_clip checkpoint (or one of our FGResQ checkpoints)
    "requires_pretrained": False,     # refuse to run without --pretrained / "pretrained"
    "seed": 0,
    "threads": None,                  # torch.set_num_threads; None = all cores
    "device": "cpu",                  # torch device for training ("cuda", "cuda:1", ...)
    # CPU kernels (train/kernels.py): "native" = the fastest this CPU has; "portable" = ATen capped at AVX2,
    # oneDNN off, MKL's COMPATIBLE reproducibility branch: a seed trains the same weights on Intel CPUs of
    # different generations and ISAs (measured), but not on an AMD CPU (an AVX2-only Zen 3 trained others,
    # 2026-12-06); ~2.5x the step time on an AVX-512 Intel
    "cpu_kernels": "native",
    # torch.compile the towers' call in full training batches (train/compiled.py): float noise, ~1/3 less step
    # time on 2-core CPUs; needs a C++ compiler (without one the run logs why and trains eagerly). An execution
    # option like "threads": `fgresq-sdk train --compile` sets it; not with the portable kernels
    "compile": False,
    "log_every": 1,                   # write a step line every N optimizer steps
    "keep_checkpoints": 2,            # epoch checkpoints kept per stage (None = all)
    "export": False,                  # export bundle/ at the end
    "data": {
        "resize": 256,                # training: resize to resize×resize ...
        "crop": 224,                  # ... then random crop×crop (must equal the model's input size)
        "hflip": False,               # same random horizontal flip for both images of a pair
        "cache_mb": 2048,             # decoded-image cache
        "num_workers": 0,             # DataLoader workers (0: decode in the training process)
        # image batches in channels-last (NHWC) layout: the same numbers up to float noise, and oneDNN's
        # convolutions run ~1.8x faster forward + backward on conv towers on a 2-core CPU (README, recipe v13)
        "channels_last": False,
        # The view that validation, score calibration and the exported bundle (= inference) use: "model" =
        # the model config's preprocess (the compact configs: the whole image squashed to 224², i.e. 0.875×
        # the scale the random training crops saw); "center-crop" = the training views' own geometry, the
        # spec's resize method to resize×resize then the centre crop×crop (as the authors' release infers).
        # Fine-grained residue (noise, ringing, JPEG blocks) lives at one scale: the v11 weights ranked
        # the val pairs 0.925 with the squashed view and 0.932 with the centre crop (README, recipe v16).
        "eval_view": "model",
        # True: the model averages each image's quality features with those of its mirror image whenever it
        # runs in eval mode (model config "mirror_views": validation, calibration, the exported graph and the
        # torch backend alike; training steps are unchanged). Scenes are as good mirrored as not, so the two
        # views are two draws of one answer: on the v16 weights the val pairs went 0.932 -> 0.941 (recipe v17).
        "eval_mirror": False,
    },
    "dfl": {
        "epochs": 1,
        "batch_size": 32,             # images
        "lr": 1e-5,
        "weight_decay": 0.0,
        "warmup_steps": 0,
        "min_lr_ratio": 0.0,          # cosine floor, as a fraction of lr
        "grad_clip": None,
        "logit_scale": 100.0,         # contrastive temperature multiplier s (CLIP's trained value)
        "present_only": True,         # text side: only the tasks present in the batch (see losses.dfl_loss)
        "prompts": DEFAULT_PROMPTS,   # one prompt per task; the text tower is frozen
    },
    "fgresq": {
        "epochs": 6,
        "batch_size": 64,             # pairs (2× images)
        "lr": 5e-6,
        "weight_decay": 0.0,
        "warmup_steps": 0,
        "min_lr_ratio": 0.0,
        "grad_clip": None,
        "lambda_scene": 5.0,
        "lambda_rank": 1.0,
        "train_image_tower": True,    # False: image tower frozen too (heads/prompt only)
        "degradation_trainable_blocks": 0,  # > 0: also train the last N blocks of the degradation tower
        # What the scene-aware fidelity loss compares: "score" = sigmoid(head), the paper's predicted score;
        # "logit" = head before the sigmoid. Φ(Δ/√2) of two scores in [0, 1] never exceeds Φ(1/√2) = 0.76, so
        # with "score" every ordered pair keeps pushing both images to the sigmoid's ends (saturated scores,
        # ties at ~0.99); with "logit" a pair is done once its logits differ by a few units. The runtime
        # score is sigmoid(k·logit) either way: the same order.
        "fidelity_on": "score",
        # Which images the fidelity loss compares: "scene" = every two images of a scene in the batch (the
        # paper: a scene is a source dataset whose MOS are comparable across contents); "content" = only
        # images of one content within a scene. In a scene batch of 16 pairs of 16 contents, 97 % of the
        # "scene" comparisons join different contents — meaningful for human MOS, noise for synthetic MOS
        # whose curve is drawn per content; "pooled" = every two images of a batch that mixes scenes, on MOS
        # mapped to [0, 1] by each scene's declared mos_range (the scale cross-content SRCC reads).
        "fidelity_groups": "scene",
        # > 0: the epoch checkpoints (validated, selected, exported) hold an exponential moving average of the
        # weights with this decay per step instead of the last step's weights (train/ema.py); 0 = off.
        "ema_decay": 0.0,
    },
}
# Keys (section, key) that take one of a few words (the first is the default above).
CHOICES = {("fgresq", "fidelity_on"): ("score", "logit"), ("fgresq", "fidelity_groups"): ("scene", "content", "pooled"),
           ("data", "eval_view"): ("model", "center-crop")}
_FREE_KEYS = {"description", "notes", "paper"}

class TrainError(RuntimeError):
    """A training run cannot start or continue (bad config, missing data, nothing to resume)."""


def _merge(base: dict, over: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k.startswith("_") or k in _FREE_KEYS:
            out[k] = v
            continue
        if k not in base:
            raise TrainError(f"training config: unknown key '{where}{k}' (known: {', '.join(sorted(base))})")
        if isinstance(base[k], dict) and k != "prompts":
            if not isinstance(v, dict):
                raise TrainError(f"training config: '{where}{k}' must be an object")
            out[k] = _merge(base[k], v, f"{where}{k}.")
        else:
            out[k] = copy.deepcopy(v)
    return out


def list_train_configs() -> list[str]:
    root = resources.files("fgresq_sdk.train") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def load_train_config(src: str | os.PathLike | dict | None) -> dict[str, Any]:
    """A training config with defaults filled in, from a JSON path, a shipped name or a dict."""
    if src is None:
        return copy.deepcopy(DEFAULTS)
    if isinstance(src, dict):
        user = src
    else:
        path = Path(src)
        if not path.is_file():
            shipped = resources.files("fgresq_sdk.train") / "configs" / f"{src}.json"
            if not shipped.is_file():
                raise TrainError(f"training config {src}: no such file or shipped config "
                                 f"(shipped: {', '.join(list_train_configs())})")
            text = shipped.read_text(encoding="utf-8")
        else:
            text = path.read_text(encoding="utf-8")
        try:
            user = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TrainError(f"training config {src}: invalid JSON ({exc})") from None
    cfg = _merge(DEFAULTS, user)
    prompts = cfg["dfl"]["prompts"]
    for (section, key), allowed in CHOICES.items():
        if cfg[section][key] not in allowed:
            raise TrainError(f"training config: {section}.{key} must be "
                             f"{' or '.join(map(repr, allowed))}, not {cfg[section][key]!r}")
    if cfg["cpu_kernels"] not in KERNELS:
        raise TrainError(f"training config: cpu_kernels must be {' or '.join(map(repr, KERNELS))}, "
                         f"not {cfg['cpu_kernels']!r}")
    if not 0.0 <= float(cfg["fgresq"]["ema_decay"]) < 1.0:
        raise TrainError(f"training config: fgresq.ema_decay must be in [0, 1), not {cfg['fgresq']['ema_decay']}")
    missing = [t for t in TASKS if t not in prompts]
    if missing:
        raise TrainError(f"training config: dfl.prompts lacks a prompt for {', '.join(missing)}")
    return cfg
