"""Region Proposal Network (Ren et al., arXiv:1506.01497 §3.1) shared over the FPN levels (FPN §4.1), or on one
named feature map (FCIS: conv4)."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, clip_boxes_to_image, remove_small_boxes

from ...ops import batched_nms
from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .matching import BETWEEN_THRESHOLDS, match
from .sampling import sample_balanced


class RPNHead(nn.Module):
    """3×3 conv + ReLU, then 1×1 convs to objectness logits (A per cell) and box deltas (4A per cell),
    the same weights on every level. Weights N(0, 0.01²), biases 0 (§3.1.3). Keys ``conv.0.0``,
    ``cls_logits``, ``bbox_pred`` (torchvision)."""

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1):
        super().__init__()
        self.conv = nn.Sequential(*(nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1),
                                                  nn.ReLU(inplace=True)) for _ in range(conv_depth)))
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Features (N,C,h_l,w_l) per level → objectness (N, A_total) and deltas (N, A_total, 4), flattened in
        the anchor generator's order (level, cell, anchor)."""
        logits, deltas = [], []
        for feature in features:
            t = self.conv(feature)
            logit = self.cls_logits(t)
            n, a, h, w = logit.shape
            logits.append(logit.permute(0, 2, 3, 1).reshape(n, -1))
            deltas.append(self.bbox_pred(t).view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
        return torch.cat(logits, 1), torch.cat(deltas, 1)


class RegionProposalNetwork(nn.Module):
    """Objectness and box regression on anchors → proposals per image; losses in training.

    Proposals: the ``pre_nms_top_n`` best anchors of each level, decoded, clipped to the image, boxes
    under ``min_size`` and scores under ``score_thresh`` dropped, NMS at ``nms_thresh`` within each level,
    the ``post_nms_top_n`` best kept (both counts per mode: {"training": …, "testing": …}).
    Training: anchors with IoU ≥ ``fg_iou_thresh`` (or the best for a ground truth) are positive, < ``bg_iou_thresh``
    negative; ``batch_size_per_image`` of them sampled with up to ``positive_fraction`` positives; binary
    cross-entropy on their objectness, smooth-L1 (β = 1/9) on the positives' deltas summed and divided by the
    number sampled (Faster R-CNN eq. 1 with λ balancing it, as torchvision normalises).
    """

    def __init__(self, anchor_generator: AnchorGenerator, head: RPNHead, *, fg_iou_thresh: float = 0.7,
                 bg_iou_thresh: float = 0.3, batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                 pre_nms_top_n: dict[str, int] | None = None, post_nms_top_n: dict[str, int] | None = None,
                 nms_thresh: float = 0.7, score_thresh: float = 0.0, min_size: float = 1e-3):
        super().__init__()
        self.anchor_generator, self.head = anchor_generator, head
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.fg_iou_thresh, self.bg_iou_thresh = fg_iou_thresh, bg_iou_thresh
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.pre_nms_top_n = pre_nms_top_n or {"training": 2000, "testing": 1000}
        self.post_nms_top_n = post_nms_top_n or {"training": 2000, "testing": 1000}
        self.nms_thresh, self.score_thresh, self.min_size = nms_thresh, score_thresh, min_size

    def forward(self, features: dict[str, Tensor], padded_size: tuple[int, int], image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        """FPN features of a padded batch of ``padded_size`` (H, W), the (h, w) of each image inside it →
        proposals [(P_i, 4) xyxy in input pixels] and, in training, {"loss_objectness", "loss_rpn_box_reg"}."""
        maps = list(features.values())
        objectness, deltas = self.head(maps)
        feature_sizes = [tuple(m.shape[-2:]) for m in maps]
        anchors = self.anchor_generator(tuple(padded_size), feature_sizes, maps[0].dtype, maps[0].device)
        per_level = [h * w * a for (h, w), a in zip(feature_sizes, self.anchor_generator.num_anchors_per_location())]
        num_images = len(image_sizes)
        boxes = self.box_coder.decode(deltas.detach().reshape(-1, 4), anchors.repeat(num_images, 1))
        proposals = self.filter_proposals(boxes.view(num_images, -1, 4), objectness.detach(), image_sizes, per_level)
        if not self.training:
            return proposals, {}
        if targets is None:
            raise ValueError("the RPN needs targets in training mode")
        return proposals, self.loss(objectness, deltas, anchors, [t["boxes"] for t in targets])

    def filter_proposals(self, boxes: Tensor, objectness: Tensor, image_sizes: list[tuple[int, int]],
                         per_level: list[int]) -> list[Tensor]:
        """Decoded anchors (N, A, 4) and their logits (N, A) → proposals [(P_i, 4)] (see the class)."""
        mode = "training" if self.training else "testing"
        first = [sum(per_level[:level]) for level in range(len(per_level))]
        index = torch.cat([scores.topk(min(self.pre_nms_top_n[mode], count), dim=1).indices + start
                           for scores, count, start in zip(objectness.split(per_level, 1), per_level, first)], 1)
        levels = torch.repeat_interleave(torch.arange(len(per_level), device=index.device),
                                         torch.tensor(per_level, device=index.device))[index]
        scores = torch.gather(objectness, 1, index).sigmoid()
        boxes = torch.gather(boxes, 1, index[..., None].expand(-1, -1, 4))
        proposals = []
        for boxes_i, scores_i, levels_i, size in zip(boxes, scores, levels, image_sizes):
            boxes_i = clip_boxes_to_image(boxes_i, size)
            keep = remove_small_boxes(boxes_i, self.min_size)
            keep = keep[scores_i[keep] >= self.score_thresh]
            boxes_i, scores_i, levels_i = boxes_i[keep], scores_i[keep], levels_i[keep]
            keep = batched_nms(boxes_i, scores_i, levels_i, self.nms_thresh, len(per_level))
            keep = keep[:self.post_nms_top_n[mode]]
            proposals.append(boxes_i[keep])
        return proposals

    def loss(self, objectness: Tensor, deltas: Tensor, anchors: Tensor, gt_boxes: list[Tensor]) -> dict[str, Tensor]:
        """Objectness (N, A) and deltas (N, A, 4) against ground-truth boxes [(G_i, 4)] (see the class)."""
        labels, targets = [], []
        for boxes in gt_boxes:
            if boxes.numel() == 0:
                labels.append(torch.zeros(len(anchors), dtype=anchors.dtype, device=anchors.device))
                targets.append(torch.zeros_like(anchors))
                continue
            matches = match(box_iou(boxes, anchors), self.fg_iou_thresh, self.bg_iou_thresh,
                            allow_low_quality_matches=True)
            label = (matches >= 0).to(anchors.dtype)
            label[matches == BETWEEN_THRESHOLDS] = -1.0
            labels.append(label)
            targets.append(self.box_coder.encode(boxes[matches.clamp(min=0)], anchors))
        positive, negative = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction)
        positive = torch.where(torch.cat(positive))[0]
        sampled = torch.cat([positive, torch.where(torch.cat(negative))[0]])
        labels, targets = torch.cat(labels), torch.cat(targets)
        box_loss = F.smooth_l1_loss(deltas.reshape(-1, 4)[positive], targets[positive], beta=1 / 9,
                                    reduction="sum") / sampled.numel()
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.reshape(-1)[sampled], labels[sampled])
        return {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss}


class SingleMapRPN(RegionProposalNetwork):
    """The RPN on one named map of the backbone's features (FCIS: conv4, §3.2), the others left to the heads."""

    def __init__(self, feature: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.feature = feature

    def forward(self, features: dict[str, Tensor], *args, **kwargs):
        return super().forward(OrderedDict([(self.feature, features[self.feature])]), *args, **kwargs)
