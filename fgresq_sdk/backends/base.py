"""What every backend offers: encode an image batch into quality features and scores.

The comparison head is not a backend's job: it is one 6D×3 matrix product, evaluated for every backend by
fgresq_sdk.heads from the bundle's heads.npz, so that a comparison depends on the features only.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Backend(ABC):
    """One loaded model on one device. Inputs and outputs are numpy float32."""

    name: str = "?"
    device: str = "cpu"
    # Whether encode may run from several threads at once; Scorer serialises the calls of
    # a backend that says False.
    thread_safe: bool = False
    # How many whole batches may run at once, each on one core (`encode_one_core`); 0: none, the backend spreads
    # one batch over its own threads (GPUs, torch, TensorRT). Scorer uses it for calls of more than one batch.
    one_core_workers: int = 0
    # Set by `create_backend("auto", …)`: why this backend was picked and why the others were skipped.
    auto_reason: str | None = None
    auto_skipped: dict[str, str] | None = None

    @abstractmethod
    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[B,3,S,S] normalised images → (quality features q [B,3D], scores [B])."""

    def encode_one_core(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`encode` on the calling thread alone (only where one_core_workers > 0)."""
        raise NotImplementedError(f"{self.name} does not run batches one core each")

    def details(self) -> dict:
        """Backend-specific facts for `describe()` (providers, precision, engine…)."""
        return {}

    def describe(self) -> dict:
        out = {"backend": self.name, "device": self.device, **self.details()}
        if self.auto_reason is not None:
            out["auto_reason"] = self.auto_reason
            out["auto_skipped"] = dict(self.auto_skipped or {})
        return out
