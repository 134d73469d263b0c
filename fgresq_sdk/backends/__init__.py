"""Backends run a bundle's encoder and comparison head; `create_backend` picks one by name."""
from __future__ import annotations

from ..bundle import Bundle
from ..errors import BackendError
from .base import Backend

BACKENDS = ("auto", "onnxruntime", "torch")


def create_backend(name: str, bundle: Bundle, device: str = "cpu", threads: int | None = None) -> Backend:
    """Instantiate a backend; `auto` means ONNX Runtime (the torch-free default)."""
    if name in ("auto", "onnxruntime", "ort"):
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(bundle, device=device, threads=threads)
    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(bundle, device=device)
    raise BackendError(f"unknown backend '{name}' (choose from: {', '.join(BACKENDS)})")


__all__ = ["Backend", "BACKENDS", "create_backend"]
