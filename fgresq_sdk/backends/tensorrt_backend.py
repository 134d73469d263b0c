"""TensorRT backend: a serialized engine built for this GPU (export/tensorrt_build.py), run on its own CUDA stream.

Supported: TensorRT 10.x and 11.x (the `trt` extra pins `tensorrt>=10,<12`). Only API that both have is
used: strongly typed networks, name-based I/O (`set_input_shape`, `set_tensor_address`,
`execute_async_v3`), memory-pool limits; none of the weak-typing API that 11.0 removed
(`BuilderFlag.FP16`, precision constraints, per-layer `precision`/`set_output_type`).

Device memory comes from torch: input and output buffers are torch CUDA tensors whose addresses are
handed to the execution context, so no second CUDA binding (cuda-python, pycuda) is needed and the
outputs can be handed to other torch code without a copy. The engine is enqueued on a stream of its
own, never on torch's default stream (the legacy default stream, on which TensorRT warns and adds a
synchronisation to every call): that stream first waits for the caller's current stream (where the input
was copied and padded), and the caller's stream then waits for it, so anything the caller does next with
the outputs — or with the freed buffers, which torch's caching allocator hands out again on the caller's
stream — is ordered after the engine. Both waits are GPU-side events; the host never blocks.

Engines are not portable: one runs only on the GPU model and the TensorRT version it was built with. The
bundle's engine record (``engine.json``) says which; a mismatch is refused with a message that says to
rebuild rather than failing inside TensorRT or, worse, running a mis-tuned engine.

Precision: the bundle's own `precision` is that of its `encoder.onnx` (fp32: what onnxruntime runs when
the engine cannot); the engine's precision is the record's `precision`. `--precision` asks for the
engine's.

Threads: one execution context holds per-call state (input shape, tensor addresses), so calls are
serialised by a lock and `thread_safe` is False (Scorer serialises such backends too). One context per
thread would let calls overlap on the GPU, at the cost of each context's activation memory.
"""
from __future__ import annotations

import json
import re
import threading

import numpy as np

from ..bundle import Bundle
from ..errors import BackendError
from ..formats import export_command, run_precisions
from .base import Backend
from .device import gpu_index
from .probe import importable

TRT_MISSING = "TensorRT is not installed; pip install 'fgresq-sdk[trt]'"
SUPPORTED_MAJORS = (10, 11)
ENGINE_RECORD_FORMAT = "fgresq-trt-engine-record"
ENGINE_PRECISIONS = run_precisions("tensorrt")
BUILD_ENGINE = export_command("tensorrt")
INPUT_NAME = "image"
OUTPUT_NAMES = ("features", "score")

_LOGGER = None
_LOGGER_LOCK = threading.Lock()


def tensorrt_major(version: str) -> int:
    """'10.9.0.34' → 10 (0 when the string does not start with a number)."""
    m = re.match(r"\s*(\d+)", str(version))
    return int(m.group(1)) if m else 0


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError(f"{TRT_MISSING} ({exc})") from None
    major = tensorrt_major(getattr(trt, "__version__", ""))
    if major not in SUPPORTED_MAJORS:
        raise BackendError(f"TensorRT {getattr(trt, '__version__', '?')} is not supported (this SDK supports "
                           f"TensorRT {SUPPORTED_MAJORS[0]}.x–{SUPPORTED_MAJORS[-1]}.x: pip install "
                           "'fgresq-sdk[trt]')")
    return trt


def trt_logger(trt):
    """The process's one TensorRT logger. TensorRT keeps the first ILogger it is handed (builder, runtime and
    parser alike) and ignores later ones, so every TensorRT object made here shares this one."""
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is None:
            _LOGGER = trt.Logger(trt.Logger.WARNING)
        return _LOGGER


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


def tensorrt_cuda(distributions, trt_version: str) -> dict | None:
    """The CUDA major version TensorRT itself was built against, from its wheels' names.

    TensorRT's Python package has no attribute for it; its pip wheels are named per CUDA major
    (`tensorrt-cu12`, `tensorrt-cu13-libs`, `tensorrt_cu13_bindings`…). `distributions`: (name, version)
    pairs, e.g. from importlib.metadata. None when TensorRT was not installed from such a wheel (a tar or
    deb install), so the record says "unknown" rather than guessing (torch's CUDA is not TensorRT's)."""
    found = []
    for name, version in distributions:
        norm = re.sub(r"[-_.]+", "-", str(name).lower())
        m = re.fullmatch(r"tensorrt-cu(\d+)(-libs|-bindings)?", norm)
        if m and str(version) == str(trt_version):
            found.append((m.group(1), f"{norm} {version}"))
    if not found:
        return None
    majors = sorted({f[0] for f in found})
    if len(majors) > 1:
        return {"cuda_major": None, "from": ", ".join(sorted(f[1] for f in found)),
                "note": "wheels for several CUDA majors are installed"}
    return {"cuda_major": majors[0], "from": ", ".join(sorted(f[1] for f in found))}


def installed_tensorrt_cuda(trt_version: str) -> dict | None:
    import importlib.metadata as md

    return tensorrt_cuda(((d.metadata["Name"] or "", d.version) for d in md.distributions()), trt_version)


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


def read_engine_record(bundle: Bundle) -> dict:
    """The bundle's engine record (verified like any bundle file); BackendError when it is not one."""
    path = bundle.path("engine_record")
    try:
        record = json.loads(bundle.read("engine_record").decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BackendError(f"{path}: unreadable engine record ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != ENGINE_RECORD_FORMAT:
        raise BackendError(f"{path}: not a TensorRT engine record")
    if record.get("precision") not in ENGINE_PRECISIONS:
        raise BackendError(f"{path}: engine precision {record.get('precision')!r} is not one of "
                           f"{', '.join(ENGINE_PRECISIONS)}")
    return record


def engine_precision_problem(record: dict, precision: str | None, bundle_precision: str) -> str | None:
    """None when `precision` (None = whatever the engine is) can be served by the engine, else why not."""
    if precision is None or precision == record.get("precision"):
        return None
    return (f"the bundle's TensorRT engine is {record.get('precision')}, not {precision} (build a {precision} "
            f"engine with `{BUILD_ENGINE}`, or run the bundle's {bundle_precision} "
            "encoder.onnx with --backend onnxruntime)")


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

    def __init__(self, bundle: Bundle, device: str = "cuda", precision: str | None = None):
        problems = []
        if not importable("tensorrt"):
            problems.append(TRT_MISSING)
        record = None
        if not bundle.has("engine") or not bundle.has("engine_record"):
            problems.append(f"{bundle.root}: bundle has no TensorRT engine (build one with `{BUILD_ENGINE}`)")
        else:
            record = read_engine_record(bundle)
            why = engine_precision_problem(record, precision, bundle.precision)
            if why:
                problems.append(why)
        if not device.startswith("cuda") and device != "auto":
            problems.append(f"TensorRT runs on CUDA GPUs only (got --device {device})")
        if problems:
            raise BackendError("; ".join(problems))
        trt = import_tensorrt()
        self.index = gpu_index(device, "TensorRT")
        self.device = f"cuda:{self.index}"
        gpu = gpu_identity(self.index)
        import torch

        mismatch = record_mismatches(record, trt.__version__, gpu)
        if mismatch:
            raise BackendError(f"{bundle.path('engine')}: refusing a TensorRT engine built elsewhere: "
                               + "; ".join(mismatch) + ". Engines are not portable across GPU models or TensorRT "
                               f"versions: rebuild it on this machine ({BUILD_ENGINE})")
        self.torch = torch
        self.trt = trt
        self.record = record
        self.gpu = gpu
        self.precision = record["precision"]
        self._lock = threading.Lock()
        with torch.cuda.device(self.index):
            self.runtime = trt.Runtime(trt_logger(trt))
            self.engine = self.runtime.deserialize_cuda_engine(bundle.read("engine"))
            if self.engine is None:
                raise BackendError(f"{bundle.path('engine')}: TensorRT could not deserialize the engine")
            self.context = self.engine.create_execution_context()
            # Never the legacy default stream: see the module docstring.
            self.stream = torch.cuda.Stream(device=self.index)
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

    def _run_chunk(self, x):
        """One enqueue for min ≤ len(x) ≤ max rows; x and the outputs live on the caller's current stream."""
        t = self.torch
        caller = t.cuda.current_stream(self.index)
        self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
        self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
        outs = {}
        for name in OUTPUT_NAMES:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = t.empty(shape, dtype=self.io[name][1], device=self.device)
            self.context.set_tensor_address(name, outs[name].data_ptr())
        self.stream.wait_stream(caller)  # the input's copy/padding was enqueued on the caller's stream
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BackendError("TensorRT failed to enqueue the engine")
        caller.wait_stream(self.stream)  # reads of the outputs and reuse of the buffers come after the engine
        return outs["features"], outs["score"]

    def encode_tensor(self, x):
        """A float32 torch tensor (any device) → fp32 (q, s) torch tensors on the GPU, no host copies.

        Batches follow the engine's profile: longer ones are cut into chunks of at most its max batch,
        shorter ones (or a short last chunk) are padded with zero images up to its min batch. Rows are
        independent in this model, so padding never changes the real rows' outputs.
        """
        t = self.torch
        with self._lock, t.cuda.device(self.index), t.inference_mode():
            if x.shape[0] == 0:
                return (t.zeros((0, self.feature_dim), dtype=t.float32, device=self.device),
                        t.zeros((0,), dtype=t.float32, device=self.device))
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
            return (qs[0], ss[0]) if len(qs) == 1 else (t.cat(qs), t.cat(ss))

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q, s = self.encode_tensor(self.torch.from_numpy(np.ascontiguousarray(images, np.float32)))
        return q.cpu().numpy(), s.cpu().numpy()

    def details(self) -> dict:
        return {"precision": self.precision, "tensorrt": self.trt.__version__, "gpu": self.gpu,
                "profile": {k: list(v) for k, v in self.profile.items()},
                "network": self.record.get("network"), "tf32": self.record.get("tf32")}
