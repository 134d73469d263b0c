"""The `fgresq-sdk` command-line contract, through the real executable.

Other tools parse this output, so the JSON keys, the CSV headers, the exit codes (0 all fine, 1 some
inputs failed, 2 usage error) and the "errors on stderr, data on stdout" split are checked exactly, and
the numbers are checked against the library on the same bundle.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from fgresq_sdk.bundle import default_bundle_path
from fgresq_sdk.scorer import Scorer

from cli_runner import Run, run_cli
VERDICTS = ("first", "second", "similar")
COMPARE_KEYS = {"a", "b", "p_first_better", "p_second_better", "p_similar", "verdict"}
RANK_ENTRY_KEYS = {"rank", "path", "score", "win_rate"}  # documented; more may follow




@pytest.fixture(scope="module")
def names(photo_paths, photo_dir) -> list[str]:
    """The photos relative to photo_dir (the CLI runs there, so names stay short in tables)."""
    return [str(p.relative_to(photo_dir)) for p in photo_paths]


@pytest.fixture(scope="module")
def scorer(tiny_bundle) -> Scorer:
    return Scorer(tiny_bundle)


@pytest.fixture(scope="module")
def ranked(tiny_bundle, photo_dir) -> Run:
    """`rank . -r -f json` over all six photos, shared by the tests that only read it."""
    return run_cli("rank", ".", "--recursive", "--model", tiny_bundle, "-f", "json", cwd=photo_dir)


# -- score -----------------------------------------------------------------------------------------------
def test_score_json(tiny_bundle, photo_dir, names, scorer):
    run = run_cli("score", *names, "--model", tiny_bundle, "-f", "json", cwd=photo_dir)
    assert run.rc == 0, run.err
    assert run.err == ""
    payload = run.json()
    assert set(payload) == {"results", "errors"}
    assert payload["errors"] == []
    assert all(set(r) == {"path", "score"} for r in payload["results"])
    assert [r["path"] for r in payload["results"]] == names
    want = scorer.score([photo_dir / n for n in names])
    assert [r["score"] for r in payload["results"]] == pytest.approx(want.tolist(), rel=1e-4, abs=1e-6)
    assert all(0.0 < r["score"] < 1.0 for r in payload["results"])


def test_score_json_stays_parseable_with_errors(tiny_bundle, photo_dir, names):
    run = run_cli("score", names[0], "missing.png", names[1], "--model", tiny_bundle, "-f", "json", cwd=photo_dir)
    assert run.rc == 1
    payload = run.json()
    assert [r["path"] for r in payload["results"]] == [names[0], names[1]]
    assert payload["errors"] == [{"path": "missing.png", "error": "no such file"}]
    assert run.lines == ["error: missing.png: no such file"]


def test_score_csv_and_table(tiny_bundle, photo_dir, names):
    js = run_cli("score", *names, "--model", tiny_bundle, "-f", "json", cwd=photo_dir).json()["results"]
    run = run_cli("score", *names, "--model", tiny_bundle, "-f", "csv", cwd=photo_dir)
    assert run.rc == 0
    reader = csv.DictReader(io.StringIO(run.out))
    rows = list(reader)
    assert reader.fieldnames == ["path", "score"]
    assert [r["path"] for r in rows] == names
    assert [float(r["score"]) for r in rows] == pytest.approx([r["score"] for r in js], abs=1e-6)
    run = run_cli("score", *names, "--model", tiny_bundle, cwd=photo_dir)
    assert run.rc == 0
    for n, r in zip(names, js):
        assert n in run.out
        assert f"{r['score']:.4f}" in run.out


# -- compare ---------------------------------------------------------------------------------------------
def test_compare_json(tiny_bundle, photo_dir, names, scorer):
    a, b = names[0], names[3]
    run = run_cli("compare", a, b, "--model", tiny_bundle, "-f", "json", cwd=photo_dir)
    assert run.rc == 0, run.err
    res = run.json()
    assert set(res) == COMPARE_KEYS
    assert (res["a"], res["b"]) == (a, b)
    p = [res["p_first_better"], res["p_second_better"], res["p_similar"]]
    assert all(0.0 <= x <= 1.0 for x in p)
    assert sum(p) == pytest.approx(1.0, abs=1e-6)
    assert res["verdict"] in VERDICTS
    want = scorer.compare(photo_dir / a, photo_dir / b)
    assert p == pytest.approx([want.p_first_better, want.p_second_better, want.p_similar], rel=1e-4, abs=1e-6)
    assert res["verdict"] == want.verdict


def test_compare_is_order_consistent_and_raw_is_the_single_forward(tiny_bundle, photo_dir, names, scorer):
    import shutil

    from fgresq_sdk.heads import softmax

    a, b = names[0], names[3]

    def probs(*args):
        run = run_cli("compare", *args, "--model", tiny_bundle, "-f", "json", cwd=photo_dir)
        assert run.rc == 0, run.err
        r = run.json()
        return np.array([r["p_first_better"], r["p_second_better"], r["p_similar"]]), r["verdict"]

    ab, v_ab = probs(a, b)
    ba, v_ba = probs(b, a)
    assert np.allclose(ab, ba[[1, 0, 2]], atol=1e-6)  # swapping the images swaps the answer
    assert {v_ab, v_ba} <= {"first", "second", "similar"} and (v_ab == "similar") == (v_ba == "similar")
    raw, _ = probs(a, b, "--raw")
    q, _ = scorer.encode([photo_dir / a, photo_dir / b])
    want = softmax(scorer.head.pair_logits(q[:1], q[1:])[0])  # the head on (a, b) only, from heads.npz
    assert np.allclose(raw, want, atol=1e-5)
    raw_back, _ = probs(b, a, "--raw")
    assert np.allclose(ab, [(raw[0] + raw_back[1]) / 2, (raw[1] + raw_back[0]) / 2, (raw[2] + raw_back[2]) / 2],
                       atol=1e-6)
    copy = photo_dir.parent / f"copy-of-{Path(a).name}"
    shutil.copy(photo_dir / a, copy)
    same, verdict = probs(a, str(copy))
    assert verdict == "similar" and abs(same[0] - same[1]) < 1e-6


def test_compare_csv_and_table(tiny_bundle, photo_dir, names):
    a, b = names[1], names[2]
    js = run_cli("compare", a, b, "--model", tiny_bundle, "-f", "json", cwd=photo_dir).json()
    run = run_cli("compare", a, b, "--model", tiny_bundle, "-f", "csv", cwd=photo_dir)
    assert run.rc == 0
    reader = csv.DictReader(io.StringIO(run.out))
    [row] = list(reader)
    assert set(reader.fieldnames) == COMPARE_KEYS
    assert (row["a"], row["b"], row["verdict"]) == (a, b, js["verdict"])
    assert float(row["p_similar"]) == pytest.approx(js["p_similar"], abs=1e-6)
    run = run_cli("compare", a, b, "--model", tiny_bundle, cwd=photo_dir)
    assert run.rc == 0
    assert a in run.out and b in run.out and js["verdict"] in run.out


def test_compare_bad_inputs_one_line_each_and_exit_1(tiny_bundle, photo_dir, names, tmp_path):
    (tmp_path / "fake.jpg").write_text("not an image")
    run = run_cli("compare", photo_dir / names[0], "fake.jpg", "--model", tiny_bundle, "-f", "json", cwd=tmp_path)
    assert run.rc == 1
    assert run.lines == ["error: fake.jpg: not a recognised image format"]
    run = run_cli("compare", "missing.png", "fake.jpg", "--model", tiny_bundle, "-f", "json", cwd=tmp_path)
    assert run.rc == 1
    assert run.lines == ["error: missing.png: no such file", "error: fake.jpg: not a recognised image format"]


# -- rank ------------------------------------------------------------------------------------------------
def test_rank_json(ranked, names, photo_dir, scorer):
    assert ranked.rc == 0, ranked.err
    assert ranked.err == ""
    payload = ranked.json()
    assert set(payload) == {"groups", "errors"}
    assert payload["errors"] == []
    [group] = payload["groups"]
    assert set(group) == {"name", "ranking"}
    entries = group["ranking"]
    assert all(RANK_ENTRY_KEYS <= set(e) for e in entries)
    assert [e["rank"] for e in entries] == list(range(1, len(names) + 1))
    assert sorted(e["path"] for e in entries) == sorted(names)
    assert all(0.0 <= e["win_rate"] <= 1.0 and 0.0 < e["score"] < 1.0 for e in entries)
    # Best first, in the library's order for the same images.
    want = scorer.rank([photo_dir / n for n in names], names=names).entries()
    assert [e["path"] for e in entries] == [w["path"] for w in want]
    assert [e["win_rate"] for e in entries] == pytest.approx([w["win_rate"] for w in want], abs=1e-5)
    strengths = [e["strength"] for e in entries]
    assert strengths == sorted(strengths, reverse=True)


def test_rank_top_truncates(tiny_bundle, photo_dir, ranked):
    run = run_cli("rank", ".", "-r", "--top", "2", "--model", tiny_bundle, "-f", "json", cwd=photo_dir)
    assert run.rc == 0
    full = ranked.json()["groups"][0]["ranking"]
    assert run.json()["groups"][0]["ranking"] == full[:2]


def test_rank_group_by_parent_implies_recursion(tiny_bundle, photo_dir, names):
    run = run_cli("rank", ".", "--group-by", "parent", "--model", tiny_bundle, "-f", "json", cwd=photo_dir)
    assert run.rc == 0, run.err
    groups = {g["name"]: g["ranking"] for g in run.json()["groups"]}
    assert set(groups) == {"scene_a", "scene_b"}
    for name, entries in groups.items():
        assert [e["rank"] for e in entries] == [1, 2, 3]
        assert sorted(e["path"] for e in entries) == sorted(n for n in names if n.startswith(name + "/"))
    top = run_cli("rank", ".", "--group-by", "parent", "--top", "1", "--model", tiny_bundle, "-f", "json",
                  cwd=photo_dir)
    assert {g["name"]: g["ranking"] for g in top.json()["groups"]} == {k: v[:1] for k, v in groups.items()}


def test_rank_without_recursion_finds_nothing_in_a_folder_of_folders(tiny_bundle, photo_dir):
    run = run_cli("rank", ".", "--model", tiny_bundle, "-f", "json", cwd=photo_dir)
    assert run.rc == 1
    assert run.json() == {"groups": [], "errors": [{"path": ".", "error": "no images found (try --recursive)"}]}
    assert run.lines == ["error: .: no images found (try --recursive)"]


def test_rank_csv_and_table(tiny_bundle, photo_dir, ranked):
    full = ranked.json()["groups"][0]["ranking"]
    run = run_cli("rank", ".", "-r", "--model", tiny_bundle, "-f", "csv", cwd=photo_dir)
    assert run.rc == 0
    reader = csv.DictReader(io.StringIO(run.out))
    rows = list(reader)
    assert reader.fieldnames == ["group", "rank", "path", "score", "win_rate", "tier"]
    assert [(r["group"], int(r["rank"]), r["path"]) for r in rows] == [(".", e["rank"], e["path"]) for e in full]
    assert [float(r["win_rate"]) for r in rows] == pytest.approx([e["win_rate"] for e in full], abs=1e-6)
    run = run_cli("rank", ".", "-r", "--model", tiny_bundle, cwd=photo_dir)
    assert run.rc == 0
    assert f". ({len(full)} images)" in run.out
    for e in full:
        assert e["path"] in run.out


def test_rank_without_model_uses_the_embedded_model(tmp_path):
    """No --model: the embedded default model (this build ships one). examples/README.md: L<k> has
    residual-artefact level k, so a trained model ranks L0 above L4; the scores are the embedded
    bundle's own (the library on default_bundle_path(), independently)."""
    from pathlib import Path

    default = default_bundle_path()
    assert default is not None, "this build must embed the default model (fgresq_sdk/default_model)"
    folder = Path(__file__).resolve().parents[1] / "examples" / "brick-super-resolution"
    run = run_cli("rank", folder, "-f", "json", cwd=tmp_path)
    assert run.rc == 0, run.err
    ranking = run.json()["groups"][0]["ranking"]
    order = [Path(e["path"]).stem for e in ranking]
    assert sorted(order) == ["L0", "L2", "L4"]
    assert order.index("L0") < order.index("L4"), order
    want = dict(zip(("L0", "L2", "L4"), Scorer(default).score([folder / f"{k}.png" for k in ("L0", "L2", "L4")])))
    assert want["L0"] > want["L4"]
    for e in ranking:
        assert e["score"] == pytest.approx(float(want[Path(e["path"]).stem]), rel=1e-4, abs=1e-6), e


def test_no_model_and_no_embedded_model_is_a_usage_error(tmp_path):
    """A build without the embedded model: one-line usage error naming --model, exit 2, nothing on stdout.
    Simulated by hiding the default model from the real CLI's code (the package ships one)."""
    import subprocess
    import sys

    from PIL import Image

    code = ("import sys\n"
            "import fgresq_sdk.bundle as b\n"
            "b.default_bundle_path = lambda: None\n"
            "import fgresq_sdk.scorer as s\n"
            "s.default_bundle_path = b.default_bundle_path\n"
            "from fgresq_sdk.cli import main\n"
            "sys.argv = ['fgresq-sdk', 'rank', '.', '-f', 'json']\n"
            "main()\n")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--model" in lines[0], lines


# -- usage errors and info -------------------------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["score", "x.png", "--bogus"], "No such option"),
    (["score", "x.png", "--backend", "bogus"], "--backend"),
    (["rank", ".", "--top", "0"], "--top"),
    (["rank", ".", "--group-by", "grandparent"], "--group-by"),
    (["score"], "Missing argument"),
    (["compare", "x.png"], "Missing argument"),
])
def test_usage_errors_exit_2(tiny_bundle, tmp_path, args, needle):
    run = run_cli(*args, "--model", tiny_bundle, cwd=tmp_path)
    assert run.rc == 2
    assert run.out == ""
    assert needle in run.err


def test_missing_model_folder_is_one_line_exit_2(tmp_path):
    run = run_cli("score", "x.png", "--model", "no_such_bundle", "-f", "json", cwd=tmp_path)
    assert run.rc == 2
    assert run.out == ""
    assert run.lines == ["error: no_such_bundle: model bundle not found"]


@pytest.mark.parametrize("target,why", [("nowhere", "no such directory"), ("file.png", "not a directory")])
def test_rank_bad_directory_is_one_line_exit_2(tiny_bundle, tmp_path, target, why):
    (tmp_path / "file.png").write_bytes(b"")
    run = run_cli("rank", target, "--model", tiny_bundle, "-f", "json", cwd=tmp_path)
    assert run.rc == 2
    assert run.lines == [f"error: {target}: {why}"]


def test_info_json(tiny_bundle, tmp_path):
    run = run_cli("info", "--model", tiny_bundle, "-f", "json", cwd=tmp_path)
    assert run.rc == 0, run.err
    info = run.json()
    assert {"fgresq_sdk", "python", "onnxruntime", "numpy", "pillow"} <= set(info)
    assert info["model"]["path"] == str(tiny_bundle)
    assert info["backend"] == "onnxruntime"
    assert "model_error" not in info
    assert info["model"]["trained_on"] is None  # a bundle exported outside the recipe names no training machine


def test_info_names_where_the_weights_were_trained(tiny_bundle, tmp_path):
    """training.trained_on (written by scripts/make_default_model.sh) reaches `info`: where the recipe gives the
    same weights byte for byte."""
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "model.json").read_text())
    machine = {"cpu": "AMD EPYC 9R14", "cpu_generation": "AuthenticAMD family 25 model 17", "isa": ["avx2"],
               "cpu_kernels": "native", "aten_capability": "AVX512", "torch": "2.14.1", "threads": 2}
    manifest["training"] = {"trained_on": machine}
    (bundle / "model.json").write_text(json.dumps(manifest))
    run = run_cli("info", "--model", bundle, "-f", "json", cwd=tmp_path)
    assert run.rc == 0, run.err
    assert run.json()["model"]["trained_on"] == machine
