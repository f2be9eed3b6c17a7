"""Assigning ground truth to anchors / proposals by IoU (Faster R-CNN §3.1.2 for the RPN, Fast R-CNN §2.3 for
the RoI heads); torchvision's ``Matcher``, detectron2's ``modeling/matcher.py``."""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS = -1, -2


def match(quality: Tensor, high: float, low: float, allow_low_quality_matches: bool = False) -> Tensor:
    """Best ground truth of each prediction from a (G, K) IoU matrix → (K,) int64: its index where the
    IoU is ≥ ``high``, ``BELOW_LOW_THRESHOLD`` where < ``low``, ``BETWEEN_THRESHOLDS`` in between.

    ``allow_low_quality_matches`` (the RPN's rule) also matches, for each ground truth, the predictions
    of highest IoU with it (ties included), so that every object has at least one positive anchor.
    """
    if quality.numel() == 0:
        raise ValueError(f"cannot match an IoU matrix of shape {tuple(quality.shape)}: no ground truth "
                         "or no predictions in an image")
    values, best = quality.max(dim=0)
    matches = best.clone()
    matches[values < low] = BELOW_LOW_THRESHOLD
    matches[(values >= low) & (values < high)] = BETWEEN_THRESHOLDS
    if allow_low_quality_matches:
        highest = quality.max(dim=1).values
        predictions = torch.where(quality == highest[:, None])[1]
        matches[predictions] = best[predictions]
    return matches


def label_proposals(proposals: list[Tensor], targets: list[dict[str, Tensor]], fg_iou_thresh: float,
                    bg_iou_thresh: float) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Per image: the RoIs (proposals (P,4) then the ground-truth boxes), their labels (the matched ground
    truth's class at IoU ≥ ``fg_iou_thresh``, 0 = background below ``bg_iou_thresh``, −1 between) and the
    index of the ground truth each is matched to (0 where there is none)."""
    rois, labels, matched = [], [], []
    for proposals_i, target in zip(proposals, targets):
        gt_boxes = target["boxes"].to(proposals_i.dtype)
        rois_i = torch.cat([proposals_i, gt_boxes])
        if len(gt_boxes):
            matches = match(box_iou(gt_boxes, rois_i), fg_iou_thresh, bg_iou_thresh)
            label = target["labels"][matches.clamp(min=0)]
        else:  # an image without objects: all background
            matches = torch.full((len(rois_i),), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=rois_i.device)
            label = torch.zeros_like(matches)
        label = label.masked_fill(matches == BELOW_LOW_THRESHOLD, 0).masked_fill(matches == BETWEEN_THRESHOLDS, -1)
        rois.append(rois_i)
        labels.append(label)
        matched.append(matches.clamp(min=0))
    return rois, labels, matched
