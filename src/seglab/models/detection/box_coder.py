"""The R-CNN box parametrisation (Girshick et al., arXiv:1311.2524 App. C; Faster R-CNN eq. 2): a box is
regressed as centre shifts in units of the reference box size and log size ratios, each scaled by a weight."""
from __future__ import annotations

import math

import torch
from torch import Tensor


class BoxCoder:
    """Encode / decode boxes (xyxy, pixels) relative to reference boxes (anchors or proposals).

    ``weights`` (wx, wy, ww, wh) multiply the deltas: (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the
    RoI heads (Detectron's choice, so both regressions have targets of similar spread). Decoded log-sizes are
    clipped at ``bbox_xform_clip`` = log(1000/16) so a box grows at most 62.5× in one step.
    """

    def __init__(self, weights: tuple[float, float, float, float], bbox_xform_clip: float = math.log(1000.0 / 16)):
        self.weights, self.bbox_xform_clip = tuple(weights), bbox_xform_clip

    def encode(self, targets: Tensor, boxes: Tensor) -> Tensor:
        """Deltas (K, 4) that move ``boxes`` (K, 4) onto ``targets`` (K, 4)."""
        wx, wy, ww, wh = self.weights
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        ctr_x, ctr_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
        target_widths, target_heights = targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1]
        target_x, target_y = targets[:, 0] + 0.5 * target_widths, targets[:, 1] + 0.5 * target_heights
        return torch.stack([wx * (target_x - ctr_x) / widths, wy * (target_y - ctr_y) / heights,
                            ww * torch.log(target_widths / widths), wh * torch.log(target_heights / heights)], 1)

    def decode(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """Boxes (K, C, 4) from deltas (K, 4·C) (one set per class) applied to reference ``boxes`` (K, 4)."""
        boxes = boxes.to(deltas.dtype)
        widths, heights = boxes[:, 2:3] - boxes[:, 0:1], boxes[:, 3:4] - boxes[:, 1:2]
        ctr_x, ctr_y = boxes[:, 0:1] + 0.5 * widths, boxes[:, 1:2] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.bbox_xform_clip)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.bbox_xform_clip)
        x, y = dx * widths + ctr_x, dy * heights + ctr_y
        half_w, half_h = 0.5 * torch.exp(dw) * widths, 0.5 * torch.exp(dh) * heights
        return torch.stack([x - half_w, y - half_h, x + half_w, y + half_h], dim=2)
