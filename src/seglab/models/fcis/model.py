"""FCIS (Li, Qi, Dai, Ji, Wei — Fully Convolutional Instance-aware Semantic Segmentation, arXiv:1611.07709):
a ResNet with conv5 dilated (output stride 16), an RPN on conv4 and position-sensitive inside/outside score
maps on conv5 assembled per RoI; the same inputs and outputs as seglab's Mask R-CNN (torchvision's
detection convention)."""
from __future__ import annotations

from typing import Sequence

from ...backbones import BASIC_DEPTHS, ResNet
from ...backbones.fpn import freeze_layers
from ...data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..base import load_weights, options_of, resnet_backbone
from ..detection import AnchorGenerator, GeneralizedRCNN, RCNNTransform, RPNHead, SingleMapRPN
from ..registry import register
from .heads import FCISRoIHeads, PSScoreMaps

PAPER = "Li et al. — Fully Convolutional Instance-aware Semantic Segmentation (arXiv:1611.07709)"
RPN_FEATURE, MAP_FEATURE = "layer3", "layer4"  # conv4 feeds the RPN (as MNC), conv5 the score maps (§3.2)


class FCIS(GeneralizedRCNN):
    """FCIS: :class:`GeneralizedRCNN` (same inputs and outputs as Mask R-CNN) with a dilated ResNet (conv4 and
    conv5 at stride 16), the RPN on conv4 (:class:`SingleMapRPN`) and the position-sensitive heads on conv5
    (:class:`FCISRoIHeads`)."""

    # seglab.export refuses it with this reason
    onnx_unsupported = ("its inference splits the detections by Python counts (len()), which a trace would freeze; "
                        "semantic models and Mask R-CNN (maskrcnn_*, maskxrcnn_*) export")


def fcis(backbone: ResNet, num_classes: int, *, min_size: int | Sequence[int] = 600, max_size: int = 1000,
         image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD,
         anchor_sizes: Sequence[float] = (64, 128, 256, 512), aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
         rpn_pre_nms_top_n_train: int = 6000, rpn_pre_nms_top_n_test: int = 6000,
         rpn_post_nms_top_n_train: int = 300, rpn_post_nms_top_n_test: int = 300, rpn_nms_thresh: float = 0.7,
         rpn_fg_iou_thresh: float = 0.7, rpn_bg_iou_thresh: float = 0.3, rpn_batch_size_per_image: int = 256,
         rpn_positive_fraction: float = 0.5, reduce_channels: int = 1024, score_map_init: str = "normal",
         conv_new_lr_mult: float = 3.0, formulation: str = "joint", group_size: int = 7, mask_size: int = 21,
         assemble: str = "pool", sampling_ratio: int = -1, ohem: bool = True, box_batch_size_per_image: int = 128,
         box_positive_fraction: float = 0.25, box_fg_iou_thresh: float = 0.5, box_bg_iou_thresh: float = 0.5,
         loss_weights=(1.0, 10.0, 1.0), binary_thresh: float = 0.4, bbox_reg_weights=(5.0, 5.0, 2.0, 2.0),
         box_score_thresh: float = 0.05, box_nms_thresh: float = 0.3, vote_iou_thresh: float = 0.5,
         voting: str = "paper", box_detections_per_img: int = 100) -> FCIS:
    """FCIS on a ResNet ``backbone`` whose "layer3" (conv4) and "layer4" (conv5) are at stride 16.

    Defaults are the paper's and its reference code's COCO settings (msracver/FCIS
    ``resnet_v1_101_coco_fcis_end2end_ohem.yaml``): short side 600 (long ≤ 1000), anchors 64..512 px (scales
    4..32 of stride 16) × ratios 0.5/1/2 on conv4, 300 proposals (6000 before NMS) in training and test,
    k = 7 cells pooled into 21×21 RoI maps (``assemble="pool"``), OHEM keeping 128 of the RoIs per image,
    LOSS_WEIGHT 1/10/1 (``loss_weights``), mask targets binarised at 0.4 (``binary_thresh``), BBOX_STDS
    0.2/0.2/0.5/0.5 (``bbox_reg_weights`` 5/5/2/2), CONVNEW3 (``conv_new_lr_mult`` 3), NMS 0.3 and mask
    voting at IoU 0.5. ``reduce_channels`` is the 1×1 conv on conv5 (1024), ``score_map_init`` its and the
    map convs' init, ``formulation`` joint or separate score maps (:class:`PSScoreMaps`). The RPN options
    are Mask R-CNN's (same names); ``box_*`` and the rest configure the RoI stage (:class:`FCISRoIHeads`).
    """
    strides, channels = backbone.strides, backbone.channels
    if strides[RPN_FEATURE] != strides[MAP_FEATURE]:
        raise ValueError(f"FCIS needs conv4 and conv5 at one stride (conv5 dilated), got {strides[RPN_FEATURE]} "
                         f"and {strides[MAP_FEATURE]}: build the ResNet with output_stride=16")
    anchors = AnchorGenerator((tuple(anchor_sizes),), (tuple(aspect_ratios),))
    rpn = SingleMapRPN(
        RPN_FEATURE, anchors, RPNHead(channels[RPN_FEATURE], anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=rpn_fg_iou_thresh, bg_iou_thresh=rpn_bg_iou_thresh, batch_size_per_image=rpn_batch_size_per_image,
        positive_fraction=rpn_positive_fraction, nms_thresh=rpn_nms_thresh,
        pre_nms_top_n={"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
        post_nms_top_n={"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test})
    roi_heads = FCISRoIHeads(
        PSScoreMaps(channels[MAP_FEATURE], num_classes, group_size, reduce_channels, score_map_init, formulation,
                    conv_new_lr_mult), num_classes,
        1.0 / strides[MAP_FEATURE], feature=MAP_FEATURE, group_size=group_size, mask_size=mask_size,
        assemble=assemble, sampling_ratio=sampling_ratio, fg_iou_thresh=box_fg_iou_thresh,
        bg_iou_thresh=box_bg_iou_thresh, batch_size_per_image=box_batch_size_per_image,
        positive_fraction=box_positive_fraction, ohem=ohem, loss_weights=loss_weights, binary_thresh=binary_thresh,
        bbox_reg_weights=bbox_reg_weights, score_thresh=box_score_thresh, nms_thresh=box_nms_thresh,
        vote_iou_thresh=vote_iou_thresh, voting=voting, detections_per_img=box_detections_per_img)
    transform = RCNNTransform(min_size, max_size, image_mean, image_std, size_divisible=strides[MAP_FEATURE])
    return FCIS(backbone, rpn, roi_heads, transform)


@options_of(fcis)
def fcis_resnet(depth: int, num_classes: int, *, width_mult: float = 1.0, frozen_bn: bool = True,
                trainable_backbone_layers: int = 3, output_stride: int = 16, weights_backbone: str | None = None,
                weights: str | None = None, **options) -> FCIS:
    """``fcis`` (``options``) on ResNet-``depth`` at output stride 16 with every conv5 unit dilated 2 (the paper's "hole
    algorithm on all the convolutional layers of conv5", i.e. multi-grid (1, 1, 1)); ``output_stride=8``
    dilates conv4 as well (2) and conv5 by 4, for objects that span few cells at 16. Backbone defaults as
    the reference code fine-tunes from ImageNet: BatchNorm frozen, conv1 and conv2_x (layer1) frozen; from
    scratch, pass ``frozen_bn=False, trainable_backbone_layers=5``. ``width_mult`` scales the ResNet's widths;
    ``weights``: a seglab checkpoint or state dict on disk (strict)."""
    multi_grid = None if depth in BASIC_DEPTHS else (1, 1, 1)  # BasicResNet takes torchvision's rates
    backbone = resnet_backbone(depth, output_stride=output_stride, multi_grid=multi_grid, width_mult=width_mult,
                               weights_backbone=weights_backbone, frozen_bn=frozen_bn)
    return load_weights(fcis(freeze_layers(backbone, trainable_backbone_layers), num_classes, **options), weights)


@register("fcis_resnet50", task="instance", paper=PAPER)
@options_of(fcis_resnet)
def fcis_resnet50(num_classes: int, **options) -> FCIS:
    """FCIS, ResNet-50; the small configuration (e.g. ``width_mult=0.25, reduce_channels=128, min_size=128,
    max_size=128, anchor_sizes=(16, 32, 64, 128)``) trains on a CPU."""
    return fcis_resnet(50, num_classes, **options)


@register("fcis_resnet18", task="instance", paper=PAPER)
@options_of(fcis_resnet)
def fcis_resnet18(num_classes: int, **options) -> FCIS:
    """FCIS, ResNet-18 (dilated by torchvision's rule, see ``BasicResNet``): the backbone of the small Mask R-CNN
    configuration, for comparisons at equal capacity."""
    return fcis_resnet(18, num_classes, **options)


@register("fcis_resnet101", task="instance", paper=PAPER)
@options_of(fcis_resnet)
def fcis_resnet101(num_classes: int, **options) -> FCIS:
    """FCIS, ResNet-101 (the paper's network)."""
    return fcis_resnet(101, num_classes, **options)
