"""int8 bundles: ONNX Runtime dynamic quantization of the encoder graph.

Dynamic quantization stores MatMul/Gemm weights as int8 and quantizes activations per batch at run
time, so it needs no calibration set and keeps the bundle self-contained. The transformer blocks are
almost all MatMul, which is where the CPU time goes; the tiny comparison head stays fp32 (its weights
also stay fp32 in heads.npz for the numpy ranking). The torch checkpoint is not copied: it is the fp32
reference, not this model.
"""
from __future__ import annotations

from pathlib import Path

from .derive import derive_bundle

INT8_ENCODER = "encoder.int8.onnx"
QUANTIZED_OPS = ["MatMul", "Gemm"]


def quantize_bundle(src: str | Path, out: str | Path, *, per_channel: bool = True, force: bool = False) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def make(src_onnx: Path, dst_onnx: Path) -> None:
        import logging

        logging.disable(logging.WARNING)  # the quantizer's advice on the root logger is not for our users
        try:
            _quantize(src_onnx, dst_onnx)
        finally:
            logging.disable(logging.NOTSET)

    def _quantize(src_onnx: Path, dst_onnx: Path) -> None:
        quantize_dynamic(str(src_onnx), str(dst_onnx), weight_type=QuantType.QInt8, per_channel=per_channel,
                         op_types_to_quantize=QUANTIZED_OPS, extra_options={"MatMulConstBOnly": True})

    details = {"method": "onnxruntime dynamic", "ops": QUANTIZED_OPS,
               "weights": "int8 per-channel" if per_channel else "int8 per-tensor"}
    return derive_bundle(src, out, precision="int8", encoder_file=INT8_ENCODER, make_encoder=make,
                         details_key="quantization", details=details, force=force)
