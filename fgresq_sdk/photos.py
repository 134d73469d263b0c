"""Deterministic photo-like test images, for measurements that need real JPEG decoding.

Its own module because several measurements share it and must not depend on each other: `bench` (timing
and accuracy), int8 validation at export (export/quantize.py), the GPU check and the pytest-benchmark suite.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_photos(n: int, folder: Path, seed: int = 0, size: tuple[int, int] = (640, 480)) -> list[Path]:
    """Photo-like JPEGs (smooth shading, edges, texture) so decode cost is realistic; deterministic."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        base = np.stack([np.sin(xx / rng.uniform(20, 90) + rng.uniform(0, 6)) *
                         np.cos(yy / rng.uniform(20, 90) + rng.uniform(0, 6)) for _ in range(3)], -1)
        img = 127 + 90 * base + rng.normal(0, 12, size=(h, w, 3))
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(30, 160)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] *= rng.uniform(0.4, 1.2)
        p = folder / f"bench_{i:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths
