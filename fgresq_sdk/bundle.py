"""Model bundles: a folder with a `model.json` manifest and the files it lists, each with its sha256.

A bundle is what every backend loads: the ONNX graphs for the torch-free runtimes, the comparison
head's weights as a plain .npz for the all-pairs ranking in numpy, and (optionally) the safetensors
checkpoint for the torch backend.

Trust rules (the C++ library in cpp_bindings/src/bundle.cpp enforces the same ones):
- the manifest is validated as a whole before anything is opened: types, a known `format_version`,
  every listed path relative and inside the bundle folder after resolving symlinks. A hostile or
  broken manifest is a `BundleError` (one line), never a traceback and never a file read from elsewhere;
- a file is verified only when a backend opens it (an ONNX Runtime run never reads the 1.4 GB torch
  checkpoint), and it is read once: the bytes that were hashed are the bytes handed to the runtime, so
  a file swapped between verification and use cannot slip through;
- a small verification cache (see verify_cache.py) skips re-hashing a file whose identity — device, inode,
  size, mtime and ctime — is unchanged since it was hashed; any change means hashing again.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import BundleError, display_path
from .naturalness import validate_section as validate_naturalness
from .preprocess import PreprocessSpec
from .verify_cache import VerifyCache, file_identity

MANIFEST = "model.json"
BUNDLE_FORMAT = "fgresq-bundle"
BUNDLE_VERSION = 1
# Roles a bundle may list; `encoder` and `heads` are required by every backend.
REQUIRED_ROLES = ("encoder", "heads")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def sha256_fd(fd: int, chunk: int = 1 << 22) -> str:
    """sha256 of an open descriptor's whole content (pread: the descriptor's offset is left alone)."""
    h = hashlib.sha256()
    offset = 0
    while True:
        block = os.pread(fd, chunk, offset)
        if not block:
            return h.hexdigest()
        h.update(block)
        offset += len(block)


def _no_constants(name: str):
    """NaN/Infinity are not JSON (the C++ reader refuses them too): one rule for both readers."""
    raise ValueError(f"{name} is not valid JSON")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_relative_path(mpath: Path, role: str, rel: Any) -> str:
    """A manifest path must name a file below the bundle folder, spelled portably."""
    where = f"{display_path(mpath)}: file entry '{role}'"
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{where} has no 'path' string")
    if "\\" in rel or "\x00" in rel or rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        raise BundleError(f"{where} path {rel!r} is not a relative path inside the bundle")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise BundleError(f"{where} path {rel!r} leaves the bundle or has empty/'.'/'..' parts")
    return rel


def validate_manifest(manifest: Any, mpath: Path) -> dict[str, Any]:
    """Check the manifest's shape; returns it unchanged. Every problem is one BundleError line."""
    where = display_path(mpath)
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{where}: not an fgresq model bundle manifest")
    version = manifest.get("format_version")
    if not _is_int(version):
        raise BundleError(f"{where}: format_version must be an integer (got {json.dumps(version)})")
    if version > BUNDLE_VERSION:
        raise BundleError(f"{where}: bundle format v{version} is newer than this SDK supports "
                          f"(v{BUNDLE_VERSION}); upgrade fgresq-sdk")
    if version != BUNDLE_VERSION:
        raise BundleError(f"{where}: unknown format_version {version} (this SDK reads v{BUNDLE_VERSION})")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{where}: manifest has no 'files' table")
    for role in REQUIRED_ROLES:
        if role not in files:
            raise BundleError(f"{where}: manifest lists no '{role}' file")
    for role, entry in files.items():
        if not isinstance(entry, dict):
            raise BundleError(f"{where}: file entry '{role}' is not an object")
        _check_relative_path(mpath, role, entry.get("path"))
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise BundleError(f"{where}: file entry '{role}' has no valid sha256 (64 lowercase hex digits)")
        if "bytes" in entry and not (_is_int(entry["bytes"]) and entry["bytes"] >= 0):
            raise BundleError(f"{where}: file entry '{role}' has a 'bytes' that is not a non-negative integer")
    for key in ("config", "preprocess"):
        if not isinstance(manifest.get(key), dict):
            raise BundleError(f"{where}: manifest has no '{key}' object")
    PreprocessSpec.from_dict(manifest["preprocess"], where=where)  # docs/preprocess-spec.md; unknown methods refused
    for k in (manifest.get("score_scale", 1.0), manifest["config"].get("score_scale", 1.0)):
        if not (_is_number(k) and 0 < k < float("inf")):
            raise BundleError(f"{where}: score_scale must be a positive number (got {json.dumps(k)})")
    if "precision" in manifest and not isinstance(manifest["precision"], str):
        raise BundleError(f"{where}: precision must be a string")
    validate_naturalness(manifest, where)  # the optional score term (naturalness.py)
    return manifest


@dataclass
class Bundle:
    """A bundle on disk whose manifest has been validated; its files are verified as they are read."""

    root: Path
    manifest: dict[str, Any]
    verify: bool = True
    cache: VerifyCache | None = field(default=None, repr=False)
    verified_roles: set = field(default_factory=set, repr=False)

    @property
    def verified(self) -> bool:
        """True when every listed file has been checked (see verify_all)."""
        return self.verify and self.verified_roles >= set(self.manifest.get("files", {}))

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
    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    @property
    def precision(self) -> str:
        return self.manifest.get("precision", "fp32")

    def has(self, role: str) -> bool:
        return role in self.manifest.get("files", {})

    def entry(self, role: str) -> dict[str, Any]:
        files = self.manifest.get("files", {})
        if role not in files:
            raise BundleError(f"{display_path(self.root)}: bundle has no '{role}' file "
                              f"(it lists: {', '.join(sorted(files)) or 'nothing'})")
        return files[role]

    def path(self, role: str) -> Path:
        """The file's path, checked to be a regular file inside the bundle after resolving symlinks."""
        p = self.root / self.entry(role)["path"]
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(p)
        if os.path.commonpath([real_root, real]) != real_root:
            raise BundleError(f"{display_path(p)}: file listed in {MANIFEST} as '{role}' resolves outside "
                              "the bundle folder (refused)")
        if not os.path.isfile(real):
            raise BundleError(f"{display_path(p)}: file listed in {MANIFEST} as '{role}' is missing")
        return p

    def read(self, role: str) -> bytes:
        """The file's bytes, read once and (unless verify=False) checked against the manifest's sha256."""
        p = self.path(role)
        try:
            with open(p, "rb") as f:
                before = file_identity(os.fstat(f.fileno()))
                data = f.read()
                after = file_identity(os.fstat(f.fileno()))
        except OSError as exc:
            raise BundleError(f"{display_path(p)}: cannot read ({exc.strerror})") from None
        if self.verify:
            self._check_digest(role, p, before, lambda: hashlib.sha256(data).hexdigest(), lambda: before == after)
        return data

    @contextlib.contextmanager
    def opened(self, role: str) -> Iterator[str]:
        """A path to hand a loader that reads large files itself (ONNX Runtime): `/proc/self/fd/N` of a
        descriptor that was verified, so the loader reads the very file that was hashed, without a
        second in-memory copy. The descriptor's identity is checked again once the loader is done: a file
        written to meanwhile is refused. Where /proc/self/fd does not exist, the bytes go through a
        private temporary copy instead."""
        p = self.path(role)
        if not os.path.isdir("/proc/self/fd"):
            import tempfile

            with tempfile.TemporaryDirectory(prefix="fgresq-") as tmp:
                copy = Path(tmp) / p.name
                copy.write_bytes(self.read(role))
                yield str(copy)
            return
        with self._descriptor(p) as fd:
            identity = file_identity(os.fstat(fd))
            if self.verify:
                self._check_fd(role, p, fd, identity)
            yield f"/proc/self/fd/{fd}"
            if file_identity(os.fstat(fd)) != identity:
                raise BundleError(f"{display_path(p)}: file changed while it was being loaded (refused)")

    def verify_file(self, role: str) -> None:
        """Check one file without keeping its bytes (used before handing a path to a converter)."""
        p = self.path(role)
        with self._descriptor(p) as fd:
            self._check_fd(role, p, fd, file_identity(os.fstat(fd)))

    @staticmethod
    @contextlib.contextmanager
    def _descriptor(p: Path) -> Iterator[int]:
        try:
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise BundleError(f"{display_path(p)}: cannot read ({exc.strerror})") from None
        try:
            yield fd
        finally:
            os.close(fd)

    def _check_fd(self, role: str, p: Path, fd: int, identity: str) -> None:
        self._check_digest(role, p, identity, lambda: sha256_fd(fd),
                           lambda: file_identity(os.fstat(fd)) == identity)

    def _check_digest(self, role: str, p: Path, identity: str, compute, unchanged) -> None:
        """The one sha256 check of a bundle file. The verification cache is consulted and fed only while
        `unchanged()` says the file still has the identity it had when it was opened."""
        expected = self.entry(role)["sha256"]
        known = self.cache.get(identity) if self.cache is not None and unchanged() else None
        digest = known or compute()
        if digest != expected:
            raise BundleError(f"{display_path(p)}: sha256 mismatch (file is corrupted or was replaced; "
                              f"expected {expected[:12]}…, got {digest[:12]}…)")
        if known is None and self.cache is not None and unchanged():
            self.cache.put(identity, digest)
        self.verified_roles.add(role)

    def verify_all(self) -> None:
        for role in self.manifest["files"]:
            self.verify_file(role)

    def describe(self) -> dict[str, Any]:
        return {
            "path": display_path(self.root),
            "name": self.name,
            "config": self.config.get("name"),
            "precision": self.precision,
            "created": self.manifest.get("created"),
            "source": self.manifest.get("source"),
            # where the weights were trained (bundles from scripts/make_default_model.sh): the CPU type on which
            # the recipe gives them again byte for byte
            "trained_on": (self.manifest.get("training") or {}).get("trained_on"),
            "files": {k: v["path"] for k, v in self.manifest.get("files", {}).items()},
        }


def load_bundle(root: str | Path, verify: bool = True, cache: VerifyCache | None | bool = True) -> Bundle:
    """Read and validate a bundle's manifest; files are checked when read (Bundle.read / verify_all).

    cache: True = the per-user verification cache, False/None = hash every file on every read.
    """
    root = Path(root)
    if root.is_file() and root.name == MANIFEST:
        root = root.parent
    if not root.exists():
        raise BundleError(f"{display_path(root)}: model bundle not found")
    if not root.is_dir():
        raise BundleError(f"{display_path(root)}: not a model bundle folder (pass the folder that holds {MANIFEST})")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{display_path(root)}: not a model bundle ({MANIFEST} missing)")
    try:
        manifest = json.loads(mpath.read_bytes().decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BundleError(f"{display_path(mpath)}: manifest is not valid JSON ({exc})") from None
    except OSError as exc:
        raise BundleError(f"{display_path(mpath)}: cannot read ({exc.strerror})") from None
    validate_manifest(manifest, mpath)
    bundle = Bundle(root=root, manifest=manifest, verify=verify,
                    cache=VerifyCache.default() if cache is True else (cache or None))
    for role in manifest["files"]:
        bundle.path(role)  # inside the folder and present, before any backend starts
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
    validate_manifest(manifest, root / MANIFEST)
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def default_bundle_path() -> Path | None:
    """The embedded default model shipped in the wheel, if this build has one."""
    from importlib import resources

    root = Path(str(resources.files("fgresq_sdk.default_model")))
    return root if (root / MANIFEST).is_file() else None
