"""Which CPU kernels training runs on: the machine's fastest ("native"), or ones meant to sum in the same order on
every x86-64 CPU with AVX2 ("portable") — which they do across Intel generations, not across vendors (below).

Why: the default model's recipe is deterministic on one machine, but an AVX-512 Intel, an AVX-512 Zen 4 and an
AVX2-only Zen 3 trained three different sets of towers from the same seed (README, "Embedded default model"):
float32 kernels that add in another order differ in the last bits, and 2,000 optimiser steps grow that. Three
libraries choose kernels by the CPU (bench/isa_repro.py measured each one moving the weights):

- ATen picks its vectorised kernels by ISA (AVX-512 or AVX2): ``ATEN_CPU_CAPABILITY=avx2`` caps it at the
  width every AVX2 CPU runs.
- oneDNN's convolutions pick ISA *and* blocking by the CPU, cache sizes included, and have no reproducible
  mode: training turns them off (``torch.backends.mkldnn.enabled = False``), so a convolution is ATen's
  im2col plus a GEMM.
- MKL picks its GEMM by ISA and vendor: only its conditional-numerical-reproducibility branch ``COMPATIBLE``
  is documented to give the same results on Intel and non-Intel CPUs (fixed cache sizes, deterministic
  reductions, static scheduling; ``STRICT`` drops the alignment condition). ``MKL_CBWR=AVX2`` is not: on
  non-Intel CPUs MKL ignores it and dispatches as usual.

numpy needs no pin: the training process only scales and shifts pixels with it (each operation correctly
rounded whatever the vector width), and the synthetic data came out byte for byte the same with its AVX-512
kernels disabled (val photos, 1,508 files, 2026-12-04). ATen and MKL read their variables once, when they load,
so the pins must be in the environment before torch is imported: `reexec_with` starts the command again with them.
Cost: the default recipe's steps took ~2.5× as long on an Intel Xeon with AVX-512 (stage 1 1.67 s vs 0.68 s,
stage 2 2.30 s vs 0.90 s; README, "CPU kernels"), which is why that recipe stays native.

What it buys, measured with bench/isa_repro.py (20 steps of the recipe's towers): the same weights on two Intel
generations (family 6 models 167 and 207) and two torch releases, but other weights on a real AMD Zen 3
(2026-12-06: `cnr` b8f61424… against the Intels' d84cfaed…). Something below these pins still follows the
vendor; it is not identified. So "portable" means portable among Intel CPUs until an AMD matches.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping

__all__ = ["KERNELS", "PORTABLE_ENV", "missing_pins", "reexec_with", "apply_in_process", "describe"]

KERNELS = ("native", "portable")

PORTABLE_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE,STRICT",
}


def missing_pins(kernels: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The pins `kernels` needs that the environment does not hold yet ({} for native or when all are set)."""
    if kernels not in KERNELS:
        raise ValueError(f"cpu_kernels must be one of {KERNELS}, not {kernels!r}")
    env = os.environ if environ is None else environ
    return {} if kernels == "native" else {k: v for k, v in PORTABLE_ENV.items() if env.get(k) != v}


def reexec_with(pins: Mapping[str, str]) -> None:
    """Replace this process by the same command with `pins` added to its environment (never returns).
    sys.orig_argv keeps the interpreter's own options (-m, -X ...) as the command was given."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    if not os.path.isabs(argv[0]):
        argv[0] = sys.executable
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, {**os.environ, **pins})


def apply_in_process(kernels: str) -> None:
    """The part of the choice that is a torch switch rather than an environment variable."""
    import torch

    torch.backends.mkldnn.enabled = kernels != "portable"


def describe(kernels: str) -> dict[str, object]:
    """What the run actually got, for its log: a portable run on a CPU without AVX2 falls back to ATen's default
    kernels and will not match AVX2 machines, which the log then says."""
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    out: dict[str, object] = {"cpu_kernels": kernels, "aten_capability": cap,
                              "onednn": bool(torch.backends.mkldnn.enabled),
                              "pins": {k: os.environ[k] for k in PORTABLE_ENV if k in os.environ}}
    if kernels == "portable" and cap != "AVX2":
        out["warning"] = f"ATen runs its {cap} kernels here (no AVX2): the weights will differ from AVX2 machines"
    return out
