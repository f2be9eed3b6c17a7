"""Mask voting (Dai et al., MNC, arXiv:1512.04412 §4; FCIS arXiv:1611.07709 §3.2 "Inference"): a detection's
mask is the score-weighted average of the masks of all candidates of its class that overlap it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou


def resample_into(masks: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """Masks (V, m, m) over ``source`` boxes (V, 4) xyxy → (V, m, m) over ``target`` boxes (V, 4): each target
    cell centre is read bilinearly from the source mask (cells centred at (j + 0.5)/m of its box), zero
    outside the source box beyond half a cell."""
    m = masks.shape[-1]
    centres = (torch.arange(m, device=masks.device, dtype=masks.dtype) + 0.5) / m  # (m,) fractions of a box
    points = target[:, None, :2] + centres[None, :, None] * (target[:, None, 2:] - target[:, None, :2])  # (V, m, 2)
    normalised = 2 * (points - source[:, None, :2]) / (source[:, None, 2:] - source[:, None, :2]) - 1  # (x, y)
    grid = torch.stack(torch.broadcast_tensors(normalised[:, None, :, 0], normalised[:, :, None, 1]), -1)
    return F.grid_sample(masks[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def mask_voting(boxes: Tensor, labels: Tensor, pool_boxes: Tensor, pool_labels: Tensor, pool_scores: Tensor,
                pool_masks: Tensor, iou_thresh: float = 0.5) -> Tensor:
    """Voted masks (D, m, m) of detections (boxes (D, 4) xyxy, labels (D,)) from a pool of candidates (boxes
    (P, 4), labels (P,), scores (P,), mask probabilities (P, m, m), each over its own box): the average of the
    pool masks of the detection's class whose box has IoU ≥ ``iou_thresh`` with the detection's, weighted by
    their scores, each resampled into the detection's box (:func:`resample_into`). A detection taken from the
    pool votes for itself; one with no voter keeps 0."""
    votes = (box_iou(boxes, pool_boxes) >= iou_thresh) & (labels[:, None] == pool_labels[None, :])
    detection, voter = torch.where(votes)
    weights = pool_scores[voter]
    masks = resample_into(pool_masks[voter], pool_boxes[voter], boxes[detection]) * weights[:, None, None]
    total = pool_masks.new_zeros(len(boxes), *pool_masks.shape[1:]).index_add_(0, detection, masks)
    weight = pool_scores.new_zeros(len(boxes)).index_add_(0, detection, weights)
    return total / weight.clamp_min(torch.finfo(weight.dtype).tiny)[:, None, None]
