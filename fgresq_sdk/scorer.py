"""`Scorer`: load a bundle once, then score, compare and rank images in batches.

Decoding runs in a small thread pool one batch ahead of the model, and only one batch of decoded
pixels is alive at a time, so a folder of 100k images streams through in bounded memory.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import functools
import itertools
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .backends import create_backend, parse_device
from .bundle import Bundle, default_bundle_path, load_bundle
from .errors import BundleError, InputError, display_path
from .heads import CompareHeadNP
from .crops import crop_views
from .naturalness import NaturalnessTerm
from .preprocess import ImageInput, load_image, preprocess
from .ranking import Ranking
from .verdict import PROB_KEYS, verdict

# Images per encoder call when the caller leaves batch_size out (Scorer, the CLI's --batch-size).
# Why two on a CPU for conv-stats towers (model.ConvStatsTower, the embedded default): their first layers keep 32
# channels at 224², twice with the mirror view, so a batch of 16 streams every layer's output through main memory
# while one or two images stay in cache. Measured side by side, ONNX Runtime, 2 intra-op threads, Intel Xeon family 6
# model 167 (AVX-512): the default model's encoder 20-21 ms/image at 1-2 against 28.7 at 16; `fgresq-sdk score` of
# 400 images 12.4-13.0 s against 14.5. ViT towers gain nothing from it (ViT-B/16 240-251 ms/image at 1-16, the compact
# ViT 5.4 at 1 against 4.5 at 16), and a GPU wants large batches: they keep 16.
CPU_CONV_STATS_BATCH = 2
DEFAULT_BATCH = 16


def default_batch_size(config: dict, device: str) -> int:
    """The batch an encoder call gets when none is asked for: `config` is the bundle's model config, `device` the
    backend's resolved device ("cpu", "cuda", "cuda:N")."""
    on_gpu = parse_device(str(device))[0] == "cuda"
    conv_stats = (config.get("vision_cfg") or {}).get("kind") == "conv-stats"
    return CPU_CONV_STATS_BATCH if conv_stats and not on_gpu else DEFAULT_BATCH


@dataclass
class Encoded:
    """One input after the encoder: features and score, or the reason it failed."""

    index: int
    name: str
    features: np.ndarray | None = None
    score: float | None = None
    error: str | None = None
    log_distance: float | None = None  # ln of the NIQE-style distance, for bundles with a naturalness term


@dataclass
class Comparison:
    a: str
    b: str
    p_first_better: float
    p_second_better: float
    p_similar: float
    raw: bool = False  # True: the single forward order (a, b), as the authors' predict_pair computes it

    @property
    def probs(self) -> tuple[float, float, float]:
        """The three probabilities in the head's order; the fields above are named by verdict.PROB_KEYS."""
        return tuple(getattr(self, k) for k in PROB_KEYS)

    @property
    def verdict(self) -> str:
        """See fgresq_sdk.verdict: `similar` also when neither image is preferred by more than a margin."""
        return verdict(*self.probs)

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, **dict(zip(PROB_KEYS, self.probs)), "verdict": self.verdict}


@dataclass
class RankResult:
    """A ranking and its inputs. Pair probabilities are computed on demand (`pair_probs`,
    `ranking.preference_of`): an [N, N, 3] array would be 1.6 GB for 8192 images."""

    names: list[str]
    scores: np.ndarray
    ranking: Ranking

    def entries(self, top: int | None = None) -> list[dict]:
        """Best first; win_rate is NaN for a single image (no others to win against)."""
        r = self.ranking
        out = []
        for pos, idx in enumerate(r.order[: top or None]):
            out.append({"rank": pos + 1, "path": self.names[idx], "score": float(self.scores[idx]),
                        "win_rate": float(r.win_rate[idx]), "strength": float(r.strength[idx]),
                        "tier": int(r.tier[idx])})
        return out

    def p_better_matrix(self) -> np.ndarray:
        """P(row better than column), symmetrised, as used for the ranking: float32 [N, N], built on first
        use (4·N² bytes). For a few rows or columns use `ranking.preference_of(rows, cols)`."""
        return self.ranking.preference

    def pair_probs(self, i, j) -> np.ndarray:
        """Head probabilities [..., 3] (first better, second better, similar) for the pairs (i first, j second),
        indices into `names`; from the ranking's pair source (the per-image head terms), not a stored [N, N, 3]."""
        return self.ranking.pair_probs(i, j)


def rank_encoded(head: CompareHeadNP, names: Sequence[str], feats: np.ndarray, scores: np.ndarray) -> RankResult:
    """All-pairs ranking from features, for local and remote scorers alike. Memory: O(N) head terms plus the
    fit's float32 N×N Hessian (`ranking.rank_memory_bytes`); no input (N = 0) gives an empty result."""
    from .heads import PairTerms
    from .ranking import rank_pairs

    names = list(names)
    scores = np.asarray(scores, np.float64).reshape(-1)
    # Empty features may come in any shape (np.empty(0)): no image, no pairs.
    pairs = head.pair_terms(feats) if names else PairTerms(np.zeros((0, 3)), np.zeros((0, 3)))
    return RankResult(names=names, scores=scores, ranking=rank_pairs(pairs, scores))


def _name_of(item: ImageInput, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return display_path(item)
    return f"<input {index}>"


class ScoringMethods:
    """score / compare / rank, defined once on top of `iter_encode` and `head` (the bundle's CompareHeadNP,
    the one comparison head): the local `Scorer` and `client.RemoteScorer` answer the same questions the
    same way, and differ only in where the features come from."""

    head: CompareHeadNP

    def iter_encode(self, items: Iterable[ImageInput], names: Sequence[str] | None = None, *,
                    features_only: bool = False) -> Iterator[Encoded]:
        raise NotImplementedError

    def encode(self, images: Sequence[ImageInput], *, features_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Strict variant: all inputs must be usable, else InputError for the first that is not.
        features_only: the scores may be left out (NaN) where that saves work (see Scorer.iter_encode)."""
        feats, scores = [], []
        for enc in self.iter_encode(images, features_only=features_only):
            if enc.error is not None:
                raise InputError(enc.name, enc.error)
            feats.append(enc.features)
            scores.append(np.nan if enc.score is None else enc.score)
        width = self.head.dim  # quality features q = [f, t, f + t]: the head's half-width
        return (np.stack(feats) if feats else np.zeros((0, width), np.float32)), np.asarray(scores, np.float32)

    def score(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Quality score in (0, 1) per image, higher is better."""
        return self.encode(images)[1]

    def compare(self, a: ImageInput, b: ImageInput, raw: bool = False) -> Comparison:
        """Probabilities that a is better, b is better, or both are of similar quality.

        Default: order-symmetrised (compare(a, b) mirrors compare(b, a); identical images are `similar`),
        the quantity `rank` uses. raw=True: the head on (a, b) only, as the authors' predict_pair."""
        q, _ = self.encode([a, b], features_only=True)
        return self.compare_features(_name_of(a, 0), _name_of(b, 1), q[0], q[1], raw=raw)

    def compare_features(self, a: str, b: str, fa: np.ndarray, fb: np.ndarray, raw: bool = False) -> Comparison:
        """`compare` on already encoded images (the CLI encodes first to report every bad input)."""
        p = self.head.compare(fa, fb, raw=raw)
        return Comparison(a, b, float(p[0]), float(p[1]), float(p[2]), raw=raw)

    def rank_features(self, names: list[str], feats: np.ndarray, scores: np.ndarray) -> RankResult:
        """`rank` on already encoded images (see rank_encoded)."""
        return rank_encoded(self.head, names, feats, scores)

    def rank(self, images: Sequence[ImageInput], names: Sequence[str] | None = None) -> RankResult:
        """Rank images best-first: one encode per image, all pairs compared from the features."""
        feats, scores = self.encode(images)
        names = list(names) if names is not None else [_name_of(x, i) for i, x in enumerate(images)]
        return self.rank_features(names, feats, scores)



class Scorer(ScoringMethods):
    """Loads a model bundle once and runs it on batches of images (paths, PIL images or uint8 arrays).

    Threads: one Scorer may be shared by any number of threads. Each call keeps its own decode pool and
    results; the backend is called concurrently when it says it is safe (`backend.thread_safe`: ONNX
    Runtime, torch on the CPU) and one call at a time otherwise (TensorRT's one execution context, torch on
    CUDA with CUDA graphs' static buffers or the per-call cuDNN precision switch). `thread_safe` on the
    Scorer tells which applies.
    """

    def __init__(self, model: str | os.PathLike | Bundle | None = None, backend: str = "auto",
                 device: str = "cpu", batch_size: int | None = None, threads: int | None = None,
                 decode_workers: int | None = None, verify: bool = True, crops: int = 1,
                 precision: str | None = None, cuda_graphs: bool = False, compile: bool = False,
                 flip: bool = False):
        if isinstance(model, Bundle):
            self.bundle = model
        else:
            if model is None:
                model = default_bundle_path()
                if model is None:
                    raise BundleError("no model given and this build has no embedded default model (pass --model DIR)")
            self.bundle = load_bundle(model, verify=verify)
        self.backend = create_backend(backend, self.bundle, device=device, threads=threads,
                                      precision=precision, cuda_graphs=cuda_graphs, compile=compile)
        self.head = CompareHeadNP.from_npz(self.bundle.read("heads"))
        self.naturalness = NaturalnessTerm.from_bundle(self.bundle)
        self.batch_size = (max(1, int(batch_size)) if batch_size is not None
                           else default_batch_size(self.bundle.config, self.backend.device))
        self.decode_workers = decode_workers or min(4, (os.cpu_count() or 1))
        self.encoded_images = 0  # encoder passes made so far (one per image, or per crop with crops > 1)
        self._count_lock = threading.Lock()
        self._backend_lock = contextlib.nullcontext() if self.thread_safe else threading.Lock()
        if int(crops) < 1:
            raise ValueError("crops must be ≥ 1")
        self.crops = int(crops)
        # Test-time mirror views: the towers were trained on randomly mirrored crops, so the mirrored view is a
        # second, equally valid look at the same residue; averaging the two steadies close calls (README).
        # A model whose config sets mirror_views already does this inside its graph: a second mirror would
        # double the work for the same numbers.
        self.model_mirror = bool(self.bundle.config.get("mirror_views", False))
        self.flip = bool(flip) and not self.model_mirror

    # -- low level -------------------------------------------------------------------------------------
    @property
    def thread_safe(self) -> bool:
        """Whether the backend runs concurrent calls in parallel (else they are serialised by a lock)."""
        return bool(getattr(self.backend, "thread_safe", False))

    def _encode_batch(self, x: np.ndarray, one_core: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The backend on one batch, counted: on its every-core session (serialised when the backend needs it), or
        with one_core on the calling thread alone (`_iter_one_core`)."""
        with self._count_lock:
            self.encoded_images += x.shape[0]
        if one_core:
            return self.backend.encode_one_core(x)
        with self._backend_lock:
            return self.backend.encode(x)

    def iter_encode(self, items: Iterable[ImageInput], names: Sequence[str] | None = None, *,
                    features_only: bool = False) -> Iterator[Encoded]:
        """Encode inputs in order; a bad input yields an Encoded with `error` set, the rest go on.

        features_only: for callers that read only the features (`compare`): the score is None and a naturalness
        term's NIQE-style distance is not computed (~7 ms of numpy per image, more than the encoder itself on
        a GPU)."""
        spec = self.bundle.preprocess_spec

        def views(item, name) -> np.ndarray:
            """[V, 3, S, S]: the bundle's preprocessing (V = 1), or K aligned native-resolution crops; with
            flip, each view and its mirror image (V doubles)."""
            v = preprocess(item, spec, name=name)[None] if self.crops == 1 else \
                crop_views(load_image(item, name), self.crops, spec)
            return np.concatenate([v, v[..., ::-1]]) if self.flip else v

        term = None if features_only else self.naturalness

        def work(job):
            """(index, name, views, error, ln d): ln d on the views the encoder reads, in the decode threads."""
            idx, item, name = job
            try:
                v = views(item, name)
                return idx, name, v, None, (term.log_distance(v) if term is not None else None)
            except InputError as exc:
                return idx, name, None, exc.reason, None
            except MemoryError:
                return idx, name, None, "out of memory while decoding", None

        def jobs():
            for i, item in enumerate(items):
                yield i, item, (names[i] if names is not None else _name_of(item, i))

        it = jobs()
        head = list(itertools.islice(it, self.batch_size + 1))
        it = itertools.chain(head, it)
        workers = self._one_core_workers()
        if workers and len(head) > self.batch_size:
            yield from self._iter_one_core(it, work, term, features_only, workers)
            return
        with cf.ThreadPoolExecutor(self.decode_workers, thread_name_prefix="fgresq-decode") as pool:
            pending = self._submit_batch(pool, work, it)
            while pending:
                decoded = [f.result() for f in pending]
                pending = self._submit_batch(pool, work, it)  # decode the next batch while the model runs
                yield from self._encoded(decoded, self._encode_decoded(decoded, term, self._encode_batch),
                                         features_only)

    def _one_core_workers(self) -> int:
        """Batches the backend may run at once one core each (0: not this backend, or it needs the lock)."""
        return int(getattr(self.backend, "one_core_workers", 0) or 0) if self.thread_safe else 0

    def _iter_one_core(self, it, work, term, features_only: bool, workers: int) -> Iterator[Encoded]:
        """More than one batch on a CPU backend that offers it: each worker thread decodes a whole batch and runs
        it on one core, `workers` batches at once, results in input order. On 2 cores this scored the embedded
        default's photos 12-15 % faster than decoding beside one batch spread over both cores (README, "Batches
        one core each"): the decoding and the naturalness term no longer fight the encoder's thread pool."""
        def batch_job(batch):
            decoded = [work(job) for job in batch]
            return decoded, self._encode_decoded(decoded, term, functools.partial(self._encode_batch, one_core=True))

        def next_batch():
            return list(itertools.islice(it, self.batch_size))

        with cf.ThreadPoolExecutor(workers, thread_name_prefix="fgresq-encode") as pool:
            pending: collections.deque = collections.deque()
            try:
                while True:
                    while len(pending) < 2 * workers and (batch := next_batch()):
                        pending.append(pool.submit(batch_job, batch))
                    if not pending:
                        return
                    yield from self._encoded(*pending.popleft().result(), features_only)
            finally:
                for f in pending:  # a caller that stops early does not wait for batches it will not read
                    f.cancel()

    @staticmethod
    def _encode_decoded(decoded: list, term, encode) -> tuple | None:
        """(features [G, D], scores [G]) of the decoded jobs without an error, by `encode`; None if none."""
        good = [d for d in decoded if d[3] is None]
        if not good:
            return None
        # Crops of one image are averaged: features exactly (the comparison head is linear in them, so this
        # averages the comparison logits), scores as the mean per-crop score.
        v = good[0][2].shape[0]
        q, sc = encode(np.concatenate([d[2] for d in good]))
        feats = q.reshape(len(good), v, -1).mean(axis=1)
        scores = sc.reshape(len(good), v).mean(axis=1)
        if term is not None:
            scores = term.fuse(scores, np.array([d[4] for d in good]))
        return feats, scores

    @staticmethod
    def _encoded(decoded: list, encoded: tuple | None, features_only: bool) -> Iterator[Encoded]:
        """The Encoded of each decoded job, in order: the batch's features and scores, or the job's error."""
        feats, scores = encoded if encoded is not None else (None, None)
        k = 0
        for idx, name, _, err, logd in decoded:
            if err is None:
                yield Encoded(idx, name, features=feats[k],
                              score=None if features_only else float(scores[k]), log_distance=logd)
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

    def describe(self) -> dict:
        return {"model": self.bundle.describe(), **self.backend.describe(), "thread_safe": self.thread_safe,
                "views": {"crops": self.crops, "flip": self.flip, "model_mirror": self.model_mirror},
                "naturalness": self.naturalness.describe() if self.naturalness is not None else None}


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
