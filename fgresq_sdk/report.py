"""Self-contained HTML reports a person can look at: `rank --report` and `compare --report`.

One `.html` file, nothing else: every image is embedded as a `data:` URI, the CSS and the little JS are
inline, and the page loads nothing from anywhere (no network, no external scripts, fonts or styles).

Rank report (`fgresq-sdk rank DIR --report report.html`), per group:
  * the images best-first as tiles: rank, path, score, win rate ("-" for a group of one image: nothing to
    win against) and tier. Consecutive images of one tier
    (the model judges them of similar quality) are boxed together and labelled "similar quality".
  * thumbnails: JPEG, long side THUMB_SIDE px, quality THUMB_QUALITY, never enlarged (about 3.5 KB each
    for 640×480 photos: a report of 1,000 images in one group is about 5.6 MB and takes about 2 s to write
    on 2 CPU cores, after the ranking itself).
  * click a tile for a larger view (← → to step through the group, Esc to close). A PREVIEW_SIDE px preview
    is embedded only for groups of at most PREVIEW_MAX_GROUP images, group by group while all previews
    together stay within PREVIEW_BUDGET bytes (a group that would overrun it, and every later one, gets
    none); elsewhere the larger view is the thumbnail scaled up, and the page says so. Previews sit in a
    data-full attribute and are decoded only when opened.
  * the heat map of the group's pairwise preferences: cell (row, col) = P(row better than column), the
    symmetrised preference the ranking is computed from (`RankResult.ranking.preference`), rows and
    columns in rank order, tiers of several images boxed by lines. For N ≤ HEATMAP_TABLE_MAX the map is an HTML
    table whose cells carry the value in their title and in data-p (row and column = the cell's position);
    each row is labelled with its rank and file name (below the folder the group's names share, cut in the
    middle beyond HEATMAP_NAME_CHARS characters; the full path in its title), columns with the rank.
    Larger groups get an embedded PNG with one pixel per pair (block-averaged down to at most
    HEATMAP_IMAGE_MAX px a side), a note, and the file names of its rows/columns in rank order as a list;
    per-cell values are then left to the Python API.
  * `--top K` limits both the tiles and the heat map to the best K of each group.
Then the inputs that failed (path and reason), and a footer with the model (bundle name, config,
precision, created), the SDK version and the backend.

Compare report (`fgresq-sdk compare A B --report compare.html`): both images side by side at native
resolution (long side capped at NATIVE_CAP px; a JPEG that needs no rotation or downscaling is embedded
byte for byte, anything else as lossless PNG), a synchronised pan/zoom (wheel, drag, 1:1 / 2:1 / 4:1
buttons) that shows the same region of both, and the three probabilities with the verdict. The page opens
fitted, or at the view named in its address: `compare.html#z=2&cx=0.3&cy=0.6` (z: multiple of A's native
size, cx/cy: the centre as a fraction of the image's width and height).

Output paths: the report is written to a temporary file beside PATH and then renamed over it, so an
existing file at PATH is replaced, but only if PATH is not one of the inputs: a PATH that is (or resolves
to, or is a hard link of) an input image is refused before any work is done, so a report never
overwrites an image. The report is written even when some inputs failed; they are listed in it.

Every path, group name and message is HTML-escaped (and control characters shown as escapes): a file
named `<script>alert(1)</script>.png` is shown as text. No input-derived text ever goes into a script.
"""
from __future__ import annotations

import base64
import concurrent.futures as cf
import functools
import datetime as _dt
import html
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from .errors import FGResQError, InputError, display_path
from .output import one_line
from .preprocess import load_image, load_thumbnail
from .verdict import PROB_KEYS, VERDICTS

THUMB_SIDE = 160
THUMB_QUALITY = 70
PREVIEW_SIDE = 512
PREVIEW_QUALITY = 82
PREVIEW_MAX_GROUP = 50
PREVIEW_BUDGET = 8 * 1024 * 1024  # bytes of JPEG (base64 adds a third)
HEATMAP_TABLE_MAX = 60
HEATMAP_IMAGE_MAX = 512
HEATMAP_NAME_CHARS = 28  # a row label longer than this is cut in the middle ("start…end.png")
HEAT_LEVELS = 40  # heat-map table cells are coloured in 41 steps (classes q0…q40); values stay exact
NATIVE_CAP = 2048

Progress = Callable[[], None] | None


class ReportPathError(FGResQError):
    """The requested output path cannot be used (it is an input, a folder, or its folder is missing)."""


# -- output paths --------------------------------------------------------------------------------------
def check_output_path(out: Path, inputs: Iterable[Any] = (), what: str = "report") -> None:
    """Refuse an output path that is an input (same path, same resolved file, or a hard link of one),
    a folder, or inside a folder that does not exist. Raises ReportPathError."""
    out = Path(out)
    if out.is_dir():
        raise ReportPathError(f"{display_path(out)}: {what} path is a directory")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ReportPathError(f"{display_path(out)}: cannot write the {what} (folder "
                              f"{display_path(parent)} does not exist)")
    target = out.resolve()
    try:
        st = os.stat(out)
        out_id = (st.st_dev, st.st_ino)
    except OSError:
        out_id = None
    for p in inputs:
        if not isinstance(p, (str, os.PathLike)):
            continue
        same = Path(p).resolve() == target
        if not same and out_id is not None:
            try:
                s = os.stat(p)
                same = (s.st_dev, s.st_ino) == out_id
            except OSError:
                pass
        if same:
            raise ReportPathError(f"{display_path(out)}: refusing to write the {what} over an input image")


def write_atomic(out: Path, data: bytes) -> Path:
    """Write data to a temporary file beside out, then rename it over out (no half-written file)."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # as a plain open() would have made it (mkstemp makes 0600)
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return out


# -- images --------------------------------------------------------------------------------------------
def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=True, progressive=False)
    return buf.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def map_ordered(fn: Callable[[Any], Any], items: Sequence[Any], workers: int | None = None,
                progress: Progress = None) -> list:
    """fn over items in a small thread pool (PIL releases the GIL while decoding), results in order."""
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    out: list = [None] * len(items)
    with cf.ThreadPoolExecutor(workers, thread_name_prefix="fgresq-report") as pool:
        futs = {pool.submit(fn, x): i for i, x in enumerate(items)}
        for f in cf.as_completed(futs):
            out[futs[f]] = f.result()
            if progress is not None:
                progress()
    return out


# -- text ----------------------------------------------------------------------------------------------
def esc(text: object) -> str:
    """HTML-escape (quotes included) after showing control characters as escapes."""
    return html.escape(one_line(text), quote=True)


def model_meta(scorer) -> dict[str, str]:
    """The footer's facts about the model and the backend, from a Scorer."""
    from . import __version__

    d = scorer.describe()
    m = d.get("model", {})
    meta = {"model": m.get("name"), "config": m.get("config"), "precision": m.get("precision"),
            "created": m.get("created"), "source": m.get("source"), "fgresq-sdk": __version__,
            "backend": d.get("backend"), "device": d.get("device")}
    prov = d.get("providers") or d.get("provider")
    if prov:
        meta["providers"] = ", ".join(prov) if isinstance(prov, (list, tuple)) else str(prov)
    if getattr(scorer, "crops", 1) != 1:
        meta["crops"] = str(scorer.crops)
    return {k: str(v) for k, v in meta.items() if v is not None}


# -- colours -------------------------------------------------------------------------------------------
# Diverging red → near-white → blue (ColorBrewer RdBu, colour-blind safe): blue = row better.
_STOPS = np.array([[178, 24, 43], [239, 138, 98], [247, 247, 247], [103, 169, 207], [33, 102, 172]], np.float64)


def heat_rgb(p: np.ndarray) -> np.ndarray:
    """P in [0, 1] (any shape) → uint8 RGB (shape + (3,))."""
    x = np.clip(np.asarray(p, np.float64), 0.0, 1.0) * (len(_STOPS) - 1)
    lo = np.minimum(np.floor(x).astype(int), len(_STOPS) - 2)
    t = (x - lo)[..., None]
    return np.rint(_STOPS[lo] * (1 - t) + _STOPS[lo + 1] * t).astype(np.uint8)


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in rgb)


def _heat_css() -> str:
    rgb = heat_rgb(np.arange(HEAT_LEVELS + 1) / HEAT_LEVELS)
    return "".join(f".q{k}{{background:{_hex(c)}}}" for k, c in enumerate(rgb))


# -- rank report ---------------------------------------------------------------------------------------
@dataclass
class RankGroup:
    """One ranked group: its name, the RankResult and the inputs behind result.names (same order)."""

    name: str
    result: Any  # scorer.RankResult
    inputs: Sequence[Any]

    def shown(self, top: int | None) -> list[int]:
        """Input indices shown, best first."""
        return [int(i) for i in self.result.ranking.order[: top or None]]





@functools.lru_cache(maxsize=None)
def asset(name: str) -> str:
    """A stylesheet or script of the page templates (package data in fgresq_sdk/report_assets/)."""
    from importlib import resources

    return (resources.files("fgresq_sdk.report_assets") / name).read_text(encoding="utf-8")


def _page(title: str, body: str, meta: dict[str, str], script: str, css_extra: str = "") -> str:
    foot = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in meta.items())
    generated = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
            f"<title>{esc(title)}</title><style>{asset('report.css')}{_heat_css()}{css_extra}</style></head><body>\n"
            f"{body}\n<footer><b>FGResQ</b> · generated {esc(generated)}<dl id=\"meta\">{foot}</dl></footer>\n"
            f"<script>{script}</script>\n</body></html>\n")


def _errors_html(errors: Sequence[dict]) -> str:
    if not errors:
        return ""
    rows = "".join(f"<tr class=\"err\"><td class=\"path\">{esc(e.get('path', ''))}</td>"
                   f"<td class=\"why\">{esc(e.get('error', ''))}</td></tr>" for e in errors)
    return (f"<section class=\"errors\" id=\"errors\"><h2>{len(errors)} input{'s' if len(errors) != 1 else ''} "
            f"failed</h2><table class=\"plain\"><tr><th>path</th><th>reason</th></tr>{rows}</table></section>")


def _middle_cut(text: str, limit: int = HEATMAP_NAME_CHARS) -> str:
    """text, or its start and end around "…" when it is longer than limit characters."""
    if len(text) <= limit:
        return text
    tail = (limit - 1) // 2
    return text[:limit - 1 - tail] + "…" + text[len(text) - tail:]


def _heatmap_html(g: RankGroup, shown: list[int]) -> str:
    r = g.result.ranking
    pref = np.asarray(r.preference, np.float64)[np.ix_(shown, shown)]
    tiers = [int(r.tier[i]) for i in shown]
    n = len(shown)
    size = {t: tiers.count(t) for t in tiers}
    # A line after position k where the tier changes and a tier of several images starts or ends there:
    # those tiers show as boxed blocks on the diagonal (single-image tiers need no line).
    cut = [k + 1 < n and tiers[k + 1] != tiers[k] and (size[tiers[k]] > 1 or size[tiers[k + 1]] > 1)
           for k in range(n)]
    legend = ("<div class=\"legend\"><span>0 (column better)</span><span class=\"bar\"></span>"
              "<span>1 (row better)</span></div>")
    head = (f"<h3>Pairwise preferences</h3><p class=\"note\">Cell (row, column) = P(row better than column), "
            f"the symmetrised preference the ranking is fitted to; rows and columns in rank order"
            f"{'; lines box the tiers of images of similar quality' if n <= HEATMAP_TABLE_MAX else ''}.</p>{legend}")
    if n < 2:
        return ""
    if n > HEATMAP_TABLE_MAX:
        m = pref
        step = int(np.ceil(n / HEATMAP_IMAGE_MAX))
        if step > 1:  # block-average down to at most HEATMAP_IMAGE_MAX px a side
            k = int(np.ceil(n / step))
            pad = np.full((k * step, k * step), np.nan)
            pad[:n, :n] = m
            m = np.nanmean(pad.reshape(k, step, k, step), axis=(1, 3))
        img = Image.fromarray(heat_rgb(m), "RGB")
        buf = io.BytesIO()
        img.save(buf, "PNG", optimize=True)
        disp = max(min(HEATMAP_IMAGE_MAX, 4 * img.width), img.width)
        extra = f", block-averaged {step}×{step} per pixel" if step > 1 else ", one pixel per pair"
        names = "".join(f"<li>{esc(g.result.names[i])}</li>" for i in shown)
        return (f"<div class=\"heat\" data-n=\"{n}\">{head}<p class=\"note\">{n} images: drawn as an image"
                f"{extra}, without per-cell values (heat maps of more than {HEATMAP_TABLE_MAX} images are not "
                f"drawn as tables; the values are in the Python API, RankResult.ranking.preference).</p>"
                f"<img class=\"heatimg\" alt=\"pairwise preference heat map\" width=\"{disp}\" height=\"{disp}\" "
                f"src=\"{data_uri(buf.getvalue(), 'image/png')}\"><details><summary>Rows and columns, top to bottom "
                f"and left to right (rank order)</summary><ol class=\"heatnames\">{names}</ol></details></div>")
    cell = int(min(44, max(10, 600 // n)))
    text = cell >= 36
    cut_dir = _common_dir_len([g.result.names[i] for i in shown])  # row labels below the shared folder
    rows = []
    hdr = "".join(f"<th title=\"#{k + 1} {esc(g.result.names[i])}\">{k + 1}</th>" for k, i in enumerate(shown))
    rows.append(f"<tr><th></th>{hdr}</tr>")
    level = np.rint(np.clip(pref, 0, 1) * HEAT_LEVELS).astype(int)
    for a in range(n):
        tb = " class=\"tb\"" if cut[a] else ""
        cells = []
        for b in range(n):
            v = float(pref[a, b])
            # Row and column are the cell's position (1-based, after the header row / column).
            cells.append(f"<td class=\"q{level[a, b]}{' tr' if cut[b] else ''}\" data-p=\"{v:.8f}\" "
                         f"title=\"#{a + 1} vs #{b + 1}: {v:.4f}\">{f'{v:.2f}' if text else ''}</td>")
        name = g.result.names[shown[a]]
        rows.append(f"<tr{tb}><th class=\"rn\" title=\"#{a + 1} {esc(name)}\">{a + 1}<span class=\"hn\">"
                    f"{esc(_middle_cut(name[cut_dir:]))}</span></th>{''.join(cells)}</tr>")
    return (f"<div class=\"heat\" data-n=\"{n}\">{head}<div class=\"heatwrap\"><table class=\"heat\" "
            f"style=\"--c:{cell}px\">{''.join(rows)}</table></div><div class=\"readout\"></div></div>")


def _common_dir_len(names: Sequence[str]) -> int:
    """Length of the folder prefix (up to and including a '/') that all names share."""
    if not names:
        return 0
    dirs = [n.split("/")[:-1] for n in names]
    k = 0
    while all(len(d) > k and d[k] == dirs[0][k] for d in dirs):
        k += 1
    return sum(len(part) + 1 for part in dirs[0][:k])


def rank_report_html(groups: Sequence[RankGroup], errors: Sequence[dict] = (), meta: dict[str, str] | None = None,
                     title: str = "FGResQ ranking", top: int | None = None, progress: Progress = None,
                     subtitle: str | None = None) -> str:
    """The rank report as one HTML string (see the module docstring)."""
    meta = dict(meta or {})
    def work(src, name, want_preview):
        try:
            img = load_thumbnail(src, PREVIEW_SIDE if want_preview else THUMB_SIDE, name)
            prev = jpeg_bytes(img, PREVIEW_QUALITY) if want_preview and max(img.size) > THUMB_SIDE else None
            if max(img.size) > THUMB_SIDE:
                img = img.copy()
                img.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.LANCZOS)
            return jpeg_bytes(img, THUMB_QUALITY), prev, None
        except InputError as exc:
            return None, None, exc.reason
        except Exception as exc:  # noqa: BLE001 - a thumbnail must never cost the report
            return None, None, f"{type(exc).__name__}: {exc}"

    # Previews: for small groups, group by group, while the byte budget lasts (a group that would overrun
    # it gets none, and no later group gets any).
    thumbs: dict[tuple[int, int], tuple] = {}
    budget = PREVIEW_BUDGET
    for gi, g in enumerate(groups):
        shown = g.shown(top)
        want = len(g.result.names) <= PREVIEW_MAX_GROUP and budget > 0
        got = map_ordered(lambda i: work(g.inputs[i], g.result.names[i], want), shown, progress=progress)
        used = sum(len(p) for _, p, _ in got if p is not None)
        if used > budget:
            got, budget = [(t, None, w) for t, _, w in got], 0
        else:
            budget -= used
        thumbs.update({(gi, i): r for i, r in zip(shown, got)})

    parts = [f"<header class=\"top\"><h1>{esc(title)}</h1>"]
    n_img = sum(len(g.result.names) for g in groups)
    summary = (f"{len(groups)} group{'s' if len(groups) != 1 else ''}, {n_img} image{'s' if n_img != 1 else ''} "
               "ranked" + (f", {len(errors)} failed" if errors else "")
               + (f"; best {top} per group shown" if top else ""))
    parts.append(f"<p>{esc(subtitle) + ' · ' if subtitle else ''}{esc(summary)}</p></header><main>")
    if len(groups) > 1:
        parts.append("<nav class=\"toc\">Groups: " + "".join(
            f"<a href=\"#g{gi + 1}\">{esc(g.name)}</a>" for gi, g in enumerate(groups)) + "</nav>")
    if errors:
        parts.append(f"<p class=\"note\"><a href=\"#errors\">{len(errors)} failed input(s) listed below.</a></p>")
    for gi, g in enumerate(groups):
        res, r = g.result, g.result.ranking
        shown = g.shown(top)
        n_tiers = len(set(int(r.tier[i]) for i in shown))
        parts.append(f"<section class=\"group\" id=\"g{gi + 1}\" data-group=\"{esc(g.name)}\" "
                     f"data-n=\"{len(res.names)}\"><h2>{esc(g.name)} <small>{len(res.names)} image"
                     f"{'s' if len(res.names) != 1 else ''} · {n_tiers} tier{'s' if n_tiers != 1 else ''}"
                     f"{f' · best {len(shown)} shown' if len(shown) < len(res.names) else ''}</small></h2>"
                     f"<div class=\"ranking\">")
        cut = _common_dir_len([res.names[i] for i in shown])  # tiles show names below the shared folder
        pos = 0
        while pos < len(shown):
            tier = int(r.tier[shown[pos]])
            end = pos
            while end < len(shown) and int(r.tier[shown[end]]) == tier:
                end += 1
            multi = end - pos > 1
            parts.append(f"<div class=\"tier{' multi' if multi else ''}\" data-tier=\"{tier}\">" +
                         (f"<div class=\"tier-label\">tier {tier} · similar quality ({end - pos} images)</div>"
                          if multi else ""))
            for k in range(pos, end):
                i = shown[k]
                name = res.names[i]
                thumb, prev, why = thumbs[(gi, i)]
                score, win = float(res.scores[i]), float(r.win_rate[i])
                if len(res.names) < 2 or not np.isfinite(win):  # one image: nothing to win against
                    win, win_txt = None, "-"
                else:
                    win_txt = f"{win:.1%}"
                cap = f"#{k + 1} {name} · score {score:.4f} · win rate {win_txt} · tier {tier}"
                if thumb is not None:
                    full = ""
                    if prev is not None:
                        full = f" data-full=\"{data_uri(prev, 'image/jpeg')}\""
                    pic = (f"<img class=\"thumb\" alt=\"{esc(name)}\" decoding=\"async\" "
                           f"src=\"{data_uri(thumb, 'image/jpeg')}\"{full}>")
                else:
                    pic = f"<div class=\"nothumb\">no preview: {esc(why)}</div>"
                parts.append(f"<figure class=\"tile\" data-rank=\"{k + 1}\" data-path=\"{esc(name)}\" "
                             f"data-score=\"{score!r}\" data-win-rate=\"{'' if win is None else repr(win)}\" "
                             f"data-tier=\"{tier}\" "
                             f"data-caption=\"{esc(cap)}\"><div class=\"thumbbox\">{pic}</div><figcaption>"
                             f"<span class=\"rk\">#{k + 1}</span><span class=\"nums\">score {score:.4f} · "
                             f"win {win_txt} · tier {tier}</span><span class=\"nm\" title=\"{esc(name)}\">"
                             f"{esc(name[cut:])}</span></figcaption></figure>")
            parts.append("</div>")
            pos = end
        parts.append("</div>")
        parts.append(_heatmap_html(g, shown))
        parts.append("</section>")
    if not groups:
        parts.append("<p class=\"note\">No image was ranked.</p>")
    parts.append(_errors_html(errors))
    parts.append("</main><div id=\"lb\" hidden><img alt=\"\"><div class=\"cap\"></div></div>")
    return _page(title, "".join(parts), meta, asset("rank.js"))


def write_rank_report(out: Path, groups: Sequence[RankGroup], errors: Sequence[dict] = (),
                      meta: dict[str, str] | None = None, *, inputs: Iterable[Any] = (), top: int | None = None,
                      title: str = "FGResQ ranking", subtitle: str | None = None, progress: Progress = None) -> Path:
    """Check the path (never an input), render and write the rank report atomically."""
    all_inputs = list(inputs) + [x for g in groups for x in g.inputs]
    check_output_path(out, all_inputs, "report")
    page = rank_report_html(groups, errors, meta, title=title, top=top, progress=progress, subtitle=subtitle)
    return write_atomic(out, page.encode("utf-8", "backslashreplace"))


# -- compare report ------------------------------------------------------------------------------------



def native_embed(src: Any, name: str, cap: int = NATIVE_CAP) -> tuple[str, tuple[int, int], str]:
    """(data URI, embedded size, note): the image at native resolution, long side capped at `cap`.

    A JPEG file that needs no rotation and no downscaling is embedded as is (no second compression);
    anything else is decoded, made upright, downscaled if needed and embedded as lossless PNG.
    """

    img = load_image(src, name)
    native = img.size
    if isinstance(src, (str, os.PathLike)) and max(native) <= cap:
        try:
            with Image.open(src) as raw:
                orient = raw.getexif().get(0x0112, 1)
                if raw.format == "JPEG" and orient in (1, None) and raw.size == native and raw.mode == "RGB":
                    return data_uri(Path(src).read_bytes(), "image/jpeg"), native, "original JPEG bytes"
        except Exception:  # noqa: BLE001 - fall back to re-encoding
            pass
    note = "lossless PNG"
    if max(native) > cap:
        img = img.copy()
        img.thumbnail((cap, cap), Image.LANCZOS)
        note = f"downscaled from {native[0]}×{native[1]} to a {cap} px long side, lossless PNG"
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=6)
    return data_uri(buf.getvalue(), "image/png"), img.size, note


def compare_report_html(a: Any, b: Any, comparison=None, errors: Sequence[dict] = (),
                        meta: dict[str, str] | None = None, names: tuple[str, str] | None = None) -> str:
    """The compare report as one HTML string. `comparison` is a scorer.Comparison (None if an input failed)."""
    names = names or (display_path(a) if isinstance(a, (str, os.PathLike)) else "A",
                      display_path(b) if isinstance(b, (str, os.PathLike)) else "B")
    failed = {e.get("path") for e in errors}
    panes = []
    for role, src, name in (("a", a, names[0]), ("b", b, names[1])):
        label = "A (first)" if role == "a" else "B (second)"
        if name in failed:
            view, dim = "<div class=\"missing\">could not be read (see errors)</div>", ""
        else:
            try:
                uri, size, note = native_embed(src, name)
                view = (f"<img data-role=\"{role}\" alt=\"{esc(name)}\" width=\"{size[0]}\" height=\"{size[1]}\" "
                        f"src=\"{uri}\">")
                dim = f"{size[0]}×{size[1]} px · {note}"
            except InputError as exc:
                view, dim = f"<div class=\"missing\">no image: {esc(exc.reason)}</div>", ""
        panes.append(f"<div class=\"pane\" data-role=\"{role}\"><h2>{label}: {esc(name)}</h2>"
                     f"<div class=\"view pix\">{view}</div><div class=\"dim\">{esc(dim)}</div></div>")
    body = [f"<header class=\"top\"><h1>FGResQ comparison</h1><p>A: {esc(names[0])} · B: {esc(names[1])}</p></header>",
            "<main>"]
    if comparison is not None:
        c = comparison.to_dict()
        words = dict(zip(VERDICTS, ("A is better", "B is better", "similar quality")))
        body.append(f"<div class=\"verdict\" id=\"verdict\" data-verdict=\"{esc(c['verdict'])}\">Verdict: "
                    f"{words.get(c['verdict'], esc(c['verdict']))}</div><table class=\"probs\" id=\"probs\">")
        for key, label in zip(PROB_KEYS, ("P(A better)", "P(B better)", "P(similar quality)")):
            v = float(c[key])
            body.append(f"<tr><th>{label}</th><td class=\"p\" data-key=\"{key}\" data-value=\"{v!r}\">{v:.4f}</td>"
                        f"<td><span class=\"pbar\" style=\"width:{max(1, round(200 * v))}px\"></span></td></tr>")
        body.append("</table>")
    else:
        body.append("<div class=\"verdict\" id=\"verdict\" data-verdict=\"\">No comparison: an input failed.</div>")
    body.append("<div class=\"controls\"><button data-zoom=\"fit\">fit</button><button data-zoom=\"1\">1:1</button>"
                "<button data-zoom=\"2\">2:1</button><button data-zoom=\"4\">4:1</button>"
                "<label><input type=\"checkbox\" id=\"pix\" checked> pixelated</label>"
                "<span class=\"zl\" id=\"zlevel\"></span><span class=\"zl\">wheel: zoom · drag: pan · "
                "double-click: fit — both sides always show the same region</span></div>")
    body.append(f"<div class=\"cmpwrap\">{''.join(panes)}</div>")
    body.append(_errors_html(errors))
    body.append("</main>")
    return _page("FGResQ comparison", "".join(body), dict(meta or {}), asset("compare.js"), asset("compare.css"))


def write_compare_report(out: Path, a: Any, b: Any, comparison=None, errors: Sequence[dict] = (),
                         meta: dict[str, str] | None = None, names: tuple[str, str] | None = None) -> Path:
    check_output_path(out, [a, b], "report")
    page = compare_report_html(a, b, comparison, errors, meta, names)
    return write_atomic(out, page.encode("utf-8", "backslashreplace"))
