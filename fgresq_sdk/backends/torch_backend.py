"""torch backend: the reference model itself (needs the [torch] extra and a bundle with a checkpoint).

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
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np

from ..bundle import Bundle
from ..errors import BackendError
from .base import Backend

PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_GRAPH_BATCHES = (1, 2, 4, 8, 16, 32, 64)


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


class _GraphedForward:
    """One CUDA graph per captured batch size around `fn(x) -> (q, s)` with static buffers."""

    def __init__(self, torch, fn, sizes, image_shape, device):
        self.torch = torch
        self.fn = fn
        self.sizes = tuple(sorted({int(b) for b in sizes if int(b) > 0}))
        if not self.sizes:
            raise BackendError("cuda graphs need at least one positive batch size")
        self.image_shape = tuple(image_shape)
        self.device = device
        self.graphs: dict[int, tuple] = {}

    def _capture(self, bs: int):
        t = self.torch
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
        return self.graphs[bs]

    def bucket(self, n: int) -> int:
        for b in self.sizes:
            if b >= n:
                return b
        return self.sizes[-1]

    def __call__(self, x):
        """x: a [B,…] float32 tensor (any device); returns fp32 (q, s) on the GPU."""
        t = self.torch
        qs, ss = [], []
        start = 0
        while start < x.shape[0]:
            n = min(x.shape[0] - start, self.sizes[-1])
            bs = self.bucket(n)
            graph, static_x, static_q, static_s = self.graphs.get(bs) or self._capture(bs)
            static_x[:n].copy_(x[start:start + n], non_blocking=True)
            if n < bs:
                static_x[n:].zero_()
            graph.replay()
            # Clone: the static outputs are overwritten by the next replay.
            qs.append(static_q[:n].clone())
            ss.append(static_s[:n].clone())
            start += n
        return (qs[0], ss[0]) if len(qs) == 1 else (t.cat(qs), t.cat(ss))


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, bundle: Bundle | None = None, device: str = "cpu", model=None, precision: str = "fp32",
                 cuda_graphs: bool = False, graph_batch_sizes=DEFAULT_GRAPH_BATCHES):
        if not torch_available():
            raise BackendError("the torch backend needs torch and open_clip_torch (pip install 'fgresq-sdk[torch]')")
        import torch

        from ..model import load_checkpoint

        _torch_dtype(torch, precision)  # validate before the slow load
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("torch backend: CUDA requested but torch sees no GPU")
        if cuda_graphs and not device.startswith("cuda"):
            raise BackendError("CUDA graphs need --device cuda")
        if model is None:
            if bundle is None or not bundle.has("checkpoint"):
                raise BackendError(f"{bundle.root if bundle else '?'}: bundle has no torch checkpoint "
                                   "(export it with a checkpoint to use --backend torch)")
            model = load_checkpoint(bundle.read("checkpoint"), name=str(bundle.path("checkpoint")))
        self.torch = torch
        self.device = device
        self.precision = precision
        self.model = reduced_precision_model(model.eval(), precision).to(device)
        self.graphed = None
        # CPU forwards in inference mode only read the weights; on CUDA, graphs replay into shared static
        # buffers and fp32 runs switch cuDNN's process-wide TF32 flag around each call.
        self.thread_safe = not device.startswith("cuda")
        if cuda_graphs:
            size = int(self.model.cfg["preprocess"]["size"])
            self.graphed = _GraphedForward(torch, self.model, graph_batch_sizes, (3, size, size), device)

    def encode_tensor(self, x):
        """The model on a float32 torch tensor (any device) → fp32 (q, s) torch tensors on this device.

        No host copies of the outputs: the benchmark times the model through this.
        """
        exact = self.precision == "fp32" and self.device.startswith("cuda")
        with self.torch.inference_mode(), (ieee_fp32_convolutions(self.torch) if exact else contextlib.nullcontext()):
            if self.graphed is not None:
                return self.graphed(x)
            q, s = self.model(x.to(self.device, non_blocking=True))
            return q.float(), s.float()

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self.torch.from_numpy(np.ascontiguousarray(images, np.float32))
        q, s = self.encode_tensor(x)
        return q.cpu().numpy(), s.cpu().numpy()

    def compare_logits(self, q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
        t = self.torch
        with t.inference_mode():
            out = self.model.compare_logits(t.from_numpy(np.asarray(q0, np.float32)).to(self.device),
                                            t.from_numpy(np.asarray(q1, np.float32)).to(self.device))
        return out.float().cpu().numpy()

    def details(self) -> dict:
        out = {"precision": self.precision}
        if self.graphed is not None:
            out["cuda_graphs"] = list(self.graphed.sizes)
        return out
