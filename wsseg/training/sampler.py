"""Seeded, sharded, resumable data order and per-sample augmentation seeds for the training engine."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["ResumableDistributedSampler", "SeededSamples", "collate_samples"]


class ResumableDistributedSampler(DistributedSampler):
    """:class:`~torch.utils.data.DistributedSampler` that can start mid-epoch and tags each index with its epoch.

    The order of epoch ``e`` is torch's ``DistributedSampler`` order: ``randperm(n)`` from a generator
    seeded with ``seed + e``, the tail dropped so that it splits evenly, rank ``r`` taking positions
    ``r, r + R, ...``. :meth:`set_start` skips the first ``start`` indices of this rank's share (the
    batches already trained on before a resume) without loading them. Items are ``(index, epoch)``
    pairs, which :class:`SeededSamples` turns into an augmentation seed. A single process is
    ``num_replicas=1, rank=0`` (no process group needed).

    Args:
        dataset: the training dataset (only its length is used).
        num_replicas, rank: the DDP world size and this process's rank.
        seed: the run's seed.
        shuffle: shuffle each epoch (default True).

    Example:
        >>> s = ResumableDistributedSampler(range(6), num_replicas=2, rank=1, seed=0)
        >>> s.set_epoch(3)
        >>> full = list(s)
        >>> s.set_start(1)
        >>> list(s) == full[1:], {e for _, e in full}, len(full)
        (True, {3}, 3)
    """

    def __init__(self, dataset: Any, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=True)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this rank's share in the current epoch."""
        if not 0 <= int(start) <= self.num_samples:
            raise ValueError(f"start: expected an int in [0, {self.num_samples}], got {start}")
        self.start = int(start)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())[self.start:]
        return iter([(int(i), int(self.epoch)) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


class SeededSamples(Dataset):
    """Dataset view whose item ``(index, epoch)`` is ``dataset`` item ``index`` augmented with the seed
    ``(seed, epoch, index)``.

    Each sample's random rescale/flip/crop then depends only on the run's seed, the epoch and the
    image, not on the worker process, the rank or what was loaded before, so a resumed run or a run
    with another ``num_workers`` sees exactly the same crops. The dataset must provide
    ``sample(index, rng)`` (every :class:`~wsseg.data.SegmentationDataset` does).

    Args:
        dataset: a :class:`~wsseg.data.SegmentationDataset`.
        seed: the run's seed.

    Example:
        >>> from wsseg.data import SyntheticShapes, train_transform
        >>> ds = SeededSamples(SyntheticShapes(num_images=4, size=32, transform=train_transform(16)), seed=1)
        >>> a, b, c = ds[(2, 0)], ds[(2, 0)], ds[(2, 1)]
        >>> bool((a["image"] == b["image"]).all()), bool((a["image"] == c["image"]).all())
        (True, False)
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        if not callable(getattr(dataset, "sample", None)):
            raise TypeError(f"dataset: expected a dataset with sample(index, rng), got {type(dataset).__name__}")
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        if not isinstance(key, Sequence) or len(key) != 2:
            raise TypeError(f"key: expected an (index, epoch) pair, got {key!r}")
        index, epoch = (int(k) for k in key)
        return self.dataset.sample(index, rng=np.random.default_rng([self.seed, epoch, index]))


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` of wsseg samples, dropping the per-sample crop ``box`` (not needed in training)."""
    return torch.utils.data.default_collate([{k: v for k, v in s.items() if k != "box"} for s in samples])
