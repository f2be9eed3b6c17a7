"""FCIS's second stage (Li et al., arXiv:1611.07709 §3): position-sensitive inside/outside score maps and
box maps on conv5, assembled on each RoI into masks, class scores and box refinements."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

from ...ops import ps_roi_align, ps_roi_pool
from ..detection import BoxCoder, label_proposals, mask_targets, ohem_select, sample_balanced
from .joint import joint_scores
from .voting import mask_voting

# The FCIS reference code's smooth-L1 (sigma 1, i.e. beta 1) for the box loss, R-FCN's choice.
BOX_LOSS_BETA = 1.0
ASSEMBLE = ("pool", "align")
FORMULATIONS = ("joint", "separate")


class PSScoreMaps(nn.Module):
    """conv5 features (N, C5, h, w) → a 1×1 conv + ReLU to ``reduce_channels`` (the paper's 1024), then sibling
    1×1 convs, as :meth:`forward` lists. Names and channel orders follow the reference code (msracver/FCIS:
    ``conv_new_1``, ``fcis_cls_seg``, ``fcis_bbox``), so its weights map one to one: inside/outside maps
    channel (class·2 + side)·k² + cell (side 0 outside, 1 inside; cells row-major), box maps coord·k² + cell.
    The reference's class-agnostic box conv has 8·k² channels (background and foreground sets); only its
    foreground half, channels 4·k² … 8·k², is ever used, and it is ``fcis_bbox`` here. Biases 0. ``init``:
    "normal" is the reference's N(0, 0.01²) for every weight, made for a pretrained conv5; "kaiming" (He
    normal, fan-in) is for training from scratch, where two stacked 0.01 layers scale conv5's gradient by
    ~10⁻⁴ and it stops learning. ``formulation="separate"`` adds R-FCN's k²·num_classes detection maps
    ``fcis_cls`` (FCIS Table 1's "separate score maps"). ``conv_new_lr_mult`` is ``conv_new_1``'s learning
    rate multiplier (the reference's CONVNEW3: 3; read by the optimiser from the module's ``lr_mult``)."""

    def __init__(self, in_channels: int, num_classes: int, group_size: int = 7, reduce_channels: int = 1024,
                 init: str = "normal", formulation: str = "joint", conv_new_lr_mult: float = 3.0):
        super().__init__()
        if init not in ("normal", "kaiming"):
            raise ValueError(f"score map init must be 'normal' or 'kaiming', got {init!r}")
        if formulation not in FORMULATIONS:
            raise ValueError(f"formulation must be one of {FORMULATIONS}, got {formulation!r}")
        cells = group_size * group_size
        self.conv_new_1 = nn.Conv2d(in_channels, reduce_channels, 1)
        self.conv_new_1.lr_mult = conv_new_lr_mult
        self.fcis_cls_seg = nn.Conv2d(reduce_channels, num_classes * 2 * cells, 1)
        self.fcis_bbox = nn.Conv2d(reduce_channels, 4 * cells, 1)
        self.fcis_cls = nn.Conv2d(reduce_channels, num_classes * cells, 1) if formulation == "separate" else None
        for conv, gain in ((self.conv_new_1, "relu"), (self.fcis_cls_seg, "linear"), (self.fcis_bbox, "linear"),
                           (self.fcis_cls, "linear")):
            if conv is None:
                continue
            if init == "normal":
                nn.init.normal_(conv.weight, std=0.01)
            else:
                nn.init.kaiming_normal_(conv.weight, nonlinearity=gain)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """{"cls_seg": inside/outside maps (N, num_classes·2·k², h, w), "bbox": box maps (N, 4·k², h, w)}, and
        "cls": detection maps (N, num_classes·k², h, w) with the separate formulation."""
        x = F.relu(self.conv_new_1(features))
        maps = {"cls_seg": self.fcis_cls_seg(x), "bbox": self.fcis_bbox(x)}
        if self.fcis_cls is not None:
            maps["cls"] = self.fcis_cls(x)
        return maps


class FCISRoIHeads(nn.Module):
    """``score_maps`` (:class:`PSScoreMaps`) on the backbone's ``feature`` (conv5), then the RoIs on them.
    ``num_classes`` counts the background (class 0).

    Assembling (``assemble``): "pool" is the reference's PSROIPooling (:func:`ps_roi_pool`: the RoI rounded
    to pixels, each bin the mean of the whole pixels it covers — the paper's "copying"), the default
    because it is what the paper and its released models use; "align" is bilinear :func:`ps_roi_align`
    (RoIAlign's sampling, no rounding), the choice Mask R-CNN's ablation favours. Either assembles
    ``mask_size``² bins from ``group_size``² cells (the reference: 21×21 from 7×7): the inside/outside maps →
    :func:`joint_scores` (mask logits; class logits with the joint formulation, else the mean of the
    assembled detection maps, R-FCN's voting), the box maps averaged → deltas (K, 4).

    Training (§3.2, the reference's losses): ground-truth boxes join the proposals; IoU ≥ ``fg_iou_thresh``
    with a ground truth makes an RoI positive with its class, < ``bg_iou_thresh`` background. Per RoI:
    softmax cross-entropy over the classes, smooth L1 on a positive's deltas, and on a positive the
    per-pixel inside/outside cross-entropy of its ground-truth class only, against the matched mask
    resampled to the RoI and binarised at ``binary_thresh``. ``ohem``: every RoI is scored and the
    ``batch_size_per_image`` of each image ranked highest by w_cls·cls + w_mask·(per-pixel mean mask loss)
    + w_box·box are kept (the paper: 128 of 300); otherwise that many are sampled, ``positive_fraction``
    positive at most. With n the RoIs kept and (w_cls, w_mask, w_box) = ``loss_weights`` (the reference's
    LOSS_WEIGHT 1, 10, 1): loss_classifier = w_cls · mean, loss_box_reg = w_box · sum / n, loss_mask =
    w_mask · (sum over RoIs and m² pixels) / n.

    Inference (§3.2): the proposals and their regressed boxes (the paper's 2×300 RoIs) are all assembled;
    per class, candidates scoring > ``score_thresh`` (boxes under 0.01 px dropped) go through NMS at
    ``nms_thresh`` (0.3), the ``detections_per_img`` best are kept, and each one's mask and box are voted
    over all candidates with IoU ≥ ``vote_iou_thresh`` (:func:`mask_voting`, ``voting``).
    """

    def __init__(self, score_maps: PSScoreMaps, num_classes: int, spatial_scale: float, *, feature: str = "layer4",
                 group_size: int = 7, mask_size: int = 21, assemble: str = "pool", sampling_ratio: int = -1,
                 fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5, batch_size_per_image: int = 128,
                 positive_fraction: float = 0.25, ohem: bool = True, loss_weights=(1.0, 10.0, 1.0),
                 binary_thresh: float = 0.4, bbox_reg_weights=(5.0, 5.0, 2.0, 2.0), score_thresh: float = 0.05,
                 nms_thresh: float = 0.3, vote_iou_thresh: float = 0.5, voting: str = "paper",
                 detections_per_img: int = 100):
        super().__init__()
        if assemble not in ASSEMBLE:
            raise ValueError(f"assemble must be one of {ASSEMBLE}, got {assemble!r}")
        self.score_maps, self.feature = score_maps, feature
        self.num_classes, self.spatial_scale = num_classes, spatial_scale
        self.group_size, self.mask_size, self.sampling_ratio = group_size, mask_size, sampling_ratio
        self.assemble = assemble
        self.fg_iou_thresh, self.bg_iou_thresh = fg_iou_thresh, bg_iou_thresh
        self.batch_size_per_image, self.positive_fraction, self.ohem = batch_size_per_image, positive_fraction, ohem
        self.loss_weights, self.binary_thresh = tuple(loss_weights), binary_thresh
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.vote_iou_thresh, self.voting, self.detections_per_img = vote_iou_thresh, voting, detections_per_img

    def assembled(self, maps: Tensor, boxes: list[Tensor], output_size: int) -> Tensor:
        """``maps`` (N, D·k², h, w) assembled on the concatenated boxes → (K, D, output_size, output_size)."""
        if self.assemble == "pool":
            return ps_roi_pool(maps, boxes, output_size, self.spatial_scale, group_size=self.group_size)
        return ps_roi_align(maps, boxes, output_size, self.spatial_scale, self.sampling_ratio,
                            group_size=self.group_size)

    def score_rois(self, maps: dict[str, Tensor], boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Class logits (K, num_classes) and mask logits (K, num_classes, m, m) of the concatenated boxes."""
        inside_outside = self.assembled(maps["cls_seg"], boxes, self.mask_size)
        class_logits, mask_logits = joint_scores(inside_outside.unflatten(1, (self.num_classes, 2)))
        if "cls" in maps:  # separate score maps: R-FCN's position-sensitive classification
            class_logits = self.assembled(maps["cls"], boxes, self.mask_size).mean((2, 3))
        return class_logits, mask_logits

    def regress(self, maps: dict[str, Tensor], boxes: list[Tensor]) -> Tensor:
        """Class-agnostic deltas (K, 4) of the concatenated boxes: the assembled m×m box bins averaged."""
        return self.assembled(maps["bbox"], boxes, self.mask_size).mean((2, 3))

    def masks_for(self, features: dict[str, Tensor], boxes: list[Tensor], labels: Tensor,
                  image_sizes: list[tuple[int, int]]) -> Tensor:
        """Mask probabilities (K, 1, m, m) of the concatenated given boxes for the given classes (K,), as assembled
        (no voting)."""
        mask_logits = self.score_rois(self.score_maps(features[self.feature]), boxes)[1]
        return mask_logits[torch.arange(len(labels), device=labels.device), labels][:, None].sigmoid()

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Backbone features of the padded batch, proposals [(P_i, 4) xyxy pixels] and image sizes →
        (detections [{"boxes" (D,4), "labels" (D,), "scores" (D,), "masks" (D,1,m,m) probabilities}], {}) in
        eval; ([], {"loss_classifier", "loss_box_reg", "loss_mask"}) in training."""
        maps = self.score_maps(features[self.feature])
        if not self.training:
            return self.detect(maps, proposals, image_sizes), {}
        if targets is None:
            raise ValueError("the FCIS RoI heads need targets in training mode")
        return [], self.loss(maps, proposals, targets)

    def loss(self, maps: dict[str, Tensor], proposals: list[Tensor],
             targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The three RoI losses (see the class)."""
        rois, labels, matched = label_proposals(proposals, targets, self.fg_iou_thresh, self.bg_iou_thresh)
        if self.ohem:
            chosen = [torch.where(label >= 0)[0] for label in labels]
        else:
            positive, negative = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction)
            chosen = [torch.where(p | n)[0] for p, n in zip(positive, negative)]
        rois, labels, matched = ([x[k] for x, k in zip(values, chosen)] for values in (rois, labels, matched))
        per_roi = self.per_roi_losses(*self.score_rois(maps, rois), self.regress(maps, rois), rois, labels, matched,
                                      targets)
        w_cls, w_mask, w_box = self.loss_weights
        counts = [len(r) for r in rois]
        if self.ohem:
            rank = w_cls * per_roi["classifier"] + w_mask * per_roi["mask"] / self.mask_size ** 2 \
                + w_box * per_roi["box_reg"]
            keep = ohem_select(rank.detach(), counts, self.batch_size_per_image)
        else:
            keep = torch.arange(sum(counts), device=per_roi["classifier"].device)
        kept = max(len(keep), 1)
        return {"loss_classifier": w_cls * per_roi["classifier"][keep].mean(),
                "loss_box_reg": w_box * per_roi["box_reg"][keep].sum() / kept,
                "loss_mask": w_mask * per_roi["mask"][keep].sum() / kept}

    def per_roi_losses(self, class_logits: Tensor, mask_logits: Tensor, deltas: Tensor, rois: list[Tensor],
                       labels: list[Tensor], matched: list[Tensor], targets: list[dict[str, Tensor]]
                       ) -> dict[str, Tensor]:
        """Per RoI (K,): {"classifier", "box_reg", "mask" (summed over the m² pixels)}, box and mask 0 on
        background RoIs."""
        all_labels = torch.cat(labels)
        positive = torch.where(all_labels > 0)[0]
        positives = [torch.where(label > 0)[0] for label in labels]
        fg_rois = [r[p] for r, p in zip(rois, positives)]
        fg_matched = [m[p] for m, p in zip(matched, positives)]
        gt_boxes = torch.cat([t["boxes"][m] for t, m in zip(targets, fg_matched)]).to(deltas.dtype)
        box = F.smooth_l1_loss(deltas[positive], self.box_coder.encode(gt_boxes, torch.cat(fg_rois)),
                               beta=BOX_LOSS_BETA, reduction="none").sum(1)
        masks = torch.cat([mask_targets(t["masks"], r, m, self.mask_size)
                           for t, r, m in zip(targets, fg_rois, fg_matched)]) >= self.binary_thresh
        mask = F.binary_cross_entropy_with_logits(mask_logits[positive, all_labels[positive]],
                                                  masks.to(mask_logits.dtype), reduction="none").sum((1, 2))
        zeros = deltas.new_zeros(len(all_labels))
        return {"classifier": F.cross_entropy(class_logits, all_labels, reduction="none"),
                "box_reg": zeros.index_put((positive,), box.to(zeros.dtype)),
                "mask": zeros.index_put((positive,), mask.to(zeros.dtype))}

    def detect(self, maps: dict[str, Tensor], proposals: list[Tensor],
               image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections per image (see the class)."""
        counts = [len(p) for p in proposals]
        refined = self.box_coder.decode(self.regress(maps, proposals), torch.cat(proposals))[:, 0]
        candidates = [torch.cat([p, clip_boxes_to_image(r, size)])
                      for p, r, size in zip(proposals, refined.split(counts), image_sizes)]
        class_logits, mask_logits = self.score_rois(maps, candidates)
        scores = F.softmax(class_logits, -1)
        sizes = [len(c) for c in candidates]
        return [self.detect_image(*per_image)
                for per_image in zip(candidates, scores.split(sizes), mask_logits.split(sizes), image_sizes)]

    def detect_image(self, boxes: Tensor, scores: Tensor, mask_logits: Tensor,
                     image_size: tuple[int, int]) -> dict[str, Tensor]:
        """One image's candidates (R, 4), class scores (R, C) and mask logits (R, C, m, m) → its detections."""
        candidate, label = torch.where(scores[:, 1:] > self.score_thresh)  # class 0 is the background
        label = label + 1
        keep = remove_small_boxes(boxes[candidate], min_size=1e-2)
        candidate, label = candidate[keep], label[keep]
        keep = batched_nms(boxes[candidate], scores[candidate, label], label, self.nms_thresh)[:self.detections_per_img]
        candidate, label = candidate[keep], label[keep]
        masks, voted_boxes, kept = mask_voting(boxes[candidate], label, boxes, scores, mask_logits.sigmoid(),
                                               image_size, self.vote_iou_thresh, self.binary_thresh, self.voting)
        return {"boxes": voted_boxes, "labels": label[kept], "scores": scores[candidate[kept], label[kept]],
                "masks": masks[:, None]}
