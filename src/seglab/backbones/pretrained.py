"""Preparing a backbone for fine-tuning, as every paper does from ImageNet: torchvision classification
weights from disk, then optionally BatchNorm frozen (detection/segmentation practice, always stated)."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ..io import safe_load


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


def load_torchvision_weights(backbone: nn.Module, path: str) -> None:
    """Load a torchvision classification state dict (vgg16, vgg16_bn, resnet50, resnet101) from disk.

    Keys under ``backbone.classifier_prefixes`` (the classification head a segmentation backbone has no
    place for: VGG's fc8, ResNet's fc) are dropped; every other key must match (strict), so a wrong
    architecture or width fails loudly.
    """
    state = safe_load(path)
    state = {k: v for k, v in state.items() if not k.startswith(backbone.classifier_prefixes)}
    backbone.load_state_dict(state, strict=True)


def prepare_backbone(backbone: nn.Module, *, weights_backbone: str | None = None, frozen_bn: bool = False) -> nn.Module:
    """``backbone`` with torchvision ImageNet weights loaded from ``weights_backbone`` (a state-dict
    path) if given, then its BatchNorm frozen (``FrozenBatchNorm2d``) if ``frozen_bn``."""
    if weights_backbone is not None:
        load_torchvision_weights(backbone, weights_backbone)
    return freeze_batch_norm(backbone) if frozen_bn else backbone
