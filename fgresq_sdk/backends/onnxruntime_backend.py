"""ONNX Runtime backend: the default, torch-free runtime."""
from __future__ import annotations

import os

import numpy as np

from ..bundle import Bundle
from ..errors import BackendError, BundleError
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


def cuda_index(device: str) -> int:
    """`cuda` → 0, `cuda:N` → N; anything else is a BackendError."""
    if device == "cuda":
        return 0
    head, _, idx = device.partition(":")
    if head != "cuda" or not idx.isdigit():
        raise BackendError(f"unknown device '{device}' (use cpu, cuda or cuda:N)")
    return int(idx)


def providers_for(device: str) -> list:
    """ORT providers for a device: plain names for the CPU, (name, options) for CUDA on GPU N."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        index = cuda_index(device)
        if "CUDAExecutionProvider" not in available:
            raise BackendError("onnxruntime has no CUDA execution provider here "
                               "(install the [gpu] extra: onnxruntime-gpu, and a CUDA driver)")
        # use_tf32=0: fp32 bundles mean fp32 (the CUDA provider would otherwise round fp32 matmul and
        # convolution inputs to TF32's 10-bit mantissa on Ampere and later); fp16 bundles are the fast path.
        return [("CUDAExecutionProvider", {"device_id": index, "use_tf32": 0}), "CPUExecutionProvider"]
    raise BackendError(f"unknown device '{device}' for onnxruntime (use cpu or cuda)")


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime on the CPU (default) or on a GPU through the CUDA execution provider.

    fp16 bundles (export/half.py) keep fp32 inputs and outputs, so the same numpy tensors feed every
    precision; on CUDA the fp16 encoder is where the speed comes from, on the CPU it is only smaller.
    """

    name = "onnxruntime"
    # InferenceSession.run may be called from many threads at once (ORT documents Run as thread-safe).
    thread_safe = True

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a runtime dependency
            raise BackendError(f"onnxruntime is not installed ({exc})") from None
        self.device = device
        self.precision = bundle.precision
        providers = providers_for(device)
        so = session_options(threads)
        try:
            # ONNX Runtime reads the very descriptor that was verified (no re-open by name, no extra copy).
            with bundle.opened("encoder") as encoder_path:
                self.encoder = ort.InferenceSession(encoder_path, so, providers=providers)
            self.compare = (ort.InferenceSession(bundle.read("compare_head"), so, providers=providers)
                            if bundle.has("compare_head") else None)
        except BundleError:
            raise
        except Exception as exc:  # noqa: BLE001 - ORT raises several types for a bad graph
            raise BackendError(f"{bundle.root}: onnxruntime cannot load the bundle's graphs ({exc})") from None
        self.providers = self.encoder.get_providers()
        if device.startswith("cuda") and "CUDAExecutionProvider" not in self.providers:
            # ORT falls back to the CPU when the CUDA provider fails to load (driver, CUDA or cuDNN
            # libraries missing): asked for a GPU, that is an error, not a silent slowdown.
            raise BackendError("onnxruntime could not start its CUDA execution provider (the session fell back "
                               f"to {', '.join(self.providers)}; check the CUDA and cuDNN libraries onnxruntime-gpu "
                               "needs)")
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

    def details(self) -> dict:
        return {"providers": self.providers, "precision": self.precision}
