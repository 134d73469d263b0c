"""TensorRT backend: a serialized engine built for this GPU (export/tensorrt_build.py), run on CUDA streams.

Device memory comes from torch: input and output buffers are torch CUDA tensors whose addresses are
handed to the execution context (``set_tensor_address``), and the engine is enqueued on torch's current
stream (``execute_async_v3(torch.cuda.current_stream().cuda_stream)``). torch is already part of the GPU
stack (export, the torch backend, the benchmark), so this needs no extra CUDA binding (cuda-python or
pycuda) for allocations, copies and streams; torch's caching allocator reuses buffers across calls, its
stream ordering makes freeing a buffer right after the enqueue safe, and the outputs can be handed to
other torch code without a copy. The engine's own scratch memory stays TensorRT's (static, per context).

Engines are not portable: one runs only on the GPU model and the TensorRT version it was built with. The
bundle's engine record (``engine.json``) says which; a mismatch is refused with a message that says to
rebuild rather than failing inside TensorRT or, worse, running a mis-tuned engine.

The comparison head runs in numpy from the bundle's ``heads.npz`` (as the ranking does for every backend):
it is one 6D×3 matrix product, not worth a GPU round trip.
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np

from ..bundle import Bundle
from ..errors import BackendError
from ..heads import CompareHeadNP
from .base import Backend

TRT_MISSING = "TensorRT is not installed; pip install 'fgresq-sdk[trt]'"
ENGINE_RECORD_FORMAT = "fgresq-trt-engine-record"
INPUT_NAME = "image"
OUTPUT_NAMES = ("features", "score")


def tensorrt_importable() -> bool:
    """Whether `import tensorrt` can be tried, without importing it (cheap, no CUDA initialisation)."""
    try:
        return importlib.util.find_spec("tensorrt") is not None
    except (ImportError, ValueError):
        return False


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError(f"{TRT_MISSING} ({exc})") from None
    return trt


def cuda_device_index(device: str) -> int:
    if device in ("cuda", "auto"):
        return 0
    head, _, idx = device.partition(":")
    if head != "cuda" or not idx.isdigit():
        raise BackendError(f"TensorRT runs on CUDA GPUs only (got --device {device}; use cuda or cuda:N)")
    return int(idx)


def gpu_identity(index: int = 0) -> dict:
    """Name and compute capability of CUDA device `index`, as torch (i.e. the CUDA runtime) reports them."""
    try:
        import torch
    except ImportError as exc:
        raise BackendError(f"TensorRT buffers and streams use torch's CUDA memory: pip install torch ({exc})") from None
    if not torch.cuda.is_available():
        raise BackendError("no CUDA GPU visible to torch (TensorRT needs one)")
    if index >= torch.cuda.device_count():
        raise BackendError(f"cuda:{index} does not exist here ({torch.cuda.device_count()} CUDA device(s))")
    major, minor = torch.cuda.get_device_capability(index)
    return {"name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


def record_mismatches(record: dict, trt_version: str, gpu: dict) -> list[str]:
    """What differs between an engine record and this machine (empty: the engine may run here)."""
    problems = []
    if record.get("format") != ENGINE_RECORD_FORMAT:
        problems.append(f"not an engine record (format={record.get('format')!r})")
        return problems
    if str(record.get("tensorrt")) != trt_version:
        problems.append(f"built with TensorRT {record.get('tensorrt')}, this is TensorRT {trt_version}")
    built_gpu = record.get("gpu") or {}
    if built_gpu.get("name") != gpu["name"]:
        problems.append(f"built on GPU '{built_gpu.get('name')}', this is '{gpu['name']}'")
    if str(built_gpu.get("compute_capability")) != gpu["compute_capability"]:
        problems.append(f"built for compute capability {built_gpu.get('compute_capability')}, "
                        f"this GPU is {gpu['compute_capability']}")
    return problems


def _torch_dtypes(trt, torch) -> dict:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int8: torch.int8, trt.bool: torch.bool}
    for trt_name, torch_name in (("bfloat16", "bfloat16"), ("int64", "int64"), ("uint8", "uint8")):
        if hasattr(trt, trt_name):
            table[getattr(trt, trt_name)] = getattr(torch, torch_name)
    return table


class TensorRTBackend(Backend):
    name = "tensorrt"
    thread_safe = False  # one execution context: its shapes and tensor addresses are per-call state

    def __init__(self, bundle: Bundle, device: str = "cuda"):
        problems = []
        if not tensorrt_importable():
            problems.append(TRT_MISSING)
        if not bundle.has("engine") or not bundle.has("engine_record"):
            problems.append(f"{bundle.root}: bundle has no TensorRT engine (build one with "
                            "`fgresq-sdk export --format tensorrt`)")
        if not device.startswith("cuda") and device != "auto":
            problems.append(f"TensorRT runs on CUDA GPUs only (got --device {device})")
        if problems:
            raise BackendError("; ".join(problems))
        trt = import_tensorrt()
        self.index = cuda_device_index(device)
        self.device = f"cuda:{self.index}"
        gpu = gpu_identity(self.index)
        import torch

        record_path = bundle.path("engine_record")
        try:
            record = json.loads(bundle.read("engine_record").decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise BackendError(f"{record_path}: unreadable engine record ({exc})") from None
        mismatch = record_mismatches(record, trt.__version__, gpu)
        if mismatch:
            raise BackendError(f"{bundle.path('engine')}: refusing a TensorRT engine built elsewhere: "
                               + "; ".join(mismatch) + ". Engines are not portable across GPU models or TensorRT "
                               "versions: rebuild it on this machine (fgresq-sdk export --format tensorrt)")
        self.torch = torch
        self.trt = trt
        self.record = record
        self.gpu = gpu
        self.precision = record.get("precision", bundle.precision)
        self.logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.index):
            self.runtime = trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine(bundle.read("engine"))
            if self.engine is None:
                raise BackendError(f"{bundle.path('engine')}: TensorRT could not deserialize the engine")
            self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"{bundle.path('engine')}: TensorRT could not create an execution context "
                               "(out of GPU memory?)")
        dtypes = _torch_dtypes(trt, torch)
        self.io = {}
        for i in range(self.engine.num_io_tensors):
            tname = self.engine.get_tensor_name(i)
            self.io[tname] = (self.engine.get_tensor_mode(tname), dtypes[self.engine.get_tensor_dtype(tname)])
        missing = [n for n in (INPUT_NAME, *OUTPUT_NAMES) if n not in self.io]
        if missing:
            raise BackendError(f"{bundle.path('engine')}: engine lacks tensors {missing} (has {sorted(self.io)})")
        shapes = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.profile = {k: tuple(int(d) for d in s) for k, s in zip(("min", "opt", "max"), shapes)}
        self.min_batch = self.profile["min"][0]
        self.max_batch = self.profile["max"][0]
        self.image_shape = self.profile["opt"][1:]
        self.feature_dim = int(self.engine.get_tensor_shape("features")[-1])
        self.head = CompareHeadNP.from_npz(bundle.read("heads"))

    def _run_chunk(self, x):
        """One enqueue for min ≤ len(x) ≤ max rows on the current stream."""
        t = self.torch
        self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
        self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
        outs = {}
        for name in OUTPUT_NAMES:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = t.empty(shape, dtype=self.io[name][1], device=self.device)
            self.context.set_tensor_address(name, outs[name].data_ptr())
        if not self.context.execute_async_v3(t.cuda.current_stream(self.index).cuda_stream):
            raise BackendError("TensorRT failed to enqueue the engine")
        return outs["features"], outs["score"]

    def encode_tensor(self, x):
        """A float32 torch tensor (any device) → fp32 (q, s) torch tensors on the GPU, no host copies.

        Batches follow the engine's profile: longer ones are cut into chunks of at most its max batch,
        shorter ones (or a short last chunk) are padded with zero images up to its min batch.
        """
        t = self.torch
        with t.cuda.device(self.index), t.inference_mode():
            x = x.to(self.device, dtype=self.io[INPUT_NAME][1], non_blocking=True)
            if tuple(x.shape[1:]) != self.image_shape:
                raise BackendError(f"engine expects images of shape {self.image_shape}, got {tuple(x.shape[1:])}")
            qs, ss = [], []
            for start in range(0, x.shape[0], self.max_batch):
                chunk = x[start:start + self.max_batch]
                n = chunk.shape[0]
                if n < self.min_batch:
                    chunk = t.cat([chunk, chunk.new_zeros((self.min_batch - n, *self.image_shape))])
                q, s = self._run_chunk(chunk.contiguous())
                qs.append(q[:n].float())
                ss.append(s.reshape(-1)[:n].float())
            if not qs:
                return x.new_zeros((0, self.feature_dim), dtype=t.float32), x.new_zeros((0,), dtype=t.float32)
            return (qs[0], ss[0]) if len(qs) == 1 else (t.cat(qs), t.cat(ss))

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q, s = self.encode_tensor(self.torch.from_numpy(np.ascontiguousarray(images, np.float32)))
        return q.cpu().numpy(), s.cpu().numpy()

    def compare_logits(self, q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
        return self.head.pair_logits(q0, q1).astype(np.float32)

    def details(self) -> dict:
        return {"precision": self.precision, "tensorrt": self.trt.__version__, "gpu": self.gpu,
                "profile": {k: list(v) for k, v in self.profile.items()}}
