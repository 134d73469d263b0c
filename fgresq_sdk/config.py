"""Model configs as data.

Configs are JSON files (like open_clip's model configs) so the torch-free runtime, the trainer and the
exporter all read the same description of a model without importing torch.
"""
from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import BundleError
from .preprocess import PreprocessSpec


class ConfigError(ValueError):
    """A model config is missing, malformed or names an unknown tower."""


def list_configs() -> list[str]:
    """Names of the configs shipped with the package."""
    root = resources.files("fgresq_sdk.configs")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def load_config(name_or_path: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Return a validated config from a shipped name, a JSON file path, or an already-loaded dict."""
    if isinstance(name_or_path, dict):
        cfg = copy.deepcopy(name_or_path)
    else:
        path = Path(name_or_path)
        if path.suffix == ".json" and path.is_file():
            text = path.read_text(encoding="utf-8")
        else:
            res = resources.files("fgresq_sdk.configs") / f"{name_or_path}.json"
            if not res.is_file():
                raise ConfigError(
                    f"unknown model config '{name_or_path}' (shipped: {', '.join(list_configs())})"
                )
            text = res.read_text(encoding="utf-8")
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config {name_or_path}: invalid JSON ({exc})") from None
    for key in ("name", "embed_dim", "vision_cfg", "preprocess"):
        if key not in cfg:
            raise ConfigError(f"config {cfg.get('name', name_or_path)}: missing key '{key}'")
    try:  # the preprocess section follows docs/preprocess-spec.md (legacy form or resize/crop)
        PreprocessSpec.from_dict(cfg["preprocess"])
    except BundleError as exc:
        raise ConfigError(f"config {cfg.get('name', name_or_path)}: {exc}") from None
    return cfg


def feature_dim(cfg: dict[str, Any]) -> int:
    """Width of the pooled tower output the heads see (D; q is 3·D, the compare head sees 6·D).

    ViT towers give the class token before CLIP's projection (width); ResNet towers give the
    attention-pool output (embed_dim), as open_clip's ModifiedResNet has no pre-projection pooled token.
    """
    vc = cfg["vision_cfg"]
    if vc.get("kind") == "conv-stats":  # model.ConvStatsTower: pooled statistics projected to width
        return int(vc["width"])
    if isinstance(vc.get("layers"), (list, tuple)):
        return int(cfg["embed_dim"])
    return int(vc["width"])
