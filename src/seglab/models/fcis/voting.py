"""Mask voting (Dai et al., MNC, arXiv:1512.04412 §4; FCIS arXiv:1611.07709 §3.2 "Inference"): a detection's
mask is the score-weighted average, in image pixels, of the masks of every candidate RoI that overlaps it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from ..detection import paste_masks_in_image

VOTING = ("paper", "reference")


def mask_voting(boxes: Tensor, labels: Tensor, pool_boxes: Tensor, pool_scores: Tensor, pool_masks: Tensor,
                image_size: tuple[int, int], iou_thresh: float = 0.5, binary_thresh: float = 0.4,
                voting: str = "paper") -> tuple[Tensor, Tensor, Tensor]:
    """Vote the masks of detections (boxes (D, 4) xyxy pixels, labels (D,)) over a pool of candidates (boxes
    (P, 4), class probabilities (P, C), mask probabilities (P, C, m, m), each over its own box).

    For a detection of class c, every candidate whose box has IoU ≥ ``iou_thresh`` with it votes, whatever
    its own top class and score, weighted by its class-c probability (weights normalised to sum 1). Each
    voter's mask is pasted into the image (:func:`paste_masks_in_image`) and summed with its weight; the
    pixels of the sum ≥ ``binary_thresh`` are the voted mask and their tight box is the detection's new box.
    ``voting="paper"`` (§3.2): the voters' class-c masks, as probabilities; ``"reference"`` (msracver/FCIS
    ``cpu_mask_voting``): each voter's mask of its top class (background included), binarised at
    ``binary_thresh`` before the sum.

    Returns (masks (D', m, m) in {0, 1} over the new boxes, new boxes (D', 4), the indices (D',) of the
    detections kept): a detection whose voted mask is empty is dropped, as the reference does.
    """
    if voting not in VOTING:
        raise ValueError(f"voting must be one of {VOTING}, got {voting!r}")
    m = pool_masks.shape[-1]
    top = pool_scores.argmax(1)
    weights = pool_scores[:, labels].T * (box_iou(boxes, pool_boxes) >= iou_thresh)  # (D, P)
    weights = weights / weights.sum(1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    voted_masks, voted_boxes, kept = [], [], []
    for detection in range(len(boxes)):
        voters = torch.where(weights[detection] > 0)[0]
        if voting == "paper":
            masks = pool_masks[voters, labels[detection]]
        else:
            masks = (pool_masks[voters, top[voters]] >= binary_thresh).to(pool_masks.dtype)
        canvas = (paste_masks_in_image(masks[:, None], pool_boxes[voters], image_size)[:, 0]
                  * weights[detection, voters, None, None]).sum(0)
        voted = canvas >= binary_thresh
        rows, cols = torch.where(voted)
        if len(rows) == 0:
            continue
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        inside = voted[y0:y1, x0:x1].to(pool_masks.dtype)[None, None]
        voted_masks.append(F.interpolate(inside, size=(m, m), mode="bilinear", align_corners=False)[0, 0])
        voted_boxes.append(torch.stack([x0, y0, x1, y1]).to(boxes.dtype))
        kept.append(detection)
    if not kept:
        return pool_masks.new_zeros(0, m, m), boxes.new_zeros(0, 4), labels.new_zeros(0)
    return torch.stack(voted_masks), torch.stack(voted_boxes), torch.tensor(kept, device=boxes.device)
