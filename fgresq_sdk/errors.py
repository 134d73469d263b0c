"""Error types the CLI turns into one-line messages (never tracebacks)."""
from __future__ import annotations

import os


def display_path(path: object) -> str:
    """A printable form of a path, lossless for valid UTF-8 and readable for non-UTF-8 byte names."""
    if isinstance(path, (str, bytes, os.PathLike)):
        raw = os.fsencode(path)
        return raw.decode("utf-8", "backslashreplace")
    return str(path)


class FGResQError(Exception):
    """Base class for errors that are the user's to fix (bad input, bad bundle, bad option)."""


class InputError(FGResQError):
    """One input image could not be used; the others are still processed."""

    def __init__(self, path: object, reason: str):
        self.path = display_path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class BundleError(FGResQError):
    """A model bundle is missing, incomplete, corrupted or of an unsupported format."""


class BackendError(FGResQError):
    """A requested backend is not installed or cannot run this bundle here."""
