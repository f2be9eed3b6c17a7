"""Mask^X R-CNN (Hu et al., "Learning to Segment Every Thing", arXiv:1711.10370).

Mask R-CNN whose mask head does not learn its per-class weights: a class-agnostic weight-transfer function
τ predicts each class's mask weights from that class's detection weights (the box head's classification
row and/or its four box-regression rows), w_seg^c = τ(w_det^c; θ) (§3.1). Classes trained with boxes only
(set B) therefore still get masks, through τ, while only set-A classes carry mask supervision (§3.2,
``mask_classes``). Optionally a class-agnostic MLP mask branch is added to the FCN's logits (the paper's
"transfer + MLP", §3.4). Importing this module registers ``maskxrcnn_resnet50_fpn`` and ``maskxrcnn_resnet18_fpn``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import options_of
from .maskrcnn.model import MaskRCNN, maskrcnn_resnet_fpn
from .maskrcnn.roi_heads import FastRCNNPredictor
from .registry import register

PAPER = "Hu et al. — Learning to Segment Every Thing (arXiv:1711.10370)"

TRANSFER_INPUTS = ("cls", "box", "cls+box")


def detection_weights(box_predictor: FastRCNNPredictor, source: str = "cls+box") -> Tensor:
    """Per-class detection weights w_det (C, D): the classification row (D = R), the 4 box-regression rows
    concatenated (D = 4R), or both (D = 5R), R being the box head's width."""
    if source not in TRANSFER_INPUTS:
        raise ValueError(f"transfer input must be one of {TRANSFER_INPUTS}, got {source!r}")
    cls = box_predictor.cls_score.weight
    box = box_predictor.bbox_pred.weight.reshape(cls.shape[0], -1)  # rows 4c..4c+3 belong to class c
    return {"cls": cls, "box": box, "cls+box": torch.cat([cls, box], 1)}[source]


class WeightTransfer(nn.Module):
    """τ: (C, D) detection weights → (C, out_features) mask weights; two fully connected layers with a
    LeakyReLU (slope 0.01) between them, the same for every class."""

    def __init__(self, in_features: int, out_features: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(in_features, hidden), nn.Linear(hidden, out_features)

    def forward(self, weights: Tensor) -> Tensor:
        return self.fc2(F.leaky_relu(self.fc1(weights)))


class MaskXPredictor(nn.Module):
    """Mask R-CNN's 2× deconvolution + ReLU, then per-class 1×1 mask logits whose weights τ predicts from
    the box predictor's weights (plus one learned bias shared by all classes).
    (K, C_in, m, m) RoI features and the box predictor → (K, num_classes, 2m, 2m) logits.

    ``stop_gradient`` detaches the detection weights on their way into τ (§3.1: the mask loss then trains
    τ and the mask head, not the box head). ``mlp_branch``: a class-agnostic mask from two fully connected
    layers on the RoI features (hidden ``mlp_hidden``), added to every class's logits.
    """

    def __init__(self, in_channels: int, dim_reduced: int, detection_dim: int, *, transfer_input: str = "cls+box",
                 transfer_hidden: int | None = None, stop_gradient: bool = True, mlp_branch: bool = False,
                 roi_size: int = 14, mlp_hidden: int = 1024):
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2)
        nn.init.kaiming_normal_(self.conv5_mask.weight, mode="fan_out", nonlinearity="relu")  # as Mask R-CNN's
        self.transfer = WeightTransfer(detection_dim, dim_reduced, transfer_hidden or detection_dim)
        self.bias = nn.Parameter(torch.zeros(()))
        self.transfer_input, self.stop_gradient = transfer_input, stop_gradient
        self.mlp = None
        if mlp_branch:
            self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * roi_size ** 2, mlp_hidden),
                                     nn.ReLU(inplace=True), nn.Linear(mlp_hidden, (2 * roi_size) ** 2))

    def class_weights(self, box_predictor: FastRCNNPredictor) -> Tensor:
        """τ(w_det) for every class: (num_classes, dim_reduced)."""
        weights = detection_weights(box_predictor, self.transfer_input)
        return self.transfer(weights.detach() if self.stop_gradient else weights)

    def forward(self, x: Tensor, box_predictor: FastRCNNPredictor) -> Tensor:
        features = F.relu(self.conv5_mask(x))
        logits = torch.einsum("kdhw,cd->kchw", features, self.class_weights(box_predictor)) + self.bias
        if self.mlp is not None:
            logits = logits + self.mlp(x).view(len(x), 1, *logits.shape[-2:])
        return logits


@options_of(maskrcnn_resnet_fpn)
def maskxrcnn_resnet_fpn(depth: int, num_classes: int, *, transfer_input: str = "cls+box",
                         transfer_hidden: int | None = None, stop_gradient: bool = True, mlp_branch: bool = False,
                         representation_size: int = 1024, mask_layers=(256, 256, 256, 256), **options) -> MaskRCNN:
    """``maskrcnn_resnet_fpn`` (every option, e.g. ``mask_classes`` for partial supervision) with a
    ``MaskXPredictor``; ``transfer_hidden`` defaults to τ's input width."""
    if transfer_input not in TRANSFER_INPUTS:
        raise ValueError(f"transfer_input must be one of {TRANSFER_INPUTS}, got {transfer_input!r}")
    detection_dim = representation_size * {"cls": 1, "box": 4, "cls+box": 5}[transfer_input]
    predictor = MaskXPredictor(mask_layers[-1], mask_layers[-1], detection_dim, transfer_input=transfer_input,
                               transfer_hidden=transfer_hidden, stop_gradient=stop_gradient, mlp_branch=mlp_branch)
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
