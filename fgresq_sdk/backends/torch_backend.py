"""torch backend: the reference model itself (needs the [torch] extra and a bundle with a checkpoint)."""
from __future__ import annotations

import numpy as np

from ..bundle import Bundle
from ..errors import BackendError
from .base import Backend


def torch_available() -> bool:
    try:
        import open_clip  # noqa: F401
        import torch  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return False
    return True


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, bundle: Bundle | None = None, device: str = "cpu", model=None):
        if not torch_available():
            raise BackendError("the torch backend needs torch and open_clip_torch (pip install 'fgresq-sdk[torch]')")
        import torch

        from ..model import load_checkpoint

        if model is None:
            if bundle is None or not bundle.has("checkpoint"):
                raise BackendError(f"{bundle.root if bundle else '?'}: bundle has no torch checkpoint "
                                   "(export it with a checkpoint to use --backend torch)")
            model = load_checkpoint(bundle.path("checkpoint"))
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("torch backend: CUDA requested but torch sees no GPU")
        self.torch = torch
        self.device = device
        self.model = model.eval().to(device)

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.inference_mode():
            x = self.torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(self.device)
            q, s = self.model(x)
        return q.float().cpu().numpy(), s.float().cpu().numpy()

    def compare_logits(self, q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
        t = self.torch
        with t.inference_mode():
            out = self.model.compare_logits(t.from_numpy(np.asarray(q0, np.float32)).to(self.device),
                                            t.from_numpy(np.asarray(q1, np.float32)).to(self.device))
        return out.float().cpu().numpy()
