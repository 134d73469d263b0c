"""Datasets over a Manifest: pairs of images (stage 2) and single images with their task (stage 1).

Transforms (both follow the model config's ``preprocess`` spec, docs/preprocess-spec.md)
* train: decode → resize to ``resize``×``resize`` (aspect ignored) with the spec's resize method (Pillow
  bilinear for the legacy form, as the release's loader does) → random ``crop``×``crop`` crop (+ optional
  horizontal flip) → the spec's normalisation. The two images of a pair always get the same crop box and
  flip, so the fine differences a comparison is about line up.
* eval: decode → the spec's resize + crop + normalisation, i.e. exactly what inference feeds the model
  (``fgresq_sdk.preprocess.preprocess``; for the legacy form a plain resize to the model's input size).

Crop boxes come from numpy's PCG64 seeded with [seed, epoch, index]: no global RNG, no worker state, so the
augmentation of an epoch is reproducible and a resumed run sees the same crops. Call ``set_epoch``.

Decoded images (after the deterministic resize, as uint8) are kept in memory up to ``cache_mb`` MiB, which
holds a few thousand 256-px images and makes CPU epochs after the first one decode-free. With DataLoader
workers, ``prefill()`` fills the cache in the main process first so that the forked workers share it (a
worker's own additions die with it at the end of each epoch).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from fgresq_sdk.preprocess import CLIP_MEAN, CLIP_STD
from fgresq_sdk.errors import BundleError
from fgresq_sdk.preprocess import PreprocessSpec, Step, load_image, normalize

from .losses import LABEL_INDEX
from .manifest import TASKS

__all__ = ["TransformSpec", "ImageCache", "PairDataset", "ImageTaskDataset", "scene_codes",
           "task_index", "view_batches", "read_ahead"]


def task_index(task: str) -> int:
    try:
        return TASKS.index(task)
    except ValueError:
        raise ValueError(f"unknown restoration task {task!r} (known: {', '.join(TASKS)})") from None


def scene_codes(manifest) -> dict[str, int]:
    """Scene name → int, over the manifest's declared scenes and the scenes its images use (sorted)."""
    names = set(getattr(manifest, "scenes", {}) or {}) | {rec.scene for rec in manifest.images.values()}
    return {name: i for i, name in enumerate(sorted(names))}


class TransformSpec:
    """Sizes and normalisation shared by the datasets (built from a model config + the data section).

    ``pre`` is the model's preprocess spec: eval images go through it exactly (``eval_view``); training
    images are resized with its resize method to ``resize``×``resize`` (``train_view``) and then randomly
    cropped. Without ``pre``, the legacy spec at ``size`` with ``mean``/``std``.
    """

    def __init__(self, size: int = 224, resize: int = 256, crop: int | None = None, hflip: bool = False,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 pre: PreprocessSpec | dict | None = None):
        self.size = int(size)
        self.resize = int(resize)
        self.crop = int(crop if crop is not None else size)
        self.hflip = bool(hflip)
        if pre is None:
            pre = PreprocessSpec.legacy(self.size, mean, std)
        try:
            self.pre = PreprocessSpec.coerce(pre)
        except BundleError as exc:
            raise ValueError(f"model config: {exc}") from None
        self.mean, self.std = self.pre.mean, self.pre.std
        if self.pre.size != self.size:
            raise ValueError(f"preprocess.size ({self.pre.size}) must equal the model input size ({self.size})")
        if self.resize < self.crop:
            raise ValueError(f"resize ({self.resize}) must be at least the crop size ({self.crop})")
        if self.crop != self.size:
            raise ValueError(f"crop ({self.crop}) must equal the model input size ({self.size})")
        # Training view: the spec's resize method at resize×resize, uncropped (the random crop comes later).
        self.train_view = PreprocessSpec(self.resize, Step(self.pre.resize.method, (self.resize, self.resize)),
                                         None, self.pre.mean, self.pre.std)

    @property
    def center_crop_view(self) -> PreprocessSpec:
        """The training views' geometry as an inference spec: ``train_view``'s resize, then the centre
        crop×crop. Random training crops see the image at that scale; the compact configs' legacy spec squashes
        it to crop×crop instead (0.875× at 256 → 224), which softens exactly the fine residue the model compares
        (data.eval_view "center-crop", train/config.py)."""
        return PreprocessSpec(self.size, self.train_view.resize, Step("center", (self.crop, self.crop)),
                              self.pre.mean, self.pre.std)

    @property
    def eval_view(self) -> PreprocessSpec:
        return self.pre

    @classmethod
    def from_config(cls, model_cfg: dict, data_cfg: dict | None = None) -> "TransformSpec":
        try:
            pre = PreprocessSpec.from_dict(model_cfg.get("preprocess", {}))
        except BundleError as exc:
            raise ValueError(f"model config {model_cfg.get('name', '?')}: {exc}") from None
        data = data_cfg or {}
        size = pre.size
        return cls(size=size, resize=int(data.get("resize", size)), crop=int(data.get("crop", size)),
                   hflip=bool(data.get("hflip", False)), pre=pre)


class ImageCache:
    """Decoded uint8 views (a spec's resize + crop) keyed by (path, view), kept until ``max_mb`` MiB are used."""

    def __init__(self, max_mb: float = 2048.0):
        self.max_bytes = int(max_mb * 2**20)
        self.used = 0
        self._store: dict[tuple[str, Any], np.ndarray] = {}

    def get(self, path: Path, view: "int | PreprocessSpec") -> Image.Image:
        """The image at `path` through `view`'s resize and crop (an int S: the legacy squash to S×S)."""
        spec = view if isinstance(view, PreprocessSpec) else PreprocessSpec.legacy(int(view))
        key = (str(path), spec.resize, spec.crop)
        arr = self._store.get(key)
        if arr is None:
            arr = np.ascontiguousarray(spec.view(load_image(path)))
            if self.used + arr.nbytes <= self.max_bytes:
                self._store[key] = arr
                self.used += arr.nbytes
        return Image.fromarray(arr)

    def __len__(self) -> int:
        return len(self._store)


def _to_tensor(img: Image.Image, spec: TransformSpec) -> torch.Tensor:
    return torch.from_numpy(normalize(img, spec.size, spec.mean, spec.std))


def view_batches(manifest, ids: Sequence[str], spec: TransformSpec, cache: "ImageCache | None" = None,
                 batch_size: int = 32) -> Iterator[torch.Tensor]:
    """The normalised eval views of `ids`, in order, `batch_size` at a time. Why: every step that reads a
    trained model over a manifest (validation, calibration, the prior's fit) must feed it exactly what inference
    feeds it, and from one loader, so a change to the view reaches them all."""
    cache = cache if cache is not None else ImageCache(0)
    batches = (torch.stack([_to_tensor(cache.get(manifest.image_path(k), spec.eval_view), spec)
                            for k in ids[s:s + batch_size]]) for s in range(0, len(ids), batch_size))
    yield from read_ahead(batches)


def read_ahead(items: Iterator, depth: int = 2) -> Iterator:
    """`items` in order, made up to `depth` ahead in a background thread. Why: decoding (PIL and numpy release
    the GIL) then overlaps the model's work on the batch before; 5-8 % less time for the prior's statistics and
    the towers' features on 2 cores, the values bit for bit the same (the same batches, made elsewhere). An error
    in `items` is raised here, at its place in the order; a consumer that stops early stops the thread."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def produce():  # a put blocked on a full queue is freed by the consumer's drain below, then sees the stop
        try:
            for item in items:
                q.put((item, None))
                if stop.is_set():
                    return
            q.put((end, None))
        except BaseException as exc:  # handed to the consumer, raised in its thread
            q.put((end, exc))

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is end:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # drain so a producer blocked on a full queue sees the stop
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


def _aug_params(seed: int, epoch: int, index: int, spec: TransformSpec) -> tuple[int, int, bool]:
    rng = np.random.default_rng([seed, epoch, index, 7])
    span = spec.resize - spec.crop
    x, y = (int(v) for v in rng.integers(0, span + 1, size=2))
    flip = bool(spec.hflip and rng.random() < 0.5)
    return x, y, flip


def _augment(img: Image.Image, params: tuple[int, int, bool], spec: TransformSpec) -> Image.Image:
    x, y, flip = params
    img = img.crop((x, y, x + spec.crop, y + spec.crop))
    return img.transpose(Image.FLIP_LEFT_RIGHT) if flip else img


class _Base(Dataset):
    def __init__(self, manifest, spec: TransformSpec, train: bool, seed: int, cache: ImageCache | None):
        self.manifest = manifest
        self.spec = spec
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0
        self.cache = cache if cache is not None else ImageCache(0)
        self.image_ids = sorted(manifest.images)
        self.image_index = {k: i for i, k in enumerate(self.image_ids)}
        self.scene_index = scene_codes(manifest)
        self.content_index = {c: i for i, c in enumerate(sorted({r.content_id for r in manifest.images.values()}))}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def prefill(self) -> int:
        """Decode every image this dataset reads into the cache now (before DataLoader workers fork, so
        they share it); returns how many are cached."""
        for image_id in self._ids_used():
            self._image(image_id)
        return len(self.cache)

    def _ids_used(self) -> list[str]:
        return self.image_ids

    def _image(self, image_id: str) -> Image.Image:
        view = self.spec.train_view if self.train else self.spec.eval_view
        return self.cache.get(self.manifest.image_path(image_id), view)


class PairDataset(_Base):
    """Item k is manifest.pairs[k]: both images (same crop/flip in training), MOS, scene, label."""

    def __init__(self, manifest, spec: TransformSpec, train: bool = True, seed: int = 0,
                 cache: ImageCache | None = None):
        super().__init__(manifest, spec, train, seed, cache)
        self.pairs = list(manifest.pairs)
        for p in self.pairs:
            if p.label not in LABEL_INDEX:
                raise ValueError(f"pair {p.a} / {p.b}: unknown label {p.label!r}")
            for k in (p.a, p.b):
                if k not in manifest.images:
                    raise ValueError(f"pair {p.a} / {p.b}: image {k!r} not in the manifest")

    def _ids_used(self) -> list[str]:
        return sorted({k for p in self.pairs for k in (p.a, p.b)})

    @property
    def pair_scenes(self) -> list[str]:
        """The scene of every pair (the scene of its first image), for SceneBatchSampler."""
        return [self.manifest.images[p.a].scene for p in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict[str, Any]:
        p = self.pairs[k]
        ra, rb = self.manifest.images[p.a], self.manifest.images[p.b]
        ia, ib = self._image(p.a), self._image(p.b)
        if self.train:
            params = _aug_params(self.seed, self.epoch, k, self.spec)
            ia, ib = _augment(ia, params, self.spec), _augment(ib, params, self.spec)
        return {
            "a": _to_tensor(ia, self.spec), "b": _to_tensor(ib, self.spec),
            "mos_a": torch.tensor(float(ra.mos), dtype=torch.float32),
            "mos_b": torch.tensor(float(rb.mos), dtype=torch.float32),
            "unit_a": torch.tensor(self.manifest.unit_quality(p.a), dtype=torch.float32),
            "unit_b": torch.tensor(self.manifest.unit_quality(p.b), dtype=torch.float32),
            "scene": self.scene_index[ra.scene],
            "content": self.content_index[ra.content_id],
            "label": LABEL_INDEX[p.label],
            "id_a": self.image_index[p.a], "id_b": self.image_index[p.b],
            "index": k,
        }


class ImageTaskDataset(_Base):
    """Single images with their restoration-task index (stage 1, degradation-aware feature learning)."""

    def __init__(self, manifest, spec: TransformSpec, train: bool = True, seed: int = 0,
                 cache: ImageCache | None = None, image_ids: Sequence[str] | None = None):
        super().__init__(manifest, spec, train, seed, cache)
        self.items = list(image_ids) if image_ids is not None else list(self.image_ids)
        self.tasks = [task_index(manifest.images[k].task) for k in self.items]

    def _ids_used(self) -> list[str]:
        return list(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict[str, Any]:
        image_id = self.items[k]
        img = self._image(image_id)
        if self.train:
            img = _augment(img, _aug_params(self.seed, self.epoch, k, self.spec), self.spec)
        return {"image": _to_tensor(img, self.spec), "task": self.tasks[k],
                "scene": self.scene_index[self.manifest.images[image_id].scene], "index": k}
