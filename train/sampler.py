"""Batch samplers: scene-aware batches of pairs (stage 2) and plain shuffled batches (stage 1).

The paper groups samples of one source dataset (scene) in each batch "to ensure training stability";
the fidelity loss only compares items within a scene, so a one-scene batch makes every pair count.

Both samplers are deterministic functions of (seed, epoch): call ``set_epoch(e)`` before iterating
(``iter_epoch(e)`` does both). Shuffling uses numpy's PCG64 seeded with [seed, epoch], independent of any
global RNG, so a resumed run sees exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

from typing import Hashable, Iterator, Sequence

import numpy as np

__all__ = ["SceneBatchSampler", "ShuffledBatchSampler"]


class _EpochBatches:
    """Epoch bookkeeping shared by the samplers: `batches(epoch)` depends only on (seed, epoch)."""

    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def iter_epoch(self, epoch: int) -> Iterator[list[int]]:
        self.set_epoch(epoch)
        return iter(self)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def batches(self, epoch: int | None = None) -> list[list[int]]:  # pragma: no cover - abstract
        raise NotImplementedError


class SceneBatchSampler(_EpochBatches):
    """Yields lists of pair indices; every batch holds pairs of one scene only.

    Each epoch the pairs of every scene are shuffled and cut into batches of ``batch_size`` (a scene's last
    batch may be smaller unless ``drop_last``), then the order of all batches is shuffled across scenes.
    Without ``drop_last`` every pair appears exactly once per epoch.
    """

    def __init__(self, scenes: Sequence[Hashable], batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.scenes = list(scenes)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        groups: dict[Hashable, list[int]] = {}
        for i, s in enumerate(self.scenes):
            groups.setdefault(s, []).append(i)
        # Sorted by scene name so the batches never depend on dict or manifest order accidents.
        self.groups = {s: np.asarray(groups[s], dtype=np.int64) for s in sorted(groups, key=str)}

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        out: list[list[int]] = []
        for idx in self.groups.values():
            idx = rng.permutation(idx) if self.shuffle else idx
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                if self.drop_last and len(chunk) < self.batch_size:
                    continue
                out.append([int(x) for x in chunk])
        if self.shuffle:
            out = [out[k] for k in rng.permutation(len(out))]
        return out

    def __len__(self) -> int:
        if self.drop_last:
            return sum(len(g) // self.batch_size for g in self.groups.values())
        return sum(-(-len(g) // self.batch_size) for g in self.groups.values())


class ShuffledBatchSampler(_EpochBatches):
    """Seeded, epoch-dependent shuffled batches of range(n) (stage 1, image level)."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch = 0

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        epoch = self.epoch if epoch is None else int(epoch)
        order = np.random.default_rng([self.seed, epoch, 1]).permutation(self.n) if self.shuffle \
            else np.arange(self.n)
        out = [[int(x) for x in order[s:s + self.batch_size]] for s in range(0, self.n, self.batch_size)]
        if self.drop_last and out and len(out[-1]) < self.batch_size:
            out.pop()
        return out

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)
