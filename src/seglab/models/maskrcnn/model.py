"""Mask R-CNN (He et al., arXiv:1703.06870) on a ResNet-FPN backbone, torchvision-compatible: the same module
tree and parameter names as ``torchvision.models.detection.maskrcnn_resnet50_fpn``, so its state dicts load
strictly, and the same inputs, outputs and defaults (COCO: 91 classes with the background)."""
from __future__ import annotations

from typing import Sequence

from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ...backbones.fpn import BackboneWithFPN, resnet_fpn_backbone
from ...data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ...ops import MultiScaleRoIAlign
from ..base import load_weights, options_of
from ..detection import AnchorGenerator, GeneralizedRCNN, RCNNTransform, RegionProposalNetwork, RPNHead
from ..registry import register
from .masks import MaskRCNNHeads, MaskRCNNPredictor
from .roi_heads import FastRCNNPredictor, RoIHeads, TwoMLPHead

PAPER = "He et al. — Mask R-CNN (arXiv:1703.06870)"
MODULE_OPTIONS = ("box_roi_pool", "mask_roi_pool", "mask_predictor")  # built parts, not user options
FPN_LEVELS = ["0", "1", "2", "3"]  # RoIs are pooled from P2..P5 (FPN eq. 1); "pool" (P6) only feeds the RPN


class MaskRCNN(GeneralizedRCNN):
    """Mask R-CNN: :class:`GeneralizedRCNN` (same inputs and outputs) with an FPN backbone, an RPN on every
    level and :class:`RoIHeads` (box head, then the mask branch on the detections)."""


def _per_level(values: Sequence, levels: int) -> tuple[tuple[float, ...], ...]:
    """Aspect ratios given once for all levels (flat) or per level (nested) → one tuple per level."""
    if all(isinstance(v, (int, float)) for v in values):
        return (tuple(values),) * levels
    return tuple(tuple(v) for v in values)


def maskrcnn(backbone: BackboneWithFPN, num_classes: int, *, min_size: int | Sequence[int] = 800,
             max_size: int = 1333, image_mean: Sequence[float] = IMAGENET_MEAN,
             image_std: Sequence[float] = IMAGENET_STD, anchor_sizes: Sequence = (32, 64, 128, 256, 512),
             aspect_ratios: Sequence = (0.5, 1.0, 2.0), rpn_pre_nms_top_n_train: int = 2000,
             rpn_pre_nms_top_n_test: int = 1000, rpn_post_nms_top_n_train: int = 2000,
             rpn_post_nms_top_n_test: int = 1000, rpn_nms_thresh: float = 0.7, rpn_fg_iou_thresh: float = 0.7,
             rpn_bg_iou_thresh: float = 0.3, rpn_batch_size_per_image: int = 256,
             rpn_positive_fraction: float = 0.5, rpn_score_thresh: float = 0.0, roi_pool_type: str = "align",
             box_roi_pool: nn.Module | None = None, mask_roi_pool: nn.Module | None = None,
             representation_size: int = 1024, mask_layers: Sequence[int] = (256, 256, 256, 256),
             box_score_thresh: float = 0.05, box_nms_thresh: float = 0.5, box_detections_per_img: int = 100,
             box_fg_iou_thresh: float = 0.5, box_bg_iou_thresh: float = 0.5, box_batch_size_per_image: int = 512,
             box_positive_fraction: float = 0.25, bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
             class_agnostic_masks: bool = False, mask_classes: Sequence[int] | None = None,
             mask_predictor: nn.Module | None = None) -> MaskRCNN:
    """Mask R-CNN on an FPN ``backbone`` (features "0".."3", "pool", ``out_channels`` each) with torchvision's
    defaults (its ``MaskRCNN`` arguments, same names). Beyond them:

    - ``anchor_sizes``: per FPN level, one size or a tuple of sizes (√area in pixels; 8..128 suits 64-pixel
      images); ``aspect_ratios`` (h/w): one tuple for all levels or one per level.
    - ``roi_pool_type``: "align" (RoIAlign, sampling 2, not aligned: torchvision's) or "pool" (RoIPool, the
      paper's Table 2c ablation). ``box_roi_pool`` / ``mask_roi_pool`` replace the poolers outright.
    - ``representation_size``: width of the box head's two fc layers (1024).
    - ``mask_layers``: channels of the mask head's 3×3 convs (four of 256); the deconvolution keeps the last.
    - ``class_agnostic_masks``: one mask map for all classes (the Mask^X paper's baseline, §4.1).
    - ``mask_classes``: class ids that carry mask supervision (partial supervision, see ``RoIHeads``).
    - ``mask_predictor``: replaces the mask predictor outright (Mask^X R-CNN's ``MaskXPredictor``).
    """
    channels, levels = backbone.out_channels, len(backbone.strides)
    sizes = tuple((s,) if isinstance(s, (int, float)) else tuple(s) for s in anchor_sizes)
    anchors = AnchorGenerator(sizes, _per_level(aspect_ratios, levels))
    rpn = RegionProposalNetwork(
        anchors, RPNHead(channels, anchors.num_anchors_per_location()[0]), fg_iou_thresh=rpn_fg_iou_thresh,
        bg_iou_thresh=rpn_bg_iou_thresh, batch_size_per_image=rpn_batch_size_per_image,
        positive_fraction=rpn_positive_fraction, nms_thresh=rpn_nms_thresh, score_thresh=rpn_score_thresh,
        pre_nms_top_n={"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
        post_nms_top_n={"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test})
    box_roi_pool = box_roi_pool or MultiScaleRoIAlign(FPN_LEVELS, 7, sampling_ratio=2, mode=roi_pool_type)
    mask_roi_pool = mask_roi_pool or MultiScaleRoIAlign(FPN_LEVELS, 14, sampling_ratio=2, mode=roi_pool_type)
    box_features = channels * box_roi_pool.output_size[0] * box_roi_pool.output_size[1]
    roi_heads = RoIHeads(
        box_roi_pool, TwoMLPHead(box_features, representation_size),
        FastRCNNPredictor(representation_size, num_classes), mask_roi_pool, MaskRCNNHeads(channels, mask_layers),
        mask_predictor or MaskRCNNPredictor(mask_layers[-1], mask_layers[-1], 1 if class_agnostic_masks else num_classes),
        fg_iou_thresh=box_fg_iou_thresh,
        bg_iou_thresh=box_bg_iou_thresh, batch_size_per_image=box_batch_size_per_image,
        positive_fraction=box_positive_fraction, bbox_reg_weights=bbox_reg_weights, score_thresh=box_score_thresh,
        nms_thresh=box_nms_thresh, detections_per_img=box_detections_per_img, mask_classes=mask_classes)
    return MaskRCNN(backbone, rpn, roi_heads, RCNNTransform(min_size, max_size, image_mean, image_std))


@options_of(maskrcnn, exclude=MODULE_OPTIONS)
def maskrcnn_resnet_fpn(depth: int, num_classes: int, *, fpn_channels: int = 256,
                        trainable_backbone_layers: int = 3, frozen_bn: bool = True, bn_eps: float | None = None,
                        weights_backbone: str | None = None, weights: str | None = None, **options) -> MaskRCNN:
    """``maskrcnn`` (``options``) on ``resnet_fpn_backbone(depth)``; ``weights``: a seglab checkpoint or torchvision Mask R-CNN
    state dict on disk (strict). The backbone defaults are detection practice with ImageNet weights
    (torchvision's too): BatchNorm frozen, conv1 and layer1 frozen; from scratch, pass
    ``frozen_bn=False, trainable_backbone_layers=5``. ``bn_eps`` overrides the backbone BatchNorm eps:
    torchvision's COCO_V1 Mask R-CNN checkpoint was trained with eps 0 (pass ``bn_eps=0.0`` with it)."""
    backbone = resnet_fpn_backbone(depth, out_channels=fpn_channels, trainable_layers=trainable_backbone_layers,
                                   frozen_bn=frozen_bn, weights_backbone=weights_backbone)
    if bn_eps is not None:
        for module in backbone.body.modules():
            if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                module.eps = bn_eps
    return load_weights(maskrcnn(backbone, num_classes, **options), weights)


@register("maskrcnn_resnet50_fpn", task="instance", paper=PAPER)
@options_of(maskrcnn_resnet_fpn)
def maskrcnn_resnet50_fpn(num_classes: int, **options) -> MaskRCNN:
    """Mask R-CNN, ResNet-50-FPN (the paper's R-50-FPN; torchvision's ``maskrcnn_resnet50_fpn``)."""
    return maskrcnn_resnet_fpn(50, num_classes, **options)


@register("maskrcnn_resnet18_fpn", task="instance", paper=PAPER)
@options_of(maskrcnn_resnet_fpn)
def maskrcnn_resnet18_fpn(num_classes: int, **options) -> MaskRCNN:
    """Mask R-CNN, ResNet-18-FPN: the small configuration (e.g. ``fpn_channels=128, representation_size=256,
    mask_layers=(64, 64), anchor_sizes=(8, 16, 32, 64, 128)``) trains on a CPU."""
    return maskrcnn_resnet_fpn(18, num_classes, **options)
