"""VGG16 (arXiv:1409.1556, configuration D) as a fully convolutional backbone.

Parameter names are torchvision's ``vgg16`` / ``vgg16_bn`` names (``features.N``, ``classifier.0``,
``classifier.3``), so a torchvision classification state dict loads: the fully connected fc6/fc7
weights are reshaped into the 7×7 and 1×1 convolutions they are equivalent to (FCN §3.1).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

# Configuration D: channel counts, "M" = 2×2 max-pool.
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
POOL_NAMES = ("pool1", "pool2", "pool3", "pool4", "pool5")


def scaled(channels: int, width_mult: float) -> int:
    """Channel count scaled by ``width_mult`` (at least 1)."""
    return max(1, int(round(channels * width_mult)))


class VGG16(nn.Module):
    """VGG16 features + fc6/fc7 as convolutions. Input (N,3,H,W) → dict of feature maps.

    Returns ``pool3`` (stride 8), ``pool4`` (stride 16), ``pool5`` (stride 32) and ``fc7`` (stride 32);
    ``channels`` and ``strides`` declare them so heads need not hard-code widths.

    Args:
        batch_norm: BatchNorm after every convolution of ``features`` (torchvision ``vgg16_bn`` layout).
        width_mult: scales every channel count (1.0 = the paper's network).
        first_padding: padding of conv1_1 (FCN's reference nets use 100, see ``models.fcn``).
        ceil_mode: max-pool rounding (Caffe rounds up).
        fc6_padding: padding of the 7×7 fc6 convolution.
        dropout: dropout probability after fc6 and fc7.
    """

    def __init__(self, *, batch_norm: bool = False, width_mult: float = 1.0, first_padding: int = 1,
                 ceil_mode: bool = False, fc6_padding: int = 0, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        self._pool_indices = []
        in_channels = 3
        for spec in VGG16_LAYERS:
            if spec == "M":
                self._pool_indices.append(len(layers))
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=ceil_mode))
                continue
            out_channels = scaled(spec, width_mult)
            padding = first_padding if not layers else 1
            layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=padding))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        fc = scaled(4096, width_mult)
        self.classifier = nn.Sequential(
            nn.Conv2d(in_channels, fc, 7, padding=fc6_padding),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(fc, fc, 1),  # fc7
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        pool_channels = [scaled(c, width_mult) for c in (64, 128, 256, 512, 512)]
        self.channels = {"pool3": pool_channels[2], "pool4": pool_channels[3], "pool5": pool_channels[4], "fc7": fc}
        self.strides = {"pool3": 8, "pool4": 16, "pool5": 32, "fc7": 32}

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        out = OrderedDict()
        start = 0
        for name, end in zip(POOL_NAMES, self._pool_indices):
            x = self.features[start:end + 1](x)
            start = end + 1
            if name in self.channels:
                out[name] = x
        out["fc7"] = self.classifier(x)
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # torchvision stores fc6/fc7 as Linear weights (out, in·7·7) and (out, in): view them as convs.
        for index in (0, 3):
            key = f"{prefix}classifier.{index}.weight"
            weight = state_dict.get(key)
            conv = self.classifier[index].weight
            if weight is not None and weight.dim() == 2 and weight.numel() == conv.numel():
                state_dict[key] = weight.reshape(conv.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def load_torchvision_weights(backbone: VGG16, path: str) -> None:
    """Load a torchvision ``vgg16``/``vgg16_bn`` classification state dict from disk into ``backbone``.

    The 1000-way fc8 (``classifier.6``) has no place in a segmentation backbone and is dropped; every
    other key must match (strict), so a wrong architecture or width fails loudly.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("classifier.6.")}
    backbone.load_state_dict(state, strict=True)
