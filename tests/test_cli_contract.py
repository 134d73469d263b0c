"""CLI contract details through the real executable: --version and -h, flags in help, every `--format`
honoured, nothing-to-show outputs (a single image's win rate, nothing ranked, a failed compare), group
headers that count what was ranked, contact-sheet formats and names, bench option checks made before
the run, and the one-line refusals of a file that is not a PyTorch checkpoint and of an eval folder that
is not a manifest.
"""
from __future__ import annotations

import csv
import importlib.metadata as md
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_runner import run_cli

COMPARE_KEYS = ["a", "b", "p_first_better", "p_second_better", "p_similar", "verdict"]
COMMANDS = ["score", "compare", "rank", "export", "import-official", "eval", "train", "bench", "info"]


@pytest.fixture(scope="module")
def mixed(photo_paths, tmp_path_factory) -> Path:
    """good/: two photos; lonely/: one photo and two files that are not images."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "good").mkdir()
    (root / "lonely").mkdir()
    shutil.copy(photo_paths[0], root / "good" / photo_paths[0].name)
    shutil.copy(photo_paths[1], root / "good" / photo_paths[1].name)
    shutil.copy(photo_paths[2], root / "lonely" / photo_paths[2].name)
    (root / "lonely" / "broken1.jpg").write_text("not an image")
    (root / "lonely" / "broken2.png").write_text("not an image")
    (root / "allbad").mkdir()
    (root / "allbad" / "x.jpg").write_text("not an image")
    return root


# -- --version, -h, flags in help ------------------------------------------------------------------------
def test_version(tmp_path):
    run = run_cli("--version", cwd=tmp_path)
    assert run.rc == 0, run.err
    assert run.out == f"fgresq-sdk {md.version('fgresq-sdk')}\n"


@pytest.mark.parametrize("command", [None] + COMMANDS)
def test_dash_h_is_help_everywhere(command, tmp_path):
    args = [] if command is None else [command]
    short, long = run_cli(*args, "-h", cwd=tmp_path), run_cli(*args, "--help", cwd=tmp_path)
    assert short.rc == 0 and long.rc == 0, short.err
    assert "Usage:" in short.out and short.out == long.out


@pytest.mark.parametrize("command,flag", [(None, "--version"), ("score", "--cuda-graphs"), ("rank", "--recursive"),
                                          ("export", "--force"), ("train", "--resume")])
def test_flags_show_without_a_value_placeholder(command, flag, tmp_path):
    run = run_cli(*([] if command is None else [command]), "--help", cwd=tmp_path)
    assert run.rc == 0 and flag in run.out
    assert "<bool>" not in run.out and "BOOLEAN" not in run.out


# -- rank: headers, win rate of a single image, nothing ranked -------------------------------------------
def test_rank_headers_count_ranked_images_and_single_image_has_no_win_rate(tiny_bundle, mixed):
    table = run_cli("rank", ".", "--group-by", "parent", "-m", tiny_bundle, cwd=mixed, watch=mixed)
    assert table.rc == 1
    assert "good (2 images)" in table.out and "lonely (1 image)" in table.out
    assert "(3 images)" not in table.out and "allbad" not in table.out
    assert sorted(table.lines) == ["error: allbad/x.jpg: not a recognised image format",
                                   "error: lonely/broken1.jpg: not a recognised image format",
                                   "error: lonely/broken2.png: not a recognised image format"]
    lonely_row = next(ln for ln in table.out.splitlines() if "lonely/" in ln)
    assert "│ -" in lonely_row and "1.0000" not in lonely_row

    groups = {g["name"]: g["ranking"] for g in
              run_cli("rank", ".", "--group-by", "parent", "-m", tiny_bundle, "-f", "json", cwd=mixed).json()["groups"]}
    assert [e["win_rate"] for e in groups["lonely"]] == [None]
    assert all(0.0 <= e["win_rate"] <= 1.0 for e in groups["good"])

    rows = list(csv.DictReader(io.StringIO(
        run_cli("rank", ".", "--group-by", "parent", "-m", tiny_bundle, "-f", "csv", cwd=mixed).out)))
    assert [r["win_rate"] for r in rows if r["group"] == "lonely"] == [""]
    assert all(float(r["win_rate"]) >= 0 for r in rows if r["group"] == "good")


def test_nothing_ranked_prints_no_empty_table(tiny_bundle, mixed):
    run = run_cli("rank", "allbad", "-m", tiny_bundle, cwd=mixed)
    assert run.rc == 1
    assert run.out == ""
    assert run.lines == ["error: allbad/x.jpg: not a recognised image format"]
    run = run_cli("rank", "allbad", "-m", tiny_bundle, "-f", "json", cwd=mixed)
    assert run.rc == 1 and run.json() == {"groups": [], "errors": [
        {"path": "allbad/x.jpg", "error": "not a recognised image format"}]}
    run = run_cli("score", "allbad/x.jpg", "-m", tiny_bundle, cwd=mixed)
    assert run.rc == 1 and run.out == ""
    assert run.lines == ["error: allbad/x.jpg: not a recognised image format"]


# -- compare with a failed input -------------------------------------------------------------------------
def test_compare_json_and_csv_with_a_missing_file(tiny_bundle, mixed):
    good = next((mixed / "good").iterdir()).relative_to(mixed).as_posix()
    run = run_cli("compare", good, "missing.png", "-m", tiny_bundle, "-f", "json", cwd=mixed)
    assert run.rc == 1
    assert run.json() == {"a": good, "b": "missing.png", "p_first_better": None, "p_second_better": None,
                          "p_similar": None, "verdict": None,
                          "errors": [{"path": "missing.png", "error": "no such file"}]}
    assert run.lines == ["error: missing.png: no such file"]
    run = run_cli("compare", good, "missing.png", "-m", tiny_bundle, "-f", "csv", cwd=mixed)
    assert run.rc == 1
    reader = csv.DictReader(io.StringIO(run.out))
    assert reader.fieldnames == COMPARE_KEYS and list(reader) == []
    run = run_cli("compare", good, "missing.png", "-m", tiny_bundle, cwd=mixed)
    assert run.rc == 1 and run.out == ""


def test_compare_csv_columns_in_documented_order(tiny_bundle, mixed):
    a, b = sorted(p.relative_to(mixed).as_posix() for p in (mixed / "good").iterdir())
    run = run_cli("compare", a, b, "-m", tiny_bundle, "-f", "csv", cwd=mixed)
    assert run.rc == 0, run.err
    assert run.out.splitlines()[0] == ",".join(COMPARE_KEYS)


# -- contact sheet formats -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,fmt", [("sheet.jpg", "JPEG"), ("sheet.JPEG", "JPEG"), ("sheet.png", "PNG"),
                                      ("sheet", "PNG"), ("sheet.webp", "WEBP"), ("sheet.tif", "TIFF")])
def test_contact_sheet_format_follows_the_suffix(tiny_bundle, mixed, tmp_path, name, fmt):
    Image.init()  # all format plugins: Image.SAVE lists only the preloaded ones before
    if fmt not in Image.SAVE:
        pytest.skip(f"this Pillow cannot write {fmt}")
    out = tmp_path / name
    run = run_cli("rank", "good", "-m", tiny_bundle, "--contact-sheet", out, "-f", "json", cwd=mixed, watch=mixed)
    assert run.rc == 0, run.err
    with Image.open(out) as img:
        assert img.format == fmt


def test_contact_sheet_unknown_suffix_is_refused_before_any_work(tiny_bundle, mixed, tmp_path):
    run = run_cli("rank", "good", "-m", tiny_bundle, "--contact-sheet", tmp_path / "sheet.xyz", cwd=mixed)
    assert run.rc == 2
    assert run.out == ""
    assert len(run.lines) == 1 and run.lines[0].startswith("error: ") and "'.xyz'" in run.lines[0]
    assert ".jpg" in run.lines[0] and ".png" in run.lines[0]
    assert not (tmp_path / "sheet.xyz").exists()


# -- info / bench formats and checks ---------------------------------------------------------------------
def test_info_csv(tiny_bundle, tmp_path):
    js = run_cli("info", "-m", tiny_bundle, "-f", "json", cwd=tmp_path).json()
    run = run_cli("info", "-m", tiny_bundle, "-f", "csv", cwd=tmp_path)
    assert run.rc == 0, run.err
    reader = csv.DictReader(io.StringIO(run.out))
    rows = {r["key"]: r["value"] for r in reader}
    assert reader.fieldnames == ["key", "value"]
    assert rows["fgresq_sdk"] == js["fgresq_sdk"] and rows["backend"] == "onnxruntime"
    assert rows["model.name"] == js["model"]["name"] and rows["model.path"] == str(tiny_bundle)
    assert "┃" not in run.out and "│" not in run.out


@pytest.mark.parametrize("args,needle", [(["--backend", "foo"], "'foo'"), (["--precision", "fp64"], "'fp64'"),
                                         (["--precision", "fp32,bf16"], "'bf16'"), (["--batch-sizes", "0"], "0"),
                                         (["--batch-sizes", "x"], "'x'"), (["-f", "xml"], "xml")])
def test_bench_bad_options_exit_2_before_the_run(tiny_bundle, tmp_path, args, needle):
    run = run_cli("bench", "-m", tiny_bundle, *args, cwd=tmp_path)
    assert run.rc == 2
    assert run.out == "" and needle in run.err
    assert "bench:" not in run.err  # nothing was timed


def _without_checkpoint(bundle: Path, out: Path) -> Path:
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "model.json").read_text())
    ckpt = manifest["files"].pop("checkpoint")
    (out / ckpt["path"]).unlink()
    (out / "model.json").write_text(json.dumps(manifest))
    return out


def test_bench_rank_sizes_without_a_checkpoint_fails_before_the_run(tiny_bundle, tmp_path):
    onnx_only = _without_checkpoint(tiny_bundle, tmp_path / "onnx-only")
    run = run_cli("bench", "-m", onnx_only, "--backend", "onnxruntime", "--precision", "fp32", "--batch-sizes", "1",
                  "--images", "2", "--repeats", "1", "--rank-sizes", "3", cwd=tmp_path)
    assert run.rc == 2
    assert run.out == ""
    assert len(run.lines) == 1 and "--rank-sizes" in run.lines[0] and "checkpoint" in run.lines[0]
    run = run_cli("bench", "-m", tiny_bundle, "--rank-sizes", "1", cwd=tmp_path)
    assert run.rc == 2 and "--rank-sizes" in run.err and "bench:" not in run.err


def test_bench_csv(tiny_bundle, tmp_path):
    run = run_cli("bench", "-m", tiny_bundle, "--backend", "onnxruntime", "--precision", "fp32", "--batch-sizes",
                  "1,2", "--images", "2", "--repeats", "1", "-f", "csv", cwd=tmp_path)
    assert run.rc == 0, run.err
    rows = list(csv.DictReader(io.StringIO(run.out)))
    assert [(r["variant"], int(r["batch_size"])) for r in rows] == [("onnxruntime-fp32", 1), ("onnxruntime-fp32", 2)]
    assert all(float(r["throughput_ips"]) > 0 and 0 <= float(r["pair_order_agreement"]) <= 1 for r in rows)
    assert "┃" not in run.out


# -- import-official of something that is not a checkpoint -----------------------------------------------
@pytest.mark.parametrize("content", [b"some notes\n", b"", b"GIF89a\x01\x00"])
def test_import_official_refuses_a_file_that_is_not_a_torch_checkpoint(tmp_path, content):
    (tmp_path / "notes.txt").write_bytes(content)
    run = run_cli("import-official", "notes.txt", "--out", "out", cwd=tmp_path)
    assert run.rc == 2
    assert run.lines == ["error: notes.txt: not a PyTorch checkpoint file (expected a .pth written by torch.save, "
                         "like the released FGResQ.pth)"]
    assert not (tmp_path / "out").exists()


def test_import_official_a_zip_that_is_not_a_checkpoint_is_still_one_line(tmp_path):
    """A zip passes the cheap check; torch then refuses it, still as one line (needs torch)."""
    pytest.importorskip("torch")
    with zipfile.ZipFile(tmp_path / "x.pth", "w") as z:
        z.writestr("hello.txt", "hi")
    run = run_cli("import-official", "x.pth", "--out", "out", cwd=tmp_path)
    assert run.rc == 2
    assert len(run.lines) == 1 and run.lines[0].startswith("error: x.pth")


# -- eval of a folder that is not a whole manifest ------------------------------------------------------
def test_eval_of_a_folder_that_is_not_a_manifest_says_what_is_missing_in_one_line(tiny_bundle, photo_paths, tmp_path):
    """The usual slip is an image folder passed to --manifest; a broken or partial manifest is the other."""
    pytest.importorskip("scipy")
    pytest.importorskip("skimage")
    shutil.copy(photo_paths[0], tmp_path / photo_paths[0].name)
    args = ("eval", "--model", str(tiny_bundle), "--no-baselines", "--manifest", ".")
    run = run_cli(*args, cwd=tmp_path)
    assert run.rc == 2
    assert len(run.lines) == 1 and run.lines[0].startswith("error: ")
    assert "no manifest.json in" in run.lines[0] and "images.csv and pairs.csv" in run.lines[0]
    assert "Errno" not in run.lines[0]

    (tmp_path / "manifest.json").write_text("{not json")
    run = run_cli(*args, cwd=tmp_path)
    assert run.rc == 2 and len(run.lines) == 1 and "manifest.json: not JSON" in run.lines[0]

    (tmp_path / "manifest.json").write_text(json.dumps({"format": "fgresq-manifest", "version": 1, "scenes": {}}))
    run = run_cli(*args, cwd=tmp_path)
    assert run.rc == 2 and len(run.lines) == 1
    assert "manifest.json names images.csv as its images table" in run.lines[0] and "Errno" not in run.lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["manifest.json", photo_paths[0].name])
    run = run_cli(*args[:-1], "nowhere", cwd=tmp_path)
    assert run.rc == 2 and run.lines == ["error: nowhere: no such folder"]


# -- contact sheet and heat map name their files ---------------------------------------------------------
def _rank_group(names: list[str], seed: int = 0):
    from fgresq_sdk.ranking import rank_from_probs
    from fgresq_sdk.report import RankGroup
    from fgresq_sdk.scorer import RankResult

    rng = np.random.default_rng(seed)
    n = len(names)
    probs = rng.uniform(0, 1, (n, n, 3))
    probs /= probs.sum(-1, keepdims=True)
    scores = rng.uniform(size=n)
    imgs = [np.full((40, 60, 3), 40 * k % 255, np.uint8) for k in range(n)]
    return RankGroup("g", RankResult(names=names, scores=scores, ranking=rank_from_probs(probs, scores)), imgs)


def test_contact_sheet_labels_each_tile_with_its_file_name():
    from fgresq_sdk.contact_sheet import LABEL_BG, contact_sheet, layout_for

    long = "folder/" + "a_really_long_restoration_method_name_" * 4 + "END.png"
    names = ["folder/alpha.png", "folder/beta.png", long]
    g = _rank_group(names)
    sheet = np.asarray(contact_sheet([g]), np.int16)
    lay = layout_for([len(names)])
    boxes = [lay.name_box([len(names)], 0, k) for k in range(len(names))]
    strips = [sheet[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes]
    for strip in strips:  # text drawn on every name line, inside the tile's width
        assert (np.abs(strip - LABEL_BG).sum(-1) > 60).sum() > 20
    assert not np.array_equal(strips[0], strips[1])  # different names, different pixels
    x0, y0, x1, y1 = boxes[0]
    right_gap = sheet[y0:y1, x1:x1 + lay.gap]  # the long name is cut, not drawn across the next tile
    assert not (np.abs(right_gap - sheet[0, 0]).sum(-1) > 60).any()


def test_contact_sheet_name_fits_by_cutting_the_middle():
    from PIL import ImageDraw

    from fgresq_sdk.contact_sheet import _fit_middle, _font

    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    font = _font(14)
    name = "start_" + "x" * 200 + "_end.png"
    cut = _fit_middle(name, draw, font, 200)
    assert draw.textlength(cut, font=font) <= 200
    assert cut.startswith("start_") and cut.endswith("_end.png") and ("…" in cut or "..." in cut)
    assert _fit_middle("short.png", draw, font, 200) == "short.png"


def _heat_row_labels(html: str) -> list[str]:
    """Text of the row headers (th with a title, after the header row) of the heat-map table."""
    from html.parser import HTMLParser

    class P(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.cur, self.in_heat, self.in_th = [], None, False, False

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "table" and "heat" in a.get("class", ""):
                self.in_heat = True
            elif self.in_heat and tag == "th" and "rn" in (a.get("class") or "").split():
                self.in_th, self.cur = True, ""

        def handle_endtag(self, tag):
            if tag == "table":
                self.in_heat = False
            elif tag == "th" and self.in_th:
                self.in_th = False
                self.rows.append(self.cur)

        def handle_data(self, data):
            if self.in_th:
                self.cur += data

    p = P()
    p.feed(html)
    return p.rows


def test_heat_map_rows_name_their_files():
    from fgresq_sdk.report import HEATMAP_TABLE_MAX, rank_report_html

    names = ["shots/cat.png", "shots/dog.jpg", "shots/" + "very_long_name_" * 5 + "tail.png"]
    g = _rank_group(names)
    labels = _heat_row_labels(rank_report_html([g]))
    order = [names[i] for i in g.result.ranking.order]
    assert len(labels) == 3
    for k, (label, name) in enumerate(zip(labels, order)):
        base = name.split("/", 1)[1]
        assert label.startswith(str(k + 1))
        if len(base) <= 28:
            assert label == f"{k + 1}{base}"
        else:
            assert "…" in label and label.endswith("tail.png") and len(label) <= len(str(k + 1)) + 28

    big = [f"dir/img_{i:03d}.png" for i in range(HEATMAP_TABLE_MAX + 5)]
    g = _rank_group(big, seed=1)
    html = rank_report_html([g])
    listed = html.split('<ol class="heatnames">', 1)[1].split("</ol>", 1)[0]
    assert listed == "".join(f"<li>{big[i]}</li>" for i in g.result.ranking.order)


def test_report_single_image_group_shows_no_win_rate():
    from fgresq_sdk.report import rank_report_html

    html = rank_report_html([_rank_group(["only.png"])])
    assert "win -" in html and "win rate -" in html
    assert "100.0%" not in html and 'data-win-rate=""' in html
