"""The naturalness term: a bundle section that moves the score by the NIQE-style distance of the encoder's view
(fgresq_sdk/naturalness.py), its fit on val photos (train/fuse_naturalness.py), and every writer that carries it."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from fgresq_sdk.bundle import load_bundle
from fgresq_sdk.errors import BundleError
from fgresq_sdk.naturalness import NaturalnessTerm, score_logit
from fgresq_sdk.niqe import FLAT_DISTANCE, Pristine, luma_of_view
from fgresq_sdk.preprocess import preprocess

from .conftest import NATURALNESS_SECTION, needs_torch, photo

SECTION = NATURALNESS_SECTION


@pytest.fixture(scope="module")
def fused_bundle(fused_tiny_bundle) -> Path:
    return fused_tiny_bundle


def _images(tmp_path: Path) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(3)
    arrays = {"astronaut.png": photo("astronaut"), "coffee.png": photo("coffee"),
              "flat.png": np.full((200, 300, 3), 128, np.uint8),
              "noise.png": rng.integers(0, 256, (240, 240, 3), dtype=np.uint8),
              "chelsea.jpg": photo("chelsea")}
    out = []
    for name, a in arrays.items():
        Image.fromarray(a).save(tmp_path / name)
        out.append(tmp_path / name)
    return out


def _expected(plain_scores, paths, bundle) -> np.ndarray:
    """The section's formula, from the plain bundle's scores and the distance of each preprocessed image."""
    pre = bundle.preprocess
    pristine = Pristine.from_bytes(bundle.read("niqe_pristine"))
    out = []
    for s, p in zip(plain_scores, paths):
        d = pristine.distance(luma_of_view(preprocess(p, bundle.preprocess_spec), pre["mean"], pre["std"]))
        z = SECTION["scale"] * (math.log(s / (1 - s)) - SECTION["weight"] * math.log(d)) + SECTION["offset"]
        out.append(1 / (1 + math.exp(-z)))
    return np.array(out)


def test_scorer_applies_the_term_per_image_across_batches_and_bad_inputs(tiny_bundle, fused_bundle, tmp_path):
    from fgresq_sdk.scorer import Scorer

    paths = _images(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    items = paths[:2] + [tmp_path / "broken.png"] + paths[2:]
    plain = Scorer(tiny_bundle, backend="onnxruntime").score(paths)
    fused = Scorer(fused_bundle, backend="onnxruntime", batch_size=2)
    encoded = list(fused.iter_encode(items))
    assert encoded[2].error and encoded[2].score is None
    got = np.array([e.score for e in encoded if e.error is None])
    want = _expected(plain, paths, load_bundle(fused_bundle))
    assert np.abs(got - want).max() < 1e-6
    flat = encoded[3]
    assert flat.log_distance == pytest.approx(math.log(FLAT_DISTANCE))
    assert got[2] < got[[0, 1, 4]].min()  # weight 2 on ln d: the flat frame falls below the photos
    assert fused.describe()["naturalness"]["weight"] == SECTION["weight"]
    # features (so compare and rank) are the plain bundle's
    np.testing.assert_allclose(fused.encode(paths)[0], Scorer(tiny_bundle, backend="onnxruntime").encode(paths)[0],
                               atol=1e-6)


def test_compare_skips_the_distance_and_decides_as_the_plain_model(tiny_bundle, fused_bundle, tmp_path, monkeypatch):
    """compare reads only features, so it (and encode/iter_encode with features_only) never computes the NIQE-style
    distance (~7 ms of numpy per image); its probabilities are the plain bundle's; the features-only Encoded
    carries no score rather than an unfused one."""
    from fgresq_sdk.naturalness import NaturalnessTerm
    from fgresq_sdk.scorer import Scorer

    paths = _images(tmp_path)
    fused = Scorer(fused_bundle, backend="onnxruntime")
    calls = []
    original = NaturalnessTerm.log_distance
    monkeypatch.setattr(NaturalnessTerm, "log_distance", lambda self, v: calls.append(1) or original(self, v))
    got = fused.compare(paths[0], paths[1])
    assert calls == []
    want = Scorer(tiny_bundle, backend="onnxruntime").compare(paths[0], paths[1])
    assert (got.p_first_better, got.p_second_better, got.p_similar) == pytest.approx(
        (want.p_first_better, want.p_second_better, want.p_similar), abs=1e-6)
    only = list(fused.iter_encode(paths[:2], features_only=True))
    assert calls == [] and all(e.score is None and e.log_distance is None and e.features is not None for e in only)
    feats, scores = fused.encode(paths[:2], features_only=True)
    assert np.isnan(scores).all() and feats.shape[0] == 2
    fused.score(paths[:2])  # the score does read it, once per image
    assert len(calls) == 2


def test_the_weight_is_chosen_with_the_hard_negatives_in_and_both_readings_are_recorded():
    """The term serves both absolute goals, so k is chosen by val cross-content SRCC with the val manifest's hard
    negatives in; eval's reading without them (the test manifests' footing) is recorded beside it."""
    from pathlib import Path

    from fgresq_sdk.train.evaluate import cross_content_srcc
    from fgresq_sdk.train.fuse_naturalness import choose
    from fgresq_sdk.train.manifest import ImageRecord, Manifest

    images, logit, logd = {}, [], []
    for c, (offset, dist) in enumerate(((0.0, 1.0), (1.5, 1.3), (-0.7, 0.8))):
        for lv in range(3):
            iid = f"p{c}/deblurring/L{lv}"
            images[iid] = ImageRecord(iid, iid + ".png", "s", "deblurring", f"p{c}", 0.9 - 0.3 * lv,
                                      strength=0.1 + 0.3 * lv)
            logit.append(offset - 0.5 * lv)
            logd.append(dist + 0.1 * lv)
        iid = f"p{c}/deblurring/J"
        images[iid] = ImageRecord(iid, iid + ".png", "s", "deblurring", f"p{c}", 0.0, strength=1.0)
        logit.append(2.0)  # the model alone is fooled by the junk, the distance is not
        logd.append(6.0)
    m = Manifest(root=Path("."), images=images, pairs=[], scenes={"s": {"mos_range": [0.0, 1.0]}})
    ids, logit, logd = list(images), np.array(logit), np.array(logd)
    pick = choose(ids, logit, logd, m, ks=(0.0, 0.5, 1.0, 2.0))
    for row in pick["grid"]:
        fused = dict(zip(ids, logit - row["weight"] * logd))
        assert row["val_cross_content_srcc"] == pytest.approx(
            cross_content_srcc(fused, m, ids, ["deblurring"], hard_negatives=True)["all"])
        assert row["val_cross_content_srcc_without_hard_negatives"] == pytest.approx(
            cross_content_srcc(fused, m, ids, ["deblurring"])["all"])
    assert pick["k"] == max(pick["grid"], key=lambda r: (r["val_cross_content_srcc"], -r["k"]))["k"]
    assert pick["k"] > 0  # only the hard negatives ask for the term here
    assert pick["grid"][0]["val_cross_content_srcc"] < pick["grid"][0]["val_cross_content_srcc_without_hard_negatives"]


@needs_torch
def test_torch_backend_gives_the_same_fused_scores(fused_bundle, tmp_path):
    from fgresq_sdk.scorer import Scorer

    paths = _images(tmp_path)
    ort = Scorer(fused_bundle, backend="onnxruntime").score(paths)
    torch_scores = Scorer(fused_bundle, backend="torch").score(paths)
    assert np.abs(ort - torch_scores).max() <= 1e-4


def test_score_logit_is_clamped_where_float32_saturates():
    z = score_logit(np.array([0.0, 0.5, 1.0], np.float32))
    assert np.all(np.isfinite(z)) and z[1] == 0 and z[0] == pytest.approx(-z[2]) and abs(z[2]) < 17


@pytest.mark.parametrize("change,match", [
    (lambda m: m["naturalness"].update(method="brisque"), "naturalness.method must be 'niqe-log-distance'"),
    (lambda m: m["naturalness"].update(pristine="nope"), "naturalness.pristine must name a file listed"),
    (lambda m: m["naturalness"].update(weight="1"), "naturalness.weight must be a finite number"),
    (lambda m: m["naturalness"].update(weight=10 ** 400), "naturalness.weight must be a finite number"),
    (lambda m: m["naturalness"].update(weight=-0.5), "weight ≥ 0 and scale > 0"),
    (lambda m: m["naturalness"].update(scale=0), "weight ≥ 0 and scale > 0"),
    (lambda m: m["naturalness"].pop("offset"), "naturalness.offset must be a finite number"),
    (lambda m: m.update(preprocess={"size": 32}), r"at least 64 px \(preprocess size 32\)"),
])
def test_malformed_sections_are_one_line_bundle_errors(fused_bundle, tmp_path, change, match):
    b = tmp_path / "b"
    shutil.copytree(fused_bundle, b)
    m = json.loads((b / "model.json").read_text())
    change(m)
    (b / "model.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=match) as exc:
        load_bundle(b)
    assert "\n" not in str(exc.value) and "model.json" in str(exc.value)


def test_a_replaced_or_unusable_pristine_file_is_refused(fused_bundle, tmp_path):
    from fgresq_sdk.scorer import Scorer

    b = tmp_path / "b"
    shutil.copytree(fused_bundle, b)
    raw = json.loads((b / "niqe-pristine.json").read_text())
    raw["cov"][0][0] = -1.0
    (b / "niqe-pristine.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Scorer(b, backend="onnxruntime")
    with pytest.raises(BundleError, match="niqe-pristine.json: covariance is not positive definite"):
        Scorer(b, backend="onnxruntime", verify=False)


@needs_torch
def test_derived_and_repository_exports_carry_the_term(fused_bundle, tmp_path):
    from fgresq_sdk.export.quantize import quantize_bundle
    from fgresq_sdk.export.triton_repo import export_triton_repo
    from fgresq_sdk.scorer import Scorer

    int8 = load_bundle(quantize_bundle(fused_bundle, tmp_path / "int8", validate=False))
    assert int8.manifest["naturalness"] == load_bundle(fused_bundle).manifest["naturalness"]
    assert Scorer(int8, backend="onnxruntime").naturalness is not None
    # re-exported from its checkpoint: the same term, so the same scores
    from fgresq_sdk.export.from_checkpoint import export_checkpoint

    photos = _images(tmp_path)[:2]
    again = load_bundle(export_checkpoint(fused_bundle, tmp_path / "re"))
    assert again.manifest["naturalness"] == load_bundle(fused_bundle).manifest["naturalness"]
    assert np.abs(Scorer(again, backend="onnxruntime").score(photos)
                  - Scorer(fused_bundle, backend="onnxruntime").score(photos)).max() < 1e-5
    repo = export_triton_repo(fused_bundle, tmp_path / "repo")
    record = json.loads((repo / "fgresq_triton_repo.json").read_text())
    pristine = repo / record["naturalness"]["pristine"]
    assert pristine.read_bytes() == (fused_bundle / "niqe-pristine.json").read_bytes()


@needs_torch
def test_fit_on_val_photos_writes_a_calibrated_bundle_and_leaves_the_model_alone(tiny_bundle, tmp_path, capsys):
    from fgresq_sdk.scorer import Scorer
    from fgresq_sdk.train import fuse_naturalness

    from .test_eval import build_tiny_manifest

    build_tiny_manifest(tmp_path / "data").save(tmp_path / "val")
    out = tmp_path / "fused"
    args = ["--model", str(tiny_bundle), "--val-manifest", str(tmp_path / "val"), "--out", str(out), "--ks", "0,1,3"]
    assert fuse_naturalness.main(args) == 0
    fused = load_bundle(out)
    sec = fused.manifest["naturalness"]
    assert sec["fit"]["k"] in (0.0, 1.0, 3.0) and sec["weight"] == pytest.approx(sec["fit"]["k"] * sec["fit"]["weight_per_k"])
    best = max(r["val_cross_content_srcc"] for r in sec["fit"]["grid"])
    assert [r["val_cross_content_srcc"] for r in sec["fit"]["grid"] if r["k"] == sec["fit"]["k"]] == [best]
    for role in ("encoder", "heads"):
        assert (out / fused.entry(role)["path"]).read_bytes() == (tiny_bundle / fused.entry(role)["path"]).read_bytes()
    # recalibrated: the val images' fused scores have their 5th / 95th percentile logits at 0.05 / 0.95
    from fgresq_sdk.train.manifest import Manifest

    man = Manifest.load(tmp_path / "val")
    scores = Scorer(out, backend="onnxruntime").score([man.image_path(i) for i in man.images])
    p5, p95 = np.percentile(score_logit(scores), [5, 95])
    assert (p5, p95) == pytest.approx((math.log(0.05 / 0.95), math.log(0.95 / 0.05)), abs=1e-4)
    # a second fit on the fused bundle, or over a folder that is not a bundle: one line, nothing written
    capsys.readouterr()
    assert fuse_naturalness.main(["--model", str(out)] + args[2:4] + ["--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already has a naturalness term" in err[0] and not (tmp_path / "again").exists()
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    assert fuse_naturalness.main(args[:4] + ["--out", str(keep)]) == 2
    assert (keep / "notes.txt").read_text() == "mine"


def test_every_view_the_encoder_reads_is_measured(fused_bundle, tmp_path):
    """With --flip (each image and its mirror) the term is the mean ln d over both views, as the score is the
    mean over both; with crops the same holds over the crops."""
    from fgresq_sdk.crops import crop_views
    from fgresq_sdk.preprocess import load_image
    from fgresq_sdk.scorer import Scorer

    path = _images(tmp_path)[0]
    bundle = load_bundle(fused_bundle)
    pre, pristine = bundle.preprocess, Pristine.from_bytes(bundle.read("niqe_pristine"))

    def ln_d(view):
        return math.log(pristine.distance(luma_of_view(view, pre["mean"], pre["std"])))

    view = preprocess(path, bundle.preprocess_spec)
    flipped = next(Scorer(bundle, backend="onnxruntime", flip=True).iter_encode([path]))
    assert flipped.log_distance == pytest.approx((ln_d(view) + ln_d(view[..., ::-1])) / 2, rel=1e-12)
    crops = crop_views(load_image(path, str(path)), 3, bundle.preprocess_spec)
    cropped = next(Scorer(bundle, backend="onnxruntime", crops=3).iter_encode([path]))
    assert cropped.log_distance == pytest.approx(np.mean([ln_d(c) for c in crops]), rel=1e-12)
    assert cropped.log_distance != pytest.approx(ln_d(view), rel=1e-6)  # the crops are other pixels
