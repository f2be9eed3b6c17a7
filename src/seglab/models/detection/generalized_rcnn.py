"""The two-stage flow shared by Mask R-CNN, Mask^X R-CNN and FCIS (torchvision's ``GeneralizedRCNN``):
``transform → backbone → rpn → roi_heads → transform.postprocess``, each part a built module."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .transform import RCNNTransform


class GeneralizedRCNN(nn.Module):
    """``model(images, targets=None)`` with images list[(3,H_i,W_i) float in 0..1] and, in training, targets
    list[{"boxes" (G,4) float xyxy pixels, "labels" (G,) int64 in 1..C-1, "masks" (G,H_i,W_i) uint8}] →
    training: {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"};
    eval: list[{"boxes" (D,4), "labels" (D,), "scores" (D,), "masks" (D,1,H_i,W_i) probabilities}].

    ``rpn(features, padded_size, image_sizes, targets)`` → (proposals [(P_i, 4)], losses) and
    ``roi_heads(features, proposals, image_sizes, targets)`` → (detections on the resized images, losses);
    module names as torchvision's, so its state dicts load.
    """

    def __init__(self, backbone: nn.Module, rpn: nn.Module, roi_heads: nn.Module, transform: RCNNTransform):
        super().__init__()
        self.transform, self.backbone, self.rpn, self.roi_heads = transform, backbone, rpn, roi_heads

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training:
            check_targets(targets, type(self).__name__)
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        batch, image_sizes, targets = self.transform(images, targets)
        features = self.backbone(batch)
        proposals, rpn_losses = self.rpn(features, batch.shape[-2:], image_sizes, targets)
        detections, head_losses = self.roi_heads(features, proposals, image_sizes, targets)
        if self.training:
            return {**head_losses, **rpn_losses}
        return self.transform.postprocess(detections, image_sizes, original_sizes)


def check_targets(targets: list[dict[str, Tensor]] | None, model: str = "the model") -> None:
    """ValueError unless every target has float (G,4) boxes of positive size, int64 labels and masks;
    ``model`` names the model in the message."""
    if targets is None:
        raise ValueError(f"{model} needs targets in training mode")
    for index, target in enumerate(targets):
        missing = {"boxes", "labels", "masks"} - set(target)
        if missing:
            raise ValueError(f"target {index} lacks {sorted(missing)}; expected boxes, labels and masks")
        boxes = target["boxes"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
            raise ValueError(f"target {index}: boxes must be a float (G, 4) tensor, got {boxes.dtype} "
                             f"{tuple(boxes.shape)}")
        if target["labels"].dtype != torch.int64:
            raise ValueError(f"target {index}: labels must be int64, got {target['labels'].dtype}")
        degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(1)
        if degenerate.any():
            raise ValueError(f"target {index}: box {boxes[degenerate][0].tolist()} has no positive width and "
                             "height (xyxy expected)")
