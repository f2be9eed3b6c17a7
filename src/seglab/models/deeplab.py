"""The DeepLab family: v1 (DeepLab-LargeFOV on atrous VGG16, arXiv:1412.7062) and, on atrous ResNets,
v2 (ASPP-L, arXiv:1606.00915), v3 (ASPP with image pooling, arXiv:1706.05587) and v3+ (encoder-decoder,
arXiv:1802.02611).

v3's builders default to torchvision's layout (output stride 8, rates 12/24/36, no multi-grid, dropout
0.5 after the projection, an extra 3×3 conv-BN-ReLU before the classifier) so that torchvision checkpoints
load and train unchanged; the paper's settings are options: ``output_stride=16, multi_grid=(1, 2, 4),
extra_conv=False`` (rates then default to 6/12/18, doubled at output stride 8, §3.3). The paper does not
give ASPP's dropout; without the extra conv it defaults to 0.1, the official code's (tensorflow/models
``research/deeplab/model.py``, ``_extract_features``: ``slim.dropout(keep_prob=0.9)`` after the
``concat_projection`` 1×1 conv), which v3+ shares.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.pretrained import freeze_batch_norm, load_torchvision_weights
from ..backbones.vgg import deeplab_vgg16_backbone, scaled
from .base import SegmentationModel, load_weights, options_of, resnet_backbone
from .fcn import fcn_head
from .registry import register


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding) → BatchNorm → ReLU; torchvision's ASPP branch layout."""
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class LargeFOVHead(nn.Module):
    """DeepLab-LargeFOV's replacement of VGG's fc layers (arXiv:1412.7062 §5 "Field of View", Table 2): the
    prototxt's pool5a (3×3 average pool, stride 1, padding 1), fc6 3×3 with dilation 12 and 1024 channels, fc7 1×1
    with 1024, ReLU and dropout after each, fc8 1×1 to classes. (N,C_in,h,w) → (N,num_classes,h,w).
    ``pool5a=False``: without the average pool (a branch of DeepLab v2's ASPP on VGG-16, :class:`VGGASPP`)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 1024, rate: int = 12, dropout: float = 0.5,
                 pool5a: bool = True):
        super().__init__()
        self.pool5a = nn.AvgPool2d(3, stride=1, padding=1) if pool5a else nn.Identity()
        self.fc6 = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=rate, dilation=rate), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout))
        self.fc7 = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.fc8 = nn.Conv2d(width, num_classes, 1)
        nn.init.normal_(self.fc8.weight, std=0.01)  # the reference prototxt's Gaussian(0.01) for fc8
        nn.init.zeros_(self.fc8.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.fc7(self.fc6(self.pool5a(x))))

    def load_vgg16_fc(self, state: dict) -> None:
        """Initialise fc6/fc7 from torchvision VGG16's fc6/fc7 (``classifier.0``, ``classifier.3``) by decimation,
        in place: see :func:`decimate_vgg16_fc`. Both stay fresh when ``state`` lacks them
        (``IMAGENET1K_FEATURES``, whose classifier is NaN and left out by ``backbones.pretrained.imagenet_state``)."""
        decimated = decimate_vgg16_fc(state, self.fc6[0].out_channels, self.fc6[0].kernel_size[0])
        if decimated is None:
            return
        with torch.no_grad():
            for layer, (weight, bias) in zip((self.fc6[0], self.fc7[0]), decimated):
                if weight.shape != layer.weight.shape:
                    raise ValueError(f"VGG16's decimated fc layers have shape {tuple(weight.shape)}, the LargeFOV "
                                     f"head {tuple(layer.weight.shape)}: ImageNet weights need width_mult=1")
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)


class VGGASPP(nn.Module):
    """DeepLab v2's ASPP on VGG-16 (arXiv:1606.00915 §3.3, Fig. 4(b), Table 3): one branch per rate, each
    DeepLab-LargeFOV's fc6 (3×3 at that rate, 1024 channels), fc7 (1×1, 1024) and fc8 (1×1 to classes), with
    ReLU and dropout after fc6 and fc7, read from pool5 (no pool5a); the branches' class scores are summed.
    (N,C_in,h,w) → (N,num_classes,h,w)."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int], width: int = 1024,
                 dropout: float = 0.5):
        super().__init__()
        self.branches = nn.ModuleList(LargeFOVHead(in_channels, num_classes, width, rate, dropout, pool5a=False)
                                      for rate in rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)

    def load_vgg16_fc(self, state: dict) -> None:
        """Every branch's fc6/fc7 from VGG16's by decimation (:meth:`LargeFOVHead.load_vgg16_fc`; seglab's choice:
        the paper does not say how its branches were initialised)."""
        for branch in self.branches:
            branch.load_vgg16_fc(state)


VGG16_FC = 4096, 7  # VGG16's fc6/fc7 width and fc6's kernel (7×7 over pool5)


def decimate_vgg16_fc(state: dict, width: int = 1024, kernel: int = 3):
    """DeepLab-LargeFOV's fc6 (width, 512, kernel, kernel) and fc7 (width, width, 1, 1), each as (weight, bias), from
    the fully connected fc6 (4096, 512·7·7) and fc7 (4096, 4096) of a torchvision VGG16 state dict, by decimation;
    None when ``state`` has no ``classifier.0.weight`` / ``classifier.3.weight``.

    The paper (Chen et al., arXiv:1412.7062v4) on fc6's spatial size, §3.2: "We have addressed this practical
    problem by spatially subsampling (by simple decimation) the first FC layer to 4×4 (or 3×3) spatial size." On
    the channels, §3.2: "We have also successfully experimented with reducing the number of channels at the fully
    connected layers from 4,096 down to 1,024, considerably further decreasing computation time and memory
    footprint without sacrificing performance", and §5 (Field of View): "Finally, we employ kernel size 3×3 and
    input stride = 12, and further change the filter sizes from 4096 to 1024 for the last two layers."

    Spatially, every third tap of the 7×7 kernel (rows and columns 0, 3, 6): in the atrous net pool4 and pool5 no
    longer subsample, so VGG16's fc6 taps are 4 pixels of pool5 apart, and every third of them is 4·3 = 12 apart,
    the LargeFOV rate, so each kept tap still sees what it saw in VGG16. fc6's 512 input channels stay.

    Channels: the paper does not say how the 4096 filters became 1024, and DeepLab's release gives the reduced
    initial model (``vgg16_20M.caffemodel``) as a file; the script that made it could not be found. seglab's
    choice: every fourth filter (0, 4, 8, …), a decimation like the spatial one, for fc6's outputs, fc7's outputs
    and, so that fc7 reads the fc6 filters that were kept, fc7's inputs; the biases likewise. (SSD's reduced VGG16,
    ``VGG_ILSVRC_16_layers_fc_reduced``, was subsampled "following what DeepLab did" says its author, weiliu89/caffe
    issue 258, and a public net-surgery script re-creating it takes ``fc6[0::4, :, 0::3, 0::3]`` and
    ``fc7[0::4, 0::4]``: the same selection.)
    """
    keys = ("classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias")
    if any(key not in state for key in keys):
        return None
    fc6_weight, fc6_bias, fc7_weight, fc7_bias = (state[key] for key in keys)
    channels, size = VGG16_FC
    if channels % width or kernel < 2 or (size - 1) % (kernel - 1):
        raise ValueError(f"cannot decimate VGG16's fc6/fc7 ({channels} filters, {size}×{size}) to {width} filters "
                         f"{kernel}×{kernel}: {width} must divide {channels} and {kernel - 1} divide {size - 1}")
    step, tap = channels // width, (size - 1) // (kernel - 1)
    fc6 = fc6_weight.reshape(channels, -1, size, size)[::step, :, ::tap, ::tap]
    fc7 = fc7_weight.reshape(channels, channels)[::step, ::step]
    return (fc6, fc6_bias[::step]), (fc7[:, :, None, None], fc7_bias[::step])


class ImagePooling(nn.Sequential):
    """ASPP's image-level branch (v3 §3.3): global average pool → 1×1 conv-BN-ReLU → broadcast to (H,W)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """DeepLab v3 Atrous Spatial Pyramid Pooling: (N,C_in,H,W) → (N,out,H,W).

    Branches (``convs``): a 1×1 conv, one 3×3 conv per rate, image pooling; each conv-BN-ReLU with
    ``out_channels``; concatenated and projected by 1×1 conv-BN-ReLU (``project``), then dropout.
    """

    def __init__(self, in_channels: int, rates: Sequence[int], out_channels: int = 256, dropout: float = 0.5):
        super().__init__()
        self.out_channels = out_channels
        branches = [conv_bn_relu(in_channels, out_channels)]
        branches += [conv_bn_relu(in_channels, out_channels, 3, rate) for rate in rates]
        branches.append(ImagePooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*conv_bn_relu(len(branches) * out_channels, out_channels), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class ASPPSum(nn.Module):
    """DeepLab v2's ASPP (§3.3, ResNet-101 model): one 3×3 convolution per rate from the features
    straight to class scores, summed. (N,C_in,H,W) → (N,num_classes,H,W)."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int]):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)
        for branch in self.branches:  # the reference net initialises the score layers with N(0, 0.01²)
            nn.init.normal_(branch.weight, std=0.01)
            nn.init.zeros_(branch.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([branch(x) for branch in self.branches]).sum(0)


class DeepLabV3PlusDecoder(nn.Module):
    """v3+ decoder (§3.1): low-level features → 1×1 conv-BN-ReLU to 48 channels (``reduce``); ASPP
    output upsampled bilinearly to their size, concatenated, two 3×3 conv-BN-ReLU (``fuse``), 1×1 scores.

    Takes the backbone's feature dict; returns scores at the low-level stride (4)."""

    def __init__(self, aspp: ASPP, low_channels: int, num_classes: int, aspp_channels: int, reduced: int = 48,
                 width: int = 256, feature: str = "layer4", low_feature: str = "layer1"):
        super().__init__()
        self.aspp, self.feature, self.low_feature = aspp, feature, low_feature
        self.reduce = conv_bn_relu(low_channels, reduced)
        self.fuse = nn.Sequential(conv_bn_relu(aspp_channels + reduced, width, 3), conv_bn_relu(width, width, 3))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        low = self.reduce(features[self.low_feature])
        high = F.interpolate(self.aspp(features[self.feature]), size=low.shape[-2:], mode="bilinear",
                             align_corners=False)
        return self.classifier(self.fuse(torch.cat([high, low], dim=1)))


def default_rates(output_stride: int) -> tuple[int, int, int]:
    """v3's ASPP rates: (6, 12, 18) at output stride 16, doubled at 8 (§3.3)."""
    return (6, 12, 18) if output_stride == 16 else (12, 24, 36)


def _aspp_encoder(depth: int, *, output_stride: int, aspp_rates: Sequence[int] | None, multi_grid, aspp_dropout: float,
                  width_mult: float, weights_backbone: str | None, frozen_bn: bool) -> tuple[nn.Module, ASPP]:
    """The encoder v3 and v3+ share: an atrous ResNet and an ASPP on its layer4 (rates by output stride)."""
    backbone = resnet_backbone(depth, output_stride=output_stride, multi_grid=multi_grid, width_mult=width_mult,
                               weights_backbone=weights_backbone, frozen_bn=frozen_bn)
    rates = aspp_rates or default_rates(output_stride)
    return backbone, ASPP(backbone.channels["layer4"], rates, scaled(256, width_mult), aspp_dropout)


def _deeplabv3(depth: int, num_classes: int, *, output_stride: int = 8, aspp_rates: Sequence[int] | None = None,
               multi_grid: Sequence[int] | None = None, extra_conv: bool = True, aspp_dropout: float | None = None,
               aux: bool = False, width_mult: float = 1.0, weights: str | None = None,
               weights_backbone: str | None = None, frozen_bn: bool = False) -> SegmentationModel:
    """``aspp_dropout`` None: torchvision's 0.5 with ``extra_conv`` (its layout), else the official code's 0.1."""
    if aspp_dropout is None:
        aspp_dropout = 0.5 if extra_conv else 0.1
    backbone, aspp = _aspp_encoder(depth, output_stride=output_stride, aspp_rates=aspp_rates, multi_grid=multi_grid,
                                   aspp_dropout=aspp_dropout, width_mult=width_mult,
                                   weights_backbone=weights_backbone, frozen_bn=frozen_bn)
    width = aspp.out_channels
    head = [aspp, *conv_bn_relu(width, width, 3)] if extra_conv else [aspp]
    classifier = nn.Sequential(*head, nn.Conv2d(width, num_classes, 1))
    aux_head = fcn_head(backbone.channels["layer3"], num_classes) if aux else None
    return load_weights(SegmentationModel(backbone, classifier, aux_head), weights)


def _deeplabv3plus(depth: int, num_classes: int, *, output_stride: int = 16,
                   aspp_rates: Sequence[int] | None = None, multi_grid: Sequence[int] | None = None,
                   aspp_dropout: float = 0.1, width_mult: float = 1.0, weights: str | None = None,
                   weights_backbone: str | None = None, frozen_bn: bool = False) -> SegmentationModel:
    backbone, aspp = _aspp_encoder(depth, output_stride=output_stride, aspp_rates=aspp_rates, multi_grid=multi_grid,
                                   aspp_dropout=aspp_dropout, width_mult=width_mult,
                                   weights_backbone=weights_backbone, frozen_bn=frozen_bn)
    decoder = DeepLabV3PlusDecoder(aspp, backbone.channels["layer1"], num_classes, aspp.out_channels,
                                   reduced=scaled(48, width_mult), width=aspp.out_channels)
    return load_weights(SegmentationModel(backbone, decoder, feature=None), weights)


ASPP_L, ASPP_S = (6, 12, 18, 24), (2, 4, 8, 12)  # DeepLab v2 §4.1
_V1 = "Chen et al., Semantic Image Segmentation with Deep Convolutional Nets and Fully Connected CRFs " \
      "(arXiv:1412.7062)"
_V2 = "Chen et al., DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous Convolution, " \
      "and Fully Connected CRFs (arXiv:1606.00915)"
_V3 = "Chen et al., Rethinking Atrous Convolution for Semantic Image Segmentation (arXiv:1706.05587)"
_V3PLUS = "Chen et al., Encoder-Decoder with Atrous Separable Convolution (arXiv:1802.02611)"


@register("deeplabv1_vgg16", task="semantic", paper=_V1)
def deeplabv1_vgg16(num_classes: int, *, width_mult: float = 1.0, batch_norm: bool = False, rate: int = 12,
                    dropout: float = 0.5, weights: str | None = None, weights_backbone: str | None = None,
                    frozen_bn: bool = False) -> SegmentationModel:
    """DeepLab-LargeFOV: atrous VGG16 (output stride 8) + ``LargeFOVHead``, logits upsampled bilinearly.

    ``weights_backbone`` (a torchvision ``vgg16``/``vgg16_bn`` weight name such as ``IMAGENET1K_V1``, or a state-dict
    path) initialises conv1_1…conv5_3 as they are and fc6/fc7 from VGG16's by decimation (``decimate_vgg16_fc``:
    the paper's spatial decimation, which places VGG16's kept taps exactly at ``rate=12``; every fourth filter, seglab's
    choice); weights without a usable classifier (``IMAGENET1K_FEATURES``) leave fc6/fc7 fresh. fc8 is always
    fresh. ImageNet weights need ``width_mult=1``.
    """
    backbone = deeplab_vgg16_backbone(width_mult=width_mult, batch_norm=batch_norm)
    head = LargeFOVHead(backbone.channels["pool5"], num_classes, scaled(1024, width_mult), rate, dropout)
    if weights_backbone is not None:  # one read: the convolutions into the backbone, fc6/fc7 into the head
        head.load_vgg16_fc(load_torchvision_weights(backbone, weights_backbone))
    if frozen_bn:
        backbone = freeze_batch_norm(backbone)
    # Output pixel i sits on input pixel 8i (3×3 pools with padding), hence align_corners=True.
    return load_weights(SegmentationModel(backbone, head, feature="pool5", align_corners=True), weights)


@register("deeplabv2_vgg16", task="semantic", paper=_V2)
def deeplabv2_vgg16(num_classes: int, *, aspp_rates: Sequence[int] = ASPP_L, width_mult: float = 1.0,
                    batch_norm: bool = False, dropout: float = 0.5, weights: str | None = None,
                    weights_backbone: str | None = None, frozen_bn: bool = False) -> SegmentationModel:
    """DeepLab v2's ASPP on atrous VGG16 (output stride 8, :class:`VGGASPP`): ASPP-L (rates 6, 12, 18, 24) by
    default, ``aspp_rates=(2, 4, 8, 12)`` for ASPP-S; DeepLab-LargeFOV is ``deeplabv1_vgg16``. ``weights_backbone``
    as for ``deeplabv1_vgg16`` (each branch's fc6/fc7 from VGG16's by decimation)."""
    backbone = deeplab_vgg16_backbone(width_mult=width_mult, batch_norm=batch_norm)
    head = VGGASPP(backbone.channels["pool5"], num_classes, aspp_rates, scaled(1024, width_mult), dropout)
    if weights_backbone is not None:
        head.load_vgg16_fc(load_torchvision_weights(backbone, weights_backbone))
    if frozen_bn:
        backbone = freeze_batch_norm(backbone)
    return load_weights(SegmentationModel(backbone, head, feature="pool5", align_corners=True), weights)


@register("deeplabv2_resnet101", task="semantic", paper=_V2)
def deeplabv2_resnet101(num_classes: int, *, aspp_rates: Sequence[int] = ASPP_L, output_stride: int = 8,
                        width_mult: float = 1.0, weights: str | None = None, weights_backbone: str | None = None,
                        frozen_bn: bool = False) -> SegmentationModel:
    """DeepLab v2 ASPP-L on ResNet-101 at output stride 8; ``aspp_rates=ASPP_S`` for ASPP-S."""
    backbone = resnet_backbone(101, output_stride=output_stride, width_mult=width_mult,
                               weights_backbone=weights_backbone, frozen_bn=frozen_bn)
    aspp = ASPPSum(backbone.channels["layer4"], num_classes, aspp_rates)
    return load_weights(SegmentationModel(backbone, aspp), weights)


@register("deeplabv3_resnet50", task="semantic", paper=_V3)
@options_of(_deeplabv3)
def deeplabv3_resnet50(num_classes: int, **options) -> SegmentationModel:
    """DeepLab v3 on ResNet-50 (torchvision layout by default; see the module docstring)."""
    return _deeplabv3(50, num_classes, **options)


@register("deeplabv3_resnet101", task="semantic", paper=_V3)
@options_of(_deeplabv3)
def deeplabv3_resnet101(num_classes: int, **options) -> SegmentationModel:
    """DeepLab v3 on ResNet-101 (torchvision layout by default; see the module docstring)."""
    return _deeplabv3(101, num_classes, **options)


@register("deeplabv3plus_resnet50", task="semantic", paper=_V3PLUS)
@options_of(_deeplabv3plus)
def deeplabv3plus_resnet50(num_classes: int, **options) -> SegmentationModel:
    """DeepLab v3+ (ASPP + decoder on layer1) on ResNet-50, output stride 16."""
    return _deeplabv3plus(50, num_classes, **options)


@register("deeplabv3plus_resnet101", task="semantic", paper=_V3PLUS)
@options_of(_deeplabv3plus)
def deeplabv3plus_resnet101(num_classes: int, **options) -> SegmentationModel:
    """DeepLab v3+ (ASPP + decoder on layer1) on ResNet-101, output stride 16."""
    return _deeplabv3plus(101, num_classes, **options)
