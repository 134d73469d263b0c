"""FGResQ training: shared loop utilities, stage 2 (dual-branch quality prediction) and the two-stage driver.

Stage 1 (``dfl.py``) fine-tunes the degradation tower so its features align with frozen text embeddings
of one prompt per restoration task. Stage 2 (here) freezes that tower (eval mode) and trains the image
tower, prompt, task/prompt MLPs, regression head and comparison head with

    L = λ1·L_scene + λ2·L_rank          (paper: λ1 = 5, λ2 = 1)

on scene-aware batches of pairs: each step takes pairs of one scene, scores both images of every pair
(``score_from_features``), applies the scene-aware fidelity loss over all images of the batch (their MOS)
and the cross-entropy ranking loss over the pairs (``compare_logits``).

Run layout (``out/``)::

    config.json                  resolved training config of the run
    logs.jsonl                   one JSON object a line (schema: LOG_SCHEMA below)
    dfl/epoch-NNN.safetensors    model after stage-1 epoch NNN (our checkpoint format)
    dfl/epoch-NNN.state.safetensors   optimizer + scheduler + RNG + counters, for --resume
    dfl/model.safetensors        model at the end of stage 1 (marks the stage complete)
    fgresq/...                   the same for stage 2
    model.safetensors            final model
    bundle/                      exported bundle (ONNX + checkpoint) when asked for

``--resume`` skips completed stages and continues a stage from its newest epoch checkpoint: weights,
Adam moments, LR schedule position, RNG states and counters are restored, and batches and crops are pure
functions of (seed, epoch), so the run continues exactly as if it had not stopped (resume with the same
config and options).

Also runnable as ``python -m fgresq_sdk.train.trainer --config C --manifest M --out DIR``.
"""
from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import os
import random
import sys
import time
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from .losses import stage2_loss

__all__ = [
    "DEFAULTS", "LOG_SCHEMA", "STAGES", "TrainError", "load_train_config", "list_train_configs",
    "set_seed", "set_threads", "make_optimizer", "make_scheduler", "JsonlLogger", "Progress",
    "save_train_state", "load_train_state", "latest_epoch", "fit", "stage2_step", "freeze_for_stage2",
    "validate_pairs", "run_fgresq", "run_training", "main",
]

STAGES = ("dfl", "fgresq")
CHECKPOINT_NAME = "epoch-{:03d}.safetensors"
STATE_NAME = "epoch-{:03d}.state.safetensors"
FINAL_NAME = "model.safetensors"
STATE_FORMAT = "fgresq-train-state-v1"

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
    "log_every": 1,                   # write a step line every N optimizer steps
    "keep_checkpoints": 2,            # epoch checkpoints kept per stage (None = all)
    "export": False,                  # export bundle/ at the end
    "data": {
        "resize": 256,                # training: resize to resize×resize ...
        "crop": 224,                  # ... then random crop×crop (must equal the model's input size)
        "hflip": False,               # same random horizontal flip for both images of a pair
        "cache_mb": 2048,             # decoded-image cache
        "num_workers": 0,             # DataLoader workers (0: decode in the training process)
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
    },
}
_FREE_KEYS = {"description", "notes", "paper"}

# The JSONL log: every line has "event", "time" (UTC ISO-8601) and "elapsed_s" (since the run started).
LOG_SCHEMA = {
    "run_start": ["config", "out", "stage", "resume", "manifest", "val_manifest", "pretrained", "threads",
                  "torch", "versions"],
    "stage_start": ["stage", "start_epoch", "epochs", "steps_per_epoch", "total_steps", "n_train",
                    "n_trainable_params", "init"],
    "step": ["stage", "epoch", "step", "epoch_step", "steps_per_epoch", "lr", "loss",
             "(dfl) acc", "(fgresq) loss_scene, loss_rank, scene, pairs", "step_s"],
    "epoch": ["stage", "epoch", "epochs", "step", "loss", "(mean of every step metric)", "val (or null)",
              "checkpoint", "state", "epoch_s"],
    "stage_end": ["stage", "model", "epochs"],
    "stage_skip": ["stage", "reason", "model"],
    "run_end": ["model", "bundle (or null)", "wall_s"],
}


class TrainError(RuntimeError):
    """A training run cannot start or continue (bad config, missing data, nothing to resume)."""


# -- configs ---------------------------------------------------------------------------------------------
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
    from .datasets import TASKS

    missing = [t for t in TASKS if t not in prompts]
    if missing:
        raise TrainError(f"training config: dfl.prompts lacks a prompt for {', '.join(missing)}")
    return cfg


# -- determinism, threads ----------------------------------------------------------------------------------
def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> int:
    n = int(threads) if threads else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


# -- optimizer, schedule -------------------------------------------------------------------------------
def make_optimizer(params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay)


class _WarmupCosine:
    """Multiplier of the base LR: linear warm-up to 1, then cosine annealing to min_ratio at total_steps."""

    def __init__(self, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0):
        self.total, self.warmup, self.min_ratio = max(1, int(total_steps)), max(0, int(warmup_steps)), float(min_ratio)

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        t = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def make_scheduler(optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0):
    """Per-step LambdaLR: linear warm-up then cosine annealing (its state_dict is plain JSON)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _WarmupCosine(total_steps, warmup_steps, min_lr_ratio))


# -- logs and progress --------------------------------------------------------------------------------------
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.floating, np.integer)):
        return _jsonable(x.item())
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return _jsonable(x.item())
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


class JsonlLogger:
    """Appends one JSON object a line (flushed each line, so a killed run keeps its log)."""

    def __init__(self, path: str | os.PathLike | None, t0: float | None = None):
        self.path = Path(path) if path is not None else None
        self.t0 = time.perf_counter() if t0 is None else t0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, event: str, **fields: Any) -> dict:
        rec = {"event": event, "time": _now(), "elapsed_s": round(time.perf_counter() - self.t0, 3)}
        rec.update(_jsonable(fields))
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec, allow_nan=False) + "\n")
        return rec


class Progress:
    """A rich progress bar on stderr (stage, epoch, loss, ETA); a no-op when disabled."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._p = None
        self._task = None

    def start(self, description: str, total: int, completed: int = 0) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.stop()
        self._p = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                               TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self._p.start()
        self._task = self._p.add_task(description, total=total, completed=completed, info="")

    def update(self, advance: int = 1, info: str = "", description: str | None = None) -> None:
        if self._p is not None:
            kw = {"description": description} if description else {}
            self._p.update(self._task, advance=advance, info=info, **kw)

    def stop(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None


# -- training state (resume) --------------------------------------------------------------------------
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
                     extra: dict[str, Any] | None = None) -> Path:
    """Optimizer + scheduler + RNG + counters as safetensors (tensors) with a JSON header (the rest)."""
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
    meta = {
        "format": STATE_FORMAT,
        "epoch": json.dumps(int(epoch)),
        "step": json.dumps(int(step)),
        "optimizer_param_groups": json.dumps(_jsonable(sd["param_groups"])),
        "optimizer_scalars": json.dumps(_jsonable(scalars)),
        "scheduler": json.dumps(_jsonable(scheduler.state_dict()) if scheduler is not None else None),
        "rng": json.dumps(rng_meta),
        "extra": json.dumps(_jsonable(extra or {})),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_train_state(path: str | os.PathLike, optimizer, scheduler, restore_rng: bool = True) -> dict[str, Any]:
    """Restore what save_train_state wrote; returns {"epoch", "step", "extra"}."""
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
    optimizer.load_state_dict({"state": dict(state), "param_groups": groups})
    sched = json.loads(meta["scheduler"])
    if scheduler is not None and sched is not None:
        scheduler.load_state_dict(sched)
    if restore_rng:
        _set_rng_state(tensors, json.loads(meta["rng"]))
    return {"epoch": json.loads(meta["epoch"]), "step": json.loads(meta["step"]),
            "extra": json.loads(meta.get("extra", "{}"))}


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


def _prune(stage_dir: Path, keep: int | None, current: int) -> None:
    if not keep:
        return
    for e in range(1, current - keep + 1):
        for name in (CHECKPOINT_NAME.format(e), STATE_NAME.format(e)):
            (stage_dir / name).unlink(missing_ok=True)


def stage_optimization(model: nn.Module, params: Iterable[nn.Parameter], stage_cfg: dict[str, Any],
                       total_steps: int, stage_dir: Path, resume: bool):
    """Adam + warm-up/cosine schedule for one stage, restored from the stage's last epoch when resuming.

    Returns (optimizer, scheduler, start_epoch, step, resumed_from or None).
    """
    optimizer = make_optimizer(params, stage_cfg["lr"], stage_cfg["weight_decay"])
    scheduler = make_scheduler(optimizer, total_steps, stage_cfg["warmup_steps"], stage_cfg["min_lr_ratio"])
    if resume and (last := latest_epoch(stage_dir)):
        ckpt = stage_dir / CHECKPOINT_NAME.format(last)
        load_weights_into(model, ckpt)
        st = load_train_state(stage_dir / STATE_NAME.format(last), optimizer, scheduler)
        return optimizer, scheduler, int(st["epoch"]), int(st["step"]), f"resumed from {ckpt}"
    return optimizer, scheduler, 0, 0, None


def load_weights_into(model: nn.Module, ckpt: Path) -> None:
    """Load one of our checkpoints into an existing model (same config), strictly."""
    from safetensors.torch import load_file

    state = load_file(str(ckpt))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TrainError(f"{ckpt}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")


# -- the generic loop -------------------------------------------------------------------------------------
def fit(*, stage: str, model: nn.Module, optimizer, scheduler, sampler, dataset,
        step_fn: Callable[[dict], dict[str, Any]], train_mode: Callable[[], None], epochs: int,
        stage_dir: Path, logger: JsonlLogger, start_epoch: int = 0, global_step: int = 0,
        log_every: int = 1, progress: Progress | None = None, grad_clip: float | None = None,
        val_fn: Callable[[], dict | None] | None = None, keep_checkpoints: int | None = None,
        num_workers: int = 0, train_config: dict | None = None) -> int:
    """Train epochs [start_epoch, epochs); after each: validate, checkpoint, state, log. Returns the step."""
    from torch.utils.data import DataLoader

    from fgresq_sdk.model import save_checkpoint

    progress = progress or Progress(False)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    steps_per_epoch = len(sampler)
    stage_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    for epoch in range(start_epoch, epochs):
        t_epoch = time.perf_counter()
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_sampler=sampler.batches(epoch), num_workers=num_workers)
        train_mode()
        sums: dict[str, float] = defaultdict(float)
        n = 0
        progress.start(f"{stage} {epoch + 1}/{epochs}", steps_per_epoch)
        for i, batch in enumerate(loader):
            t_step = time.perf_counter()
            batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                     for k, v in batch.items()}
            optimizer.zero_grad(set_to_none=True)
            out = step_fn(batch)
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise TrainError(f"{stage}: non-finite loss at epoch {epoch + 1} step {i + 1}")
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            global_step += 1
            n += 1
            nums = {k: float(v.detach()) if isinstance(v, torch.Tensor) else v for k, v in out.items()}
            for k, v in nums.items():
                if isinstance(v, float):
                    sums[k] += v
            if log_every and (global_step % log_every == 0 or i + 1 == steps_per_epoch):
                logger.log("step", stage=stage, epoch=epoch + 1, step=global_step, epoch_step=i + 1,
                           steps_per_epoch=steps_per_epoch, lr=lr, **nums,
                           step_s=round(time.perf_counter() - t_step, 4))
            progress.update(info=f"loss {nums['loss']:.4f} (avg {sums['loss'] / n:.4f})")
        progress.stop()
        val = val_fn() if val_fn is not None else None
        ckpt = stage_dir / CHECKPOINT_NAME.format(epoch + 1)
        state = stage_dir / STATE_NAME.format(epoch + 1)
        extra = {"stage": stage, "epoch": str(epoch + 1), "step": str(global_step)}
        if train_config is not None:
            extra["train_config"] = json.dumps(train_config, sort_keys=True)
        save_checkpoint(model, ckpt, source=f"fgresq-sdk train ({stage}, epoch {epoch + 1})", extra=extra)
        save_train_state(state, optimizer, scheduler, epoch=epoch + 1, step=global_step)
        _prune(stage_dir, keep_checkpoints, epoch + 1)
        means = {k: v / max(n, 1) for k, v in sums.items()}
        logger.log("epoch", stage=stage, epoch=epoch + 1, epochs=epochs, step=global_step, **means, val=val,
                   checkpoint=str(ckpt), state=str(state), epoch_s=round(time.perf_counter() - t_epoch, 3))
    return global_step


# -- stage 2 ------------------------------------------------------------------------------------------------
def freeze_for_stage2(model: nn.Module, train_image_tower: bool = True, degradation_trainable_blocks: int = 0):
    """requires_grad as stage 2 wants it; returns a function that sets train/eval modes for a step."""
    for p in model.parameters():
        p.requires_grad_(True)
    for p in model.degradation_tower.parameters():
        p.requires_grad_(False)
    if model.degradation_proj is not None:
        model.degradation_proj.requires_grad_(False)  # only stage 1 reads it
    if not train_image_tower:
        for p in model.image_tower.parameters():
            p.requires_grad_(False)
    unfrozen = []
    if degradation_trainable_blocks:
        blocks = getattr(getattr(model.degradation_tower, "transformer", None), "resblocks", None)
        if blocks is None:
            raise TrainError("degradation_trainable_blocks needs a ViT degradation tower")
        unfrozen = list(blocks[-int(degradation_trainable_blocks):])
        for mod in unfrozen + [model.degradation_tower.ln_post]:
            for p in mod.parameters():
                p.requires_grad_(True)

    def train_mode() -> None:
        model.train()
        model.degradation_tower.eval()
        for b in unfrozen:
            b.train()
        if not train_image_tower:
            model.image_tower.eval()

    return train_mode


def stage2_step(model, batch: dict, lambda_scene: float = 5.0, lambda_rank: float = 1.0) -> dict[str, Any]:
    """One stage-2 forward: scores of both images of every pair, fidelity over all images, CE over pairs."""
    n = batch["a"].shape[0]
    q = model.quality_features(torch.cat([batch["a"], batch["b"]]))
    scores = model.score_from_features(q)
    logits = model.compare_logits(q[:n], q[n:])
    scenes = torch.as_tensor(batch["scene"])
    out = stage2_loss(scores, torch.cat([batch["mos_a"], batch["mos_b"]]), torch.cat([scenes, scenes]),
                      logits, torch.as_tensor(batch["label"]), lambda_scene, lambda_rank,
                      ids=torch.cat([torch.as_tensor(batch["id_a"]), torch.as_tensor(batch["id_b"])]))
    out["pairs"] = int(n)
    out["scene"] = int(scenes[0])
    return out


@torch.no_grad()
def validate_pairs(model, manifest, spec, cache=None, batch_size: int = 32) -> dict[str, Any]:
    """Val metrics with the live torch model and the eval transform (= inference preprocessing).

    Metrics come from train/metrics.py and train/evaluate.py (scene-weighted SRCC/PLCC, the paper's
    symmetrised pair ACC, 3-way ACC).
    """
    from . import metrics as M
    from .datasets import ImageCache
    from .evaluate import scene_weighted_correlations

    was_training = model.training
    model.eval()
    cache = cache if cache is not None else ImageCache(0)
    ids = sorted(manifest.images)
    qs, ss = [], []
    from fgresq_sdk.preprocess import normalize

    device = next(model.parameters()).device

    for s in range(0, len(ids), batch_size):
        chunk = ids[s:s + batch_size]
        x = torch.stack([torch.from_numpy(normalize(cache.get(manifest.image_path(k), spec.eval_view), spec.size,
                                                    spec.mean, spec.std)) for k in chunk]).to(device)
        q = model.quality_features(x)
        qs.append(q)
        ss.append(model.score_from_features(q).float().cpu())
    q = torch.cat(qs) if qs else torch.zeros(0)
    scores = torch.cat(ss).numpy() if ss else np.zeros(0)
    recs = [manifest.images[k] for k in ids]
    corr = scene_weighted_correlations(scores, [r.mos for r in recs], [r.scene for r in recs])
    out: dict[str, Any] = {"srcc": corr["srcc"], "plcc": corr["plcc"], "n_images": len(ids),
                           "n_pairs": len(manifest.pairs)}
    if manifest.pairs:
        pos = {k: i for i, k in enumerate(ids)}
        ia = torch.tensor([pos[p.a] for p in manifest.pairs])
        ib = torch.tensor([pos[p.b] for p in manifest.pairs])
        ia, ib = ia.to(device), ib.to(device)
        p_ab = torch.softmax(model.compare_logits(q[ia], q[ib]), dim=1).float().cpu().numpy()
        p_ba = torch.softmax(model.compare_logits(q[ib], q[ia]), dim=1).float().cpu().numpy()
        pref, three = M.symmetrised_pair_probs(p_ab, p_ba)
        labels = [p.label for p in manifest.pairs]
        out["acc"] = M.pair_accuracy(pref, labels)
        out["acc3"] = M.three_way_accuracy(three, labels)
    model.train(was_training)
    return out


def _count(params: Iterable[nn.Parameter]) -> int:
    return int(sum(p.numel() for p in params if p.requires_grad))


def run_fgresq(model, train_m, tcfg: dict, stage_dir: Path, logger: JsonlLogger, *, val_m=None,
               resume: bool = False, progress: Progress | None = None, cache=None, init: str = "") -> Path:
    """Stage 2 on a training manifest; returns the path of the stage's final model."""
    from .datasets import ImageCache, PairDataset, TransformSpec
    from .sampler import SceneBatchSampler

    sc = tcfg["fgresq"]
    seed = int(tcfg["seed"])
    spec = TransformSpec.from_config(model.cfg, tcfg["data"])
    cache = cache if cache is not None else ImageCache(tcfg["data"]["cache_mb"])
    dataset = PairDataset(train_m, spec, train=True, seed=seed, cache=cache)
    if len(dataset) == 0:
        raise TrainError("stage fgresq: the training manifest has no pairs")
    sampler = SceneBatchSampler(dataset.pair_scenes, sc["batch_size"], seed=seed)
    if int(tcfg["data"]["num_workers"]) > 0:
        dataset.prefill()
    train_mode = freeze_for_stage2(model, sc["train_image_tower"], sc["degradation_trainable_blocks"])
    epochs = int(sc["epochs"])
    total = epochs * len(sampler)
    optimizer, scheduler, start_epoch, step, resumed = stage_optimization(
        model, model.parameters(), sc, total, stage_dir, resume)
    init = resumed or init
    val_eval_cache = ImageCache(tcfg["data"]["cache_mb"] / 4) if val_m is not None else None
    val_fn = (lambda: validate_pairs(model, val_m, spec, val_eval_cache)) if val_m is not None else None
    logger.log("stage_start", stage="fgresq", start_epoch=start_epoch, epochs=epochs,
               steps_per_epoch=len(sampler), total_steps=total, n_train=len(dataset),
               n_trainable_params=_count(model.parameters()), init=init)
    lam1, lam2 = float(sc["lambda_scene"]), float(sc["lambda_rank"])
    scene_names = {v: k for k, v in dataset.scene_index.items()}

    def step_fn(batch: dict) -> dict[str, Any]:
        out = stage2_step(model, batch, lam1, lam2)
        out["scene"] = scene_names[out["scene"]]
        return out

    fit(stage="fgresq", model=model, optimizer=optimizer, scheduler=scheduler, sampler=sampler, dataset=dataset,
        step_fn=step_fn, train_mode=train_mode, epochs=epochs,
        stage_dir=stage_dir, logger=logger, start_epoch=start_epoch, global_step=step,
        log_every=int(tcfg["log_every"]), progress=progress, grad_clip=sc["grad_clip"], val_fn=val_fn,
        keep_checkpoints=tcfg["keep_checkpoints"], num_workers=int(tcfg["data"]["num_workers"]),
        train_config=tcfg)
    model.eval()
    from fgresq_sdk.model import save_checkpoint

    final = save_checkpoint(model, stage_dir / FINAL_NAME, source="fgresq-sdk train (fgresq, final)",
                            extra={"stage": "fgresq", "epochs": str(epochs)})
    logger.log("stage_end", stage="fgresq", model=str(final), epochs=epochs)
    return final


# -- the two-stage driver ------------------------------------------------------------------------------
def _resolve(p: str | os.PathLike | None) -> Path | None:
    return None if p in (None, "") else Path(p).expanduser()


def _load_manifest(path: Path):
    from .manifest import Manifest

    if not path.exists():
        raise TrainError(f"manifest {path}: not found")
    return Manifest.load(path)


def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__, "numpy": np.__version__}
    try:
        import open_clip

        out["open_clip"] = open_clip.__version__
    except Exception:  # noqa: BLE001
        pass
    return out


def run_training(config: str | os.PathLike | dict | None, out: str | os.PathLike, *,
                 manifest: str | os.PathLike | None = None, stage: str = "all", resume: bool = False,
                 pretrained: str | os.PathLike | None = None, epochs: int | None = None,
                 threads: int | None = None, export: bool | None = None, val_manifest=None,
                 progress: bool = True, init_checkpoint: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run stage 1 then stage 2 (or one of them) into `out`; returns a summary dict.

    epochs overrides the epoch count of every stage that runs. init_checkpoint (stage "fgresq" only): start
    stage 2 from that model instead of ``out/dfl``. Raises TrainError for usage problems.
    """
    if init_checkpoint is not None and stage != "fgresq":
        raise TrainError("init_checkpoint needs stage='fgresq'")
    from fgresq_sdk.model import FGResQ, load_checkpoint, save_checkpoint

    t0 = time.perf_counter()
    if stage not in ("all",) + STAGES:
        raise TrainError(f"unknown stage {stage!r} (all, dfl or fgresq)")
    tcfg = load_train_config(config)
    if manifest is not None:
        tcfg["manifest"] = str(manifest)
    if val_manifest is not None:
        tcfg["val_manifest"] = str(val_manifest)
    if pretrained is not None:
        tcfg["pretrained"] = str(pretrained)
    if threads is not None:
        tcfg["threads"] = int(threads)
    if export is not None:
        tcfg["export"] = bool(export)
    if epochs is not None:
        for s in STAGES:
            tcfg[s]["epochs"] = int(epochs)
    if tcfg["manifest"] is None:
        raise TrainError("no training manifest (give --manifest or set \"manifest\" in the config)")
    if tcfg["requires_pretrained"] and not tcfg["pretrained"]:
        raise TrainError(f"training config {tcfg['name']} needs pretrained CLIP weights (--pretrained PATH)")
    out = Path(out)
    log_path = out / "logs.jsonl"
    if not resume and (log_path.exists() or any((out / s).exists() for s in STAGES)):
        raise TrainError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    n_threads = set_threads(tcfg["threads"])
    logger = JsonlLogger(log_path, t0)
    (out / "config.json").write_text(json.dumps(tcfg, indent=2) + "\n", encoding="utf-8")
    stages = list(STAGES) if stage == "all" else [stage]
    logger.log("run_start", config=tcfg, out=str(out), stage=stage, resume=resume, manifest=tcfg["manifest"],
               val_manifest=tcfg["val_manifest"], pretrained=tcfg["pretrained"], threads=n_threads,
               torch=torch.__version__, versions=_versions())

    # data
    from .datasets import ImageCache

    train_m = _load_manifest(_resolve(tcfg["manifest"]))
    val_m = _load_manifest(_resolve(tcfg["val_manifest"])) if tcfg["val_manifest"] else None
    if val_m is None and float(tcfg["val_fraction"]) > 0:
        from .manifest import split_manifest

        train_m, val_m = split_manifest(train_m, 1.0 - float(tcfg["val_fraction"]), seed=int(tcfg["seed"]))
    cache = ImageCache(tcfg["data"]["cache_mb"])
    prog = Progress(progress)

    # model
    seed = int(tcfg["seed"])
    set_seed(seed)
    model = FGResQ(tcfg["model"])
    init = "random init"
    from .dfl import load_pretrained, run_dfl

    pre = _resolve(tcfg["pretrained"])
    pre_report = None
    if pre is not None:
        pre_report = load_pretrained(model, pre)
        init = f"pretrained {pre}"
    text_state = pre_report.pop("text_state", None) if pre_report else None
    model.to(tcfg["device"])
    dfl_final = out / "dfl" / FINAL_NAME
    try:
        if "dfl" in stages:
            if resume and dfl_final.is_file():
                load_weights_into(model, dfl_final)
                logger.log("stage_skip", stage="dfl", reason="complete", model=str(dfl_final))
            else:
                set_seed(seed + 1)
                dfl_final = run_dfl(model, train_m, tcfg, out / "dfl", logger, val_m=val_m, resume=resume,
                                    progress=prog, cache=cache, text_state=text_state,
                                    pretrained_logit_scale=(pre_report or {}).get("logit_scale"), init=init)
            init = f"stage 1 ({dfl_final})"
        elif init_checkpoint is not None and "fgresq" in stages:
            # continue stage 2 from a finished model (a second cosine cycle on more data; "warm restart")
            load_weights_into(model, Path(init_checkpoint))
            init = f"checkpoint ({init_checkpoint})"
        elif dfl_final.is_file() and "fgresq" in stages:
            load_weights_into(model, dfl_final)
            init = f"stage 1 ({dfl_final})"
        if "fgresq" in stages:
            fg_final = out / "fgresq" / FINAL_NAME
            if resume and fg_final.is_file():
                load_weights_into(model, fg_final)
                logger.log("stage_skip", stage="fgresq", reason="complete", model=str(fg_final))
            else:
                set_seed(seed + 2)
                fg_final = run_fgresq(model, train_m, tcfg, out / "fgresq", logger, val_m=val_m, resume=resume,
                                      progress=prog, cache=cache, init=init)
    finally:
        prog.stop()
    model.eval().cpu()
    final = save_checkpoint(model, out / FINAL_NAME, source=f"fgresq-sdk train ({tcfg['name']}, stage {stage})",
                            extra={"train_config": json.dumps(tcfg, sort_keys=True)})
    bundle = None
    if tcfg["export"]:
        from fgresq_sdk.export.onnx_export import export_bundle

        bundle = export_bundle(load_checkpoint(final), out / "bundle", force=True,
                               source=f"fgresq-sdk train ({tcfg['name']})")
    wall = time.perf_counter() - t0
    logger.log("run_end", model=str(final), bundle=str(bundle) if bundle else None, wall_s=round(wall, 3))
    return {"out": str(out), "model": str(final), "bundle": str(bundle) if bundle else None,
            "logs": str(log_path), "stages": stages, "pretrained": pre_report, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    """`python -m fgresq_sdk.train.trainer --config C --manifest M --out DIR [...]`."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fgresq_sdk.train.trainer", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="training config JSON (or a shipped name)")
    ap.add_argument("--manifest", help="training manifest folder (overrides the config)")
    ap.add_argument("--val-manifest", help="validation manifest folder")
    ap.add_argument("--out", required=True, help="run folder")
    ap.add_argument("--stage", default="all", choices=("all",) + STAGES)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--pretrained", help="local open_clip checkpoint")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--export", action="store_true", default=None)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--init-checkpoint", help="with --stage fgresq: start stage 2 from this model checkpoint")
    a = ap.parse_args(argv)
    try:
        res = run_training(a.config, a.out, manifest=a.manifest, stage=a.stage, resume=a.resume,
                           pretrained=a.pretrained, epochs=a.epochs, threads=a.threads, export=a.export,
                           val_manifest=a.val_manifest, progress=not a.no_progress,
                           init_checkpoint=a.init_checkpoint)
    except (TrainError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(_jsonable(res), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
