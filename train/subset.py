"""A smaller training manifest for the CPU budget: pairs of the chosen crops, a seeded share of them.

``python -m fgresq_sdk.train.subset --src data/v2-fit --out data/v2-fit-s --crops 0 --pair-fraction 0.5 --seed 0``
keeps the pairs whose content is crop ``~c0`` of its photo (all photos stay represented) and, of those, a
fraction chosen by a seeded sha256 of the pair (reproducible, order-free); images are those the pairs use.
``--junk-fraction F`` keeps pairs with a hard negative (the generator's ``<content>/<task>/J`` images) at their
own seeded share F instead of ``--pair-fraction``, so they can be a small part of the batches: at a 36 % share
they stalled learning in a probe (README "Embedded default model").
``--ranked-only`` also leaves out the ``similar`` pairs: the comparison head is linear in the two images'
features, so it can say "similar" only through its bias, and those pairs can only pull the towers towards
features that do not separate neighbouring strengths (reasoned, not isolated by a probe: README "Embedded
default model").
``--exclude-implementations A,B`` leaves out the pairs of every (content, task) whose generator implementation (the
manifest's recipe records it) is named, so one fit folder can feed stages that should and should not see a generator
family (candidate v25's probe: the sharpening-residue generators in one stage only; README).
The manifest's ``root`` points at the source folder's images (nothing is copied). --out must be new, empty or a
previous subset: a folder with anything else (the source's images, say) is refused.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Sequence

from .by_implementation import implementation_of_pair
from .manifest import Manifest, refuse_foreign_output
from .synthetic import has_hard_negative

def select(m: Manifest, crops=(0,), pair_fraction: float = 1.0, seed: int = 0,
           ranked_only: bool = False, junk_fraction: float | None = None,
           exclude_implementations: Sequence[str] = ()) -> Manifest:
    want = {f"_c{c}" for c in crops}
    drawn = m.recipe.get("implementations") or {}
    unknown = sorted(set(exclude_implementations) - set(drawn.values()))
    if unknown:
        raise ValueError(f"--exclude-implementations: {', '.join(unknown)} not drawn in this manifest "
                         f"(it has: {', '.join(sorted(set(map(str, drawn.values()))))})")
    excluded = set(exclude_implementations)
    keep = []
    for i, p in enumerate(m.pairs):
        if ranked_only and p.label == "similar":
            continue
        if excluded and implementation_of_pair(drawn, m, p) in excluded:
            continue
        cid = m.images[p.a].content_id
        mm = re.search(r"_c\d+$", cid)
        if mm and mm.group(0) not in want:
            continue
        u = int(hashlib.sha256(f"{seed}:{p.a}:{p.b}".encode()).hexdigest()[:8], 16) / 2**32
        if u < (junk_fraction if junk_fraction is not None and has_hard_negative(p) else pair_fraction):
            keep.append(i)
    out = m.subset(keep)
    out.recipe["subset"] = {"crops": list(crops), "pair_fraction": pair_fraction, "seed": seed,
                            "ranked_only": ranked_only, "junk_fraction": junk_fraction, "pairs": len(out.pairs),
                            "images": len(out.images),
                            "hard_negative_pairs": sum(map(has_hard_negative, out.pairs))}
    if excluded:  # only then: the subsets of earlier recipes keep their manifests byte for byte
        out.recipe["subset"]["exclude_implementations"] = sorted(excluded)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fgresq_sdk.train.subset")
    ap.add_argument("--src", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--crops", default="0", help="comma-separated crop indices to keep")
    ap.add_argument("--pair-fraction", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ranked-only", action="store_true", help="leave out the 'similar' pairs")
    ap.add_argument("--junk-fraction", type=float, default=None,
                    help="share of the hard-negative pairs to keep (default: --pair-fraction)")
    ap.add_argument("--exclude-implementations", default="",
                    help="comma-separated generator implementations whose (content, task) pairs to leave out")
    a = ap.parse_args(argv)
    if refuse_foreign_output(a.out, "a subset manifest"):
        return 2
    try:
        m = select(Manifest.load(a.src), tuple(int(c) for c in a.crops.split(",")), a.pair_fraction, a.seed,
                   a.ranked_only, a.junk_fraction, [n for n in a.exclude_implementations.split(",") if n.strip()])
    except ValueError as exc:
        print(f"error: {a.src}: {exc}", file=sys.stderr)
        return 2
    m.root = Path(a.src).resolve()
    m.save(a.out)
    print(json.dumps(m.recipe["subset"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
