"""The clean attention export and ONNX Runtime's transformer fusions (export/fusion.py) keep the model's
numbers: torch ↔ ONNX Runtime parity ≤ 1e-4 on scores, as tests/test_parity.py asks of every export."""
from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from conftest import needs_torch

pytestmark = needs_torch


def test_export_attention_equals_multihead_attention():
    import torch
    from torch import nn

    from fgresq_sdk.export.fusion import ExportAttention

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_(0, 0.1)
        x = torch.randn(3, 50, 64)
        want = mha(x, x, x, need_weights=False)[0]
        got, _ = ExportAttention(mha, tokens=50)(x, x, x, need_weights=False)
    assert torch.max(torch.abs(got - want)).item() <= 1e-5


def test_clean_attention_is_scoped_to_the_export():
    from torch import nn

    from fgresq_sdk.export.fusion import ExportAttention, clean_attention, vit_shape
    from fgresq_sdk.model import FGResQ

    model = FGResQ("fgresq-vit-tiny").eval()
    assert vit_shape(model) == {"num_heads": 2, "hidden_size": 64, "blocks": 4}
    with clean_attention(model) as n:
        assert n == 4
        assert all(isinstance(b.attn, ExportAttention) for b in model.image_tower.transformer.resblocks)
    assert all(isinstance(b.attn, nn.MultiheadAttention) for t in (model.image_tower, model.degradation_tower)
               for b in t.transformer.resblocks)


def _ops(path) -> collections.Counter:
    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def test_exported_graph_has_no_runtime_shape_arithmetic_in_attention(tiny_bundle):
    """The traced nn.MultiheadAttention computed its reshapes at run time (Shape/Gather/Concat per block)."""
    m = json.loads((tiny_bundle / "model.json").read_text())
    assert m["graph"]["clean_attention_blocks"] == 4 and "fusion" not in m["graph"]
    ops = _ops(tiny_bundle / "encoder.onnx")
    # per block: q, k, v, QKᵀ, AV, out_proj, c_fc, c_proj; one softmax per block + the task head
    assert ops["MatMul"] == 4 * 8 and ops["Softmax"] == 4 + 1
    assert ops["Shape"] <= 8 and "Mod" not in ops


def _scores(path, x):
    import onnxruntime as ort

    from fgresq_sdk.backends.onnxruntime_backend import session_options

    return ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"]).run(None,
                                                                                                     {"image": x})


def test_fused_encoder_keeps_parity_with_torch(tiny_bundle, tmp_path):
    import shutil

    import torch

    from fgresq_sdk.export.fusion import fuse_encoder
    from fgresq_sdk.model import load_checkpoint

    model = load_checkpoint(tiny_bundle / "model.safetensors").eval()
    fused = tmp_path / "fused.onnx"
    shutil.copy(tiny_bundle / "encoder.onnx", fused)
    record = fuse_encoder(fused, {"num_heads": 2, "hidden_size": 64, "blocks": 4})
    assert record["applied"] is True, record
    assert record["ops"]["Attention"] == 4 and record["ops"]["SkipLayerNormalization"] >= 4
    assert _ops(fused)["Attention"] == 4
    x = np.random.default_rng(0).normal(size=(5, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        q_t, s_t = (t.numpy() for t in model(torch.from_numpy(x)))
    for path in (tiny_bundle / "encoder.onnx", fused):
        q, s = _scores(path, x)
        assert float(np.max(np.abs(s - s_t))) <= 1e-4, path
        assert float(np.max(np.abs(q - q_t))) <= 1e-3, path


def test_fusion_that_misses_blocks_leaves_the_graph_alone(tiny_bundle, tmp_path):
    import shutil

    from fgresq_sdk.export.fusion import fuse_encoder

    path = tmp_path / "enc.onnx"
    shutil.copy(tiny_bundle / "encoder.onnx", path)
    before = path.read_bytes()
    record = fuse_encoder(path, {"num_heads": 2, "hidden_size": 64, "blocks": 5})  # one block too many
    assert record["applied"] is False and "4 of 5" in record["why"]
    assert path.read_bytes() == before


@pytest.mark.parametrize("cfg", ["fgresq-compact-rn", "fgresq-compact-cnn"])
def test_non_vit_towers_export_unchanged(cfg, tmp_path):
    """ModifiedResNet and conv-stats towers have no ViT blocks: nothing is swapped, the export matches torch."""
    import torch

    from fgresq_sdk.export.onnx_export import export_bundle
    from fgresq_sdk.model import FGResQ

    torch.manual_seed(0)
    model = FGResQ(cfg).eval()
    out = export_bundle(model, tmp_path / "rn", source="test", include_checkpoint=False)
    assert json.loads((out / "model.json").read_text())["graph"]["clean_attention_blocks"] == 0
    x = np.random.default_rng(1).normal(size=(2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        _, s_t = model(torch.from_numpy(x))
    assert float(np.max(np.abs(_scores(out / "encoder.onnx", x)[1] - s_t.numpy()))) <= 1e-4
