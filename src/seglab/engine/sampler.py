"""A data order that can be resumed exactly: batches of ``(epoch, index)`` keys, augmentation seeded per key.

Each epoch is a permutation drawn from ``(seed, epoch)``, and each sample's random augmentation is drawn
from ``(seed, epoch, index)``. Training position is therefore just ``(epoch, batch)``: resuming skips the
consumed batches without loading them and sees the same images, augmented the same way, in any number
of DataLoader workers. ``aspect_ratio_groups`` gives the group ids that keep a batch to one aspect ratio.
"""
from __future__ import annotations

import bisect
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset


def _height_and_width(dataset: Any, index: int) -> tuple[int, int]:
    if isinstance(dataset, Subset):
        return _height_and_width(dataset.dataset, dataset.indices[index])
    if hasattr(dataset, "get_height_and_width"):
        return dataset.get_height_and_width(index)
    image = dataset[index][0]  # fallback: read the item (slow: decodes the image)
    return tuple(image.shape[-2:])


def aspect_ratio_groups(dataset: Any, k: int = 0) -> list[int]:
    """Group id of every item by its aspect ratio width / height (torchvision's reference
    ``create_aspect_ratio_groups``): bin edges ``2 ** linspace(-1, 1, 2k + 1)`` (``[1.0]`` for k = 0, i.e.
    tall < 1 <= wide), group = number of edges <= the ratio, so ids run 0..2k+1 (0..1 for k = 0).

    Sizes come from ``dataset.get_height_and_width(i)`` when it exists (through ``Subset``), else
    from reading each item.
    """
    if k < 0:
        raise ValueError(f"aspect ratio group factor k must be >= 0, got {k}")
    edges = (2 ** np.linspace(-1, 1, 2 * k + 1)).tolist() if k > 0 else [1.0]
    groups = []
    for index in range(len(dataset)):
        height, width = _height_and_width(dataset, index)
        groups.append(bisect.bisect_right(edges, width / height))
    return groups


class EpochBatchSampler:
    """Endless batches of ``(epoch, index)`` keys, dropping each epoch's last incomplete batch.

    Under data parallelism the epoch is cut into global batches of ``batch_size × num_replicas`` and
    replica ``rank`` takes slice ``rank`` of each: the replicas together see exactly the batches that a
    single process with the combined batch size would see, for any number of replicas.

    Args:
        num_samples: dataset length.
        batch_size: samples per batch and replica (× ``num_replicas`` ≤ ``num_samples``).
        seed: base seed of the permutations.
        start: ``(epoch, batch)`` to start from (as returned by ``position(step)``).
        groups: optional group id per sample (e.g. ``aspect_ratio_groups(dataset)``): every batch then holds
            one group only, as detection training groups images by aspect ratio; each group drops its
            own incomplete batch and the epoch's batches are shuffled.
        rank, num_replicas: this replica and the number of replicas (torchrun's rank and world size).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, start: tuple[int, int] = (0, 0),
                 groups: Sequence[int] | None = None, rank: int = 0, num_replicas: int = 1):
        if batch_size * num_replicas > num_samples:
            raise ValueError(f"batch size {batch_size} × {num_replicas} processes exceeds the {num_samples} "
                             f"training samples")
        self.num_samples, self.seed, self.start = num_samples, seed, start
        self.batch_size, self.local_batch, self.rank = batch_size * num_replicas, batch_size, rank  # global, own
        self.groups = None if groups is None else torch.as_tensor(groups)
        if self.groups is not None and self.batches_per_epoch == 0:
            raise ValueError(f"no aspect-ratio group holds a batch of {self.batch_size} samples")

    @property
    def batches_per_epoch(self) -> int:
        if self.groups is None:
            return self.num_samples // self.batch_size
        return int((torch.bincount(self.groups) // self.batch_size).sum())

    def _epoch(self, epoch: int) -> list[torch.Tensor]:
        """The batches (index tensors) of one epoch, a function of ``(seed, epoch)``."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        size = self.batch_size
        if self.groups is None:
            return [order[b * size:(b + 1) * size] for b in range(self.batches_per_epoch)]
        batches = []
        for group in torch.unique(self.groups):
            members = order[self.groups[order] == group]
            batches += [members[b * size:(b + 1) * size] for b in range(len(members) // size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=generator)]

    def position(self, step: int) -> tuple[int, int]:
        """``(epoch, batch)`` of the ``step``-th batch counted from zero."""
        return divmod(step, self.batches_per_epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, batch = self.start
        while True:
            for chunk in self._epoch(epoch)[batch:]:
                mine = chunk[self.rank * self.local_batch:(self.rank + 1) * self.local_batch]
                yield [(epoch, int(i)) for i in mine]
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
