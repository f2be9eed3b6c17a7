"""The second stage (Fast R-CNN, arXiv:1504.08083, with Mask R-CNN's mask branch, arXiv:1703.06870 §3):
RoI features of the proposals → class scores, per-class box refinements and per-class masks."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import clip_boxes_to_image, remove_small_boxes

from ...ops import batched_nms
from ..detection import BoxCoder, label_proposals, sample_balanced
from .masks import class_masks, mask_loss


class TwoMLPHead(nn.Module):
    """FPN's box head (FPN §4.2): flatten, then two fully connected layers + ReLU. (K,C,7,7) → (K,width)."""

    def __init__(self, in_features: int, representation_size: int = 1024):
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class FastRCNNPredictor(nn.Module):
    """Class logits (K, num_classes) and per-class box deltas (K, 4·num_classes) from (K, width)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    """Box and mask heads on the proposals of each image. ``num_classes`` counts the background (class 0).

    Training: ground-truth boxes join the proposals; a proposal with IoU ≥ ``fg_iou_thresh`` with a ground
    truth takes its class, < ``bg_iou_thresh`` is background; ``batch_size_per_image`` are sampled with at
    most ``positive_fraction`` foreground. Losses: cross-entropy on the classes, smooth-L1 (β = 1/9) on the
    foreground's deltas of its class summed and divided by the number sampled, and the mask loss on the
    foreground (§3). Inference: per class, decoded boxes clipped, scores > ``score_thresh``, boxes < 0.01 px
    dropped, NMS at ``nms_thresh`` per class, the ``detections_per_img`` best kept, then their masks.

    ``box_roi_pool`` / ``mask_roi_pool`` map (features, boxes, image sizes) to (K,C,7,7) / (K,C,14,14).
    ``mask_classes``: partial supervision (Mask^X R-CNN, arXiv:1711.10370 §3.2): only foreground RoIs of
    these classes (set A) enter the mask loss; the others (set B) train boxes only. None: every class.
    """

    def __init__(self, box_roi_pool: nn.Module, box_head: nn.Module, box_predictor: nn.Module,
                 mask_roi_pool: nn.Module, mask_head: nn.Module, mask_predictor: nn.Module, *,
                 fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5, batch_size_per_image: int = 512,
                 positive_fraction: float = 0.25, bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                 mask_classes: Sequence[int] | None = None):
        super().__init__()
        if mask_classes is not None and len(mask_classes) == 0:
            raise ValueError("mask_classes is empty: at least one class must carry mask supervision")
        self.register_buffer("mask_classes", None if mask_classes is None else torch.as_tensor(mask_classes),
                             persistent=False)
        self.box_roi_pool, self.box_head, self.box_predictor = box_roi_pool, box_head, box_predictor
        self.mask_roi_pool, self.mask_head, self.mask_predictor = mask_roi_pool, mask_head, mask_predictor
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.fg_iou_thresh, self.bg_iou_thresh = fg_iou_thresh, bg_iou_thresh
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img

    def box_predictions(self, features: dict[str, Tensor], proposals: list[Tensor],
                        image_sizes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """Class logits (K, num_classes) and deltas (K, 4·num_classes) of the concatenated proposals."""
        return self.box_predictor(self.box_head(self.box_roi_pool(features, proposals, image_sizes)))

    def mask_logits(self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
                    ) -> Tensor:
        """Mask logits (K, num_classes, 28, 28) of the concatenated boxes."""
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_sizes)), self.box_predictor)

    def masks_for(self, features: dict[str, Tensor], boxes: list[Tensor], labels: Tensor,
                  image_sizes: list[tuple[int, int]]) -> Tensor:
        """Mask probabilities (K, 1, 28, 28) of the concatenated given boxes for the given classes (K,)."""
        return class_masks(self.mask_logits(features, boxes, image_sizes), labels)

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """FPN features, proposals [(P_i, 4)] and image sizes → (detections [{"boxes" (D,4), "labels" (D,),
        "scores" (D,), "masks" (D,1,28,28) probabilities}], {}) in eval; ([], losses) in training."""
        if self.training:
            if targets is None:
                raise ValueError("the RoI heads need targets in training mode")
            return [], self.loss(features, proposals, image_sizes, targets)
        class_logits, deltas = self.box_predictions(features, proposals, image_sizes)
        detections = self.postprocess(class_logits, deltas, proposals, image_sizes)
        logits = self.mask_logits(features, [d["boxes"] for d in detections], image_sizes)
        probs = class_masks(logits, torch.cat([d["labels"] for d in detections]))
        for detection, masks in zip(detections, probs.split([d["boxes"].shape[0] for d in detections])):
            detection["masks"] = masks
        return detections, {}

    def sample(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
               ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Training proposals (ground truth added), sampled → per image: proposals (S,4), their labels (S,)
        (0 = background) and the index of their matched ground truth (S,)."""
        sampled_proposals, labels, matched = label_proposals(proposals, targets, self.fg_iou_thresh, self.bg_iou_thresh)
        positive, negative = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction)
        keep = [torch.where(p | n)[0] for p, n in zip(positive, negative)]
        return ([p[k] for p, k in zip(sampled_proposals, keep)], [x[k] for x, k in zip(labels, keep)],
                [m[k] for m, k in zip(matched, keep)])

    def loss(self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
             targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """{"loss_classifier", "loss_box_reg", "loss_mask"} on a sampled batch of proposals (see the class)."""
        proposals, labels, matched = self.sample(proposals, targets)
        class_logits, deltas = self.box_predictions(features, proposals, image_sizes)
        positive = [torch.where(label > 0)[0] for label in labels]
        fg_proposals = [p[k] for p, k in zip(proposals, positive)]
        fg_matched = [m[k] for m, k in zip(matched, positive)]
        fg_boxes = torch.cat([t["boxes"][m] for t, m in zip(targets, fg_matched)]).to(deltas.dtype)
        all_labels = torch.cat(labels)
        foreground = torch.where(all_labels > 0)[0]
        fg_deltas = deltas.reshape(len(deltas), -1, 4)[foreground, all_labels[foreground]]
        box_loss = F.smooth_l1_loss(fg_deltas, self.box_coder.encode(fg_boxes, torch.cat(fg_proposals)), beta=1 / 9,
                                    reduction="sum") / all_labels.numel()
        if self.mask_classes is not None:  # partial supervision: set-B RoIs get no mask loss
            supervised = [torch.isin(label[k], self.mask_classes) for label, k in zip(labels, positive)]
            fg_proposals = [p[s] for p, s in zip(fg_proposals, supervised)]
            fg_matched = [m[s] for m, s in zip(fg_matched, supervised)]
        logits = self.mask_logits(features, fg_proposals, image_sizes)
        return {"loss_classifier": F.cross_entropy(class_logits, all_labels), "loss_box_reg": box_loss,
                "loss_mask": mask_loss(logits, fg_proposals, [t["masks"] for t in targets],
                                       [t["labels"] for t in targets], fg_matched)}

    def postprocess(self, class_logits: Tensor, deltas: Tensor, proposals: list[Tensor],
                    image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections per image from the heads' outputs on all proposals (see the class)."""
        num_classes = class_logits.shape[-1]
        boxes = self.box_coder.decode(deltas, torch.cat(proposals))
        scores = F.softmax(class_logits, -1)
        counts = [p.shape[0] for p in proposals]  # shapes, not len(): traced into an exported graph
        detections = []
        for boxes_i, scores_i, size in zip(boxes.split(counts), scores.split(counts), image_sizes):
            labels = torch.arange(num_classes, device=boxes_i.device).expand_as(scores_i)
            # class 0 is the background: no detections of it
            boxes_i = clip_boxes_to_image(boxes_i, size)[:, 1:].reshape(-1, 4)
            scores_i, labels = scores_i[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.where(scores_i > self.score_thresh)[0]
            keep = keep[remove_small_boxes(boxes_i[keep], min_size=1e-2)]
            keep = keep[batched_nms(boxes_i[keep], scores_i[keep], labels[keep], self.nms_thresh, num_classes)]
            keep = keep[:self.detections_per_img]
            detections.append({"boxes": boxes_i[keep], "labels": labels[keep], "scores": scores_i[keep]})
        return detections
