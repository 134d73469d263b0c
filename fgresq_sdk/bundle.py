"""Model bundles: a folder with a `model.json` manifest and the files it lists, each with its sha256.

A bundle is what every backend loads: the ONNX graphs for the torch-free runtimes, the comparison
head's weights as a plain .npz for the all-pairs ranking in numpy, and (optionally) the safetensors
checkpoint for the torch backend. Files are verified on load so a corrupted download or a swapped
file is refused with its name instead of silently producing wrong scores.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError

MANIFEST = "model.json"
BUNDLE_FORMAT = "fgresq-bundle"
BUNDLE_VERSION = 1
# Roles a bundle may list; `encoder` and `heads` are required by every backend.
REQUIRED_ROLES = ("encoder", "heads")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    """A verified bundle on disk."""

    root: Path
    manifest: dict[str, Any]
    verified: bool = field(default=False)

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.config.get("name", "?"))

    @property
    def preprocess(self) -> dict[str, Any]:
        return self.manifest["preprocess"]

    @property
    def precision(self) -> str:
        return self.manifest.get("precision", "fp32")

    def has(self, role: str) -> bool:
        return role in self.manifest.get("files", {})

    def path(self, role: str) -> Path:
        files = self.manifest.get("files", {})
        if role not in files:
            raise BundleError(f"{self.root}: bundle has no '{role}' file "
                              f"(it lists: {', '.join(sorted(files)) or 'nothing'})")
        return self.root / files[role]["path"]

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.root),
            "name": self.name,
            "config": self.config.get("name"),
            "precision": self.precision,
            "created": self.manifest.get("created"),
            "source": self.manifest.get("source"),
            "files": {k: v["path"] for k, v in self.manifest.get("files", {}).items()},
        }


def load_bundle(root: str | Path, verify: bool = True) -> Bundle:
    """Read and (by default) checksum-verify a bundle folder."""
    root = Path(root)
    if root.is_file() and root.name == MANIFEST:
        root = root.parent
    if not root.exists():
        raise BundleError(f"{root}: model bundle not found")
    if not root.is_dir():
        raise BundleError(f"{root}: not a model bundle folder (pass the folder that holds {MANIFEST})")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root}: not a model bundle ({MANIFEST} missing)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath}: manifest is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{mpath}: not an fgresq model bundle manifest")
    if int(manifest.get("format_version", 0)) > BUNDLE_VERSION:
        raise BundleError(f"{mpath}: bundle format v{manifest.get('format_version')} is newer than this "
                          f"SDK supports (v{BUNDLE_VERSION}); upgrade fgresq-sdk")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{mpath}: manifest has no 'files' table")
    for role in REQUIRED_ROLES:
        if role not in files:
            raise BundleError(f"{mpath}: manifest lists no '{role}' file")
    for key in ("config", "preprocess"):
        if key not in manifest:
            raise BundleError(f"{mpath}: manifest has no '{key}'")
    bundle = Bundle(root=root, manifest=manifest)
    for role, entry in files.items():
        p = root / entry["path"]
        if not p.is_file():
            raise BundleError(f"{p}: file listed in {MANIFEST} as '{role}' is missing")
        if verify:
            digest = sha256_file(p)
            if digest != entry.get("sha256"):
                raise BundleError(f"{p}: sha256 mismatch (file is corrupted or was replaced; "
                                  f"expected {str(entry.get('sha256'))[:12]}…, got {digest[:12]}…)")
    bundle.verified = verify
    return bundle


def write_manifest(root: Path, *, name: str, config: dict[str, Any], files: dict[str, str],
                   precision: str, source: str, extra: dict[str, Any] | None = None) -> Path:
    """Write model.json listing `files` (role → file name in root) with their sha256."""
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "precision": precision,
        "config": config,
        "preprocess": config["preprocess"],
        "files": {role: {"path": fname, "sha256": sha256_file(root / fname),
                         "bytes": (root / fname).stat().st_size}
                  for role, fname in sorted(files.items())},
    }
    manifest.update(extra or {})
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def default_bundle_path() -> Path | None:
    """The embedded default model shipped in the wheel, if this build has one."""
    from importlib import resources

    root = Path(str(resources.files("fgresq_sdk.default_model")))
    return root if (root / MANIFEST).is_file() else None
