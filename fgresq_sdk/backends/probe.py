"""Cheap availability checks for the `auto` backend: none of them imports torch or TensorRT.

Importing torch only to ask `torch.cuda.is_available()` costs seconds and breaks the promise that the
torch-free runtime never imports torch. So the GPU question is first asked of the CUDA driver library
itself (libcuda, through ctypes: milliseconds; absent on a machine without an NVIDIA driver), and
packages are looked up with `importlib.util.find_spec`, which finds a module without running it.
The driver probe runs only when a GPU may be wanted (device auto/cuda) and, like any CUDA use, it
initialises the driver in this process: fork worker processes before it, or use spawn.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.util
import sys

_DRIVER_LIBS = {"win32": ("nvcuda.dll",), "darwin": ()}.get(sys.platform, ("libcuda.so.1", "libcuda.so"))


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.lru_cache(maxsize=1)
def cuda_driver_devices() -> tuple[int, str]:
    """(number of CUDA devices the driver sees, why none when 0), asked of libcuda directly.

    Honours CUDA_VISIBLE_DEVICES like any CUDA program (an empty value hides every GPU).
    """
    lib = None
    for name in _DRIVER_LIBS:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return 0, "no NVIDIA driver (libcuda not found)"
    try:
        rc = lib.cuInit(0)
        if rc != 0:
            # 100 = CUDA_ERROR_NO_DEVICE, 999 = unknown (often a container without the device nodes).
            return 0, f"the CUDA driver sees no usable GPU (cuInit returned {rc})"
        count = ctypes.c_int(0)
        rc = lib.cuDeviceGetCount(ctypes.byref(count))
        if rc != 0:
            return 0, f"the CUDA driver could not count GPUs (cuDeviceGetCount returned {rc})"
    except AttributeError:  # pragma: no cover - a library named libcuda that is not the driver
        return 0, "libcuda has no cuInit (not the NVIDIA driver library)"
    if count.value == 0:
        return 0, "the CUDA driver sees no GPU"
    return int(count.value), f"{count.value} CUDA device(s)"


@functools.lru_cache(maxsize=1)
def cuda_driver_version() -> str | None:
    """The CUDA version the installed NVIDIA driver supports ("13.0"), asked of libcuda; None without one.

    The driver's, not a toolkit's: torch, onnxruntime-gpu and TensorRT each bring their own CUDA runtime,
    and each needs a driver at least that new."""
    for name in _DRIVER_LIBS:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int(0)
        try:
            if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
                return None
        except AttributeError:  # pragma: no cover - not the driver library
            return None
        return f"{version.value // 1000}.{(version.value % 1000) // 10}"
    return None
