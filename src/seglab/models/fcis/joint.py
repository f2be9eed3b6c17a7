"""FCIS's joint formulation (Li et al., arXiv:1611.07709 §3.1, Fig. 1): one set of assembled inside/outside
score maps per class gives both the mask and the detection score of an RoI, and OHEM's RoI selection (§3.2)."""
from __future__ import annotations

import torch
from torch import Tensor


def joint_scores(assembled: Tensor) -> tuple[Tensor, Tensor]:
    """Assembled scores (K, C, 2, m, m) — channel 0 "inside", 1 "outside", per class incl. the background —
    → class logits (K, C) and mask logits (K, C, m, m).

    Mask: per pixel, softmax over (inside, outside); its inside probability is sigmoid(inside − outside),
    so the mask logit is that difference. Detection: per pixel, max over (inside, outside), then the mean
    over the RoI is the class logit (softmax over classes gives the detection score).
    """
    inside, outside = assembled.unbind(2)
    return torch.maximum(inside, outside).mean((-2, -1)), inside - outside


def ohem_select(losses: Tensor, counts: list[int], batch_size_per_image: int) -> Tensor:
    """Online hard example mining over RoIs (§3.2, from Shrivastava et al. arXiv:1604.03540): indices into
    the concatenated per-RoI ``losses`` (K,) of the ``batch_size_per_image`` highest of each image, whose RoIs
    come ``counts`` at a time."""
    keep, start = [], 0
    for image_losses in losses.split(counts):
        keep.append(image_losses.topk(min(batch_size_per_image, len(image_losses))).indices + start)
        start += len(image_losses)
    return torch.cat(keep) if keep else losses.new_zeros(0, dtype=torch.int64)
