"""Multi-crop native-resolution views.

Squashing a 2K restored image to 224×224 erases the fine differences the model exists to see. Instead,
K crops of 224×224 are cut at native resolution from fixed relative positions: the same positions for
every image, so the crops of two restored versions of one scene cover the same content and pairs
compare like with like. The model's outputs are averaged over the crops (features, hence comparison
logits, exactly; scores as the mean of the per-crop scores).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .preprocess import CLIP_MEAN, CLIP_STD, PreprocessSpec


def crop_centres(k: int) -> list[tuple[float, float]]:
    """Relative (x, y) centres: 1 → centre; 5 → 2×2 grid + centre; otherwise an n×n grid (n = ⌈√k⌉),
    k of its cells taken evenly in reading order."""
    if k < 1:
        raise ValueError("crops must be ≥ 1")
    if k == 1:
        return [(0.5, 0.5)]
    if k == 5:
        return [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75), (0.5, 0.5)]
    n = math.ceil(math.sqrt(k))
    cells = [((c + 0.5) / n, (r + 0.5) / n) for r in range(n) for c in range(n)]
    idx = np.round(np.linspace(0, len(cells) - 1, k)).astype(int)
    return [cells[i] for i in idx]


def crop_boxes(width: int, height: int, k: int, size: int) -> list[tuple[int, int, int, int]]:
    """Pixel boxes (left, top, right, bottom) of `size`² crops at the k relative centres, kept inside."""
    boxes = []
    for cx, cy in crop_centres(k):
        left = int(round(cx * width - size / 2))
        top = int(round(cy * height - size / 2))
        left = min(max(left, 0), width - size)
        top = min(max(top, 0), height - size)
        boxes.append((left, top, left + size, top + size))
    return boxes


def crop_views(img: Image.Image, k: int, size: "int | PreprocessSpec" = 224, mean=CLIP_MEAN,
               std=CLIP_STD) -> np.ndarray:
    """[k, 3, size, size] normalised crops at native resolution (images smaller than `size` are first
    enlarged so their short side is `size`).

    This view mode uses only the spec's size, mean and std (docs/preprocess-spec.md): its resize/crop
    steps do not apply. `size` may be the bundle's PreprocessSpec (then `mean`/`std` are its own).
    """
    if isinstance(size, PreprocessSpec):
        size, mean, std = size.size, size.mean, size.std
    size = int(size)
    w, h = img.size
    if min(w, h) < size:
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = img.size
    arr = np.asarray(img, dtype=np.uint8)
    # Cut the uint8 crops first, then normalise only them (the same float ops as normalising the whole image).
    views = np.stack([arr[t:b, l:r] for (l, t, r, b) in crop_boxes(w, h, k, size)])
    x = views.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
