"""Faster fp32 encoder graphs: a clean attention export, then ONNX Runtime's transformer fusions.

The TorchScript exporter writes `nn.MultiheadAttention` as a tangle of Shape/Gather/Concat/Reshape nodes
(its shapes are computed at run time) that neither ONNX Runtime's session optimizer nor its offline
transformer optimizer recognises. `clean_attention(model)` swaps, for the export only, every ViT block's
attention for `ExportAttention`: the same weights and the same arithmetic, written with static head
shapes (the token count is fixed by the bundle's image size) and separate q/k/v projections. That graph
is what `onnxruntime.transformers.optimizer` (model type `clip`) fuses: LayerNorm, residual add +
LayerNorm (SkipLayerNormalization), QuickGelu/BiasGelu and each block's attention into one `Attention`
node (QKV projection packed into one GEMM). The result uses com.microsoft operators, so it runs on
ONNX Runtime (Python, and the C/C++ library through the same runtime) only; `unfuse` turns it back into
standard ONNX for other consumers (TensorRT's parser).

A fusion that does not find every block (a future ONNX Runtime with other patterns) is not an error: the
clean graph is kept as is, and the manifest says what was fused.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

import torch
from torch import nn


class ExportAttention(nn.Module):
    """Self-attention of `nn.MultiheadAttention` (batch_first, no mask, no dropout) for export.

    Same parameters (copied), same result within fp32 rounding; the softmax scale is applied after QKᵀ,
    the form ONNX Runtime's fusion matches (its Attention kernel uses the same 1/√head_dim).
    """

    def __init__(self, mha: nn.MultiheadAttention, tokens: int):
        super().__init__()
        d, h = mha.embed_dim, mha.num_heads
        if not mha._qkv_same_embed_dim or mha.in_proj_bias is None or not mha.batch_first:
            raise ValueError("ExportAttention needs a batch_first self-attention with a packed, biased projection")
        self.embed_dim, self.num_heads, self.head_dim, self.tokens = d, h, d // h, int(tokens)
        self.scale = float(self.head_dim) ** -0.5
        w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
        self.q, self.k, self.v = (nn.Linear(d, d) for _ in range(3))
        with torch.no_grad():
            for i, lin in enumerate((self.q, self.k, self.v)):
                lin.weight.copy_(w[i * d:(i + 1) * d])
                lin.bias.copy_(b[i * d:(i + 1) * d])
        self.out_proj = mha.out_proj

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None, **_):
        if attn_mask is not None or any(t is not None and t is not query for t in (key, value)):
            raise ValueError("ExportAttention is self-attention without a mask")
        n, h, hd = self.tokens, self.num_heads, self.head_dim
        q = self.q(query).reshape(-1, n, h, hd).transpose(1, 2)      # [B, H, N, hd]
        k = self.k(query).reshape(-1, n, h, hd).permute(0, 2, 3, 1)  # [B, H, hd, N]
        v = self.v(query).reshape(-1, n, h, hd).transpose(1, 2)      # [B, H, N, hd]
        a = torch.softmax(torch.matmul(q, k) * self.scale, dim=-1)
        o = torch.matmul(a, v).transpose(1, 2).reshape(-1, n, self.embed_dim)
        return self.out_proj(o), None


def _vit_blocks(model) -> Iterator[tuple[nn.Module, int]]:
    """(residual block, token count) of every ViT tower block with a plain self-attention."""
    for tower in (model.image_tower, model.degradation_tower):
        transformer = getattr(tower, "transformer", None)
        pos = getattr(tower, "positional_embedding", None)
        if transformer is None or pos is None or getattr(tower, "attn_pool", None) is not None:
            continue
        if not getattr(transformer, "batch_first", True):
            continue
        for block in transformer.resblocks:
            if isinstance(getattr(block, "attn", None), nn.MultiheadAttention) and not hasattr(block, "ln_1_kv"):
                yield block, int(pos.shape[0])


def vit_shape(model) -> dict | None:
    """num_heads, hidden_size and the number of attention blocks of the ViT towers (None: no ViT tower)."""
    blocks = list(_vit_blocks(model))
    if not blocks:
        return None
    attn = blocks[0][0].attn
    return {"num_heads": attn.num_heads, "hidden_size": attn.embed_dim, "blocks": len(blocks)}


@contextlib.contextmanager
def clean_attention(model) -> Iterator[int]:
    """Swap the ViT blocks' attention for ExportAttention while exporting; yields how many were swapped."""
    swapped = []
    try:
        for block, tokens in _vit_blocks(model):
            swapped.append((block, block.attn))
            block.attn = ExportAttention(block.attn, tokens)
        yield len(swapped)
    finally:
        for block, attn in swapped:
            block.attn = attn


FUSED_OPS = ("Attention", "SkipLayerNormalization", "LayerNormalization", "QuickGelu", "BiasGelu", "FastGelu", "Gelu")


def fuse_encoder(path: Path, shape: dict) -> dict:
    """Fuse `path` in place with ONNX Runtime's transformer optimizer; returns what was fused.

    Kept only when every attention block became one Attention node; otherwise the file is left alone and
    the returned record says `"applied": false`.
    """
    import onnx
    import onnxruntime
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    opts = FusionOptions("clip")
    quiet = [logging.getLogger(n) for n in ("", "onnx_model", "fusion_base", "onnx_model_bert", "onnx_model_clip",
                                            "fusion_skiplayernorm", "fusion_attention", "optimizer")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        opt = optimizer.optimize_model(str(path), model_type="clip", num_heads=shape["num_heads"],
                                       hidden_size=shape["hidden_size"], opt_level=0, optimization_options=opts,
                                       use_gpu=False)
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)
    counts: dict[str, int] = {}
    for node in opt.model.graph.node:
        if node.op_type in FUSED_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    record = {"tool": f"onnxruntime.transformers.optimizer {onnxruntime.__version__}", "model_type": "clip",
              "num_heads": shape["num_heads"], "hidden_size": shape["hidden_size"], "ops": counts}
    if counts.get("Attention", 0) != shape["blocks"]:
        record["applied"] = False
        record["why"] = f"{counts.get('Attention', 0)} of {shape['blocks']} attention blocks matched"
        return record
    record["applied"] = True
    if not any(o.domain == "com.microsoft" for o in opt.model.opset_import):  # onnx tools need it declared
        opt.model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(opt.model, str(path))
    return record
