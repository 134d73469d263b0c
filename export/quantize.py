"""int8 bundles: ONNX Runtime dynamic quantization of the encoder graph's vision towers.

Dynamic quantization stores MatMul/Gemm weights as int8 and quantizes activations per batch at run
time, so it needs no calibration set and keeps the bundle self-contained. The scheme was chosen by
measurement (../shared/notes/int8-on-avx2.md, and the closing notes of the hardening issue):
- weights per channel with `reduce_range` (7-bit): ONNX Runtime's U8S8 kernels saturate on CPUs
  without AVX-512 VNNI (AVX2-only, e.g. AMD Zen 3) when the full int8 range is used; that made
  scores move by up to 0.24 there. reduce_range cuts the error 15–30× on such CPUs and costs nothing
  measurable on VNNI CPUs;
- the small heads after the towers (task MLP, prompt MLP, score head) stay fp32: they are the next
  largest error source and a negligible share of the time;
- only weight×activation products: the attention's activation×activation MatMuls stay fp32.
The torch checkpoint is not copied: it is the fp32 reference, not this model.
"""
from __future__ import annotations

import platform
from pathlib import Path

from .derive import derive_bundle

INT8_ENCODER = "encoder.int8.onnx"
QUANTIZED_OPS = ["MatMul", "Gemm"]
# Graph nodes outside the two vision towers (their names come from the torch module path).
FP32_PREFIXES = ("/task_mlp/", "/prompt_mlp/", "/head/")


def _nodes_to_keep_fp32(model) -> list[str]:
    """Head Gemms, and MatMuls whose second input is not a constant weight (attention's QKᵀ and AV)."""
    weights = {t.name for t in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        if node.name.startswith(FP32_PREFIXES) or node.input[1] not in weights:
            keep.append(node.name)
    return keep


def cpu_isa() -> list[str]:
    """The x86 ISA extensions that change int8 kernels (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted({"avx2", "avx512f", "avx512_vnni", "avx_vnni"} & set(flags))


def quantize_bundle(src: str | Path, out: str | Path, *, per_channel: bool = True, force: bool = False) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def make(src_onnx: Path, dst_onnx: Path) -> None:
        import logging

        import onnx

        keep = _nodes_to_keep_fp32(onnx.load(str(src_onnx), load_external_data=False))
        details["fp32_nodes"] = len(keep)
        logging.disable(logging.WARNING)  # the quantizer's advice on the root logger is not for our users
        try:
            quantize_dynamic(str(src_onnx), str(dst_onnx), weight_type=QuantType.QInt8, per_channel=per_channel,
                             reduce_range=True, op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=keep,
                             extra_options={"MatMulConstBOnly": True})
        finally:
            logging.disable(logging.NOTSET)

    details = {"method": "onnxruntime dynamic", "ops": QUANTIZED_OPS,
               "weights": ("int8 per-channel" if per_channel else "int8 per-tensor") + ", reduce_range (7-bit)",
               "fp32": "heads (task_mlp, prompt_mlp, head) and activation×activation MatMuls",
               "built_on": {"machine": platform.machine(), "isa": cpu_isa()}}
    return derive_bundle(src, out, precision="int8", encoder_file=INT8_ENCODER, make_encoder=make,
                         details_key="quantization", details=details, force=force)
