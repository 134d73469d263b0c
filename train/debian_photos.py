"""Clean photos from Debian wallpaper/background packages, fetched with apt and catalogued with licences.

``fetch(root)`` runs ``apt-get download`` for each package of ``PACKAGES`` into ``root/debs`` and unpacks it
with ``dpkg-deb -x`` into ``root/pkgs/<package>`` (no root rights, nothing installed). ``catalog(root)`` lists
one file per design (the largest raster variant; light variant of light/dark pairs; sway's resolutions and
orientations are one design), drops exact and near duplicates (sha256; 16x16 gray thumbnails closer than
``NEAR_DUP``), and records per photo: name, package, version, path inside the package, sha256, size,
``kind`` (``photo``, ``abstract`` render or ``texture``) and the licence from the package's DEP-5 copyright
file. ``python -m fgresq_sdk.train.debian_photos --root data`` does both and writes ``root/photos.json``;
the committed copy is ``train/data/photo_sources.json``.

Photo sets: set 1 is ``PACKAGES`` (the data of the shipped default model). Set 2 adds real photographs chosen
file by file from 17 more packages (``data/photo_set_2.json``: path in the package, for Qt resource archives
the member inside, licence, note) — more and more varied photos for the next recipe; ``--photo-set 2``.
Set-1 photos win near-duplicate ties, so adding a set never removes a photo of an earlier one.

``mate-backgrounds`` is never used here: it is reserved for an independent check (``RESERVED``);
``catalog`` refuses it.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# package -> default kind of its images; per-name overrides in KIND_OVERRIDES
PACKAGES: dict[str, str] = {
    "plasma-workspace-wallpapers": "photo",
    "lomiri-wallpapers-16.04": "photo",
    "lomiri-wallpapers-20.04": "photo",
    "lomiri-wallpapers": "abstract",
    "ukui-wallpapers": "photo",
    "sway-backgrounds": "abstract",
    "gnome-backgrounds": "abstract",
    "mypaint-data-extras": "texture",
}
RESERVED = ("mate-backgrounds",)
# rendered/illustrated designs inside the photographic packages (judged by eye from a contact sheet of thumbnails)
KIND_OVERRIDES = {
    "lomiri16-umang_by_Abhishek_Mudgal": "abstract", "lomiri20-Fossa_by_Jasper_Roks": "abstract",
    "lomiri20-Painting-Colors_by__herobrine7gamer": "abstract",
    "plasma-Altai": "abstract", "plasma-Autumn": "abstract", "plasma-Canopee": "abstract",
    "plasma-Cascade": "abstract", "plasma-Cluster": "abstract", "plasma-Elarun": "abstract",
    "plasma-Flow": "abstract", "plasma-FlyingKonqui": "abstract", "plasma-Honeywave": "abstract",
    "plasma-IceCold": "abstract", "plasma-Kay": "abstract", "plasma-Kite": "abstract", "plasma-Kokkini": "abstract",
    "plasma-Opal": "abstract", "plasma-PastelHills": "abstract", "plasma-Patak": "abstract",
    "plasma-SafeLanding": "abstract", "plasma-Shell": "abstract",
    "ukui-2004default": "abstract", "ukui-calla": "abstract", "ukui-city": "abstract", "ukui-desert": "abstract",
    "ukui-firstgeneration": "abstract", "ukui-fluent-color": "abstract", "ukui-focal-ubuntukylin": "abstract",
    "ukui-goldfish": "abstract", "ukui-rhythm": "abstract", "ukui-rollpaper": "abstract", "ukui-string": "abstract",
    "ukui-the-mouse": "abstract",
}
PREFIX = {"plasma-workspace-wallpapers": "plasma", "lomiri-wallpapers-16.04": "lomiri16",
          "lomiri-wallpapers-20.04": "lomiri20", "lomiri-wallpapers": "lomiri", "ukui-wallpapers": "ukui",
          "sway-backgrounds": "sway", "gnome-backgrounds": "gnome", "mypaint-data-extras": "mypaint",
          # photo set 2
          "gcompris-qt-data": "gcompris", "kphotoalbum": "kphotoalbum", "opencv-doc": "opencv",
          "tuxpaint-data": "tuxpaint", "lxqt-themes": "lxqt", "palapeli-data": "palapeli",
          "scribus-template": "scribus", "sddm-theme-maldives": "sddm", "python3-sklearn": "sklearn",
          "python-matplotlib-data": "matplotlib", "python-kivy-examples": "kivy", "libjxl-testdata": "jxl",
          "qtbase5-examples": "qt", "qtdeclarative5-examples": "qt", "qtmultimedia5-examples": "qt",
          "libvips-doc": "vips", "digikam-data": "digikam"}
EXTS = (".jpg", ".jpeg", ".png", ".webp")
MIN_SIDE = 512
NEAR_DUP = 6.0  # mean abs difference (0-255) of 16x16 gray thumbnails


PHOTO_SETS = (1, 2)


def set2_files() -> dict[str, list[dict]]:
    """package -> the chosen files of photo set 2 (data/photo_set_2.json)."""
    from importlib import resources

    doc = json.loads((resources.files("fgresq_sdk.train") / "data" / "photo_set_2.json").read_text())
    bad = [p for p in doc["packages"] if p in RESERVED]
    if bad:
        raise ValueError(f"{bad[0]} is reserved for the independent check")
    return doc["packages"]


def packages_of(photo_set: int = 1) -> list[str]:
    if photo_set not in PHOTO_SETS:
        raise ValueError(f"photo set {photo_set}: choose one of {PHOTO_SETS}")
    return list(PACKAGES) + (list(set2_files()) if photo_set >= 2 else [])


def read_rcc(path: str | Path) -> dict[str, bytes]:
    """Files inside a Qt resource archive (.rcc, format versions 1-3): '/dir/name' -> bytes (zlib-compressed
    entries inflated). GCompris ships its photos this way. zstd-compressed entries are refused."""
    import struct
    import zlib

    b = Path(path).read_bytes()
    if b[:4] != b"qres":
        raise ValueError(f"{path}: not a Qt resource archive")
    version, tree, data, names = struct.unpack(">4I", b[4:20])
    node = 14 if version == 1 else 22  # v2+ adds a modification time per node

    def name(off: int) -> str:
        (n,) = struct.unpack(">H", b[names + off: names + off + 2])
        return b[names + off + 6: names + off + 6 + 2 * n].decode("utf-16-be")

    out: dict[str, bytes] = {}
    stack = [(0, "")]
    while stack:
        idx, prefix = stack.pop()
        o = tree + idx * node
        name_off, flags = struct.unpack(">IH", b[o:o + 6])
        here = f"{prefix}/{name(name_off)}" if idx else ""
        if flags & 2:  # directory: count, first child
            count, first = struct.unpack(">II", b[o + 6:o + 14])
            stack.extend((first + i, here) for i in range(count))
            continue
        (off,) = struct.unpack(">I", b[o + 10:o + 14])
        (size,) = struct.unpack(">I", b[data + off: data + off + 4])
        raw = b[data + off + 4: data + off + 4 + size]
        if flags & 4:
            raise ValueError(f"{path}: {here} is zstd-compressed (not supported)")
        out[here] = zlib.decompress(raw[4:]) if flags & 1 else raw  # zlib entries carry a 4-byte length first
    return out


def fetch(root: str | Path, packages=None) -> dict[str, str]:
    """apt-get download + dpkg-deb -x each package; returns package -> version."""
    root = Path(root)
    debs, pkgs = root / "debs", root / "pkgs"
    debs.mkdir(parents=True, exist_ok=True)
    out = {}
    for p in packages or PACKAGES:
        if p in RESERVED:
            raise ValueError(f"{p} is reserved for the independent check")
        have = sorted(debs.glob(f"{p}_*.deb"))
        if not have:
            subprocess.run(["apt-get", "download", p], cwd=debs, check=True, capture_output=True)
            have = sorted(debs.glob(f"{p}_*.deb"))
        deb = have[-1]
        dest = pkgs / p
        if not dest.is_dir():  # unpacked beside, then renamed: an interrupted unpack is never taken as done
            part = pkgs / f".{p}.partial"
            shutil.rmtree(part, ignore_errors=True)
            part.mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(part)], check=True)
            part.rename(dest)
        out[p] = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                                text=True).stdout.strip()
    return out


def _dep5(path: Path) -> list[tuple[list[str], str]]:
    """(file patterns, licence) stanzas of a DEP-5 copyright file, in order."""
    if not path.is_file():
        return []
    out = []
    for para in re.split(r"\n\s*\n", path.read_text(errors="replace")):
        m_f = re.search(r"^Files:\s*(.+(?:\n\s+.+)*)", para, re.M)
        m_l = re.search(r"^License:\s*(.+)", para, re.M)
        if m_f and m_l:
            out.append((m_f.group(1).split(), m_l.group(1).strip()))
    return out


def licence_of(pkg_dir: Path, package: str, rel: str) -> str:
    stanzas = _dep5(pkg_dir / "usr/share/doc" / package / "copyright")
    lic = None
    name = Path(rel).name
    for pats, l in stanzas:  # DEP-5: the last matching stanza wins
        # "*" matches everything; otherwise the pattern's file part must match the file name (packages list
        # their source paths, which differ from the installed ones); "debian/*" never matches an image
        if any(p == "*" or (Path(p).name != "*" and fnmatch.fnmatch(name, Path(p).name))
               or (Path(p).name == "*" and Path(p).parent.name not in ("", "debian")
                   and Path(p).parent.name == Path(rel).parent.name) for p in pats):
            lic = l
    if lic is None:
        lic = "see /usr/share/doc/%s/copyright" % package
    return lic


def _design(package: str, p: Path, pkg_root: Path) -> str:
    pre = PREFIX.get(package, package)
    if package == "plasma-workspace-wallpapers":
        parts = p.relative_to(pkg_root).parts
        i = parts.index("wallpapers")
        return f"{pre}-{parts[i + 1]}"
    stem = p.stem
    if package == "sway-backgrounds":
        stem = re.sub(r"_\d+x\d+(_Portrait)?$", "", stem)
    if package == "gnome-backgrounds":
        stem = re.sub(r"-(l|d)$", "", stem)
    return f"{pre}-" + re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_")


def _thumb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.draft("L", (64, 64))
        return np.asarray(im.convert("L").resize((16, 16), Image.BILINEAR), np.float32)


def _usable_size(f: Path) -> tuple[int, int] | None:
    """(width, height) of a raster at least MIN_SIDE on its short side; None if smaller or unreadable."""
    try:
        with Image.open(f) as im:
            w, h = im.size
    except OSError:
        return None
    return (w, h) if min(w, h) >= MIN_SIDE else None


def _set2_entries(root: Path, versions: dict[str, str] | None) -> dict[str, dict]:
    """Catalogue entries of photo set 2's chosen files; members of .rcc archives are written once to
    root/extracted/<package>/<member path>."""
    entries: dict[str, dict] = {}
    for package, files in set2_files().items():
        pkg_dir = root / "pkgs" / package
        if not pkg_dir.is_dir():
            continue
        archives: dict[str, dict[str, bytes]] = {}
        for spec in files:
            f = pkg_dir / spec["path"].lstrip("/")
            if spec.get("member"):
                dest = root / "extracted" / package / spec["member"].lstrip("/")
                if not dest.is_file():
                    if spec["path"] not in archives:
                        archives[spec["path"]] = read_rcc(f)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(archives[spec["path"]][spec["member"]])
                f = dest
            if not (size := _usable_size(f)):
                continue
            w, h = size
            base = f"{PREFIX.get(package, package)}-" + re.sub(r"[^A-Za-z0-9._-]+", "_", f.stem).strip("_")
            name, k = base, 2
            while name in entries:
                name, k = f"{base}-{k}", k + 1
            entries[name] = {"name": name, "package": package, "version": (versions or {}).get(package),
                             "path": spec["path"] + (f" :: {spec['member']}" if spec.get("member") else ""),
                             "file": str(f), "width": w, "height": h, "kind": "photo", "licence": spec["licence"]}
            if spec.get("note"):
                entries[name]["note"] = spec["note"]
    return entries


def catalog(root: str | Path, versions: dict[str, str] | None = None, photo_set: int = 1) -> list[dict]:
    root = Path(root)
    packages_of(photo_set)  # checks the set
    entries: dict[str, dict] = {}
    for package in PACKAGES:
        pkg_dir = root / "pkgs" / package
        if not pkg_dir.is_dir():
            continue
        files = sorted(f for f in pkg_dir.rglob("*") if f.is_file() and f.suffix.lower() in EXTS
                       and "/doc/" not in f.as_posix() and f.name != "screenshot.png")
        for f in files:
            if not (size := _usable_size(f)):
                continue
            w, h = size
            name = _design(package, f, pkg_dir)
            light = not f.stem.endswith("-d")
            rank = (light, w * h, "Portrait" not in f.stem)
            cur = entries.get(name)
            if cur is None or rank > cur["_rank"]:
                rel = f.relative_to(pkg_dir).as_posix()
                entries[name] = {"name": name, "package": package, "version": (versions or {}).get(package),
                                 "path": "/" + rel, "file": str(f), "width": w, "height": h,
                                 "kind": KIND_OVERRIDES.get(name, PACKAGES[package]),
                                 "licence": licence_of(pkg_dir, package, rel), "_rank": rank}
    for e in entries.values():
        e.pop("_rank")
    ordered = [entries[n] for n in sorted(entries)]  # set 1 first: it wins near-duplicate ties
    if photo_set >= 2:
        extra = _set2_entries(root, versions)
        ordered += [extra[n] for n in sorted(extra) if n not in entries]
    out, seen_sha, thumbs = [], {}, []
    for e in ordered:
        name = e["name"]
        e["sha256"] = hashlib.sha256(Path(e["file"]).read_bytes()).hexdigest()
        if e["sha256"] in seen_sha:
            continue
        t = _thumb(Path(e["file"]))
        if any(float(np.abs(t - u).mean()) < NEAR_DUP for _, u in thumbs):
            continue
        seen_sha[e["sha256"]] = name
        thumbs.append((name, t))
        out.append(e)
    return out


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fgresq_sdk.train.debian_photos")
    ap.add_argument("--root", default="data")
    ap.add_argument("--no-fetch", action="store_true")
    ap.add_argument("--photo-set", type=int, default=1, choices=PHOTO_SETS,
                    help="1: the shipped model's photos; 2: set 1 + data/photo_set_2.json")
    ap.add_argument("--out", default=None, help="catalogue file (default ROOT/photos.json, set 2: ROOT/photos-set2.json)")
    a = ap.parse_args(argv)
    versions = {} if a.no_fetch else fetch(a.root, packages_of(a.photo_set))
    cat = catalog(a.root, versions, a.photo_set)
    out = Path(a.out) if a.out else Path(a.root, "photos.json" if a.photo_set == 1 else f"photos-set{a.photo_set}.json")
    out.write_text(json.dumps(cat, indent=1))
    kinds = {}
    for e in cat:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    print(json.dumps({"photos": len(cat), "kinds": kinds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
