"""Run the `fgresq-sdk` executable the way a user does, and check what every run must satisfy."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CLI = Path(sys.executable).parent / "fgresq-sdk"


@dataclass
class Run:
    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.err.splitlines()

    def json(self) -> dict:
        return json.loads(self.out)


def snapshot(root: Path) -> dict:
    """Every entry under root with what a write would change (size, mtime, inode, mode)."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for n in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, n))
            snap[os.path.join(dirpath, n)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    return snap


def run_cli(*args, cwd: Path, watch: Path | None = None, preexec_fn=None) -> Run:
    """Run fgresq-sdk; output must be valid UTF-8 without any traceback, and `watch` must stay untouched."""
    before = snapshot(watch) if watch is not None else None
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    p = subprocess.run([os.fsencode(CLI), *[a if isinstance(a, bytes) else os.fsencode(str(a)) for a in args]],
                       cwd=cwd, capture_output=True, timeout=60, env=env, preexec_fn=preexec_fn)
    run = Run(p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8"))
    assert "Traceback" not in run.out + run.err, run.err
    if watch is not None:
        assert snapshot(watch) == before, "the CLI wrote to or changed the input folder"
    return run
