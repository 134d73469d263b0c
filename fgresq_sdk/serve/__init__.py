"""Serving FGResQ over Triton's KServe v2 protocol: the wire contract shared by the server
(`fgresq_sdk.serve.server`, PyTriton), the client (`fgresq_sdk.client.RemoteScorer`) and the standard
Triton model repository (`fgresq_sdk.export.triton_repo`).

Model `fgresq` (dynamic batching):
    input  `image`    BYTES [1]   one encoded image file (PNG, JPEG, …) per batch item
    output `score`    FP32  [1]   quality in (0, 1); NaN for an item that failed
    output `features` FP32  [3D]  the quality features q the comparison head reads; NaN for a failed item
    output `error`    BYTES [1]   empty when the item succeeded, else a one-line reason

Model `fgresq_info` (no batching): input `request` BYTES [1] (any value), output `info` BYTES [1], a JSON
object with the bundle's identity (name, sha256 of every file, feature dim, preprocessing, score scale)
and its comparison head (`heads.npz`, base64), so that a client compares and ranks from N encodes and never
makes a per-pair call.

This module imports neither PyTriton nor tritonclient: the runtime install can read it.
"""
from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

MODEL = "fgresq"
INFO_MODEL = "fgresq_info"
INPUT = "image"
OUTPUTS = ("score", "features", "error")
INFO_INPUT = "request"
INFO_OUTPUT = "info"
PROTOCOL = "fgresq-serve"
PROTOCOL_VERSION = 1

# What a client may learn about an input it sent: the kind of failure, never the decoder's own wording
# (which can name server internals, e.g. the repr of an in-memory buffer).
MAX_REASON = 200
INTERNAL_ERROR = "internal server error while scoring this image"


def public_reason(reason: str) -> str:
    """The part of a per-input error reason before any parenthesised detail, on one line."""
    text = " ".join(str(reason).split())
    text = text.split(" (", 1)[0].strip() or "cannot use this image"
    return text[:MAX_REASON]


def bundle_identity(bundle) -> dict[str, Any]:
    """What identifies a served bundle to a client; no server path (only file names and hashes)."""
    m = bundle.manifest
    cfg = bundle.config
    return {
        "name": bundle.name,
        "created": m.get("created"),
        "precision": bundle.precision,
        "config": cfg.get("name"),
        "feature_dim": m.get("feature_dim"),
        "score_scale": cfg.get("score_scale", m.get("score_scale")),
        "preprocess": bundle.preprocess,
        "files": {role: {"path": e["path"], "sha256": e["sha256"]} for role, e in sorted(m["files"].items())},
    }


def info_payload(bundle, heads_npz: bytes, *, max_batch_size: int, backend: str) -> dict[str, Any]:
    """The `fgresq_info` answer: protocol, bundle identity and the comparison head's weights."""
    return {
        "protocol": PROTOCOL,
        "protocol_version": PROTOCOL_VERSION,
        "model": MODEL,
        "max_batch_size": int(max_batch_size),
        "backend": backend,
        "bundle": bundle_identity(bundle),
        "heads": {"sha256": hashlib.sha256(heads_npz).hexdigest(),
                  "npz_base64": base64.b64encode(heads_npz).decode("ascii")},
    }


def encode_info(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True).encode("utf-8")
