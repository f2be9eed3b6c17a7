"""A data order that can be resumed exactly: batches of ``(epoch, index)`` keys, augmentation seeded per key.

Each epoch is a permutation drawn from ``(seed, epoch)``, and each sample's random augmentation is drawn
from ``(seed, epoch, index)``. Training position is therefore just ``(epoch, batch)``: resuming skips the
consumed batches without loading them and sees the same images, augmented the same way, in any number
of DataLoader workers.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import Dataset


class EpochBatchSampler:
    """Endless batches of ``(epoch, index)`` keys, dropping each epoch's last incomplete batch.

    Args:
        num_samples: dataset length.
        batch_size: samples per batch (≤ ``num_samples``).
        seed: base seed of the permutations.
        start: ``(epoch, batch)`` to start from (as returned by ``position(step)``).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, start: tuple[int, int] = (0, 0)):
        if batch_size > num_samples:
            raise ValueError(f"batch size {batch_size} exceeds the {num_samples} training samples")
        self.num_samples, self.batch_size, self.seed, self.start = num_samples, batch_size, seed, start

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def position(self, step: int) -> tuple[int, int]:
        """``(epoch, batch)`` of the ``step``-th batch counted from zero."""
        return divmod(step, self.batches_per_epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, batch = self.start
        while True:
            order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + epoch))
            for b in range(batch, self.batches_per_epoch):
                chunk = order[b * self.batch_size:(b + 1) * self.batch_size]
                yield [(epoch, int(i)) for i in chunk]
            epoch, batch = epoch + 1, 0


class SeededTransforms(Dataset):
    """Wraps a dataset (without transforms) so that ``self[(epoch, index)]`` applies ``transforms`` with
    the torch RNG seeded from ``(seed, epoch, index)``; the global RNG is left untouched."""

    def __init__(self, dataset: Dataset, transforms: Callable, seed: int):
        self.dataset, self.transforms, self.seed = dataset, transforms, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        image, target = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, epoch, index)) & 0x7FFF_FFFF_FFFF_FFFF)
            return self.transforms(image, target)
