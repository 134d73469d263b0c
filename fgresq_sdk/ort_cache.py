"""A per-user cache of ONNX Runtime's optimized encoder graphs, so a second process skips graph optimization.

The first CPU session of an encoder is created with `optimized_model_filepath`: ONNX Runtime writes the
graph it will run (fusions, constant folding, NCHWc layouts) as `graph.onnx` plus its weights as
`weights.bin` (external data). Later sessions load that graph with optimization off; the weights are
memory-mapped from the file instead of being parsed and copied out of a protobuf, which also lowers the
resident memory. The optimized graph depends on the CPU (NCHWc block sizes follow the SIMD width), so an
entry is keyed by the encoder's sha256, the ONNX Runtime version and the CPU's SIMD flags (cpu.py).

The cache is input like any other file, so it is not trusted by location:
- it lives in `<cache_dir()>/ort-graphs/` (verify_cache.cache_dir), created 0700; a folder not owned by
  this user or writable by others is not used at all (the weights are opened by name there, which only a
  private folder makes safe);
- `index.json` records each entry's files with their sha256; both files are checked against it before
  every load, like bundle files (the verification cache skips re-hashing an unchanged file: same device,
  inode, size, mtime and ctime), and their identity is checked again once the session exists. An entry
  that fails is deleted and rebuilt from the bundle;
- the bundle's own encoder is still verified on every load (a corrupted bundle is refused whether or not
  a cached graph exists), and bundles opened with verify=False never use the cache.
At most MAX_ENTRIES graphs are kept (least recently used go first). FGRESQ_ORT_CACHE=0 turns it off.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .bundle import sha256_fd
from .cpu import simd_flags
from .verify_cache import VerifyCache, cache_dir, file_identity

CACHE_SUBDIR = "ort-graphs"
INDEX_FILE = "index.json"
GRAPH_FILE = "graph.onnx"
WEIGHTS_FILE = "weights.bin"
MAX_ENTRIES = 4
CACHE_FORMAT = 1
STALE_STAGING_S = 3600  # leftovers of a process that died while writing


def enabled() -> bool:
    return os.environ.get("FGRESQ_ORT_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_key(encoder_sha256: str, ort_version: str, optimization: str) -> str:
    """One entry per (encoder bytes, ONNX Runtime version, optimization level, CPU SIMD flags)."""
    ident = {"format": CACHE_FORMAT, "encoder_sha256": encoder_sha256, "onnxruntime": ort_version,
             "optimization": optimization, "simd": simd_flags(), "provider": "CPUExecutionProvider"}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def _private_dir(path: Path) -> bool:
    """Owned by this user and not writable by group or others (files in it may be opened by name)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    import stat

    owner_ok = not hasattr(os, "geteuid") or st.st_uid == os.geteuid()
    return stat.S_ISDIR(st.st_mode) and owner_ok and not (st.st_mode & 0o022)


class GraphCache:
    def __init__(self, root: Path | None = None, verify_cache: VerifyCache | None = None):
        self.root = Path(root) if root is not None else cache_dir() / CACHE_SUBDIR
        self.verify_cache = verify_cache if verify_cache is not None else VerifyCache.default()

    # -- the folder and its index ------------------------------------------------------------------------
    def ready(self) -> bool:
        """Create the folder (0700) if needed; False when it cannot be used safely."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:
            return False
        return _private_dir(self.root)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not Linux/macOS: the cache is not used there anyway
            yield
            return
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read_index(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((self.root / INDEX_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if (not isinstance(data, dict) or data.get("format") != CACHE_FORMAT
                or not isinstance(data.get("entries"), dict)):
            return {}
        return {k: v for k, v in data["entries"].items() if isinstance(v, dict)}

    def _write_index(self, entries: dict[str, dict[str, Any]]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".index.", dir=self.root)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"format": CACHE_FORMAT, "entries": entries}, f, indent=1)
            os.replace(tmp, self.root / INDEX_FILE)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _drop(self, key: str) -> None:
        with self._locked():
            entries = self._read_index()
            entries.pop(key, None)
            self._write_index(entries)
        shutil.rmtree(self.root / key, ignore_errors=True)

    def _mark_failed(self, key: str, exc: BaseException) -> None:
        """Remember that this graph does not load, so no later process writes it again."""
        with self._locked():
            entries = self._read_index()
            entries[key] = {"failed": f"{type(exc).__name__}: {str(exc)[:200]}", "last_used": time.time()}
            self._write_index(entries)
        shutil.rmtree(self.root / key, ignore_errors=True)

    def may_write(self, key: str) -> bool:
        """False when an earlier graph for `key` could not be loaded back (writing it again would not help)."""
        return not self._read_index().get(key, {}).get("failed")

    # -- loading -------------------------------------------------------------------------------------------
    def _verified(self, fd: int, expected: str) -> str:
        """The identity of an open file whose sha256 is `expected` (raises ValueError otherwise)."""
        identity = file_identity(os.fstat(fd))
        digest = self.verify_cache.get(identity) or sha256_fd(fd)
        if digest != expected:
            raise ValueError("sha256 mismatch")
        self.verify_cache.put(identity, digest)
        return identity

    def load(self, key: str, make_session: Callable[[bytes, str], Any]) -> Any | None:
        """A session from the entry `key` (`make_session(graph_bytes, weights_folder)`), or None when there is
        no valid entry (a failing one is removed)."""
        if not self.ready():
            return None
        entry = self._read_index().get(key)
        if entry is None or entry.get("failed"):
            return None
        folder = self.root / key
        session = None
        try:
            if not _private_dir(folder):
                raise ValueError("entry folder is not private")
            flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
            gfd = os.open(folder / GRAPH_FILE, flags)
            try:
                wfd = os.open(folder / WEIGHTS_FILE, flags)
                try:
                    graph_id = file_identity(os.fstat(gfd))
                    graph = os.pread(gfd, os.fstat(gfd).st_size, 0)  # small: hashed and used from memory
                    if hashlib.sha256(graph).hexdigest() != entry["graph_sha256"]:
                        raise ValueError("sha256 mismatch")
                    weights_id = self._verified(wfd, entry["weights_sha256"])
                    try:
                        session = make_session(graph, str(folder))
                    except Exception as exc:  # noqa: BLE001 - ONNX Runtime cannot load its own graph here
                        self._mark_failed(key, exc)
                        return None
                    # ONNX Runtime opened the weights by name: they must still be the file that was checked.
                    if (file_identity(os.fstat(wfd)) != weights_id or file_identity(os.fstat(gfd)) != graph_id
                            or file_identity(os.stat(folder / WEIGHTS_FILE, follow_symlinks=False)) != weights_id):
                        raise ValueError("entry changed while it was loaded")
                finally:
                    os.close(wfd)
            finally:
                os.close(gfd)
        except Exception:  # noqa: BLE001 - any failure: the entry is not used, and is rebuilt
            self._drop(key)
            return None
        with self._locked():
            entries = self._read_index()
            if key in entries:
                entries[key]["last_used"] = time.time()
                self._write_index(entries)
        return session

    # -- writing ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def staging(self) -> Iterator[Path | None]:
        """A private folder for ONNX Runtime to write graph.onnx + weights.bin into (None: cache unusable)."""
        if not self.ready():
            yield None
            return
        folder = self.root / f".staging-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            folder.mkdir(mode=0o700)
        except OSError:
            yield None
            return
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def commit(self, key: str, staged: Path, record: dict[str, Any]) -> bool:
        """Hash what ONNX Runtime wrote in `staged`, move it into place as entry `key` and index it."""
        graph, weights = staged / GRAPH_FILE, staged / WEIGHTS_FILE
        try:
            if not graph.is_file():
                return False
            if not weights.exists():  # a graph without large initializers: nothing went to external data
                weights.touch(mode=0o600)
            for p in (graph, weights):
                os.chmod(p, 0o600)
            digests = {}
            for name, p in (("graph_sha256", graph), ("weights_sha256", weights)):
                fd = os.open(p, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                try:
                    digests[name] = sha256_fd(fd)
                    identity = file_identity(os.fstat(fd))
                finally:
                    os.close(fd)
                digests[name.replace("sha256", "identity")] = identity
            with self._locked():
                target = self.root / key
                entries = self._read_index()
                if key in entries and not entries[key].get("failed") and target.is_dir():
                    return True  # another process stored the same graph meanwhile: keep theirs (it may be in use)
                shutil.rmtree(target, ignore_errors=True)
                os.rename(staged, target)  # the files' identities (inode, ctime) do not change with their folder
                entries[key] = {**record, "graph_sha256": digests["graph_sha256"],
                                "weights_sha256": digests["weights_sha256"],
                                "bytes": (target / GRAPH_FILE).stat().st_size + (target / WEIGHTS_FILE).stat().st_size,
                                "created": time.time(), "last_used": time.time()}
                self._evict(entries, keep=key)
                self._write_index(entries)
            self.verify_cache.put(digests["graph_identity"], digests["graph_sha256"])
            self.verify_cache.put(digests["weights_identity"], digests["weights_sha256"])
            return True
        except OSError:
            return False

    def _evict(self, entries: dict[str, dict[str, Any]], keep: str) -> None:
        """Keep the MAX_ENTRIES most recently used entries; remove folders nobody indexes (old staging too)."""
        order = sorted(entries, key=lambda k: float(entries[k].get("last_used", 0) or 0), reverse=True)
        for k in order[MAX_ENTRIES:]:
            if k != keep:
                entries.pop(k, None)
        now = time.time()
        try:
            children = list(self.root.iterdir())
        except OSError:
            return
        for child in children:
            if child.name in entries or not child.is_dir() or child.is_symlink():
                continue
            try:
                age = now - child.stat().st_mtime
            except OSError:
                continue
            if not child.name.startswith(".staging-") or age > STALE_STAGING_S:
                shutil.rmtree(child, ignore_errors=True)
