"""The bundle's preprocess spec (docs/preprocess-spec.md): parsing, the numpy reimplementation of
cv2.resize(INTER_LINEAR) checked against real OpenCV, the legacy form, and the official pipeline."""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from fgresq_sdk.preprocess import CLIP_MEAN, CLIP_STD
from fgresq_sdk.errors import BundleError
from fgresq_sdk.preprocess import (PreprocessSpec, Step, center_crop, load_image, normalize, preprocess,
                                   resize_bilinear_cv2)

cv2 = pytest.importorskip("cv2")  # dev extra: opencv-python-headless (never a runtime dependency)

OFFICIAL = {"size": 224, "resize": {"method": "bilinear-cv2", "size": [256, 256]},
            "crop": {"method": "center", "size": [224, 224]}, "mean": list(CLIP_MEAN), "std": list(CLIP_STD)}
LEGACY = {"size": 224, "interpolation": "bilinear", "antialias": True, "mean": list(CLIP_MEAN),
          "std": list(CLIP_STD)}

# (source w, h) → (destination w, h): down and up, odd sizes, 1-pixel-wide/-tall, 1×1, exact 2× (OpenCV's
# INTER_AREA shortcut), near-identity and non-integer scale factors, the identity (a copy).
RESIZES = [
    ((1, 1), (256, 256)), ((1, 1), (3, 5)), ((1, 300), (256, 256)), ((300, 1), (256, 256)),
    ((1, 7), (1, 3)), ((33, 1000), (7, 1)), ((224, 224), (1, 1)), ((640, 480), (256, 256)),
    ((1999, 1501), (256, 256)), ((512, 512), (256, 256)), ((100, 60), (256, 256)), ((257, 255), (256, 256)),
    ((17, 13), (224, 224)), ((300, 200), (299, 201)), ((256, 256), (256, 256)), ((5, 3), (7, 11)),
    ((480, 640), (256, 256)), ((1023, 767), (224, 224)), ((250, 251), (256, 256)), ((3, 1000), (256, 256)),
]


def _image(w: int, h: int, channels: int, seed: int, smooth: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if smooth:  # photo-like: gradients + a little noise
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        base = np.stack([128 + 100 * np.sin(xx / (7 + c) + yy / (11 + 3 * c)) for c in range(channels)], -1)
        arr = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    else:  # white noise: the worst case for rounding
        arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    return arr[:, :, 0] if channels == 1 else arr


class _Agreement:
    def __init__(self):
        self.pixels = self.same = self.cases = 0
        self.max_diff = 0

    def add(self, ours: np.ndarray, ref: np.ndarray, what: str) -> None:
        assert ours.shape == ref.shape and ours.dtype == np.uint8, what
        d = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
        assert int(d.max()) <= 1, f"{what}: max difference {int(d.max())} grey levels"
        self.pixels += d.size
        self.same += int((d == 0).sum())
        self.max_diff = max(self.max_diff, int(d.max()))
        self.cases += 1

    def check(self, record) -> None:
        share = self.same / self.pixels
        record("cv2_cases", self.cases)
        record("cv2_values", self.pixels)
        record("cv2_identical_share", share)
        record("cv2_max_diff", self.max_diff)
        assert share >= 0.99, f"only {share:.4%} of {self.pixels} values identical to cv2 over {self.cases} cases"


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_resize_matches_cv2_on_arrays(channels, record_property):
    agree = _Agreement()
    for k, ((sw, sh), (dw, dh)) in enumerate(RESIZES):
        for smooth in (False, True):
            src = _image(sw, sh, channels, seed=k, smooth=smooth)
            ref = cv2.resize(src, (dw, dh), interpolation=cv2.INTER_LINEAR)
            agree.add(resize_bilinear_cv2(src, dw, dh), ref, f"{sw}×{sh}→{dw}×{dh} c{channels} smooth={smooth}")
    agree.check(record_property)


def _write(path, arr: np.ndarray, mode: str | None = None) -> None:
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)


def test_resize_matches_cv2_after_decoding(tmp_path, record_property):
    """Grey, RGB, RGBA, palette and 16-bit files decoded by the SDK's own load_image, then resized by
    us and by cv2 from the same decoded uint8 RGB array."""
    rng = np.random.default_rng(7)
    files = []
    for k, (w, h) in enumerate([(97, 61), (640, 427), (1, 50), (50, 1), (1, 1), (333, 500)]):
        rgb = _image(w, h, 3, seed=100 + k, smooth=bool(k % 2))
        _write(tmp_path / f"rgb{k}.png", rgb)
        _write(tmp_path / f"grey{k}.png", rgb[:, :, 1])
        _write(tmp_path / f"rgba{k}.png", np.dstack([rgb, rng.integers(0, 256, (h, w), dtype=np.uint8)]))
        g16 = (rgb[:, :, 0].astype(np.uint16) * 257 + rng.integers(0, 257, (h, w))).astype(np.uint16)
        Image.fromarray(g16).save(tmp_path / f"g16_{k}.png")  # PIL writes I;16 as a 16-bit PNG
        Image.fromarray(rgb).save(tmp_path / f"q{k}.jpg", quality=90)
        files += [tmp_path / f"{s}{k}.png" for s in ("rgb", "grey", "rgba")] + [tmp_path / f"g16_{k}.png",
                                                                                tmp_path / f"q{k}.jpg"]
    assert Image.open(tmp_path / "g16_0.png").mode.startswith("I")
    agree = _Agreement()
    for path in files:
        img = load_image(path)
        arr = np.asarray(img)
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
        for dw, dh in [(256, 256), (224, 224), (31, 7), (arr.shape[1], arr.shape[0])]:
            ref = cv2.resize(arr, (dw, dh), interpolation=cv2.INTER_LINEAR)
            agree.add(resize_bilinear_cv2(arr, dw, dh), ref, f"{path.name}→{dw}×{dh}")
            # From the PIL image: only the rows the taps read are converted (when they are few).
            agree.add(resize_bilinear_cv2(img, dw, dh), ref, f"{path.name} (PIL)→{dw}×{dh}")
    agree.check(record_property)


def test_resize_from_pil_reads_only_the_rows_it_needs():
    src = _image(1200, 1700, 3, seed=5, smooth=True)
    for size in [(256, 256), (224, 100), (3, 1), (1200, 9)]:
        ref = cv2.resize(src, size, interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(resize_bilinear_cv2(Image.fromarray(src), *size), ref), size
    grey = src[:, :, 0]
    assert np.array_equal(resize_bilinear_cv2(Image.fromarray(grey), 64, 48),
                          cv2.resize(grey, (64, 48), interpolation=cv2.INTER_LINEAR))


def test_resize_to_own_size_is_a_copy_for_both_methods():
    src = _image(37, 23, 3, seed=1, smooth=False)
    out = resize_bilinear_cv2(src, 37, 23)
    assert np.array_equal(out, src) and out is not src
    spec = PreprocessSpec.from_dict({"size": 37, "resize": {"method": "bilinear-antialias", "size": [37, 37]}})
    sq = _image(37, 37, 3, seed=2, smooth=False)
    assert np.array_equal(spec.view(Image.fromarray(sq)), sq)


# -- the spec ---------------------------------------------------------------------------------------------

def test_spec_round_trip_and_normal_form():
    spec = PreprocessSpec.from_dict(OFFICIAL)
    assert spec.size == 224 and spec.resize == Step("bilinear-cv2", (256, 256))
    assert spec.crop == Step("center", (224, 224))
    assert spec.to_dict() == OFFICIAL
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    squash = {"size": 224, "resize": {"method": "bilinear-antialias", "size": [224, 224]},
              "mean": list(CLIP_MEAN), "std": list(CLIP_STD)}
    assert PreprocessSpec.from_dict(squash).to_dict() == squash


def test_legacy_form_is_antialiased_squash_without_crop():
    spec = PreprocessSpec.from_dict(LEGACY)
    assert spec.resize == Step("bilinear-antialias", (224, 224)) and spec.crop is None
    assert spec == PreprocessSpec.from_dict({"size": 224}) == PreprocessSpec.legacy(224)
    assert spec == PreprocessSpec.from_dict({"size": 224, "resize": None, "crop": None})  # null = absent
    assert PreprocessSpec.from_dict({}) == PreprocessSpec()  # defaults: 224, CLIP mean/std
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    small = PreprocessSpec.from_dict({"size": 8})
    assert small.resize.size == (8, 8)


@pytest.mark.parametrize("bad, words", [
    ({"size": 224, "resize": {"method": "bicubic", "size": [224, 224]}}, "unknown"),
    ({"size": 224, "resize": {"method": "bilinear-cv2", "size": [256, 256]},
      "crop": {"method": "random", "size": [224, 224]}}, "unknown"),
    ({"size": 224, "resize": {"method": "bilinear-cv2", "size": [256, 256]},
      "crop": {"method": "center", "size": [300, 224]}}, "does not fit"),
    ({"size": 224, "resize": {"method": "bilinear-cv2", "size": [200, 256]},
      "crop": {"method": "center", "size": [224, 224]}}, "does not fit"),
    ({"size": 224, "resize": {"method": "bilinear-cv2", "size": [256, 256]}}, "must be [224, 224]"),
    ({"size": 224, "resize": {"method": "bilinear-cv2", "size": [256, 256]},
      "crop": {"method": "center", "size": [200, 200]}}, "must be [224, 224]"),
    ({"size": 224, "crop": {"method": "center", "size": [224, 224]}}, "needs a preprocess.resize"),
    ({"size": 224, "resize": "bilinear-cv2"}, "must be an object"),
    ({"size": 224, "resize": {"size": [224, 224]}}, "method must be a string"),
    ({"size": 224, "resize": {"method": 3, "size": [224, 224]}}, "method must be a string"),
    ({"size": 224, "resize": {"method": "bilinear-cv2", "size": 224}}, "[width, height]"),
    ({"size": 224, "resize": {"method": "bilinear-cv2", "size": [224.0, 224]}}, "[width, height]"),
    ({"size": 224, "resize": {"method": "bilinear-cv2", "size": [224, 0]}}, "[width, height]"),
    ({"size": 224, "resize": {"method": "bilinear-cv2", "size": [224, True]}}, "[width, height]"),
    ({"size": "224"}, "positive integer"),
    ({"size": 0}, "positive integer"),
    ({"size": True}, "positive integer"),
    ({"size": 224, "mean": [0.5]}, "list of 3 numbers"),
    ({"size": 224, "std": [0.5, "x", 0.5]}, "list of 3 numbers"),
    ({"size": 224, "std": [0.5, 0.0, 0.5]}, "positive"),
    ([224], "must be an object"),
])
def test_bad_specs_are_refused_with_one_line(bad, words):
    with pytest.raises(BundleError) as exc:
        PreprocessSpec.from_dict(bad)
    msg = str(exc.value)
    assert words in msg and "\n" not in msg, msg
    with pytest.raises(BundleError, match=r"^model\.json: "):
        PreprocessSpec.from_dict(bad, where="model.json")


def test_preprocess_refuses_an_unknown_method(tmp_path):
    p = tmp_path / "a.png"
    _write(p, _image(40, 30, 3, seed=4, smooth=True))
    with pytest.raises(BundleError, match="unknown"):
        preprocess(p, {"size": 224, "resize": {"method": "lanczos", "size": [224, 224]}})


# -- the tensors ------------------------------------------------------------------------------------------

def _norm(arr: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    x = arr.astype(np.float32) / np.float32(255.0)
    return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list:
    root = tmp_path_factory.mktemp("spec_photos")
    out = []
    for k, (w, h) in enumerate([(640, 427), (300, 500), (224, 224), (150, 90), (1, 1), (1023, 768)]):
        p = root / f"p{k}.png"
        _write(p, _image(w, h, 3, seed=200 + k, smooth=k != 3))
        out.append(p)
    return out


def test_legacy_dict_gives_todays_tensors(photos):
    """The legacy form is Pillow's bilinear (antialiased) squash to size×size, as every bundle did."""
    for p in photos:
        img = Image.open(p).convert("RGB")
        want = _norm(np.asarray(img.resize((224, 224), Image.BILINEAR) if img.size != (224, 224) else img))
        for pre in (LEGACY, {"size": 224}, None, PreprocessSpec.legacy(224)):
            assert np.array_equal(preprocess(p, pre), want), (p.name, pre)
        assert np.array_equal(normalize(load_image(p), 224, CLIP_MEAN, CLIP_STD), want)
        assert np.array_equal(normalize(load_image(p)), want)
    small = preprocess(photos[0], {"size": 8, "mean": [0.5] * 3, "std": [0.25] * 3})
    img = Image.open(photos[0]).convert("RGB").resize((8, 8), Image.BILINEAR)
    assert np.array_equal(small, _norm(np.asarray(img), [0.5] * 3, [0.25] * 3))


def test_official_pipeline_matches_cv2_resize_and_center_crop(photos, record_property):
    tol = 1.0 / 255.0 / min(CLIP_STD) + 1e-6
    worst = 0.0
    for p in photos:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        resized = cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_LINEAR)
        want = _norm(resized[16:240, 16:240])  # CenterCrop(224) of 256: top = left = round(32 / 2) = 16
        got = preprocess(p, OFFICIAL)
        assert got.shape == (3, 224, 224) and got.dtype == np.float32 and got.flags.c_contiguous
        worst = max(worst, float(np.abs(got - want).max()))
        assert np.allclose(got, want, rtol=0, atol=tol), p.name
        spec = PreprocessSpec.from_dict(OFFICIAL)
        assert np.array_equal(preprocess(p, spec), got)
        assert np.array_equal(normalize(load_image(p), spec), got)
        assert np.array_equal(normalize(load_image(p), OFFICIAL), got)
    record_property("official_max_abs_diff", worst)


@pytest.mark.parametrize("full, crop, want", [(256, 224, 16), (255, 224, 16), (257, 224, 16), (225, 224, 0),
                                              (226, 224, 1), (229, 224, 2), (231, 224, 4), (224, 224, 0)])
def test_center_crop_rounds_like_torchvision(full, crop, want):
    """top = int(round((h - ch) / 2)) with Python's round (ties to even), as torchvision's CenterCrop."""
    arr = np.arange(full * full * 3, dtype=np.int64).reshape(full, full, 3)
    out = center_crop(arr, (crop, crop))
    assert out.shape == (crop, crop, 3)
    assert out[0, 0, 0] == arr[want, want, 0]


def test_non_square_resize_and_crop():
    spec = PreprocessSpec.from_dict({"size": 64, "resize": {"method": "bilinear-cv2", "size": [96, 80]},
                                     "crop": {"method": "center", "size": [64, 64]}})
    src = _image(123, 77, 3, seed=9, smooth=True)
    ref = cv2.resize(src, (96, 80), interpolation=cv2.INTER_LINEAR)[8:72, 16:80]
    assert np.array_equal(spec.view(src), ref)
    assert spec.tensor(src).shape == (3, 64, 64)


def test_crop_views_use_only_size_mean_std(photos):
    from fgresq_sdk.crops import crop_views

    img = load_image(photos[0])
    spec = PreprocessSpec.from_dict(OFFICIAL)
    by_spec = crop_views(img, 5, spec)
    assert np.array_equal(by_spec, crop_views(img, 5, 224, CLIP_MEAN, CLIP_STD))
    # Independent expectation: uint8 crops of the native image, normalised.
    arr = np.asarray(img)
    from fgresq_sdk.crops import crop_boxes

    for view, (l, t, r, b) in zip(by_spec, crop_boxes(img.width, img.height, 5, 224)):
        assert np.array_equal(view, _norm(arr[t:b, l:r]))


def test_training_eval_view_follows_the_spec(photos):
    pytest.importorskip("torch")
    from fgresq_sdk.train.datasets import ImageCache, TransformSpec

    cfg = {"name": "t", "preprocess": OFFICIAL}
    spec = TransformSpec.from_config(cfg, {"resize": 256, "crop": 224})
    assert spec.eval_view == PreprocessSpec.from_dict(OFFICIAL)
    assert spec.train_view.resize == Step("bilinear-cv2", (256, 256)) and spec.train_view.crop is None
    cache = ImageCache(64)
    p = photos[0]
    ev = cache.get(p, spec.eval_view)
    assert np.array_equal(normalize(ev, spec.size, spec.mean, spec.std), preprocess(p, OFFICIAL))
    tr = np.asarray(cache.get(p, spec.train_view))
    assert np.array_equal(tr, cv2.resize(np.asarray(load_image(p)), (256, 256), interpolation=cv2.INTER_LINEAR))
    # Legacy configs keep their behaviour: Pillow bilinear, cached under the same key as an int size.
    legacy = TransformSpec.from_config({"name": "l", "preprocess": LEGACY}, {"resize": 256, "crop": 224})
    want = np.asarray(Image.open(p).convert("RGB").resize((256, 256), Image.BILINEAR))
    assert np.array_equal(np.asarray(cache.get(p, legacy.train_view)), want)
    assert np.array_equal(np.asarray(cache.get(p, 256)), want)
    with pytest.raises(ValueError, match="unknown"):
        TransformSpec.from_config({"name": "x", "preprocess": {"size": 224, "resize": {"method": "x", "size": [1, 1]}}})
