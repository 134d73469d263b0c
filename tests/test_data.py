"""Training data: manifest format, offline photo sources, synthetic FGRestore-style generator, split."""
from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fgresq_sdk.train import photos as ph
from fgresq_sdk.train import synthetic as syn
from fgresq_sdk.train.manifest import (
    LABELS, SAVED_FILES, TASKS, ImageRecord, Manifest, PairRecord, implementation_key, split_manifest,
)

SIZE = 64
NAMES = ("skimage-astronaut", "skimage-coffee", "skimage-camera")


# the names of the version-4 (sharpening-residue) generators
RESIDUE = frozenset(k for kinds in syn.IMPLEMENTATIONS_V4.values() for k in kinds)


def _astronaut(size: int, max_side: int) -> np.ndarray:
    """scikit-image's astronaut, loaded at `max_side` and cropped to size x size, as the generators' float input."""
    srcs = [s for s in ph.skimage_sources() if s[0] == "skimage-astronaut"]
    return syn.working_crop(ph.load_photos(srcs, max_side=max_side)[0][1], size).astype(np.float32)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def clean_photos():
    srcs = [s for s in ph.skimage_sources() if s[0] in NAMES]
    assert len(srcs) == 3
    return ph.load_photos(srcs, max_side=4 * SIZE)


@pytest.fixture(scope="module")
def runs(clean_photos, tmp_path_factory):
    base = tmp_path_factory.mktemp("synthetic")
    out = {}
    for key, seed in (("a", 0), ("b", 0), ("c", 1)):
        syn.generate(clean_photos, base / key, seed=seed, size=SIZE)
        out[key] = base / key
    return out


@pytest.fixture(scope="module")
def man(runs) -> Manifest:
    return Manifest.load(runs["a"])


def _img(m: Manifest, iid: str) -> np.ndarray:
    return np.asarray(Image.open(m.image_path(iid)))


# ---------------------------------------------------------------------------- generator

def test_same_seed_is_byte_identical(runs):
    a, b = _files(runs["a"]), _files(runs["b"])
    assert a.keys() == b.keys()
    assert any(k.endswith(".png") for k in a)
    for k in a:
        assert a[k] == b[k], k


def test_different_seed_differs(runs):
    a, c = _files(runs["a"]), _files(runs["c"])
    assert a["images.csv"] != c["images.csv"]
    pngs = [k for k in a if k.startswith("images/")]
    assert sum(a[k] != c.get(k) for k in pngs) > len(pngs) // 2
    # the clean references do not depend on the seed
    assert all(a[k] == c[k] for k in a if k.startswith("references/"))


def test_layout_and_counts(man):
    levels = len(man.recipe["strengths"])
    assert len(man.images) == 3 * len(TASKS) * levels
    assert {r.task for r in man.images.values()} == set(TASKS)
    for iid, r in man.images.items():
        assert man.image_path(iid).is_file()
        ref = man.reference_path(iid)
        assert ref is not None and ref.is_file()
        assert _img(man, iid).shape == (SIZE, SIZE, 3)
        assert r.strength is not None and 0 < r.strength < 1
        lo, hi = man.scenes[r.scene]["mos_range"]
        assert lo <= r.mos <= hi
        assert man.scenes[r.scene]["higher_is_better"] is True
    # several MOS scales are in use, so a scene-aware loss matters
    assert len({tuple(sc["mos_range"]) for sc in man.scenes.values()}) >= 3
    assert set(man.pairs[0].__dict__) == {"a", "b", "label"}


def test_mos_falls_with_strength_per_content_and_task(man):
    groups = defaultdict(list)
    for r in man.images.values():
        groups[(r.content_id, r.task)].append(r)
    for recs in groups.values():
        assert len({r.scene for r in recs}) == 1
        recs.sort(key=lambda r: r.strength)
        mos = [r.mos for r in recs]
        assert all(b < a for a, b in zip(mos, mos[1:])), mos


def test_pairs_join_same_content_and_task(man):
    assert man.pairs
    for p in man.pairs:
        a, b = man.images[p.a], man.images[p.b]
        assert a.content_id == b.content_id and a.task == b.task and a.scene == b.scene
        assert p.label in LABELS


def test_no_coarse_pairs(man):
    assert man.recipe["counts"]["coarse_dropped"] > 0  # the filter did something
    for p in man.pairs:
        a, b = man.images[p.a], man.images[p.b]
        assert abs(a.mos - b.mos) <= man.scenes[a.scene]["coarse_threshold"]


def test_labels_follow_strength_and_jnd_threshold(man):
    thr = man.recipe["jnd"]["ssim_threshold"]
    assert 0.5 < thr < 1.0
    labels = defaultdict(int)
    for p in man.pairs:
        a, b = man.images[p.a], man.images[p.b]
        s = syn.ssim(_img(man, p.a), _img(man, p.b))
        labels[p.label] += 1
        # labels come from the generator's fast SSIM, s from skimage's: equal up to rounding (see below)
        if p.label == "similar":
            assert s >= thr - 1e-12
        else:
            assert s < thr + 1e-12
            better, worse = (a, b) if p.label == "first" else (b, a)
            assert better.strength < worse.strength
            assert better.mos > worse.mos
    assert labels["similar"] > 0 and labels["first"] > 0 and labels["second"] > 0
    assert man.recipe["counts"]["similar"] == labels["similar"]


def test_fast_ssim_matches_skimage(man):
    ids = list(man.images)[:8]
    for x, y in zip(ids, ids[1:]):
        a, b = _img(man, x), _img(man, y)
        # the same operations as skimage in the same order, but another code path: equal up to rounding
        assert syn._SSIMStats(a).ssim(syn._SSIMStats(b)) == pytest.approx(syn.ssim(a, b), rel=1e-12, abs=1e-12)


def test_jnd_threshold_from_jnd_noise(clean_photos):
    crops = [syn.working_crop(img, SIZE) for _, img in clean_photos]
    j = syn.jnd_map(crops[0])
    assert j.shape == (SIZE, SIZE) and float(j.min()) >= 2.0
    dark, mid = np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 127, np.uint8)
    assert syn.jnd_map(dark).mean() > syn.jnd_map(mid).mean()  # luminance adaptation
    t1, vals = syn.jnd_ssim_threshold(crops, seed=0, scale=1.0)
    t_small, _ = syn.jnd_ssim_threshold(crops, seed=0, scale=0.3)
    assert t1 == pytest.approx(float(np.median(vals))) and len(vals) == 3
    assert t1 < t_small < 1.0
    assert syn.jnd_ssim_threshold(crops, seed=0, scale=0.3)[0] == t_small


def test_identical_photos_are_dropped(clean_photos, tmp_path):
    img = clean_photos[0][1]
    with pytest.warns(UserWarning, match="identical"):
        m = syn.generate([("x", img), ("y", img)], tmp_path, size=32, levels=3, tasks=("denoising",))
    assert {r.content_id for r in m.images.values()} == {"x"}
    assert m.recipe["skipped_duplicate_photos"] == ["y"]


def test_cli(tmp_path):
    out = tmp_path / "cli"
    rc = syn.main(["--out", str(out), "--seed", "3", "--size", "32", "--levels", "3", "--max-photos", "2",
                   "--tasks", "deblurring,deraining"])
    assert rc == 0
    m = Manifest.load(out)
    assert len(m.images) == 2 * 2 * 3
    assert m.recipe["seed"] == 3 and m.recipe["photo_source"] == "skimage"
    args = ["--seed", "3", "--size", "32", "--levels", "3", "--max-photos", "1", "--tasks", "deblurring"]
    assert syn.main(["--out", str(out)] + args) == 0  # a previous output may be written over


def test_worker_processes_make_the_same_files(clean_photos, tmp_path):
    """Contents made in two spawned processes: every file (images, references, manifest, CSVs) byte for byte
    the sequential run's, with the v4 generators (both families and the residue) and hard negatives."""
    kw = dict(seed=5, size=SIZE, levels=4, version=4, junk=True, residue_share=0.5)
    one = syn.generate(clean_photos[:3], tmp_path / "one", **kw)
    two = syn.generate(clean_photos[:3], tmp_path / "two", workers=2, **kw)
    a, b = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(a) > 3 * 6 * 5 and a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    assert len(one.pairs) == len(two.pairs) and one.recipe["counts"] == two.recipe["counts"]


def test_cli_never_writes_into_a_folder_of_other_files(tmp_path, capsys):
    """--out pointing at a folder of the user's own files (here: the photos given as --photos) is one error
    line, exit 2, before any work, and nothing in it changes."""
    photos = tmp_path / "my-photos"
    photos.mkdir()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(photos / "holiday.png")
    (photos / "pairs.csv").write_text("mine\n")
    before = _files(photos)
    assert syn.main(["--out", str(photos), "--photos", str(photos), "--size", "32", "--levels", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "holiday.png" in err and "\n" not in err
    assert _files(photos) == before
    (tmp_path / "file").write_text("x")
    assert syn.main(["--out", str(tmp_path / "file"), "--size", "32", "--max-photos", "1"]) == 2
    assert (tmp_path / "file").read_text() == "x"


# ---------------------------------------------------------------------------- manifest

def test_save_load_round_trip(man, tmp_path):
    again = Manifest.load(man.root / "manifest.json")
    assert again.images == man.images and again.pairs == man.pairs
    assert again.scenes == man.scenes and again.recipe == man.recipe
    # saving elsewhere keeps pointing at the images (absolute root)
    path = man.save(tmp_path / "copy")
    meta = json.loads(path.read_text())
    assert meta["format"] == "fgresq-manifest" and meta["version"] == 1
    assert Path(meta["root"]).is_absolute()
    moved = Manifest.load(tmp_path / "copy")
    assert moved.images == man.images and moved.image_path(next(iter(moved.images))).is_file()
    # images inside the folder -> relative root
    assert json.loads((man.root / "manifest.json").read_text())["root"] == "."


def _toy(n_contents: int = 40, seed: int = 0) -> Manifest:
    rng = np.random.default_rng(seed)
    images, pairs = {}, []
    for c in range(n_contents):
        k = int(rng.integers(2, 9))
        for i in range(k):
            iid = f"c{c}/i{i}"
            images[iid] = ImageRecord(iid, f"{iid}.png", "s", "denoising", f"c{c}", float(10 - i))
        for i in range(k - 1):
            pairs.append(PairRecord(f"c{c}/i{i}", f"c{c}/i{i + 1}", "first"))
    images["lonely/0"] = ImageRecord("lonely/0", "l.png", "s", "dehazing", "lonely", 1.0)
    return Manifest(root=Path("/nowhere"), images=images, pairs=pairs,
                    scenes={"s": {"mos_range": [0, 10], "coarse_threshold": 3.0, "higher_is_better": True}})


def test_split_no_leak_80_20_reproducible():
    m = _toy()
    m.validate()
    tr, te = split_manifest(m, 0.8, seed=0)
    ctr = {r.content_id for r in tr.images.values()}
    cte = {r.content_id for r in te.images.values()}
    assert not ctr & cte
    assert len(tr.pairs) + len(te.pairs) == len(m.pairs)
    assert len(tr.images) + len(te.images) == len(m.images)
    assert 0.75 <= len(tr.pairs) / len(m.pairs) <= 0.85
    for side in (tr, te):
        side.validate()
        for p in side.pairs:
            assert p.a in side.images and p.b in side.images
    tr2, te2 = split_manifest(m, 0.8, seed=0)
    assert tr2.pairs == tr.pairs and te2.images == te.images
    tr3, _ = split_manifest(m, 0.8, seed=1)
    assert {r.content_id for r in tr3.images.values()} != ctr
    assert tr.recipe["split"]["side"] == "train" and te.recipe["split"]["side"] == "test"


def test_split_generated_manifest(man):
    tr, te = split_manifest(man, 0.8, seed=0)
    assert tr.pairs and te.pairs  # 3 contents: both sides still get some
    assert not {r.content_id for r in tr.images.values()} & {r.content_id for r in te.images.values()}


def test_subset_keeps_only_used_images(man):
    sub = man.subset([0, 1])
    assert sub.pairs == man.pairs[:2]
    assert set(sub.images) == {man.pairs[0].a, man.pairs[0].b, man.pairs[1].a, man.pairs[1].b}
    sub.validate()


@pytest.mark.parametrize("breakage, match", [
    (lambda m: setattr(next(iter(m.images.values())), "task", "inpainting"), r"images.csv row 1 .*unknown task"),
    (lambda m: setattr(m.pairs[2], "label", "tie"), r"pairs.csv row 3 .*unknown label"),
    (lambda m: setattr(m.pairs[0], "b", "nope"), r"pairs.csv row 1 .*unknown image id 'nope'"),
    (lambda m: setattr(m.pairs[1], "b", "lonely/0"), r"pairs.csv row 2 .*different content"),
    (lambda m: setattr(m.images["c0/i1"], "task", "dehazing"), r"pairs.csv row 1 .*different tasks"),
    (lambda m: setattr(m.images["c0/i1"], "scene", "other"), r"unknown scene"),
])
def test_validate_names_bad_row(breakage, match):
    m = _toy()
    breakage(m)
    with pytest.raises(ValueError, match=match):
        m.validate()


def test_load_rejects_duplicate_ids_and_bad_labels(tmp_path):
    m = _toy(3)
    m.save(tmp_path / "m")
    csv_path = tmp_path / "m" / "images.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(lines + [lines[2]]) + "\n")
    with pytest.raises(ValueError, match=r"images.csv row \d+: duplicate image_id 'c0/i1'"):
        Manifest.load(tmp_path / "m")
    csv_path.write_text("\n".join(lines) + "\n")
    pairs_path = tmp_path / "m" / "pairs.csv"
    pairs_path.write_text(pairs_path.read_text().replace("a_better", "A>B", 1))
    with pytest.raises(ValueError, match=r"pairs.csv row 1 .*unknown label 'A>B'"):
        Manifest.load(tmp_path / "m")
    assert len(Manifest.load(tmp_path / "m", validate=False).pairs) == len(m.pairs)


def test_pairs_csv_keeps_its_label_spelling(tmp_path):
    """In memory a pair label is a runtime verdict (first/second/similar); pairs.csv keeps a_better/b_better."""
    m = _toy(2)
    m.pairs[0].label, m.pairs[1].label = "second", "similar"
    m.save(tmp_path / "m")
    rows = (tmp_path / "m" / "pairs.csv").read_text().splitlines()
    assert rows[0] == "a,b,label"
    assert [r.rsplit(",", 1)[1] for r in rows[1:]] == ["b_better", "similar"] + ["a_better"] * (len(m.pairs) - 2)
    assert [p.label for p in Manifest.load(tmp_path / "m").pairs] == [p.label for p in m.pairs]
    m.pairs[0].label = "b_better"  # the file spelling is not a label in memory
    with pytest.raises(ValueError, match="unknown label 'b_better'"):
        m.validate()


# ---------------------------------------------------------------------------- photos

def test_skimage_sources_and_load_photo():
    names = [n for n, _ in ph.list_photo_sources("skimage")]
    assert len(names) >= 10 and len(set(names)) == len(names)
    assert "skimage-cat" not in names  # same pixels as chelsea
    img = ph.load_photo("skimage-camera", max_side=100)  # a gray photo
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and max(img.shape[:2]) == 100
    with pytest.raises(KeyError):
        ph.load_photo("no-such-photo")


def test_split_photos_deterministic():
    names = [n for n, _ in ph.list_photo_sources("skimage")]
    s = ph.split_photos(names)
    assert s == ph.split_photos(list(reversed(names)))
    assert set(s["train"]) | set(s["held_out"]) == set(names) and not set(s["train"]) & set(s["held_out"])
    assert len(s["held_out"]) == round(0.2 * len(names))
    assert ph.split_photos(["only"]) == {"train": ["only"], "held_out": []}
    assert len(ph.split_photos(["a", "b"])["held_out"]) == 1


def test_folder_source(photo_dir):
    src = ph.photos_from_folder(photo_dir)
    names = [n for n, _ in src]
    assert len(names) == len(set(names)) == len(list(p for p in photo_dir.rglob("*") if p.is_file()))
    assert all(n.startswith("scene_") for n in names)
    arr = src[0][1]()
    assert arr.dtype == np.uint8 and arr.shape[2] == 3
    path_img = ph.load_photo(str(next(p for p in photo_dir.rglob("*.jpg"))), max_side=64)
    assert max(path_img.shape[:2]) <= 64


def _fake_gnome_backgrounds(folder: Path) -> dict[str, np.ndarray]:
    """A gnome-backgrounds-like folder built from real photos: light/dark variants of one design, a
    design with only a dark variant, a light variant too small to use beside a big dark one, day/night
    variants, an RGBA PNG, an SVG, a tiny placeholder, an unreadable file. Returns the pixels of the
    files that must be picked, by file name."""
    from conftest import photo

    folder.mkdir()
    big = {name: np.asarray(Image.fromarray(photo(name)).resize((640, 512))) for name in ("astronaut", "coffee", "rocket", "chelsea")}
    picked = {}

    def save(name: str, arr: np.ndarray, pick: bool = False) -> None:
        Image.fromarray(arr).save(folder / name, quality=95)
        if pick:
            picked[name] = arr

    save("adwaita-l.png", big["astronaut"], pick=True)  # light preferred over dark
    save("adwaita-d.png", big["astronaut"][:, ::-1].copy())
    save("blobs-d.jpg", big["coffee"], pick=True)  # only a dark variant: that one
    save("drool-l.png", big["rocket"][:300, :300].copy())  # light variant < 512 px: skipped…
    save("drool-d.png", big["rocket"], pick=True)  # …so the dark one stands for the design
    save("pixels-night.png", big["chelsea"][::-1].copy())
    save("pixels-day.png", big["chelsea"], pick=True)  # day/night: one design, first by name
    rgba = np.dstack([big["coffee"][::-1], np.full((512, 640), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "glass.png")
    picked["glass.png"] = rgba[..., :3]
    (folder / "vector.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg' width='2048' height='2048'/>")
    save("tiny.png", big["astronaut"][:64, :64].copy())  # placeholder < 512 px
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return picked


def test_gnome_source(tmp_path):
    """The gnome-backgrounds source on a folder laid out like /usr/share/backgrounds/gnome (whether or
    not that package is installed here): which files count, their names, their pixels."""
    folder = tmp_path / "gnome"
    picked = _fake_gnome_backgrounds(folder)
    files = ph.gnome_files(folder)
    assert [p.name for p in files] == ["adwaita-l.png", "blobs-d.jpg", "drool-d.png", "glass.png", "pixels-day.png"]
    assert set(picked) == {p.name for p in files}
    src = ph.gnome_sources(folder)
    assert [n for n, _ in src] == ["gnome-adwaita", "gnome-blobs", "gnome-drool", "gnome-glass", "gnome-pixels"]
    for (name, loader), path in zip(src, files):
        arr = loader()
        assert arr.dtype == np.uint8 and arr.shape == (512, 640, 3), (name, arr.shape)
        want = picked[path.name].astype(np.int16)
        tol = 4 if path.suffix == ".jpg" else 0  # q=95 JPEG vs lossless PNG
        assert np.abs(arr.astype(np.int16) - want).mean() <= tol, name
    small = ph.load_photos(src, max_side=128)
    assert [n for n, _ in small] == [n for n, _ in src]
    assert all(a.shape == (102, 128, 3) for _, a in small)  # 640×512 fitted into 128: 128×102
    assert ph.gnome_files(tmp_path / "absent") == [] and ph.gnome_sources(tmp_path / "absent") == []


def test_gnome_source_installed():
    """The real package, where installed (Debian 43.x ships abstract wallpapers)."""
    if not ph.GNOME_DIR.is_dir():
        pytest.skip(f"gnome-backgrounds is not installed ({ph.GNOME_DIR} absent); test_gnome_source covers the code")
    files = ph.gnome_files()
    names = [n for n, _ in ph.gnome_sources()]
    assert files and len(files) == len(names) == len(set(names))
    assert all(n.startswith("gnome-") for n in names)
    assert {n for n, _ in ph.list_photo_sources("gnome")} == set(names)


# ---------------------------------------------------------------------------- v2: many implementations, junk
def test_v2_degradations_every_implementation_runs_and_grows_with_strength():
    x = _astronaut(64, max_side=256)
    for task in ("super_resolution", "deblurring", "denoising", "dehazing", "deraining"):
        kinds = set()
        for seed in range(40):
            rng = np.random.default_rng(seed)
            kinds.add(int(np.random.default_rng(seed).integers(4)))
            f = syn._MAKERS_V2[task](rng, 64)
            lo, hi = f(x.copy(), 0.1), f(x.copy(), 0.85)
            assert lo.shape == x.shape and np.isfinite(lo).all() and np.isfinite(hi).all()
            d_lo, d_hi = np.abs(syn._q(lo) - x).mean(), np.abs(syn._q(hi) - x).mean()
            assert d_hi >= d_lo - 0.5, (task, seed, d_lo, d_hi)
        assert len(kinds) >= 3
    for kind in syn.JUNK_KINDS:
        j = syn.junk_image(kind, x, np.random.default_rng(0))
        assert j.shape == x.shape and j.dtype == np.uint8
    for seed in range(4):  # both of its draws: achromatic, and noise, not a flat frame
        g = syn.junk_image("grey_noise", x, np.random.default_rng(seed)).astype(np.int16)
        assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all() and g[..., 0].std() > 30
    # drawn only when a recipe names it: the unweighted draw is every earlier recipe's, byte for byte
    assert "grey_noise" in syn.JUNK_KINDS and "grey_noise" not in syn.UNWEIGHTED_JUNK_KINDS
    # resized noise: a larger noise file as the bundle's resize brings it down, smoother than noise drawn at the
    # working size but noise all the same (no flat frame), grey and colour among the draws
    rough = lambda im: float(np.abs(np.diff(im.astype(np.int16)[..., 0], axis=1)).mean())  # noqa: E731
    greys = set()
    for seed in range(8):
        r = syn.junk_image("resized_noise", x, np.random.default_rng(seed))
        assert r.shape == x.shape and r.dtype == np.uint8 and r.std() > 5
        assert rough(r) < rough(syn.junk_image("noise", x, np.random.default_rng(seed)))
        greys.add(bool((r[..., 0] == r[..., 1]).all()))
    assert greys == {True, False}
    assert "resized_noise" not in syn.UNWEIGHTED_JUNK_KINDS
    # a kind appended with weight 0 leaves a weighted draw of the kinds before it as it was (numpy's choice reads
    # the cumulative probabilities): six-kind recipes keep their bytes
    p6 = np.array([1, 1, 1, 1, 1, 1.0]) / 6
    for seed in range(200):
        assert (np.random.default_rng(seed).choice(6, p=p6)
                == np.random.default_rng(seed).choice(7, p=np.append(p6, 0.0)))


def test_v2_generate_with_junk(clean_photos, tmp_path):
    m = syn.generate(clean_photos[:2], tmp_path / "a", seed=0, size=SIZE, version=2, junk=True)
    syn.generate(clean_photos[:2], tmp_path / "b", seed=0, size=SIZE, version=2, junk=True)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")  # seeded: byte-identical
    assert m.recipe["degradation_version"] == 2 and m.recipe["junk"]["images"] == 2 * len(TASKS)
    for iid, r in m.images.items():
        if iid.endswith("/J"):
            levels = [x for k, x in m.images.items() if k.startswith(iid[:-1]) and not k.endswith("/J")]
            assert r.mos < min(x.mos for x in levels) and r.strength == 1.0
    junk_pairs = [p for p in m.pairs if p.a.endswith("/J") or p.b.endswith("/J")]
    assert len(junk_pairs) == 3 * 2 * len(TASKS)
    for p in junk_pairs:
        assert (p.label == "second") == p.a.endswith("/J") and p.label != "similar"


def test_junk_weights_choose_the_hard_negative_kinds(clean_photos, tmp_path):
    """--junk-weights: only the kinds named are drawn (flat only: every J is one colour), the same levels as
    without weights; bad weights are refused before anything is written."""
    from PIL import Image

    m = syn.generate(clean_photos[:2], tmp_path / "flat", seed=0, size=SIZE, version=2, junk=True,
                     junk_weights={"flat": 1.0})
    plain = syn.generate(clean_photos[:2], tmp_path / "plain", seed=0, size=SIZE, version=2, junk=True)
    assert m.recipe["junk"]["kind_probabilities"]["flat"] == 1.0 and plain.recipe["junk"]["kind_probabilities"] is None
    junk = [iid for iid in m.images if iid.endswith("/J")]
    assert len(junk) == 2 * len(TASKS)
    for iid in junk:
        px = np.asarray(Image.open(m.image_path(iid))).reshape(-1, 3)
        assert (px == px[0]).all(), iid
    kinds_plain = {float(np.asarray(Image.open(plain.image_path(i))).std() == 0) for i in junk}
    assert kinds_plain != {1.0}  # without weights, other kinds too
    for iid in m.images:  # the degradation levels do not depend on the junk draw
        if not iid.endswith("/J"):
            assert (np.asarray(Image.open(m.image_path(iid))) == np.asarray(Image.open(plain.image_path(iid)))).all()
    def achromatic_noise(man, iid):
        px = np.asarray(Image.open(man.image_path(iid))).astype(np.int16)
        rough = np.abs(np.diff(px[..., 0], axis=1)).mean() > 40  # noise: neighbours far apart (photos: < 20)
        return bool((px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all() and rough)

    grey = syn.generate(clean_photos[:2], tmp_path / "grey", seed=0, size=SIZE, version=2, junk=True,
                        junk_weights={"grey_noise": 1.0})
    assert grey.recipe["junk"]["kinds"] == ["grey_noise"]
    assert plain.recipe["junk"]["kinds"] == list(syn.UNWEIGHTED_JUNK_KINDS)
    assert all(achromatic_noise(grey, i) for i in junk) and not any(achromatic_noise(plain, i) for i in junk)
    assert syn.parse_junk_weights("extreme_jpeg=4,banding=2") == {"extreme_jpeg": 4.0, "banding": 2.0}
    assert syn.parse_junk_weights(None) is None
    for bad in ("jpeg=1", "flat", "flat=-1", "flat=0", "flat=x"):
        with pytest.raises(ValueError):
            syn.parse_junk_weights(bad)
    with pytest.raises(SystemExit):
        syn.main(["--out", str(tmp_path / "x"), "--junk-weights", "flat=1"])  # without --junk
    assert not (tmp_path / "x").exists()


def test_generate_records_the_implementation_of_every_content_and_task(clean_photos, tmp_path):
    """The name is the one the maker's flavour rng draws first (its `kind`), and naming changes no pixel."""
    m = syn.generate(clean_photos[:2], tmp_path / "v2", seed=0, size=SIZE, version=2, junk=True)
    impl = m.recipe["implementations"]
    cids = sorted({r.content_id for r in m.images.values()})
    assert set(impl) == {f"{c}/{t}" for c in cids for t in TASKS}
    mixes = {"+".join(c) for c in syn._MIXES}
    for key, name in impl.items():
        cid, task = key.rsplit("/", 1)
        if task == "mixture":
            assert name in mixes
            continue
        rng = np.random.default_rng([0, syn._crc(cid), TASKS.index(task), 1])  # degrader's flavour rng
        assert name == syn.IMPLEMENTATIONS[task][int(rng.integers(len(syn.IMPLEMENTATIONS[task])))], key
    x = syn.working_crop(clean_photos[0][1], SIZE).astype(np.float32)
    for task in syn.IMPLEMENTATIONS:  # the named degradation is the unnamed maker's, pixel for pixel
        for seed in range(6):
            f = syn._MAKERS_V2[task](np.random.default_rng(seed), SIZE)
            del f.implementation
            assert syn.implementation_of(f) is None
            g = syn._MAKERS_V2[task](np.random.default_rng(seed), SIZE)
            assert np.array_equal(f(x.copy(), 0.6), g(x.copy(), 0.6))
    m1 = syn.generate(clean_photos[:1], tmp_path / "v1", seed=0, size=SIZE)
    assert {n for k, n in m1.recipe["implementations"].items() if not k.endswith("/mixture")} == {"v1"}
    assert Manifest.load(tmp_path / "v2").recipe["implementations"] == impl  # survives save/load


def test_photo_split_file_and_debian_catalog(tmp_path):
    from fgresq_sdk.train import debian_photos as dp
    from fgresq_sdk.train import make_split

    root = Path(__file__).parents[1]
    d = json.loads((root / "train" / "data" / "split.json").read_text())
    assert set(d["split"].values()) == {"fit", "val", "test"}
    assert not any("mate" in (p.get("package") or "") for p in d["photos"])
    for side, names in make_split.PINNED.items():  # the previous default's photos keep their sides
        assert all(d["split"][n] == side for n in names)
    assert make_split.assign(list(d["split"])) == d["split"]
    # a fake unpacked package: one design in two resolutions -> one entry, licence from DEP-5
    pkg = tmp_path / "pkgs" / "plasma-workspace-wallpapers"
    img_dir = pkg / "usr/share/wallpapers/Foo/contents/images"
    img_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for w, h in ((1024, 640), (1280, 800)):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(img_dir / f"{w}x{h}.png")
    doc = pkg / "usr/share/doc/plasma-workspace-wallpapers"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Format: x\n\nFiles: *\nCopyright: a\nLicense: GPL-2+\n")
    cat = dp.catalog(tmp_path)
    assert [(e["name"], e["width"], e["licence"]) for e in cat] == [("plasma-Foo", 1280, "GPL-2+")]
    with pytest.raises(ValueError):
        dp.fetch(tmp_path, packages=["mate-backgrounds"])


def test_subset_keeps_chosen_crops_and_a_seeded_share(clean_photos, tmp_path):
    from fgresq_sdk.train.subset import select

    photos = syn.expand_crops(clean_photos[:2], 2, seed=0)
    m = syn.generate(photos, tmp_path / "g", seed=0, size=SIZE, version=2, junk=True)
    s = select(m, crops=(0,), pair_fraction=0.5, seed=0)
    assert s.pairs and all(s.images[p.a].content_id.endswith("_c0") for p in s.pairs)
    n_c0 = sum(m.images[p.a].content_id.endswith("_c0") for p in m.pairs)
    assert 0.2 * n_c0 < len(s.pairs) < 0.8 * n_c0
    assert [(p.a, p.b) for p in select(m, (0,), 0.5, 0).pairs] == [(p.a, p.b) for p in s.pairs]
    assert {p.a for p in s.pairs} | {p.b for p in s.pairs} == set(s.images)
    ranked = select(m, crops=(0, 1), ranked_only=True)
    n_ranked = sum(p.label != "similar" for p in m.pairs)
    assert 0 < len(ranked.pairs) == n_ranked < len(m.pairs)
    assert all(p.label != "similar" for p in ranked.pairs) and ranked.recipe["subset"]["ranked_only"] is True
    few_junk = select(m, crops=(0, 1), pair_fraction=1.0, ranked_only=True, junk_fraction=0.0)
    assert few_junk.recipe["subset"]["hard_negative_pairs"] == 0 < ranked.recipe["subset"]["hard_negative_pairs"]
    assert [(p.a, p.b) for p in few_junk.pairs] == [(p.a, p.b) for p in ranked.pairs
                                                   if not (p.a.endswith("/J") or p.b.endswith("/J"))]


def test_subset_excludes_named_generator_implementations(clean_photos, tmp_path, capsys):
    """--exclude-implementations: the pairs of every (content, task) drawn with a named generator go, every other
    pair keeps its seeded draw (the same pairs as without the option), the subset records what it left out; a name
    the manifest never drew is one error line, nothing written."""
    from fgresq_sdk.train import subset

    m = syn.generate(syn.expand_crops(clean_photos[:2], 2, seed=0), tmp_path / "g", seed=0, size=SIZE, version=4,
                     junk=True, residue_share=0.5)
    impl = m.recipe["implementations"]
    names = sorted(RESIDUE & set(impl.values()))
    assert names  # the residue generators were drawn at this share
    plain = subset.select(m, crops=(0, 1), pair_fraction=0.7, seed=3, ranked_only=True, junk_fraction=0.5)
    cut = subset.select(m, crops=(0, 1), pair_fraction=0.7, seed=3, ranked_only=True, junk_fraction=0.5,
                        exclude_implementations=names)
    key = lambda p: impl[implementation_key(m.images[p.a].content_id, m.images[p.a].task)]
    assert [(p.a, p.b) for p in cut.pairs] == [(p.a, p.b) for p in plain.pairs if key(p) not in names]
    assert len(cut.pairs) < len(plain.pairs) and cut.recipe["subset"]["exclude_implementations"] == names
    assert "exclude_implementations" not in plain.recipe["subset"]
    with pytest.raises(ValueError, match="not drawn"):
        subset.select(m, exclude_implementations=["no-such-generator"])
    assert subset.main(["--src", str(tmp_path / "g"), "--out", str(tmp_path / "s"),
                        "--exclude-implementations", "no-such-generator"]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "s").exists()
    assert subset.main(["--src", str(tmp_path / "g"), "--out", str(tmp_path / "s"), "--crops", "0,1",
                        "--exclude-implementations", ",".join(names)]) == 0
    assert all(key(p) not in names for p in Manifest.load(tmp_path / "s").pairs)


def test_merge_adds_a_tagged_residue_folder_and_leaves_the_base_untouched(clean_photos, tmp_path, capsys):
    """train/merge.py: the base's records stay as they are; the added folder's ids and contents are prefixed with
    its tag (the same crop with other images is another content), its paths made absolute so the merge loads and
    trains from anywhere, and the breakdown still finds every pair's generator; a clashing scene or a bad tag is
    one error line, and a folder holding anything else is refused."""
    from fgresq_sdk.train import merge
    from fgresq_sdk.train.by_implementation import implementation_of_pair
    from fgresq_sdk.train.datasets import PairDataset, TransformSpec

    photos, tasks = syn.expand_crops(clean_photos[:1], 2, seed=0), ("super_resolution", "deblurring")
    syn.generate(photos, tmp_path / "v3", seed=0, size=SIZE, levels=4, version=3, junk=True, tasks=tasks)
    syn.generate(photos, tmp_path / "res", seed=0, size=SIZE, levels=4, version=4, residue_share=1.0, tasks=tasks)
    base, res = Manifest.load(tmp_path / "v3"), Manifest.load(tmp_path / "res")
    assert merge.main(["--out", str(tmp_path / "m"), "--base", str(tmp_path / "v3"),
                       "--add", f"residue={tmp_path / 'res'}"]) == 0
    m = Manifest.load(tmp_path / "m")
    assert len(m.pairs) == len(base.pairs) + len(res.pairs)
    assert [m.images[i] for i in base.images] == list(base.images.values())  # base rows unchanged
    assert m.pairs[:len(base.pairs)] == base.pairs
    shared = {i for i in res.images if i in base.images}
    assert shared  # the same ids name other images in the two folders: the prefix keeps them apart
    for iid, r in res.images.items():
        t = m.images[f"residue:{iid}"]
        assert t.content_id == f"residue:{r.content_id}" and t.mos == r.mos and t.task == r.task
        assert m.image_path(t.image_id).read_bytes() == res.image_path(iid).read_bytes()
        assert m.reference_path(t.image_id) == res.reference_path(iid).resolve()
    impl = m.recipe["implementations"]
    added = [p for p in m.pairs if p.a.startswith("residue:")]
    assert {implementation_of_pair(impl, m, p) for p in added} <= RESIDUE
    assert [implementation_of_pair(impl, m, p) for p in m.pairs[:len(base.pairs)]] == \
        [implementation_of_pair(base.recipe["implementations"], base, p) for p in base.pairs]
    assert m.recipe["merged"][0]["tag"] == "residue" and m.recipe["merged"][0]["pairs"] == len(res.pairs)
    ds = PairDataset(m, TransformSpec(size=32, resize=32), train=False)  # the trainer's dataset reads it
    item = ds[len(base.pairs)]  # the first added pair
    assert item["a"].shape == (3, 32, 32) and item["content"] != ds[0]["content"]
    # a scene that differs from the base's, or a tag that could not be told from an id, is refused
    clash = Manifest.load(tmp_path / "res")
    name = next(iter(clash.scenes))
    clash.scenes[name] = {**clash.scenes[name], "coarse_threshold": 123.0}
    with pytest.raises(ValueError, match="differs from the base"):
        merge.merge(base, [("residue", clash)])
    for bad in (["a:b"], ["", "x"], ["x", "x"]):
        with pytest.raises(ValueError, match="tags must be"):
            merge.merge(base, [(t, res) for t in bad])
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    for args in (["--out", str(tmp_path / "user")], ["--out", str(tmp_path / "m2"), "--add", "noequals"]):
        assert merge.main([*args, "--base", str(tmp_path / "v3"), "--add", f"r={tmp_path / 'res'}"]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert (tmp_path / "user" / "notes.txt").read_text() == "mine" and not (tmp_path / "m2").exists()
    # a folder that is not a manifest: one line naming it
    assert merge.main(["--out", str(tmp_path / "m3"), "--base", str(tmp_path / "v3"),
                       "--add", f"r={tmp_path / 'user'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "user") in err and not (tmp_path / "m3").exists()


def test_v3_degradations_mix_both_families_per_content_and_task():
    """Version 3 draws, per (content, task), exactly the v1 or the v2 degradation of that (content, task)."""
    x = _astronaut(64, max_side=256)
    family = []
    for k in range(24):
        cid = f"photo{k}_c0"
        y3 = syn.degrader("denoising", cid, 0, 64, version=3)(x.copy(), 0.5)
        same = [np.array_equal(y3, syn.degrader("denoising", cid, 0, 64, version=v)(x.copy(), 0.5)) for v in (1, 2)]
        assert any(same), cid
        family.append(same[0])
    assert 0 < sum(family) < len(family)  # both families occur


def _step_edge(size: int) -> np.ndarray:
    """A vertical step from 64 to 192 (room on both sides for overshoot), RGB float."""
    x = np.full((size, size, 3), 64.0, np.float32)
    x[:, size // 2:] = 192.0
    return x


def test_v4_sharpening_residue_overshoots_edges_more_with_strength():
    """Every version-4 generator makes the error blur never makes: values beyond the two sides of a step edge
    (halos, ringing), far more at high strength than at low (not strictly in between: blur that grows with
    strength widens the edge the halo sits on), while a plain blur of the same edge stays inside them."""
    x = _step_edge(256)  # the generators' radii scale with the size: at 256 they are the training data's
    photo = _astronaut(256, max_side=512)
    seen = set()
    for task, kinds in syn.IMPLEMENTATIONS_V4.items():
        for seed in range(16):
            f = syn._make_sharpen_residue(task, np.random.default_rng(seed), 256)
            seen.add(syn.implementation_of(f))
            ys = [syn._q(f(x.copy(), s)).astype(np.float32) for s in (0.1, 0.5, 0.85)]
            over = [float(np.maximum(y - 192.0, 0).max() + np.maximum(64.0 - y, 0).max()) for y in ys]
            assert over[2] >= max(30.0, over[0] + 10.0), (task, seed, over)
            d = [float(np.abs(syn._q(f(photo.copy(), s)) - photo).mean()) for s in syn.strength_levels()]
            assert all(np.diff(d) > 0), (task, seed, d)  # on a photo, every level further from the clean one
    assert seen == RESIDUE
    blurred = syn._q(syn._conv(x, syn.gaussian_kernel(3.0)))
    assert blurred.min() >= 64 and blurred.max() <= 192


def test_wiener_deconvolve_inverts_a_known_blur():
    """With the true kernel and a tiny noise-to-signal ratio the blur is undone (the ringing of version 4 comes
    from the wrong kernel and quantisation, not from the inverse itself); borders do not wrap around."""
    rng = np.random.default_rng(0)
    x = syn._gauss(rng.uniform(0, 255, (64, 64, 3)).astype(np.float32), 1.0)
    k = syn.gaussian_kernel(1.5)
    assert abs(float(k.sum()) - 1.0) < 1e-5 and k.shape[0] % 2 == 1
    y = syn._conv(x, k)
    z = syn.wiener_deconvolve(y, k, 1e-5)
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(z - x)[inner].mean() < 0.2 * np.abs(y - x)[inner].mean()
    assert np.abs(z - x).max() < np.abs(y - x).max()  # the borders too: padded as the blur was


def test_v4_degradations_add_residue_only_to_a_share_of_sr_and_deblurring(clean_photos, tmp_path):
    """Version 4 is version 3 for every (content, task) that does not draw a sharpening-residue generator, draws
    one for about V4_SHARE of super-resolution and deblurring only, and the manifest records which."""
    x = syn.working_crop(clean_photos[0][1], 64).astype(np.float32)
    drawn = defaultdict(int)
    for k in range(60):
        cid = f"photo{k}_c0"
        for task in TASKS:
            f4 = syn.degrader(task, cid, 0, 64, version=4)
            if syn.implementation_of(f4) in RESIDUE:
                assert task in syn.IMPLEMENTATIONS_V4 and syn.implementation_of(f4) in syn.IMPLEMENTATIONS_V4[task]
                drawn[task] += 1
                continue
            f3 = syn.degrader(task, cid, 0, 64, version=3)
            assert syn.implementation_of(f4) == syn.implementation_of(f3)
            assert np.array_equal(f4(x.copy(), 0.6), f3(x.copy(), 0.6)), (task, cid)
    assert set(drawn) == set(syn.IMPLEMENTATIONS_V4)
    assert 0.15 * 60 < min(drawn.values()) and max(drawn.values()) < 0.55 * 60, dict(drawn)
    m = syn.generate(syn.expand_crops(clean_photos[:2], 3, seed=0), tmp_path / "v4", seed=0, size=SIZE, version=4,
                     junk=True)
    assert m.recipe["degradation_version"] == 4
    names = m.recipe["implementations"]
    for key, name in names.items():
        cid, task = key.rsplit("/", 1)
        assert name == syn.implementation_of(syn.degrader(task, cid, 0, SIZE, version=4)), key


def test_residue_share_one_makes_the_held_out_residue_check(clean_photos, tmp_path, capsys):
    """--residue-share 1 (the recipe script's held-out check): every super-resolution and deblurring (content, task)
    draws a sharpening-residue generator and the manifest says so; the share needs --degradations 4 and [0, 1]."""
    m = syn.generate(syn.expand_crops(clean_photos[:2], 2, seed=1), tmp_path / "r", seed=1, size=SIZE, levels=4,
                     tasks=("super_resolution", "deblurring"), version=4, residue_share=1.0)
    assert m.recipe["residue_share"] == 1.0 and len(m.recipe["implementations"]) == 2 * 2 * 2
    assert set(m.recipe["implementations"].values()) <= RESIDUE
    assert any(p.label != "similar" for p in m.pairs)
    assert "residue_share" not in syn.generate(clean_photos[:1], tmp_path / "v3", seed=0, size=SIZE, levels=3,
                                               tasks=("deblurring",), version=3).recipe
    for bad in (["--degradations", "3", "--residue-share", "1"], ["--degradations", "4", "--residue-share", "1.5"]):
        with pytest.raises(SystemExit):
            syn.main(["--out", str(tmp_path / "x"), *bad])
        assert "--residue-share needs" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_subset_cli_writes_only_into_a_new_empty_or_subset_folder(clean_photos, tmp_path, capsys):
    """--out holding anything but a subset manifest (here: the source's own folder) is one error line, exit 2,
    and nothing in it changes; a new folder, and a previous subset, are written."""
    from fgresq_sdk.train import subset

    syn.generate(clean_photos[:1], tmp_path / "g", seed=0, size=SIZE, version=2, junk=True)
    before = _files(tmp_path / "g")
    assert subset.main(["--src", str(tmp_path / "g"), "--out", str(tmp_path / "g"), "--crops", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "refusing" in err and "\n" not in err
    assert _files(tmp_path / "g") == before
    for _ in range(2):  # new, then a previous subset
        assert subset.main(["--src", str(tmp_path / "g"), "--out", str(tmp_path / "s"), "--crops", "0"]) == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(SAVED_FILES)



@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb absent")
def test_debian_fetch_unpacks_into_a_fresh_root_and_never_takes_a_partial_unpack(tmp_path):
    """fetch() on a root without pkgs/ (the script's first run) unpacks a .deb already in debs/ (no download),
    reads its version, and a leftover partial unpack from an interrupted run is redone, not taken as done."""
    import subprocess

    from fgresq_sdk.train import debian_photos as dp

    build = tmp_path / "build"
    (build / "DEBIAN").mkdir(parents=True)
    (build / "DEBIAN" / "control").write_text("Package: sway-backgrounds\nVersion: 9.9-1\nArchitecture: all\n"
                                              "Maintainer: t <t@example.org>\nDescription: test\n")
    img = build / "usr/share/backgrounds/sway"
    img.mkdir(parents=True)
    Image.fromarray(np.zeros((600, 800, 3), np.uint8)).save(img / "Sway_Wallpaper_Blue_1920x1080.png")
    root = tmp_path / "root"
    (root / "debs").mkdir(parents=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(build),
                    str(root / "debs" / "sway-backgrounds_9.9-1_all.deb")], check=True, capture_output=True)
    assert dp.fetch(root, packages=["sway-backgrounds"]) == {"sway-backgrounds": "9.9-1"}
    assert (root / "pkgs/sway-backgrounds/usr/share/backgrounds/sway/Sway_Wallpaper_Blue_1920x1080.png").is_file()
    shutil.rmtree(root / "pkgs")
    (root / "pkgs" / ".sway-backgrounds.partial" / "junk").mkdir(parents=True)
    dp.fetch(root, packages=["sway-backgrounds"])
    assert sorted(p.name for p in (root / "pkgs").iterdir()) == ["sway-backgrounds"]
    assert not (root / "pkgs/sway-backgrounds/junk").exists()


def _rcc(files: dict[str, bytes], compress: set[str]) -> bytes:
    """A Qt resource archive (format 1) written from the format's description: a root with one folder
    holding the files (as rcc lays GCompris' photos out), zlib entries with their 4-byte length prefix."""
    import struct
    import zlib

    names, name_off = b"", {}
    for n in ["res"] + list(files):
        name_off[n] = len(names)
        names += struct.pack(">HI", len(n), 0) + n.encode("utf-16-be")
    data, data_off = b"", {}
    for n, blob in files.items():
        payload = struct.pack(">I", len(blob)) + zlib.compress(blob) if n in compress else blob
        data_off[n] = len(data)
        data += struct.pack(">I", len(payload)) + payload
    tree = struct.pack(">IHII", 0, 2, 1, 1)  # root: a folder with 1 child at index 1
    tree += struct.pack(">IHII", name_off["res"], 2, len(files), 2)  # res/: len(files) children from index 2
    for n in files:
        tree += struct.pack(">IHHHI", name_off[n], 1 if n in compress else 0, 0, 0, data_off[n])
    head = 20
    return (b"qres" + struct.pack(">4I", 1, head, head + len(tree), head + len(tree) + len(data))
            + tree + data + names)


def test_photo_set_2_reads_rcc_members_and_never_displaces_set_1(tmp_path, monkeypatch):
    """Photo set 2: chosen files (a plain JPEG and a member of a Qt .rcc archive, zlib-compressed or stored)
    with the licences listed for them; a set-2 photo that nearly duplicates a set-1 photo is the one dropped;
    set 1 alone is unchanged; the committed list names no reserved package and only free licences."""
    import io

    from fgresq_sdk.train import debian_photos as dp

    rng = np.random.default_rng(1)

    def png(seed_img):
        buf = io.BytesIO()
        Image.fromarray(seed_img).save(buf, format="PNG")
        return buf.getvalue()

    def blocks(h, w):  # coarse random blocks: thumbnails that differ (pixel noise alone thumbnails to grey)
        return np.asarray(Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((w, h)))

    a, b = blocks(520, 600), blocks(530, 610)
    raw = _rcc({"a.png": png(a), "b.png": png(b)}, compress={"a.png"})
    (tmp_path / "x.rcc").write_bytes(raw)
    assert dp.read_rcc(tmp_path / "x.rcc") == {"/res/a.png": png(a), "/res/b.png": png(b)}
    (tmp_path / "y.rcc").write_bytes(b"nope" + raw[4:])
    with pytest.raises(ValueError):
        dp.read_rcc(tmp_path / "y.rcc")

    # set 1: one sway design; set 2: an archive member, a plain file, and a near copy of the sway design
    sway = tmp_path / "pkgs/sway-backgrounds/usr/share/backgrounds/sway"
    sway.mkdir(parents=True)
    c = blocks(600, 800)
    Image.fromarray(c).save(sway / "Sway_Wallpaper_Blue_1920x1080.png")
    g = tmp_path / "pkgs/gcompris-qt-data/usr/share/gcompris-qt/rcc"
    g.mkdir(parents=True)
    (g / "erase.rcc").write_bytes(raw)
    k = tmp_path / "pkgs/kphotoalbum/usr/share/kphotoalbum/demo"
    k.mkdir(parents=True)
    Image.fromarray((c.astype(np.int16) + 3).clip(0, 255).astype(np.uint8)).save(k / "copy.png")  # near copy
    Image.fromarray(b).save(k / "pool.png")
    listed = {"gcompris-qt-data": [{"path": "/usr/share/gcompris-qt/rcc/erase.rcc", "member": "/res/a.png",
                                    "licence": "CC0-1.0"}],
              "kphotoalbum": [{"path": "/usr/share/kphotoalbum/demo/copy.png", "licence": "GPL-2+"},
                              {"path": "/usr/share/kphotoalbum/demo/pool.png", "licence": "GPL-2+"}]}
    monkeypatch.setattr(dp, "set2_files", lambda: listed)
    one = dp.catalog(tmp_path, photo_set=1)
    assert [e["name"] for e in one] == ["sway-Sway_Wallpaper_Blue"]
    two = {e["name"]: e for e in dp.catalog(tmp_path, photo_set=2)}
    assert set(two) == {"sway-Sway_Wallpaper_Blue", "gcompris-a", "kphotoalbum-pool"}  # copy.png dropped
    assert two["gcompris-a"]["licence"] == "CC0-1.0" and two["gcompris-a"]["kind"] == "photo"
    assert two["gcompris-a"]["path"] == "/usr/share/gcompris-qt/rcc/erase.rcc :: /res/a.png"
    assert (tmp_path / "extracted/gcompris-qt-data/res/a.png").read_bytes() == png(a)
    with pytest.raises(ValueError):
        dp.catalog(tmp_path, photo_set=3)
    monkeypatch.undo()

    committed = dp.set2_files()
    assert not set(committed) & set(dp.RESERVED) and not set(committed) & set(dp.PACKAGES)
    lics = [f["licence"] for files in committed.values() for f in files]
    assert len(lics) >= 150 and all(lics) and not any("NC" in lic for lic in lics)
    split2 = json.loads((Path(__file__).parents[1] / "train" / "data" / "split-set2.json").read_text())["split"]
    split1 = json.loads((Path(__file__).parents[1] / "train" / "data" / "split.json").read_text())["split"]
    assert all(split2[n] == side for n, side in split1.items())  # set 1's photos keep their sides


def test_redraw_junk_makes_synthetics_folder_with_other_hard_negatives_without_degrading_again(clean_photos, tmp_path,
                                                                                               capsys):
    """train/redraw_junk.py: the twin of a folder with its hard negatives drawn by other weights holds what
    train/synthetic.py makes with those weights (images byte for byte, records, pairs in order, the junk recipe),
    its other images are the source's files; a folder without hard negatives, or an output folder holding other
    files, is refused in one line."""
    from fgresq_sdk.train import redraw_junk as rj
    from fgresq_sdk.train.manifest import Manifest

    grey = {"noise": 1.0, "grey_noise": 3.0, "flat": 1.0}
    src = syn.generate(clean_photos[:3], tmp_path / "src", seed=4, size=SIZE, version=2, junk=True, workers=1)
    want = syn.generate(clean_photos[:3], tmp_path / "want", seed=4, size=SIZE, version=2, junk=True, junk_weights=grey)
    assert rj.main(["--src", str(tmp_path / "src"), "--out", str(tmp_path / "twin"),
                    "--junk-weights", "noise=1,grey_noise=3,flat=1"]) == 0
    twin = Manifest.load(tmp_path / "twin")
    assert list(twin.images) == list(want.images) and twin.pairs == want.pairs and twin.scenes == want.scenes
    assert twin.recipe["junk"] == want.recipe["junk"] and twin.recipe["redrawn_from"] == str((tmp_path / "src").resolve())
    for iid, rec in want.images.items():
        got = twin.images[iid]
        assert (got.mos, got.scene, got.task, got.content_id, got.strength) == (rec.mos, rec.scene, rec.task,
                                                                               rec.content_id, rec.strength), iid
        assert twin.image_path(iid).read_bytes() == want.image_path(iid).read_bytes(), iid
        assert twin.reference_path(iid).read_bytes() == want.reference_path(iid).read_bytes(), iid
        inside = twin.image_path(iid).resolve().is_relative_to((tmp_path / "twin").resolve())
        assert inside == iid.endswith("/J"), iid  # only the hard negatives are new files
    assert sum(i.endswith("/J") for i in twin.images) == twin.recipe["junk"]["images"] > 0
    assert any(src.image_path(i).read_bytes() != twin.image_path(i).read_bytes() for i in src.images if i.endswith("/J"))
    capsys.readouterr()
    plain = syn.generate(clean_photos[:1], tmp_path / "plain", seed=0, size=SIZE, version=2)
    assert rj.main(["--src", str(tmp_path / "plain"), "--out", str(tmp_path / "t2")]) == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert rj.main(["--src", str(tmp_path / "src"), "--out", str(tmp_path / "mine")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err) and "without --junk" in err[0]
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine" and not (tmp_path / "t2").exists()
