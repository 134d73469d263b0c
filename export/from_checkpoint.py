"""`export --format onnx`: an fp32 bundle from our .safetensors checkpoint, or re-exported from a bundle's.

The input a user names is either a checkpoint file or a bundle folder; a bundle's checkpoint is read through
the bundle (verified against its sha256, read once), like every other bundle file, and a re-exported bundle keeps
its naturalness term.
"""
from __future__ import annotations

from pathlib import Path

from fgresq_sdk.errors import display_path

from .onnx_export import DEFAULT_OPSET, export_bundle


def export_checkpoint(src: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET, force: bool = False) -> Path:
    from fgresq_sdk.model import load_checkpoint

    ckpt = Path(src)
    bundle = None
    if ckpt.is_dir():
        from fgresq_sdk.bundle import load_bundle

        bundle = load_bundle(ckpt)
        ckpt = bundle.path("checkpoint")
        model = load_checkpoint(bundle.read("checkpoint"), name=display_path(ckpt))
    else:
        model = load_checkpoint(ckpt)
    return export_bundle(model, out, source=f"exported from {ckpt.name}", opset=opset, force=force, carry_from=bundle)
