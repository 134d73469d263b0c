"""What every backend offers: encode an image batch, and run the comparison head on feature pairs."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Backend(ABC):
    """One loaded model on one device. Inputs and outputs are numpy float32."""

    name: str = "?"
    device: str = "cpu"

    @abstractmethod
    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[B,3,S,S] normalised images → (quality features q [B,3D], scores [B])."""

    @abstractmethod
    def compare_logits(self, q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
        """[B,3D], [B,3D] → logits [B,3] of (first better, second better, similar)."""

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device}
