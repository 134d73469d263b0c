"""Backends run a bundle's encoder and comparison head; `create_backend` picks one by name.

`auto` on ``device="cpu"`` (the CLI's default) is ONNX Runtime on the CPU, decided without probing
anything: no torch, no TensorRT, no CUDA driver call. With ``device="auto"`` or ``"cuda[:N]"`` it tries,
in order: TensorRT (the bundle has an engine, TensorRT is installed, a GPU is present and the engine
was built for it), ONNX Runtime's CUDA provider, torch on CUDA (bundle with a checkpoint), and — for
``device="auto"`` only — ONNX Runtime on the CPU. The pick and the reason each earlier choice was
skipped are kept on the backend (``describe()["auto_reason"]``, ``["auto_skipped"]``). The GPU
question is asked of the CUDA driver through ctypes first (see probe.py), so a machine without a GPU
never imports torch to find that out.
"""
from __future__ import annotations

from ..bundle import Bundle
from ..errors import BackendError
from ..formats import RUN_BACKENDS, RUN_PRECISIONS
from .base import Backend
from .device import gpu_device, parse_device
from .probe import cuda_driver_devices, importable

BACKENDS = ("auto",) + RUN_BACKENDS
ALIASES = {"ort": "onnxruntime", "trt": "tensorrt"}
PRECISIONS = RUN_PRECISIONS


def _ort_cuda_available() -> tuple[bool, str]:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "onnxruntime has no CUDAExecutionProvider (install the [gpu] extra: onnxruntime-gpu)"
    return True, "CUDAExecutionProvider available"


def _bundle_precision_ok(bundle: Bundle, precision: str | None, what: str) -> str | None:
    """None when `precision` is unset or is what the bundle holds, else why `what` cannot honour it."""
    if precision is None or precision == bundle.precision:
        return None
    return (f"{what} runs the bundle's own precision ({bundle.precision}), not {precision} "
            f"(derive a {precision} bundle, or use the torch backend for fp16/bf16)")


def _make_onnxruntime(bundle, device, threads, precision):
    from .onnxruntime_backend import OnnxRuntimeBackend

    why = _bundle_precision_ok(bundle, precision, "onnxruntime")
    if why:
        raise BackendError(why)
    return OnnxRuntimeBackend(bundle, device=device, threads=threads)


def _make_torch(bundle, device, precision, cuda_graphs, compile=False):
    from .torch_backend import TorchBackend

    return TorchBackend(bundle, device=device, precision=precision or "fp32", cuda_graphs=cuda_graphs,
                        compile=compile)


def _make_tensorrt(bundle, device, precision):
    from .tensorrt_backend import TensorRTBackend

    # The engine's precision (its record), not the bundle's: that is its encoder.onnx's, for onnxruntime.
    return TensorRTBackend(bundle, device=device, precision=precision)


def _why(exc: Exception) -> str:
    return str(exc) if isinstance(exc, BackendError) else f"{type(exc).__name__}: {exc}"


def _auto(bundle: Bundle, device: str, threads, precision, cuda_graphs, compile=False) -> Backend:
    skipped: dict[str, str] = {}

    def done(backend: Backend, why: str, summary: str | None = None) -> Backend:
        backend.auto_skipped = skipped
        reasons = summary or "; ".join(f"skipped {k}: {v}" for k, v in skipped.items())
        backend.auto_reason = why + (f" ({reasons})" if reasons else "")
        return backend

    def cpu_fallback(why: str, summary: str | None = None) -> Backend:
        if precision is not None and precision != bundle.precision:
            why += f"; --precision {precision} not applied (onnxruntime runs the bundle's {bundle.precision})"
        if cuda_graphs:
            why += "; CUDA graphs not applied (CPU)"
        if compile:
            why += "; torch.compile not applied (onnxruntime)"
        return done(_make_onnxruntime(bundle, "cpu", threads, None), why, summary)

    if device == "cpu":
        # Not probed at all: the default must stay exactly as fast and torch-free as plain onnxruntime.
        return cpu_fallback("onnxruntime on the CPU because --device cpu was asked for (GPU backends not probed)")
    n_gpus, gpu_why = cuda_driver_devices()
    gdev = gpu_device(device)
    if n_gpus == 0:
        for k in ("tensorrt", "onnxruntime-cuda", "torch-cuda"):
            skipped[k] = f"no CUDA device: {gpu_why}"
        if device != "auto":
            raise BackendError(f"--device {device}: no CUDA device here ({gpu_why})")
        return cpu_fallback(f"onnxruntime on the CPU: no CUDA device ({gpu_why})",
                            "tensorrt, onnxruntime-cuda and torch-cuda skipped")
    # 1. TensorRT
    if not bundle.has("engine"):
        skipped["tensorrt"] = "bundle has no TensorRT engine"
    elif not importable("tensorrt"):
        skipped["tensorrt"] = "TensorRT is not installed"
    else:
        try:
            return done(_make_tensorrt(bundle, gdev, precision), "tensorrt: the bundle's engine fits this GPU")
        except Exception as exc:  # noqa: BLE001 - auto falls back whatever broke
            skipped["tensorrt"] = _why(exc)
    # 2. ONNX Runtime, CUDA execution provider
    ok, why = _ort_cuda_available()
    if not ok:
        skipped["onnxruntime-cuda"] = why
    else:
        try:
            return done(_make_onnxruntime(bundle, gdev, threads, precision),
                        "onnxruntime with the CUDA execution provider")
        except Exception as exc:  # noqa: BLE001 - auto falls back whatever broke
            skipped["onnxruntime-cuda"] = _why(exc)
    # 3. torch on CUDA
    if not bundle.has("checkpoint"):
        skipped["torch-cuda"] = "bundle has no torch checkpoint"
    elif not (importable("torch") and importable("open_clip")):
        skipped["torch-cuda"] = "torch/open_clip not installed"
    else:
        try:
            return done(_make_torch(bundle, gdev, precision, cuda_graphs, compile),
                        f"torch on CUDA ({precision or 'fp32'})")
        except Exception as exc:  # noqa: BLE001 - auto falls back whatever broke
            skipped["torch-cuda"] = _why(exc)
    if device != "auto":
        raise BackendError(f"--device {device}: no GPU backend can run this bundle here: "
                           + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return cpu_fallback("onnxruntime on the CPU: no GPU backend could run this bundle")


def create_backend(name: str, bundle: Bundle, device: str = "cpu", threads: int | None = None,
                   precision: str | None = None, cuda_graphs: bool = False, compile: bool = False) -> Backend:
    """Instantiate a backend by name (`auto`, `onnxruntime`/`ort`, `torch`, `tensorrt`/`trt`).

    precision: None = the bundle's own; fp16/bf16 are run by the torch backend (onnxruntime and TensorRT
    run what the bundle holds; TensorRT what its engine record says). cuda_graphs: torch backend on CUDA only.
    compile: torch.compile with static batch buckets, torch backend only (`auto` applies it if it picks torch).
    """
    name = ALIASES.get(name, name)
    if name not in BACKENDS:
        raise BackendError(f"unknown backend '{name}' (choose from: {', '.join(BACKENDS)})")
    parse_device(device)
    if precision is not None and precision not in PRECISIONS:
        raise BackendError(f"unknown precision '{precision}' (choose from: {', '.join(PRECISIONS)})")
    if compile and name in ("onnxruntime", "tensorrt"):
        raise BackendError(f"--compile is torch.compile: it applies to the torch backend, not {name}")
    if name == "auto":
        return _auto(bundle, device, threads, precision, cuda_graphs, compile)
    if name == "onnxruntime":
        if device == "auto":
            device = "cuda" if cuda_driver_devices()[0] and _ort_cuda_available()[0] else "cpu"
        return _make_onnxruntime(bundle, device, threads, precision)
    if name == "torch":
        if device == "auto":
            # The user asked for torch: importing it is expected.
            from .torch_backend import torch_available

            use_cuda = False
            if cuda_driver_devices()[0] and torch_available():
                import torch

                use_cuda = torch.cuda.is_available()
            device = "cuda" if use_cuda else "cpu"
        return _make_torch(bundle, device, precision, cuda_graphs, compile)
    return _make_tensorrt(bundle, device, precision)


__all__ = ["Backend", "BACKENDS", "PRECISIONS", "create_backend"]
