"""FGRestore-style training manifests: images with per-scene MOS plus fine-grained pairwise labels.

A *manifest* is a folder holding three files::

    my_dataset/
        manifest.json
        images.csv
        pairs.csv
        ...                      (the images themselves may live here or anywhere else: see "root")

``manifest.json``::

    {
      "format": "fgresq-manifest",
      "version": 1,
      "root": "images-root",        # image root: relative to the manifest folder, or absolute
      "scenes": {                   # one entry per source dataset ("scene", as in the paper)
        "pipal": {"mos_range": [0, 100], "coarse_threshold": 10.0, "higher_is_better": true},
        "kadid": {"mos_range": [1, 5],   "coarse_threshold": 0.5,  "higher_is_better": true}
      },
      "images": "images.csv",       # file names of the two tables, relative to the manifest folder
      "pairs": "pairs.csv",
      "recipe": {...}               # free-form provenance (generator, seed, thresholds, ...)
    }

``images.csv`` (header row, UTF-8, one image per row)::

    image_id     unique id of the image (any string without surrounding whitespace)
    path         image file, relative to root (POSIX separators; an absolute path also works)
    scene        source dataset; must be a key of "scenes". MOS are only comparable within a scene
    task         one of TASKS: super_resolution, deblurring, denoising, dehazing, deraining, mixture
    content_id   id of the source content (the clean photo); pairs only join images of one content
    mos          quality score on that scene's own scale (see mos_range / higher_is_better)
    reference    optional: clean source image relative to root (for PSNR/SSIM baselines); empty if none
    strength     optional float: the generator's degradation strength (lower = better); empty if none

``pairs.csv`` (header row, one fine-grained pair per row)::

    a, b         image ids; both must share content_id and task (hence normally also scene)
    label        a_better, b_better or similar (FILE_LABELS; in memory the runtime's LABELS: first, second,
                 similar; ``load``/``save`` convert, so this file spelling stays the format's)

Pairs follow the paper's FGRestore construction: only pairs with the same content and the same
restoration task, with coarse pairs (MOS gap above the scene's ``coarse_threshold``) removed, and
perceptually unnoticeable pairs (SSIM above a JND-derived threshold) marked ``similar``.

Loading validates the manifest (``Manifest.validate``): unknown tasks, labels or scenes, pairs that
name missing images or join different contents/tasks, and duplicate image ids raise ``ValueError``
naming the offending row (rows are numbered from 1, header excluded).

``split_manifest`` makes a reproducible train/test split by pairs (default 8:2) with no content_id
on both sides: whole content groups go to one side; images follow their content group (so images
without any pair still land on the side of their content).
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from fgresq_sdk.verdict import VERDICTS

FORMAT = "fgresq-manifest"
VERSION = 1
MANIFEST_FILE = "manifest.json"

# The restoration tasks: the one list that data, stage-1 prompts and the evaluation use.
TASKS = ("super_resolution", "deblurring", "denoising", "dehazing", "deraining", "mixture")
# Pair labels in memory are the runtime's verdicts (a pair (a, b): "first" = a is better), in the comparison
# head's logit order; pairs.csv keeps the FGRestore-style spelling. This mapping is the only place the two meet.
LABELS = VERDICTS
FILE_LABELS = dict(zip(LABELS, ("a_better", "b_better", "similar")))
_LABEL_OF_FILE = {v: k for k, v in FILE_LABELS.items()}

IMAGE_COLUMNS = ("image_id", "path", "scene", "task", "content_id", "mos", "reference", "strength")
PAIR_COLUMNS = ("a", "b", "label")
_REQUIRED_IMAGE_COLUMNS = ("image_id", "path", "scene", "task", "content_id", "mos")


@dataclass
class ImageRecord:
    image_id: str
    path: str
    scene: str
    task: str
    content_id: str
    mos: float
    reference: str | None = None
    strength: float | None = None


@dataclass
class PairRecord:
    a: str
    b: str
    label: str


def _fmt_float(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def _opt_float(s: str | None) -> float | None:
    s = (s or "").strip()
    return None if s == "" else float(s)


def _table_path(folder: Path, meta: dict, key: str) -> Path:
    """The images or pairs table manifest.json names; a missing one is named with the manifest that expects it."""
    path = folder / str(meta.get(key, f"{key}.csv"))
    if not path.is_file():
        raise FileNotFoundError(f"{MANIFEST_FILE} names {path.name} as its {key} table, "
                                "but the folder has no such file")
    return path


@dataclass
class Manifest:
    root: Path
    images: dict[str, ImageRecord]
    pairs: list[PairRecord]
    scenes: dict[str, dict]
    recipe: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ paths
    def image_path(self, image_id: str) -> Path:
        return Path(self.root) / self.images[image_id].path

    def reference_path(self, image_id: str) -> Path | None:
        ref = self.images[image_id].reference
        return None if not ref else Path(self.root) / ref

    def unit_quality(self, image_id: str) -> float:
        """An image's MOS mapped to [0, 1] by its scene's declared mos_range, 1 = best (quality direction
        respected): the one scale on which images of different contents and scenes are compared."""
        r = self.images[image_id]
        meta = (self.scenes or {}).get(r.scene) or {}
        lo, hi = (meta.get("mos_range") or [0.0, 1.0])[:2]
        v = (float(r.mos) - lo) / ((hi - lo) or 1.0)
        return v if meta.get("higher_is_better", True) else 1.0 - v

    # ------------------------------------------------------------------ I/O
    def save(self, folder: str | os.PathLike) -> Path:
        """Write manifest.json, images.csv and pairs.csv into ``folder``; returns the manifest.json path.

        ``root`` is written relative to ``folder`` when it lies inside it (so the folder can be moved
        with its images), absolute otherwise.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        folder_abs = folder.resolve()
        root_abs = Path(self.root).resolve() if Path(self.root).is_absolute() else (Path.cwd() / self.root).resolve()
        try:
            root_str = root_abs.relative_to(folder_abs).as_posix() or "."
        except ValueError:
            root_str = str(root_abs)
        with open(folder / "images.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(IMAGE_COLUMNS)
            for r in self.images.values():
                w.writerow([r.image_id, r.path, r.scene, r.task, r.content_id, _fmt_float(r.mos),
                            r.reference or "", _fmt_float(r.strength)])
        with open(folder / "pairs.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(PAIR_COLUMNS)
            for i, p in enumerate(self.pairs, start=1):
                if p.label not in FILE_LABELS:
                    raise ValueError(f"pair {i} (a={p.a!r}, b={p.b!r}): unknown label {p.label!r} "
                                     f"(expected one of {LABELS})")
                w.writerow([p.a, p.b, FILE_LABELS[p.label]])
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "root": root_str,
            "scenes": self.scenes,
            "images": "images.csv",
            "pairs": "pairs.csv",
            "recipe": self.recipe,
        }
        path = folder / MANIFEST_FILE
        path.write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder_or_manifest_json: str | os.PathLike, validate: bool = True) -> "Manifest":
        p = Path(folder_or_manifest_json)
        mpath = p / MANIFEST_FILE if p.is_dir() else p
        folder = mpath.parent
        if not p.exists():
            raise FileNotFoundError("no such folder")
        if not mpath.is_file():
            # a folder without the file is the usual slip (an image folder passed to --manifest): say what one holds
            raise FileNotFoundError(f"no {MANIFEST_FILE} in this folder (a manifest folder holds {MANIFEST_FILE}, "
                                    "images.csv and pairs.csv: train/manifest.py, README)")
        try:
            meta = json.loads(mpath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{mpath.name}: not JSON ({e})") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{mpath.name}: not a JSON object")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{mpath}: not an {FORMAT} file (format={meta.get('format')!r})")
        if int(meta.get("version", -1)) != VERSION:
            raise ValueError(f"{mpath}: unsupported manifest version {meta.get('version')!r} (expected {VERSION})")
        root = Path(meta.get("root", "."))
        root = root if root.is_absolute() else (folder / root)
        root = root.resolve()

        images: dict[str, ImageRecord] = {}
        ipath = _table_path(folder, meta, "images")
        with open(ipath, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in _REQUIRED_IMAGE_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{ipath.name}: missing columns {missing}")
            for i, row in enumerate(reader, start=1):
                iid = (row["image_id"] or "").strip()
                if not iid:
                    raise ValueError(f"{ipath.name} row {i}: empty image_id")
                if iid in images:
                    raise ValueError(f"{ipath.name} row {i}: duplicate image_id {iid!r}")
                try:
                    mos = float(row["mos"])
                    strength = _opt_float(row.get("strength"))
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{ipath.name} row {i} ({iid!r}): bad number: {e}") from None
                images[iid] = ImageRecord(
                    image_id=iid, path=row["path"], scene=row["scene"], task=row["task"],
                    content_id=row["content_id"], mos=mos,
                    reference=(row.get("reference") or "").strip() or None, strength=strength,
                )
        pairs: list[PairRecord] = []
        ppath = _table_path(folder, meta, "pairs")
        with open(ppath, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in PAIR_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{ppath.name}: missing columns {missing}")
            for i, row in enumerate(reader, start=1):
                a, b, label = ((row[c] or "").strip() for c in PAIR_COLUMNS)
                if label not in _LABEL_OF_FILE and validate:
                    raise ValueError(f"{ppath.name} row {i} (a={a!r}, b={b!r}, label={label!r}): unknown label "
                                     f"{label!r} (expected one of {tuple(FILE_LABELS.values())})")
                pairs.append(PairRecord(a=a, b=b, label=_LABEL_OF_FILE.get(label, label)))
        m = cls(root=root, images=images, pairs=pairs, scenes=dict(meta.get("scenes", {})),
                recipe=dict(meta.get("recipe", {})))
        if validate:
            m.validate()
        return m

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError naming the first offending row (rows numbered from 1, header excluded)."""
        for name, sc in self.scenes.items():
            rng = sc.get("mos_range")
            if not (isinstance(rng, (list, tuple)) and len(rng) == 2 and float(rng[0]) < float(rng[1])):
                raise ValueError(f"scene {name!r}: mos_range must be [lo, hi] with lo < hi, got {rng!r}")
            if "coarse_threshold" in sc and not float(sc["coarse_threshold"]) > 0:
                raise ValueError(f"scene {name!r}: coarse_threshold must be > 0")
        for i, (key, r) in enumerate(self.images.items(), start=1):
            where = f"images.csv row {i} ({r.image_id!r})"
            if key != r.image_id:
                raise ValueError(f"{where}: stored under key {key!r}")
            if r.task not in TASKS:
                raise ValueError(f"{where}: unknown task {r.task!r} (expected one of {TASKS})")
            if r.scene not in self.scenes:
                raise ValueError(f"{where}: unknown scene {r.scene!r} (not in manifest.json scenes)")
            if not r.path:
                raise ValueError(f"{where}: empty path")
            if not r.content_id:
                raise ValueError(f"{where}: empty content_id")
            if not math.isfinite(r.mos):
                raise ValueError(f"{where}: mos is not finite")
        for i, p in enumerate(self.pairs, start=1):
            where = f"pairs.csv row {i} (a={p.a!r}, b={p.b!r}, label={p.label!r})"
            if p.label not in LABELS:
                raise ValueError(f"{where}: unknown label {p.label!r} (expected one of {LABELS})")
            for side in (p.a, p.b):
                if side not in self.images:
                    raise ValueError(f"{where}: unknown image id {side!r}")
            if p.a == p.b:
                raise ValueError(f"{where}: pairs an image with itself")
            ra, rb = self.images[p.a], self.images[p.b]
            if ra.content_id != rb.content_id:
                raise ValueError(f"{where}: joins different content ({ra.content_id!r} vs {rb.content_id!r})")
            if ra.task != rb.task:
                raise ValueError(f"{where}: joins different tasks ({ra.task!r} vs {rb.task!r})")

    # ------------------------------------------------------------------ views
    def subset(self, pair_indices) -> "Manifest":
        """A manifest with the chosen pairs (in the given order) and exactly the images they use."""
        pairs = [self.pairs[int(i)] for i in pair_indices]
        used = {p.a for p in pairs} | {p.b for p in pairs}
        images = {k: v for k, v in self.images.items() if k in used}
        return Manifest(root=self.root, images=images, pairs=list(pairs), scenes=dict(self.scenes),
                        recipe=dict(self.recipe))

    def summary(self) -> dict:
        """Counts for logs and READMEs: images, pairs, contents, label shares, per task."""
        labels = Counter(p.label for p in self.pairs)
        n = len(self.pairs)
        return {
            "images": len(self.images),
            "pairs": n,
            "contents": len({r.content_id for r in self.images.values()}),
            "labels": {FILE_LABELS[k]: labels.get(k, 0) for k in LABELS},  # as pairs.csv spells them
            "similar_share": (labels.get("similar", 0) / n) if n else 0.0,
            "images_per_task": dict(Counter(r.task for r in self.images.values())),
            "pairs_per_task": dict(Counter(self.images[p.a].task for p in self.pairs)),
            "images_per_scene": dict(Counter(r.scene for r in self.images.values())),
        }


def split_manifest(m: Manifest, train_fraction: float = 0.8, seed: int = 0) -> tuple[Manifest, Manifest]:
    """Split by pairs into (train, test) with no content_id on both sides; reproducible per seed.

    Content groups (all images and pairs of one content_id) are visited in a seeded random order and
    each goes to the side that brings the train share of pairs closest to ``train_fraction``. Groups
    without pairs go to train with probability ``train_fraction``. With at least two paired groups and
    0 < train_fraction < 1 both sides get pairs.
    """
    if not 0.0 <= train_fraction <= 1.0:
        raise ValueError("train_fraction must be in [0, 1]")
    content_of = {k: r.content_id for k, r in m.images.items()}
    pair_count: Counter = Counter(content_of[p.a] for p in m.pairs)
    contents = sorted({r.content_id for r in m.images.values()})
    rng = np.random.default_rng(seed)
    order = [contents[i] for i in rng.permutation(len(contents))]
    total = sum(pair_count.values())
    target = train_fraction * total
    train_c: set[str] = set()
    n_train = 0
    paired = [c for c in order if pair_count[c] > 0]
    for c in order:
        n = pair_count[c]
        if n == 0:
            if rng.random() < train_fraction:
                train_c.add(c)
            continue
        if abs(n_train + n - target) < abs(n_train - target):
            train_c.add(c)
            n_train += n
    if len(paired) >= 2 and 0.0 < train_fraction < 1.0:
        in_train = [c for c in paired if c in train_c]
        in_test = [c for c in paired if c not in train_c]
        if not in_train:  # move the smallest test group
            train_c.add(min(in_test, key=lambda c: (pair_count[c], c)))
        elif not in_test:
            train_c.discard(min(in_train, key=lambda c: (pair_count[c], c)))

    def side(is_train: bool, name: str) -> Manifest:
        images = {k: r for k, r in m.images.items() if (r.content_id in train_c) == is_train}
        pairs = [p for p in m.pairs if (content_of[p.a] in train_c) == is_train]
        recipe = dict(m.recipe)
        recipe["split"] = {
            "side": name, "seed": seed, "train_fraction": train_fraction,
            "contents": sorted({r.content_id for r in images.values()}),
        }
        return Manifest(root=m.root, images=images, pairs=pairs, scenes=dict(m.scenes), recipe=recipe)

    return side(True, "train"), side(False, "test")


def implementation_key(content_id: str, task: str) -> str:
    """Where a recipe's ``implementations`` records the generator a (content, task) drew: one spelling for the
    generator that writes it and for the breakdown, subset and merge that read it."""
    return f"{content_id}/{task}"


SAVED_FILES = (MANIFEST_FILE, "images.csv", "pairs.csv")  # what Manifest.save writes: all a derived manifest holds


def refuse_foreign_output(folder: str | Path, what: str) -> bool:
    """True, after one error line on stderr, when ``folder`` holds anything but a previous ``what`` (a manifest
    that Manifest.save wrote): the tools that derive manifests (subset, merge) write only into a folder of their own."""
    foreign = foreign_entries(folder, SAVED_FILES)
    if foreign:
        print(f"error: {folder}: holds other files than {what} ({', '.join(foreign[:3])}): "
              "refusing to write into it (pass a new folder)", file=sys.stderr)
    return bool(foreign)


def foreign_entries(folder: str | Path, allowed: Sequence[str]) -> list[str] | None:
    """What in an output folder a data tool did not write itself: None if the folder is free to write
    (absent, or holding only ``allowed`` names: a previous output of the same tool); else the foreign names
    (['not a folder'] for a file). The tools refuse such a folder: they must never overwrite a user's files."""
    folder = Path(folder)
    if not folder.exists():
        return None
    if not folder.is_dir():
        return ["not a folder"]
    foreign = sorted(e.name for e in folder.iterdir() if e.name not in allowed)
    return foreign or None


__all__ = [
    "FORMAT", "VERSION", "TASKS", "LABELS", "FILE_LABELS", "IMAGE_COLUMNS", "PAIR_COLUMNS",
    "ImageRecord", "PairRecord", "Manifest", "split_manifest", "foreign_entries", "refuse_foreign_output",
    "SAVED_FILES", "implementation_key",
]
