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

# write_manifest sets these itself; every other key of a source manifest is carried over by `amended_bundle`
REWRITTEN_KEYS = {"format", "format_version", "name", "created", "source", "precision", "config", "preprocess", "files"}
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


def amended_bundle(bundle, out: str | Path, *, files: dict[str, tuple[str, bytes]], section: tuple[str, dict],
                   source_note: str, force: bool = False) -> Path:
    """A copy of loaded `bundle` (same precision, every file verified as copied) in which the roles of `files`
    (role -> (file name, bytes)) are written anew or added, with manifest section `section` = (key, value) and
    "; `source_note`" after its source. Why one place: the post-training steps that amend a finished bundle
    (the naturalness term, the comparison calibration) must carry every other key and file alike."""
    out = check_out_dir(out, force)
    m = bundle.manifest
    with staged_bundle(out, force) as tmp:
        names = {}
        for role, entry in m["files"].items():
            dst = tmp / entry["path"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            if role not in files:
                copy_verified(bundle, role, dst)
            names[role] = entry["path"]
        for role, (name, data) in files.items():
            names[role] = names.get(role, name)
            (tmp / names[role]).write_bytes(data)
        extra = {k: v for k, v in m.items() if k not in REWRITTEN_KEYS}
        extra[section[0]] = section[1]
        write_manifest(tmp, name=bundle.name, config=bundle.config, files=names, precision=bundle.precision,
                       source=f"{m.get('source')}; {source_note}", extra=extra)
    return out
