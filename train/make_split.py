"""Photo split of the default model's data: fit / val / test, by photo (all crops of a photo on one side).

The 19 photos of the previous default keep their sides (its fit photos stay in fit, its val photos in val, its
held-out photos in test) so that the old model can be compared on test photos it never saw; every other photo
is assigned by a salted sha256 of its name: ~20 % test, ~12 % val, the rest fit.
``python -m fgresq_sdk.train.make_split --catalog data/photos.json --out train/data/split.json``
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

PINNED = {
    "fit": ["gnome-adwaita", "gnome-pixels", "gnome-symbolic", "gnome-truchet", "skimage-astronaut",
            "skimage-coffee", "skimage-coins", "skimage-grass", "skimage-gravel", "skimage-hubble", "skimage-moon",
            "skimage-motorcycle"],
    "val": ["gnome-licorice", "skimage-camera", "skimage-chelsea"],
    "test": ["gnome-grid", "gnome-wood", "skimage-brick", "skimage-rocket"],
}
SALT = "fgresq-split-v2"


def assign(names, test=0.2, val=0.12) -> dict[str, str]:
    pinned = {n: side for side, ns in PINNED.items() for n in ns}
    out = {}
    for n in sorted(set(names)):
        if n in pinned:
            out[n] = pinned[n]
            continue
        u = int(hashlib.sha256(f"{SALT}:{n}".encode()).hexdigest()[:8], 16) / 2**32
        out[n] = "test" if u < test else "val" if u < test + val else "fit"
    return out


def main(argv=None) -> int:
    from . import photos as ph

    ap = argparse.ArgumentParser(prog="python -m fgresq_sdk.train.make_split")
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    cat = json.loads(Path(a.catalog).read_text())
    names = [n for n, _ in ph.skimage_sources()] + [e["name"] for e in cat]
    split = assign(names)
    by = {e["name"]: e for e in cat}
    photos = []
    for n in sorted(split):
        e = by.get(n)
        if e:
            photos.append({k: e[k] for k in ("name", "package", "version", "path", "sha256", "width", "height",
                                               "kind", "licence")} | {"split": split[n]})
        else:
            photos.append({"name": n, "package": "scikit-image (skimage.data, bundled in the wheel)",
                           "kind": "photo", "licence": "see skimage/data/README.txt (CC0 / public domain / "
                           "own licences per image)", "split": split[n]})
    counts = {s: sum(v == s for v in split.values()) for s in ("fit", "val", "test")}
    Path(a.out).write_text(json.dumps({"note": "mate-backgrounds is not used (reserved for the independent check)",
                                       "salt": SALT, "counts": counts, "split": split, "photos": photos}, indent=1))
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
