"""Trace FGResQ into a model bundle: encoder graph, comparison-head graph, numpy head weights, manifest.

The encoder graph maps an image batch [B,3,S,S] to quality features q [B,3D] and score [B] with a
dynamic batch axis. The comparison head is its own tiny graph (q0, q1 → 3 logits) so a pair never
re-runs an encoder; its weights are also stored as .npz because ranking N images evaluates all N²
pairs in numpy from per-image terms (the head is linear in [q0, q1]).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fgresq_sdk.bundle import write_manifest

from .staging import check_out_dir, staged_bundle

DEFAULT_OPSET = 17
ENCODER_FILE = "encoder.onnx"
COMPARE_FILE = "compare_head.onnx"
HEADS_FILE = "heads.npz"
CHECKPOINT_FILE = "model.safetensors"


def head_arrays(model) -> dict[str, np.ndarray]:
    """Regression and comparison head weights as float32 arrays (the torch-free heads read these)."""
    return {
        "head_weight": model.head.weight.detach().float().cpu().numpy(),
        "head_bias": model.head.bias.detach().float().cpu().numpy(),
        "compare_weight": model.compare_head.weight.detach().float().cpu().numpy(),
        "compare_bias": model.compare_head.bias.detach().float().cpu().numpy(),
    }


def _export_graphs(model, out: Path, opset: int) -> int:
    """Both graphs into `out`; returns how many ViT attention blocks were written in the clean form."""
    import torch

    from fgresq_sdk.model import CompareHead

    from .fusion import clean_attention

    size = int(model.cfg["preprocess"]["size"])
    dim3 = 3 * model.feature_dim
    image = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings(), clean_attention(model) as cleaned:
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (image,), str(out / ENCODER_FILE), input_names=["image"], output_names=["features", "score"],
            dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}, "score": {0: "batch"}},
            opset_version=opset, dynamo=False, do_constant_folding=True,
        )
        q = torch.zeros(2, dim3)
        torch.onnx.export(
            CompareHead(model), (q, q), str(out / COMPARE_FILE), input_names=["q0", "q1"], output_names=["logits"],
            dynamic_axes={"q0": {0: "batch"}, "q1": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset, dynamo=False,
        )
    return cleaned


def check_graphs(out: Path) -> None:
    """onnx.checker on both graphs (full check, including shape inference)."""
    import onnx

    for fname in (ENCODER_FILE, COMPARE_FILE):
        onnx.checker.check_model(str(out / fname), full_check=True)


def export_bundle(model, out: str | Path, *, source: str, opset: int = DEFAULT_OPSET,
                  include_checkpoint: bool = True, force: bool = False,
                  extra: dict[str, Any] | None = None, fuse: bool = False) -> Path:
    """Write a complete bundle for `model` (an FGResQ in eval mode) into `out` (staged, see staged_bundle).

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
        cleaned = _export_graphs(model, tmp, opset)
        check_graphs(tmp)
        graph = {"attention": "clean export (static head shapes, separate q/k/v)" if cleaned else "as traced",
                 "clean_attention_blocks": cleaned}
        shape = vit_shape(model)
        if fuse and shape is not None:
            graph["fusion"] = fuse_encoder(tmp / ENCODER_FILE, shape)
        np.savez(tmp / HEADS_FILE, **head_arrays(model))
        files = {"encoder": ENCODER_FILE, "compare_head": COMPARE_FILE, "heads": HEADS_FILE}
        if include_checkpoint:
            save_checkpoint(model, tmp / CHECKPOINT_FILE, source=source)
            files["checkpoint"] = CHECKPOINT_FILE
        meta = {"opset": opset, "feature_dim": model.feature_dim, "score_scale": model.score_scale,
                "inputs": {"image": ["batch", 3, model.cfg["preprocess"]["size"], model.cfg["preprocess"]["size"]]},
                "outputs": {"features": ["batch", 3 * model.feature_dim], "score": ["batch"],
                            "logits": ["batch", 3], "logit_order": ["first_better", "second_better", "similar"]},
                "graph": graph}
        meta.update(extra or {})
        write_manifest(tmp, name=model.cfg["name"], config=model.cfg, files=files, precision="fp32",
                       source=source, extra=meta)
    return out
