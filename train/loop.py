"""The training loop both stages share: seeding and threads, Adam with a warm-up/cosine schedule (restored
on resume), and ``fit``, which runs epochs and after each one validates, checkpoints and logs.

A stage supplies only what differs (its parameters, a step function returning the loss and metrics, its
train/eval modes, a validation function); everything that makes runs resumable and logged lives here once.
Batches and crops are pure functions of (seed, epoch), so a resumed epoch sees the same data.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from .checkpoints import (CHECKPOINT_NAME, STATE_NAME, latest_epoch, load_train_state, load_weights_into,
                          prune_epochs, save_train_state)
from .config import TrainError
from .ema import WeightEMA
from .logs import JsonlLogger, Progress

__all__ = ["set_seed", "set_threads", "make_optimizer", "make_scheduler", "stage_optimization", "fit",
           "count_trainable", "image_batch"]


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> int:
    n = int(threads) if threads else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


def image_batch(x: torch.Tensor, device, channels_last: bool = False) -> torch.Tensor:
    """A batch on the training device, channels-last when asked. Why: the weights stay in their usual layout
    (checkpoints unchanged); a channels-last input alone makes oneDNN pick its NHWC convolutions, which for
    the conv towers are far faster on CPU than NCHW, forward and backward."""
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4 and x.is_floating_point():
        x = x.contiguous(memory_format=torch.channels_last)
    return x


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


def stage_optimization(model: nn.Module, params: Iterable[nn.Parameter], stage_cfg: dict[str, Any],
                       total_steps: int, stage_dir: Path, resume: bool, ema: WeightEMA | None = None):
    """Adam + warm-up/cosine schedule for one stage, restored from the stage's last epoch when resuming.

    With a weight average (``ema``) the epoch checkpoint holds the average and the state file the raw weights:
    the average is restored from the former, the model from the latter.
    Returns (optimizer, scheduler, start_epoch, step, resumed_from or None).
    """
    optimizer = make_optimizer(params, stage_cfg["lr"], stage_cfg["weight_decay"])
    scheduler = make_scheduler(optimizer, total_steps, stage_cfg["warmup_steps"], stage_cfg["min_lr_ratio"])
    if resume and (last := latest_epoch(stage_dir)):
        ckpt = stage_dir / CHECKPOINT_NAME.format(last)
        load_weights_into(model, ckpt)
        st = load_train_state(stage_dir / STATE_NAME.format(last), optimizer, scheduler)
        if ema is not None:
            ema.reset_to(model)
        if st["weights"]:
            model.load_state_dict(st["weights"])
        return optimizer, scheduler, int(st["epoch"]), int(st["step"]), f"resumed from {ckpt}"
    return optimizer, scheduler, 0, 0, None


def fit(*, stage: str, model: nn.Module, optimizer, scheduler, sampler, dataset,
        step_fn: Callable[[dict], dict[str, Any]], train_mode: Callable[[], None], epochs: int,
        stage_dir: Path, logger: JsonlLogger, start_epoch: int = 0, global_step: int = 0,
        log_every: int = 1, progress: Progress | None = None, grad_clip: float | None = None,
        val_fn: Callable[[], dict | None] | None = None, keep_checkpoints: int | None = None,
        num_workers: int = 0, train_config: dict | None = None, ema: WeightEMA | None = None) -> int:
    """Train epochs [start_epoch, epochs); after each: validate, checkpoint, state, log. Returns the step.

    With ``ema`` the average is updated after every optimizer step, and it is what is validated and saved as
    the epoch checkpoint (the raw weights go into the state file, for resuming)."""
    from torch.utils.data import DataLoader

    from fgresq_sdk.model import save_checkpoint

    progress = progress or Progress(False)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    steps_per_epoch = len(sampler)
    stage_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    channels_last = bool(((train_config or {}).get("data") or {}).get("channels_last"))
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
            batch = {k: image_batch(v, device, channels_last) if isinstance(v, torch.Tensor) else v
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
            if ema is not None:
                ema.update(model, global_step)
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
        ckpt = stage_dir / CHECKPOINT_NAME.format(epoch + 1)
        state = stage_dir / STATE_NAME.format(epoch + 1)
        extra = {"stage": stage, "epoch": str(epoch + 1), "step": str(global_step)}
        if train_config is not None:
            extra["train_config"] = json.dumps(train_config, sort_keys=True)
        with (ema.applied(model) if ema is not None else nullcontext()) as raw:
            val = val_fn() if val_fn is not None else None
            if ema is not None:
                extra["weights"] = f"moving average of the weights (decay {ema.decay})"
            save_checkpoint(model, ckpt, source=f"fgresq-sdk train ({stage}, epoch {epoch + 1})", extra=extra)
        save_train_state(state, optimizer, scheduler, epoch=epoch + 1, step=global_step, weights=raw)
        prune_epochs(stage_dir, keep_checkpoints, epoch + 1)
        means = {k: v / max(n, 1) for k, v in sums.items()}
        logger.log("epoch", stage=stage, epoch=epoch + 1, epochs=epochs, step=global_step, **means, val=val,
                   checkpoint=str(ckpt), state=str(state), epoch_s=round(time.perf_counter() - t_epoch, 3))
    return global_step


def count_trainable(params: Iterable[nn.Parameter]) -> int:
    return int(sum(p.numel() for p in params if p.requires_grad))
