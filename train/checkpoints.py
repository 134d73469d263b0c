"""A run's files on disk: epoch checkpoints, training-state files (optimizer, schedule, RNG, counters) and
weight loading, so that ``--resume`` continues a stage exactly where it stopped.

A state file is safetensors (tensors: Adam moments, torch/numpy RNG keys) with a JSON header (the rest), so
resuming never unpickles anything. The stage folder holds ``epoch-NNN.safetensors`` (our checkpoint format),
``epoch-NNN.state.safetensors`` and, once the stage is complete, ``model.safetensors``.
"""
from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import TrainError
from .logs import jsonable

__all__ = ["CHECKPOINT_NAME", "STATE_NAME", "FINAL_NAME", "save_train_state", "load_train_state", "latest_epoch",
           "prune_epochs", "load_weights_into"]

CHECKPOINT_NAME = "epoch-{:03d}.safetensors"
STATE_NAME = "epoch-{:03d}.state.safetensors"
FINAL_NAME = "model.safetensors"
STATE_FORMAT = "fgresq-train-state-v1"


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    np_state = np.random.get_state()
    tensors = {"rng.torch": torch.get_rng_state(),
               "rng.numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))}
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": _py_state_to_json(random.getstate())}
    return tensors, meta


def _py_state_to_json(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_train_state(path: str | os.PathLike, optimizer, scheduler, *, epoch: int, step: int,
                     extra: dict[str, Any] | None = None, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Optimizer + scheduler + RNG + counters as safetensors (tensors) with a JSON header (the rest).

    ``weights``: the raw model weights when the epoch checkpoint holds something else (their moving average,
    train/ema.py), so that a resumed run continues from the weights the optimizer was updating."""
    from safetensors.torch import save_file

    path = Path(path)
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optimizer.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    rng_t, rng_meta = _rng_state()
    tensors.update(rng_t)
    for k, v in (weights or {}).items():
        tensors[f"weights.{k}"] = v.detach().cpu().contiguous()
    meta = {
        "format": STATE_FORMAT,
        "epoch": json.dumps(int(epoch)),
        "step": json.dumps(int(step)),
        "optimizer_param_groups": json.dumps(jsonable(sd["param_groups"])),
        "optimizer_scalars": json.dumps(jsonable(scalars)),
        "scheduler": json.dumps(jsonable(scheduler.state_dict()) if scheduler is not None else None),
        "rng": json.dumps(rng_meta),
        "extra": json.dumps(jsonable(extra or {})),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_train_state(path: str | os.PathLike, optimizer, scheduler, restore_rng: bool = True) -> dict[str, Any]:
    """Restore what save_train_state wrote; returns {"epoch", "step", "extra", "weights"} (weights: {} when the
    checkpoint holds the raw weights)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("format") != STATE_FORMAT:
        raise TrainError(f"{path}: not a training state file")
    tensors = load_file(str(path))
    state: dict[int, dict[str, Any]] = defaultdict(dict)
    for key, v in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state[int(pid)][name] = v
    for pid, st in json.loads(meta["optimizer_scalars"]).items():
        state[int(pid)].update(st)
    groups = json.loads(meta["optimizer_param_groups"])
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    if optimizer is not None:  # None: only read the counters and weights
        optimizer.load_state_dict({"state": dict(state), "param_groups": groups})
    sched = json.loads(meta["scheduler"])
    if scheduler is not None and sched is not None:
        scheduler.load_state_dict(sched)
    if restore_rng:
        _set_rng_state(tensors, json.loads(meta["rng"]))
    weights = {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}
    return {"epoch": json.loads(meta["epoch"]), "step": json.loads(meta["step"]),
            "extra": json.loads(meta.get("extra", "{}")), "weights": weights}


def latest_epoch(stage_dir: Path) -> int:
    """Newest epoch with both a checkpoint and a state file in stage_dir (0 if none)."""
    best = 0
    if stage_dir.is_dir():
        for p in stage_dir.glob("epoch-*.state.safetensors"):
            try:
                e = int(p.name[len("epoch-"):].split(".")[0])
            except ValueError:
                continue
            if (stage_dir / CHECKPOINT_NAME.format(e)).is_file():
                best = max(best, e)
    return best


def prune_epochs(stage_dir: Path, keep: int | None, current: int) -> None:
    if not keep:
        return
    for e in range(1, current - keep + 1):
        for name in (CHECKPOINT_NAME.format(e), STATE_NAME.format(e)):
            (stage_dir / name).unlink(missing_ok=True)


def load_weights_into(model: nn.Module, ckpt: Path) -> None:
    """Load one of our checkpoints into an existing model (same config), strictly."""
    from safetensors.torch import load_file

    state = load_file(str(ckpt))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TrainError(f"{ckpt}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
