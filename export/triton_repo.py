"""A standard Triton Inference Server model repository from a bundle (`export --format triton-repo`), for
users who run a full `tritonserver` (ONNX Runtime backend; TensorRT for a bundle with an engine).

Layout of OUT:
    fgresq_encoder/config.pbtxt, 1/model.onnx    image [3,S,S] FP32 (preprocessed) → features [3D], score
    fgresq_encoder/model.json, heads.npz         the bundle's manifest and numpy heads: clients compare and rank
                                                 from `features` with them (fgresq_sdk.heads, the one head)
    fgresq_encoder/niqe-pristine.json            only for a bundle with a naturalness term: `score` is the
                                                 encoder's, clients add the term (fgresq_sdk.naturalness)
    fgresq_encoder_trt/config.pbtxt, 1/model.plan  only when the bundle has a TensorRT engine (GPU- and
                                                   TensorRT-version-specific, like the engine itself)
    fgresq_triton_repo.json                      what was exported from what (Triton reads folders only)

The ONNX Runtime backend cannot decode images: clients send the tensor the bundle's preprocessing spec makes
(`fgresq_sdk.preprocess.preprocess`, also in the config's `parameters`). For a server that takes image
files, use `fgresq-sdk serve`. Inputs, outputs and dims are read from the graphs themselves (ONNX Runtime), so
fp16 and int8 bundles get the right types. No torch, onnx or tritonclient needed.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fgresq_sdk.bundle import load_bundle
from fgresq_sdk.errors import BundleError, display_path

from .onnx_export import copy_naturalness
from .staging import copy_verified, refuse_protected_target, swap_into_place

ENCODER_MODEL = "fgresq_encoder"
TRT_MODEL = "fgresq_encoder_trt"
REPO_RECORD = "fgresq_triton_repo.json"
DEFAULT_MAX_BATCH = 32
DEFAULT_QUEUE_DELAY_US = 2000

_ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(double)": "TYPE_FP64",
              "tensor(int64)": "TYPE_INT64", "tensor(int32)": "TYPE_INT32", "tensor(uint8)": "TYPE_UINT8",
              "tensor(int8)": "TYPE_INT8", "tensor(bfloat16)": "TYPE_BF16"}


def _io(onnx_bytes: bytes) -> tuple[list[tuple[str, str, list]], list[tuple[str, str, list]]]:
    """(inputs, outputs) of an ONNX graph as (name, Triton data type, shape with the batch dim)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])

    def conv(args):
        out = []
        for a in args:
            if a.type not in _ORT_TYPES:
                raise BundleError(f"ONNX tensor '{a.name}' has type {a.type}, which this exporter does not map")
            out.append((a.name, _ORT_TYPES[a.type], list(a.shape)))
        return out

    return conv(sess.get_inputs()), conv(sess.get_outputs())


def _dims(shape: list, what: str) -> list[int]:
    """Dims after the batch dimension; every one must be a fixed size."""
    rest = shape[1:]
    if any(not isinstance(d, int) or d <= 0 for d in rest):
        raise BundleError(f"{what}: shape {shape} has a dynamic dimension after the batch dimension")
    return rest


def _tensor(name: str, dtype: str, dims: list[int]) -> str:
    if not dims:  # a [batch] tensor: Triton wants dims [1], reshaped to a scalar per item
        return f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ 1 ]\n    reshape: {{ shape: [ ] }}\n  }}'
    return f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'


def _pbtxt_string(s: str) -> str:
    return json.dumps(s, ensure_ascii=True)  # a JSON string literal is a valid protobuf text string literal


def model_config(name: str, platform: str, max_batch_size: int, inputs, outputs, *,
                 queue_delay_us: int | None, parameters: dict[str, str] | None = None) -> str:
    """config.pbtxt text (Triton's ModelConfig protobuf, text format)."""
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {int(max_batch_size)}",
             "input [\n" + ",\n".join(_tensor(n, t, _dims(s, f"{name} input {n}")) for n, t, s in inputs) + "\n]",
             "output [\n" + ",\n".join(_tensor(n, t, _dims(s, f"{name} output {n}")) for n, t, s in outputs)
             + "\n]"]
    if queue_delay_us is not None:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(queue_delay_us)}\n}}")
    for key, value in (parameters or {}).items():
        lines.append(f"parameters {{\n  key: {_pbtxt_string(key)}\n  value: {{ string_value: "
                     f"{_pbtxt_string(value)} }}\n}}")
    return "\n".join(lines) + "\n"


def _parameters(bundle) -> dict[str, str]:
    m = bundle.manifest
    return {
        "fgresq.bundle": bundle.name,
        "fgresq.precision": bundle.precision,
        "fgresq.feature_dim": str(m.get("feature_dim", "")),
        "fgresq.score_scale": str(bundle.config.get("score_scale", m.get("score_scale", ""))),
        "fgresq.preprocess": json.dumps(bundle.preprocess, sort_keys=True),
        "fgresq.encoder_sha256": m["files"]["encoder"]["sha256"],
        "fgresq.heads_sha256": m["files"]["heads"]["sha256"],
        "fgresq.note": "input `image` is the preprocessed tensor (fgresq.preprocess); compare and rank "
                       "from `features` with heads.npz (fgresq_sdk.heads)",
    }


def _trt_max_batch(bundle, requested: int) -> int:
    try:
        record = json.loads(bundle.read("engine_record").decode("utf-8"))
        return min(requested, int(record["profile"]["max"][0]))
    except (KeyError, ValueError, TypeError, IndexError, UnicodeDecodeError) as exc:
        raise BundleError(f"{bundle.root}: unreadable engine record ({exc})") from None


def trt_config(bundle, max_batch_size: int, queue_delay_us: int, encoder_inputs, encoder_outputs) -> str:
    """The TensorRT plan variant: the encoder's names and dims, the engine profile's largest batch. TensorRT
    builds from ONNX keep the graph's fp32 inputs and outputs, also for fp16 engines."""
    mb = _trt_max_batch(bundle, max_batch_size)
    fp32 = lambda io: [(n, "TYPE_FP32", s) for n, _, s in io]  # noqa: E731
    return model_config(TRT_MODEL, "tensorrt_plan", mb, fp32(encoder_inputs), fp32(encoder_outputs),
                        queue_delay_us=queue_delay_us, parameters=_parameters(bundle))


def _check_out(out: Path, force: bool) -> None:
    shown = display_path(out)
    refuse_protected_target(out, "a model repository")
    if not out.exists():
        return
    if not out.is_dir():
        raise BundleError(f"{shown}: output exists and is not a folder")
    entries = os.listdir(out)
    if not entries:
        return
    if REPO_RECORD not in entries:
        raise BundleError(f"{shown}: output folder is not empty and is not a model repository this SDK wrote "
                          "(pass a new or empty folder)")
    if not force:
        raise BundleError(f"{shown}: output already holds a model repository (pass --force to replace it)")


def export_triton_repo(bundle_dir: str | Path, out: str | Path, *, max_batch_size: int = DEFAULT_MAX_BATCH,
                       queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, force: bool = False) -> Path:
    """Write the model repository for bundle `bundle_dir` at `out` (replaced whole, only if it is one)."""
    if max_batch_size < 1:
        raise BundleError(f"max batch size must be ≥ 1 (got {max_batch_size})")
    bundle = load_bundle(bundle_dir)
    out = Path(out)
    _check_out(out, force)
    encoder = bundle.read("encoder")
    enc_in, enc_out = _io(encoder)
    params = _parameters(bundle)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    moved: list[Path] = []
    record: dict[str, Any] = {"format": "fgresq-triton-repo", "format_version": 1,
                              "bundle": {"name": bundle.name, "precision": bundle.precision,
                                         "files": {k: v["sha256"] for k, v in bundle.manifest["files"].items()}},
                              "models": {}}
    try:
        enc = tmp / ENCODER_MODEL
        (enc / "1").mkdir(parents=True)
        (enc / "1" / "model.onnx").write_bytes(encoder)
        (enc / "config.pbtxt").write_text(
            model_config(ENCODER_MODEL, "onnxruntime_onnx", max_batch_size, enc_in, enc_out,
                         queue_delay_us=queue_delay_us, parameters=params), encoding="utf-8")
        copy_verified(bundle, "heads", enc / "heads.npz")
        (enc / "model.json").write_bytes((bundle.root / "model.json").read_bytes())
        section = bundle.manifest.get("naturalness")
        if section is not None:
            # The graph's `score` is the encoder's; the bundle's score also has the naturalness term, which reads
            # the same preprocessed tensor: clients add it with fgresq_sdk.naturalness and this pristine model.
            (rel,) = copy_naturalness(bundle, enc).values()
            record["naturalness"] = {"pristine": f"{ENCODER_MODEL}/{rel}",
                                     "note": "the `score` output lacks the bundle's naturalness term: "
                                             "NaturalnessTerm.fuse(score, log_distance(tensor)) adds it"}
        record["models"][ENCODER_MODEL] = {"platform": "onnxruntime_onnx", "max_batch_size": max_batch_size}
        if bundle.has("engine") and bundle.has("engine_record"):
            trt_dir = tmp / TRT_MODEL
            (trt_dir / "1").mkdir(parents=True)
            (trt_dir / "1" / "model.plan").write_bytes(bundle.read("engine"))
            (trt_dir / "config.pbtxt").write_text(trt_config(bundle, max_batch_size, queue_delay_us, enc_in, enc_out),
                                                  encoding="utf-8")
            (trt_dir / "engine.json").write_bytes(bundle.read("engine_record"))
            record["models"][TRT_MODEL] = {"platform": "tensorrt_plan",
                                           "max_batch_size": _trt_max_batch(bundle, max_batch_size)}
        (tmp / REPO_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        _relax(tmp)
        _check_out(out, force)  # again: it may have changed while we wrote
        swap_into_place(tmp, out, moved)
    finally:
        for leftover in moved or [tmp]:
            if os.path.realpath(leftover) != os.path.realpath(out):
                shutil.rmtree(leftover, ignore_errors=True)
    return out


def _relax(folder: Path) -> None:
    """mkdtemp makes a private folder; a model repository is shared like any installed file."""
    umask = os.umask(0)
    os.umask(umask)
    for dirpath, dirnames, filenames in os.walk(folder):
        os.chmod(dirpath, 0o777 & ~umask)
        for f in filenames:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, f), 0o666 & ~umask)
