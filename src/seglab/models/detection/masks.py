"""Instance masks relative to boxes, as every RoI-based mask head uses them: training targets cropped from the
ground-truth masks to each RoI, and m×m RoI masks pasted back into the image (torchvision's rules)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...ops import roi_align


def mask_targets(gt_masks: Tensor, proposals: Tensor, matched: Tensor, size: int) -> Tensor:
    """The matched ground-truth masks (G,H,W) cropped and resized to each proposal (P,4) by RoIAlign
    (sampling adaptive, not aligned: torchvision's targets) → (P, size, size) in [0, 1]."""
    rois = torch.cat([matched[:, None].to(proposals), proposals], 1)
    return roi_align(gt_masks[:, None].to(rois), rois, (size, size), 1.0)[:, 0]


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
