"""Decode images and turn them into model tensors as the bundle's preprocess spec says, without torch.

Decoding: any input → 8-bit RGB with EXIF orientation applied (grey replicated, alpha dropped, 16-bit
scaled). The tensor then follows the bundle's `preprocess` section (docs/preprocess-spec.md, parsed by
`PreprocessSpec.from_dict`): resize (`bilinear-antialias` = Pillow's BILINEAR, which widens its filter when
downscaling, i.e. what torchvision's Resize does on a PIL image; or `bilinear-cv2` = OpenCV's INTER_LINEAR,
reimplemented here in numpy) → optional torchvision-style center crop → /255, CLIP mean/std, CHW float32.
The legacy form (`{"size": S, ...}` without resize/crop) is Pillow bilinear to S×S, bit for bit as before.
"""
from __future__ import annotations

import io
import json
import math
import os
import stat
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BundleError, InputError, display_path

# OpenAI CLIP's normalisation: the legacy spec's default and what every shipped config names.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

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


# ---------------------------------------------------------------------------------------------------------
# The bundle's preprocessing spec (docs/preprocess-spec.md): resize → optional crop → normalise.

RESIZE_METHODS = ("bilinear-antialias", "bilinear-cv2")
CROP_METHODS = ("center",)
_LEGACY_KEYS = ("interpolation", "antialias")


@dataclass(frozen=True)
class Step:
    """One geometric step of the spec: a method and a [width, height] size."""

    method: str
    size: tuple[int, int]  # (width, height)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "size": [self.size[0], self.size[1]]}


@dataclass(frozen=True)
class PreprocessSpec:
    """A validated, normalised `preprocess` section. Build it with `from_dict` (or `legacy`).

    `resize` is always set (the legacy form, without resize/crop keys, becomes bilinear-antialias to
    size×size); `crop` is None when there is none. A crop needs a resize it fits in, and the last step
    gives size×size.
    """

    size: int = 224
    resize: Step = Step("bilinear-antialias", (224, 224))
    crop: Step | None = None
    mean: tuple[float, float, float] = tuple(CLIP_MEAN)
    std: tuple[float, float, float] = tuple(CLIP_STD)

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def legacy(cls, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> "PreprocessSpec":
        """What every bundle did before the spec: Pillow bilinear (antialiased) to size×size, no crop."""
        return cls.from_dict({"size": size, "mean": [float(x) for x in mean], "std": [float(x) for x in std]})

    @classmethod
    def from_dict(cls, d: Any, where: str | None = None) -> "PreprocessSpec":
        """Validate a `preprocess` dict and return its normalised spec.

        Raises BundleError (one line, prefixed with `where` when given) for anything this SDK does not
        know: a missing/odd type, an unknown resize or crop method, a crop that does not fit the resize,
        or a tensor that would not come out `size`×`size`.
        """
        try:
            return cls._parse(d)
        except BundleError as exc:
            raise BundleError(f"{where}: {exc}" if where else str(exc)) from None

    @classmethod
    def coerce(cls, pre: "PreprocessSpec | dict | None") -> "PreprocessSpec":
        """A spec from a spec, a preprocess dict, or None (the legacy default at 224)."""
        if isinstance(pre, PreprocessSpec):
            return pre
        return cls.from_dict({} if pre is None else pre)

    @classmethod
    def _parse(cls, d: Any) -> "PreprocessSpec":
        if not isinstance(d, dict):
            raise BundleError(f"preprocess must be an object (got {_json(d)})")
        size = d.get("size", 224)
        if not (_is_int(size) and size > 0):
            raise BundleError(f"preprocess.size must be a positive integer (got {_json(size)})")
        mean = _triple(d, "mean", CLIP_MEAN)
        std = _triple(d, "std", CLIP_STD)
        if not all(x > 0 for x in std):
            raise BundleError(f"preprocess.std must be positive (got {_json(d.get('std'))})")
        resize = _step(d, "resize", RESIZE_METHODS)
        crop = _step(d, "crop", CROP_METHODS)
        if resize is None and crop is None:
            # The legacy form ({"size": S, "interpolation": "bilinear", "antialias": true}; those two keys
            # are informational, as in the C++ reader).
            return cls(size, Step("bilinear-antialias", (size, size)), None, mean, std)
        if resize is None:
            raise BundleError("preprocess.crop needs a preprocess.resize (the crop must fit inside the "
                              "resized image)")
        if crop is not None and (crop.size[0] > resize.size[0] or crop.size[1] > resize.size[1]):
            raise BundleError(f"preprocess.crop.size {list(crop.size)} does not fit inside "
                              f"preprocess.resize.size {list(resize.size)}")
        final = crop if crop is not None else resize
        if final.size != (size, size):
            what = "crop" if crop is not None else "resize"
            raise BundleError(f"preprocess.{what}.size {list(final.size)} must be [{size}, {size}] "
                              f"(preprocess.size{'' if crop is not None else ', when there is no crop'})")
        return cls(size, resize, crop, mean, std)

    def to_dict(self) -> dict[str, Any]:
        """The explicit (non-legacy) form; `from_dict(spec.to_dict()) == spec`."""
        out: dict[str, Any] = {"size": self.size, "resize": self.resize.to_dict()}
        if self.crop is not None:
            out["crop"] = self.crop.to_dict()
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    # -- application -------------------------------------------------------------------------------------
    def view(self, img: Image.Image | np.ndarray) -> np.ndarray:
        """Steps 1–2 (resize, crop) on a decoded RGB image: a uint8 [size, size, 3] array."""
        arr = resize_image(img, self.resize.size, self.resize.method)
        return center_crop(arr, self.crop.size) if self.crop is not None else arr

    def tensor(self, img: Image.Image | np.ndarray) -> np.ndarray:
        """All three steps: a float32 [3, size, size] tensor."""
        return to_tensor(self.view(img), self.mean, self.std)


def _json(v: Any) -> str:
    try:
        return json.dumps(v)
    except (TypeError, ValueError):
        return repr(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _triple(d: dict, key: str, default) -> tuple[float, float, float]:
    v = d.get(key)
    if v is None:
        return tuple(float(x) for x in default)
    if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(_is_number(x) for x in v)):
        raise BundleError(f"preprocess.{key} must be a list of 3 numbers (got {_json(v)})")
    return tuple(float(x) for x in v)


def _step(d: dict, key: str, methods: tuple[str, ...]) -> Step | None:
    """preprocess.<key> = {"method": one of `methods`, "size": [width, height]}; None when absent or null."""
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, dict):
        raise BundleError(f"preprocess.{key} must be an object {{\"method\": ..., \"size\": [width, height]}} "
                          f"(got {_json(v)})")
    method = v.get("method")
    if not isinstance(method, str):
        raise BundleError(f"preprocess.{key}.method must be a string (got {_json(method)})")
    if method not in methods:
        raise BundleError(f"preprocess.{key}.method {_json(method)} is unknown to this SDK "
                          f"(known: {', '.join(methods)})")
    size = v.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(x) and x > 0 for x in size)):
        raise BundleError(f"preprocess.{key}.size must be [width, height], two positive integers "
                          f"(got {_json(size)})")
    return Step(method, (int(size[0]), int(size[1])))


def resize_image(img: Image.Image | np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """Resize a decoded RGB image (PIL or uint8 array) to size = (width, height) with a spec method;
    uint8 [height, width, C]. A resize to the image's own size returns its pixels unchanged."""
    w, h = int(size[0]), int(size[1])
    if method == "bilinear-antialias":
        pil = img if isinstance(img, Image.Image) else Image.fromarray(np.ascontiguousarray(img))
        if pil.size != (w, h):
            pil = pil.resize((w, h), Image.BILINEAR)
        return np.asarray(pil, dtype=np.uint8)
    if method == "bilinear-cv2":
        return resize_bilinear_cv2(img, w, h)
    raise ValueError(f"unknown resize method {method!r} (known: {', '.join(RESIZE_METHODS)})")


# OpenCV's fixed-point INTER_LINEAR on 8-bit images (imgproc/src/resize.cpp, resizeGeneric_ with
# HResizeLinear<uchar,int,short,2048> and VResizeLinearVec_32s8u): 11-bit weights from float32 offsets,
# an exact int32 horizontal pass, and the SIMD vertical pass. OpenCV turns an exact 2× downscale into
# INTER_AREA; for uint8 that gives the same bytes as the formulas below ((a+b+c+d+2)>>2 either way).
_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def _cv2_taps(src: int, dst: int, clamp_weights: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and 11-bit weights (w0, w1) of each destination pixel along one axis."""
    scale = 1.0 / (dst / src)  # as OpenCV: scale = 1 / inv_scale, inv_scale = dst / src (doubles)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f)
    f = (f - s).astype(np.float32)
    s = s.astype(np.int64)
    if clamp_weights:  # x only: outside the image the border pixel is taken with weight 1
        out = (s < 0) | (s >= src - 1)
        s = np.clip(s, 0, src - 1)
        f = np.where(out, np.float32(0), f).astype(np.float32)
    # saturate_cast<short>(float * 2048): round half to even, as cvRound.
    w0 = np.clip(np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)), -32768, 32767).astype(np.int32)
    w1 = np.clip(np.rint(f * np.float32(_COEF_SCALE)), -32768, 32767).astype(np.int32)
    return np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1), w0, w1


def resize_bilinear_cv2(img: np.ndarray | Image.Image, width: int, height: int) -> np.ndarray:
    """`cv2.resize(arr, (width, height), interpolation=cv2.INTER_LINEAR)` for uint8 H×W or H×W×C, in numpy.

    Half-pixel centres, borders clamped, no antialiasing, 11-bit fixed-point weights. Only the source rows
    and columns that the output samples are read (from a PIL image, only those rows are even converted),
    so a 4000×3000 → 256×256 resize costs ~10 ms.
    """
    pil = isinstance(img, Image.Image)
    if not pil and (not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim not in (2, 3)):
        what = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"resize_bilinear_cv2 takes a PIL image or a uint8 H×W or H×W×C array (got {what})")
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"resize_bilinear_cv2: bad size {width}×{height}")
    src_w, src_h = img.size if pil else (img.shape[1], img.shape[0])
    if (src_w, src_h) == (width, height):
        return np.array(img, dtype=np.uint8)  # cv2.resize copies
    x0, x1, a0, a1 = _cv2_taps(src_w, width, clamp_weights=True)
    y0, y1, b0, b1 = _cv2_taps(src_h, height, clamp_weights=False)
    if pil:
        rows, y0, y1 = _pil_rows(img, y0, y1)
    else:
        rows = img
    grey = rows.ndim == 2
    a = rows[:, :, None] if grey else rows
    a0, a1 = a0[None, :, None], a1[None, :, None]
    # Horizontal pass (exact int32), only on the two source rows and columns each output pixel reads.
    ry0, ry1 = y0[:, None], y1[:, None]
    s0 = a[ry0, x0].astype(np.int32) * a0 + a[ry0, x1].astype(np.int32) * a1
    s1 = a[ry1, x0].astype(np.int32) * a0 + a[ry1, x1].astype(np.int32) * a1
    # Vertical pass as OpenCV's SIMD code: int16 (S >> 4), mulhi by the weight, sum, (+2) >> 2, saturate.
    # (Its scalar form, (b0*S0 + b1*S1 + 2^21) >> 22, can differ by 1 level.)
    s0 = np.clip(s0 >> 4, -32768, 32767)
    s1 = np.clip(s1 >> 4, -32768, 32767)
    v = ((s0 * b0[:, None, None]) >> 16) + ((s1 * b1[:, None, None]) >> 16)
    out = np.clip((np.clip(v, -32768, 32767) + 2) >> 2, 0, 255).astype(np.uint8)
    return out[:, :, 0] if grey else out


def _pil_rows(img: Image.Image, y0: np.ndarray, y1: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The source rows the taps use, as one uint8 array (converting a whole large image costs far more than
    the resize), and the taps re-indexed into it."""
    need = np.unique(np.concatenate([y0, y1]))
    if len(need) * 2 >= img.height:
        return np.asarray(img, dtype=np.uint8), y0, y1
    runs = np.split(need, np.flatnonzero(np.diff(need) != 1) + 1)
    rows = np.concatenate([np.asarray(img.crop((0, int(r[0]), img.width, int(r[-1]) + 1)), dtype=np.uint8)
                           for r in runs])
    return rows, np.searchsorted(need, y0), np.searchsorted(need, y1)


def center_crop(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torchvision's CenterCrop of a crop that fits: top = int(round((h - ch) / 2)), likewise left."""
    cw, ch = int(size[0]), int(size[1])
    h, w = arr.shape[:2]
    if cw > w or ch > h:
        raise ValueError(f"center_crop: {cw}×{ch} does not fit in {w}×{h}")
    top = int(round((h - ch) / 2.0))
    left = int(round((w - cw) / 2.0))
    return arr[top:top + ch, left:left + cw]


def to_tensor(arr: np.ndarray | Image.Image, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """Step 3: uint8 H×W×3 → /255, (x - mean) / std per channel, float32 [3, H, W]."""
    x = np.asarray(arr, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def normalize(img: Image.Image | np.ndarray, size: "int | PreprocessSpec | dict" = 224, mean=CLIP_MEAN,
              std=CLIP_STD) -> np.ndarray:
    """A decoded RGB image → float32 [3, S, S].

    `size` an int: the legacy form (Pillow bilinear + antialias to size×size, then mean/std), as always.
    `size` a PreprocessSpec or a preprocess dict: that spec (its own mean/std; `mean`/`std` are ignored).
    """
    if isinstance(size, (PreprocessSpec, dict)):
        return PreprocessSpec.coerce(size).tensor(img)
    return PreprocessSpec.legacy(int(size), mean, std).tensor(img)


def preprocess(src: ImageInput, cfg_pre: "PreprocessSpec | dict | None" = None, name: str | None = None) -> np.ndarray:
    """Input → normalised float32 [3, S, S] tensor, following the bundle's preprocess spec (a dict or a
    PreprocessSpec; None = the legacy default at 224). A spec this SDK does not know → BundleError."""
    spec = PreprocessSpec.coerce(cfg_pre)
    return spec.tensor(load_image(src, name))


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def load_thumbnail(src: Any, side: int, name: str | None = None) -> Image.Image:
    """Decode one input to upright 8-bit RGB with its long side at most `side` px, for pictures a person
    looks at (reports, contact sheets), not for the model.

    JPEGs are decoded at reduced scale (DCT scaling), so thumbnails of large photos are cheap. The same
    size limit and error handling as the model's decoder apply. Raises InputError.
    """
    label = name if name is not None else display_path(src) if isinstance(src, (str, os.PathLike)) else "<image>"
    if not isinstance(src, (str, os.PathLike)):
        img = load_image(src, label)
    else:
        with _open_file(src, label) as fp:
            try:
                with _bomb_warning_silenced():  # a process-wide lock: held for the header only, as in preprocess
                    img = Image.open(fp)
                w, h = img.size
                if w == 0 or h == 0:
                    raise InputError(label, "image has zero width or height")
                if w * h > MAX_PIXELS:
                    raise InputError(label, "image too large")
                s = min(1.0, side / max(w, h))
                img.draft("RGB", (max(1, int(w * s + 0.999)), max(1, int(h * s + 0.999))))
                limit = Image.MAX_IMAGE_PIXELS
                if limit is not None and w * h > limit:
                    with _bomb_warning_silenced():
                        img.load()
                else:
                    img.load()
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001 - any decoder failure is this input's error
                raise InputError(label, f"cannot decode image ({type(exc).__name__}: {exc})") from None
        img = _upright_rgb(img, label)
    if max(img.size) > side:
        img = img.copy()
        img.thumbnail((side, side), Image.LANCZOS)
    return img
