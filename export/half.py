"""fp16 bundles for GPUs: the encoder graph converted to float16 with float32 inputs/outputs kept.

Keeping fp32 I/O lets the same preprocessing and numpy heads serve every precision. Normalisation
reductions, softmax and sigmoid stay fp32 inside the graph (BLOCKED_OPS): their fp16 accumulation is
where the accuracy goes.
"""
from __future__ import annotations

from pathlib import Path

from .derive import derive_bundle

FP16_ENCODER = "encoder.fp16.onnx"
BLOCKED_OPS = ["ReduceMean", "Pow", "Sqrt", "Softmax", "Sigmoid"]


def half_bundle(src: str | Path, out: str | Path, *, force: bool = False) -> Path:
    def make(src_onnx: Path, dst_onnx: Path) -> None:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        half = convert_float_to_float16(onnx.load(str(src_onnx)), keep_io_types=True, op_block_list=BLOCKED_OPS)
        onnx.save(half, str(dst_onnx))

    details = {"method": "onnxruntime float16 converter, fp32 I/O", "fp32_ops": BLOCKED_OPS}
    return derive_bundle(src, out, precision="fp16", encoder_file=FP16_ENCODER, make_encoder=make,
                         details_key="conversion", details=details, force=force)
