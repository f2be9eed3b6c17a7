"""Feature Pyramid Network (Lin et al., arXiv:1612.03144 §3) over the four ResNet stages, as torchvision's
``resnet_fpn_backbone``: parameter names ``body.*`` (the ResNet) and ``fpn.inner_blocks.N.0`` /
``fpn.layer_blocks.N.0``, so torchvision Faster/Mask R-CNN state dicts load unchanged.

Detection practice (and torchvision's default with ImageNet weights) trains only the last stages with
BatchNorm frozen; here both are explicit options (``trainable_layers``, ``frozen_bn``), never implied by
passing weights.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .pretrained import prepare_backbone
from .resnet import BASIC_DEPTHS, DEPTHS, LAYER_NAMES, BasicResNet, ResNet

# torchvision's order of freezing: trainable_layers=k trains the first k of these (and bn1 when k = 5).
TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


class FeaturePyramidNetwork(nn.Module):
    """Top-down pathway with lateral connections (§3): {name: (N,C_i,H_i,W_i)} in increasing stride →
    {"0".."n-1": (N,out,H_i,W_i), "pool": (N,out,⌈H_last/2⌉,⌈W_last/2⌉)}.

    Lateral 1×1 convs (``inner_blocks``) plus the nearest-upsampled coarser level, then a 3×3 conv
    (``layer_blocks``) per level; "pool" subsamples the coarsest output by 2 (the paper's P6 for the RPN).
    """

    def __init__(self, in_channels: list[int], out_channels: int):
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, out_channels, 1)) for c in in_channels)
        self.layer_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1))
                                          for _ in in_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, features: dict[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        x = list(features.values())
        inner = self.inner_blocks[-1](x[-1])
        results = [self.layer_blocks[-1](inner)]
        for level in range(len(x) - 2, -1, -1):
            lateral = self.inner_blocks[level](x[level])
            inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self.layer_blocks[level](inner))
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2))
        return OrderedDict(zip([*map(str, range(len(x))), "pool"], results))


class BackboneWithFPN(nn.Module):
    """A ResNet ``body`` and an FPN over its four stages. (N,3,H,W) → {"0","1","2","3","pool"}, each
    (N, out_channels, ·, ·) at strides 4, 8, 16, 32, 64 (declared in ``channels`` / ``strides``)."""

    def __init__(self, body: nn.Module, out_channels: int = 256):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork([body.channels[name] for name in LAYER_NAMES], out_channels)
        self.out_channels = out_channels
        names = [*map(str, range(len(LAYER_NAMES))), "pool"]
        self.channels = dict.fromkeys(names, out_channels)
        self.strides = dict(zip(names, [*(body.strides[name] for name in LAYER_NAMES), 2 * body.strides["layer4"]]))

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(self.body(x))


def freeze_layers(body: nn.Module, trainable_layers: int) -> nn.Module:
    """Stop gradients to all but the last ``trainable_layers`` (0..5) stages of a ResNet, torchvision's rule:
    5 trains everything, 3 trains layer2..layer4 (its default with ImageNet weights)."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    train = TRAINABLE_ORDER[:trainable_layers] + (("bn1",) if trainable_layers == 5 else ())
    for name, parameter in body.named_parameters():
        if not name.startswith(train):
            parameter.requires_grad_(False)
    return body


def resnet_fpn_backbone(depth: int = 50, *, out_channels: int = 256, trainable_layers: int = 3,
                        frozen_bn: bool = True, weights_backbone: str | None = None) -> BackboneWithFPN:
    """ResNet-18/34/50/101 + FPN: ImageNet weights from ``weights_backbone`` (a torchvision state-dict
    path) if given, then BatchNorm frozen if ``frozen_bn``, then all but ``trainable_layers`` stages frozen."""
    if depth in BASIC_DEPTHS:
        body = BasicResNet(depth)
    elif depth in DEPTHS:
        body = ResNet(depth)
    else:
        raise ValueError(f"ResNet-FPN depth must be one of {sorted({**BASIC_DEPTHS, **DEPTHS})}, got {depth}")
    body = prepare_backbone(body, weights_backbone=weights_backbone, frozen_bn=frozen_bn)
    return BackboneWithFPN(freeze_layers(body, trainable_layers), out_channels)
