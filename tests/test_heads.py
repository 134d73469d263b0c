"""One comparison head (heads.npz in numpy) for compare and rank on every backend, and bundles written
before it: their compare_head.onnx is validated with the manifest and never used."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fgresq_sdk.bundle import default_bundle_path, load_bundle
from fgresq_sdk.errors import BundleError

from conftest import TRAINED_VIT

# The first embedded default model as written before heads.npz became the only head: its model.json and
# compare_head.onnx, verbatim. Its encoder.onnx and heads.npz are those of the same model in today's format
# (conftest.TRAINED_VIT, same sha256).
LEGACY = Path(__file__).parent / "data" / "legacy_default_model"


@pytest.fixture
def legacy_bundle(tmp_path) -> Path:
    out = tmp_path / "legacy"
    out.mkdir()
    for name in ("model.json", "compare_head.onnx"):
        shutil.copy(LEGACY / name, out / name)
    for name in ("encoder.onnx", "heads.npz"):
        shutil.copy(TRAINED_VIT / name, out / name)
    return out


def _pair(photo_paths):
    return photo_paths[0], photo_paths[3]


def test_vocabulary_is_derived_from_verdicts():
    from fgresq_sdk import heads, verdict
    from fgresq_sdk.scorer import Comparison

    # The public contract, spelled out once here to pin what the derivation gives.
    assert verdict.VERDICTS == ("first", "second", "similar")
    assert verdict.LOGIT_ORDER == ("first_better", "second_better", "similar")
    assert verdict.PROB_KEYS == ("p_first_better", "p_second_better", "p_similar")
    assert heads.LOGIT_ORDER is verdict.LOGIT_ORDER
    assert [f.name for f in dataclasses.fields(Comparison)][2:5] == list(verdict.PROB_KEYS)
    c = Comparison("a", "b", 0.7, 0.2, 0.1)
    assert list(c.to_dict()) == ["a", "b", *verdict.PROB_KEYS, "verdict"]
    assert c.probs == (0.7, 0.2, 0.1) and c.verdict == verdict.FIRST
    assert [verdict.verdict(*p) for p in ([0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4])] == list(verdict.VERDICTS)


def test_backends_only_encode():
    from fgresq_sdk.backends.base import Backend
    from fgresq_sdk.backends.onnxruntime_backend import OnnxRuntimeBackend
    from fgresq_sdk.backends.tensorrt_backend import TensorRTBackend
    from fgresq_sdk.backends.torch_backend import TorchBackend

    for cls in (Backend, OnnxRuntimeBackend, TensorRTBackend, TorchBackend):
        assert not hasattr(cls, "compare_logits"), cls


def test_compare_is_the_numpy_head_on_the_features(photo_paths):
    from fgresq_sdk.scorer import Scorer

    s = Scorer()
    a, b = _pair(photo_paths)
    q, _ = s.encode([a, b])
    for raw in (False, True):
        c = s.compare(a, b, raw=raw)
        assert c.probs == tuple(float(x) for x in s.head.compare(q[0], q[1], raw=raw))
    # The same head ranks: the ranking's pair probabilities are the raw compare of each ordered pair.
    r = s.rank([a, b])
    np.testing.assert_allclose(r.pair_probs([0], [1])[0], s.compare(a, b, raw=True).probs, rtol=0, atol=1e-15)


def test_embedded_default_model_lists_no_compare_head():
    for path in (default_bundle_path(), TRAINED_VIT):
        bundle = load_bundle(path, cache=False)
        # no compare graph; the embedded default also has its naturalness term's pristine model (naturalness.py)
        assert set(bundle.manifest["files"]) - {"niqe_pristine"} == {"encoder", "heads"}
        assert not (bundle.root / "compare_head.onnx").exists()
        assert bundle.manifest["logit_order"] == ["first_better", "second_better", "similar"]
        assert "logits" not in bundle.manifest["outputs"]
    legacy = json.loads((LEGACY / "model.json").read_text())
    bundle = load_bundle(TRAINED_VIT, cache=False)
    for role in ("encoder", "heads"):  # the same files as before, byte for byte
        assert bundle.manifest["files"][role] == legacy["files"][role]


def test_legacy_bundle_loads_and_gives_the_same_answers(legacy_bundle, photo_paths):
    import onnxruntime as ort

    from fgresq_sdk.heads import softmax
    from fgresq_sdk.scorer import Scorer
    from fgresq_sdk.verdict import symmetrise

    old, new = Scorer(legacy_bundle), Scorer(TRAINED_VIT)
    assert old.bundle.has("compare_head")
    a, b = _pair(photo_paths)
    for raw in (False, True):
        assert old.compare(a, b, raw=raw) == new.compare(a, b, raw=raw)
    np.testing.assert_array_equal(old.score(photo_paths), new.score(photo_paths))
    r_old, r_new = old.rank(photo_paths), new.rank(photo_paths)
    assert r_old.entries() == r_new.entries()
    # What this bundle answered when its compare_head.onnx ran the comparison: the same up to float32.
    graph = ort.InferenceSession(str(legacy_bundle / "compare_head.onnx"), providers=["CPUExecutionProvider"])
    q, _ = old.encode([a, b])
    (logits,) = graph.run(None, {"q0": q[[0, 1]], "q1": q[[1, 0]]})
    p = softmax(logits.astype(np.float64))
    np.testing.assert_allclose(old.compare(a, b).probs, symmetrise(p[0], p[1]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(old.compare(a, b, raw=True).probs, p[0], rtol=0, atol=1e-6)


def test_legacy_compare_head_is_validated_but_not_used(legacy_bundle, photo_paths):
    from fgresq_sdk.scorer import Scorer

    want = Scorer(TRAINED_VIT).compare(*_pair(photo_paths))
    data = bytearray((legacy_bundle / "compare_head.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (legacy_bundle / "compare_head.onnx").write_bytes(bytes(data))
    assert Scorer(legacy_bundle).compare(*_pair(photo_paths)) == want  # never opened, so never hashed
    with pytest.raises(BundleError, match="compare_head.onnx: sha256 mismatch"):
        load_bundle(legacy_bundle).verify_all()
    (legacy_bundle / "compare_head.onnx").unlink()
    with pytest.raises(BundleError, match="compare_head.onnx: file listed in model.json as 'compare_head' is missing"):
        load_bundle(legacy_bundle)
    m = json.loads((legacy_bundle / "model.json").read_text())
    m["files"]["compare_head"]["path"] = "../compare_head.onnx"
    (legacy_bundle / "model.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="'compare_head' path '../compare_head.onnx' leaves the bundle"):
        load_bundle(legacy_bundle)


def test_bundle_derived_from_a_legacy_one_has_no_compare_head(legacy_bundle, tmp_path, photo_paths):
    pytest.importorskip("onnx")
    from fgresq_sdk.export.half import half_bundle
    from fgresq_sdk.scorer import Scorer

    out = half_bundle(legacy_bundle, tmp_path / "fp16")
    m = load_bundle(out).manifest
    assert sorted(m["files"]) == ["encoder", "heads"] and not (out / "compare_head.onnx").exists()
    assert m["outputs"] == {"features": ["batch", 384], "score": ["batch"]}
    assert m["logit_order"] == ["first_better", "second_better", "similar"]
    assert m["files"]["heads"] == json.loads((LEGACY / "model.json").read_text())["files"]["heads"]
    want = Scorer(TRAINED_VIT).compare(*_pair(photo_paths)).verdict
    assert Scorer(out).compare(*_pair(photo_paths)).verdict == want


def test_tempering_and_its_undo_are_inverse_and_temper_the_probabilities():
    """train/calibrate_compare.py writes the tempered head, export/read_back.py undoes it: one function both ways."""
    from fgresq_sdk.heads import CompareHeadNP, LOGIT_ORDER, softmax, tempered_compare_head

    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(3, 8)), rng.normal(size=3)
    tw, tb = tempered_compare_head(w, b, 4.0, 1.5)
    back_w, back_b = tempered_compare_head(tw, tb, 4.0, 1.5, undo=True)
    np.testing.assert_allclose(back_w, w, rtol=1e-12)
    np.testing.assert_allclose(back_b, b, rtol=1e-12, atol=1e-12)
    q = rng.normal(size=(5, 4))
    a, c = np.array([0, 1, 2]), np.array([3, 4, 0])
    plain = CompareHeadNP(w, b).indexed_pair_logits(q, a, c)[0]
    tempered = CompareHeadNP(tw, tb).indexed_pair_logits(q, a, c)[0]
    shift = np.where(np.array(LOGIT_ORDER) == "similar", 1.5, 0.0)
    np.testing.assert_allclose(softmax(tempered), softmax(plain / 4.0 + shift), rtol=1e-12)
    # the indexed logits are the head on the stacked pairs, in both orders
    head = CompareHeadNP(w, b)
    l_ab, l_ba = head.indexed_pair_logits(q, a, c)
    np.testing.assert_allclose(l_ab, head.pair_logits(q[a], q[c]), rtol=1e-12)
    np.testing.assert_allclose(l_ba, head.pair_logits(q[c], q[a]), rtol=1e-12)
