"""What the running CPU is, as far as ONNX Runtime's kernels care (Linux /proc/cpuinfo; empty elsewhere).

/proc/cpuinfo is the kernel's view of the machine; a process can see less through CPUID (a hypervisor that
masks features, or an emulator such as `qemu-x86_64 -cpu EPYC-Milan`, which is how this project measures
the AVX2-only int8 path on an AVX-512 machine). ONNX Runtime's kernels dispatch on CPUID, so where numpy's
runtime CPUID probe knows a flag, a flag counts only if CPUID reports it to this process too.

Used to key the optimized-graph cache (ort_cache.py), to record where an int8 bundle was built and
validated, to warn when an int8 scheme is unsafe on this CPU, and in `fgresq-sdk bench`'s header.
"""
from __future__ import annotations

import functools
import platform

# SIMD extensions that change which ONNX Runtime (MLAS) kernels run, and so the optimized graph (NCHWc
# block sizes) and int8 numerics (VNNI: no 16-bit saturation in u8×s8 dot products).
SIMD_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
              "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
              "avx_vnni_int8", "asimd", "asimddp", "i8mm", "sve", "sve2", "bf16")
# The ones a reader looks at first (bench header, int8 records).
INT8_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


# /proc/cpuinfo flag -> numpy's name for the same CPUID bit (numpy probes CPUID in-process at import).
_NUMPY_NAMES = {"avx": "AVX", "avx2": "AVX2", "fma": "FMA3", "f16c": "F16C", "sse4_1": "SSE41",
                "sse4_2": "SSE42", "avx512f": "AVX512F", "avx512bw": "AVX512BW", "avx512vl": "AVX512VL",
                "avx512dq": "AVX512DQ", "avx512_vnni": "AVX512VNNI", "avx512_bf16": "AVX512BF16",
                "avx512_fp16": "AVX512FP16"}


def _cpuid_hidden() -> set[str]:
    """/proc/cpuinfo flags that CPUID does not report to this process (empty when numpy cannot tell)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as seen
    except ImportError:  # numpy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as seen
        except ImportError:
            return set()
    return {flag for flag, name in _NUMPY_NAMES.items() if name in seen and not seen[name]}


def _cpuinfo_fields() -> dict[str, str]:
    """Each /proc/cpuinfo key with its first value, in the file's order ({} where there is no such file); read
    afresh on each call: `_cpuinfo` caches what the runtime asks for often, `cpu_generation` is asked once a run."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str | None, frozenset]:
    fields = _cpuinfo_fields()
    model = next((v for k, v in fields.items() if k in ("model name", "Processor", "cpu model")), None)
    flags = frozenset(next((v for k, v in fields.items() if k in ("flags", "Features")), "").split())
    if is_x86():
        flags = flags - _cpuid_hidden()
    return model, flags


def cpu_model() -> str:
    return _cpuinfo()[0] or platform.processor() or platform.machine() or "unknown"


def cpu_generation() -> str | None:
    """'<vendor> family F model M' from /proc/cpuinfo (None elsewhere). Why: a model name such as "Intel(R)
    Xeon(R) Processor" covers several generations, whose kernels sum differently (training reproduces per
    generation: README, "CPU kernels")."""
    fields = _cpuinfo_fields()
    if not all(k in fields for k in ("vendor_id", "cpu family", "model")):
        return None
    return f"{fields['vendor_id']} family {fields['cpu family']} model {fields['model']}"


def simd_flags() -> list[str]:
    """The SIMD_FLAGS this CPU has, sorted."""
    return sorted(set(SIMD_FLAGS) & _cpuinfo()[1])


def cpu_isa() -> list[str]:
    """The x86 extensions that matter for int8 (avx2, avx512f, avx512_vnni, avx_vnni, amx_int8 present here)."""
    return sorted(set(INT8_ISA) & _cpuinfo()[1])


def has_vnni() -> bool:
    """u8×s8 dot products without 16-bit intermediate saturation (AVX-512 VNNI, AVX-VNNI or AMX)."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & _cpuinfo()[1])


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
