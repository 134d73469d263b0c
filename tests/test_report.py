"""`rank --report`, `rank --contact-sheet` and `compare --report`: what a person looks at.

The HTML is parsed (html.parser) and checked against the SDK itself: every image of every group in the
order of `rank -f json`, heat-map cells equal to RankResult.ranking.preference, probabilities equal to
`compare -f json`. Hostile file names must stay text, nothing may be loaded from outside the file, the
report must never replace an input, and the pages must open in headless Chromium without script errors
(`apt-get install -y chromium`; the browser tests skip, with the reason, only when there is none).
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from fgresq_sdk.contact_sheet import TILE_BG, layout_for
from fgresq_sdk.ranking import rank_from_probs
from fgresq_sdk.report import HEATMAP_TABLE_MAX, THUMB_SIDE, RankGroup, rank_report_html
from fgresq_sdk.scorer import RankResult, Scorer

CLI = Path(sys.executable).parent / "fgresq-sdk"
HOSTILE_DIR = "<script>alert(1)<"  # + file "script>.png" → the path reads <script>alert(1)</script>.png


# -- helpers -------------------------------------------------------------------------------------------
VOID = {"meta", "img", "input", "br", "hr", "link", "source", "wbr"}


class Page(HTMLParser):
    """Every element as (tag, attrs dict), in document order, plus the text of each <script>; `unbalanced`
    lists end tags that do not close the innermost open element (and elements never closed)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self.unbalanced: list[str] = []
        self._open: list[str] = []
        self._in_script = False
        self.feed(text)
        self.close()
        self.unbalanced += self._open

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag not in VOID:
            self._open.append(tag)
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if self._open and self._open[-1] == tag:
            self._open.pop()
        else:
            self.unbalanced.append(f"</{tag}>")
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data

    def find(self, tag: str | None = None, **attrs) -> list[dict]:
        return [a for t, a in self.elements if (tag is None or t == tag)
                and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def groups(self) -> list[tuple[dict, list[dict], list[dict]]]:
        """Per section.group: (section attrs, tiles in document order, heat-map cells)."""
        out = []
        row = col = 0
        for tag, a in self.elements:
            if tag == "section" and "data-group" in a:
                out.append((a, [], []))
                row = 0
            elif out and tag == "figure" and "tile" in a.get("class", ""):
                out[-1][1].append(a)
            elif out and tag == "tr":
                row, col = row + 1, 0
            elif out and tag == "td" and "data-p" in a:  # row/column: position after the header row/column
                col += 1
                out[-1][2].append({**a, "_row": row - 1, "_col": col})
            elif out and tag == "img" and "thumb" in a.get("class", ""):
                out[-1][1][-1]["_img"] = a
        return out


def run_cli(*args, cwd: Path):
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    p = subprocess.run([str(CLI), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)
    assert "Traceback" not in p.stdout + p.stderr, p.stderr
    return p


def decode_uri(uri: str) -> tuple[str, bytes]:
    m = re.fullmatch(r"data:(image/[a-z]+);base64,([A-Za-z0-9+/=]+)", uri)
    assert m, uri[:80]
    return m.group(1), base64.b64decode(m.group(2))


def assert_self_contained(text: str, page: Page) -> None:
    """Nothing loaded from elsewhere: only data: and #fragment URLs, no external tags, no url() in CSS."""
    for tag, a in page.elements:
        assert tag not in ("link", "iframe", "object", "embed", "base", "frame"), tag
        for k, v in a.items():
            assert not k.startswith("on"), (tag, k)  # no event handler attributes (injected or ours)
            if k in ("src", "href", "data-full", "action", "srcset", "poster"):
                assert v.startswith(("data:image/", "#")), (tag, k, v[:60])
    outside = re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", text)
    for bad in ("http:", "https:", "//", "url(", "@import"):
        assert bad not in outside, bad
    scripts = page.find("script")
    assert len(scripts) == 1 and scripts[0] == {}  # our one inline script, no src


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def chromium(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium not found (apt-get install -y chromium)")
    args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp / 'chromium-profile'}", "--window-size=1280,900",
            "--enable-logging=stderr", "--v=0", *extra, url]
    p = subprocess.run(args, capture_output=True, text=True, timeout=90)
    for line in p.stderr.splitlines():  # console errors and blocked loads are logged here
        assert "Uncaught" not in line and "Refused to" not in line, line
    return p


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ranked(tiny_bundle, photo_dir, tmp_path_factory):
    """One real run: rank the two scene folders with JSON on stdout, the report and the sheet written."""
    out = tmp_path_factory.mktemp("report")
    (out / "report.html").write_text("an older report, replaced")  # not an input: overwritten
    p = run_cli("rank", ".", "--group-by", "parent", "-m", tiny_bundle, "-f", "json",
                "--report", out / "report.html", "--contact-sheet", out / "sheet.png", cwd=photo_dir)
    assert p.returncode == 0, p.stderr
    text = (out / "report.html").read_text(encoding="utf-8")
    return json.loads(p.stdout), text, Page(text), out


@pytest.fixture(scope="module")
def hostile(tiny_bundle, photo_paths, tmp_path_factory):
    """A folder with hostile names and one broken image, ranked with a report (exit 1: one input failed)."""
    root = tmp_path_factory.mktemp("hostile")
    (root / HOSTILE_DIR).mkdir()
    (root / "plain").mkdir()
    pngs = [p for p in photo_paths if p.suffix == ".png"]
    shutil.copy(pngs[0], root / HOSTILE_DIR / "script>.png")
    shutil.copy(pngs[1], root / HOSTILE_DIR / "<img src=x onerror=alert(2)>.png")
    shutil.copy(pngs[0], root / "plain" / 'a"b&c.png')
    shutil.copy(photo_paths[1], root / "plain" / "x'y.jpg")
    (root / "plain" / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path_factory.mktemp("hostile-out")
    p = run_cli("rank", ".", "--group-by", "parent", "-m", tiny_bundle, "-f", "json",
                "--report", out / "r.html", "--contact-sheet", out / "s.png", cwd=root)
    assert p.returncode == 1, p.stderr  # exit code rules unchanged: an input failed
    text = (out / "r.html").read_text(encoding="utf-8")
    return json.loads(p.stdout), text, Page(text), root, out


# -- rank report ---------------------------------------------------------------------------------------
def test_report_holds_every_image_in_rank_order(ranked):
    data, text, page, _ = ranked
    assert "an older report" not in text
    assert text.startswith("<!DOCTYPE html>") and not page.unbalanced, page.unbalanced[:5]
    groups = page.groups()
    assert [g[0]["data-group"] for g in groups] == [g["name"] for g in data["groups"]] == ["scene_a", "scene_b"]
    for (sec, tiles, _), g in zip(groups, data["groups"]):
        assert [t["data-path"] for t in tiles] == [r["path"] for r in g["ranking"]]
        assert [int(t["data-rank"]) for t in tiles] == [r["rank"] for r in g["ranking"]]
        for t, r in zip(tiles, g["ranking"]):
            assert float(t["data-score"]) == pytest.approx(r["score"], abs=1e-12)
            assert float(t["data-win-rate"]) == pytest.approx(r["win_rate"], abs=1e-12)
            assert int(t["data-tier"]) == r["tier"]
            mime, jpg = decode_uri(t["_img"]["src"])
            thumb = Image.open(io.BytesIO(jpg))
            assert mime == "image/jpeg" and thumb.format == "JPEG" and max(thumb.size) <= THUMB_SIDE
            assert t["_img"]["data-full"].startswith("data:image/jpeg;base64,")  # small group: 512 px preview
    # Footer: model and backend.
    assert "fgresq-vit-tiny" in text and "onnxruntime" in text and page.find("dl", id="meta")


def test_heat_map_equals_sdk_preferences(ranked, tiny_bundle, photo_dir):
    data, _, page, _ = ranked
    scorer = Scorer(tiny_bundle)
    for (sec, tiles, cells), g in zip(page.groups(), data["groups"]):
        names = sorted(r["path"] for r in g["ranking"])
        res = scorer.rank([photo_dir / n for n in names], names=names)
        order = [int(i) for i in res.ranking.order]
        assert [names[i] for i in order] == [r["path"] for r in g["ranking"]]
        n = len(names)
        assert len(cells) == n * n
        pref = res.ranking.preference
        for c in cells:
            r, k = c["_row"], c["_col"]
            assert float(c["data-p"]) == pytest.approx(pref[order[r - 1], order[k - 1]], abs=1e-6)
            assert f"{float(c['data-p']):.4f}" in c["title"]


def test_report_is_self_contained(ranked):
    _, text, page, _ = ranked
    assert_self_contained(text, page)


def test_hostile_names_are_escaped(hostile):
    data, text, page, root, _ = hostile
    assert "<script>alert" not in text and "<img src=x" not in text
    assert not page.unbalanced, page.unbalanced[:5]
    assert_self_contained(text, page)
    shown = [t["data-path"] for _, tiles, _ in page.groups() for t in tiles]
    expected = [r["path"] for g in data["groups"] for r in g["ranking"]]
    assert shown == expected  # html.parser unescapes: the names come back exactly
    assert f"{HOSTILE_DIR}/script>.png" in shown and "plain/a\"b&c.png" in shown and "plain/x'y.jpg" in shown
    assert HOSTILE_DIR in [g[0]["data-group"] for g in page.groups()]
    # The failed input is listed with its reason; the others are ranked anyway.
    assert [e["path"] for e in data["errors"]] == ["plain/broken.jpg"]
    assert page.find("tr", **{"class": "err"}) and "plain/broken.jpg" in text and "not a recognised image" in text


def test_report_refuses_to_overwrite_an_input(tiny_bundle, hostile, tmp_path):
    _, _, _, root, _ = hostile
    img = root / "plain" / 'a"b&c.png'
    before = img.read_bytes()
    (tmp_path / "link.html").symlink_to(img)
    os.link(img, tmp_path / "hard.html")
    for opt in ("--report", "--contact-sheet"):
        for target in (img, tmp_path / "link.html", tmp_path / "hard.html"):
            p = run_cli("rank", root, "--group-by", "parent", "-m", tiny_bundle, opt, target, cwd=tmp_path)
            assert p.returncode == 2 and "over an input image" in p.stderr, p.stderr
    p = run_cli("compare", img, root / "plain" / "x'y.jpg", "-m", tiny_bundle, "--report", img, cwd=tmp_path)
    assert p.returncode == 2 and "over an input image" in p.stderr
    p = run_cli("rank", root, "-r", "-m", tiny_bundle, "--report", tmp_path / "no" / "r.html", cwd=tmp_path)
    assert p.returncode == 2 and "does not exist" in p.stderr
    assert img.read_bytes() == before


def test_tiers_and_big_heat_maps_without_a_model():
    """Synthetic probabilities: a similar-quality pair is boxed as one tier; N > 60 draws an image."""
    rng = np.random.default_rng(0)
    n = 4
    probs = np.zeros((n, n, 3))
    strength = np.array([3.0, 1.0, 1.0, -2.0])
    for i in range(n):
        for j in range(n):
            d = strength[i] - strength[j]
            p_sim = 0.9 if abs(d) < 1e-9 else 0.02
            probs[i, j] = [(1 - p_sim) / (1 + np.exp(-d)), (1 - p_sim) / (1 + np.exp(d)), p_sim]
    ranking = rank_from_probs(probs, strength)
    assert sorted(ranking.tier.tolist()) == [1, 2, 2, 3]
    imgs = [rng.integers(0, 255, (40, 60, 3), dtype=np.uint8) for _ in range(n)]
    names = [f"im{i}" for i in range(n)]
    res = RankResult(names=names, scores=strength, ranking=ranking)
    page = Page(rank_report_html([RankGroup("g", res, imgs)]))
    multi = [a for a in page.find("div") if "multi" in a.get("class", "").split()]
    assert [a["data-tier"] for a in multi] == ["2"]
    assert len(page.groups()[0][1]) == n

    big = HEATMAP_TABLE_MAX + 10
    probs = rng.uniform(0, 1, (big, big, 3))
    probs /= probs.sum(-1, keepdims=True)
    res = RankResult(names=[f"b{i}" for i in range(big)], scores=rng.uniform(size=big),
                     ranking=rank_from_probs(probs, rng.uniform(size=big)))
    text = rank_report_html([RankGroup("big", res, [imgs[0]] * big)])
    page = Page(text)
    assert not page.groups()[0][2]  # no table cells
    (heat,) = page.find("img", **{"class": "heatimg"})
    png = Image.open(io.BytesIO(decode_uri(heat["src"])[1]))
    assert png.size == (big, big)  # one pixel per pair
    assert not any("data-full" in t["_img"] for t in page.groups()[0][1])  # > 50 images: no previews


# -- contact sheet -------------------------------------------------------------------------------------
def expected_tile(path: Path, tile: int) -> np.ndarray:
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    if max(img.size) > tile:  # fitted into the tile, never enlarged
        img = ImageOps.contain(img, (tile, tile), Image.LANCZOS)
    canvas = Image.new("RGB", (tile, tile), TILE_BG)
    canvas.paste(img, ((tile - img.width) // 2, (tile - img.height) // 2))
    return np.asarray(canvas, np.float64)


def test_contact_sheet_size_and_tile_order(ranked, photo_dir):
    data, _, _, out = ranked
    sheet = Image.open(out / "sheet.png")
    assert sheet.format == "PNG"
    counts = [len(g["ranking"]) for g in data["groups"]]
    lay = layout_for(counts)
    cols = min(max(counts), 7)
    rows = [-(-c // cols) for c in counts]
    width = 2 * lay.margin + cols * lay.tile + (cols - 1) * lay.gap
    height = lay.margin + sum(lay.header_h + r * (lay.tile + lay.label_h) + r * lay.gap + lay.margin for r in rows)
    assert (lay.tile, lay.cols) == (256, cols) and sheet.size == (width, height)
    arr = np.asarray(sheet.convert("RGB"), np.float64)
    for s, g in enumerate(data["groups"]):
        paths = [photo_dir / r["path"] for r in g["ranking"]]
        refs = [expected_tile(p, lay.tile) for p in paths]
        for k in range(len(paths)):
            x0, y0, x1, y1 = lay.tile_box(counts, s, k)
            tile = arr[y0:y1, x0:x1]
            diffs = [np.abs(tile - ref).mean() for ref in refs]
            assert diffs[k] < 4.0 and int(np.argmin(diffs)) == k, (g["name"], k, diffs)


# -- compare report ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compared(tiny_bundle, photo_paths, tmp_path_factory):
    """compare A B with A a JPEG (embedded as is) and B a half-size PNG of A (same aspect, different size)."""
    d = tmp_path_factory.mktemp("compare")
    a = next(p for p in photo_paths if p.suffix == ".jpg")
    b = d / 'half "b" & <b>.png'
    img = Image.open(a)
    img.resize((img.width // 2, img.height // 2), Image.LANCZOS).save(b)
    p = run_cli("compare", a, b, "-m", tiny_bundle, "-f", "json", "--report", d / "c.html", cwd=d)
    assert p.returncode == 0, p.stderr
    text = (d / "c.html").read_text(encoding="utf-8")
    return json.loads(p.stdout), text, Page(text), a, b, d


def test_compare_report(compared):
    res, text, page, a, b, _ = compared
    assert_self_contained(text, page)
    assert not page.unbalanced, page.unbalanced[:5]
    assert "<b>.png" not in text
    (ia,) = page.find("img", data_role="a")
    (ib,) = page.find("img", data_role="b")
    mime, raw = decode_uri(ia["src"])
    assert mime == "image/jpeg" and raw == a.read_bytes()  # a plain JPEG goes in byte for byte
    mime, raw = decode_uri(ib["src"])
    assert mime == "image/png" and np.array_equal(np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")),
                                                  np.asarray(Image.open(b).convert("RGB")))  # lossless
    assert ib["alt"] == res["b"] == str(b)
    shown = {c["data-key"]: float(c["data-value"]) for c in page.find("td") if "data-key" in c}
    for key in ("p_first_better", "p_second_better", "p_similar"):
        assert shown[key] == pytest.approx(res[key], abs=1e-12)
    assert page.find("div", id="verdict")[0]["data-verdict"] == res["verdict"]
    js = page.scripts[0]
    assert "wheel" in js and "transform" in js and page.find("button", data_zoom="1")


def test_compare_report_with_a_failed_input(tiny_bundle, photo_paths, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    p = run_cli("compare", photo_paths[0], bad, "-m", tiny_bundle, "--report", tmp_path / "c.html", cwd=tmp_path)
    assert p.returncode == 1
    page = Page((tmp_path / "c.html").read_text(encoding="utf-8"))
    assert page.find("img", data_role="a") and not page.find("img", data_role="b")
    assert page.find("tr", **{"class": "err"})


# -- in a real browser ---------------------------------------------------------------------------------
def test_report_renders_in_chromium(ranked, tmp_path):
    _, _, _, out = ranked
    shot = tmp_path / "shot.png"
    p = chromium((out / "report.html").as_uri(), tmp_path, f"--screenshot={shot}")
    assert shot.is_file(), p.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 900)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 200  # not blank: thumbnails and text were drawn


PROBE = """<script>
var tiles=document.querySelectorAll('figure.tile');tiles[0].click();
document.dispatchEvent(new KeyboardEvent('keydown',{key:'ArrowRight'}));
var lb=document.getElementById('lb'),want=tiles[1].querySelector('img.thumb').getAttribute('data-full');
document.body.setAttribute('data-lightbox',(lb.hidden?'hidden':'shown')+'|'+(lb.querySelector('img').src===want));
var c=document.querySelector('table.heat td[data-p]');c.dispatchEvent(new MouseEvent('mouseover',{bubbles:true}));
document.body.setAttribute('data-readout',document.querySelector('div.heat .readout').textContent);
</script></body>"""


def test_report_lightbox_and_readout_in_chromium(hostile, tmp_path):
    """Click the first tile, step right: the second image's preview is shown; hover a heat-map cell: the
    read-out names both images (as text) with the value."""
    _, text, _, _, _ = hostile
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", PROBE), encoding="utf-8")
    body = next(a for t, a in Page(chromium(probe.as_uri(), tmp_path, "--dump-dom").stdout).elements if t == "body")
    assert body["data-lightbox"] == "shown|true"
    assert re.fullmatch(r"P\(#1 .+ better than #1 .+\) = 0\.5000", body["data-readout"]), body["data-readout"]
    assert HOSTILE_DIR in body["data-readout"]


def test_compare_zoom_is_synchronised_in_chromium(compared, tmp_path):
    """Opened at 2× A's native size: both images get the same displayed size and the same offset."""
    _, _, _, _, _, d = compared
    p = chromium((d / "c.html").as_uri() + "#z=2&cx=0.3&cy=0.4", tmp_path, "--dump-dom")
    page = Page(p.stdout)
    (ia,) = page.find("img", data_role="a")
    (ib,) = page.find("img", data_role="b")
    t = [re.search(r"translate\(([-\d.e]+)px, ([-\d.e]+)px\) scale\(([-\d.e]+)\)", x["style"]) for x in (ia, ib)]
    assert all(t), (ia.get("style"), ib.get("style"))
    (xa, ya, sa), (xb, yb, sb) = [tuple(float(v) for v in m.groups()) for m in t]
    assert sa == pytest.approx(2.0) and sb * int(ib["width"]) == pytest.approx(sa * int(ia["width"]))
    assert (xa, ya) == pytest.approx((xb, yb), abs=1.0)
