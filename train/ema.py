"""Exponential moving average of the weights, used as the stage's checkpoint.

Why: at lr 1e-3 the compact models' val pair ACC swung by up to 0.3 on a task between neighbouring epochs
(README, default model v6/v7): each epoch's checkpoint was one noisy point of the trajectory. The average of the
last few hundred steps' weights is a smoother model; ``fit`` validates and saves it instead of the raw weights,
and keeps the raw weights in the training-state file so that ``--resume`` continues the raw trajectory exactly.

Every floating-point entry of the state dict is averaged (BatchNorm running statistics too, as in timm's
ModelEmaV2; frozen weights stay as they are); integer buffers are copied. The decay warms up as
min(decay, (1 + n) / (10 + n)) after n updates, so the first steps' random weights fade quickly.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

__all__ = ["WeightEMA"]


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), not {decay}")
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def effective_decay(self, updates: int) -> float:
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def update(self, model: nn.Module, updates: int) -> None:
        """Blend the model's current weights in; ``updates`` = optimizer steps taken before this one."""
        d = self.effective_decay(updates)
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.lerp_(v.detach(), 1.0 - d)  # s + (1-d)(v - s): weights that do not move stay bit-exact
            else:
                s.copy_(v)

    @torch.no_grad()
    def reset_to(self, model: nn.Module) -> None:
        """Take the model's weights as the average (resume: the checkpoint holds the average)."""
        for k, v in model.state_dict().items():
            self.shadow[k].copy_(v)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
        """The averaged weights in the model for the block; yields the raw ones, put back afterwards."""
        raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield raw
        finally:
            model.load_state_dict(raw)
