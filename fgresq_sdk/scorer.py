"""`Scorer`: load a bundle once, then score, compare and rank images in batches.

Decoding runs in a small thread pool one batch ahead of the model, and only one batch of decoded
pixels is alive at a time, so a folder of 100k images streams through in bounded memory.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .backends import create_backend
from .bundle import Bundle, default_bundle_path, load_bundle
from .errors import BundleError, InputError, display_path
from .heads import CompareHeadNP, softmax
from .config import CLIP_MEAN, CLIP_STD
from .crops import crop_views
from .preprocess import ImageInput, load_image, preprocess
from .ranking import Ranking, rank_from_probs

VERDICTS = ("first", "second", "similar")


@dataclass
class Encoded:
    """One input after the encoder: features and score, or the reason it failed."""

    index: int
    name: str
    features: np.ndarray | None = None
    score: float | None = None
    error: str | None = None


@dataclass
class Comparison:
    a: str
    b: str
    p_first_better: float
    p_second_better: float
    p_similar: float

    @property
    def verdict(self) -> str:
        return VERDICTS[int(np.argmax([self.p_first_better, self.p_second_better, self.p_similar]))]

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "p_first_better": self.p_first_better,
                "p_second_better": self.p_second_better, "p_similar": self.p_similar, "verdict": self.verdict}


@dataclass
class RankResult:
    names: list[str]
    scores: np.ndarray
    ranking: Ranking
    probs: np.ndarray = field(repr=False)  # [N,N,3] all ordered pairs

    def entries(self, top: int | None = None) -> list[dict]:
        r = self.ranking
        out = []
        for pos, idx in enumerate(r.order[: top or None]):
            out.append({"rank": pos + 1, "path": self.names[idx], "score": float(self.scores[idx]),
                        "win_rate": float(r.win_rate[idx]), "strength": float(r.strength[idx]),
                        "tier": int(r.tier[idx])})
        return out

    def p_better_matrix(self) -> np.ndarray:
        """P(row better than column), symmetrised, as used for the ranking."""
        return self.ranking.preference


def _name_of(item: ImageInput, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return display_path(item)
    return f"<input {index}>"


class Scorer:
    """Loads a model bundle once and runs it on batches of images (paths, PIL images or uint8 arrays)."""

    def __init__(self, model: str | os.PathLike | Bundle | None = None, backend: str = "auto",
                 device: str = "cpu", batch_size: int = 16, threads: int | None = None,
                 decode_workers: int | None = None, verify: bool = True, crops: int = 1,
                 precision: str | None = None, cuda_graphs: bool = False):
        if isinstance(model, Bundle):
            self.bundle = model
        else:
            if model is None:
                model = default_bundle_path()
                if model is None:
                    raise BundleError("no model given and this build has no embedded default model (pass --model DIR)")
            self.bundle = load_bundle(model, verify=verify)
        self.backend = create_backend(backend, self.bundle, device=device, threads=threads,
                                      precision=precision, cuda_graphs=cuda_graphs)
        self.head = CompareHeadNP.from_npz(self.bundle.path("heads"))
        self.batch_size = max(1, int(batch_size))
        self.decode_workers = decode_workers or min(4, (os.cpu_count() or 1))
        self.encoded_images = 0  # encoder passes made so far (one per image, or per crop with crops > 1)
        if int(crops) < 1:
            raise ValueError("crops must be ≥ 1")
        self.crops = int(crops)

    # -- low level -------------------------------------------------------------------------------------
    def _encode_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.encoded_images += x.shape[0]
        return self.backend.encode(x)

    def iter_encode(self, items: Iterable[ImageInput], names: Sequence[str] | None = None) -> Iterator[Encoded]:
        """Encode inputs in order; a bad input yields an Encoded with `error` set, the rest go on."""
        pre = self.bundle.preprocess

        def views(item, name) -> np.ndarray:
            """[V, 3, S, S]: the squashed whole image (V = 1), or K aligned native-resolution crops."""
            if self.crops == 1:
                return preprocess(item, pre, name=name)[None]
            return crop_views(load_image(item, name), self.crops, int(pre.get("size", 224)),
                              pre.get("mean", CLIP_MEAN), pre.get("std", CLIP_STD))

        def work(job):
            idx, item, name = job
            try:
                return idx, name, views(item, name), None
            except InputError as exc:
                return idx, name, None, exc.reason
            except MemoryError:
                return idx, name, None, "out of memory while decoding"

        def jobs():
            for i, item in enumerate(items):
                yield i, item, (names[i] if names is not None else _name_of(item, i))

        with cf.ThreadPoolExecutor(self.decode_workers, thread_name_prefix="fgresq-decode") as pool:
            it = jobs()
            pending = self._submit_batch(pool, work, it)
            while pending:
                decoded = [f.result() for f in pending]
                pending = self._submit_batch(pool, work, it)  # decode the next batch while the model runs
                good = [d for d in decoded if d[3] is None]
                feats = scores = None
                if good:
                    # Crops of one image are averaged: features exactly (the comparison head is linear in
                    # them, so this averages the comparison logits), scores as the mean per-crop score.
                    v = good[0][2].shape[0]
                    q, sc = self._encode_batch(np.concatenate([d[2] for d in good]))
                    feats = q.reshape(len(good), v, -1).mean(axis=1)
                    scores = sc.reshape(len(good), v).mean(axis=1)
                k = 0
                for idx, name, _, err in decoded:
                    if err is None:
                        yield Encoded(idx, name, features=feats[k], score=float(scores[k]))
                        k += 1
                    else:
                        yield Encoded(idx, name, error=err)

    def _submit_batch(self, pool, work, it) -> list:
        out = []
        for job in it:
            out.append(pool.submit(work, job))
            if len(out) == self.batch_size:
                break
        return out

    def encode(self, images: Sequence[ImageInput]) -> tuple[np.ndarray, np.ndarray]:
        """Strict variant: all inputs must be usable, else InputError for the first that is not."""
        feats, scores = [], []
        for enc in self.iter_encode(images):
            if enc.error is not None:
                raise InputError(enc.name, enc.error)
            feats.append(enc.features)
            scores.append(enc.score)
        dim = 3 * int(self.bundle.manifest.get("feature_dim", self.head.dim // 3))
        return (np.stack(feats) if feats else np.zeros((0, dim), np.float32)), np.asarray(scores, np.float32)

    # -- the three jobs ----------------------------------------------------------------------------------
    def score(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Quality score in (0, 1) per image, higher is better."""
        return self.encode(images)[1]

    def compare(self, a: ImageInput, b: ImageInput) -> Comparison:
        """Probabilities that a is better, b is better, or both are of similar quality."""
        q, _ = self.encode([a, b])
        return self.compare_features(_name_of(a, 0), _name_of(b, 1), q[0], q[1])

    def compare_features(self, a: str, b: str, fa: np.ndarray, fb: np.ndarray) -> Comparison:
        """`compare` on already encoded images (the CLI encodes first to report every bad input)."""
        logits = self.backend.compare_logits(fa[None], fb[None])[0]
        p = softmax(logits.astype(np.float64))
        return Comparison(a, b, float(p[0]), float(p[1]), float(p[2]))

    def rank_features(self, names: list[str], feats: np.ndarray, scores: np.ndarray) -> RankResult:
        probs = self.head.all_pairs_probs(feats)
        return RankResult(names=names, scores=np.asarray(scores), ranking=rank_from_probs(probs, scores), probs=probs)

    def rank(self, images: Sequence[ImageInput], names: Sequence[str] | None = None) -> RankResult:
        """Rank images best-first: one encoder pass per image, all pairs compared from the features."""
        feats, scores = self.encode(images)
        names = list(names) if names is not None else [_name_of(x, i) for i, x in enumerate(images)]
        return self.rank_features(names, feats, scores)

    def describe(self) -> dict:
        return {"model": self.bundle.describe(), **self.backend.describe()}


def collect_images(root: Path, recursive: bool) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files under root (sorted), and one-line problems met while walking (loops, permissions)."""
    from .preprocess import is_image_file

    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen_dirs: set[tuple[int, int]] = set()

    def walk(d: Path, ancestors: frozenset = frozenset()):
        try:
            st = d.stat()
        except OSError as exc:
            problems.append((display_path(d), f"cannot read directory ({exc.strerror})"))
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            # A loop leads back to a folder we are inside; anything else is just a second way to one.
            why = "symlink loop" if key in ancestors else "same folder as one already visited"
            problems.append((display_path(d), f"{why}, skipped"))
            return
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(d), key=lambda e: os.fsencode(e.name))
        except OSError as exc:
            problems.append((display_path(d), f"cannot list directory ({exc.strerror})"))
            return
        for e in entries:
            p = Path(e.path)
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if recursive:
                    walk(p, ancestors | {key})
            elif is_image_file(p):
                if e.is_symlink() and not p.exists():
                    problems.append((display_path(p), "broken symlink"))
                    continue
                files.append(p)

    walk(root)
    return files, problems
