"""Evaluation metrics (train/metrics.py) and the end-to-end evaluation report (train/evaluate.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage, stats

from fgresq_sdk.train import metrics as M

from .conftest import needs_torch, photo

RNG = np.random.default_rng(1234)
X = RNG.normal(size=60)
Y = 0.7 * X + RNG.normal(scale=0.6, size=60)
Y_TIES = np.round(Y, 0)  # plenty of ties


# -- correlations ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("y", [Y, Y_TIES, -Y])
def test_rank_correlations_match_scipy(y):
    assert M.srcc(X, y) == pytest.approx(stats.spearmanr(X, y)[0], abs=1e-12)
    assert M.krcc(X, y) == pytest.approx(stats.kendalltau(X, y)[0], abs=1e-12)
    assert M.pearson(X, y) == pytest.approx(stats.pearsonr(X, y)[0], abs=1e-12)


def test_degenerate_inputs_give_nan():
    assert math.isnan(M.srcc([1.0], [2.0]))
    assert math.isnan(M.srcc([1, 1, 1], [1, 2, 3]))
    assert math.isnan(M.krcc([1, 2, 3], [5, 5, 5]))
    assert math.isnan(M.plcc([1, 1, 1, 1, 1], [1, 2, 3, 4, 5]))
    # non-finite pairs are dropped, not propagated
    assert M.srcc([1, 2, np.nan, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        M.srcc([1, 2, 3], [1, 2])


def test_logistic_fit_recovers_a_known_curve():
    x = np.linspace(-40.0, 120.0, 81)
    true = (4.5, 1.2, 37.0, 11.0)
    y = M.logistic4(x, *true)
    b1, b2, b3, b4 = M.fit_logistic4(x, y)
    assert (b1, b2, b3, abs(b4)) == pytest.approx(true, rel=1e-4)
    r = M.plcc_detail(x, y)
    assert r.method == "logistic4" and r.value == pytest.approx(1.0, abs=1e-9)
    # raw Pearson on a saturating curve is clearly lower: the mapping matters
    assert M.pearson(x, y) < 0.97


def test_plcc_equals_pearson_of_the_mapped_predictions():
    r = M.plcc_detail(X, Y)
    assert r.method == "logistic4"
    mapped = M.logistic4(X, *r.params)
    assert r.value == pytest.approx(stats.pearsonr(mapped, Y)[0], abs=1e-12)
    assert M.plcc(X, Y) == r.value
    # the fitted curve is at least as good as the linear one (least squares on a richer family)
    assert r.value >= stats.pearsonr(X, Y)[0] - 1e-9


def test_plcc_decreasing_relation_and_fallback():
    x = np.linspace(0, 10, 30)
    y = M.logistic4(x, 1.0, 5.0, 5.0, 1.5)  # decreasing (b1 < b2)
    r = M.plcc_detail(x, y)
    assert r.method == "logistic4" and r.params[0] < r.params[1]
    assert r.value == pytest.approx(-1.0, abs=1e-8)  # signed: the direction shows, as in SRCC
    assert M.srcc(x, y) == pytest.approx(-1.0)
    assert M.plcc(x, y, signed=False) == pytest.approx(1.0, abs=1e-8)  # the classic sign-free value
    few = M.plcc_detail([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])  # too few points for a 4-parameter fit
    assert few.method == "pearson" and few.reason
    assert few.value == pytest.approx(stats.pearsonr([1, 2, 3, 4], [1, 3, 2, 4])[0])
    assert few.to_dict()["method"] == "pearson"
    assert M.plcc_detail(x[:7], y[:7]).method == "pearson"  # below MIN_LOGISTIC_POINTS
    assert M.plcc_detail(x[:7], y[:7], min_points=5).method == "logistic4"


def test_scene_weighted_correlations():
    from fgresq_sdk.train.evaluate import scene_weighted_correlations

    # scene s1 (10 items, MOS 0-100) ordered right; s2 (5 items, MOS 1-5) reversed; s3 too small
    pred = np.r_[np.arange(10.0), np.arange(5.0), 0.0, 1.0]
    mos = np.r_[np.linspace(0, 100, 10), np.linspace(5, 1, 5), 1.0, 2.0]
    scenes = ["s1"] * 10 + ["s2"] * 5 + ["s3"] * 2
    r = scene_weighted_correlations(pred, mos, scenes)
    assert r["srcc"] == pytest.approx((10 * 1.0 + 5 * -1.0) / 15)
    assert r["n_images"] == 15 and r["n_scenes"] == 2
    assert r["scenes_skipped"][0]["scene"] == "s3"
    assert r["plcc_methods"] == {"logistic4": 1, "pearson": 1}  # s2 is below MIN_LOGISTIC_POINTS
    assert r["per_scene"]["s2"]["plcc"] == pytest.approx(-1.0)
    # pooled SRCC would mix the two MOS scales; within-scene SRCC does not
    assert r["srcc"] != pytest.approx(M.srcc(pred[:15], mos[:15]))


# -- pairs ---------------------------------------------------------------------------------------------------
def test_scored_pairs_accuracy_counts_only_pairs_with_both_scores():
    from types import SimpleNamespace as P

    pairs = [P(a="x", b="y", label="first"), P(a="y", b="z", label="first"), P(a="x", b="w", label="second"),
             P(a="x", b="z", label="similar"), P(a="z", b="y", label="first")]
    scores = {"x": 3.0, "y": 1.0, "z": 2.0}  # no score for w: its pair is left out
    acc, used, ranked = M.scored_pairs_accuracy(pairs, scores)
    assert (used, ranked) == (4, 3)
    assert acc == pytest.approx(2 / 3)  # x>y right, y>z wrong, z>y right; the similar pair does not count
    acc, used, ranked = M.scored_pairs_accuracy(pairs[3:4] + pairs[2:3], scores)
    assert math.isnan(acc) and (used, ranked) == (1, 0)


def test_pair_accuracy_hand_made():
    labels = ["first", "second", "first", "similar", "second"]
    p_a = np.array([0.9, 0.2, 0.4, 0.99, 0.5])  # right, right, wrong, (ignored), tie
    assert M.pair_accuracy(p_a, labels) == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    scores = np.array([[3.0, 1.0], [0.0, 2.0], [1.0, 1.5], [9.0, 0.0], [2.0, 2.0]])
    assert M.pair_accuracy(scores, labels) == pytest.approx(2.5 / 4)
    assert M.score_pair_accuracy(scores[:, 0], scores[:, 1], labels) == pytest.approx(2.5 / 4)
    # lower-is-better scores (e.g. a distance) flip the comparison; the tie stays half
    assert M.score_pair_accuracy(scores[:, 0], scores[:, 1], labels, higher_is_better=False) == pytest.approx(1.5 / 4)
    probs = np.array([[0.6, 0.1, 0.3], [0.2, 0.7, 0.1], [0.3, 0.5, 0.2], [0.1, 0.1, 0.8], [0.4, 0.4, 0.2]])
    assert M.pair_accuracy(probs, labels) == pytest.approx(2.5 / 4)
    assert M.pair_accuracy(probs, [0, 1, 0, 2, 1]) == pytest.approx(2.5 / 4)  # int labels
    assert math.isnan(M.pair_accuracy([0.7, 0.1], ["similar", "similar"]))
    with pytest.raises(ValueError):
        M.pair_accuracy([0.7], ["a_is_better"])


def test_three_way_accuracy_hand_made():
    probs = np.array([[0.6, 0.1, 0.3], [0.2, 0.7, 0.1], [0.3, 0.5, 0.2], [0.1, 0.1, 0.8], [0.5, 0.1, 0.4]])
    labels = ["first", "second", "first", "similar", "similar"]
    assert M.three_way_accuracy(probs, labels) == pytest.approx(3 / 5)


def test_symmetrised_preference():
    p_ab = np.array([[0.7, 0.1, 0.2], [0.2, 0.2, 0.6]])
    p_ba = np.array([[0.3, 0.5, 0.2], [0.1, 0.5, 0.4]])
    pref, three = M.symmetrised_pair_probs(p_ab, p_ba)
    # P(a≻b) = 0.7 + 0.1 = 0.8, P(b≻a) = 0.3 + 0.1 = 0.4 → ½(0.8 + 0.6) = 0.7
    assert pref[0] == pytest.approx(0.7)
    assert pref[1] == pytest.approx(0.5 * ((0.2 + 0.3) + 1 - (0.1 + 0.2)))
    assert three[0] == pytest.approx([0.5 * (0.7 + 0.5), 0.5 * (0.1 + 0.3), 0.2])
    assert three.sum(axis=1) == pytest.approx([1.0, 1.0])
    # swapping the roles of a and b mirrors the preference exactly
    pref_rev, _ = M.symmetrised_pair_probs(p_ba, p_ab)
    assert pref + pref_rev == pytest.approx([1.0, 1.0])


# -- Table 2 ranges --------------------------------------------------------------------------------------------
def test_range_srcc_buckets_hand_made():
    # scene A: MOS 0..10 → normalised i/10; scene B: MOS 50..90 → (m−50)/40. Buckets pool both scenes.
    mos_a = np.arange(11.0)
    mos_b = np.array([50.0, 54.0, 58.0, 70.0, 82.0, 90.0])
    mos = np.concatenate([mos_a, mos_b])
    groups = ["A"] * 11 + ["B"] * 6
    norm = M.normalise_per_group(mos, groups)
    assert norm[:11] == pytest.approx(mos_a / 10)
    assert norm[11:] == pytest.approx((mos_b - 50) / 40)
    # predictions: correct order inside [0,0.2) and [0.8,1.0], reversed inside [0.4,0.6)
    pred = norm.copy()
    mid = (norm >= 0.4) & (norm < 0.6)
    pred[mid] = 1.0 - norm[mid]
    r = M.range_srcc(pred, mos, groups)
    assert r.labels == ["[0.0,0.2)", "[0.2,0.4)", "[0.4,0.6)", "[0.6,0.8)", "[0.8,1.0]"]
    # counts: [0,.2): A 0,.1 B 0,.1 → 4; [.2,.4): A .2,.3 B .2 → 3; [.4,.6): A .4,.5 B .5 → 3;
    #         [.6,.8): A .6,.7 → 2; [.8,1]: A .8,.9,1.0 B .8,1.0 → 5
    assert r.n == [4, 3, 3, 2, 5] and r.n_overall == 17
    assert r.srcc[0] == pytest.approx(stats.spearmanr(pred[norm < 0.2], norm[norm < 0.2])[0])
    assert r.srcc[1] == pytest.approx(1.0)
    assert r.srcc[2] == pytest.approx(-1.0)
    assert math.isnan(r.srcc[3])  # fewer than 3 items → "-"
    top = norm >= 0.8
    assert r.srcc[4] == pytest.approx(stats.spearmanr(pred[top], norm[top])[0])  # 1.0 closes the last range
    assert r.overall == pytest.approx(stats.spearmanr(pred, norm)[0])
    d = r.to_dict()
    assert d["[0.8,1.0]"] == r.srcc[4] and d["n"]["overall"] == 17
    # a scene without MOS spread cannot be normalised and is left out
    r2 = M.range_srcc(np.r_[pred, 0.3, 0.4], np.r_[mos, 7.0, 7.0], groups + ["C", "C"])
    assert r2.n_overall == 17


def test_psnr_ssim_helpers_match_skimage():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ref = photo("camera")[:96, :96, 0].astype(np.float64)
    img = np.clip(ref + RNG.normal(scale=8, size=ref.shape), 0, 255)
    assert M.psnr(img, ref) == pytest.approx(peak_signal_noise_ratio(ref, img, data_range=255))
    assert M.ssim(img, ref) == pytest.approx(structural_similarity(ref, img, data_range=255))
    assert M.psnr(ref, ref) == M.PSNR_CAP_DB
    with pytest.raises(ValueError):
        M.psnr(img[:50], ref)
    rgb = photo("astronaut")[:32, :32]
    assert M.to_luma(rgb) == pytest.approx(0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2])


# -- end to end ------------------------------------------------------------------------------------------------
from fgresq_sdk.train.manifest import ImageRecord, Manifest, PairRecord  # noqa: E402


BLUR = (0.6, 1.2, 2.0, 3.0, 4.5)
NOISE = (4.0, 12.0, 25.0, 40.0, 60.0)


def _save(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).save(path)


def build_tiny_manifest(root: Path):
    """Two scenes: a blur series (deblurring) and a noise series (denoising), clean references, MOS falling
    with degradation strength; pairs between neighbours in both orders, plus one `similar` pair."""
    from PIL import Image

    rng = np.random.default_rng(7)
    images: dict[str, ImageRecord] = {}
    pairs: list[PairRecord] = []
    specs = [("blur", "deblurring", "astronaut", BLUR), ("noise", "denoising", "coffee", NOISE)]
    for scene, task, name, levels in specs:
        clean = np.asarray(Image.fromarray(photo(name)).resize((112, 112), Image.BICUBIC)).astype(np.float64)
        ref_rel = f"{scene}/ref.png"
        _save(clean, root / ref_rel)
        ids = []
        for k, s in enumerate(levels):
            if task == "deblurring":
                img = ndimage.gaussian_filter(clean, sigma=(s, s, 0))
            else:
                img = clean + rng.normal(scale=s, size=clean.shape)
            iid = f"{scene}_{k}"
            _save(img, root / f"{scene}/{iid}.png")
            # scene-specific scales: MOS 0-100 (higher better) vs a DMOS 1-5 (lower better) for noise
            mos = 90.0 - 15.0 * k if task == "deblurring" else 1.2 + 0.8 * k
            images[iid] = ImageRecord(image_id=iid, path=f"{scene}/{iid}.png", scene=scene, task=task,
                                      content_id=name, mos=mos, reference=ref_rel, strength=float(s))
            ids.append(iid)
        for k in range(len(ids) - 1):
            pairs.append(PairRecord(ids[k], ids[k + 1], "first"))
            pairs.append(PairRecord(ids[k + 1], ids[k], "second"))
        pairs.append(PairRecord(ids[0], ids[1], "similar"))
    return Manifest(root=root, images=images, pairs=pairs, scenes={"blur": {"mos_range": [0, 100], "higher_is_better": True},
                            "noise": {"mos_range": [1, 5], "higher_is_better": False}}, recipe={"test": True})


@needs_torch
def test_pair_accuracy_by_implementation_hand_made():
    """Groups by the (content, task) implementation the manifest records; similar pairs and pairs with a hard
    negative are left out; score-only methods are judged on the same pairs."""
    from types import SimpleNamespace

    from fgresq_sdk.train.by_implementation import implementation_accuracy
    from fgresq_sdk.train.evaluate import implementation_table
    from fgresq_sdk.train.manifest import ImageRecord, PairRecord

    images, scores = {}, {}
    for cid in ("p", "q", "r"):
        for lv in ("L0", "L1", "L2", "J"):
            iid = f"{cid}/deraining/{lv}"
            images[iid] = ImageRecord(iid, iid + ".png", "s", "deraining", cid, 0.0)
            scores[iid] = {"L0": 3.0, "L1": 2.0, "L2": 1.0, "J": 0.0}[lv]
    man = SimpleNamespace(images=images, recipe={"implementations": {"p/deraining": "drops",
                                                                     "q/deraining": "drops",
                                                                     "r/deraining": "v1"}})
    pairs = [PairRecord("p/deraining/L0", "p/deraining/L1", "first"),   # model right
             PairRecord("p/deraining/L2", "p/deraining/L1", "second"),  # model wrong
             PairRecord("q/deraining/L0", "q/deraining/L2", "first"),   # model wrong
             PairRecord("q/deraining/L1", "q/deraining/L2", "similar"),  # not ranked: left out
             PairRecord("q/deraining/J", "q/deraining/L0", "second"),   # hard negative: left out
             PairRecord("r/deraining/L1", "r/deraining/L0", "second")]  # model right
    pref = np.array([0.9, 0.8, 0.3, 0.5, 0.1, 0.2])  # P(a better)
    out = implementation_accuracy(man, pairs, pref, {"FGResQ": {}, "LapVar (NR)": scores})
    drops, v1 = out["deraining"]["drops"], out["deraining"]["v1"]
    assert (drops["n_contents"], drops["n_pairs"]) == (2, 3) and (v1["n_contents"], v1["n_pairs"]) == (1, 1)
    assert drops["FGResQ"] == pytest.approx(1 / 3) and v1["FGResQ"] == 1.0
    assert drops["LapVar (NR)"] == 1.0  # the scores follow the levels on every kept pair
    lines = implementation_table(out, ["FGResQ", "LapVar (NR)"])
    assert "| Deraining | drops | 2 | 3 | 0.333 | 1.000 |" in lines
    assert implementation_accuracy(SimpleNamespace(images=images, recipe={}), pairs, pref, {}) == {}
    assert implementation_table({}, ["FGResQ"]) == []


def test_evaluate_end_to_end(tiny_bundle, tmp_path, capsys):
    from fgresq_sdk.train.evaluate import METHODS, eval_main, evaluate, write_report

    man = build_tiny_manifest(tmp_path / "data")
    res = evaluate(tiny_bundle, man, backend="onnxruntime")

    assert res["tasks_present"] == ["deblurring", "denoising"]
    assert set(res["tasks_absent"]) == {"super_resolution", "deraining", "dehazing", "mixture"}
    assert res["counts"]["images"] == 10 and res["counts"]["images_encoded"] == 10
    assert res["counts"]["pairs_evaluated"] == 18 and res["errors"] == []
    for t in ("deblurring", "denoising"):
        d = res["tasks"][t]
        assert (d["n_images"], d["n_with_reference"], d["n_scenes"]) == (5, 5, 1)
        assert (d["n_pairs"], d["n_ranked_pairs"], d["n_similar_pairs"]) == (9, 8, 1)
    assert set(res["methods"]) == set(METHODS)
    for m in METHODS:
        for t in res["tasks_present"]:
            pt = res["methods"][m]["per_task"][t]
            assert set(pt) >= {"srcc", "plcc", "acc", "n_images", "n_pairs", "plcc_methods"}
            assert pt["n_images"] == 5
            assert 0.0 <= pt["acc"] <= 1.0
        assert set(res["methods"][m]["average"]) >= {"srcc", "plcc", "acc"}
    # full-reference baselines are exact on monotone series against the clean reference
    for m in ("PSNR", "SSIM"):
        for t in res["tasks_present"]:
            pt = res["methods"][m]["per_task"][t]
            assert pt["acc"] == 1.0 and pt["srcc"] == pytest.approx(1.0)
        assert res["methods"][m]["average"]["acc"] == 1.0
    fg = res["methods"]["FGResQ"]["per_task"]["deblurring"]
    assert 0.0 <= fg["acc3"] <= 1.0 and fg["n_pairs"] == 9 and fg["n_ranked_pairs"] == 8
    # the symmetrised preference makes ACC exactly mirror-consistent: each neighbour pair appears in
    # both orders with mirrored labels, so the two count the same → ACC is a multiple of 1/4 here
    assert (fg["acc"] * 4) == pytest.approx(round(fg["acc"] * 4))
    assert res["methods"]["FGResQ"]["average"]["srcc"] == pytest.approx(
        np.mean([res["methods"]["FGResQ"]["per_task"][t]["srcc"] for t in res["tasks_present"]]))
    # Table 2: 5 images per scene at normalised MOS 0, .25, .5, .75, 1 → one per range, overall over 5 / 10
    rs = res["range_srcc"]
    assert rs["labels"][-1] == "[0.8,1.0]"
    assert rs["all"]["PSNR"]["n"]["overall"] == 10 and rs["per_task"]["deblurring"]["PSNR"]["n"]["overall"] == 5
    assert rs["per_task"]["deblurring"]["PSNR"]["overall"] == pytest.approx(1.0)
    assert rs["per_task"]["deblurring"]["FGResQ"]["[0.0,0.2)"] is None  # one item only → "-"

    jp, mp = write_report(res, tmp_path / "report")
    assert json.loads(jp.read_text())["methods"]["PSNR"]["per_task"]["denoising"]["acc"] == 1.0
    assert "records" not in json.loads(jp.read_text())  # the rows go to the CSV files, not eval.json
    # the rows written beside eval.json reproduce its FGResQ numbers exactly (what the photo bootstrap resamples)
    from fgresq_sdk.train.paired_bootstrap import load_records, statistics

    from fgresq_sdk.train.synthetic import JUNK_KINDS

    rec = load_records(tmp_path / "report")
    assert len(rec.image_ids) == 10 and len(rec.pair_keys) == 18 and rec.junk.shape == (len(rec.clean), len(JUNK_KINDS))
    got = statistics(rec)
    assert got["pair_acc"] == pytest.approx(res["methods"]["FGResQ"]["average"]["acc"], abs=1e-12)
    assert got["cross_content_srcc"] == pytest.approx(res["cross_content_srcc"]["FGResQ"]["all"], abs=1e-12)
    assert got["junk_vs_clean"] == pytest.approx(res["junk_vs_clean"]["clean_wins"], abs=1e-12)
    # the no-reference peers face the same junk; LapVar's share recomputed here from scipy's Laplacian
    from fgresq_sdk.train.evaluate import junk_vs_clean

    class SciPyLapVar:
        def score(self, images):
            return [ndimage.laplace(M.to_luma(a), mode="reflect").var() for a in images]

    peers = res["junk_vs_clean_baselines"]
    assert set(peers) == {"LapVar (NR)", "NIQE (NR)"}
    assert peers["LapVar (NR)"]["clean_wins"] == pytest.approx(junk_vs_clean(SciPyLapVar(), man)["clean_wins"])
    assert peers["LapVar (NR)"]["per_kind"]["noise"]["clean_wins"] < 0.5  # noise is "sharp" to a Laplacian
    assert set(peers["NIQE (NR)"]["per_kind"]) == set(res["junk_vs_clean"]["per_kind"])
    md = mp.read_text()
    assert ("| Junk kind | clean wins | clean wins (compare) | mean score | LapVar (NR): clean wins "
            "| NIQE (NR): clean wins |") in md
    grey = res["junk_vs_clean"]["per_kind"]["grey_noise"]  # a line of its own, the peers' beside it
    lap = peers["LapVar (NR)"]["per_kind"]["grey_noise"]["clean_wins"]
    niqe = peers["NIQE (NR)"]["per_kind"]["grey_noise"]["clean_wins"]
    gc = grey["compare_clean_wins"]
    assert (f"| grey_noise | {grey['clean_wins']:.3f} | {gc:.3f} | {grey['junk_mean_score']:.3f} | {lap:.3f} "
            f"| {niqe:.3f} |") in md
    # the comparison share, recomputed pair by pair through Scorer.compare (the CLI's own decision path) on the
    # same junk images: the share of (clean, junk) pairs whose verdict prefers the clean photo
    from fgresq_sdk.preprocess import load_image
    from fgresq_sdk.scorer import Scorer
    from fgresq_sdk.train.synthetic import _crc, junk_image

    scorer = Scorer(tiny_bundle, backend="onnxruntime")
    refs = sorted({man.images[i].reference: str(man.reference_path(i)) for i in man.images}.items())
    clean = [np.asarray(load_image(p, name=p)) for _, p in refs]
    for kind in ("grey_noise", "resized_noise"):
        junk = [junk_image(kind, c.astype(np.float32), np.random.default_rng([0, _crc(rel), 7]))
                for c, (rel, _) in zip(clean, refs)]
        wins = [(lambda p: p[0] > p[1])(scorer.compare(c, j).probs) for c in clean for j in junk]
        assert res["junk_vs_clean"]["per_kind"][kind]["compare_clean_wins"] == pytest.approx(np.mean(wins))
    assert "compare_clean_wins" not in peers["LapVar (NR)"]  # a statistic has nothing to compare with
    for needle in ("Deblurring SRCC", "SuperResolution SRCC", "Average SRCC", "[0.8,1.0]", "weighted by image count"):
        assert needle in md
    assert "| Method | Deblurring SRCC | PLCC | ACC | Denoising SRCC" in md
    _check_markdown_numbers(md, _independent_metrics(tiny_bundle, man))

    # the CLI path: manifest folder on disk → report files + Markdown on stdout
    man.save(tmp_path / "man")
    capsys.readouterr()
    out = eval_main(tiny_bundle, tmp_path / "man", tmp_path / "cli", "onnxruntime")
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "cli" / "eval.md").read_text()  # stdout carries exactly the written report
    assert (tmp_path / "cli" / "eval.json").exists()
    _check_markdown_numbers(printed, _independent_metrics(tiny_bundle, man))
    assert out["methods"]["PSNR"]["per_task"] == res["methods"]["PSNR"]["per_task"]
    assert out["model"]["views"] == {"crops": 1, "flip": False, "model_mirror": False}
    # --out may be the manifest's own folder: the report's row files never replace the manifest's CSV files
    kept = {f.name: f.read_bytes() for f in (tmp_path / "man").iterdir() if f.is_file()}
    assert {"images.csv", "pairs.csv"} <= set(kept)
    eval_main(tiny_bundle, tmp_path / "man", tmp_path / "man", "onnxruntime")
    assert all((tmp_path / "man" / name).read_bytes() == data for name, data in kept.items())
    assert (tmp_path / "man" / "eval-pairs.csv").is_file()
    # --flip: every image also encoded mirrored (recorded in the report); the baselines do not change
    flipped = eval_main(tiny_bundle, tmp_path / "man", tmp_path / "cli-flip", "onnxruntime", flip=True)
    assert flipped["model"]["views"] == {"crops": 1, "flip": True, "model_mirror": False}
    assert flipped["counts"]["images_encoded"] == out["counts"]["images_encoded"]
    assert "+ mirrored views" in (tmp_path / "cli-flip" / "eval.md").read_text()
    assert flipped["methods"]["PSNR"]["per_task"] == out["methods"]["PSNR"]["per_task"]
    assert flipped["methods"]["FGResQ"]["per_task"] != out["methods"]["FGResQ"]["per_task"]
    # --no-baselines (the recipe's second model on the same photos): the model's numbers as with them, no peers
    from cli_runner import run_cli

    res_cli = run_cli("eval", "--model", tiny_bundle, "--manifest", tmp_path / "man", "--out", tmp_path / "nb",
                      "--no-baselines", cwd=tmp_path)
    assert res_cli.rc == 0, res_cli.err
    bare = json.loads((tmp_path / "nb" / "eval.json").read_text())
    assert set(bare["methods"]) == {"FGResQ"} and not bare.get("junk_vs_clean_baselines")
    assert bare["methods"]["FGResQ"] == json.loads((tmp_path / "cli" / "eval.json").read_text())["methods"]["FGResQ"]
    assert bare["cross_content_srcc"]["FGResQ"] == out["cross_content_srcc"]["FGResQ"]
    # the model's junk-vs-clean check stays (the recipe's ship rule reads it); only the peers' go
    assert bare["junk_vs_clean"]["clean_wins"] == out["junk_vs_clean"]["clean_wins"] is not None
    assert "| FGResQ |" in res_cli.out and "not computed (--no-baselines)" in res_cli.out
    rest = res_cli.out.replace("Baselines (PSNR/SSIM, LapVar, NIQE) not computed", "")
    assert not any(m in rest for m in ("PSNR", "SSIM", "LapVar", "NIQE")), res_cli.out


def _independent_metrics(bundle_dir: Path, man: Manifest) -> dict:
    """What the report must say for the tiny manifest, computed without train/evaluate.py or metrics.py:
    scores and comparison probabilities from the torch model itself, PSNR with skimage on hand-made luma,
    correlations with scipy. Each task has one scene of 5 images (< 8: PLCC is plain Pearson)."""
    import torch
    from PIL import Image
    from skimage.metrics import peak_signal_noise_ratio

    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.model import load_checkpoint
    from fgresq_sdk.preprocess import preprocess

    bundle = load_bundle(bundle_dir)
    model = load_checkpoint(bundle.path("checkpoint")).eval()
    ids = list(man.images)
    with torch.no_grad():
        q, s = model(torch.from_numpy(np.stack([preprocess(man.image_path(i), bundle.preprocess) for i in ids])))
    pos = {iid: k for k, iid in enumerate(ids)}

    def probs(a: str, b: str) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model.compare_logits(q[pos[a]][None], q[pos[b]][None])[0].double(), 0).numpy()

    def luma(path) -> np.ndarray:
        rgb = np.asarray(Image.open(path).convert("RGB"), np.float64)
        return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]

    label_index = {"first": 0, "second": 1, "similar": 2}
    out: dict = {"FGResQ": {}, "PSNR": {}, "counts": {}}
    for task in ("deblurring", "denoising"):
        tid = [i for i in ids if man.images[i].task == task]
        higher = man.scenes[man.images[tid[0]].scene]["higher_is_better"]
        quality = np.array([man.images[i].mos for i in tid]) * (1 if higher else -1)
        fg = np.array([float(s[pos[i]]) for i in tid])
        ps = np.array([peak_signal_noise_ratio(luma(man.reference_path(i)), luma(man.image_path(i)), data_range=255)
                       for i in tid])
        pairs = [p for p in man.pairs if man.images[p.a].task == task]
        ranked = [p for p in pairs if p.label != "similar"]
        right_fg, right_ps, right3 = [], [], []
        for p in pairs:
            p_ab, p_ba = probs(p.a, p.b), probs(p.b, p.a)
            three = 0.5 * (p_ab + p_ba[[1, 0, 2]])  # (a better, b better, similar), both orders averaged
            right3.append(float(np.argmax(three) == label_index[p.label]))
            if p.label == "similar":
                continue
            pref = 0.5 * (p_ab[0] + 0.5 * p_ab[2] + 1 - (p_ba[0] + 0.5 * p_ba[2]))  # P̃(a ≻ b)
            d_fg = pref - 0.5
            d_ps = ps[tid.index(p.a)] - ps[tid.index(p.b)]
            sign = 1 if p.label == "first" else -1
            right_fg.append(0.5 if d_fg == 0 else float(sign * d_fg > 0))
            right_ps.append(0.5 if d_ps == 0 else float(sign * d_ps > 0))
        out["FGResQ"][task] = {"srcc": stats.spearmanr(fg, quality)[0], "plcc": stats.pearsonr(fg, quality)[0],
                               "acc": np.mean(right_fg), "acc3": np.mean(right3)}
        out["PSNR"][task] = {"srcc": stats.spearmanr(ps, quality)[0], "plcc": stats.pearsonr(ps, quality)[0],
                             "acc": np.mean(right_ps)}
        out["counts"][task] = [len(tid), len(tid), 1, len(pairs), len(ranked), len(pairs) - len(ranked)]
    for m in ("FGResQ", "PSNR"):
        out[m]["average"] = {k: np.mean([out[m][t][k] for t in ("deblurring", "denoising")])
                             for k in ("srcc", "plcc", "acc")}
    out["FGResQ"]["average"]["acc3"] = np.mean([out["FGResQ"][t]["acc3"] for t in ("deblurring", "denoising")])
    return out


def _md_rows(md: str, first: str) -> list[list[str]]:
    """The cells of every Markdown table row whose first cell is `first`."""
    return [[c.strip() for c in line.strip()[1:-1].split("|")] for line in md.splitlines()
            if line.startswith(f"| {first} |")]


def _cell_is(cell: str, value: float) -> bool:
    """A 3-decimal cell shows `value` (independently computed: up to rounding, plus 1e-5 for float paths)."""
    return abs(float(cell) - float(value)) <= 5e-4 + 1e-5


def _check_markdown_numbers(md: str, want: dict) -> None:
    """Table 3 layout: block 1 = Deblurring, Denoising, Deraining; block 2 = Dehazing, Mixture,
    SuperResolution, Average — each as SRCC | PLCC | ACC; absent tasks are '-'."""
    from fgresq_sdk.train.evaluate import METHODS

    for m in ("FGResQ", "PSNR"):
        first, second = _md_rows(md, m)
        w = want[m]
        cells = [w["deblurring"][k] for k in ("srcc", "plcc", "acc")] + [w["denoising"][k] for k in ("srcc", "plcc", "acc")]
        assert len(first) == 10 and first[7:] == ["-"] * 3, first
        assert all(_cell_is(c, v) for c, v in zip(first[1:7], cells)), (m, first, cells)
        avg = [w["average"][k] for k in ("srcc", "plcc", "acc")]
        assert len(second) == 13 and second[1:10] == ["-"] * 9, second
        assert all(_cell_is(c, v) for c, v in zip(second[10:], avg)), (m, second, avg)
    # counts table: images, with ref, scenes, pairs, ranked, similar, ACC3, PLCC fits logistic/pearson
    for task, title in (("deblurring", "Deblurring"), ("denoising", "Denoising")):
        (row,) = [r for r in _md_rows(md, title) if r[1].isdigit()]  # not the Table 2 rows below
        assert [int(c) for c in row[1:7]] == want["counts"][task], row
        assert _cell_is(row[7], want["FGResQ"][task]["acc3"]) and row[8] == "0/1", row
    (avg_row,) = _md_rows(md, "Average")
    assert _cell_is(avg_row[7], want["FGResQ"]["average"]["acc3"]), avg_row
    # Table 2 layout, per task: 5 images at normalised MOS 0, ¼, ½, ¾, 1 → one per range ('-': < 3 items);
    # "Overall" is the SRCC over the scene's 5 images
    for task, title in (("deblurring", "Deblurring"), ("denoising", "Denoising")):
        rows = {r[1]: r for r in _md_rows(md, title) if r[1] in METHODS}
        for m in ("FGResQ", "PSNR"):
            assert rows[m][2:7] == ["-"] * 5 and rows[m][8] == "5", rows[m]
            assert _cell_is(rows[m][7], want[m][task]["srcc"]), rows[m]


def test_every_junk_kind_counts_in_the_share_grey_noise_too(tmp_path):
    """Grey noise is in the share whether or not a recipe drew it (issue 13's target names noise): a scorer
    that rewards colour loses every colour-noise pair and wins every grey-noise pair, and the share, its count
    and the rows behind the bootstrap hold both."""
    from fgresq_sdk.train import photos as ph
    from fgresq_sdk.train import synthetic as syn
    from fgresq_sdk.train.evaluate import junk_vs_clean
    from fgresq_sdk.train.manifest import Manifest

    class Colourfulness:
        def score(self, images):
            return [float(np.ptp(np.asarray(im, np.float64), axis=2).mean()) for im in images]

    srcs = [s for s in ph.skimage_sources() if s[0] in ("skimage-astronaut", "skimage-coffee")]
    syn.generate(ph.load_photos(srcs, max_side=128), tmp_path / "test", seed=0, size=48, levels=3,
                 tasks=("deblurring",))
    r = junk_vs_clean(Colourfulness(), Manifest.load(tmp_path / "test"))
    assert set(r["per_kind"]) == set(syn.JUNK_KINDS) and "grey_noise" in r["per_kind"]
    assert r["n_junk"] == 2 * len(syn.JUNK_KINDS) and {row["kind"] for row in r["scores"]} == {"clean", *syn.JUNK_KINDS}
    assert r["per_kind"]["grey_noise"] == {"clean_wins": 1.0, "junk_mean_score": 0.0}
    assert r["per_kind"]["noise"]["clean_wins"] == 0.0
    assert r["clean_wins"] == pytest.approx(np.mean([v["clean_wins"] for v in r["per_kind"].values()]))


def test_junk_vs_clean_does_not_depend_on_where_the_data_lies(tmp_path):
    """The hard negatives are seeded by each reference's name inside the manifest: the same test set copied to
    another work folder gets the same junk and the same numbers (they were keyed by the full path, so the
    default model's junk-vs-clean read 0.721 under data/ and 0.708 under data9/)."""
    import shutil

    from fgresq_sdk.train import photos as ph
    from fgresq_sdk.train import synthetic as syn
    from fgresq_sdk.train.evaluate import junk_vs_clean
    from fgresq_sdk.train.manifest import Manifest

    class MeanLuma:  # any deterministic scorer: the question is only which junk it is shown
        def score(self, images):
            return [float(np.asarray(im, np.float64).mean()) for im in images]

    srcs = [s for s in ph.skimage_sources() if s[0] in ("skimage-astronaut", "skimage-coffee")]
    syn.generate(ph.load_photos(srcs, max_side=128), tmp_path / "a" / "test", seed=0, size=48, levels=3,
                 tasks=("deblurring",))
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
    ra = junk_vs_clean(MeanLuma(), Manifest.load(tmp_path / "a" / "test"))
    rb = junk_vs_clean(MeanLuma(), Manifest.load(tmp_path / "elsewhere" / "b" / "test"))
    assert ra["n_clean"] == 2 and ra["n_junk"] == 2 * len(syn.JUNK_KINDS)
    assert ra == rb
    assert len({v["junk_mean_score"] for v in ra["per_kind"].values()}) == len(syn.JUNK_KINDS)


def _write_eval_rows(folder: Path, pref_by_photo: dict[str, float], clean_score: float = 0.9,
                     hard_negative_score: float | None = None) -> Path:
    """A hand-made eval folder: photos p, q, r (r in two crops), one task each of two, 3 levels per content;
    every ranked pair of a photo gets P(a better) = pref_by_photo[photo] (a is always the better image).
    hard_negative_score: each content also gets its generator hard negative <cid>/J with this score."""
    import csv

    folder.mkdir(parents=True)
    contents = {"p": ("deblurring", [0.8, 0.5, 0.3]), "q": ("deblurring", [0.7, 0.6, 0.1]),
                "r_c0": ("denoising", [0.9, 0.4, 0.2]), "r_c1": ("denoising", [0.6, 0.5, 0.45])}
    images, pairs, junk = [], [], []
    for cid, (task, scores) in contents.items():
        photo = cid.split("_c")[0]
        for lv, sc in enumerate(scores):
            images.append({"image_id": f"{cid}/L{lv}", "content_id": cid, "task": task, "scene": task,
                           "reference": f"refs/{cid}.png", "unit_quality": 1.0 - lv / 2, "FGResQ": sc,
                           "hard_negative": 0})
        if hard_negative_score is not None:
            images.append({"image_id": f"{cid}/J", "content_id": cid, "task": task, "scene": task,
                           "reference": f"refs/{cid}.png", "unit_quality": 0.0, "FGResQ": hard_negative_score,
                           "hard_negative": 1})
        for a, b in ((0, 1), (1, 2), (0, 2)):
            pairs.append({"a": f"{cid}/L{a}", "b": f"{cid}/L{b}", "task": task, "label": "first",
                          "p_first_better": pref_by_photo[photo]})
        pairs.append({"a": f"{cid}/L0", "b": f"{cid}/L1", "task": task, "label": "similar", "p_first_better": 0.1})
        junk.append({"reference": f"refs/{cid}.png", "kind": "clean", "score": clean_score if photo != "q" else 0.2})
        junk += [{"reference": f"refs/{cid}.png", "kind": k, "score": v} for k, v in (("noise", 0.5), ("flat", 0.1))]
    for name, rows in (("eval-images.csv", images), ("eval-pairs.csv", pairs), ("eval-junk.csv", junk)):
        with open(folder / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return folder


def test_cross_content_srcc_leaves_the_generator_hard_negatives_out():
    """A val manifest made with --junk holds one hard negative per (content, task) far below every level; a test
    manifest holds none. Left in, they lift the same model's cross-content SRCC (v20: 0.46 → 0.60 on the val
    photos), so val and test would read different things. An id ending in /J without the generator's strength 1
    is an ordinary image."""
    from scipy.stats import spearmanr

    from fgresq_sdk.train.evaluate import cross_content_srcc, hard_negative
    from fgresq_sdk.train.manifest import ImageRecord, Manifest

    images, scores = {}, {}
    for cid, order in (("a", [0.9, 0.5, 0.6]), ("b", [0.7, 0.8, 0.2])):
        for lv, sc in enumerate(order):
            iid = f"{cid}/deblurring/L{lv}"
            images[iid] = ImageRecord(iid, iid + ".png", "s", "deblurring", cid, 8.0 - 3 * lv, strength=0.1 + 0.3 * lv)
            scores[iid] = sc
        iid = f"{cid}/deblurring/J"
        images[iid] = ImageRecord(iid, iid + ".png", "s", "deblurring", cid, 0.1, strength=1.0)
        scores[iid] = 0.01
    m = Manifest(root=Path("."), images=images, pairs=[], scenes={"s": {"mos_range": [0.0, 10.0]}})
    levels = [i for i in images if not i.endswith("/J")]
    want = spearmanr([scores[i] for i in levels], [images[i].mos for i in levels]).statistic
    got = cross_content_srcc(scores, m, sorted(images), ["deblurring"])
    assert got["all"] == pytest.approx(want) and got["deblurring"] == pytest.approx(want)
    every = sorted(images)
    assert spearmanr([scores[i] for i in every], [images[i].mos for i in every]).statistic > want + 0.05
    assert hard_negative(m, "a/deblurring/J") and not hard_negative(m, "a/deblurring/L0")
    images["a/deblurring/J"].strength = None  # a user's image that happens to be called J
    assert not hard_negative(m, "a/deblurring/J")
    assert cross_content_srcc(scores, m, sorted(images), ["deblurring"])["all"] != pytest.approx(want)


def test_paired_bootstrap_counts_photos_as_eval_does_and_resamples_them_together(tmp_path, capsys):
    """Hand-made rows: the statistics on the photos as drawn follow eval's definitions, a photo's crops move
    together, re-weighting photos changes the numbers as computed by hand, the bootstrap of B − A is paired
    (one model against itself: exactly 0 in every draw) and seeded, and mismatched folders are refused."""
    from scipy.stats import spearmanr

    from fgresq_sdk.train.paired_bootstrap import BootstrapError, load_records, main, paired_bootstrap, statistics

    a = load_records(_write_eval_rows(tmp_path / "a", {"p": 0.9, "q": 0.2, "r": 0.7}))
    b = load_records(_write_eval_rows(tmp_path / "b", {"p": 0.9, "q": 0.8, "r": 0.7}, clean_score=0.3))
    assert a.photos == ["p", "q", "r"] and list(a.image_photo) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    sa = statistics(a)
    # deblurring: p right on 3, q wrong on 3 → 0.5; denoising: r right on 6 → 1.0; similar pairs left out
    assert sa["pair_acc"] == pytest.approx(0.75)
    scores = [0.8, 0.5, 0.3, 0.7, 0.6, 0.1, 0.9, 0.4, 0.2, 0.6, 0.5, 0.45]
    assert sa["cross_content_srcc"] == pytest.approx(spearmanr(scores, [1.0, 0.5, 0.0] * 4).statistic)
    # clean 0.9 (p, r_c0, r_c1) and 0.2 (q) against junk 0.5 / 0.1 of all four references
    assert sa["junk_vs_clean"] == pytest.approx((3 * 8 + 1 * 4) / 32)
    assert statistics(b)["pair_acc"] == pytest.approx(1.0)
    # photo p drawn twice, q never, r once: deblurring is p's alone; r's two crops count once each
    w = statistics(a, np.array([2, 0, 1]))
    assert w["pair_acc"] == pytest.approx(1.0)
    assert w["cross_content_srcc"] == pytest.approx(
        spearmanr([0.8, 0.5, 0.3] * 2 + scores[6:], [1.0, 0.5, 0.0] * 4).statistic)
    assert w["junk_vs_clean"] == pytest.approx(1.0)  # only clean 0.9 references left, every junk below
    # the generator's hard negatives (eval writes hard_negative = 1) stay out of cross-content SRCC, as in eval:
    # scored above everything they would pull it down, yet the statistic is the same
    with_j = statistics(load_records(_write_eval_rows(tmp_path / "j", {"p": 0.9, "q": 0.2, "r": 0.7},
                                                      hard_negative_score=0.99)))
    assert with_j["cross_content_srcc"] == pytest.approx(sa["cross_content_srcc"], abs=1e-12)
    same = paired_bootstrap(a, a, draws=50, seed=3)
    assert all(r["sd_diff"] == 0.0 and r["ci95"] == [0.0, 0.0] for r in same["statistics"].values())
    res = paired_bootstrap(a, b, draws=200, seed=1)
    acc = res["statistics"]["pair_acc"]
    assert (acc["a"], acc["b"]) == (pytest.approx(0.75), pytest.approx(1.0))
    assert 0.0 <= acc["ci95"][0] <= acc["ci95"][1] <= 1.0 and 0 < acc["share_b_higher"] < 1  # B never below A
    assert res == paired_bootstrap(a, b, draws=200, seed=1)  # seeded
    assert res["statistics"]["junk_vs_clean"]["b_minus_a"] < 0
    c = load_records(_write_eval_rows(tmp_path / "c", {"p": 0.9, "q": 0.2, "r": 0.7}))
    c.pair_keys = c.pair_keys[1:] + c.pair_keys[:1]
    with pytest.raises(BootstrapError, match="different pairs"):
        paired_bootstrap(a, c, draws=5)
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--draws", "20", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "3 photos, 20 draws" in out and "pair_acc" in out
    assert json.loads((tmp_path / "r.json").read_text())["statistics"]["pair_acc"]["b"] == pytest.approx(1.0)
    assert main([str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err and "not found" in err


@needs_torch
def test_baselines_in_processes_are_the_sequential_ones(tiny_bundle, tmp_path, monkeypatch):
    """The baselines and the peers' junk check run in a process pool on large manifests (baseline_pool): every
    number, and the error of an unreadable image, as computed in one process."""
    import contextlib
    import os

    import fgresq_sdk.train.evaluate as E

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one usable core: the baselines run in this process")
    man = build_tiny_manifest(tmp_path / "data")
    (tmp_path / "data" / "noise" / "noise_4.png").write_bytes(b"not a png")  # its errors come from the workers
    monkeypatch.setattr(E, "PARALLEL_MIN_IMAGES", 10**9)
    one = E.evaluate(tiny_bundle, man, backend="onnxruntime")
    pools = []
    real = E.baseline_pool

    @contextlib.contextmanager
    def recorded(n_images):
        with real(n_images) as pool:
            pools.append(pool)
            yield pool
    monkeypatch.setattr(E, "PARALLEL_MIN_IMAGES", 1)
    monkeypatch.setattr(E, "baseline_pool", recorded)
    many = E.evaluate(tiny_bundle, man, backend="onnxruntime")
    assert len(pools) == 1 and pools[0] is not None
    for key in ("methods", "range_srcc", "cross_content_srcc", "junk_vs_clean", "junk_vs_clean_baselines",
                "errors", "counts"):
        assert json.dumps(many[key], sort_keys=True) == json.dumps(one[key], sort_keys=True), key
    stages = {e.get("stage") for e in many["errors"] if e.get("image_id") == "noise_4"}
    assert {"encode", "baselines", "nr_baseline"} <= stages
    assert set(many["junk_vs_clean_baselines"]) == {"LapVar (NR)", "NIQE (NR)"}
    assert all("clean_wins" in v for v in many["junk_vs_clean_baselines"].values())


@needs_torch
def test_a_broken_baseline_pool_is_the_peers_error_not_the_models(tiny_bundle, tmp_path):
    """junk_vs_clean with peers: if the pool itself fails (a worker killed), the peers say so in one line and the
    model's own check, which the ship rule reads, is unaffected."""
    from fgresq_sdk.scorer import Scorer
    from fgresq_sdk.train.evaluate import _nr_functions, junk_vs_clean

    class BrokenPool:
        def map(self, *args, **kwargs):
            raise RuntimeError("A process in the process pool was terminated abruptly\nwhile the future was running")

    man = build_tiny_manifest(tmp_path / "data")
    scorer = Scorer(tiny_bundle, backend="onnxruntime")
    alone = junk_vs_clean(scorer, man)
    got = junk_vs_clean(scorer, man, peers=_nr_functions([]), pool=BrokenPool())
    peers = got.pop("peers")
    assert json.dumps(got, sort_keys=True) == json.dumps(alone, sort_keys=True)
    assert set(peers) == {"LapVar (NR)", "NIQE (NR)"}
    assert all(v == {"error": "A process in the process pool was terminated abruptly"} for v in peers.values())
