"""Keep the memory a CPU training step frees inside the process (glibc's malloc only).

Why: a training step allocates and frees activations of tens to hundreds of MB. glibc serves every block above
its mmap threshold (32 MB at most) with a fresh ``mmap`` and gives it back with ``munmap`` on free, so the
next step faults in and zeroes every page again; and smaller blocks freed at the top of the heap are trimmed
back to the kernel. On a 2-core AMD EPYC Zen 4 a stage-2 step of the default recipe spent more time in the
kernel than in torch (minor page faults at ~350k/s). With mmap chunks and trimming off, freed blocks stay in
the heap and the next step reuses them: 2.9 s -> 0.9 s per step there, the trained weights bit-identical
(torch aligns its own allocations; the arithmetic does not see where memory came from). The price is that the
process keeps its peak footprint until it exits, which is what a training run reaches every step anyway.

Process-wide, like ``torch.set_num_threads``: the training entry points call it (train/run.py, train/calibrate.py,
and train/synthetic.py, whose numpy arrays churn the same way on a smaller scale); the runtime never does (ONNX
Runtime has its own arena).
"""
from __future__ import annotations

import ctypes
import sys

__all__ = ["keep_freed_memory"]

# glibc's malloc.h: mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> str:
    """Turn off mmap chunks and heap trimming; returns what was done, for the run log."""
    if not sys.platform.startswith("linux"):
        return f"unchanged ({sys.platform}: not glibc)"
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        version = libc.gnu_get_libc_version().decode()
    except (OSError, AttributeError):
        return "unchanged (no glibc malloc)"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # -1 is SIZE_MAX once glibc widens it to size_t: never trim
    if mallopt(_M_MMAP_MAX, 0) != 1 or mallopt(_M_TRIM_THRESHOLD, -1) != 1:
        return f"unchanged (glibc {version} refused mallopt)"
    return f"glibc {version}: no mmap chunks, no trimming (freed memory is reused)"
