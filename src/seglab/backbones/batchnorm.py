"""Replacing BatchNorm with its frozen twin, as detection/segmentation fine-tuning from ImageNet does."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d


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
