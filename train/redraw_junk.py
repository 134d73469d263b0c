"""A synthetic folder's twin whose hard negatives are drawn by other weights, without making the rest again.

Why: the recipe's score steps read the towers' fit and val folders with grey noise among the hard negatives
(scripts/make_default_model.sh, SCORE_JUNK_WEIGHTS). train/synthetic.py with the same photos, seed and other
--junk-weights makes such a folder too, but it degrades every image again (~4.5 min of the script's hour on 2 cores
for the fit folder) although only the hard negatives differ: every draw is seeded by (seed, content, task), so the
degraded levels are the source folder's byte for byte. This draws each hard negative and its three pairs as
synthetic.generate does (synthetic.hard_negative: the same generator, the same order of draws) and points every other
image at the source folder by an absolute path, as train/merge.py does with what it adds. The twin holds
synthetic's images and pairs; only where the unchanged files lie differs (tests/test_data.py checks both).

``python -m fgresq_sdk.train.redraw_junk --src FIT --out FIT-SCORE --junk-weights noise=1,...,grey_noise=1``
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from .manifest import SAVED_FILES, Manifest, foreign_entries
from .merge import absolute_path
from .synthetic import (HARD_NEGATIVE_LEVEL, TASKS, _save_png, hard_negative, is_hard_negative, junk_probabilities,
                        parse_junk_weights, junk_recipe)


def redraw(src: Manifest, out: Path, junk_weights: dict[str, float] | None) -> Manifest:
    """The twin of `src` in `out` (see the module's docstring); returns it, saved."""
    if not src.recipe.get("junk"):
        raise ValueError(f"{src.root}: has no hard negatives to draw again (made without --junk)")
    junk_p = junk_probabilities(junk_weights)
    seed, n_levels = int(src.recipe["seed"]), len(src.recipe["strengths"])
    out = Path(out)
    images, drawn = {}, {}
    for iid, rec in src.images.items():
        if not is_hard_negative(iid):
            images[iid] = replace(rec, path=absolute_path(src.root, rec.path),
                                  reference=absolute_path(src.root, rec.reference))
            continue
        cid, task = rec.content_id, rec.task
        level_ids = [f"{cid}/{task}/L{k}" for k in range(n_levels)]
        x = np.asarray(Image.open(src.reference_path(iid)).convert("RGB")).astype(np.float32)
        j = hard_negative(seed, cid, TASKS.index(task), x, src.scenes[rec.scene]["mos_range"],
                          src.images[level_ids[-1]].mos, level_ids, iid, junk_p)
        rel = f"images/{cid}/{task}/{HARD_NEGATIVE_LEVEL}.png"
        _save_png(j.image, out / rel)
        images[iid] = replace(rec, path=rel, mos=j.mos, reference=absolute_path(src.root, rec.reference))
        drawn[iid] = list(j.pairs)
    pairs = []
    for p in src.pairs:  # each hard negative's pairs where synthetic put them, in its order
        jid = p.a if is_hard_negative(p.a) else p.b if is_hard_negative(p.b) else None
        pairs.append(p if jid is None else drawn[jid].pop(0))
    if any(drawn.values()):
        raise ValueError(f"{src.root}: its hard negatives' pairs are not the three synthetic makes")
    recipe = dict(src.recipe, junk=junk_recipe(junk_p, len(drawn)), redrawn_from=str(Path(src.root).resolve()))
    m = Manifest(root=out.resolve(), images=images, pairs=pairs, scenes=dict(src.scenes), recipe=recipe)
    m.validate()
    m.save(out)
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fgresq_sdk.train.redraw_junk", description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, required=True, help="a folder train/synthetic.py made with --junk")
    ap.add_argument("--out", type=Path, required=True, help="the twin (new, empty or a previous twin)")
    ap.add_argument("--junk-weights", default=None,
                    help="how often each kind is drawn (train/synthetic.py --junk-weights; default: the first five "
                         "kinds equally)")
    a = ap.parse_args(argv)
    try:
        weights = parse_junk_weights(a.junk_weights)
    except ValueError as exc:
        ap.error(str(exc))
    foreign = foreign_entries(a.out, SAVED_FILES + ("images",))
    if foreign:
        print(f"error: {a.out}: holds other files than a redrawn folder ({', '.join(foreign[:3])}): refusing to "
              "write into it (pass a new folder)", file=sys.stderr)
        return 2
    try:
        m = redraw(Manifest.load(a.src), a.out, weights)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}: {m.recipe['junk']['images']} hard negatives drawn again, {len(m.images)} images, "
          f"{len(m.pairs)} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
