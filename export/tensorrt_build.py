"""TensorRT engines: build a serialized engine for this GPU from an fp32 bundle's encoder graph.

The result is a derived bundle: the source's fp32 encoder.onnx and heads.npz, plus
the engine (role ``engine``) and its record (role ``engine_record``, ``engine.json``), all listed in
model.json with their sha256. The bundle's `precision` stays that of its encoder.onnx (fp32): that is what
onnxruntime runs wherever the engine cannot (`auto` falls back to it), and what `--precision fp32` gets.
The engine's own precision is in the record (and in the manifest's `tensorrt.engine_precision`).

The record says what the engine is bound to — the TensorRT version, the GPU name and compute
capability — and how it was built: precision, network typing, TF32, the batch profile, workspace, timing
cache, the CUDA major TensorRT was built for (from its wheel), and the sha256 of the fp32 graph and of
the graph the engine was built from. The TensorRT backend refuses an engine whose record does not
match the machine: engines are not portable.

Build, one code path for TensorRT 10.x and 11.x:

* a **strongly typed** network (11.x has no other kind and deprecates the flag; 10.x gets
  ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): every tensor runs in the type the ONNX graph gives
  it. No ``BuilderFlag.FP16``, no precision constraints, no per-layer precision — the weak-typing API that
  10.12 deprecated and 11.0 removed.
* fp16 engines are built from the fp16 graph of export/half.py with ``fp32_head=True`` (float16 towers;
  LayerNormalization, softmax, sigmoid, the reductions and everything after the towers in fp32; fp32
  input and outputs), made here from the verified fp32 graph; fp32 engines from the fp32 graph itself.
* ``BuilderFlag.TF32`` is cleared (TensorRT sets it by default): fp32 tensors compute in IEEE fp32, as on
  the torch and ONNX Runtime paths, both in fp32 engines and in the fp32 islands of fp16 engines.
* one optimisation profile for input ``image`` over (MIN,3,S,S)/(OPT,…)/(MAX,…); the workspace as a
  memory-pool limit; a timing cache file, when given, loaded before the build and saved after it, so
  rebuilding (another profile, the other config on the same GPU) skips re-timing the layers it has seen.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from fgresq_sdk.backends.tensorrt_backend import (
    ENGINE_PRECISIONS, ENGINE_RECORD_FORMAT, INPUT_NAME, gpu_identity, import_tensorrt, installed_tensorrt_cuda,
    tensorrt_major, trt_logger,
)
from fgresq_sdk.backends.probe import cuda_driver_version
from fgresq_sdk.bundle import Bundle, load_bundle, sha256_file, write_manifest
from fgresq_sdk.errors import BackendError, BundleError

from .onnx_export import ENCODER_FILE, carried_meta, copy_carried_files
from .staging import check_out_dir, copy_verified, staged_bundle

ENGINE_RECORD_FILE = "engine.json"


def engine_file_name(precision: str) -> str:
    return f"encoder.{precision}.engine"


def parse_batch(spec: str | Sequence[int]) -> tuple[int, int, int]:
    """'1,8,32' or (1, 8, 32) → (min, opt, max), checked 1 ≤ min ≤ opt ≤ max."""
    if isinstance(spec, str):
        try:
            parts = tuple(int(p) for p in spec.split(","))
        except ValueError:
            raise BundleError(f"batch profile '{spec}' is not MIN,OPT,MAX integers") from None
    else:
        parts = tuple(int(p) for p in spec)
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
        raise BundleError(f"batch profile {spec!r} must be MIN,OPT,MAX with 1 ≤ MIN ≤ OPT ≤ MAX")
    return parts  # type: ignore[return-value]


def network_flags(trt) -> int:
    """create_network() flags for a strongly typed network: the flag on 10.x; 0 on 11.x, where strong
    typing is always on and the flag is deprecated (ignored)."""
    if tensorrt_major(trt.__version__) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _load_timing_cache(trt, config, path: Path | None, log) -> dict:
    info = {"path": str(path) if path else None, "loaded_bytes": 0, "reused": False}
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    cache = config.create_timing_cache(data) if data else None
    if cache is not None and config.set_timing_cache(cache, False):
        info.update(loaded_bytes=len(data), reused=True)
        return info
    if data:
        log(f"timing cache {path} does not fit this TensorRT/GPU; starting an empty one")
    config.set_timing_cache(config.create_timing_cache(b""), False)
    return info


def _save_timing_cache(config, path: Path) -> int:
    blob = memoryview(config.get_timing_cache().serialize())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)
    return blob.nbytes


def build_serialized_engine(onnx_path: Path, *, batch: tuple[int, int, int], size: int, workspace_gb: float,
                            timing_cache: Path | None, device_index: int = 0,
                            log: Callable[[str], None] = lambda s: None) -> tuple[bytes, dict]:
    """ONNX file → serialized engine bytes and build facts. The graph's own types decide the precision."""
    trt = import_tensorrt()
    import torch

    logger = trt_logger(trt)
    with torch.cuda.device(device_index):
        builder = trt.Builder(logger)
        network = builder.create_network(network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise BundleError(f"{onnx_path}: TensorRT's ONNX parser failed: " + " | ".join(errors[:5]))
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        if INPUT_NAME not in names:
            raise BundleError(f"{onnx_path}: encoder graph has no '{INPUT_NAME}' input (has {names})")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default: fp32 tensors would round inputs to 10 bits
        mn, opt, mx = batch
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, (mn, 3, size, size), (opt, 3, size, size), (mx, 3, size, size))
        config.add_optimization_profile(profile)
        cache_info = _load_timing_cache(trt, config, timing_cache, log)
        t0 = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - t0
        if serialized is None:
            raise BundleError(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log above)")
        if timing_cache is not None:
            cache_info["saved_bytes"] = _save_timing_cache(config, timing_cache)
    facts = {"build_seconds": round(seconds, 3), "timing_cache": cache_info, "workspace_gb": workspace_gb,
             "network": "strongly typed", "tf32": bool(config.get_flag(trt.BuilderFlag.TF32))}
    return bytes(memoryview(serialized)), facts


def engine_record(*, precision: str, tensorrt: str, tensorrt_cuda: dict | None, gpu: dict,
                  batch: tuple[int, int, int], size: int, source_sha256: str, engine_onnx: dict,
                  source_bundle: str, facts: dict, torch_cuda: str | None = None,
                  cuda_driver: str | None = None) -> dict:
    """The engine record (engine.json). `precision` is the engine's; `engine_onnx` describes the graph the
    engine was built from (its precision, sha256 and, for fp16, the conversion)."""
    if precision not in ENGINE_PRECISIONS:
        raise BundleError(f"engine precision must be one of {', '.join(ENGINE_PRECISIONS)} (got {precision!r})")
    mn, opt, mx = batch
    return {
        "format": ENGINE_RECORD_FORMAT, "format_version": 1,
        "precision": precision,
        "tensorrt": tensorrt,
        # The CUDA TensorRT was built for, from its wheel's name; torch's is only the buffers' allocator.
        "tensorrt_cuda": tensorrt_cuda,
        "torch_cuda": torch_cuda,
        "cuda_driver": cuda_driver,
        "gpu": gpu,
        "profile": {"input": INPUT_NAME, "min": [mn, 3, size, size], "opt": [opt, 3, size, size],
                    "max": [mx, 3, size, size]},
        "source_onnx": ENCODER_FILE, "source_onnx_sha256": source_sha256,
        "engine_onnx": engine_onnx,
        "source_bundle": source_bundle,
        "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **facts,
    }


def write_engine_bundle(bundle: Bundle, tmp: Path, *, engine_bytes: bytes, record: dict, gpu_name: str,
                        trt_version: str) -> None:
    """Fill the staged folder `tmp` (the fp32 encoder.onnx already in it): engine, record, heads, manifest.

    The manifest's `precision` is the encoder.onnx's (fp32); the engine's is the record's."""
    precision = record["precision"]
    engine_file = engine_file_name(precision)
    (tmp / engine_file).write_bytes(engine_bytes)
    (tmp / ENGINE_RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    carried = copy_carried_files(bundle, tmp)
    m = bundle.manifest
    extra = carried_meta(m)
    extra["tensorrt"] = {"engine_precision": precision, "record": ENGINE_RECORD_FILE,
                         "note": f"{ENCODER_FILE} is the {bundle.precision} graph the engine was made from; "
                                 "onnxruntime runs it where the engine does not fit"}
    write_manifest(tmp, name=bundle.name, config=bundle.config,
                   files={"encoder": ENCODER_FILE, **carried, "engine": engine_file,
                          "engine_record": ENGINE_RECORD_FILE},
                   precision=bundle.precision,
                   source=f"{m.get('source')}; TensorRT {trt_version} {precision} engine "
                          f"for {gpu_name} from {bundle.root.name}",
                   extra=extra)


def build_engine(bundle_dir: str | Path, out: str | Path, *, fp16: bool = True,
                 batch: str | Sequence[int] = (1, 8, 32), workspace_gb: float = 4,
                 timing_cache: str | Path | None = None, device: str = "cuda", force: bool = False,
                 log: Callable[[str], None] = lambda s: None) -> Path:
    """Build a TensorRT engine for fp32 bundle `bundle_dir` on this GPU; write the derived bundle `out`.

    Raises BackendError when TensorRT (or a GPU) is missing, BundleError for a bad source or profile.
    """
    from fgresq_sdk.backends.device import gpu_index

    trt = import_tensorrt()  # first: the clearest message when TensorRT is absent
    batch = parse_batch(batch)
    bundle = load_bundle(bundle_dir)
    if bundle.precision != "fp32":
        raise BundleError(f"{bundle.root}: build TensorRT engines from an fp32 bundle (this one is "
                          f"{bundle.precision}); fp16 engines are built from an fp16 graph made from the fp32 one")
    index = gpu_index(device, "TensorRT")
    gpu = gpu_identity(index)
    out = check_out_dir(out, force)
    if out.resolve() == bundle.root.resolve():
        raise BundleError(f"{out}: write the engine bundle to a new folder, not over its source")
    precision = "fp16" if fp16 else "fp32"
    size = int(bundle.preprocess["size"])
    src_sha = bundle.manifest["files"]["encoder"]["sha256"]
    log(f"building a {precision} TensorRT {trt.__version__} engine for {gpu['name']} (batch {batch})")
    import torch

    with staged_bundle(out, force) as tmp:
        # The parser reads a path: hand it (or the fp16 converter) the very bytes that were verified.
        src_onnx = copy_verified(bundle, "encoder", tmp / ENCODER_FILE)
        with tempfile.TemporaryDirectory(prefix="fgresq-trt-") as work:
            if fp16:
                from .half import half_file

                graph = Path(work) / "encoder.fp16.onnx"
                try:
                    conversion = half_file(src_onnx, graph, fp32_head=True)  # TensorRT's: the head in fp32 too
                except ImportError as exc:  # onnx / onnxruntime.transformers
                    raise BackendError(f"fp16 engines are built from an fp16 ONNX graph, which needs onnx: "
                                       f"pip install 'fgresq-sdk[trt]' ({exc})") from None
                engine_onnx = {"precision": "fp16", "sha256": sha256_file(graph), "conversion": conversion}
            else:
                graph = src_onnx
                engine_onnx = {"precision": "fp32", "sha256": src_sha, "file": ENCODER_FILE}
            engine_bytes, facts = build_serialized_engine(
                graph, batch=batch, size=size, workspace_gb=workspace_gb,
                timing_cache=Path(timing_cache) if timing_cache else None, device_index=index, log=log)
        record = engine_record(precision=precision, tensorrt=trt.__version__,
                               tensorrt_cuda=installed_tensorrt_cuda(trt.__version__), gpu=gpu, batch=batch,
                               size=size, source_sha256=src_sha, engine_onnx=engine_onnx,
                               source_bundle=str(bundle.root), facts=facts, torch_cuda=torch.version.cuda,
                               cuda_driver=cuda_driver_version())
        write_engine_bundle(bundle, tmp, engine_bytes=engine_bytes, record=record, gpu_name=gpu["name"],
                            trt_version=trt.__version__)
    return out
