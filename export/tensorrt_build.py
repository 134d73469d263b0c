"""TensorRT engines: build a serialized engine for this GPU from an fp32 bundle's encoder graph.

The result is a derived bundle: the source's fp32 encoder.onnx, compare_head.onnx and heads.npz, plus
the engine (role ``engine``) and its record (role ``engine_record``, ``engine.json``), all listed in
model.json with their sha256. The fp32 ONNX encoder stays in so the same folder still runs anywhere
through onnxruntime (and `auto` falls back to it where the engine does not fit); it is also the graph
the engine was built from, whose sha256 the record holds.

The record says what the engine is bound to — the TensorRT version, the GPU name and compute
capability — and how it was built (precision, the batch profile, workspace, timing cache). The TensorRT
backend refuses an engine whose record does not match the machine: engines are not portable.

Build (TensorRT 10 Python API): an explicit-batch network (the only kind in TRT 10) parsed from ONNX by
``trt.OnnxParser``; one optimisation profile for input ``image`` over (MIN,3,S,S)/(OPT,…)/(MAX,…); the
workspace as a memory-pool limit; ``BuilderFlag.FP16`` for fp16 engines, with the layers after the two
towers (task MLP, prompt softmax, heads, final sigmoid) preferred in fp32 and every LayerNormalization
computing in fp32 — the same split as the torch backend's fp16 and half.py's blocked ops. A timing cache
file, when given, is loaded before the build and saved after it, so rebuilding (another profile, the
other config on the same GPU) skips re-timing the layers it has seen.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import time
from pathlib import Path
from typing import Callable, Sequence

from fgresq_sdk.backends.tensorrt_backend import (
    ENGINE_RECORD_FORMAT, INPUT_NAME, gpu_identity, import_tensorrt,
)
from fgresq_sdk.bundle import load_bundle, sha256_file, write_manifest
from fgresq_sdk.errors import BundleError

from .onnx_export import COMPARE_FILE, ENCODER_FILE, HEADS_FILE, prepare_out_dir
from .staging import copy_verified, staged_bundle

ENGINE_RECORD_FILE = "engine.json"
TOWER_PREFIXES = ("/image_tower/", "/degradation_tower/")


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


def _prefer_fp32(trt, network) -> dict[str, int]:
    """Pin the precision-sensitive layers of an FP16 build; returns how many of each were pinned."""
    pinned_head, pinned_norm = 0, 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.NORMALIZATION:
            try:
                layer.__class__ = trt.INormalizationLayer  # the Python API's way to reach a layer's own fields
                layer.compute_precision = trt.float32
                pinned_norm += 1
            except (AttributeError, TypeError):  # pragma: no cover - older bindings
                pass
            continue
        name = layer.name or ""
        if not name.startswith("/") or name.startswith(TOWER_PREFIXES):
            continue
        outputs = [layer.get_output(k) for k in range(layer.num_outputs)]
        if not outputs or any(o.dtype != trt.float32 for o in outputs):
            continue  # shape/index arithmetic: leave it alone
        layer.precision = trt.float32
        for k in range(layer.num_outputs):
            layer.set_output_type(k, trt.float32)
        pinned_head += 1
    return {"head_layers_fp32": pinned_head, "layernorm_compute_fp32": pinned_norm}


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


def build_serialized_engine(onnx_path: Path, *, fp16: bool, batch: tuple[int, int, int], size: int,
                            workspace_gb: float, timing_cache: Path | None, device_index: int = 0,
                            log: Callable[[str], None] = lambda s: None) -> tuple[bytes, dict]:
    """ONNX file → serialized engine bytes and build facts (TensorRT 10 API)."""
    trt = import_tensorrt()
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    with torch.cuda.device(device_index):
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch: the default (and only) mode in TensorRT 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise BundleError(f"{onnx_path}: TensorRT's ONNX parser failed: " + " | ".join(errors[:5]))
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        if INPUT_NAME not in names:
            raise BundleError(f"{onnx_path}: encoder graph has no '{INPUT_NAME}' input (has {names})")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
        pinned: dict[str, int] = {}
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
            pinned = _prefer_fp32(trt, network)
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
    facts = {"build_seconds": round(seconds, 3), "timing_cache": cache_info, "fp32_pins": pinned,
             "workspace_gb": workspace_gb}
    return bytes(memoryview(serialized)), facts


def build_engine(bundle_dir: str | Path, out: str | Path, *, fp16: bool = True,
                 batch: str | Sequence[int] = (1, 8, 32), workspace_gb: float = 4,
                 timing_cache: str | Path | None = None, device: str = "cuda", force: bool = False,
                 log: Callable[[str], None] = lambda s: None) -> Path:
    """Build a TensorRT engine for fp32 bundle `bundle_dir` on this GPU; write the derived bundle `out`.

    Raises BackendError when TensorRT (or a GPU) is missing, BundleError for a bad source or profile.
    """
    from fgresq_sdk.backends.tensorrt_backend import cuda_device_index

    trt = import_tensorrt()  # first: the clearest message when TensorRT is absent
    batch = parse_batch(batch)
    bundle = load_bundle(bundle_dir)
    if bundle.precision != "fp32":
        raise BundleError(f"{bundle.root}: build TensorRT engines from an fp32 bundle (this one is "
                          f"{bundle.precision}); TensorRT does its own fp16 conversion")
    index = cuda_device_index(device)
    gpu = gpu_identity(index)
    out = prepare_out_dir(out, force)
    if out.resolve() == bundle.root.resolve():
        raise BundleError(f"{out}: write the engine bundle to a new folder, not over its source")
    precision = "fp16" if fp16 else "fp32"
    size = int(bundle.preprocess["size"])
    bundle.verify_file("encoder")  # the parser reads the path; refuse a corrupted graph first
    src_onnx = bundle.path("encoder")
    log(f"building a {precision} TensorRT {trt.__version__} engine for {gpu['name']} (batch {batch})")
    engine_bytes, facts = build_serialized_engine(
        src_onnx, fp16=fp16, batch=batch, size=size, workspace_gb=workspace_gb,
        timing_cache=Path(timing_cache) if timing_cache else None, device_index=index, log=log)
    import torch

    record = {
        "format": ENGINE_RECORD_FORMAT, "format_version": 1,
        "tensorrt": trt.__version__, "gpu": gpu, "cuda_runtime": torch.version.cuda,
        "precision": precision,
        "profile": {"input": INPUT_NAME, "min": [batch[0], 3, size, size], "opt": [batch[1], 3, size, size],
                    "max": [batch[2], 3, size, size]},
        "source_onnx": ENCODER_FILE, "source_onnx_sha256": bundle.manifest["files"]["encoder"]["sha256"],
        "source_bundle": str(bundle.root),
        "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **facts,
    }
    with staged_bundle(out, force) as tmp:
        engine_file = engine_file_name(precision)
        (tmp / engine_file).write_bytes(engine_bytes)
        (tmp / ENGINE_RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        copy_verified(bundle, "encoder", tmp / ENCODER_FILE)
        copy_verified(bundle, "compare_head", tmp / COMPARE_FILE)
        copy_verified(bundle, "heads", tmp / HEADS_FILE)
        m = bundle.manifest
        extra = {k: m[k] for k in ("opset", "feature_dim", "inputs", "outputs") if k in m}
        extra["tensorrt"] = {"engine_precision": precision, "record": ENGINE_RECORD_FILE,
                             "note": "encoder.onnx is the fp32 graph the engine was built from; onnxruntime "
                                     "runs it where the engine does not fit"}
        write_manifest(tmp, name=bundle.name, config=bundle.config,
                       files={"encoder": ENCODER_FILE, "compare_head": COMPARE_FILE, "heads": HEADS_FILE,
                              "engine": engine_file, "engine_record": ENGINE_RECORD_FILE},
                       precision=precision,
                       source=f"{m.get('source')}; TensorRT {trt.__version__} {precision} engine "
                              f"for {gpu['name']} from {bundle.root.name}",
                       extra=extra)
    if sha256_file(out / ENCODER_FILE) != record["source_onnx_sha256"]:  # pragma: no cover - paranoia
        raise BundleError(f"{out}: copied encoder does not match its source")
    return out
