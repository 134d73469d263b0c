"""Remembers which bundle files were already hashed, so a second load does not re-read 700 MB.

A file's identity is (device, inode, size, mtime, ctime). Writing a file changes its mtime and ctime,
and ctime cannot be set back by a user program (unlike mtime with `touch -r`), so a file that has been
changed in any way has a new identity and is hashed again: the cache can save work, never trust a
changed file. The cache is a small JSON file in the user's cache folder ($FGRESQ_CACHE_DIR, else
$XDG_CACHE_HOME/fgresq-sdk, else ~/.cache/fgresq-sdk); if it cannot be read or written the SDK simply
hashes every time.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

CACHE_FILE = "verified-files.json"
MAX_ENTRIES = 512


def file_identity(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def cache_dir() -> Path:
    if os.environ.get("FGRESQ_CACHE_DIR"):
        return Path(os.environ["FGRESQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fgresq-sdk"


class VerifyCache:
    """identity → sha256, persisted as JSON; lookups re-read the file so concurrent processes share it."""

    _lock = threading.Lock()

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def default(cls) -> "VerifyCache":
        return cls(cache_dir() / CACHE_FILE)

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} \
            if isinstance(data, dict) else {}

    def get(self, identity: str) -> str | None:
        return self._load().get(identity)

    def put(self, identity: str, digest: str) -> None:
        with self._lock:
            entries = self._load()
            entries.pop(identity, None)
            entries[identity] = digest  # dicts keep insertion order: the oldest entries go first
            while len(entries) > MAX_ENTRIES:
                entries.pop(next(iter(entries)))
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".verified.", dir=self.path.parent)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(entries, f)
                os.replace(tmp, self.path)
            except OSError:
                try:
                    os.unlink(tmp)  # type: ignore[possibly-undefined]
                except (OSError, NameError):
                    pass
