"""Writing bundles so that the only thing an export can ever replace is another bundle.

Every writer of bundles (export, import-official, int8/fp16/TensorRT derivations) goes through here:
`check_out_dir` refuses targets that hold anything but a bundle (`.`, an ancestor of the current
folder, a non-empty folder without `model.json`, a bundle folder with files its manifest does not
list), before any slow work starts. `staged_bundle` writes into a hidden sibling folder and swaps it
into place at the end: with Linux's renameat2(RENAME_EXCHANGE) the swap is one atomic step, elsewhere
two renames run with SIGINT/SIGTERM held back, so an interrupt at any moment leaves either the old or
the new bundle at the target, and the old one is deleted only after the new one is in place.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from fgresq_sdk.bundle import MANIFEST, Bundle
from fgresq_sdk.errors import BundleError, display_path

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _listed_names(folder: Path) -> set[str] | None:
    """Top-level names a bundle folder's manifest accounts for, or None if it is not a bundle manifest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        return {MANIFEST} | {str(e["path"]).split("/")[0] for e in files.values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def refuse_protected_target(out: Path, what: str) -> None:
    """Targets no writer may ever replace: a symlink, the current folder or a parent of it, the home folder."""
    shown = display_path(out)
    if out.is_symlink():
        raise BundleError(f"{shown}: output is a symlink; pass the folder itself")
    real = Path(os.path.realpath(out))
    cwd = Path(os.path.realpath(os.getcwd()))
    if real == cwd or real in cwd.parents:
        raise BundleError(f"{shown}: refusing to write {what} over the current folder or one of its parents "
                          "(pass a new folder, e.g. --out my-bundle)")
    if real == Path(os.path.realpath(os.path.expanduser("~"))):
        raise BundleError(f"{shown}: refusing to write {what} over your home folder")


def check_out_dir(out: str | Path, force: bool) -> Path:
    """Refuse any target whose replacement could destroy something that is not a bundle (BundleError)."""
    out = Path(out)
    shown = display_path(out)
    refuse_protected_target(out, "a bundle")
    if not out.exists():
        return out
    if not out.is_dir():
        raise BundleError(f"{shown}: output exists and is not a folder")
    entries = sorted(e.name for e in os.scandir(out))
    if not entries:
        return out
    if MANIFEST not in entries:
        raise BundleError(f"{shown}: output folder is not empty and holds no {MANIFEST}: refusing to replace "
                          "it (only a model bundle can be replaced; pass a new or empty folder)")
    listed = _listed_names(out)
    if listed is None:
        raise BundleError(f"{shown}: its {MANIFEST} is not a bundle manifest: refusing to replace the folder")
    foreign = [e for e in entries if e not in listed]
    if foreign:
        raise BundleError(f"{shown}: folder holds files that are not part of its bundle "
                          f"({', '.join(foreign[:3])}{', …' if len(foreign) > 3 else ''}): refusing to replace it")
    if not force:
        raise BundleError(f"{shown}: output already holds a bundle (pass --force to replace it)")
    return out


@contextlib.contextmanager
def _signals_held():
    """Defer SIGINT/SIGTERM to the end of the block. Python runs signal handlers in the main thread
    only, so handlers that just take note are enough (a signal mask would not be: the kernel hands a
    process-directed signal to any thread that does not block it, e.g. a BLAS worker)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:
            handler = previous[pending[0]]
            if callable(handler):
                handler(pending[0], None)  # e.g. KeyboardInterrupt, now that the swap is complete
            elif handler == signal.SIG_DFL:
                signal.raise_signal(pending[0])


def _renameat2():
    """glibc's renameat2 (≥ 2.28), looked up in the running process's own symbols; None elsewhere."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2() if os.name == "posix" else None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where that is unavailable."""
    fn = _RENAMEAT2
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    return False  # EINVAL/ENOSYS (filesystem without exchange): the caller renames instead


def swap_into_place(new: Path, out: Path, moved_aside: list) -> None:
    """Put folder `new` at `out`; where the previous `out` went is appended to `moved_aside` before the
    held signals are let through, so the caller can delete it even when a Ctrl-C lands right after."""
    with _signals_held():
        if not os.path.lexists(out):
            os.rename(new, out)
        elif _exchange(new, out):
            moved_aside.append(new)  # the old bundle now sits at the staging name
        else:
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rmdir(old)
            os.rename(out, old)
            try:
                os.rename(new, out)
            except BaseException:
                os.rename(old, out)
                raise
            moved_aside.append(old)


def _relax_permissions(folder: Path) -> None:
    """mkdtemp makes a private folder; a bundle is meant to be shared like any installed file."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)


@contextlib.contextmanager
def staged_bundle(out: Path, force: bool = True):
    """Yield a hidden sibling folder to write a bundle into; swap it in at `out` only on success."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    moved_aside: list[Path] = []
    try:
        yield tmp
        _relax_permissions(tmp)
        check_out_dir(out, force)  # again: the folder may have changed while the bundle was written
        swap_into_place(tmp, out, moved_aside)
    finally:
        # The unfinished new bundle, or the replaced old one: never the bundle now at `out`.
        for leftover in [tmp, *moved_aside] if not moved_aside else moved_aside:
            if os.path.realpath(leftover) != os.path.realpath(out):
                shutil.rmtree(leftover, ignore_errors=True)


def copy_verified(bundle: Bundle, role: str, dst: Path) -> Path:
    """Copy one of `bundle`'s files, checked against its sha256 on the very bytes that are written."""
    dst.write_bytes(bundle.read(role))
    return dst
