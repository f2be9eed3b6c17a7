"""FCIS's second stage (Li et al., arXiv:1611.07709 §3): position-sensitive inside/outside score maps and
box maps on conv5, assembled on each RoI into masks, class scores and box refinements."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

from ...ops import ps_roi_align
from ..detection import BoxCoder, label_proposals, mask_targets, ohem_select, sample_balanced
from .joint import joint_scores
from .voting import mask_voting

# The FCIS reference code's smooth-L1 (sigma 1, i.e. beta 1) for the box loss, R-FCN's choice.
BOX_LOSS_BETA = 1.0


class PSScoreMaps(nn.Module):
    """conv5 features (N, C5, h, w) → a 1×1 conv + ReLU to ``reduce_channels`` (the paper's 1024), then two
    sibling 1×1 convs: inside/outside maps (N, num_classes·2·k², h, w), channel (class·2 + side)·k² + cell
    (side 0 inside, 1 outside; cells row-major), and class-agnostic box maps (N, 4·k², h, w). Names follow
    the reference code (``conv_new_1``, ``fcis_cls_seg``, ``fcis_bbox``); biases 0. ``init``: "normal" is the
    reference's N(0, 0.01²) for every weight, made for a pretrained conv5; "kaiming" (He normal, fan-in) is for
    training from scratch, where two stacked 0.01 layers scale conv5's gradient by ~10⁻⁴ and it stops learning."""

    def __init__(self, in_channels: int, num_classes: int, group_size: int = 7, reduce_channels: int = 1024,
                 init: str = "normal"):
        super().__init__()
        if init not in ("normal", "kaiming"):
            raise ValueError(f"score map init must be 'normal' or 'kaiming', got {init!r}")
        cells = group_size * group_size
        self.conv_new_1 = nn.Conv2d(in_channels, reduce_channels, 1)
        self.fcis_cls_seg = nn.Conv2d(reduce_channels, num_classes * 2 * cells, 1)
        self.fcis_bbox = nn.Conv2d(reduce_channels, 4 * cells, 1)
        for conv, gain in ((self.conv_new_1, "relu"), (self.fcis_cls_seg, "linear"), (self.fcis_bbox, "linear")):
            if init == "normal":
                nn.init.normal_(conv.weight, std=0.01)
            else:
                nn.init.kaiming_normal_(conv.weight, nonlinearity=gain)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.conv_new_1(features))
        return self.fcis_cls_seg(x), self.fcis_bbox(x)


class FCISRoIHeads(nn.Module):
    """``score_maps`` (:class:`PSScoreMaps`) on the backbone's ``feature`` (conv5), then the RoIs on them.
    ``num_classes`` counts the background (class 0).

    Assembling: ``ps_roi_align`` of the inside/outside maps to ``mask_size``² bins from ``group_size``² cells
    (the reference: 21×21 from 7×7) → :func:`joint_scores`; of the box maps to k×k, averaged → deltas (K, 4)
    (R-FCN's voting). Training (§3.2): ground-truth boxes join the proposals; IoU ≥ ``fg_iou_thresh`` with a
    ground truth makes an RoI positive with its class, < ``bg_iou_thresh`` background. Per RoI: softmax
    cross-entropy over the classes, smooth L1 on a positive's deltas, and on a positive the per-pixel
    inside/outside cross-entropy of its ground-truth class only (targets: the matched mask resampled to
    the RoI). ``ohem``: every RoI is scored and the ``batch_size_per_image`` of highest summed loss per image
    are kept (the paper: 128 of 300); otherwise that many are sampled, ``positive_fraction`` positive at most.
    Losses: classification averaged over the kept RoIs, box summed and divided by their number, mask averaged
    over the kept positives.

    Inference (§3.2): the proposals and their regressed boxes (the paper's 2×300 RoIs) are all assembled;
    per class, candidates scoring > ``score_thresh`` (boxes under 0.01 px dropped) go through NMS at
    ``nms_thresh`` (0.3), the ``detections_per_img`` best are kept, and each one's mask is voted over the
    candidates of its class with IoU ≥ ``vote_iou_thresh`` (:func:`mask_voting`).
    """

    def __init__(self, score_maps: PSScoreMaps, num_classes: int, spatial_scale: float, *, feature: str = "layer4",
                 group_size: int = 7, mask_size: int = 21, sampling_ratio: int = -1, fg_iou_thresh: float = 0.5,
                 bg_iou_thresh: float = 0.5, batch_size_per_image: int = 128, positive_fraction: float = 0.25,
                 ohem: bool = True, bbox_reg_weights=(10.0, 10.0, 5.0, 5.0), score_thresh: float = 0.05,
                 nms_thresh: float = 0.3, vote_iou_thresh: float = 0.5, detections_per_img: int = 100):
        super().__init__()
        self.score_maps, self.feature = score_maps, feature
        self.num_classes, self.spatial_scale = num_classes, spatial_scale
        self.group_size, self.mask_size, self.sampling_ratio = group_size, mask_size, sampling_ratio
        self.fg_iou_thresh, self.bg_iou_thresh = fg_iou_thresh, bg_iou_thresh
        self.batch_size_per_image, self.positive_fraction, self.ohem = batch_size_per_image, positive_fraction, ohem
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.vote_iou_thresh, self.detections_per_img = vote_iou_thresh, detections_per_img

    def assemble(self, score_maps: Tensor, boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Class logits (K, num_classes) and mask logits (K, num_classes, m, m) of the concatenated boxes."""
        assembled = ps_roi_align(score_maps, boxes, self.mask_size, self.spatial_scale, self.sampling_ratio,
                                 group_size=self.group_size)
        return joint_scores(assembled.unflatten(1, (self.num_classes, 2)))

    def regress(self, box_maps: Tensor, boxes: list[Tensor]) -> Tensor:
        """Class-agnostic deltas (K, 4) of the concatenated boxes: the k×k assembled cells averaged."""
        return ps_roi_align(box_maps, boxes, self.group_size, self.spatial_scale, self.sampling_ratio).mean((2, 3))

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Backbone features of the padded batch, proposals [(P_i, 4) xyxy pixels] and image sizes →
        (detections [{"boxes" (D,4), "labels" (D,), "scores" (D,), "masks" (D,1,m,m) probabilities}], {}) in
        eval; ([], {"loss_classifier", "loss_box_reg", "loss_mask"}) in training."""
        score_maps, box_maps = self.score_maps(features[self.feature])
        if not self.training:
            return self.detect(score_maps, box_maps, proposals, image_sizes), {}
        if targets is None:
            raise ValueError("the FCIS RoI heads need targets in training mode")
        return [], self.loss(score_maps, box_maps, proposals, targets)

    def loss(self, score_maps: Tensor, box_maps: Tensor, proposals: list[Tensor],
             targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The three RoI losses (see the class)."""
        rois, labels, matched = label_proposals(proposals, targets, self.fg_iou_thresh, self.bg_iou_thresh)
        if self.ohem:
            chosen = [torch.where(label >= 0)[0] for label in labels]
        else:
            positive, negative = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction)
            chosen = [torch.where(p | n)[0] for p, n in zip(positive, negative)]
        rois, labels, matched = ([x[k] for x, k in zip(values, chosen)] for values in (rois, labels, matched))
        class_logits, mask_logits = self.assemble(score_maps, rois)
        deltas = self.regress(box_maps, rois)
        per_roi = self.per_roi_losses(class_logits, mask_logits, deltas, rois, labels, matched, targets)
        counts = [len(r) for r in rois]
        if self.ohem:
            keep = ohem_select(sum(per_roi.values()).detach(), counts, self.batch_size_per_image)
        else:
            keep = torch.arange(sum(counts), device=deltas.device)
        positives = (torch.cat(labels)[keep] > 0).sum().clamp(min=1)
        return {"loss_classifier": per_roi["classifier"][keep].mean(),
                "loss_box_reg": per_roi["box_reg"][keep].sum() / max(len(keep), 1),
                "loss_mask": per_roi["mask"][keep].sum() / positives}

    def per_roi_losses(self, class_logits: Tensor, mask_logits: Tensor, deltas: Tensor, rois: list[Tensor],
                       labels: list[Tensor], matched: list[Tensor], targets: list[dict[str, Tensor]]
                       ) -> dict[str, Tensor]:
        """Per RoI (K,): {"classifier", "box_reg", "mask"} (box and mask 0 on background RoIs)."""
        all_labels = torch.cat(labels)
        positive = torch.where(all_labels > 0)[0]
        positives = [torch.where(label > 0)[0] for label in labels]
        fg_rois = [r[p] for r, p in zip(rois, positives)]
        fg_matched = [m[p] for m, p in zip(matched, positives)]
        gt_boxes = torch.cat([t["boxes"][m] for t, m in zip(targets, fg_matched)]).to(deltas.dtype)
        box = F.smooth_l1_loss(deltas[positive], self.box_coder.encode(gt_boxes, torch.cat(fg_rois)),
                               beta=BOX_LOSS_BETA, reduction="none").sum(1)
        masks = torch.cat([mask_targets(t["masks"], r, m, self.mask_size)
                           for t, r, m in zip(targets, fg_rois, fg_matched)]).to(mask_logits.dtype)
        mask = F.binary_cross_entropy_with_logits(mask_logits[positive, all_labels[positive]], masks,
                                                  reduction="none").mean((1, 2))
        zeros = deltas.new_zeros(len(all_labels))
        return {"classifier": F.cross_entropy(class_logits, all_labels, reduction="none"),
                "box_reg": zeros.index_put((positive,), box.to(zeros.dtype)),
                "mask": zeros.index_put((positive,), mask.to(zeros.dtype))}

    def detect(self, score_maps: Tensor, box_maps: Tensor, proposals: list[Tensor],
               image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections per image (see the class)."""
        counts = [len(p) for p in proposals]
        refined = self.box_coder.decode(self.regress(box_maps, proposals), torch.cat(proposals))[:, 0]
        candidates = [torch.cat([p, clip_boxes_to_image(r, size)])
                      for p, r, size in zip(proposals, refined.split(counts), image_sizes)]
        class_logits, mask_logits = self.assemble(score_maps, candidates)
        scores = F.softmax(class_logits, -1)
        sizes = [len(c) for c in candidates]
        return [self.detect_image(*per_image)
                for per_image in zip(candidates, scores.split(sizes), mask_logits.split(sizes))]

    def detect_image(self, boxes: Tensor, scores: Tensor, mask_logits: Tensor) -> dict[str, Tensor]:
        """One image's candidates (R, 4), class scores (R, C) and mask logits (R, C, m, m) → its detections."""
        candidate, label = torch.where(scores[:, 1:] > self.score_thresh)  # class 0 is the background
        label = label + 1
        keep = remove_small_boxes(boxes[candidate], min_size=1e-2)
        candidate, label = candidate[keep], label[keep]
        pool_boxes, pool_scores = boxes[candidate], scores[candidate, label]
        keep = batched_nms(pool_boxes, pool_scores, label, self.nms_thresh)[:self.detections_per_img]
        masks = mask_voting(pool_boxes[keep], label[keep], pool_boxes, label, pool_scores,
                            mask_logits[candidate, label].sigmoid(), self.vote_iou_thresh)
        return {"boxes": pool_boxes[keep], "labels": label[keep], "scores": pool_scores[keep], "masks": masks[:, None]}
