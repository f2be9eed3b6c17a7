"""VGG16 (arXiv:1409.1556, configuration D) as a fully convolutional backbone, plain or atrous.

Parameter names are torchvision's ``vgg16`` / ``vgg16_bn`` names (``features.N``, ``classifier.0``,
``classifier.3``), so a torchvision classification state dict loads (``weights_backbone``: a weight name of
torchvision's weights API such as ``IMAGENET1K_V1``, or a file): the fully connected fc6/fc7 weights are reshaped
into the 7×7 and 1×1 convolutions they are equivalent to (FCN §3.1).

The atrous variants change only pooling and dilation, never a parameter, so the names and the
ImageNet weights carry over (a removed pool stays in ``features`` as an ``nn.Identity``, keeping the
indices of the layers after it):

- ``deeplab_vgg16_backbone``: DeepLab v1 (arXiv:1412.7062 §3.1), output stride 8, no fc6/fc7.
- ``dilation_vgg16_frontend``: Yu & Koltun's front-end (arXiv:1511.07122 §4), output stride 8.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from .pretrained import prepare_backbone

# Configuration D: output channels of the 3×3 convolutions of the five blocks; block i ends with pool{i}.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
POOL_NAMES = ("pool1", "pool2", "pool3", "pool4", "pool5")
FEATURE_NAMES = ("pool3", "pool4", "pool5")  # the block outputs a head may read (plus "fc7" with fc=True)


def scaled(channels: int, width_mult: float) -> int:
    """Channel count scaled by ``width_mult`` (at least 1)."""
    return max(1, int(round(channels * width_mult)))


class VGG16(nn.Module):
    """VGG16 features [+ fc6/fc7 as convolutions]. Input (N,3,H,W) → dict of feature maps.

    Returns ``pool3``, ``pool4``, ``pool5`` (the outputs of blocks 3–5, pooled or not) and, with
    ``fc=True``, ``fc7``; ``channels`` and ``strides`` (input pixels per output pixel) declare them so
    heads need not hard-code widths. The defaults are the plain network: strides 8, 16, 32, 32.

    Args:
        batch_norm: BatchNorm after every convolution of ``features`` (torchvision ``vgg16_bn`` layout).
        width_mult: scales every channel count (1.0 = the paper's network).
        first_padding: padding of conv1_1 (FCN's reference nets use 100, see ``models.fcn``); every other
            3×3 convolution pads by its dilation ("same").
        ceil_mode: max-pool rounding (Caffe rounds up).
        pool_kernel: 2 (2×2 pools, no padding: VGG) or 3 (3×3 pools, padding 1: DeepLab).
        pool_strides: stride of pool1..pool5: 2, 1 (3×3 pools only) or None (pool removed).
        dilations: dilation of the 3×3 convolutions of blocks 1..5.
        fc: build fc6/fc7 (``classifier``); False for heads that replace them (DeepLab-LargeFOV).
        fc6_padding: padding of the 7×7 fc6 convolution.
        fc6_dilation: dilation of fc6.
        dropout: dropout probability after fc6 and fc7.
    """

    def __init__(self, *, batch_norm: bool = False, width_mult: float = 1.0, first_padding: int = 1,
                 ceil_mode: bool = False, pool_kernel: int = 2, pool_strides: Sequence[int | None] = (2, 2, 2, 2, 2),
                 dilations: Sequence[int] = (1, 1, 1, 1, 1), fc: bool = True, fc6_padding: int = 0,
                 fc6_dilation: int = 1, dropout: float = 0.5):
        super().__init__()
        if pool_kernel not in (2, 3):
            raise ValueError(f"pool_kernel must be 2 or 3, got {pool_kernel}")
        if len(pool_strides) != 5 or any(s not in (None, 1, 2) for s in pool_strides):
            raise ValueError(f"pool_strides must be 5 values among 2, 1, None, got {tuple(pool_strides)}")
        if pool_kernel == 2 and 1 in pool_strides:
            raise ValueError("a 2×2 pool with stride 1 shifts the map by half a pixel; use pool_kernel=3")
        if len(dilations) != 5:
            raise ValueError(f"dilations must give one value per block (5), got {tuple(dilations)}")
        self.torchvision_arch = "vgg16_bn" if batch_norm else "vgg16"  # whose ImageNet weights fit
        layers: list[nn.Module] = []
        self._block_ends = []
        self.channels, self.strides = {}, {}
        in_channels, stride = 3, 1
        for name, widths, pool_stride, dilation in zip(POOL_NAMES, VGG16_BLOCKS, pool_strides, dilations):
            for width in widths:
                out_channels = scaled(width, width_mult)
                padding = first_padding if not layers else dilation
                layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=padding, dilation=dilation))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out_channels))
                layers.append(nn.ReLU(inplace=True))
                in_channels = out_channels
            if pool_stride is None:
                layers.append(nn.Identity())
            else:
                layers.append(nn.MaxPool2d(pool_kernel, pool_stride, (pool_kernel - 1) // 2, ceil_mode=ceil_mode))
                stride *= pool_stride
            self._block_ends.append(len(layers))
            if name in FEATURE_NAMES:
                self.channels[name], self.strides[name] = in_channels, stride
        self.features = nn.Sequential(*layers)
        self.classifier = None
        if fc:
            width = scaled(4096, width_mult)
            self.classifier = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, padding=fc6_padding, dilation=fc6_dilation),  # fc6
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Conv2d(width, width, 1),  # fc7
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
            )
            self.channels["fc7"], self.strides["fc7"] = width, stride

    @property
    def classifier_prefixes(self) -> tuple[str, ...]:
        """torchvision keys with no place here: fc8, and fc6/fc7 too when they are not built."""
        return ("classifier.6.",) if self.classifier is not None else ("classifier.",)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        out = OrderedDict()
        start = 0
        for name, end in zip(POOL_NAMES, self._block_ends):
            x = self.features[start:end](x)
            start = end
            if name in FEATURE_NAMES:
                out[name] = x
        if self.classifier is not None:
            out["fc7"] = self.classifier(x)
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # torchvision stores fc6/fc7 as Linear weights (out, in·7·7) and (out, in): view them as convs.
        for index in (0, 3) if self.classifier is not None else ():
            key = f"{prefix}classifier.{index}.weight"
            weight = state_dict.get(key)
            conv = self.classifier[index].weight
            if weight is not None and weight.dim() == 2 and weight.numel() == conv.numel():
                state_dict[key] = weight.reshape(conv.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def deeplab_vgg16_backbone(*, width_mult: float = 1.0, batch_norm: bool = False, weights_backbone: str | None = None,
                           frozen_bn: bool = False) -> VGG16:
    """DeepLab v1's atrous VGG16 up to pool5 (arXiv:1412.7062 §3.1, §5 "Field of View"; the LargeFOV prototxt).

    As in the published prototxt, all five max-pools are 3×3 with padding 1 and Caffe's rounding up,
    with strides 2, 2, 2, 1, 1, and conv5_1..3 have dilation 2 (padding 2): output stride 8. fc6/fc7
    are not built: DeepLab-LargeFOV replaces them (fc6 3×3, dilation 12, 1024 channels; fc7 1×1, 1024), and
    ``models.deeplab.deeplabv1_vgg16`` initialises those from VGG16's by decimation.

    Returns {"pool3", "pool4", "pool5"}, all of stride 8; ``pool5`` is (N, 512·width_mult, h, w) with
    h = ceil((H−1)/8) + 1 (each stride-2 pool maps n → floor(n/2) + 1), likewise w. Output pixel i is
    centred on input pixel 8i, so H = 8k+1 (321, 513) gives k+1 rows whose corners align with the input's.
    """
    backbone = VGG16(batch_norm=batch_norm, width_mult=width_mult, ceil_mode=True, pool_kernel=3,
                     pool_strides=(2, 2, 2, 1, 1), dilations=(1, 1, 1, 1, 2), fc=False)
    return prepare_backbone(backbone, weights_backbone=weights_backbone, frozen_bn=frozen_bn)


def dilation_vgg16_frontend(*, width_mult: float = 1.0, batch_norm: bool = False, dropout: float = 0.5,
                            weights_backbone: str | None = None, frozen_bn: bool = False) -> VGG16:
    """Yu & Koltun's front-end (arXiv:1511.07122 §4): VGG16 without pool4 and pool5, conv5 with
    dilation 2, fc6 7×7 with dilation 4 (4096 channels), fc7 1×1 (4096), dropout after both.

    Padding: zero "same" padding everywhere (3×3 convs pad by their dilation, fc6 by 12) and 2×2 pools
    rounding down, so every map is (N, ·, floor(H/8), floor(W/8)) for H, W ≥ 8, and output pixel i is
    centred on input pixel 8i + 3.5 (the convention of bilinear upsampling with align_corners=False).
    The reference (fyu/dilation ``network.py``) instead uses unpadded convolutions on an input
    reflection-padded by 186 px; "same" padding avoids that border's cost on small images.

    ImageNet initialisation as the reference's: its front end keeps VGG16's layer names and shapes (``network.py``,
    ``build_frontend_vgg``: fc6 4096 filters 7×7 with dilation 4, fc7 4096 1×1) and is trained from "the weights of
    VGG network trained on ImageNet" (``docs/training.md``: ``--weights pretrained/vgg_conv.caffemodel``, VGG16 with
    fc6/fc7 as convolutions), which Caffe copies layer by layer as they are. ``weights_backbone`` does the same:
    every conv of ``features`` and fc6/fc7 (reshaped, not decimated) hold VGG16's values; only the dilation differs.

    Returns {"pool3", "pool4", "pool5", "fc7"}, all of stride 8; ``fc7`` has 4096·width_mult channels.
    """
    backbone = VGG16(batch_norm=batch_norm, width_mult=width_mult, pool_strides=(2, 2, 2, None, None),
                     dilations=(1, 1, 1, 1, 2), fc6_padding=12, fc6_dilation=4, dropout=dropout)
    return prepare_backbone(backbone, weights_backbone=weights_backbone, frozen_bn=frozen_bn)
