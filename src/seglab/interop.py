"""Weight interop with torchvision: its segmentation models and Mask R-CNN → seglab models with the same weights."""
from __future__ import annotations

from torch import nn
from torchvision.models import segmentation as tvseg
from torchvision.models.detection import MaskRCNN
from torchvision.models.resnet import BasicBlock
from torchvision.ops import FrozenBatchNorm2d

from . import models
from .backbones.fpn import BASIC_DEPTHS, TRAINABLE_ORDER
from .backbones.resnet import DEPTHS


def _depth(tv_model: nn.Module) -> int:
    """50 or 101, from the number of blocks in layer3."""
    blocks = len(tv_model.backbone.layer3)
    return next(depth for depth, layout in DEPTHS.items() if layout[2] == blocks)


def _output_stride(tv_model: nn.Module) -> int:
    """Output stride of the torchvision backbone (its layer3/layer4 trade stride for dilation)."""
    stride = 32
    for layer in (tv_model.backbone.layer4, tv_model.backbone.layer3):
        if layer[0].conv2.stride == (1, 1) and (layer[0].downsample is None or layer[0].downsample[0].stride == (1, 1)):
            stride //= 2
    return stride


def from_torchvision(tv_model: nn.Module) -> nn.Module:
    """A torchvision ``fcn_resnet50/101`` or ``deeplabv3_resnet50/101`` (with or without aux head) as
    the seglab model with the same weights and the same outputs (eval mode: ``out`` and ``aux``).

    The parameter names are identical by construction; the returned model is in the input's train/eval mode.
    A torchvision ``MaskRCNN`` (ResNet-FPN) is converted by :func:`_from_torchvision_maskrcnn`.
    """
    if isinstance(tv_model, MaskRCNN):
        return _from_torchvision_maskrcnn(tv_model)
    if isinstance(tv_model, tvseg.DeepLabV3):
        family = "deeplabv3"
        rates = [branch[0].dilation[0] for branch in tv_model.classifier[0].convs[1:4]]
        options = {"aspp_rates": rates}
    elif isinstance(tv_model, tvseg.FCN):
        family, options = "fcn", {}
    else:
        raise ValueError(f"from_torchvision takes torchvision FCN or DeepLabV3 (ResNet) or MaskRCNN models, got "
                         f"{type(tv_model).__name__}")
    num_classes = tv_model.classifier[-1].out_channels
    model = models.create(f"{family}_resnet{_depth(tv_model)}", num_classes, aux=tv_model.aux_classifier is not None,
                          output_stride=_output_stride(tv_model), **options)
    model.load_state_dict(tv_model.state_dict(), strict=True)
    return model.train(tv_model.training)


def _from_torchvision_maskrcnn(tv_model: MaskRCNN) -> nn.Module:
    """``maskrcnn_resnet{18,50}_fpn`` with the torchvision model's weights and its settings, which live outside
    the state dict: image transform (sizes, mean/std), anchors, RPN and box-head thresholds and counts, the
    backbone's BatchNorm kind (frozen or not, and its eps: torchvision's COCO weights use eps 0) and which
    backbone stages train."""
    body, rpn, heads, transform = tv_model.backbone.body, tv_model.rpn, tv_model.roi_heads, tv_model.transform
    if not hasattr(heads.box_head, "fc6") or transform.fixed_size is not None:
        raise ValueError("from_torchvision converts Mask R-CNN with the TwoMLPHead box head and min/max-size "
                         "resizing (maskrcnn_resnet50_fpn), not the v2 model or fixed-size transforms")
    basic = isinstance(body.layer1[0], BasicBlock)
    blocks = tuple(len(getattr(body, f"layer{i}")) for i in range(1, 5))
    depth = next(d for d, layout in (BASIC_DEPTHS if basic else DEPTHS).items() if layout == blocks)
    trainable = sum(any(p.requires_grad for n, p in body.named_parameters() if n.startswith(prefix))
                    for prefix in TRAINABLE_ORDER)
    options = dict(
        fpn_channels=tv_model.backbone.out_channels, frozen_bn=isinstance(body.bn1, FrozenBatchNorm2d),
        bn_eps=body.bn1.eps,
        trainable_backbone_layers=trainable, min_size=transform.min_size, max_size=transform.max_size,
        image_mean=transform.image_mean, image_std=transform.image_std,
        anchor_sizes=rpn.anchor_generator.sizes, aspect_ratios=rpn.anchor_generator.aspect_ratios,
        rpn_pre_nms_top_n_train=rpn._pre_nms_top_n["training"], rpn_pre_nms_top_n_test=rpn._pre_nms_top_n["testing"],
        rpn_post_nms_top_n_train=rpn._post_nms_top_n["training"],
        rpn_post_nms_top_n_test=rpn._post_nms_top_n["testing"], rpn_nms_thresh=rpn.nms_thresh,
        rpn_fg_iou_thresh=rpn.proposal_matcher.high_threshold, rpn_bg_iou_thresh=rpn.proposal_matcher.low_threshold,
        rpn_batch_size_per_image=rpn.fg_bg_sampler.batch_size_per_image,
        rpn_positive_fraction=rpn.fg_bg_sampler.positive_fraction, rpn_score_thresh=rpn.score_thresh,
        representation_size=heads.box_head.fc6.out_features,
        mask_layers=[block[0].out_channels for block in heads.mask_head],
        box_score_thresh=heads.score_thresh, box_nms_thresh=heads.nms_thresh,
        box_detections_per_img=heads.detections_per_img, box_fg_iou_thresh=heads.proposal_matcher.high_threshold,
        box_bg_iou_thresh=heads.proposal_matcher.low_threshold,
        box_batch_size_per_image=heads.fg_bg_sampler.batch_size_per_image,
        box_positive_fraction=heads.fg_bg_sampler.positive_fraction, bbox_reg_weights=heads.box_coder.weights)
    model = models.create(f"maskrcnn_resnet{depth}_fpn", heads.box_predictor.cls_score.out_features, **options)
    model.load_state_dict(tv_model.state_dict(), strict=True)
    return model.train(tv_model.training)
