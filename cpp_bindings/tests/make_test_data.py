"""Expected values for the C++ tests, from the Python SDK (run by ctest's `testdata` fixture).

Writes into OUT:
  bundle/                  a tiny FGResQ bundle (fgresq-vit-tiny, seed 0, heads widened ×20 like tests/conftest.py)
  images/<name>.raw        8-bit pixels, rows packed (width·channels bytes each)
  cases.tsv                name  width  height  channels  expected score (Scorer, onnxruntime backend)
  pre/<name>.u8            PIL's bilinear resize to S×S of the RGB image (S·S·3 bytes, HWC)
  pre/<name>.f32           the normalised model input from fgresq_sdk.preprocess (float32 [3,S,S])
  rank.tsv                 rank  index  score  win_rate  tier  strength (Scorer.rank on all cases)
  compare.tsv              a  b  p_first  p_second  p_similar (Scorer.compare: order-symmetrised)
  compare_raw.tsv          the same pairs, Scorer.compare(raw=True): the head on (a, b) only
  rank_features/           a larger ranking from features alone: feats.f32 (N × F float32), scores.f32 (N),
                           rank.tsv as above (Scorer.rank_features: blockwise soft wins + Newton fit)
  heads_compressed.npz     the bundle's heads saved with np.savez_compressed (an error-path test)
  files/                   the same checks from image FILES, as `fgresq-sdk` scores them: photos/ holds PNG (8-bit
                           RGB, gray, RGBA, palette) and JPEG files in the folders scene_a, scene_b and single;
                           images/<name>.raw is each file as fgresq_sdk.preprocess.load_image decodes it (EXIF
                           orientation, RGB), cases.tsv their Scorer scores from the files, groups.tsv
                           `group  index,index,...` (all = both scenes, scene_a, scene_b, single: one image),
                           rank_<group>.tsv the Scorer.rank of each group's files (indices into the group),
                           compare.tsv / compare_raw.tsv a pair both ways (indices into cases.tsv)
  example/                 binary PNM images (P6 RGB, P5 gray) for the fgresq-example smoke test
  bundle_official/         the same bundle whose model.json declares the official preprocess spec
                           (docs/preprocess-spec.md: resize bilinear-cv2 256x256, center crop 224)
  bundle_squash/           the same bundle with the explicit legacy spec (resize bilinear-antialias 224x224)
  cv2/cases.tsv            name  width  height  channels  expected score (bundle_official's encoder.onnx run by
                           onnxruntime on the tensors below), for images of many sizes
  cv2/images/<name>.raw    their pixels (rows packed)
  cv2/<name>.f32           real OpenCV: cv2.resize(rgb, (256, 256), INTER_LINEAR), center crop 224, /255,
                           mean/std in numpy (float32 [3,224,224])
  cv2/resize.tsv           name  width  height: cv2/<name>_<width>x<height>.u8 holds cv2.resize(rgb, (width,
                           height), INTER_LINEAR) (HWC uint8), the full resize before any crop
  bundle_niqe/             the bundle with the naturalness term (fgresq_sdk/naturalness.py), written by
                           fgresq_sdk.train.fuse_naturalness.write_fused_bundle with the shipped pristine model and
                           the fixed section NIQE_SECTION (weights that visibly move the scores)
  niqe/cases.tsv           name  width  height  channels  expected score (bundle_niqe's Scorer.score: fused) for the
                           parity cases plus a flat gray frame (all patches flat: d = 1e4) and a noise frame;
                           niqe/images/<name>.raw their pixels, niqe/pre/<name>.f32 the model input the term reads
                           (float32 [3,S,S]), niqe/logd.tsv  name  ln d  (Encoded.log_distance)
  niqe/distances.tsv       name  rows  cols  distance: fgresq_sdk.niqe.Pristine.distance (the shipped pristine
                           model) of the float64 lumas niqe/lumas/<name>.f64 (rows packed): a photo, a noisy one,
                           a flat one (exactly 1e4), a partly flat one, an odd-sized crop, a single patch
  release/                 release parity, against the INDEPENDENT reference of tests/official_format.py (not
                           the SDK's model code): FGResQ.pth in the authors' released format (official_state,
                           TINY towers), bundle/ = `fgresq-sdk import-official FGResQ.pth --config fgresq-vit-tiny`
                           (defaults = the current release: cv2 resize 256 + center crop 224, sigmoid(0.3·head)),
                           photos/<name>.png, images/<name>.raw (the PNG as cv2.imread decodes it, RGB rows
                           packed), cases.tsv (name width height 3 reference score), compare_raw.tsv (a b p_first
                           p_second p_similar = reference_compare, the release's predict_pair) and compare.tsv
                           (the same pairs order-symmetrised from the two reference forwards); bundle_squash/ =
                           bundle/ with the legacy squash spec (a control). When it cannot be
                           built (no transformers/OpenCV), release/why.txt says why and the release test fails.
"""
from __future__ import annotations

import json
import shutil
import subprocess
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


OFFICIAL_RESIZE = (256, 256)  # [width, height]
OFFICIAL_CROP = 224


def variant_bundle(src: Path, dst: Path, pre: dict) -> Path:
    """A copy of bundle `src` whose model.json preprocess (top level and config) is `pre`; the files are
    unchanged, so their sha256 entries stay valid."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    manifest = json.loads((src / "model.json").read_text())
    manifest["preprocess"] = pre
    manifest["config"]["preprocess"] = dict(pre)
    (dst / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return dst


def cv2_cases(imgs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The parity cases plus sizes that stress the OpenCV resize: odd, 1-pixel-wide/-tall, exact 2x up and
    down (OpenCV switches to INTER_AREA for 2x down), one axis unchanged, large downscales, noise."""
    rng = np.random.default_rng(1)
    astro, coffee, chelsea = photo("astronaut"), photo("coffee"), photo("chelsea")
    gray = photo("camera")
    noise = lambda h, w, c=3: rng.integers(0, 256, (h, w, c) if c > 1 else (h, w), dtype=np.uint8)  # noqa: E731
    out = dict(imgs)
    out.update({
        "noise_1x1": noise(1, 1),
        "noise_2x3": noise(3, 2),
        "noise_3x2": noise(2, 3),
        "noise_1x37": noise(37, 1),                                   # 1 pixel wide
        "noise_53x1": noise(1, 53),                                   # 1 pixel tall
        "astronaut_1x300": np.ascontiguousarray(resized(astro, 1, 300)),
        "coffee_400x1": np.ascontiguousarray(resized(coffee, 400, 1)),
        "noise_gray_1x9": noise(9, 1, 1),
        "noise_257x255": noise(255, 257),                             # odd, down in x, up in y
        "noise_255x257": noise(257, 255),
        "noise_gray_33x17": noise(17, 33, 1),
        "astronaut_512x512": resized(astro, 512, 512),                # exactly 2x down (cv2: INTER_AREA)
        "noise_512x512": noise(512, 512),
        "chelsea_128x128": resized(chelsea, 128, 128),                # exactly 2x up
        "noise_128x128": noise(128, 128),
        "coffee_256x256": resized(coffee, 256, 256),                  # no resize, crop only
        "coffee_256x100": resized(coffee, 256, 100),                  # width unchanged, up in y
        "camera_gray_100x256": resized(gray, 100, 256),               # height unchanged
        "noise_256x301": noise(301, 256),
        "chelsea_rgba_97x61": np.concatenate([resized(chelsea, 97, 61), noise(61, 97, 1)[:, :, None]], axis=2),
        "astronaut_1200x900": resized(astro, 1200, 900),              # large downscale
        "noise_999x1001": noise(1001, 999),
        "coffee_259x3": resized(coffee, 259, 3),
    })
    return out


# Extra resize targets (uint8 only, compared before any crop) for a few cases: odd and tiny outputs.
CV2_EXTRA_TARGETS = {"noise_257x255": [(13, 7), (255, 257)], "astronaut_512x384": [(13, 7), (1, 1), (300, 1)],
                     "noise_gray_33x17": [(255, 257), (1, 40)], "chelsea_100x80": [(201, 199)],
                     "noise_1x37": [(64, 64)], "noise_999x1001": [(333, 334)]}


def write_cv2_data(out: Path, bundle: Path, imgs: dict[str, np.ndarray]) -> None:
    """Expected values for the official spec, from real OpenCV and numpy (not from fgresq_sdk.preprocess)."""
    d = out / "cv2"
    shutil.rmtree(d, ignore_errors=True)  # no stale expectations if cv2 is gone
    import cv2
    import onnxruntime as ort

    from fgresq_sdk.preprocess import load_image

    pre = json.loads((bundle / "model.json").read_text())["preprocess"]
    mean, std = np.asarray(pre["mean"], np.float32), np.asarray(pre["std"], np.float32)
    (d / "images").mkdir(parents=True)
    names, tensors, rows, extra = [], [], [], []
    for name, arr in cv2_cases(imgs).items():
        rgb = np.ascontiguousarray(np.asarray(load_image(arr)))  # decoded RGB: gray replicated, alpha dropped
        targets = [OFFICIAL_RESIZE] + CV2_EXTRA_TARGETS.get(name, [])
        for w, h in targets:
            u8 = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
            assert u8.shape == (h, w, 3) and u8.dtype == np.uint8, (name, u8.shape)
            (d / f"{name}_{w}x{h}.u8").write_bytes(u8.tobytes())
            extra.append(f"{name}\t{w}\t{h}\n")
        u8 = cv2.resize(rgb, OFFICIAL_RESIZE, interpolation=cv2.INTER_LINEAR)
        top = int(round((u8.shape[0] - OFFICIAL_CROP) / 2.0))  # torchvision CenterCrop
        left = int(round((u8.shape[1] - OFFICIAL_CROP) / 2.0))
        crop = u8[top:top + OFFICIAL_CROP, left:left + OFFICIAL_CROP]
        x = ((crop.astype(np.float32) / np.float32(255.0) - mean) / std).transpose(2, 0, 1)
        x = np.ascontiguousarray(x, dtype=np.float32)
        (d / f"{name}.f32").write_bytes(x.astype("<f4").tobytes())
        (d / "images" / f"{name}.raw").write_bytes(np.ascontiguousarray(arr).tobytes())
        ch = 1 if arr.ndim == 2 else arr.shape[2]
        names.append(name)
        tensors.append(x)
        rows.append((name, arr.shape[1], arr.shape[0], ch))
    session = ort.InferenceSession(str(bundle / "encoder.onnx"), providers=["CPUExecutionProvider"])
    _, scores = session.run(None, {session.get_inputs()[0].name: np.stack(tensors)})
    with open(d / "cases.tsv", "w") as f:
        for (name, w, h, ch), s in zip(rows, scores):
            f.write(f"{name}\t{w}\t{h}\t{ch}\t{float(s)!r}\n")
    (d / "resize.tsv").write_text("".join(extra))
    print(f"cv2 {cv2.__version__}: {len(rows)} images, {len(extra)} resizes")


RELEASE_SEED = 21
RELEASE_PAIRS = ((0, 1), (1, 0), (2, 5), (5, 2), (3, 4), (4, 4))


def release_photos(root: Path) -> list[Path]:
    """Real photos as PNG at assorted sizes (PNG: every decoder gives the same pixels): RGB down- and upscales,
    exactly 2x down (cv2: INTER_AREA path), no resize (crop only), gray, RGBA (alpha dropped)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(3)
    astro, coffee, chelsea, rocket, camera = (photo(n) for n in ("astronaut", "coffee", "chelsea", "rocket", "camera"))
    rgba = np.concatenate([resized(chelsea, 333, 250), rng.integers(0, 256, (250, 333, 1), dtype=np.uint8)], axis=2)
    arrays = {"astronaut_512x384": resized(astro, 512, 384), "coffee_300x200": resized(coffee, 300, 200),
              "chelsea_100x80": resized(chelsea, 100, 80), "rocket_512x512": resized(rocket, 512, 512),
              "coffee_256x256": resized(coffee, 256, 256), "camera_gray_401x299": resized(camera, 401, 299),
              "chelsea_rgba_333x250": rgba}
    paths = []
    for name, arr in arrays.items():
        paths.append(root / f"{name}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


def write_release_data(out: Path) -> None:
    """The release parity data (see the module docstring): the C++ library against the reference forward."""
    d = out / "release"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    try:
        import cv2
        import torch

        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
        from official_format import (RELEASE_SCORE_SCALE, TINY, official_state, reference_compare,
                                     reference_forward, release_preprocess)
    except ImportError as exc:
        (d / "why.txt").write_text(f"no release data: {exc} (pip install -e '.[dev]': transformers, opencv)\n")
        print(f"make_test_data: no release data ({exc}): the release test will fail", file=sys.stderr)
        return
    sd, img, deg = official_state(TINY, seed=RELEASE_SEED)
    ckpt = d / "FGResQ.pth"
    torch.save(sd, ckpt)
    exe = Path(sys.executable).parent / "fgresq-sdk"
    cmd = [str(exe) if exe.exists() else (shutil.which("fgresq-sdk") or "fgresq-sdk"), "import-official", str(ckpt),
           "--config", "fgresq-vit-tiny", "--out", str(d / "bundle")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        (d / "why.txt").write_text(f"no release data: {' '.join(cmd)} failed:\n{res.stderr}")
        print(f"make_test_data: import-official failed:\n{res.stderr}", file=sys.stderr)
        return
    manifest = json.loads((d / "bundle" / "model.json").read_text())
    assert manifest["score_scale"] == RELEASE_SCORE_SCALE == 0.3, manifest.get("score_scale")
    assert manifest["preprocess"]["resize"] == {"method": "bilinear-cv2", "size": [256, 256]}
    # The same graphs behind the legacy squash spec: the test checks it can tell that one from the release.
    pre = manifest["preprocess"]
    variant_bundle(d / "bundle", d / "bundle_squash", {
        "size": 224, "resize": {"method": "bilinear-antialias", "size": [224, 224]}, "mean": pre["mean"],
        "std": pre["std"]})
    paths = release_photos(d / "photos")
    (d / "images").mkdir()
    for p in paths:  # the pixels the reference sees: cv2.imread (BGR, alpha dropped, gray replicated) → RGB
        rgb = cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        (d / "images" / f"{p.stem}.raw").write_bytes(np.ascontiguousarray(rgb).tobytes())
    x = torch.from_numpy(np.stack([release_preprocess(p) for p in paths]))
    q, score = reference_forward(sd, img, deg, x, score_scale=RELEASE_SCORE_SCALE)
    score = score.double().numpy()
    assert float(score.std()) > 1e-3, "reference scores are degenerate; the test would prove nothing"
    with open(d / "cases.tsv", "w") as f:
        for p, s in zip(paths, score):
            h, w = cv2.imread(str(p), cv2.IMREAD_COLOR).shape[:2]
            f.write(f"{p.stem}\t{w}\t{h}\t3\t{float(s)!r}\n")
    raw_rows, sym_rows = [], []
    for a, b in RELEASE_PAIRS:
        fwd = reference_compare(sd, q[a:a + 1], q[b:b + 1])[0].double().numpy()
        bwd = reference_compare(sd, q[b:b + 1], q[a:a + 1])[0].double().numpy()
        sym = [(fwd[0] + bwd[1]) / 2, (fwd[1] + bwd[0]) / 2, (fwd[2] + bwd[2]) / 2]
        raw_rows.append(f"{a}\t{b}\t" + "\t".join(repr(float(v)) for v in fwd) + "\n")
        sym_rows.append(f"{a}\t{b}\t" + "\t".join(repr(float(v)) for v in sym) + "\n")
    (d / "compare_raw.tsv").write_text("".join(raw_rows))
    (d / "compare.tsv").write_text("".join(sym_rows))
    print(f"release: {len(paths)} PNG photos, reference scores {score.min():.4f}..{score.max():.4f}")


def write_rank_features(out: Path, scorer, feats: np.ndarray, n: int = 400) -> None:
    """A ranking of n images from features alone (no encoder): random features with the spread of real ones."""
    d = out / "rank_features"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    rng = np.random.default_rng(7)
    mean, std = feats.mean(axis=0), feats.std(axis=0) + 1e-3
    q = (mean + std * rng.standard_normal((n, feats.shape[1]))).astype(np.float32)
    scores = rng.uniform(0.0, 1.0, n).astype(np.float32)
    (d / "feats.f32").write_bytes(q.astype("<f4").tobytes())
    (d / "scores.f32").write_bytes(scores.astype("<f4").tobytes())
    r = scorer.rank_features([str(i) for i in range(n)], q, scores).ranking
    assert r.converged, "the Python fit did not converge"
    write_rank(d / "rank.tsv", scores, r)
    print(f"rank_features: n = {n}, {r.iterations} Newton steps, strengths {r.strength.min():.3f}..{r.strength.max():.3f}")


def write_rank(path: Path, scores: np.ndarray, r) -> None:
    """rank.tsv rows: rank, input index, score, win rate, tier, strength (repr: the exact doubles)."""
    with open(path, "w") as f:
        for pos, idx in enumerate(r.order):
            f.write(f"{pos + 1}\t{idx}\t{float(scores[idx])!r}\t{float(r.win_rate[idx])!r}\t{int(r.tier[idx])}\t"
                    f"{float(r.strength[idx])!r}\n")


def write_compare(path: Path, scorer, items: list, pairs, raw: bool) -> None:
    """compare.tsv rows: a, b, p_first, p_second, p_similar of Scorer.compare(items[a], items[b], raw)."""
    with open(path, "w") as f:
        for a, b in pairs:
            c = scorer.compare(items[a], items[b], raw=raw)
            f.write(f"{a}\t{b}\t{c.p_first_better!r}\t{c.p_second_better!r}\t{c.p_similar!r}\n")


FILE_PAIRS = ((2, 3), (3, 2), (0, 5))  # astronaut_rgba.png vs coffee_p.png both ways, astronaut.png vs coffee.jpg


def write_file_data(out: Path, scorer, imgs: dict[str, np.ndarray]) -> None:
    """The parity checks from files: the Python SDK reads the PNG/JPEG files itself (as `fgresq-sdk score`,
    `compare` and `rank --group-by parent` do); the C library gets the pixels its loader decodes from them."""
    from fgresq_sdk.preprocess import load_image

    d = out / "files"
    shutil.rmtree(d, ignore_errors=True)
    for sub in ("photos/scene_a", "photos/scene_b", "photos/single", "images"):
        (d / sub).mkdir(parents=True)
    photos = d / "photos"
    files = [photos / "scene_a" / "astronaut.png", photos / "scene_a" / "camera.png",
             photos / "scene_a" / "astronaut_rgba.png", photos / "scene_b" / "coffee_p.png",
             photos / "scene_b" / "chelsea.jpg", photos / "scene_b" / "coffee.jpg", photos / "single" / "rocket.png"]
    Image.fromarray(imgs["astronaut_512x384"]).save(files[0])
    Image.fromarray(imgs["camera_gray_640x150"]).save(files[1])
    Image.fromarray(imgs["astronaut_rgba_200x300"]).save(files[2])
    Image.fromarray(imgs["coffee_300x200"]).convert("P", palette=Image.ADAPTIVE).save(files[3])
    Image.fromarray(imgs["chelsea_100x80"]).save(files[4], quality=92)
    Image.fromarray(imgs["coffee_224x500"]).save(files[5], quality=90)
    Image.fromarray(imgs["rocket_224x224"]).save(files[6])
    paths = [str(p) for p in files]
    names = [f"{p.parent.name}_{p.name.replace('.', '_')}" for p in files]
    scores = scorer.score(paths)
    with open(d / "cases.tsv", "w") as f:
        for name, path, s in zip(names, paths, scores):
            rgb = np.ascontiguousarray(np.asarray(load_image(path)))
            (d / "images" / f"{name}.raw").write_bytes(rgb.tobytes())
            f.write(f"{name}\t{rgb.shape[1]}\t{rgb.shape[0]}\t3\t{float(s)!r}\n")
    groups = {"all": [0, 1, 2, 3, 4, 5], "scene_a": [0, 1, 2], "scene_b": [3, 4, 5], "single": [6]}
    (d / "groups.tsv").write_text("".join(f"{g}\t{','.join(map(str, m))}\n" for g, m in groups.items()))
    for g, members in groups.items():
        res = scorer.rank([paths[i] for i in members])
        write_rank(d / f"rank_{g}.tsv", res.scores, res.ranking)
    for fname, raw in (("compare.tsv", False), ("compare_raw.tsv", True)):
        write_compare(d / fname, scorer, paths, FILE_PAIRS, raw)


# The term's section for the test bundle: weights that visibly move every score while keeping the fused
# scores away from 0 and 1 (where an absolute tolerance would say little).
NIQE_SECTION = {"method": "niqe-log-distance", "pristine": "niqe_pristine", "weight": 1.3, "scale": 0.5,
                "offset": 3.0}


def niqe_lumas() -> dict[str, np.ndarray]:
    """0-255 float64 lumas for the distance parity: each exercises one branch of fgresq_sdk/niqe.py."""
    rng = np.random.default_rng(5)
    cam = photo("camera").astype(np.float64)  # 512x512
    return {
        "photo": cam,
        "noisy": np.clip(cam + rng.normal(0.0, 25.0, cam.shape), 0.0, 255.0),
        "flat": np.full((200, 300), 128.0),                                            # every patch flat: 1e4
        "part_flat": np.concatenate([np.full((128, 128), 90.0), cam[:128, :128]], axis=1),  # half the patches flat
        "odd_crop": cam[:301, :203] * 0.7 + 3.3,   # odd sizes: partial patches and an odd half dropped
        "single_patch": cam[100:164, 200:264],     # one patch kept: zero image covariance
    }


def write_niqe_data(out: Path, bundle: Path, imgs: dict[str, np.ndarray]) -> None:
    """The naturalness term: a fused copy of the test bundle, its Python scores and ln d, and NIQE distances."""
    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.niqe import Pristine
    from fgresq_sdk.preprocess import preprocess
    from fgresq_sdk.scorer import Scorer
    from fgresq_sdk.train.fuse_naturalness import write_fused_bundle
    from fgresq_sdk.train.niqe import DEFAULT_PRISTINE

    d = out / "niqe"
    shutil.rmtree(d, ignore_errors=True)
    for sub in ("images", "pre", "lumas"):
        (d / sub).mkdir(parents=True)
    fused = write_fused_bundle(load_bundle(bundle), out / "bundle_niqe", DEFAULT_PRISTINE.read_bytes(),
                               dict(NIQE_SECTION), force=True)
    scorer = Scorer(fused, backend="onnxruntime")
    assert scorer.naturalness is not None, "the fused bundle has no naturalness term"
    rng = np.random.default_rng(6)
    cases = dict(imgs)
    cases["flat_gray_96x80"] = np.full((80, 96, 3), 128, np.uint8)
    cases["noise_224x224"] = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    names, arrays = list(cases), list(cases.values())
    scores = scorer.score(arrays)
    logd = {e.name: e.log_distance for e in scorer.iter_encode(arrays, names=names)}
    plain = Scorer(bundle, backend="onnxruntime").score(arrays)
    pre_cfg = scorer.bundle.preprocess
    with open(d / "cases.tsv", "w") as f, open(d / "logd.tsv", "w") as g:
        for name, arr, s in zip(names, arrays, scores):
            ch = 1 if arr.ndim == 2 else arr.shape[2]
            (d / "images" / f"{name}.raw").write_bytes(np.ascontiguousarray(arr).tobytes())
            (d / "pre" / f"{name}.f32").write_bytes(preprocess(arr, pre_cfg).astype("<f4").tobytes())
            f.write(f"{name}\t{arr.shape[1]}\t{arr.shape[0]}\t{ch}\t{float(s)!r}\n")
            g.write(f"{name}\t{logd[name]!r}\n")
    moved = np.abs(scores.astype(np.float64) - plain)[:len(imgs)]  # the flat frame sits near 0 either way
    assert moved.min() > 1e-2, f"the term hardly moves some scores ({moved.min():.3g}); the test would prove little"
    pristine = Pristine.from_bytes(DEFAULT_PRISTINE.read_bytes(), where=str(DEFAULT_PRISTINE))
    with open(d / "distances.tsv", "w") as f:
        for name, luma in niqe_lumas().items():
            luma = np.ascontiguousarray(luma, np.float64)
            (d / "lumas" / f"{name}.f64").write_bytes(luma.astype("<f8").tobytes())
            f.write(f"{name}\t{luma.shape[0]}\t{luma.shape[1]}\t{pristine.distance(luma)!r}\n")
    print(f"niqe: {len(names)} fused scores (moved by {moved.min():.3f}..{moved.max():.3f}), "
          f"ln d {min(logd.values()):.3f}..{max(logd.values()):.3f}")


def write_example_images(out: Path, imgs: dict[str, np.ndarray]) -> None:
    """Binary PPM/PGM files, the format examples/fgresq_example.cpp reads."""
    d = out / "example"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    Image.fromarray(imgs["astronaut_512x384"]).save(d / "astronaut.ppm")
    Image.fromarray(imgs["camera_gray_640x150"]).save(d / "camera.pgm")
    Image.fromarray(imgs["coffee_300x200"]).save(d / "coffee.ppm")


def write_default_data(out: Path, names: list[str], arrays: list[np.ndarray]) -> None:
    """The embedded default model (conv-stats towers with mirror views, naturalness term) copied to bundle_default,
    and the Python SDK's scores of the cases with it (default_scores.tsv): its default encoder batch (2 on a CPU,
    fgresq_sdk/scorer.py default_batch_size) and its scores, with the C library's own default."""
    from fgresq_sdk.bundle import default_bundle_path
    from fgresq_sdk.scorer import Scorer

    src = default_bundle_path()
    if src is None:
        raise SystemExit("make_test_data: this checkout has no embedded default model (fgresq_sdk/default_model)")
    dst = out / "bundle_default"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    scorer = Scorer(dst, backend="onnxruntime")
    with open(out / "default_scores.tsv", "w") as f:
        f.write(f"batch_size\t{scorer.batch_size}\n")
        for name, s in zip(names, scorer.score(arrays)):
            f.write(f"{name}\t{float(s)!r}\n")


def main() -> int:
    out = Path(sys.argv[1])
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "pre"):
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

    write_rank(out / "rank.tsv", scores, scorer.rank(arrays, names=names).ranking)
    for fname, raw in (("compare.tsv", False), ("compare_raw.tsv", True)):
        write_compare(out / fname, scorer, arrays, ((0, 1), (1, 0), (2, 5), (3, 7), (4, 4)), raw)
    write_rank_features(out, scorer, scorer.encode(arrays)[0])

    # heads.npz as np.savez_compressed would write it (refused by the C++ reader, which wants stored members).
    with np.load(bundle / "heads.npz") as z:
        np.savez_compressed(out / "heads_compressed.npz", **{k: z[k] for k in z.files})

    write_file_data(out, scorer, imgs)
    write_example_images(out, imgs)
    write_niqe_data(out, bundle, imgs)
    write_default_data(out, names, arrays)

    # The official preprocess spec (import-official's default) and the explicit legacy one, on the same model.
    base = {k: v for k, v in pre_cfg.items() if k in ("size", "mean", "std")}
    official = variant_bundle(bundle, out / "bundle_official", {
        "size": OFFICIAL_CROP, "resize": {"method": "bilinear-cv2", "size": list(OFFICIAL_RESIZE)},
        "crop": {"method": "center", "size": [OFFICIAL_CROP, OFFICIAL_CROP]}, "mean": base["mean"], "std": base["std"]})
    variant_bundle(bundle, out / "bundle_squash", {
        "size": size, "resize": {"method": "bilinear-antialias", "size": [size, size]},
        "mean": base["mean"], "std": base["std"]})
    try:
        write_cv2_data(out, official, imgs)
    except ImportError as exc:  # the other tests still get their data; preprocess_cv2 fails and says why
        print(f"make_test_data: no OpenCV ({exc}): the preprocess_cv2 test will fail "
              "(pip install opencv-python-headless, part of the dev extra)", file=sys.stderr)
    write_release_data(out)
    print(f"test data in {out} ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
