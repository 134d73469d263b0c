"""torch backend: the reference model itself (needs the [torch] extra and a bundle with a checkpoint).

It encodes only. Comparisons go through the bundle's heads.npz in numpy (fgresq_sdk.heads), as for every
backend: the export writes those arrays from this checkpoint's comparison head, and one float64 head for
all backends means the same features give the same answer whichever backend made them (the model's
torch head in float32 differed by ~1e-7; training and export keep using it).

On a GPU it also runs in reduced precision and, optionally, through CUDA graphs:

* ``precision="fp16" | "bf16"`` casts the weights of the two image towers (the ViTs: ~all of the
  FLOPs and bytes) to that type, and keeps everything after the towers in fp32: the task MLP, the
  prompt softmax, the regression head with its sigmoid and the comparison head. Casting weights rather
  than running under ``torch.autocast`` was chosen because autocast keeps fp32 master weights and
  re-casts every Linear's weight on every forward (its cast cache lives for one autocast region and only
  holds grad-requiring leaves), which costs a weight-sized copy per call — most of the time at small
  batches — and doubles the weights' memory; half weights are read once per call at half the bytes.
  The numerically touchy reductions stay safe with half weights: torch's CUDA LayerNorm and softmax
  kernels (the attention's fused kernels included) accumulate in fp32 whatever their I/O type, and the
  features leave each tower as fp32 before any head sees them.
* ``cuda_graphs=True`` captures one ``torch.cuda.CUDAGraph`` per batch size (``graph_batch_sizes``,
  captured lazily on first use) with static input/output buffers: a batch is padded with zero images up
  to the next captured size and larger batches are cut into chunks of the largest. Rows are independent
  in this model (no batch statistics), so padding never changes the real rows' outputs. Graph replay
  removes the per-kernel launch cost that dominates small batches of a small model.
* ``compile=True`` runs the model through ``torch.compile`` (TorchInductor: Triton kernels on a GPU, C++
  on the CPU) with static shapes: batches are padded to the next of ``compile_batch_sizes`` (cut into
  chunks of the largest beyond it), so each bucket compiles once (``dynamic=False``) and no batch size
  ever triggers a recompile; the recompile limit is raised to cover every bucket. It combines with
  fp16/bf16 (the cast model is compiled) and with ``cuda_graphs`` (the graphs then capture the compiled
  kernels, one graph per bucket). Compiled code is cached on disk by Inductor (its FX graph cache, under
  ``$TORCHINDUCTOR_CACHE_DIR``, default ``/tmp/torchinductor_$USER``), so a new process with the same
  model and buckets skips most of the compile time. The first batch of each bucket pays the compile;
  ``describe()["compile"]["first_call_s"]`` says how long it took.
"""
from __future__ import annotations

import contextlib
import copy
import threading
import time

import numpy as np

from ..bundle import Bundle
from ..errors import BackendError
from ..formats import run_precisions
from .base import Backend

PRECISIONS = run_precisions("torch")
DEFAULT_GRAPH_BATCHES = (1, 2, 4, 8, 16, 32, 64)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def torch_available() -> bool:
    try:
        import open_clip  # noqa: F401
        import torch  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return False
    return True


def _torch_dtype(torch, precision: str):
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision '{precision}' for the torch backend (choose from: {', '.join(PRECISIONS)})")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _cast_tower_class():
    """Defined lazily: this module must import without torch."""
    from torch import nn

    class CastTower(nn.Module):
        """Runs an image tower in `dtype` (weights cast once) and hands back fp32 features."""

        def __init__(self, tower, dtype):
            super().__init__()
            self.tower = tower.to(dtype)
            self.dtype = dtype

        def forward(self, x):
            return self.tower(x.to(self.dtype)).float()

    return CastTower


def reduced_precision_model(model, precision: str):
    """A copy of `model` whose two towers run in fp16/bf16 while the heads stay fp32 (fp32: `model`)."""
    import torch

    dtype = _torch_dtype(torch, precision)
    if dtype == torch.float32:
        return model
    cast = _cast_tower_class()
    model = copy.deepcopy(model)
    model.image_tower = cast(model.image_tower, dtype)
    model.degradation_tower = cast(model.degradation_tower, dtype)
    return model


@contextlib.contextmanager
def ieee_fp32_convolutions(torch):
    """fp32 means fp32: torch lets cuDNN run fp32 convolutions in TF32 by default (10-bit mantissa on
    Ampere and later; matmuls are already IEEE by default). Switched off around our forward only and
    restored after. The legacy flag keeps torch's conv/rnn precision flags consistent; where the caller
    has set the two apart with the newer per-backend API (torch ≥ 2.9 then refuses to read the legacy
    flag), that API is used instead."""
    cudnn = torch.backends.cudnn
    try:
        saved = cudnn.allow_tf32
    except RuntimeError:
        saved = None
    if saved is not None:
        cudnn.allow_tf32 = False
        try:
            yield
        finally:
            cudnn.allow_tf32 = saved
        return
    conv = cudnn.conv
    prev = conv.fp32_precision
    conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = prev


def _bucket_sizes(sizes, what: str) -> tuple[int, ...]:
    out = tuple(sorted({int(b) for b in sizes if int(b) > 0}))
    if not out:
        raise BackendError(f"{what} need at least one positive batch size")
    return out


def _chunks(n: int, sizes: tuple[int, ...]):
    """(start, rows, bucket) for n rows: chunks of the largest bucket, the rest padded to the next bucket."""
    start = 0
    while start < n:
        rows = min(n - start, sizes[-1])
        bucket = next(b for b in sizes if b >= rows)
        yield start, rows, bucket
        start += rows


class _PaddedForward:
    """`fn(x) -> (q, s)` on static shapes only: each chunk padded with zero images to its bucket size."""

    def __init__(self, torch, fn, sizes, device):
        self.torch = torch
        self.fn = fn
        self.sizes = _bucket_sizes(sizes, "compiled batch buckets")
        self.device = device
        self.first_call_s: dict[int, float] = {}  # bucket → seconds of its first call (the compile)

    def _sync(self):
        if str(self.device).startswith("cuda"):
            self.torch.cuda.synchronize(self.device)

    def __call__(self, x):
        """x: [B,…] float32, B ≥ 1, called under inference_mode. Every chunk is copied into a fresh buffer of its
        bucket's shape, so the compiled code always sees the same kind of tensor (a view of the caller's tensor
        or an inference tensor made here would fail dynamo's guards and recompile)."""
        t = self.torch
        qs, ss = [], []
        for start, rows, bucket in _chunks(x.shape[0], self.sizes):
            chunk = t.empty((bucket, *x.shape[1:]), dtype=t.float32, device=self.device)
            chunk[:rows].copy_(x[start:start + rows], non_blocking=True)
            if rows < bucket:
                chunk[rows:].zero_()
            first = bucket not in self.first_call_s
            t0 = time.perf_counter()
            q, s = self.fn(chunk)
            if first:
                self._sync()
                self.first_call_s[bucket] = round(time.perf_counter() - t0, 3)
            qs.append(q[:rows].float())
            ss.append(s[:rows].float())
        return (qs[0], ss[0]) if len(qs) == 1 else (t.cat(qs), t.cat(ss))


class _GraphedForward:
    """One CUDA graph per captured batch size around `fn(x) -> (q, s)` with static buffers."""

    def __init__(self, torch, fn, sizes, image_shape, device):
        self.torch = torch
        self.fn = fn
        self.sizes = _bucket_sizes(sizes, "cuda graphs")
        self.image_shape = tuple(image_shape)
        self.device = device
        self.graphs: dict[int, tuple] = {}
        self.capture_s: dict[int, float] = {}  # warm-up (with torch.compile: the compile) + capture

    def _capture(self, bs: int):
        t = self.torch
        t0 = time.perf_counter()
        static_x = t.zeros((bs, *self.image_shape), device=self.device, dtype=t.float32)
        side = t.cuda.Stream(device=self.device)
        side.wait_stream(t.cuda.current_stream(self.device))
        with t.cuda.stream(side):  # warm-up off the capture: cuBLAS/cuDNN pick and allocate here
            for _ in range(2):
                self.fn(static_x)
        t.cuda.current_stream(self.device).wait_stream(side)
        graph = t.cuda.CUDAGraph()
        with t.cuda.graph(graph):
            static_q, static_s = self.fn(static_x)
        self.graphs[bs] = (graph, static_x, static_q, static_s)
        t.cuda.synchronize(self.device)
        self.capture_s[bs] = round(time.perf_counter() - t0, 3)
        return self.graphs[bs]

    def bucket(self, n: int) -> int:
        for b in self.sizes:
            if b >= n:
                return b
        return self.sizes[-1]

    def __call__(self, x):
        """x: a [B,…] float32 tensor (any device), B ≥ 1; returns fp32 (q, s) on the GPU."""
        t = self.torch
        qs, ss = [], []
        for start, n, bs in _chunks(x.shape[0], self.sizes):
            graph, static_x, static_q, static_s = self.graphs.get(bs) or self._capture(bs)
            static_x[:n].copy_(x[start:start + n], non_blocking=True)
            if n < bs:
                static_x[n:].zero_()
            graph.replay()
            # Clone: the static outputs are overwritten by the next replay.
            qs.append(static_q[:n].clone())
            ss.append(static_s[:n].clone())
        return (qs[0], ss[0]) if len(qs) == 1 else (t.cat(qs), t.cat(ss))


def _raise_recompile_limit(torch, buckets: int) -> None:
    """Room for one compile per bucket (dynamo's default limit is 8 per code object); never lowered."""
    cfg = torch._dynamo.config
    need = buckets + 2
    for name in ("recompile_limit", "cache_size_limit"):  # the name before torch 2.6 / after
        if hasattr(cfg, name) and getattr(cfg, name) < need:
            setattr(cfg, name, need)


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, bundle: Bundle | None = None, device: str = "cpu", model=None, precision: str = "fp32",
                 cuda_graphs: bool = False, graph_batch_sizes=DEFAULT_GRAPH_BATCHES, compile: bool = False,
                 compile_batch_sizes=DEFAULT_GRAPH_BATCHES, compile_mode: str | None = None):
        if not torch_available():
            raise BackendError("the torch backend needs torch and open_clip_torch (pip install 'fgresq-sdk[torch]')")
        import torch

        from ..model import load_checkpoint

        _torch_dtype(torch, precision)  # validate before the slow load
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("torch backend: CUDA requested but torch sees no GPU")
        if cuda_graphs and not device.startswith("cuda"):
            raise BackendError("CUDA graphs need --device cuda")
        if compile_mode is not None and not compile:
            raise BackendError("compile_mode is only used with compile=True")
        if compile:
            if compile_mode not in (None, *COMPILE_MODES):
                raise BackendError(f"unknown torch.compile mode '{compile_mode}' (choose from: {', '.join(COMPILE_MODES)})")
            if cuda_graphs and compile_mode in ("reduce-overhead", "max-autotune"):
                raise BackendError(f"torch.compile mode '{compile_mode}' makes its own CUDA graphs; use it without "
                                   "--cuda-graphs, or --cuda-graphs with the default mode")
            if not hasattr(torch, "compile"):  # pragma: no cover - torch < 2.0
                raise BackendError(f"torch {torch.__version__} has no torch.compile")
        if model is None:
            if bundle is None or not bundle.has("checkpoint"):
                raise BackendError(f"{bundle.root if bundle else '?'}: bundle has no torch checkpoint "
                                   "(export it with a checkpoint to use --backend torch)")
            model = load_checkpoint(bundle.read("checkpoint"), name=str(bundle.path("checkpoint")))
        self.torch = torch
        self.device = device
        self.precision = precision
        self.model = reduced_precision_model(model.eval(), precision).to(device)
        self.feature_dim = 3 * int(self.model.feature_dim)
        self.graphed = None
        self.compiled = None
        self.compile_mode = compile_mode
        # CPU forwards in inference mode only read the weights; on CUDA, graphs replay into shared static
        # buffers and fp32 runs switch cuDNN's process-wide TF32 flag around each call; torch.compile's
        # first call per bucket compiles (dynamo serialises compiles, but guards and caches are shared).
        self.thread_safe = not device.startswith("cuda") and not compile
        self._lock = threading.Lock()
        fn = self.model
        if compile:
            sizes = graph_batch_sizes if cuda_graphs else compile_batch_sizes
            _raise_recompile_limit(torch, len(_bucket_sizes(sizes, "compiled batch buckets")))
            kw = {} if compile_mode in (None, "default") else {"mode": compile_mode}
            fn = torch.compile(self.model, dynamic=False, **kw)
            if not cuda_graphs:
                self.compiled = _PaddedForward(torch, fn, sizes, device)
        if cuda_graphs:
            size = int(self.model.cfg["preprocess"]["size"])
            self.graphed = _GraphedForward(torch, fn, graph_batch_sizes, (3, size, size), device)
        self.compile = compile

    def _empty(self):
        t = self.torch
        return (t.zeros((0, self.feature_dim), dtype=t.float32, device=self.device),
                t.zeros((0,), dtype=t.float32, device=self.device))

    def encode_tensor(self, x):
        """The model on a float32 torch tensor (any device) → fp32 (q, s) torch tensors on this device.

        No host copies of the outputs: the benchmark times the model through this.
        """
        if x.shape[0] == 0:
            return self._empty()
        exact = self.precision == "fp32" and self.device.startswith("cuda")
        serial = self._lock if not self.thread_safe else contextlib.nullcontext()
        with serial, self.torch.inference_mode(), \
                (ieee_fp32_convolutions(self.torch) if exact else contextlib.nullcontext()):
            if self.graphed is not None:
                return self.graphed(x)
            if self.compiled is not None:
                return self.compiled(x)
            q, s = self.model(x.to(self.device, non_blocking=True))
            return q.float(), s.float()

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self.torch.from_numpy(np.ascontiguousarray(images, np.float32))
        q, s = self.encode_tensor(x)
        return q.cpu().numpy(), s.cpu().numpy()

    def details(self) -> dict:
        out = {"precision": self.precision}
        if self.graphed is not None:
            out["cuda_graphs"] = list(self.graphed.sizes)
        if self.compile:
            buckets = self.graphed.sizes if self.graphed is not None else self.compiled.sizes
            first = self.graphed.capture_s if self.graphed is not None else self.compiled.first_call_s
            out["compile"] = {"backend": "inductor", "mode": self.compile_mode or "default", "dynamic": False,
                              "buckets": list(buckets), "first_call_s": {str(k): v for k, v in sorted(first.items())}}
        return out
