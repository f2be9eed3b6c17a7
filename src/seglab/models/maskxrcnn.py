"""Mask^X R-CNN (Hu et al., "Learning to Segment Every Thing", arXiv:1711.10370).

Mask R-CNN whose mask head does not learn its per-class weights: a class-agnostic weight-transfer function
τ predicts each class's mask weights from that class's detection weights (the box head's classification
row and/or its four box-regression rows), w_seg^c = τ(w_det^c; θ) (§3.1). Classes trained with boxes only
(set B) therefore still get masks, through τ, while only set-A classes carry mask supervision (§3.2,
``mask_classes``). Optionally a class-agnostic MLP mask branch is added to the FCN's logits (the paper's
"transfer + MLP", §3.4). Sizes, layers and fills follow the authors' code (ronghanghu/seg_every_thing,
``lib/modeling/mask_rcnn_heads.py``). Importing this module registers ``maskxrcnn_resnet50_fpn`` and
``maskxrcnn_resnet18_fpn``.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import options_of
from .maskrcnn.model import MaskRCNN, maskrcnn_resnet_fpn
from .maskrcnn.roi_heads import FastRCNNPredictor
from .registry import register

PAPER = "Hu et al. — Learning to Segment Every Thing (arXiv:1711.10370)"

TRANSFER_INPUTS = ("cls", "box", "cls+box")
# τ's activation (Table 2): the reference's LeakyReLU has slope 0.1 (USE_LEAKYRELU, the default)
TRANSFER_ACTIVATIONS = {"leaky_relu": partial(nn.LeakyReLU, 0.1), "relu": nn.ReLU}


def detection_weights(box_predictor: FastRCNNPredictor, source: str = "cls+box") -> Tensor:
    """Per-class detection weights w_det (C, D): the classification row (D = R), the 4 box-regression rows
    concatenated (D = 4R), or both (D = 5R), R being the box head's width."""
    if source not in TRANSFER_INPUTS:
        raise ValueError(f"transfer input must be one of {TRANSFER_INPUTS}, got {source!r}")
    cls = box_predictor.cls_score.weight
    box = box_predictor.bbox_pred.weight.reshape(cls.shape[0], -1)  # rows 4c..4c+3 belong to class c
    return {"cls": cls, "box": box, "cls+box": torch.cat([cls, box], 1)}[source]


class WeightTransfer(nn.Sequential):
    """τ: (C, D) detection weights → (C, out_features) mask weights, the same function for every class:
    ``depth`` fully connected layers ``fc1``..``fc{depth}`` (1: one linear map; hidden ones ``hidden`` wide)
    with ``activation`` ("leaky_relu", slope 0.1, or "relu") between them (Table 2's ablation). Weights are
    filled as Caffe2's MSRAFill, N(0, 2 / out_features), biases with zeros, as in the reference."""

    def __init__(self, in_features: int, out_features: int, hidden: int, *, depth: int = 2,
                 activation: str = "leaky_relu"):
        if depth < 1:
            raise ValueError(f"transfer_depth must be at least 1 (one linear layer), got {depth}")
        if activation not in TRANSFER_ACTIVATIONS:
            raise ValueError(f"transfer_activation must be one of {tuple(TRANSFER_ACTIVATIONS)}, got {activation!r}")
        widths = [in_features] + [hidden] * (depth - 1) + [out_features]
        layers = OrderedDict()
        for i, (width_in, width_out) in enumerate(zip(widths, widths[1:]), 1):
            if i > 1:
                layers[f"act{i - 1}"] = TRANSFER_ACTIVATIONS[activation]()
            layers[f"fc{i}"] = nn.Linear(width_in, width_out)
            nn.init.kaiming_normal_(layers[f"fc{i}"].weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layers[f"fc{i}"].bias)
        super().__init__(layers)


class MaskXPredictor(nn.Module):
    """Mask R-CNN's 2× deconvolution + ReLU, then per-class 1×1 mask logits whose weights τ predicts from
    the box predictor's weights, with no bias (as the reference's ``mask_fcn_logits``).
    (K, C_in, m, m) RoI features and the box predictor → (K, num_classes, 2m, 2m) logits.

    ``transfer_hidden`` (τ's hidden width) defaults to ``dim_reduced``, the reference's ``dim_h = dim``.
    ``stop_gradient`` detaches the detection weights on their way into τ (§3.1: the mask loss then trains
    τ and the mask head, not the box head). ``mlp_branch``: one fully connected layer from the deconvolved
    features (dim_reduced·(2m)²) to one class-agnostic (2m)² mask, filled N(0, 0.001²), added to every
    class's logits (§3.4; the reference's ``cls_agnostic_mlp_branch``: 157 M weights at 256 channels, 28²).
    """

    def __init__(self, in_channels: int, dim_reduced: int, detection_dim: int, *, transfer_input: str = "cls+box",
                 transfer_hidden: int | None = None, transfer_depth: int = 2, transfer_activation: str = "leaky_relu",
                 stop_gradient: bool = True, mlp_branch: bool = False, roi_size: int = 14):
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2)
        nn.init.kaiming_normal_(self.conv5_mask.weight, mode="fan_out", nonlinearity="relu")  # as Mask R-CNN's
        self.transfer = WeightTransfer(detection_dim, dim_reduced, transfer_hidden or dim_reduced,
                                       depth=transfer_depth, activation=transfer_activation)
        self.transfer_input, self.stop_gradient = transfer_input, stop_gradient
        self.mlp = None
        if mlp_branch:
            self.mlp = nn.Linear(dim_reduced * (2 * roi_size) ** 2, (2 * roi_size) ** 2)
            nn.init.normal_(self.mlp.weight, std=0.001)
            nn.init.zeros_(self.mlp.bias)

    def class_weights(self, box_predictor: FastRCNNPredictor) -> Tensor:
        """τ(w_det) for every class: (num_classes, dim_reduced)."""
        weights = detection_weights(box_predictor, self.transfer_input)
        return self.transfer(weights.detach() if self.stop_gradient else weights)

    def forward(self, x: Tensor, box_predictor: FastRCNNPredictor) -> Tensor:
        features = F.relu(self.conv5_mask(x))
        logits = torch.einsum("kdhw,cd->kchw", features, self.class_weights(box_predictor))
        if self.mlp is not None:  # (K, 1, 2m, 2m), broadcast over the classes (the reference tiles it)
            logits = logits + self.mlp(features.flatten(1)).view(len(x), 1, *logits.shape[-2:])
        return logits


@options_of(maskrcnn_resnet_fpn)
def maskxrcnn_resnet_fpn(depth: int, num_classes: int, *, transfer_input: str = "cls+box",
                         transfer_hidden: int | None = None, transfer_depth: int = 2,
                         transfer_activation: str = "leaky_relu", stop_gradient: bool = True, mlp_branch: bool = False,
                         representation_size: int = 1024, mask_layers=(256, 256, 256, 256), **options) -> MaskRCNN:
    """``maskrcnn_resnet_fpn`` (every option, e.g. ``mask_classes`` for partial supervision) with a
    ``MaskXPredictor``. τ: ``transfer_depth`` fully connected layers (1, 2 or 3 in Table 2; 2, the paper's
    choice), ``transfer_hidden`` wide (default: the mask head's width, 256), ``transfer_activation``
    "leaky_relu" (slope 0.1) or "relu". ``mlp_branch``: the class-agnostic MLP mask (off: 157 M parameters)."""
    if transfer_input not in TRANSFER_INPUTS:
        raise ValueError(f"transfer_input must be one of {TRANSFER_INPUTS}, got {transfer_input!r}")
    detection_dim = representation_size * {"cls": 1, "box": 4, "cls+box": 5}[transfer_input]
    predictor = MaskXPredictor(mask_layers[-1], mask_layers[-1], detection_dim, transfer_input=transfer_input,
                               transfer_hidden=transfer_hidden, transfer_depth=transfer_depth,
                               transfer_activation=transfer_activation, stop_gradient=stop_gradient,
                               mlp_branch=mlp_branch)
    return maskrcnn_resnet_fpn(depth, num_classes, representation_size=representation_size, mask_layers=mask_layers,
                               mask_predictor=predictor, **options)


@register("maskxrcnn_resnet50_fpn", task="instance", paper=PAPER)
@options_of(maskxrcnn_resnet_fpn)
def maskxrcnn_resnet50_fpn(num_classes: int, **options) -> MaskRCNN:
    """Mask^X R-CNN, ResNet-50-FPN: masks for every class through the weight transfer τ."""
    return maskxrcnn_resnet_fpn(50, num_classes, **options)


@register("maskxrcnn_resnet18_fpn", task="instance", paper=PAPER)
@options_of(maskxrcnn_resnet_fpn)
def maskxrcnn_resnet18_fpn(num_classes: int, **options) -> MaskRCNN:
    """Mask^X R-CNN, ResNet-18-FPN (small configurations as ``maskrcnn_resnet18_fpn``)."""
    return maskxrcnn_resnet_fpn(18, num_classes, **options)
