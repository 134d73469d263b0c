"""int8 and multi-crop: geometry, exactness of the averaging, and accuracy against fp32."""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image, ImageFilter

from conftest import needs_torch
from fgresq_sdk.crops import crop_boxes, crop_centres, crop_views


# Hand-computed 224² boxes (left, top, right, bottom) for a 2048×1080 image. A crop at relative centre
# (cx, cy) starts at round(cx·W − 112), round(cy·H − 112):
#   x: ½ → 1024−112 = 912; ¼ → 512−112 = 400; ¾ → 1536−112 = 1424;
#      ⅙ → 341.3−112 → 229; 5⁄6 → 1706.7−112 → 1595
#   y: ½ → 540−112 = 428; ¼ → 270−112 = 158; ¾ → 810−112 = 698; ⅙ → 180−112 = 68; 5⁄6 → 900−112 = 788
_X = {"1/2": 912, "1/4": 400, "3/4": 1424, "1/6": 229, "5/6": 1595}
_Y = {"1/2": 428, "1/4": 158, "3/4": 698, "1/6": 68, "5/6": 788}


def _box(x: str, y: str) -> tuple[int, int, int, int]:
    return (_X[x], _Y[y], _X[x] + 224, _Y[y] + 224)


CROP_BOXES_2048x1080 = {
    1: [_box("1/2", "1/2")],
    # k = 2: the 2×2 grid's first and last cells
    2: [_box("1/4", "1/4"), _box("3/4", "3/4")],
    # k = 4: the 2×2 grid in reading order
    4: [_box("1/4", "1/4"), _box("3/4", "1/4"), _box("1/4", "3/4"), _box("3/4", "3/4")],
    # k = 5: the 2×2 grid, then the centre
    5: [_box("1/4", "1/4"), _box("3/4", "1/4"), _box("1/4", "3/4"), _box("3/4", "3/4"), _box("1/2", "1/2")],
    # k = 9: the 3×3 grid in reading order
    9: [_box(x, y) for y in ("1/6", "1/2", "5/6") for x in ("1/6", "1/2", "5/6")],
}


@pytest.mark.parametrize("k", sorted(CROP_BOXES_2048x1080))
def test_crop_boxes_hand_computed(k):
    assert crop_boxes(2048, 1080, k, 224) == CROP_BOXES_2048x1080[k]
    assert len(crop_centres(k)) == k
    for w, h in [(2048, 1080), (300, 224), (224, 640)]:
        for left, top, right, bottom in crop_boxes(w, h, k, 224):
            assert 0 <= left and right <= w and 0 <= top and bottom <= h
            assert right - left == 224 and bottom - top == 224


def test_crop_boxes_clamped_inside_small_images():
    # 300×224: x centres ¼, ¾ → 75−112 < 0 → 0, 225−112 = 113 > 300−224 = 76 → 76; x ½ → 150−112 = 38;
    # the height is the crop size, so every top is 0.
    assert crop_boxes(300, 224, 1, 224) == [(38, 0, 262, 224)]
    assert crop_boxes(300, 224, 4, 224) == [(0, 0, 224, 224), (76, 0, 300, 224)] * 2
    # 224×640: every left is 0; y ⅙ → 106.7−112 < 0 → 0, ½ → 320−112 = 208, 5⁄6 → 533.3−112 = 421 > 416 → 416
    assert crop_boxes(224, 640, 9, 224) == [(0, t, 224, t + 224) for t in (0, 208, 416) for _ in range(3)]
    # y ¼ → 160−112 = 48, ¾ → 480−112 = 368
    assert crop_boxes(224, 640, 2, 224) == [(0, 48, 224, 272), (0, 368, 224, 592)]


def test_crop_views_are_native_resolution_pixels():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(600, 800, 3), dtype=np.uint8)
    views = crop_views(Image.fromarray(arr), 4, 224, mean=(0, 0, 0), std=(1, 1, 1))
    assert views.shape == (4, 3, 224, 224)
    left, top, right, bottom = crop_boxes(800, 600, 4, 224)[3]
    assert np.allclose(views[3].transpose(1, 2, 0) * 255, arr[top:bottom, left:right], atol=1e-3)
    small = crop_views(Image.fromarray(arr[:100, :150]), 2, 224)
    assert small.shape == (2, 3, 224, 224)


@needs_torch
def test_multicrop_averages_features_and_scores_exactly(tiny_bundle, photo_paths):
    import torch

    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.model import load_checkpoint
    from fgresq_sdk.preprocess import load_image
    from fgresq_sdk.scorer import Scorer

    k = 4
    scorer = Scorer(tiny_bundle, crops=k, batch_size=3)
    q, s = scorer.encode(photo_paths)
    assert scorer.encoded_images == k * len(photo_paths)
    # Independent expectation: the fp32 torch model run on each crop separately (Scorer: onnxruntime).
    model = load_checkpoint(load_bundle(tiny_bundle).path("checkpoint"))
    per_crop = []
    for i, p in enumerate(photo_paths):
        with torch.no_grad():
            qt, st = model(torch.from_numpy(crop_views(load_image(p), k)))
        per_crop.append(qt)
        assert np.allclose(q[i], qt.mean(0).numpy(), atol=1e-4)
        assert abs(s[i] - st.mean().item()) <= 1e-4
    # Comparisons average the comparison logits over the K aligned crop pairs (crop c of a with crop c
    # of b), which is what averaged features give, the head being linear. Expected: the torch head on
    # each crop pair, logits averaged, softmax — against Scorer.compare (numpy head) and against the
    # symmetrised preference P̃ = ½(P(a≻b) + 1 − P(b≻a)), P(x≻y) = p_first + ½·p_similar, that
    # Scorer.rank uses (numpy head terms of the averaged features).
    def expected(a, b):
        with torch.no_grad():
            logits = model.compare_logits(per_crop[a], per_crop[b]).mean(0)
        return torch.softmax(logits.double(), dim=0).numpy()

    pref = scorer.rank(photo_paths).p_better_matrix()
    n = len(photo_paths)
    for a, b in [(0, 1), (1, 0), (2, n - 1), (n - 2, 3)]:
        want, back = expected(a, b), expected(b, a)
        c = scorer.compare(photo_paths[a], photo_paths[b])
        # compare() gives the head on (a, b) as ordered where the Comparison says raw, else the
        # order-symmetrised mean of (a, b) and the mirrored (b, a)
        sym = 0.5 * (want + back[[1, 0, 2]])
        expect = want if getattr(c, "raw", True) else sym
        assert np.allclose([c.p_first_better, c.p_second_better, c.p_similar], expect, atol=1e-4), (a, b)
        p_tilde = 0.5 * (want[0] + 0.5 * want[2] + 1 - (back[0] + 0.5 * back[2]))
        assert abs(pref[a, b] - p_tilde) <= 1e-4, (a, b)


@needs_torch
def test_fp16_onnx_bundle_on_cpu_within_fp16_tolerance(tiny_bundle, photo_paths, tmp_path):
    from fgresq_sdk.export.half import half_bundle
    from fgresq_sdk.scorer import Scorer

    half = half_bundle(tiny_bundle, tmp_path / "fp16")
    s32 = Scorer(tiny_bundle).score(photo_paths)
    s16 = Scorer(half).score(photo_paths)
    assert np.max(np.abs(s16 - s32)) <= 5e-3


def test_fp16_bundle_of_the_embedded_default_keeps_its_prior_fp32_and_its_scores(photo_paths, tmp_path):
    """The default's low-level prior reads variances and logs with floors down to 1e-12 and weighs them by tens:
    converted to fp16 with the towers it moved scores by up to 0.047 (0.077 before the classical statistics).
    Its nodes and the constants only fp32 nodes read stay fp32 in both fp16 graphs."""
    pytest.importorskip("onnx")
    import onnx

    from fgresq_sdk.bundle import default_bundle_path
    from fgresq_sdk.export.half import FP16_ENCODER, half_bundle, half_file
    from fgresq_sdk.scorer import Scorer

    src = default_bundle_path()
    half = half_bundle(src, tmp_path / "fp16")
    for path, fp32_head in ((half / FP16_ENCODER, False), (tmp_path / "trt.onnx", True)):
        if fp32_head:
            half_file(src / "encoder.onnx", path, fp32_head=True)
        g = onnx.load(str(path))
        halves = {o.name for o in g.graph.value_info if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16}
        # the prior's own nodes compute in fp32 (the converter's Cast where its term meets an fp16 head aside)
        prior = [n for n in g.graph.node if n.name.startswith("/prior/") and n.op_type != "Cast"]
        assert len(prior) > 100 and not [n.name for n in prior if set(n.output) & halves], path.name
    flat = np.full((64, 64, 3), 128, np.uint8)
    images = [flat] + [np.asarray(Image.open(p).convert("RGB").filter(ImageFilter.GaussianBlur(r)))
                       for p in photo_paths[:4] for r in (0, 1, 3)]
    s32, s16 = Scorer(src).score(images), Scorer(half).score(images)
    assert s16[0] > 0 and np.max(np.abs(s16 - s32)) <= 5e-3
    # the prior's pair term shifts the features by tens (up to ~125 on the test photos) in fp32 nodes: the pair
    # decisions of the fp16 bundle stay the fp32 bundle's (300 test-photo images, 44,850 pairs: all identical,
    # |ΔP| ≤ 0.003, Intel Xeon 2026-12-04)
    from fgresq_sdk.heads import CompareHeadNP
    from fgresq_sdk.ranking import symmetric_preferences

    head = CompareHeadNP.from_npz(str(src / "heads.npz"))
    prefs = [symmetric_preferences(head.all_pairs_probs(Scorer(bundle).encode(images)[0]))[0][
        np.triu_indices(len(images), 1)] for bundle in (src, half)]
    flips = (prefs[0] > 0.5) != (prefs[1] > 0.5)
    assert np.abs(prefs[0] - prefs[1]).max() <= 0.02, np.abs(prefs[0] - prefs[1]).max()
    # a decision may flip only where fp32 itself calls it a near tie (|P − 0.5| ≤ 0.02; one of this set's 78 pairs)
    assert not np.any(flips & (np.abs(prefs[0] - 0.5) > 0.02)), prefs[0][flips]


@needs_torch
def test_fp16_graph_that_crashes_the_ort_cpu_optimizer_loads(tmp_path, photo_paths):
    """onnxruntime 1.32's CPU optimizer segfaults on an fp16 encoder whose head is fp32 (ConstantSharing then
    NchwcTransformer). The backend disables that pass for fp16 encoders on the CPU; run in a child process
    so a crash fails this test, not the whole suite."""
    import json
    import shutil
    import subprocess
    import sys

    from fgresq_sdk.bundle import default_bundle_path, write_manifest
    from fgresq_sdk.export.half import half_file

    src = default_bundle_path()
    dst = tmp_path / "fp16-fp32head"
    dst.mkdir()
    half_file(src / "encoder.onnx", dst / "encoder.onnx", fp32_head=True)
    shutil.copy(src / "heads.npz", dst / "heads.npz")
    m = json.loads((src / "model.json").read_text())
    write_manifest(dst, name=m["name"], config=m["config"], precision="fp16", source="test",
                   files={"encoder": "encoder.onnx", "heads": "heads.npz"})
    # a photo: this bundle has no naturalness term, and the encoder's own float32 score of a perfectly flat frame
    # is 0.0 (the default's prior reads its noise, gradient and contrast statistics at their 1e-6 floors)
    code = ("from fgresq_sdk.scorer import Scorer\n"
            f"s = Scorer({str(dst)!r}).score([{str(photo_paths[0])!r}])\nprint(float(s[0]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"exit {res.returncode}: {res.stderr[-500:]}"
    assert 0 < float(res.stdout.strip()) < 1


def test_fp16_seams_drop_a_cast_the_converter_repeated_per_reader():
    """onnxruntime 1.30's converter writes one identical Cast(fp32) per fp32 reader of an fp16 tensor (seen on
    the GPU machine's image: `/image_tower/Gather_3_output_0_cast_to_fp32` twice, read by `/Add` and `/Concat`),
    which onnx.checker refuses as not SSA. The seam pass keeps one; two different writers of a tensor raise."""
    import onnx
    from onnx import TensorProto, helper

    from fgresq_sdk.export.half import _keep_fp32_islands_fp32

    def graph(second_cast_input: str):
        cast = dict(to=TensorProto.FLOAT)
        nodes = [helper.make_node("Cast", ["x"], ["h"], name="to16", to=TensorProto.FLOAT16),
                 helper.make_node("Relu", ["h"], ["r"], name="/image_tower/Relu"),
                 helper.make_node("Cast", ["r"], ["r32"], name="r32_node", **cast),
                 helper.make_node("Cast", [second_cast_input], ["r32"], name="r32_node", **cast),
                 helper.make_node("Add", ["r32", "x"], ["a"], name="/Add"),
                 helper.make_node("Concat", ["r32", "a"], ["y"], name="/Concat", axis=1)]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    model = graph("r")
    with pytest.raises(onnx.checker.ValidationError, match="SSA"):
        onnx.checker.check_model(model)
    changed = _keep_fp32_islands_fp32(model, {})
    onnx.checker.check_model(model)
    assert changed["duplicate_nodes_removed"] == 1
    assert [n.name for n in model.graph.node].count("r32_node") == 1
    with pytest.raises(ValueError, match="written by two different nodes"):
        _keep_fp32_islands_fp32(graph("h"), {})


def test_flip_views_average_each_image_with_its_mirror(tmp_path):
    """Scorer(flip=True): every image is encoded as itself and mirrored, features and scores averaged; checked
    against the plain scorer run on images mirrored by Pillow (224² images under a 224² spec, so no resampling
    stands between the two). The comparison head is linear in the features, so rankings use averaged logits."""
    import json
    import shutil

    from conftest import TRAINED_VIT

    from fgresq_sdk.scorer import Scorer

    bundle = tmp_path / "bundle"
    shutil.copytree(TRAINED_VIT, bundle)  # a trained model without mirror_views (the default mirrors in its graph)
    meta = json.loads((bundle / "model.json").read_text())
    meta["preprocess"] = {"size": 224, "mean": meta["preprocess"]["mean"], "std": meta["preprocess"]["std"]}
    (bundle / "model.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(1)
    imgs = [Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(r))
            for r in (0, 1, 2)]
    mirrored = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in imgs]
    plain = Scorer(bundle, batch_size=2)
    q0, s0 = plain.encode(imgs)
    q1, s1 = plain.encode(mirrored)
    assert np.abs(q0 - q1).max() > 1e-3  # the mirror is a different view for this model
    both = Scorer(bundle, batch_size=2, flip=True)
    q, s = both.encode(imgs)
    assert both.encoded_images == 2 * len(imgs)
    assert both.describe()["views"] == {"crops": 1, "flip": True, "model_mirror": False}
    assert np.allclose(q, (q0 + q1) / 2, atol=1e-5) and np.allclose(s, (s0 + s1) / 2, atol=1e-5)
