"""Expected values for the C++ tests, from the Python SDK (run by ctest's `testdata` fixture).

Writes into OUT:
  bundle/                  a tiny FGResQ bundle (fgresq-vit-tiny, seed 0, heads widened ×20 like tests/conftest.py)
  images/<name>.raw        8-bit pixels, rows packed (width·channels bytes each)
  cases.tsv                name  width  height  channels  expected score (Scorer, onnxruntime backend)
  pre/<name>.u8            PIL's bilinear resize to S×S of the RGB image (S·S·3 bytes, HWC)
  pre/<name>.f32           the normalised model input from fgresq_sdk.preprocess (float32 [3,S,S])
  rank.tsv                 rank  index  score  win_rate  tier  strength (Scorer.rank on all cases)
  compare.tsv              a  b  p_first  p_second  p_similar (Scorer.compare)
  heads_compressed.npz     the bundle's heads saved with np.savez_compressed (an error-path test)
  photos/                  PNG/JPEG files in two folders + one broken file, for the CLI test
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def build_bundle(out: Path) -> Path:
    import torch

    from fgresq_sdk.export.onnx_export import export_bundle
    from fgresq_sdk.model import FGResQ

    torch.manual_seed(0)
    m = FGResQ("fgresq-vit-tiny").eval()
    with torch.no_grad():  # random heads are near-uniform; widen them so verdicts are decisive
        m.compare_head.weight.mul_(20.0)
        m.head.weight.mul_(20.0)
    return export_bundle(m, out, source="fgresq C++ tests (random init, seed 0)", force=True)


def photo(name: str) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(getattr(data, name)())


def resized(arr: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize((w, h), Image.LANCZOS))


def cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    astro = photo("astronaut")
    rgba = np.concatenate([resized(astro, 200, 300), rng.integers(0, 256, (300, 200, 1), dtype=np.uint8)], axis=2)
    return {
        "astronaut_512x384": resized(astro, 512, 384),             # downscale both axes
        "coffee_300x200": resized(photo("coffee"), 300, 200),       # downscale
        "chelsea_100x80": resized(photo("chelsea"), 100, 80),       # upscale both axes
        "rocket_224x224": resized(photo("rocket"), 224, 224),       # no resampling at all
        "camera_gray_640x150": resized(photo("camera"), 640, 150),  # gray; down in x, up in y
        "astronaut_rgba_200x300": rgba,                             # RGBA: alpha dropped
        "coffee_224x500": resized(photo("coffee"), 224, 500),       # vertical pass only
        "noise_7x5": rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),  # tiny, large upscale
        # Pillow >= 13 resizes vertically first when the height loses more than twice as many pixels as
        # the width: 300x400 does (176 > 2*76), 262x300 sits exactly on the boundary (76 = 2*38: horizontal first).
        "astronaut_300x400": resized(astro, 300, 400),
        "chelsea_262x300": resized(photo("chelsea"), 262, 300),
    }


def main() -> int:
    out = Path(sys.argv[1])
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "pre", "photos"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir()
    bundle = build_bundle(out / "bundle")

    from fgresq_sdk.preprocess import load_image, preprocess
    from fgresq_sdk.scorer import Scorer

    scorer = Scorer(bundle, backend="onnxruntime")
    pre_cfg = scorer.bundle.preprocess
    size = int(pre_cfg["size"])
    imgs = cases()
    names = list(imgs)
    arrays = [imgs[n] for n in names]
    scores = scorer.score(arrays)
    with open(out / "cases.tsv", "w") as f:
        for name, arr, s in zip(names, arrays, scores):
            ch = 1 if arr.ndim == 2 else arr.shape[2]
            (out / "images" / f"{name}.raw").write_bytes(np.ascontiguousarray(arr).tobytes())
            f.write(f"{name}\t{arr.shape[1]}\t{arr.shape[0]}\t{ch}\t{float(s)!r}\n")
            rgb = load_image(arr)
            u8 = np.asarray(rgb if rgb.size == (size, size) else rgb.resize((size, size), Image.BILINEAR))
            (out / "pre" / f"{name}.u8").write_bytes(np.ascontiguousarray(u8, dtype=np.uint8).tobytes())
            (out / "pre" / f"{name}.f32").write_bytes(preprocess(arr, pre_cfg).astype("<f4").tobytes())

    res = scorer.rank(arrays, names=names)
    r = res.ranking
    with open(out / "rank.tsv", "w") as f:
        for pos, idx in enumerate(r.order):
            f.write(f"{pos + 1}\t{idx}\t{float(scores[idx])!r}\t{float(r.win_rate[idx])!r}\t{int(r.tier[idx])}\t"
                    f"{float(r.strength[idx])!r}\n")
    with open(out / "compare.tsv", "w") as f:
        for a, b in ((0, 1), (1, 0), (2, 5), (3, 7)):
            c = scorer.compare(arrays[a], arrays[b])
            f.write(f"{a}\t{b}\t{c.p_first_better!r}\t{c.p_second_better!r}\t{c.p_similar!r}\n")

    # heads.npz as np.savez_compressed would write it (refused by the C++ reader, which wants stored members).
    with np.load(bundle / "heads.npz") as z:
        np.savez_compressed(out / "heads_compressed.npz", **{k: z[k] for k in z.files})

    # Files for the CLI test: PNG (8-bit RGB, gray, RGBA, palette) and JPEG, two scene folders, one broken file.
    photos = out / "photos"
    for sub in ("scene_a", "scene_b"):
        (photos / sub).mkdir()
    Image.fromarray(imgs["astronaut_512x384"]).save(photos / "scene_a" / "astronaut.png")
    Image.fromarray(imgs["camera_gray_640x150"]).save(photos / "scene_a" / "camera.png")
    Image.fromarray(imgs["astronaut_rgba_200x300"]).save(photos / "scene_a" / "astronaut_rgba.png")
    Image.fromarray(imgs["coffee_300x200"]).convert("P", palette=Image.ADAPTIVE).save(photos / "scene_b" / "coffee_p.png")
    Image.fromarray(imgs["chelsea_100x80"]).save(photos / "scene_b" / "chelsea.jpg", quality=92)
    Image.fromarray(imgs["coffee_224x500"]).save(photos / "scene_b" / "coffee.jpg", quality=90)
    (photos / "scene_b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    print(f"test data in {out} ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
