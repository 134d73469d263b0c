"""Bad and unusual inputs, through the real `fgresq-sdk` executable and through the library.

The contract for every bad input: the other images are still scored, the exit code is 1 (0 when all
inputs were fine), stderr has exactly one `error: PATH: reason` line per failed input, there is never a
traceback, and nothing in the input folder is written or changed. Unusual but valid images (16-bit,
palette, CMYK, EXIF-rotated…) must decode to the right pixels, not merely not crash.

All files are generated once per module in a world-readable folder, so the permission test can also run
the CLI as `nobody` when the tests run as root.
"""
from __future__ import annotations

import csv
import ctypes
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fgresq_sdk import preprocess as pre
from fgresq_sdk.errors import InputError
from fgresq_sdk.preprocess import load_image
from fgresq_sdk.scorer import Scorer, collect_images

NOBODY = 65534


from cli_runner import Run, run_cli, snapshot  # noqa: E402


# -- crafting files --------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(w: int, h: int, bit_depth: int, color_type: int, rows, idat_limit: int | None = None) -> bytes:
    """A PNG written by hand: 16-bit RGB (which PIL cannot write) and huge 1-bit images for cheap."""
    co = zlib.compressobj(9)
    idat = b"".join(co.compress(b"\x00" + r) for r in rows) + co.flush()
    if idat_limit is not None:
        idat = idat[:idat_limit]
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def tiff_with_huge_samples_per_pixel() -> bytes:
    """A TIFF whose SamplesPerPixel is absurd: PIL refuses it and also *logs* an error of its own."""
    b = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(b, "TIFF")
    d = bytearray(b.getvalue())
    assert d[:4] == b"II*\x00"
    off = struct.unpack_from("<I", d, 4)[0]
    for i in range(struct.unpack_from("<H", d, off)[0]):
        entry = off + 2 + 12 * i
        if struct.unpack_from("<H", d, entry)[0] == 277:
            struct.pack_into("<H", d, entry + 8, 60000)
            return bytes(d)
    raise AssertionError("no SamplesPerPixel tag")


def exif_bytes(orientation: int, corrupt: bool = False) -> bytes:
    """An EXIF block with an orientation tag; `corrupt` adds a tag pointing past the end (PIL warns)."""
    entries = [struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)]
    if corrupt:
        entries.insert(0, struct.pack("<HHII", 0x010E, 2, 1000, 5000))
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)) + b"".join(entries) + b"\0\0\0\0"
    return b"Exif\x00\x00" + tiff


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


@dataclass(frozen=True)
class Case:
    name: str | bytes  # file name in the inputs folder (bytes: not valid UTF-8)
    json_name: str  # how the CLI names it in JSON
    err_name: str  # how it appears in a one-line stderr message
    reason: str | None = None  # regex the error must match; None: the image must be scored

    @property
    def bad(self) -> bool:
        return self.reason is not None


def _case(name, reason=None, json_name=None, err_name=None) -> Case:
    return Case(name, json_name or name, err_name or json_name or name, reason)


NOT_IMAGE = r"^not a recognised image format$"
BAD = [
    _case("empty.jpg", r"^empty file \(0 bytes\)$"),
    _case("truncated.jpg", r"^truncated or corrupted image data"),
    _case("truncated.png", r"^truncated or corrupted image data"),
    _case("text.jpg", NOT_IMAGE),
    _case("bomb.png", r"(?i)decompression bomb"),
    _case("bomb_header.png", r"(?i)decompression bomb"),
    _case("bad_header.tif", NOT_IMAGE),
    _case("pipe.png", r"^not a regular file$"),
    _case("new\nline.jpg", NOT_IMAGE, err_name="new\\nline.jpg"),
    _case(":cat:bad.jpg", NOT_IMAGE),
    _case("[bold]bad.jpg", NOT_IMAGE),
]
GOOD = [
    _case("gray16.png"), _case("rgb16.png"), _case("gray.png"), _case("rgba.png"), _case("palette.png"),
    _case("palette_trns.png"), _case("cmyk.jpg"), _case("exif6.jpg"), _case("exif8.jpg"),
    _case("bad_exif.jpg"), _case(":cat:.png"), _case("[red]z.png"),
    _case(b"caf\xe9.png", json_name="caf\\xe9.png"),
    _case("caf\\xe9.png"),  # a literal backslash: prints exactly like the byte name above
]


@dataclass
class Fixture:
    root: Path  # world-readable
    inputs: Path  # every case plus good_a.png / good_b.jpg
    bundle: Path  # a world-readable copy of the tiny bundle
    expected: dict = field(default_factory=dict)  # case name → expected RGB array


def _write(path: Path | bytes, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _make_inputs(d: Path, photos: list[Path]) -> dict:
    """Write every case into d; returns the pixels each valid odd-mode image must decode to."""
    rng = np.random.default_rng(0)
    a = np.asarray(Image.open(photos[0]).convert("RGB"))
    b = np.asarray(Image.open(photos[1]).convert("RGB"))
    base = np.asarray(Image.fromarray(a).resize((64, 48), Image.BILINEAR))  # 48 rows × 64 columns
    exp: dict[str, np.ndarray] = {}
    shutil.copy(photos[0], d / "good_a.png")
    shutil.copy(photos[1], d / "good_b.jpg")

    # bad
    _write(d / "empty.jpg", b"")
    jpg, png = encode(Image.fromarray(base), "JPEG", quality=90), encode(Image.fromarray(base), "PNG")
    _write(d / "truncated.jpg", jpg[: len(jpg) // 2])
    _write(d / "truncated.png", png[: len(png) // 2])
    for n in ("text.jpg", "new\nline.jpg", ":cat:bad.jpg", "[bold]bad.jpg"):
        _write(d / n, b"this is not an image\n")
    _write(d / "bomb.png", png_bytes(20000, 20000, 1, 0, [bytes(2500)] * 20000))  # complete and valid, ~50 KB
    # Header only (IDAT cut short): decoding would fail as "truncated", so the bomb must be refused before.
    _write(d / "bomb_header.png", png_bytes(30000, 30000, 8, 2, [bytes(90000)] * 4, idat_limit=64))
    _write(d / "bad_header.tif", tiff_with_huge_samples_per_pixel())
    os.mkfifo(d / "pipe.png")

    # valid, odd modes
    g16 = ((np.arange(48 * 64).reshape(48, 64) * 997) % 65536).astype(np.uint16)
    Image.fromarray(g16).save(d / "gray16.png")
    exp["gray16.png"] = np.repeat((g16 / 257.0).round()[..., None], 3, axis=2)
    rgb16 = np.clip(base.astype(np.int64) * 257 + rng.integers(-128, 129, base.shape), 0, 65535).astype(np.uint16)
    _write(d / "rgb16.png", png_bytes(64, 48, 16, 2, [row.astype(">u2").tobytes() for row in rgb16]))
    exp["rgb16.png"] = rgb16 / 257.0
    gray = Image.fromarray(base).convert("L")
    gray.save(d / "gray.png")
    exp["gray.png"] = np.repeat(np.asarray(gray)[..., None], 3, axis=2)
    alpha = rng.integers(0, 256, base.shape[:2], dtype=np.uint8)
    Image.fromarray(np.dstack([base, alpha]), "RGBA").save(d / "rgba.png")
    exp["rgba.png"] = base  # alpha is dropped, as in the official pipeline
    pal_img = Image.fromarray(base).quantize(16)
    palette = np.asarray(pal_img.getpalette(), np.uint8).reshape(-1, 3)
    pal_img.save(d / "palette.png")
    pal_img.save(d / "palette_trns.png", transparency=0)
    assert Image.open(d / "palette_trns.png").info.get("transparency") == 0
    exp["palette.png"] = exp["palette_trns.png"] = palette[np.asarray(pal_img)]
    Image.fromarray(base).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    exp["cmyk.jpg"] = base
    Image.fromarray(base).save(d / "exif6.jpg", quality=95, exif=exif_bytes(6))
    Image.fromarray(base).save(d / "exif8.jpg", quality=95, exif=exif_bytes(8))
    Image.fromarray(base).save(d / "bad_exif.jpg", quality=95, exif=exif_bytes(6, corrupt=True))
    Image.fromarray(base).save(d / ":cat:.png")
    Image.fromarray(base[::-1]).save(d / "[red]z.png")
    # Different photos, so that mixing the two up would show in the scores.
    _write(os.fsencode(d) + b"/caf\xe9.png", encode(Image.fromarray(a), "PNG"))
    _write(d / "caf\\xe9.png", encode(Image.fromarray(b), "PNG"))
    return exp


def _make_world_readable(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for n in filenames:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                os.chmod(p, 0o644)


@pytest.fixture(scope="module")
def fx(tiny_bundle, photo_paths):
    root = Path(tempfile.mkdtemp(prefix="fgresq-bad-"))
    try:
        inputs = root / "inputs"
        inputs.mkdir()
        expected = _make_inputs(inputs, photo_paths)
        (root / "empty").mkdir()
        (root / "empty" / "notes.txt").write_text("no images here\n")
        (root / "empty" / "sub").mkdir()
        loop = root / "loop"
        (loop / "sub").mkdir(parents=True)
        shutil.copy(photo_paths[0], loop / "a.png")
        shutil.copy(photo_paths[1], loop / "sub" / "b.jpg")
        os.symlink("..", loop / "sub" / "up")
        shutil.copytree(tiny_bundle, root / "bundle")
        _make_world_readable(root)
        yield Fixture(root, inputs, root / "bundle", expected)
    finally:
        for dirpath, dirnames, _ in os.walk(root):
            for n in dirnames:
                p = os.path.join(dirpath, n)
                if not os.path.islink(p):
                    os.chmod(p, 0o755)
        shutil.rmtree(root)


@pytest.fixture(scope="module")
def scorer(tiny_bundle):
    return Scorer(tiny_bundle, batch_size=8, decode_workers=4)


def _arg(c: Case) -> str | bytes:
    return c.name


def path_of(fx: Fixture, c: Case) -> Path:
    """A library-level path (bytes input means encoded image data, so non-UTF-8 names go surrogate-escaped)."""
    return Path(os.fsdecode(os.fsencode(fx.inputs / "x")[:-1] + os.fsencode(c.name)))


def assert_error_lines(run: Run, expected: dict[str, str], prefix: str = "") -> None:
    """Exactly one `error: PATH: reason` line per failed input, each naming its file."""
    assert len(run.lines) == len(expected), run.err
    for err_name, reason in expected.items():
        head = f"error: {prefix}{err_name}: "
        hits = [ln for ln in run.lines if ln.startswith(head)]
        assert len(hits) == 1, (head, run.err)
        assert re.search(reason, hits[0][len(head):]), hits[0]


# -- the CLI, file by file ------------------------------------------------------------------------------
def test_cli_score_each_bad_input_alongside_good_ones(fx):
    """Every bad input in one run (one process per case would cost a model load each)."""
    run = run_cli("score", "good_a.png", *[_arg(c) for c in BAD], "good_b.jpg", "--model", fx.bundle, "-f", "json",
                  cwd=fx.inputs, watch=fx.root)
    assert run.rc == 1
    payload = run.json()
    assert [r["path"] for r in payload["results"]] == ["good_a.png", "good_b.jpg"]
    assert all(0.0 < r["score"] < 1.0 for r in payload["results"])
    assert [e["path"] for e in payload["errors"]] == [c.json_name for c in BAD]
    for c, e in zip(BAD, payload["errors"]):
        assert set(e) == {"path", "error"}
        assert re.search(c.reason, e["error"]), (c.json_name, e["error"])
    assert_error_lines(run, {c.err_name: c.reason for c in BAD})


def test_cli_score_one_bad_input_exits_1_and_all_good_exits_0(fx):
    run = run_cli("score", "truncated.png", "good_a.png", "--model", fx.bundle, "-f", "json", cwd=fx.inputs,
                  watch=fx.root)
    assert run.rc == 1
    assert [r["path"] for r in run.json()["results"]] == ["good_a.png"]
    assert_error_lines(run, {"truncated.png": r"^truncated or corrupted image data"})


def test_cli_score_unusual_but_valid_images(fx):
    run = run_cli("score", *[_arg(c) for c in GOOD], "--model", fx.bundle, "-f", "json", cwd=fx.inputs, watch=fx.root)
    assert run.rc == 0, run.err
    assert run.err == ""  # not even a library warning (a corrupt EXIF block makes PIL warn)
    payload = run.json()
    assert payload["errors"] == []
    assert [r["path"] for r in payload["results"]] == [c.json_name for c in GOOD]
    assert all(0.0 < r["score"] < 1.0 for r in payload["results"])


# -- the CLI, the whole folder at once -------------------------------------------------------------------
def _display(c: Case) -> str:
    return "inputs/" + c.json_name


def test_cli_rank_folder_of_good_and_bad_inputs(fx, scorer):
    run = run_cli("rank", "inputs", "--recursive", "--model", fx.bundle, "-f", "json", cwd=fx.root, watch=fx.root)
    assert run.rc == 1
    payload = run.json()
    assert set(payload) == {"groups", "errors"}
    [group] = payload["groups"]
    ranked = Counter(e["path"] for e in group["ranking"])
    expected_ok = Counter([_display(c) for c in GOOD] + ["inputs/good_a.png", "inputs/good_b.jpg"])
    assert ranked == expected_ok
    assert [e["rank"] for e in group["ranking"]] == list(range(1, len(GOOD) + 3))
    errors = {e["path"]: e["error"] for e in payload["errors"]}
    assert set(errors) == {_display(c) for c in BAD}
    for c in BAD:
        assert re.search(c.reason, errors[_display(c)]), (c.json_name, errors[_display(c)])
    assert_error_lines(run, {c.err_name: c.reason for c in BAD}, prefix="inputs/")
    # The two files that print alike ("caf\xe9" as bytes and as a literal backslash) are two images, each
    # with its own score: results must be matched to files by position, not by printed name.
    twins = sorted(e["score"] for e in group["ranking"] if e["path"] == "inputs/caf\\xe9.png")
    want = sorted(float(s) for s in scorer.score([path_of(fx, c) for c in GOOD if c.json_name == "caf\\xe9.png"]))
    assert abs(want[0] - want[1]) > 1e-4
    assert twins == pytest.approx(want, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("fmt", ["csv", "table"])
def test_cli_rank_folder_other_formats(fx, fmt):
    run = run_cli("rank", "inputs", "-r", "--model", fx.bundle, "-f", fmt, cwd=fx.root, watch=fx.root)
    assert run.rc == 1
    assert_error_lines(run, {c.err_name: c.reason for c in BAD}, prefix="inputs/")
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(run.out)))
        assert Counter(r["path"] for r in rows) == Counter([_display(c) for c in GOOD] +
                                                           ["inputs/good_a.png", "inputs/good_b.jpg"])
    else:
        for c in GOOD:  # printed literally: no emoji for ":cat:", no markup for "[red]"
            assert _display(c) in run.out, c.json_name
        assert "🐱" not in run.out


@pytest.mark.parametrize("fmt", ["csv", "table"])  # json: test_cli_score_unusual_but_valid_images
def test_cli_non_utf8_and_markup_names_in_score_output(fx, fmt):
    names = [b"caf\xe9.png", "caf\\xe9.png", ":cat:.png", "[red]z.png"]
    shown = ["caf\\xe9.png", "caf\\xe9.png", ":cat:.png", "[red]z.png"]
    run = run_cli("score", *names, "--model", fx.bundle, "-f", fmt, cwd=fx.inputs, watch=fx.root)
    assert run.rc == 0, run.err
    assert run.err == ""
    if fmt == "csv":
        assert [r["path"] for r in csv.DictReader(io.StringIO(run.out))] == shown
    else:
        for s in shown:
            assert s in run.out
        assert "🐱" not in run.out


def test_cli_markup_like_folder_name_in_table(fx, tmp_path):
    """A path whose text reads as a rich closing tag ("x[/]y.png") once crashed the table output."""
    (tmp_path / "x[").mkdir()
    shutil.copy(fx.inputs / "good_a.png", tmp_path / "x[" / "]y.png")
    before = snapshot(tmp_path)
    run = run_cli("score", "x[/]y.png", "--model", fx.bundle, cwd=tmp_path)
    assert run.rc == 0, run.err
    assert "x[/]y.png" in run.out
    run = run_cli("rank", "x[", "--model", fx.bundle, cwd=tmp_path)
    assert run.rc == 0, run.err
    assert "x[/]y.png" in run.out and "x[ (1 image)" in run.out
    assert snapshot(tmp_path) == before


def test_cli_rank_folder_without_images(fx):
    run = run_cli("rank", "empty", "--recursive", "--model", fx.bundle, "-f", "json", cwd=fx.root, watch=fx.root)
    assert run.rc == 1
    assert run.json() == {"groups": [], "errors": [{"path": "empty", "error": "no images found"}]}
    assert run.lines == ["error: empty: no images found"]
    run = run_cli("rank", "empty", "--model", fx.bundle, cwd=fx.root, watch=fx.root)
    assert run.rc == 1
    assert run.lines == ["error: empty: no images found (try --recursive)"]


def test_cli_rank_symlink_loop(fx):
    run = run_cli("rank", "loop", "--recursive", "--model", fx.bundle, "-f", "json", cwd=fx.root, watch=fx.root)
    assert run.rc == 1
    payload = run.json()
    [group] = payload["groups"]
    assert sorted(e["path"] for e in group["ranking"]) == ["loop/a.png", "loop/sub/b.jpg"]
    assert payload["errors"] == [{"path": "loop/sub/up", "error": "symlink loop, skipped"}]
    assert run.lines == ["error: loop/sub/up: symlink loop, skipped"]
    run = run_cli("rank", "loop", "--group-by", "parent", "--model", fx.bundle, "-f", "json", cwd=fx.root)
    assert {g["name"]: [e["path"] for e in g["ranking"]] for g in run.json()["groups"]} == \
        {".": ["loop/a.png"], "sub": ["loop/sub/b.jpg"]}


# -- permissions -----------------------------------------------------------------------------------------
def _as_nobody():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _without_dac_override():
    """Root minus CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: file modes apply to it like to anyone."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _denying_preexec(probe: Path):
    """A preexec_fn under which `probe` (mode 000) really is unreadable, or None when no change is needed.

    As root, chmod 000 denies nothing: run as nobody, or, where nobody cannot even reach the interpreter
    (a venv whose Python lives under /root), as root without the capabilities that bypass file modes.
    """
    if os.geteuid() != 0:
        return None
    code = f"import fgresq_sdk\ntry:\n open({str(probe)!r}, 'rb')\nexcept PermissionError:\n raise SystemExit(7)"
    for fn in (_as_nobody, _without_dac_override):
        try:
            p = subprocess.run([sys.executable, "-c", code], preexec_fn=fn, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            continue
        if p.returncode == 7:
            return fn
    pytest.skip("cannot take file access away from root here (no setuid to nobody, no capability drop)")


def test_cli_unreadable_file_and_folder(fx, tmp_path):
    d = fx.root / "perm"
    (d / "locked_dir").mkdir(parents=True)
    shutil.copy(fx.inputs / "good_a.png", d / "good.png")
    shutil.copy(fx.inputs / "good_a.png", d / "locked.png")
    shutil.copy(fx.inputs / "good_a.png", d / "locked_dir" / "x.png")
    _make_world_readable(d)
    os.chmod(d / "locked.png", 0)
    os.chmod(d / "locked_dir", 0)
    try:
        preexec = _denying_preexec(d / "locked.png")
        run = run_cli("score", "perm/good.png", "perm/locked.png", "--model", fx.bundle, "-f", "json",
                      cwd=fx.root, watch=fx.root, preexec_fn=preexec)
        assert run.rc == 1, run.err
        assert [r["path"] for r in run.json()["results"]] == ["perm/good.png"]
        assert run.json()["errors"] == [{"path": "perm/locked.png", "error": "permission denied"}]
        assert run.lines == ["error: perm/locked.png: permission denied"]

        run = run_cli("rank", "perm", "-r", "--model", fx.bundle, "-f", "json", cwd=fx.root, watch=fx.root,
                      preexec_fn=preexec)
        assert run.rc == 1
        assert [e["path"] for e in run.json()["groups"][0]["ranking"]] == ["perm/good.png"]
        errors = {e["path"]: e["error"] for e in run.json()["errors"]}
        assert errors == {"perm/locked.png": "permission denied",
                          "perm/locked_dir": "cannot list directory (Permission denied)"}
        assert_error_lines(run, {"locked.png": "^permission denied$", "locked_dir": r"^cannot list directory"},
                           prefix="perm/")
    finally:
        os.chmod(d / "locked_dir", 0o755)
        os.chmod(d / "locked.png", 0o644)


# -- the library -----------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Tag data larger than file")  # bad_exif.jpg; the CLI silences it
def test_library_iter_encode_reports_each_bad_input_and_keeps_order(fx, scorer):
    # Not the FIFO: should opening one ever block again, an in-process test would hang instead of failing
    # (the CLI tests cover it, under a subprocess timeout).
    cases = [c for c in BAD + GOOD if c.name != "pipe.png"]
    paths = [path_of(fx, c) for c in cases]
    out = list(scorer.iter_encode(paths))
    assert [e.index for e in out] == list(range(len(cases)))
    for c, e in zip(cases, out):
        if c.bad:
            assert e.error is not None and re.search(c.reason, e.error), (c.json_name, e.error)
            assert e.features is None
        else:
            assert e.error is None, (c.json_name, e.error)
            assert 0.0 < e.score < 1.0
    with pytest.raises(InputError, match="empty file") as info:
        scorer.score([fx.inputs / "good_a.png", fx.inputs / "empty.jpg"])
    assert info.value.path.endswith("empty.jpg")


@pytest.mark.parametrize("name", ["gray16.png", "rgb16.png", "gray.png", "rgba.png", "palette.png",
                                  "palette_trns.png"])
def test_library_decodes_modes_exactly(fx, name):
    img = load_image(fx.inputs / name)
    assert img.mode == "RGB"
    got = np.asarray(img).astype(np.float64)
    want = fx.expected[name]
    assert got.shape == want.shape == (48, 64, 3)
    # 16-bit data is scaled (≈ v/257), not clipped: a clip would give 255 almost everywhere.
    assert np.abs(got - want).max() <= 1.0, np.abs(got - want).max()
    assert got.std() > 20


def test_library_16bit_grayscale_is_scaled_not_clipped(fx):
    got = np.asarray(load_image(fx.inputs / "gray16.png"))[..., 0]
    src = np.asarray(Image.open(fx.inputs / "gray16.png")).astype(np.int64)
    assert src.max() > 60000 and (src > 255).mean() > 0.9
    np.testing.assert_array_equal(got, np.rint(src / 257.0).astype(np.uint8))
    assert (got == 255).mean() < 0.05


def test_library_cmyk_jpeg_colours(fx):
    got = np.asarray(load_image(fx.inputs / "cmyk.jpg")).astype(np.float64)
    assert got.shape == (48, 64, 3)
    assert np.abs(got - fx.expected["cmyk.jpg"]).mean() < 6  # an inverted CMYK would be ~100 off


@pytest.mark.filterwarnings("ignore:Tag data larger than file")  # bad_exif.jpg; the CLI silences it
@pytest.mark.parametrize("name,k", [("exif6.jpg", -1), ("exif8.jpg", 1), ("bad_exif.jpg", -1)])
def test_library_exif_orientation(fx, name, k):
    raw = np.asarray(Image.open(fx.inputs / name).convert("RGB"))  # as stored, not rotated
    assert raw.shape == (48, 64, 3)
    got = np.asarray(load_image(fx.inputs / name))
    assert got.shape == (64, 48, 3)
    np.testing.assert_array_equal(got, np.rot90(raw, k))
    assert not np.array_equal(got, np.rot90(raw, -k))


def test_library_bomb_refused_before_decoding(fx, monkeypatch):
    for name in ("bomb.png", "bomb_header.png"):
        with pytest.raises(InputError, match="decompression bomb"):
            load_image(fx.inputs / name)
    # With PIL's own check switched off by the application, the SDK's limit still holds.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(InputError, match=r"30000×30000 pixels .*decompression bomb"):
        load_image(fx.inputs / "bomb_header.png")


def test_library_unconvertible_mode_is_an_input_error():
    img = Image.new("LA", (4, 4)).convert("La")  # PIL has no La → RGB conversion
    with pytest.raises(InputError, match="cannot convert image mode La"):
        load_image(img, name="la.png")


def test_library_pixel_limit_is_the_sdks_not_pils_warning(monkeypatch):
    """Between PIL's warning threshold and MAX_PIXELS an image is decoded, silently; above, refused."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(pre, "MAX_PIXELS", 2000)
    ok = encode(Image.new("RGB", (40, 40), (10, 20, 30)), "PNG")  # 1600 px: PIL would warn
    big = encode(Image.new("RGB", (50, 50)), "PNG")  # 2500 px
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        img = load_image(ok)
    assert img.size == (40, 40) and img.getpixel((0, 0)) == (10, 20, 30)
    assert [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)] == []
    with pytest.raises(InputError, match="decompression bomb"):
        load_image(big)


def test_library_decoding_threads_leave_warning_filters_alone(fx, scorer):
    """catch_warnings() is process-global: parallel decoders used to leave an 'error' filter behind."""
    before = list(warnings.filters)
    paths = [fx.inputs / n for n in ("good_a.png", "good_b.jpg", "gray.png", "cmyk.jpg")] * 8
    for _ in range(3):
        assert all(e.error is None for e in scorer.iter_encode(paths))
        assert warnings.filters == before


def test_library_collect_images_loop_and_alias(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "b.png")
    os.symlink("..", tmp_path / "sub" / "up")
    os.symlink("sub", tmp_path / "zz_alias")
    files, problems = collect_images(tmp_path, recursive=True)
    assert files == [tmp_path / "a.png", tmp_path / "sub" / "b.png"]
    assert dict(problems) == {str(tmp_path / "sub" / "up"): "symlink loop, skipped",
                              str(tmp_path / "zz_alias"): "same folder as one already visited, skipped"}
    files, problems = collect_images(tmp_path, recursive=False)
    assert files == [tmp_path / "a.png"] and problems == []
