"""torch.compile for the one call that dominates a training step (`fgresq-sdk train --compile`).

Why: on a 2-core CPU a stage-2 step of the default towers spends about half its time in elementwise work
between the convolutions (the exact GELU forward and backward, the pooled statistics' `var_mean`; docs/default-
model-history.md, "Where a stage-2 step's time goes"). Inductor fuses those into generated C++ loops: measured on
an Intel Xeon family 6 model 167, 2 threads, the towers' stage-2 step 0.99 -> 0.59 s natively and 1.16 -> 0.85 s
with ATen, oneDNN and Inductor held to AVX2 (the stand-in for an AVX2-only Zen 3); stage 1 0.85 -> 0.58 s there.

What it changes: fused kernels add in another order, so a compiled run trains weights that differ from an eager
run's in the last bits, the same kind of difference as another CPU's kernels; on one machine a compiled run
repeats itself. Hence an execution option, like the thread count, not part of a recipe, and refused with the
portable kernels, whose point is the same sums on every CPU (among Intel CPUs, as measured).

Inductor's on-disk caches are turned off for the process: with torch 2.14.1 a stage-2 graph loaded from the cache
(a second run, or any graph compiled before) corrupted the heap and aborted the run within ten steps, every time,
while the same graph compiled afresh trained cleanly (three runs; losses equal to eager's to 1e-5). The same
symptom is pytorch/pytorch#181618 (heap corruption after loading Inductor-built CPU kernels). The price is the
compilation in every run, ~20 s per stage on 2 cores.

Only full batches go through the graph: a scene's last batch is shorter, and a graph per size (or one dynamic-
shape graph, slower on CPU) would cost more than those few steps; they run eagerly. Validation stays eager.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["toolchain_problem", "FullBatchCompiled", "step_callable"]


def _without_caches() -> None:
    import torch._inductor.config as inductor_config

    inductor_config.force_disable_caches = True


def toolchain_problem() -> str | None:
    """None when Inductor can build and run a graph with its backward here; else one line saying why not
    (no C++ compiler, no Python headers, ...). Costs a few seconds once; the result decides eager vs compiled."""
    try:
        _without_caches()
        fn = torch.compile(lambda t: torch.nn.functional.gelu(t * 2.0).sum(), dynamic=False)
        t = torch.linspace(-1.0, 1.0, 64, requires_grad=True)
        fn(t).backward()
        if t.grad is None or not bool(torch.isfinite(t.grad).all()):
            return "the compiled test graph gave no finite gradient"
    except Exception as exc:  # noqa: BLE001 - any failure of the toolchain means: train eagerly
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"{type(exc).__name__}: {first[:200]}"
    return None


class FullBatchCompiled:
    """fn(x, ...) through one static-shape graph when x holds `batch` rows, eagerly otherwise."""

    def __init__(self, fn: Callable[..., torch.Tensor], batch: int):
        _without_caches()
        self.eager = fn
        self.compiled = torch.compile(fn, dynamic=False)
        self.batch = int(batch)
        self.calls = {"compiled": 0, "eager": 0}

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        full = x.shape[0] == self.batch
        self.calls["compiled" if full else "eager"] += 1
        return (self.compiled if full else self.eager)(x, *args, **kwargs)


def step_callable(fn: Callable[..., torch.Tensor], batch: int, enabled: bool) -> Callable[..., torch.Tensor]:
    """The callable a training step should use for fn: compiled for full batches where enabled, else fn."""
    return FullBatchCompiled(fn, batch) if enabled else fn
