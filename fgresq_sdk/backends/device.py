"""The one reading of a `--device` string, for every backend: cpu, auto, cuda or cuda:N."""
from __future__ import annotations

from ..errors import BackendError

DEVICES = "cpu, cuda, cuda:N or auto"


def parse_device(device: str) -> tuple[str, int | None]:
    """`cpu`/`auto` → (kind, None), `cuda` → ("cuda", 0), `cuda:N` → ("cuda", N); anything else is a
    BackendError."""
    if device in ("cpu", "auto"):
        return device, None
    head, sep, idx = device.partition(":")
    if head == "cuda" and (not sep or idx.isdigit()):
        return "cuda", int(idx) if sep else 0
    raise BackendError(f"unknown device '{device}' (use {DEVICES})")


def gpu_index(device: str, what: str) -> int:
    """The CUDA device index for a backend that runs on GPUs only (`auto` = GPU 0); `what` names that
    backend in the error for the CPU."""
    kind, index = parse_device(device)
    if kind == "cpu":
        raise BackendError(f"{what} runs on CUDA GPUs only (got --device {device}; use cuda or cuda:N)")
    return index or 0


def gpu_device(device: str) -> str:
    """The device a GPU backend is handed: `auto` means the default GPU."""
    return "cuda" if device == "auto" else device
