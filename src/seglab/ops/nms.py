"""Non-maximum suppression within groups (classes, FPN levels): ``torchvision.ops.batched_nms``, exported to
ONNX as one ``NonMaxSuppression`` that holds each group in its own batch entry.

Traced, torchvision's op exports its coordinate trick: all boxes offset apart by group and one NMS over all of
them, which onnxruntime runs in O(K²) of the K boxes — the box head of a Mask R-CNN at score threshold 0
(1000 proposals × 90 classes) took 4.7 s there. Per group it is Σ K_g².
"""
from __future__ import annotations

import sys

import torch
import torchvision
from torch import Tensor

__all__ = ["batched_nms"]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, num_groups: int) -> Tensor:
    """Indices of the kept boxes, by decreasing score, of boxes (K, 4) xyxy with scores (K,) and group ids
    idxs (K,) in [0, ``num_groups``): NMS at ``iou_threshold`` among the boxes of each group only.

    Under ONNX export the boxes are repeated for every group, and each copy keeps the scores of its group's
    boxes only (the others get -1, below ``NonMaxSuppression``'s score threshold of -0.5).
    """
    if not torch.onnx.is_in_onnx_export():
        return torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)
    member = idxs[None] == torch.arange(num_groups, device=idxs.device)[:, None]  # (G, K)
    grouped = torch.where(member, scores[None], torch.full_like(scores[None], -1.0))
    keep = _OnnxGroupedNMS.apply(boxes[None].expand(num_groups, -1, -1), grouped[:, None], iou_threshold)
    return keep[scores[keep].argsort(descending=True)]


class _OnnxGroupedNMS(torch.autograd.Function):
    """Boxes (G, K, 4) and scores (G, 1, K) → indices (S,) in [0, K) of the boxes kept in each group, group by
    group; one ONNX ``NonMaxSuppression`` under the TorchScript exporter (forward: the values, while tracing)."""

    @staticmethod
    def forward(ctx, boxes, scores, iou_threshold):
        kept = []
        for group_boxes, group_scores in zip(boxes, scores[:, 0]):
            member = torch.where(group_scores > -0.5)[0]
            kept.append(member[torchvision.ops.nms(group_boxes[member], group_scores[member], iou_threshold)])
        return torch.cat(kept)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold):
        selected = g.op("NonMaxSuppression", boxes, scores,
                        g.op("Constant", value_t=torch.tensor([sys.maxsize], dtype=torch.long)),
                        g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float)),
                        g.op("Constant", value_t=torch.tensor([-0.5], dtype=torch.float)))  # (S, 3): group, 0, box
        return g.op("Gather", selected, g.op("Constant", value_t=torch.tensor(2)), axis_i=1)
