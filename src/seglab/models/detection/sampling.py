"""Choosing the anchors / RoIs a loss is computed on: balanced random mini-batches (Faster R-CNN §3.1.3, Fast
R-CNN §2.3; torchvision's ``BalancedPositiveNegativeSampler``) or the hardest examples (OHEM)."""
from __future__ import annotations

import torch
from torch import Tensor


def sample_balanced(labels: list[Tensor], batch_size_per_image: int, positive_fraction: float
                    ) -> tuple[list[Tensor], list[Tensor]]:
    """Per image, at most ``batch_size_per_image`` labels (K,) drawn at random: positives (label ≥ 1) up
    to ``positive_fraction`` of the batch, negatives (label 0) filling the rest; −1 is ignored.

    Returns boolean masks (K,) of the chosen positives and negatives per image. The draws (``randperm``
    of the positives, then of the negatives, image by image) follow torchvision's, so a seeded run
    samples what torchvision samples.
    """
    positives, negatives = [], []
    for labels_in_image in labels:
        positive = torch.where(labels_in_image >= 1)[0]
        negative = torch.where(labels_in_image == 0)[0]
        num_pos = min(positive.numel(), int(batch_size_per_image * positive_fraction))
        num_neg = min(negative.numel(), batch_size_per_image - num_pos)
        chosen = [positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]],
                  negative[torch.randperm(negative.numel(), device=negative.device)[:num_neg]]]
        for masks, indices in zip((positives, negatives), chosen):
            mask = torch.zeros_like(labels_in_image, dtype=torch.bool)
            mask[indices] = True
            masks.append(mask)
    return positives, negatives


def ohem_select(losses: Tensor, counts: list[int], batch_size_per_image: int) -> Tensor:
    """Online hard example mining over RoIs (Shrivastava et al. arXiv:1604.03540; FCIS §3.2): indices into
    the concatenated per-RoI ``losses`` (K,) of the ``batch_size_per_image`` highest of each image, whose RoIs
    come ``counts`` at a time."""
    keep, start = [], 0
    for image_losses in losses.split(counts):
        keep.append(image_losses.topk(min(batch_size_per_image, len(image_losses))).indices + start)
        start += len(image_losses)
    return torch.cat(keep) if keep else losses.new_zeros(0, dtype=torch.int64)
