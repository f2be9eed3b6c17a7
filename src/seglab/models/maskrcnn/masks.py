"""Mask R-CNN's mask branch (He et al., arXiv:1703.06870 §3, Fig. 4 right): the FCN head on 14×14 RoI
features, its training targets and loss, and pasting its 28×28 outputs into the image."""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops import roi_align


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


def mask_targets(gt_masks: Tensor, proposals: Tensor, matched: Tensor, size: int) -> Tensor:
    """The matched ground-truth masks (G,H,W) cropped and resized to each proposal (P,4) by RoIAlign
    (sampling adaptive, not aligned: torchvision's targets) → (P, size, size) in [0, 1]."""
    rois = torch.cat([matched[:, None].to(proposals), proposals], 1)
    return roi_align(gt_masks[:, None].to(rois), rois, (size, size), 1.0)[:, 0]


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


def expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Boxes (K,4) xyxy scaled by ``scale`` about their centres."""
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    centre = (boxes[:, 2:] + boxes[:, :2]) * 0.5
    return torch.cat([centre - half, centre + half], 1)


def _resize_matrix(start: Tensor, end: Tensor, size: int, length: int) -> Tensor:
    """(K, length, size): row x resamples ``size`` values bilinearly (``align_corners=False``) onto pixel x of
    the span start..end (inclusive integers, at least 1 pixel) of an axis of ``length`` pixels; rows outside
    the span are zero. PyTorch's ``interpolate`` arithmetic (float32 scale, source index clamped at 0)."""
    span = (end - start + 1).clamp(min=1)
    offset = torch.arange(length, device=start.device)[None] - start[:, None]  # (K, length) index in the span
    scale = torch.tensor(float(size), device=start.device) / span.to(torch.float32)
    source = ((offset.to(torch.float32) + 0.5) * scale[:, None] - 0.5).clamp(min=0)
    low = source.floor().long().clamp(max=size - 1)  # the clamp only matters outside the span (zeroed below)
    frac = source - low
    high = (low + 1).clamp(max=size - 1)
    weights = F.one_hot(low, size) * (1 - frac)[..., None] + F.one_hot(high, size) * frac[..., None]
    inside = (offset >= 0) & (offset <= end[:, None] - start[:, None])
    return weights * inside[..., None]


def paste_masks_in_image(masks: Tensor, boxes: Tensor, image_size: tuple[int, int], padding: int = 1) -> Tensor:
    """Masks (K,1,m,m) of boxes (K,4) xyxy in image pixels → (K,1,H,W) image-sized maps, torchvision's rule:
    pad each mask by ``padding`` zeros and grow its box by (m+2·padding)/m (so the border interpolates to 0),
    truncate the box to integers x0..x1 (inclusive), resize the mask bilinearly to that span and write it
    there. Bilinear resizing is separable, so each mask is pasted with two matrix products, no loop."""
    m = masks.shape[-1]
    padded = F.pad(masks[:, 0], (padding,) * 4)
    boxes = expand_boxes(boxes, (m + 2 * padding) / m).to(torch.int64)
    height, width = image_size
    rows = _resize_matrix(boxes[:, 1], boxes[:, 3], m + 2 * padding, height).to(masks.dtype)
    cols = _resize_matrix(boxes[:, 0], boxes[:, 2], m + 2 * padding, width).to(masks.dtype)
    return (rows @ padded @ cols.transpose(1, 2))[:, None]
