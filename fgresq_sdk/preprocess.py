"""Decode and normalise images exactly as the released FGResQ does, without torch.

The official pipeline is PIL decode → .convert('RGB') → torchvision Resize((224, 224)) → ToTensor →
Normalize(CLIP mean/std). On a PIL image torchvision's Resize is PIL's own bilinear resize (which
antialiases by widening its filter when downscaling), so calling PIL directly reproduces it bit for bit.
"""
from __future__ import annotations

import io
import os
import stat
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import CLIP_MEAN, CLIP_STD
from .errors import InputError

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

# Images above this many pixels are refused before decoding (decompression bombs). 2×PIL's default.
MAX_PIXELS = 2 * 89_478_485
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}


def _to_rgb(img: Image.Image) -> Image.Image:
    """Bring any PIL mode to 8-bit RGB; 16-bit data is scaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0
        elif img.mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    # Like the official pipeline: alpha is dropped, CMYK/YCbCr/L/LA/P converted by PIL.
    return img.convert("RGB") if img.mode != "RGB" else img


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    if arr.size == 0 or arr.ndim not in (2, 3) or min(arr.shape[:2]) == 0:
        raise InputError(name, f"array of shape {arr.shape} is not an image (expected H×W, H×W×3 or H×W×4)")
    if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4):
        raise InputError(name, f"array with {arr.shape[2]} channels (expected 1, 3 or 4)")
    if arr.dtype == np.uint16:
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InputError(name, f"array dtype {arr.dtype} (expected uint8 or uint16)")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return _to_rgb(Image.fromarray(np.ascontiguousarray(arr)))


def load_image(src: ImageInput, name: str | None = None) -> Image.Image:
    """Open one input as an 8-bit RGB PIL image with its EXIF orientation applied.

    Raises InputError (naming the input) for anything that is not a usable image.
    """
    label = name if name is not None else ("<array>" if isinstance(src, np.ndarray) else
                                           "<image>" if isinstance(src, Image.Image) else src)
    if isinstance(src, np.ndarray):
        return _from_array(src, label)
    if isinstance(src, Image.Image):
        if src.width == 0 or src.height == 0:
            raise InputError(label, "image has zero width or height")
        return _upright_rgb(src, label)
    fp = io.BytesIO(src) if isinstance(src, bytes) else _open_file(src, label)
    with fp:
        return _upright_rgb(_decode(fp, label), label)


def _upright_rgb(img: Image.Image, label: object) -> Image.Image:
    """EXIF orientation applied, then 8-bit RGB; a mode PIL cannot convert is that input's error."""
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # a malformed EXIF block must not cost the image itself
        pass
    try:
        return _to_rgb(img)
    except (OSError, ValueError) as exc:
        raise InputError(label, f"cannot convert image mode {img.mode} to RGB ({exc})") from None


def _open_file(path: str | os.PathLike, label: object):
    """Open a path for reading, refusing directories and non-regular files (a FIFO would block forever)."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(label, "is a directory, not an image")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(label, "not a regular file")
        return open(path, "rb")
    except PermissionError:
        raise InputError(label, "permission denied") from None
    except FileNotFoundError:
        raise InputError(label, "no such file") from None
    except OSError as exc:
        raise InputError(label, f"cannot open ({exc.strerror or exc})") from None


# catch_warnings() swaps the process-wide filter list and puts its snapshot back on exit: two decode
# threads inside it at once put back each other's snapshots and leave a filter installed for good.
_WARNINGS_LOCK = threading.Lock()


@contextmanager
def _bomb_warning_silenced():
    """PIL warns above its own limit, but MAX_PIXELS (checked by us, with a clear message) decides.

    Held only around header parsing and around decoding images above PIL's limit (rare, and huge:
    decoding those one at a time also bounds memory).
    """
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _over_pil_limit(pixels: int) -> bool:
    limit = Image.MAX_IMAGE_PIXELS
    return limit is not None and pixels > limit


def _decode(fp: Any, label: object) -> Image.Image:
    """Parse the header, refuse bombs before any pixel is decoded, then decode; every failure → InputError."""
    try:
        with _bomb_warning_silenced():
            img = Image.open(fp)
        w, h = img.size
        if w == 0 or h == 0:
            raise InputError(label, "image has zero width or height")
        if w * h > MAX_PIXELS:
            raise InputError(label, f"image too large ({w}×{h} pixels > {MAX_PIXELS} limit; "
                                    "possible decompression bomb)")
        if _over_pil_limit(w * h):
            with _bomb_warning_silenced():
                img.load()
        else:
            img.load()
        return img
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(label, f"image too large, refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        size = _size_of(fp)
        why = "empty file (0 bytes)" if size == 0 else "not a recognised image format"
        raise InputError(label, why) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower() or isinstance(exc, EOFError):
            msg = f"truncated or corrupted image data ({msg})"
        else:
            msg = f"cannot decode image ({msg})"
        raise InputError(label, msg) from None
    except MemoryError:
        raise
    except Exception as exc:  # PIL's plugins raise assorted types (struct.error, IndexError…) on malformed files
        raise InputError(label, f"cannot decode image ({type(exc).__name__}: {exc})") from None


def _size_of(fp: Any) -> int:
    try:
        fp.seek(0, io.SEEK_END)
        return fp.tell()
    except Exception:
        return -1


def normalize(img: Image.Image, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """Resize (aspect ignored, bilinear + antialias) and CLIP-normalise to a float32 [3, size, size]."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess(src: ImageInput, cfg_pre: dict | None = None, name: str | None = None) -> np.ndarray:
    """Input → normalised tensor as the model expects it."""
    pre = cfg_pre or {}
    return normalize(load_image(src, name), int(pre.get("size", 224)),
                     pre.get("mean", CLIP_MEAN), pre.get("std", CLIP_STD))


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES
