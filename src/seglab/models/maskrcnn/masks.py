"""Mask R-CNN's mask branch (He et al., arXiv:1703.06870 §3, Fig. 4 right): the FCN head on 14×14 RoI
features, its loss and its per-class probabilities (targets and pasting: ``detection.masks``)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..detection.masks import mask_targets


class MaskRCNNHeads(nn.Sequential):
    """3×3 conv + ReLU per entry of ``layers`` (the paper: four of 256 channels). (K,C,14,14) → (K,layers[-1],14,14).
    Keys ``N.0`` (torchvision)."""

    def __init__(self, in_channels: int, layers: Sequence[int], dilation: int = 1):
        blocks, channels = [], in_channels
        for width in layers:
            blocks.append(nn.Sequential(nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation),
                                        nn.ReLU(inplace=True)))
            channels = width
        super().__init__(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class MaskRCNNPredictor(nn.Sequential):
    """2× deconvolution + ReLU, then a 1×1 conv to one mask logit map per class (the K·m² output, §3), or a
    single class-agnostic map (``num_classes=1``). (K,C,14,14) → (K,num_classes,28,28).

    Mask predictors are called with the RoI features and the box predictor (which Mask^X R-CNN's reads
    its class weights from; this one ignores it)."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int):
        super().__init__(OrderedDict([("conv5_mask", nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2)),
                                      ("relu", nn.ReLU(inplace=True)),
                                      ("mask_fcn_logits", nn.Conv2d(dim_reduced, num_classes, 1))]))
        for name, parameter in self.named_parameters():
            if "weight" in name:  # biases keep PyTorch's default, as torchvision's
                nn.init.kaiming_normal_(parameter, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor, box_predictor: nn.Module | None = None) -> Tensor:
        return super().forward(x)


def mask_loss(logits: Tensor, proposals: list[Tensor], gt_masks: list[Tensor], gt_labels: list[Tensor],
              matched: list[Tensor]) -> Tensor:
    """Average binary cross-entropy (§3, L_mask) of the logits (P,K,m,m) of the positive proposals, on the
    map of each one's ground-truth class only (no competition between classes); 0 without proposals."""
    size = logits.shape[-1]
    labels = torch.cat([labels[m] for labels, m in zip(gt_labels, matched)])
    targets = torch.cat([mask_targets(g, p, m, size) for g, p, m in zip(gt_masks, proposals, matched)])
    if targets.numel() == 0:
        return logits.sum() * 0
    return F.binary_cross_entropy_with_logits(_class_maps(logits, labels), targets)


def class_masks(logits: Tensor, labels: Tensor) -> Tensor:
    """Probabilities (K,1,m,m) of each detection's predicted class from the logits (K,C,m,m)."""
    return _class_maps(logits, labels)[:, None].sigmoid()


def _class_maps(logits: Tensor, labels: Tensor) -> Tensor:
    """(K,m,m): the map of each RoI's class, or the only map of class-agnostic logits (K,1,m,m)."""
    index = labels if logits.shape[1] > 1 else torch.zeros_like(labels)
    return logits[torch.arange(labels.shape[0], device=labels.device), index]
