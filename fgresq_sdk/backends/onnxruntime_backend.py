"""ONNX Runtime backend: the default, torch-free runtime."""
from __future__ import annotations

import os
import sys
import threading

import numpy as np

from ..bundle import Bundle
from ..errors import BackendError, BundleError
from .base import Backend
from ..formats import export_command
from .device import parse_device


def default_threads() -> int:
    """Intra-op threads when none are asked for: the CPUs this process may run on (container limits too)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def session_options(threads: int | None = None):
    """CPU session settings: full graph optimisation, intra-op threads = usable cores, one inter-op thread.

    Sequential execution with one inter-op thread suits these straight-line graphs; the memory arena
    stays on (allocations repeat every batch).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads or default_threads())
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def providers_for(device: str) -> list:
    """ORT providers for a device: plain names for the CPU, (name, options) for CUDA on GPU N."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    kind, index = parse_device(device)
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise BackendError("onnxruntime has no CUDA execution provider here "
                               "(install the [gpu] extra: onnxruntime-gpu, and a CUDA driver)")
        # use_tf32=0: fp32 bundles mean fp32 (the CUDA provider would otherwise round fp32 matmul and
        # convolution inputs to TF32's 10-bit mantissa on Ampere and later); fp16 bundles are the fast path.
        return [("CUDAExecutionProvider", {"device_id": index, "use_tf32": 0}), "CPUExecutionProvider"]
    raise BackendError(f"unknown device '{device}' for onnxruntime (use cpu or cuda)")


_warned_lock = threading.Lock()
_warned: set[str] = set()


def int8_scheme_risk(manifest: dict) -> str | None:
    """Why this bundle's int8 scheme is unsafe on the running CPU, or None.

    ONNX Runtime's u8×s8 kernels without VNNI (AVX2-only x86: e.g. AMD Zen 3, Intel before Ice Lake) add
    pairs of products in 16 bits, which saturates with full-range int8 weights: the old scheme moved
    default-model scores by up to 0.24 there. 7-bit weights (reduce_range) or uint8 weights do not
    saturate; CPUs with VNNI/AMX and non-x86 CPUs use other kernels.
    """
    from ..cpu import cpu_isa, cpu_model, has_vnni, is_x86

    q = manifest.get("quantization")
    if manifest.get("precision") != "int8" or not isinstance(q, dict) or not is_x86() or has_vnni():
        return None
    scheme = q.get("scheme")
    if isinstance(scheme, dict):
        if scheme.get("weights") != "int8" or scheme.get("weight_bits", 8) < 8:
            return None
    else:  # bundles written before `scheme`: only the weights text says how they were quantized
        text = str(q.get("weights", "")).lower()
        if "reduce_range" in text or "7-bit" in text or "uint8" in text:
            return None
    isa = ", ".join(cpu_isa()) or "no AVX2"
    return (f"its int8 weights use the full 8-bit range (ONNX Runtime U8S8), which saturates on x86 CPUs without "
            f"VNNI such as this one ({cpu_model()}: {isa}); scores can move by ~0.2 and decisions flip. "
            f"Re-derive it with `{export_command('onnxruntime', 'int8')}` (7-bit weights) or use the fp32 bundle")


def warn_int8_scheme(bundle: Bundle) -> None:
    """One line on stderr, once per process and bundle, when int8_scheme_risk says so."""
    why = int8_scheme_risk(bundle.manifest)
    if why is None:
        return
    key = bundle.entry("encoder").get("sha256", str(bundle.root))
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    from ..errors import display_path

    print(f"warning: {display_path(bundle.root)}: {why}", file=sys.stderr, flush=True)


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime on the CPU (default) or on a GPU through the CUDA execution provider.

    fp16 bundles (export/half.py) keep fp32 inputs and outputs, so the same numpy tensors feed every
    precision; on CUDA the fp16 encoder is where the speed comes from, on the CPU it is only smaller.
    """

    name = "onnxruntime"
    # InferenceSession.run may be called from many threads at once (ORT documents Run as thread-safe).
    thread_safe = True

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None):
        try:
            import onnxruntime  # noqa: F401 - here only to say "not installed" before anything else
        except ImportError as exc:  # pragma: no cover - a runtime dependency
            raise BackendError(f"onnxruntime is not installed ({exc})") from None
        self.device = device
        self.precision = bundle.precision
        providers = providers_for(device)
        self._bundle, self._providers = bundle, providers
        warn_int8_scheme(bundle)
        try:
            # Only the encoder: a bundle written before heads.npz became the one head may still list a
            # compare_head.onnx; it is validated with the manifest but not loaded (fgresq_sdk.heads).
            self.encoder, self.graph_cache = _encoder_session(bundle, device, threads, providers)
        except BundleError:
            raise
        except Exception as exc:  # noqa: BLE001 - ORT raises several types for a bad graph
            raise BackendError(f"{bundle.root}: onnxruntime cannot load the bundle's encoder ({exc})") from None
        self.providers = self.encoder.get_providers()
        if device.startswith("cuda") and "CUDAExecutionProvider" not in self.providers:
            # ORT falls back to the CPU when the CUDA provider fails to load (driver, CUDA or cuDNN
            # libraries missing): asked for a GPU, that is an error, not a silent slowdown.
            raise BackendError("onnxruntime could not start its CUDA execution provider (the session fell back "
                               f"to {', '.join(self.providers)}; check the CUDA and cuDNN libraries onnxruntime-gpu "
                               "needs)")
        self.input_name = self.encoder.get_inputs()[0].name
        self.input_type = self.encoder.get_inputs()[0].type  # tensor(float) or tensor(float16)
        # On the CPU, many batches run faster one core each than one after another on every core: the image
        # decoding and the naturalness term of the next batches then share the cores with the encoder instead of
        # fighting its spinning thread pool (README, "Batches one core each"). The one-thread session is made at
        # the first such call.
        cores = int(threads or default_threads())
        self.one_core_workers = cores if parse_device(device)[0] == "cpu" and cores > 1 else 0
        self._one_core = None
        self._one_core_lock = threading.Lock()

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._run(self.encoder, images)

    def encode_one_core(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.one_core_workers:
            raise BackendError("this session does not run batches one core each (not on the CPU, or one thread)")
        with self._one_core_lock:
            if self._one_core is None:
                self._one_core, _ = _encoder_session(self._bundle, self.device, 1, self._providers)
        return self._run(self._one_core, images)

    def _run(self, session, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = images.astype(np.float16 if "float16" in self.input_type else np.float32, copy=False)
        q, s = session.run(None, {self.input_name: x})
        return q.astype(np.float32, copy=False), s.astype(np.float32, copy=False)

    def details(self) -> dict:
        return {"providers": self.providers, "precision": self.precision, "graph_cache": self.graph_cache}


def _encoder_session(bundle: Bundle, device: str, threads: int | None, providers: list):
    """The encoder's session and how the optimized-graph cache was used: "hit" (loaded from the cache),
    "written" (optimized now and stored), or "off" (not a CPU session, verify=False, FGRESQ_ORT_CACHE=0,
    no /proc/self/fd, or the cache folder is unusable)."""
    import onnxruntime as ort

    from .. import ort_cache

    # onnxruntime 1.32's CPU optimizer can crash the process (segfault) on fp16 graphs when ConstantSharing is
    # followed by NchwcTransformer; the NCHWc layout pass is of no use to these transformer graphs anyway.
    extra = {"disabled_optimizers": ["NchwcTransformer"]} if device == "cpu" and bundle.precision == "fp16" else {}

    def new_session(src, so):
        return ort.InferenceSession(src, so, providers=providers, **extra)

    # ONNX Runtime reads the very descriptor that was verified (no re-open by name, no extra copy). The
    # bundle's encoder is verified even when the cached graph is used: a corrupted bundle is refused.
    with bundle.opened("encoder") as encoder_path:
        use_cache = (device == "cpu" and bundle.verify and ort_cache.enabled()
                     and encoder_path.startswith("/proc/self/fd/"))
        if not use_cache:
            return new_session(encoder_path, session_options(threads)), "off"
        cache = ort_cache.GraphCache()
        level = "ORT_ENABLE_ALL"
        key = ort_cache.cache_key(bundle.entry("encoder")["sha256"], ort.__version__, level)

        def from_cache(graph: bytes, folder: str):
            so = session_options(threads)
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # optimized already
            so.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
            return ort.InferenceSession(graph, so, providers=providers)

        session = cache.load(key, from_cache)
        if session is not None:
            return session, "hit"
        if not cache.may_write(key):
            return new_session(encoder_path, session_options(threads)), "off"
        with cache.staging() as staged:
            if staged is None:
                return new_session(encoder_path, session_options(threads)), "off"
            so = session_options(threads)
            so.optimized_model_filepath = str(staged / ort_cache.GRAPH_FILE)
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                        ort_cache.WEIGHTS_FILE)
            try:
                session = new_session(encoder_path, so)
            except Exception:  # noqa: BLE001 - e.g. the cache's disk is full: run without the cache
                return new_session(encoder_path, session_options(threads)), "off"
            record = {"encoder_sha256": bundle.entry("encoder")["sha256"], "bundle": str(bundle.root),
                      "onnxruntime": ort.__version__, "optimization": level}
            return session, ("written" if cache.commit(key, staged, record) else "off")
