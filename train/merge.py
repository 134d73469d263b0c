"""One training manifest from a base manifest plus tagged others, so one stage can add a generator family while
the data of the other stages stays exactly as it was.

``python -m fgresq_sdk.train.merge --out data/polish-plus --base data/fit-polish --add residue=data/residue-polish``

Why: the sharpening-residue generators taught the model to rank over-sharpening (candidate v25) but, drawn inside
the fit folder, they also replace the v3 pairs of the (content, task)s they land on, so stage 2 changes with them
(README "Candidate v26"). A separate residue-only folder merged into the polish subset leaves the stages before the
polish byte-identical to the shipped recipe's.

The base's records are copied unchanged (ids, relative paths, its root). Every added manifest's image ids and
content ids get the prefix ``<tag>:`` (the same crop of the same photo can appear in both with other images; pairs
still join one content) and its image and reference paths become absolute; the recipe's ``implementations`` gain
the added ones under the prefixed keys, so the per-implementation breakdown still finds every pair's generator; the
added manifests' recipes are kept under ``merged``. Scenes of the same name must agree. --out must be new, empty or
a previous merge (a folder with anything else is refused).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from .manifest import Manifest, PairRecord, refuse_foreign_output


def absolute_path(root: Path, rel: str | None) -> str | None:
    """`rel` (relative to `root`) as an absolute path string; None or empty stays as it is."""
    return str((Path(root) / rel).resolve()) if rel else rel


def merge(base: Manifest, added: list[tuple[str, Manifest]]) -> Manifest:
    tags = [t for t, _ in added]
    bad = [t for t in tags if not t or ":" in t or "/" in t]
    if bad or len(set(tags)) != len(tags):
        raise ValueError(f"tags must be distinct, non-empty and without ':' or '/': {tags}")
    images, pairs, scenes = dict(base.images), list(base.pairs), dict(base.scenes)
    recipe = dict(base.recipe)
    implementations = dict(recipe.get("implementations") or {})
    merged = []
    for tag, m in added:
        for name, meta in m.scenes.items():
            if name in scenes and scenes[name] != meta:
                raise ValueError(f"{tag}: scene {name!r} differs from the base's ({meta} vs {scenes[name]})")
            scenes.setdefault(name, meta)
        for iid, r in m.images.items():
            new_id = f"{tag}:{iid}"
            if new_id in images:
                raise ValueError(f"{tag}: image id {new_id!r} is already in the merge")
            images[new_id] = replace(r, image_id=new_id, content_id=f"{tag}:{r.content_id}",
                                     path=absolute_path(m.root, r.path), reference=absolute_path(m.root, r.reference))
        pairs += [PairRecord(a=f"{tag}:{p.a}", b=f"{tag}:{p.b}", label=p.label) for p in m.pairs]
        # a key is implementation_key(content, task), content first: the tag prefixes it as it prefixes the content
        implementations.update({f"{tag}:{k}": v for k, v in (m.recipe.get("implementations") or {}).items()})
        merged.append({"tag": tag, "root": str(Path(m.root).resolve()), "pairs": len(m.pairs),
                       "images": len(m.images), "recipe": m.recipe})
    if implementations:
        recipe["implementations"] = implementations
    recipe["merged"] = merged
    out = Manifest(root=base.root, images=images, pairs=pairs, scenes=scenes, recipe=recipe)
    out.validate()
    return out


def _load(folder) -> Manifest:
    """Manifest.load with the folder in its error, so the one line a user sees names the input that failed."""
    try:
        return Manifest.load(folder)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder}: {exc}") from exc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fgresq_sdk.train.merge")
    ap.add_argument("--out", required=True)
    ap.add_argument("--base", required=True, help="manifest folder whose records are kept as they are")
    ap.add_argument("--add", action="append", default=[], metavar="TAG=FOLDER",
                    help="a manifest to add, its ids prefixed with TAG: (repeatable)")
    a = ap.parse_args(argv)
    if refuse_foreign_output(a.out, "a merged manifest"):
        return 2
    added = []
    for spec in a.add:
        tag, sep, folder = spec.partition("=")
        if not sep or not folder:
            print(f"error: --add {spec!r}: expected TAG=FOLDER", file=sys.stderr)
            return 2
        added.append((tag, folder))
    try:
        base = _load(a.base)
        m = merge(base, [(tag, _load(folder)) for tag, folder in added])
    except (OSError, ValueError) as exc:  # merge's own errors name the tag
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m.save(a.out)
    print(json.dumps({"pairs": len(m.pairs), "images": len(m.images), "base_pairs": len(base.pairs),
                      "added": {x["tag"]: x["pairs"] for x in m.recipe["merged"]}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
