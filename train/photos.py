"""Offline sources of clean photos for the synthetic FGRestore-style generator.

Sources (all offline, nothing is downloaded):

* ``skimage``: photos bundled inside scikit-image's ``skimage.data`` (no pooch download needed).
  Only natural photographs are used; gray ones are converted to RGB. ``skimage.data.cat`` is
  left out on purpose: it returns the very same array as ``chelsea`` (identical content would leak
  across a train/test split), and ``clock`` is left out because it is motion blurred.
* ``gnome``: Debian's ``gnome-backgrounds`` package (``apt-get install -y gnome-backgrounds``),
  raster files under ``/usr/share/backgrounds/gnome``. Used only when installed. Note that in
  current Debian (43.x) these are rendered abstract wallpapers, not photographs; light/dark
  variants (``*-l`` / ``*-d``) of one design count as one content and only the light one is used;
  SVGs and tiny placeholders (< 512 px) are skipped.
* any folder of clean photos: ``photos_from_folder(path)`` (recursive; jpg/jpeg/png/webp/bmp/tif).
* a catalogue of Debian wallpaper packages (``fgresq_sdk.train.debian_photos``, ``photos.json``):
  ``catalog_sources(path)``; names like ``plasma-Autumn``, ``ukui-calla``. mate-backgrounds is refused.

Each source is a list of ``(name, loader)`` where ``loader()`` returns the full-size ``uint8`` RGB
array. Names are stable, file-system safe ids (``skimage-astronaut``, ``gnome-adwaita``, and for a
folder the relative path without extension with separators replaced by ``_``); the generator uses
them as ``content_id``.

``split_photos(names, held_out_fraction=0.2)`` splits photos into train and held-out
deterministically by name: names are ranked by a salted SHA-256 of the name and the first
``round(n * fraction)`` (at least 1 when n >= 2) are held out. The result depends only on the set of
names, not their order. For the default skimage set it holds out
``skimage-brick`` and ``skimage-rocket`` (``python -m fgresq_sdk.train.photos --source skimage``
prints the split).
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
GNOME_DIR = Path("/usr/share/backgrounds/gnome")
SPLIT_SALT = "fgresq-photos-v1"

# skimage.data function -> name. All are files shipped inside the scikit-image wheel.
_SKIMAGE = {
    "astronaut": "astronaut",
    "camera": "camera",
    "chelsea": "chelsea",
    "coffee": "coffee",
    "coins": "coins",
    "rocket": "rocket",
    "motorcycle": "stereo_motorcycle",  # left view of the stereo pair
    "hubble": "hubble_deep_field",
    "moon": "moon",
    "brick": "brick",
    "grass": "grass",
    "gravel": "gravel",
}

Loader = Callable[[], np.ndarray]


def to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """Gray/RGBA/float arrays to contiguous uint8 RGB."""
    a = np.asarray(arr)
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.max(initial=0) <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] < 3:
        raise ValueError(f"expected an image array, got shape {a.shape}")
    return np.ascontiguousarray(a[..., :3])


def _fit(img: np.ndarray, max_side: int | None) -> np.ndarray:
    if not max_side or max(img.shape[:2]) <= max_side:
        return img
    im = Image.fromarray(img)
    im.thumbnail((max_side, max_side), Image.LANCZOS, reducing_gap=3.0)
    return np.asarray(im)


def _load_skimage(func: str) -> np.ndarray:
    from skimage import data

    arr = getattr(data, func)()
    if isinstance(arr, tuple):  # stereo_motorcycle -> (left, right, disparity)
        arr = arr[0]
    return to_rgb_uint8(arr)


def load_image_file(path: str | os.PathLike, max_side: int | None = None) -> np.ndarray:
    """Any image file to uint8 RGB (EXIF orientation applied), longest side at most ``max_side``."""
    with Image.open(path) as im:
        if max_side and im.format == "JPEG":
            im.draft("RGB", (max_side, max_side))  # fast DCT-domain downscale, still >= max_side
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im, dtype=np.float64)
            im = Image.fromarray(np.clip(a / max(a.max(), 1.0) * 255.0, 0, 255).astype(np.uint8))
        im = im.convert("RGB")
        if max_side:
            im.thumbnail((max_side, max_side), Image.LANCZOS, reducing_gap=3.0)
        return np.ascontiguousarray(np.asarray(im))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "photo"


def skimage_sources() -> list[tuple[str, Loader]]:
    return [(f"skimage-{name}", partial(_load_skimage, func)) for name, func in _SKIMAGE.items()]


def gnome_files(folder: str | os.PathLike = GNOME_DIR) -> list[Path]:
    """Raster gnome-backgrounds files, one per design (light variant preferred), >= 512 px."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    designs: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in IMAGE_EXTS or not p.is_file():
            continue
        designs.setdefault(_design_key(p.stem), []).append(p)
    out = []
    for key in sorted(designs):
        files = sorted(designs[key], key=lambda p: (not p.stem.endswith("-l"), p.name))
        for p in files:
            try:
                with Image.open(p) as im:
                    if min(im.size) >= 512:
                        out.append(p)
                        break
            except OSError:
                continue
    return out


def _design_key(stem: str) -> str:
    return re.sub(r"-(l|d|day|night|light|dark|morning|evening)$", "", stem)


def gnome_sources(folder: str | os.PathLike = GNOME_DIR) -> list[tuple[str, Loader]]:
    return [(f"gnome-{_safe(_design_key(p.stem))}", partial(load_image_file, p)) for p in gnome_files(folder)]


def photos_from_folder(folder: str | os.PathLike) -> list[tuple[str, Loader]]:
    """Every image file under ``folder`` (recursive, sorted) as (name, loader)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    out: list[tuple[str, Loader]] = []
    seen: set[str] = set()
    for p in files:
        rel = p.relative_to(folder)
        name = _safe(rel.with_suffix("").as_posix().replace("/", "_"))
        if name in seen:
            name = _safe(f"{name}_{p.suffix.lstrip('.').lower()}")
        k = 2
        base = name
        while name in seen:
            name, k = f"{base}_{k}", k + 1
        seen.add(name)
        out.append((name, partial(load_image_file, p)))
    return out


def catalog_sources(catalog: str | os.PathLike) -> list[tuple[str, Loader]]:
    """(name, loader) for every photo of a ``debian_photos`` catalogue (``photos.json``)."""
    import json

    entries = json.loads(Path(catalog).read_text())
    out = []
    for e in entries:
        if e.get("package") in ("mate-backgrounds",):
            raise ValueError("mate-backgrounds is reserved for the independent check")
        out.append((e["name"], partial(load_image_file, e["file"])))
    return out


def list_photo_sources(source: str = "all", folder: str | os.PathLike | None = None) -> list[tuple[str, Loader]]:
    """(name, loader) for the chosen source: "skimage", "gnome", "all" (both) or "none"; plus ``folder``."""
    if source not in ("skimage", "gnome", "all", "none"):
        raise ValueError(f"unknown photo source {source!r} (skimage, gnome, all, none)")
    out: list[tuple[str, Loader]] = []
    if source in ("skimage", "all"):
        out += skimage_sources()
    if source in ("gnome", "all"):
        out += gnome_sources()
    if folder is not None:
        out += photos_from_folder(folder)
    return out


def load_photo(name: str | os.PathLike, max_side: int | None = None) -> np.ndarray:
    """Load a named photo (a name from ``list_photo_sources``) or an image path, as uint8 RGB."""
    if isinstance(name, str):
        for n, loader in skimage_sources():
            if n == name:
                return _fit(loader(), max_side)
        if name.startswith("gnome-"):
            for n, loader in gnome_sources():
                if n == name:
                    return loader(max_side=max_side)
    p = Path(name)
    if p.is_file():
        return load_image_file(p, max_side)
    raise KeyError(f"unknown photo {name!r}: not a source name and not an image file")


def load_photos(sources: Iterable[tuple[str, Loader]], max_side: int | None = None) -> list[tuple[str, np.ndarray]]:
    """Materialise (name, loader) pairs into (name, uint8 RGB array) pairs."""
    out = []
    for name, loader in sources:
        if isinstance(loader, partial) and loader.func is load_image_file:
            arr = loader(max_side=max_side)
        else:
            arr = _fit(loader(), max_side)
        out.append((name, arr))
    return out


def _rank_key(name: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{name}".encode("utf-8")).hexdigest()


def split_photos(names: Iterable[str], held_out_fraction: float = 0.2, salt: str = SPLIT_SALT) -> dict[str, list[str]]:
    """Deterministic split of photo names into {"train": [...], "held_out": [...]} (both sorted).

    Names are ranked by sha256(salt:name); the first round(n * held_out_fraction) are held out, at
    least one when there are two or more names and the fraction is > 0, never all of them.
    """
    uniq = sorted(set(names))
    n = len(uniq)
    k = int(round(n * held_out_fraction))
    if n >= 2 and held_out_fraction > 0:
        k = min(max(k, 1), n - 1)
    k = max(0, min(k, n))
    ranked = sorted(uniq, key=lambda s: _rank_key(s, salt))
    held = set(ranked[:k])
    return {"train": [s for s in uniq if s not in held], "held_out": [s for s in uniq if s in held]}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m fgresq_sdk.train.photos", description="List offline photo sources and their split.")
    ap.add_argument("--source", default="all", choices=("skimage", "gnome", "all", "none"))
    ap.add_argument("--photos", default=None, help="a folder of clean photos")
    ap.add_argument("--held-out", type=float, default=0.2)
    args = ap.parse_args(argv)
    names = [n for n, _ in list_photo_sources(args.source, args.photos)]
    print(json.dumps({"photos": names, "split": split_photos(names, args.held_out)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
