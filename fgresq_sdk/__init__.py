"""fgresq-sdk: score, compare and rank restored images with FGResQ.

Importing this package never imports torch; the torch backend, training and export load it on demand.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import BackendError, BundleError, FGResQError, InputError  # noqa: E402

__all__ = ["Scorer", "BackendError", "BundleError", "FGResQError", "InputError", "__version__"]


def __getattr__(name: str):
    if name == "Scorer":
        from .scorer import Scorer

        return Scorer
    raise AttributeError(name)
