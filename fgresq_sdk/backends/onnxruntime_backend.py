"""ONNX Runtime backend: the default, torch-free runtime."""
from __future__ import annotations

import os

import numpy as np

from ..bundle import Bundle
from ..errors import BackendError
from .base import Backend


def session_options(threads: int | None = None):
    """CPU session settings: full graph optimisation, intra-op threads = usable cores, one inter-op thread.

    Sequential execution with one inter-op thread suits these straight-line graphs; the memory arena
    stays on (allocations repeat every batch).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not threads:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise BackendError("onnxruntime has no CUDA execution provider here "
                               "(install the [gpu] extra: onnxruntime-gpu, and a CUDA driver)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise BackendError(f"unknown device '{device}' for onnxruntime (use cpu or cuda)")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a runtime dependency
            raise BackendError(f"onnxruntime is not installed ({exc})") from None
        self.device = device
        providers = providers_for(device)
        so = session_options(threads)
        try:
            self.encoder = ort.InferenceSession(str(bundle.path("encoder")), so, providers=providers)
            self.compare = (ort.InferenceSession(str(bundle.path("compare_head")), so, providers=providers)
                            if bundle.has("compare_head") else None)
        except Exception as exc:  # noqa: BLE001 - ORT raises several types for a bad graph
            raise BackendError(f"{bundle.root}: onnxruntime cannot load the bundle's graphs ({exc})") from None
        self.providers = self.encoder.get_providers()
        self.input_name = self.encoder.get_inputs()[0].name
        self.input_type = self.encoder.get_inputs()[0].type  # tensor(float) or tensor(float16)

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = images.astype(np.float16 if "float16" in self.input_type else np.float32, copy=False)
        q, s = self.encoder.run(None, {self.input_name: x})
        return q.astype(np.float32, copy=False), s.astype(np.float32, copy=False)

    def compare_logits(self, q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
        if self.compare is None:
            raise BackendError("bundle has no compare_head graph")
        dtype = np.float16 if "float16" in self.compare.get_inputs()[0].type else np.float32
        (logits,) = self.compare.run(None, {"q0": q0.astype(dtype), "q1": q1.astype(dtype)})
        return logits.astype(np.float32, copy=False)

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "providers": self.providers}
