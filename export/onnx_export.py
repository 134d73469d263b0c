"""Trace FGResQ into a model bundle: encoder graph, numpy head weights, manifest.

The encoder graph maps an image batch [B,3,S,S] to quality features q [B,3D] and score [B] with a
dynamic batch axis. The comparison head is not a graph: its weights go to heads.npz, which every backend,
the remote client and the C++ library evaluate from the features (fgresq_sdk.heads; the head is linear in
[q0, q1], so ranking N images needs N encodes and per-image terms). Bundles written before this listed a
compare_head.onnx as well; readers still accept such bundles and ignore that graph.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fgresq_sdk.bundle import write_manifest
from fgresq_sdk.heads import HEADS_NPZ_KEYS
from fgresq_sdk.verdict import LOGIT_ORDER

from .staging import check_out_dir, copy_verified, staged_bundle

DEFAULT_OPSET = 17
ENCODER_FILE = "encoder.onnx"
HEADS_FILE = "heads.npz"
CHECKPOINT_FILE = "model.safetensors"
# The exporter names every node of the low-level prior after FGResQ.prior; fp16 and int8 keep them fp32.
PRIOR_PREFIX = "/prior/"
# Manifest keys describing the graph and the heads, carried unchanged into bundles derived from this one.
CARRIED_KEYS = ("opset", "feature_dim", "inputs", "outputs", "logit_order", "naturalness", "compare_calibration")
# What older manifests listed among "outputs" for their compare_head.onnx graph.
_LEGACY_COMPARE_OUTPUTS = ("logits", "logit_order")


def head_arrays(model) -> dict[str, np.ndarray]:
    """Regression and comparison head weights as float32 arrays (the torch-free heads read these)."""
    state = model.state_dict()
    return {key: state[param].detach().float().cpu().numpy() for key, param in HEADS_NPZ_KEYS.items()}


def carried_meta(manifest: dict[str, Any]) -> dict[str, Any]:
    """CARRIED_KEYS of a source manifest, for a derived bundle's. A source written before heads.npz became the
    only comparison head lists its compare graph's `logits` and `logit_order` among the outputs; the derived
    bundle has no such graph, so they become the current form (the order at the top level)."""
    extra = {k: manifest[k] for k in CARRIED_KEYS if k in manifest}
    outputs = extra.get("outputs")
    if isinstance(outputs, dict) and any(k in outputs for k in _LEGACY_COMPARE_OUTPUTS):
        extra["outputs"] = {k: v for k, v in outputs.items() if k not in _LEGACY_COMPARE_OUTPUTS}
        extra.setdefault("logit_order", outputs.get("logit_order", list(LOGIT_ORDER)))
    return extra


def copy_naturalness(bundle, tmp: Path) -> dict[str, str]:
    """A naturalness term's pristine model, copied (verified) into tmp: the bundle's score depends on it, so every
    bundle made from this one keeps it. Returns role → path inside tmp (nothing without a term)."""
    section = bundle.manifest.get("naturalness")
    if section is None:
        return {}
    role = section["pristine"]
    rel = bundle.entry(role)["path"]
    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
    copy_verified(bundle, role, tmp / rel)
    return {role: rel}


def copy_carried_files(bundle, tmp: Path) -> dict[str, str]:
    """Copy (verified) what a derived bundle keeps of its source besides the encoder: the numpy heads and a
    naturalness term's pristine model. Returns role → path inside tmp."""
    copy_verified(bundle, "heads", tmp / HEADS_FILE)
    return {"heads": HEADS_FILE, **copy_naturalness(bundle, tmp)}


def _export_encoder(model, out: Path, opset: int) -> int:
    """The encoder graph into `out`; returns how many ViT attention blocks were written in the clean form."""
    import torch

    from .fusion import clean_attention

    size = int(model.cfg["preprocess"]["size"])
    image = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings(), clean_attention(model) as cleaned:
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (image,), str(out / ENCODER_FILE), input_names=["image"], output_names=["features", "score"],
            dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}, "score": {0: "batch"}},
            opset_version=opset, dynamo=False, do_constant_folding=True,
        )
    return cleaned


def check_encoder(out: Path) -> None:
    """onnx.checker on the encoder graph (full check, including shape inference)."""
    import onnx

    onnx.checker.check_model(str(out / ENCODER_FILE), full_check=True)


def export_bundle(model, out: str | Path, *, source: str, opset: int = DEFAULT_OPSET,
                  include_checkpoint: bool = True, force: bool = False,
                  extra: dict[str, Any] | None = None, fuse: bool = False, carry_from=None) -> Path:
    """Write a complete bundle for `model` (an FGResQ in eval mode) into `out` (staged, see staged_bundle).

    carry_from: the bundle being re-exported, whose naturalness term (section and pristine model) the new one
    keeps, so that re-exporting never changes what `score` returns.

    The ViT towers' attention is always exported in the clean form (export/fusion.py). fuse=True also runs
    ONNX Runtime's transformer fusions (Attention, SkipLayerNormalization, QuickGelu) at export time: the
    encoder then needs ONNX Runtime (com.microsoft operators). It is off by default because on the CPUs
    measured it was not faster than the clean graph under ONNX Runtime's own session optimizer (README,
    Performance), while it stops TensorRT's parser and changes what int8 quantizes.
    """
    from fgresq_sdk.model import save_checkpoint

    from .fusion import fuse_encoder, vit_shape

    out = check_out_dir(out, force)
    model = model.eval().float().cpu()
    with staged_bundle(out, force) as tmp:
        # Traced with autograd on: under no_grad, nn.MultiheadAttention takes its fused fast path, which
        # has no ONNX symbolic.
        cleaned = _export_encoder(model, tmp, opset)
        check_encoder(tmp)
        graph = {"attention": "clean export (static head shapes, separate q/k/v)" if cleaned else "as traced",
                 "clean_attention_blocks": cleaned}
        shape = vit_shape(model)
        if fuse and shape is not None:
            graph["fusion"] = fuse_encoder(tmp / ENCODER_FILE, shape)
        np.savez(tmp / HEADS_FILE, **head_arrays(model))
        files = {"encoder": ENCODER_FILE, "heads": HEADS_FILE}
        if include_checkpoint:
            save_checkpoint(model, tmp / CHECKPOINT_FILE, source=source)
            files["checkpoint"] = CHECKPOINT_FILE
        meta = {"opset": opset, "feature_dim": model.feature_dim, "score_scale": model.score_scale,
                "inputs": {"image": ["batch", 3, model.cfg["preprocess"]["size"], model.cfg["preprocess"]["size"]]},
                "outputs": {"features": ["batch", 3 * model.feature_dim], "score": ["batch"]},
                "logit_order": list(LOGIT_ORDER),  # the rows of heads.npz's compare_weight and compare_bias
                "graph": graph}
        meta.update(extra or {})
        if carry_from is not None and "naturalness" in carry_from.manifest:
            files.update(copy_naturalness(carry_from, tmp))
            meta["naturalness"] = carry_from.manifest["naturalness"]
        write_manifest(tmp, name=model.cfg["name"], config=model.cfg, files=files, precision="fp32",
                       source=source, extra=meta)
    return out
