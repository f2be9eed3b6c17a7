"""ResNet-50/101 (arXiv:1512.03385) for dense prediction: atrous (dilated) layer3/layer4 for output
stride 16 or 8, and DeepLab v3's multi-grid rates in layer4 (arXiv:1706.05587 §3.2); ResNet-18/34, their
``BasicBlock`` counterpart, with the same output strides.

Built from torchvision's ``Bottleneck`` / ``BasicBlock`` with torchvision's parameter names (``conv1``,
``bn1``, ``layer1.0.conv1`` …, ``downsample.0/1``), so torchvision classification and segmentation
backbone state dicts load; ``width_mult`` scales every width for small experiments.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .vgg import scaled

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BASIC_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
LAYER_NAMES = ("layer1", "layer2", "layer3", "layer4")
DILATED_LAYERS = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}  # layer2..4


class ResNet(nn.Module):
    """ResNet without its classifier. Input (N,3,H,W) → {"layer1".."layer4": features}.

    Args:
        depth: 50 or 101.
        output_stride: 32, 16 (layer4 dilated by 2) or 8 (layer3 by 2, layer4 by 4).
        multi_grid: unit rates of layer4's blocks (e.g. (1, 2, 4)); block i's 3×3 convolution gets
            dilation = layer4's rate × multi_grid[i]. None keeps torchvision's rates (the first block of
            a dilated layer uses the previous layer's dilation), which its checkpoints expect.
        width_mult: scales all channel counts (1.0 = the paper's network).
    """

    classifier_prefixes = ("fc.",)  # torchvision's 1000-way classifier, dropped when loading its weights

    def __init__(self, depth: int = 50, output_stride: int = 32, multi_grid: tuple[int, ...] | None = None,
                 width_mult: float = 1.0):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
        self.torchvision_arch = f"resnet{depth}"  # whose ImageNet weights fit (torchvision's weights API name)
        if output_stride not in DILATED_LAYERS:
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        dilate = DILATED_LAYERS[output_stride]
        self.inplanes, self.dilation = scaled(64, width_mult), 1
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.channels, self.strides = {}, {}
        stride = 4
        for index, (name, blocks) in enumerate(zip(LAYER_NAMES, DEPTHS[depth])):
            layer_stride = 1 if index == 0 else 2
            dilated = index > 0 and dilate[index - 1]
            stride *= 1 if dilated else layer_stride
            setattr(self, name, self._make_layer(scaled(64 * 2 ** index, width_mult), blocks, layer_stride, dilated))
            self.channels[name] = self.inplanes
            self.strides[name] = stride
        if multi_grid is not None:
            if len(multi_grid) != len(self.layer4):
                raise ValueError(f"multi_grid needs {len(self.layer4)} rates for layer4, got {multi_grid}")
            for block, unit in zip(self.layer4, multi_grid):
                rate = self.dilation * unit
                block.conv2.dilation, block.conv2.padding = (rate, rate), (rate, rate)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        """torchvision's ``ResNet._make_layer``: a dilated layer trades its stride for dilation."""
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride,
                                                 bias=False), nn.BatchNorm2d(planes * Bottleneck.expansion))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, dilation=previous_dilation)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = OrderedDict()
        for name in LAYER_NAMES:
            x = getattr(self, name)(x)
            out[name] = x
        return out


class BasicResNet(nn.Module):
    """ResNet-18/34 (``BasicBlock``) without its classifier, torchvision's parameter names. (N,3,H,W) →
    {"layer1".."layer4": features at strides 4, 8, 16, 32}, or at ``output_stride`` 16 / 8 with layer4 /
    layer3 and layer4 dilated, torchvision's rule for its Bottleneck ResNets carried over: a dilated layer
    keeps stride 1, its first 3×3 convolution keeps the previous rate and every later one has the layer's
    (2, or 4 for layer4 at 8). That is the "hole algorithm" exactly: every second row and column of a
    dilated layer's output is the undilated network's output (tested). torchvision's BasicBlock has no
    dilation, so it is set on its convolutions. ``width_mult`` scales the widths.

    ``ResNet`` builds the Bottleneck depths only; this is its BasicBlock counterpart.
    """

    classifier_prefixes = ("fc.",)
    forward = ResNet.forward  # same stem and stages, only the blocks differ

    def __init__(self, depth: int = 18, output_stride: int = 32, width_mult: float = 1.0):
        super().__init__()
        if depth not in BASIC_DEPTHS:
            raise ValueError(f"BasicResNet depth must be one of {sorted(BASIC_DEPTHS)}, got {depth}")
        if output_stride not in DILATED_LAYERS:
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.torchvision_arch = f"resnet{depth}"
        inplanes = scaled(64, width_mult)
        self.conv1 = nn.Conv2d(3, inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.channels, self.strides = {}, {}
        feature_stride, rate = 4, 1
        for index, (name, blocks) in enumerate(zip(LAYER_NAMES, BASIC_DEPTHS[depth])):
            planes, stride = scaled(64 * 2 ** index, width_mult), 1 if index == 0 else 2
            previous = rate
            if index > 0 and DILATED_LAYERS[output_stride][index - 1]:
                stride, rate = 1, rate * 2
            feature_stride *= stride
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                           nn.BatchNorm2d(planes))
            layers = [BasicBlock(inplanes, planes, stride, downsample)]
            layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
            convs = [conv for block in layers for conv in (block.conv1, block.conv2)]
            for conv, conv_rate in zip(convs, [previous] + [rate] * (len(convs) - 1)):
                conv.dilation, conv.padding = (conv_rate, conv_rate), (conv_rate, conv_rate)
            setattr(self, name, nn.Sequential(*layers))
            inplanes = planes
            self.channels[name], self.strides[name] = planes, feature_stride
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
