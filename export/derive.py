"""Derived bundles (int8, fp16): a new encoder graph made from an fp32 bundle's, the rest copied.

One place for the bookkeeping every derived precision shares: refuse non-fp32 sources, build in a
temporary sibling folder, copy the numpy heads (the comparison head included) and a naturalness term's pristine model, write the manifest with the
source encoder's sha256, and move the result into place only when complete.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from fgresq_sdk.bundle import load_bundle, write_manifest
from fgresq_sdk.errors import BundleError

from .onnx_export import carried_meta, copy_carried_files
from .staging import check_out_dir, copy_verified, staged_bundle

SOURCE_ENCODER = ".source-encoder.onnx"  # the verified fp32 graph, converted from, then removed


def derive_bundle(src: str | Path, out: str | Path, *, precision: str, encoder_file: str,
                  make_encoder: Callable[[Path, Path], None], details_key: str, details: dict,
                  force: bool = False) -> Path:
    """Write a `precision` copy of fp32 bundle `src` whose encoder is `make_encoder(src_onnx, dst_onnx)`."""
    bundle = load_bundle(src)
    if bundle.precision != "fp32":
        raise BundleError(f"{bundle.root}: can only derive {precision} from an fp32 bundle "
                          f"(this one is {bundle.precision})")
    out = check_out_dir(out, force)
    with staged_bundle(out, force) as tmp:
        # Converters read a path: hand them a private copy of the bytes that were verified.
        src_onnx = copy_verified(bundle, "encoder", tmp / SOURCE_ENCODER)
        make_encoder(src_onnx, tmp / encoder_file)
        src_onnx.unlink()
        files = {"encoder": encoder_file, **copy_carried_files(bundle, tmp)}
        m = bundle.manifest
        extra = carried_meta(m)
        extra[details_key] = {**details, "fp32_encoder_sha256": m["files"]["encoder"]["sha256"]}
        write_manifest(tmp, name=bundle.name, config=bundle.config,
                       files=files,
                       precision=precision, source=f"{m.get('source')}; {precision} from {bundle.root.name}",
                       extra=extra)
    return out
