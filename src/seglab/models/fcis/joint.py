"""FCIS's joint formulation (Li et al., arXiv:1611.07709 §3.1, Fig. 1): one set of assembled inside/outside
score maps per class gives both the mask and the detection score of an RoI."""
from __future__ import annotations

import torch
from torch import Tensor

OUTSIDE, INSIDE = 0, 1  # the side order of the reference code (msracver/FCIS): softmax label 1 is "in the mask"


def joint_scores(assembled: Tensor) -> tuple[Tensor, Tensor]:
    """Assembled scores (K, C, 2, m, m) — side 0 "outside", 1 "inside", per class incl. the background —
    → class logits (K, C) and mask logits (K, C, m, m).

    Mask: per pixel, softmax over (outside, inside); its inside probability is sigmoid(inside − outside),
    so the mask logit is that difference. Detection: per pixel, max over (inside, outside), then the mean
    over the RoI is the class logit (softmax over classes gives the detection score).
    """
    outside, inside = assembled[:, :, OUTSIDE], assembled[:, :, INSIDE]
    return torch.maximum(inside, outside).mean((-2, -1)), inside - outside
