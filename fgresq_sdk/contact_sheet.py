"""`rank --contact-sheet sheet.png`: one image per run, the images in rank order, labelled at a glance.

Layout: one sheet for the whole run. Each group is a section: a header band with the group's name and
size, then its images best-first, left to right and top to bottom, in a grid of `cols` columns. Every
tile is a `tile`×`tile` square (the image fitted inside, centred, aspect kept) above a label strip with
the rank and the score ("#3  0.7312") and, below them, the file name (below the folder all the group's
names share; a name too long for the tile keeps its start and its end around "…"). Tile size, columns
and font follow the number of tiles on the
sheet (see `layout_for`): 256 px tiles for up to 48 images, 192 px up to 240, 128 px beyond; at most
MAX_SHEET_TILES tiles per sheet (the best of each group first; a group cut short says "best k of N",
a group left out entirely gets a header saying so). `--top K` limits every group to its best K.

Output path rules are the report's (`report.check_output_path`): never an input image; an existing
file that is not an input is replaced atomically. The format follows the suffix (`sheet_format`: .png,
.jpg/.jpeg, .webp, .tif/.tiff, .bmp; PNG for a path without one); any other suffix is refused before any
work, so a file never holds another format than its name says. Note that a sheet written inside the ranked folder is
an image like any other and will be ranked by the next run over that folder.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image, ImageDraw, ImageFont

from .errors import InputError, display_path
from .output import one_line
from .preprocess import load_thumbnail
from .report import RankGroup, ReportPathError, _common_dir_len, check_output_path, map_ordered, \
    write_atomic

MAX_SHEET_TILES = 1000
BACKGROUND = (24, 26, 30)
TILE_BG = (48, 52, 58)
LABEL_BG = (16, 17, 20)
TEXT = (245, 245, 245)
DIM_TEXT = (170, 176, 186)
# Formats a sheet is written in (chosen by the output's suffix) → Pillow save options.
SHEET_FORMATS = {"PNG": {"compress_level": 6}, "JPEG": {"quality": 90, "optimize": True},
                 "WEBP": {"quality": 90}, "TIFF": {}, "BMP": {}}
_SUFFIX_SHOWN = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}


@dataclass(frozen=True)
class SheetLayout:
    tile: int  # tile edge (px); the image is fitted into tile × tile
    cols: int
    font: int  # label font size (px)
    label_h: int  # label strip under each tile: the rank/score line, then the file-name line
    header_h: int  # group header band
    gap: int = 8  # between tiles
    margin: int = 16  # around the sheet and between sections
    name_font: int = 12  # file-name font size (px)
    line_h: int = 0  # height of the rank/score line at the top of the label strip

    def name_box(self, counts: Sequence[int], section: int, k: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the file-name line under the k-th tile of a section."""
        x0, _, x1, y1 = self.tile_box(counts, section, k)
        return x0, y1 + self.line_h, x1, y1 + self.label_h

    @property
    def width(self) -> int:
        return 2 * self.margin + self.cols * self.tile + (self.cols - 1) * self.gap

    def rows(self, count: int) -> int:
        return math.ceil(count / self.cols) if count else 0

    def section_height(self, count: int) -> int:
        r = self.rows(count)
        return self.header_h + (r * (self.tile + self.label_h) + max(r - 1, 0) * self.gap + (self.gap if r else 0))

    def height(self, counts: Sequence[int]) -> int:
        return self.margin + sum(self.section_height(c) + self.margin for c in counts) if counts else \
            2 * self.margin + self.header_h

    def tile_box(self, counts: Sequence[int], section: int, k: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the image square of the k-th tile (0-based) of a section."""
        top = self.margin + sum(self.section_height(c) + self.margin for c in counts[:section]) + self.header_h
        r, c = divmod(k, self.cols)
        x = self.margin + c * (self.tile + self.gap)
        y = top + self.gap + r * (self.tile + self.label_h + self.gap)
        return x, y, x + self.tile, y + self.tile


def layout_for(counts: Sequence[int]) -> SheetLayout:
    """The layout for sections of these many tiles (tile size from the total, columns capped by the largest)."""
    total = sum(counts)
    if total <= 48:
        tile, cols, font = 256, 7, 24
    elif total <= 240:
        tile, cols, font = 192, 9, 20
    else:
        tile, cols, font = 128, 14, 16
    cols = max(2, min(cols, max(counts, default=1)))
    small = max(12, font - 6)
    return SheetLayout(tile=tile, cols=cols, font=font, label_h=font + 12 + small + 8, header_h=font + 20,
                       name_font=small, line_h=font + 12)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # PIL without FreeType: the small bitmap font
        return ImageFont.load_default()


def _drawable(text: str, font) -> tuple[str, str]:
    """(text, ellipsis) the font can draw: the bitmap fallback font (Pillow without FreeType) has Latin-1 only."""
    text = one_line(text)
    if isinstance(font, ImageFont.FreeTypeFont):
        return text, "…"
    return text.encode("latin-1", "replace").decode("latin-1"), "..."


def _fit(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> str:
    """Cut text (with …) to fit width px."""
    text, ell = _drawable(text, font)
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + ell, font=font) > width:
        text = text[:-1]
    return text + ell


def _fit_middle(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> str:
    """Cut the middle of text (start … end) to fit width px: a file name keeps its ending and suffix."""
    text, ell = _drawable(text, font)
    if draw.textlength(text, font=font) <= width:
        return text

    def cut(keep: int) -> str:
        tail = keep // 2
        return text[:keep - tail] + ell + (text[len(text) - tail:] if tail else "")

    lo, hi = 0, len(text) - 1  # the most characters kept that still fit (binary search)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if draw.textlength(cut(mid), font=font) <= width:
            lo = mid
        else:
            hi = mid - 1
    return cut(lo)


def plan(groups: Sequence[RankGroup], top: int | None = None) -> list[list[int]]:
    """Input indices per group that get a tile, best first, within MAX_SHEET_TILES."""
    left = MAX_SHEET_TILES
    out = []
    for g in groups:
        shown = g.shown(top)[:left]
        left -= len(shown)
        out.append(shown)
    return out


def contact_sheet(groups: Sequence[RankGroup], top: int | None = None, progress=None) -> Image.Image:
    """Render the sheet (see the module docstring)."""
    picks = plan(groups, top)
    counts = [len(p) for p in picks]
    lay = layout_for(counts)
    sheet = Image.new("RGB", (lay.width, lay.height(counts)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font, small = _font(lay.font), _font(lay.name_font)
    if not groups:
        draw.text((lay.margin, lay.margin + 4), "no image was ranked", fill=TEXT, font=font)
        return sheet

    jobs = [(gi, i) for gi, p in enumerate(picks) for i in p]

    def work(job):
        gi, i = job
        g = groups[gi]
        try:
            return load_thumbnail(g.inputs[i], lay.tile, g.result.names[i])
        except InputError:
            return None
        except Exception:  # noqa: BLE001 - a tile must never cost the sheet
            return None

    tiles = dict(zip(jobs, map_ordered(work, jobs, progress=progress)))
    y = lay.margin
    for gi, (g, pick) in enumerate(zip(groups, picks)):
        n = len(g.result.names)
        what = f"{n} image{'s' if n != 1 else ''}"
        if len(pick) < n:
            what = (f"best {len(pick)} of {n}" if pick
                    else f"{n} images not shown (sheet limit of {MAX_SHEET_TILES} tiles)")
        head = one_line(g.name)
        cut = _common_dir_len([g.result.names[i] for i in pick])  # names below the folder they all share
        mid = y + lay.header_h // 2
        draw.text((lay.width - lay.margin, mid), what, fill=DIM_TEXT, font=small, anchor="rm")
        room = lay.width - 2 * lay.margin - int(draw.textlength(what, font=small)) - 16
        draw.text((lay.margin, mid), _fit(head, draw, font, room), fill=TEXT, font=font, anchor="lm")
        for k, i in enumerate(pick):
            x0, y0, x1, y1 = lay.tile_box(counts, gi, k)
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=TILE_BG)
            img = tiles[(gi, i)]
            if img is not None:
                sheet.paste(img, (x0 + (lay.tile - img.width) // 2, y0 + (lay.tile - img.height) // 2))
            else:
                draw.text((x0 + 8, y0 + 8), "no preview", fill=DIM_TEXT, font=small)
            draw.rectangle((x0, y1, x1 - 1, y1 + lay.label_h - 1), fill=LABEL_BG)
            score = float(g.result.scores[i])
            draw.text((x0 + 6, y1 + lay.line_h // 2), f"#{k + 1}", fill=TEXT, font=font, anchor="lm")
            draw.text((x1 - 6, y1 + lay.line_h // 2), f"{score:.4f}", fill=TEXT, font=font, anchor="rm")
            nx0, ny0, nx1, ny1 = lay.name_box(counts, gi, k)
            name = _fit_middle(str(g.result.names[i])[cut:], draw, small, nx1 - nx0 - 12)
            draw.text((nx0 + 6, (ny0 + ny1) // 2 - 2), name, fill=DIM_TEXT, font=small, anchor="lm")
        y += lay.section_height(len(pick)) + lay.margin
    return sheet


def sheet_format(out: Path) -> str:
    """The Pillow format the sheet is written in, from the path's suffix (PNG without one). Raises
    ReportPathError for a suffix that names no format in SHEET_FORMATS (never a PNG under a .jpg name)."""
    suffix = Path(out).suffix.lower()
    if not suffix:
        return "PNG"
    fmt = Image.registered_extensions().get(suffix)
    if fmt not in SHEET_FORMATS or fmt not in Image.SAVE:
        usable = [e for f, e in _SUFFIX_SHOWN.items() if f in Image.SAVE]
        raise ReportPathError(f"{display_path(out)}: cannot write a contact sheet as '{one_line(suffix)}' "
                              f"(use {', '.join(usable)})")
    return fmt


def write_contact_sheet(out: Path, groups: Sequence[RankGroup], *, inputs: Iterable[Any] = (),
                        top: int | None = None, progress=None) -> Path:
    """Check the path (never an input) and its suffix, render and write the sheet atomically in the format
    the suffix names."""
    fmt = sheet_format(out)
    check_output_path(out, list(inputs) + [x for g in groups for x in g.inputs], "contact sheet")
    img = contact_sheet(groups, top, progress)
    buf = io.BytesIO()
    try:
        img.save(buf, fmt, **SHEET_FORMATS[fmt])
    except (OSError, ValueError) as exc:  # e.g. taller than JPEG (65,535 px) or WebP (16,383 px) allow
        raise ReportPathError(f"{display_path(out)}: cannot encode a {img.width}×{img.height} contact sheet as "
                              f"{fmt} ({exc}); a .png has no such limit") from None
    return write_atomic(out, buf.getvalue())
