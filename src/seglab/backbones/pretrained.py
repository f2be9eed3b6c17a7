"""Preparing a backbone for fine-tuning, as every paper does from ImageNet: torchvision classification
weights by name (torchvision's weights API, ``seglab.hub``) or from a file, then optionally BatchNorm frozen
(detection/segmentation practice, always stated)."""
from __future__ import annotations

import logging

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from .. import hub
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..io import load_state

log = logging.getLogger("seglab")


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Return ``module`` with every ``BatchNorm2d`` replaced by a ``FrozenBatchNorm2d`` holding its
    current statistics and affine parameters (which then no longer train)."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            frozen.weight.copy_(module.weight)
            frozen.bias.copy_(module.bias)
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        setattr(module, name, freeze_batch_norm(child))
    return module


def imagenet_state(source: str, arch: str) -> tuple[dict, list[str], dict | None]:
    """``(torchvision state dict, keys left out, input normalisation or None)`` of ``source``: a file, or a weight
    name of torchvision's ``arch`` (``IMAGENET1K_V1``, ``DEFAULT``, …; ``seglab.hub``). Tensors holding NaN or inf
    (``IMAGENET1K_FEATURES``'s classifier) are left out, with a log line: the layers they belong to start fresh.
    The normalisation is the weights' own where it differs from ImageNet's usual one (``IMAGENET1K_FEATURES``:
    0–255 input minus the mean)."""
    state, member = hub.state_dict_from(source, arch)
    unusable = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if unusable:
        log.info("seglab: %s holds non-finite %s; those layers are initialised fresh", source, ", ".join(unusable))
        state = {key: value for key, value in state.items() if key not in unusable}
    normalization = hub.normalization(member) if member is not None else None
    if normalization == {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}:
        normalization = None
    return state, unusable, normalization


def load_torchvision_weights(backbone: nn.Module, source: str) -> dict:
    """Load torchvision classification weights (a file, or a name of the backbone's ``torchvision_arch``:
    vgg16, vgg16_bn, resnet18, resnet50, resnet101) into ``backbone``.

    Keys under ``backbone.classifier_prefixes`` (the classification head a segmentation backbone has no
    place for: VGG's fc8, ResNet's fc) are dropped; every other key must match (strict, the first misfit named),
    so a wrong architecture or width fails loudly; only non-finite tensors the weights hold may be missing. Weights
    with their own input normalisation set ``backbone.input_normalization`` (``seglab.models.create`` puts it in the
    model's meta, so training, evaluation, prediction and export all use it). Returns the usable torchvision state
    dict, classifier included (DeepLab-LargeFOV's head initialises from it).
    """
    state, unusable, normalization = imagenet_state(source, backbone.torchvision_arch)
    fitting = {k: v for k, v in state.items() if not k.startswith(backbone.classifier_prefixes)}
    load_state(backbone, fitting, source, missing_ok=unusable)
    if normalization is not None:
        backbone.input_normalization = normalization
    return state


def prepare_backbone(backbone: nn.Module, *, weights_backbone: str | None = None, frozen_bn: bool = False) -> nn.Module:
    """``backbone`` with torchvision ImageNet weights from ``weights_backbone`` (a name or a state-dict path) if
    given, then its BatchNorm frozen (``FrozenBatchNorm2d``) if ``frozen_bn``."""
    if weights_backbone is not None:
        load_torchvision_weights(backbone, weights_backbone)
    return freeze_batch_norm(backbone) if frozen_bn else backbone
