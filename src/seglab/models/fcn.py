"""Fully Convolutional Networks, FCN-32s / 16s / 8s on VGG16 (Long, Shelhamer & Darrell, arXiv:1411.4038).

Skip architecture (§4.2): class scores from fc7 (``score_fr``) are upsampled 2× by a learnable,
bilinear-initialised transposed convolution (``upscore2``), fused by summation with 1×1 scores of pool4
(``score_pool4``); FCN-8s repeats this with pool3 (``upscore_pool4``, ``score_pool3``). The final 32×,
16× or 8× upsampling is fixed bilinear interpolation (``FixedBilinearUpsample``): the reference models
give it a learning rate of 0, so here it holds no parameters at all.

Two padding/crop schemes keep the output the size of the input for any input ≥ 32 px, odd sizes too:

- ``padding="caffe"`` (default, the reference models): conv1_1 pads by 100, pools round up, fc6 is a
  valid 7×7 convolution, transposed convolutions have no padding, and every fused or final map is
  cropped at the offset that aligns its coordinate frame with the input's. Tracing the coordinate of
  each layer (x_in = stride·x_out + (k−1)/2 − pad) gives the offsets of ``CAFFE_OFFSETS``, the same
  numbers as the Crop layers of the reference nets.
- ``padding="same"``: the input is zero-padded (bottom/right) to a multiple of 32, fc6 pads by 3 and the
  transposed convolutions by factor/2, so every map is exactly 2× the previous one and the only crop is
  the final one back to the input size. Cheaper on small images (no 100-px border); used by the demo.

ImageNet initialisation (§4.1, "We decapitate each net by discarding the final classifier layer, and convert all
fully connected layers to convolutions"): ``weights_backbone``, a torchvision ``vgg16``/``vgg16_bn`` weight name
(``IMAGENET1K_V1``, ``DEFAULT``) or a state-dict path, loads every conv as it is and VGG16's fc6/fc7 reshaped into
the 7×7 and 1×1 convolutions they are equivalent to; fc8 is dropped, ``score_*`` start at zero.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import VGG16, prepare_backbone
from ..ops import FixedBilinearUpsample, bilinear_conv_transpose, upsampling_padding
from .base import SegmentationModel, load_weights, options_of, resnet_backbone
from .registry import register

# Crop offsets of the reference nets (voc-fcn{32,16,8}s): score_pool4 → 5, score_pool3 → 9,
# final upsampling by 32/16/8 → 19/27/31 pixels.
CAFFE_OFFSETS = {"pool4": 5, "pool3": 9, 32: 19, 16: 27, 8: 31}
# "At-once" FCN-8s scales pool4/pool3 before scoring them (reference ``voc-fcn8s-atonce``).
AT_ONCE_SCALES = {"pool4": 0.01, "pool3": 0.0001}


def crop_like(x: torch.Tensor, offset: int, height: int, width: int) -> torch.Tensor:
    """Crop (N,C,H,W) ``x`` to ``height``×``width`` starting at (offset, offset)."""
    if x.shape[-2] < offset + height or x.shape[-1] < offset + width:
        raise ValueError(f"cannot crop {tuple(x.shape[-2:])} at offset {offset} to {(height, width)}")
    return x[..., offset:offset + height, offset:offset + width]


class FCN(nn.Module):
    """FCN with 0, 1 or 2 skips. Images (N,3,H,W), normalised → {"out": logits (N,C,H,W)}.

    Args:
        backbone: a ``VGG16`` built with the geometry of ``padding`` (see the module docstring).
        num_classes: C, background included.
        skips: () for FCN-32s, ("pool4",) for FCN-16s, ("pool4", "pool3") for FCN-8s.
        padding: "caffe" or "same".
        at_once: scale pool4 by 0.01 and pool3 by 1e-4 before scoring (FCN-8s trained at once).
    """

    def __init__(self, backbone: VGG16, num_classes: int, skips: tuple[str, ...] = ("pool4", "pool3"),
                 padding: str = "caffe", at_once: bool = False):
        super().__init__()
        if tuple(skips) not in ((), ("pool4",), ("pool4", "pool3")):
            raise ValueError(f"skips must be (), ('pool4',) or ('pool4', 'pool3'), got {skips}")
        if padding not in ("caffe", "same"):
            raise ValueError(f"padding must be 'caffe' or 'same', got {padding!r}")
        self.backbone, self.skips, self.padding, self.at_once = backbone, tuple(skips), padding, at_once
        same = padding == "same"
        self.score_fr = nn.Conv2d(backbone.channels["fc7"], num_classes, 1)
        if "pool4" in skips:
            self.score_pool4 = nn.Conv2d(backbone.channels["pool4"], num_classes, 1)
            self.upscore2 = bilinear_conv_transpose(num_classes, 2, upsampling_padding(2) if same else 0)
        if "pool3" in skips:
            self.score_pool3 = nn.Conv2d(backbone.channels["pool3"], num_classes, 1)
            self.upscore_pool4 = bilinear_conv_transpose(num_classes, 2, upsampling_padding(2) if same else 0)
        self.output_stride = 32 // 2 ** len(skips)
        self.upscore = FixedBilinearUpsample(num_classes, self.output_stride,
                                             upsampling_padding(self.output_stride) if same else 0)
        # The paper zero-initialises the class scoring layer and the skip scores (§4.1, §4.2).
        for layer in (self.score_fr, getattr(self, "score_pool4", None), getattr(self, "score_pool3", None)):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def _fuse(self, score: torch.Tensor, upsample: nn.Module, skip_scorer: nn.Module,
              skip: torch.Tensor, name: str) -> torch.Tensor:
        score = upsample(score)
        if self.at_once:
            skip = skip * AT_ONCE_SCALES[name]
        offset = CAFFE_OFFSETS[name] if self.padding == "caffe" else 0
        return score + crop_like(skip_scorer(skip), offset, score.shape[-2], score.shape[-1])

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = images.shape[-2:]
        if self.padding == "same":
            images = F.pad(images, (0, -width % 32, 0, -height % 32))
        features = self.backbone(images)
        score = self.score_fr(features["fc7"])
        if "pool4" in self.skips:
            score = self._fuse(score, self.upscore2, self.score_pool4, features["pool4"], "pool4")
        if "pool3" in self.skips:
            score = self._fuse(score, self.upscore_pool4, self.score_pool3, features["pool3"], "pool3")
        offset = CAFFE_OFFSETS[self.output_stride] if self.padding == "caffe" else 0
        return {"out": crop_like(self.upscore(score), offset, height, width)}


def _build(num_classes: int, skips: tuple[str, ...], *, width_mult: float = 1.0, batch_norm: bool = False,
           padding: str = "caffe", at_once: bool = False, dropout: float = 0.5, weights: str | None = None,
           weights_backbone: str | None = None, frozen_bn: bool = False) -> FCN:
    caffe = padding == "caffe"
    backbone = VGG16(batch_norm=batch_norm, width_mult=width_mult, first_padding=100 if caffe else 1,
                     ceil_mode=caffe, fc6_padding=0 if caffe else 3, dropout=dropout)
    prepare_backbone(backbone, weights_backbone=weights_backbone, frozen_bn=frozen_bn)
    return load_weights(FCN(backbone, num_classes, skips, padding=padding, at_once=at_once), weights)


_PAPER = "Long et al., Fully Convolutional Networks for Semantic Segmentation (arXiv:1411.4038)"


@register("fcn32s_vgg16", task="semantic", paper=_PAPER)
@options_of(_build)
def fcn32s_vgg16(num_classes: int, **options) -> FCN:
    """FCN-32s: score_fr upsampled 32× (single stream). Options: see ``_build``."""
    return _build(num_classes, (), **options)


@register("fcn16s_vgg16", task="semantic", paper=_PAPER)
@options_of(_build)
def fcn16s_vgg16(num_classes: int, **options) -> FCN:
    """FCN-16s: one skip from pool4, upsampled 16×."""
    return _build(num_classes, ("pool4",), **options)


@register("fcn8s_vgg16", task="semantic", paper=_PAPER)
@options_of(_build)
def fcn8s_vgg16(num_classes: int, **options) -> FCN:
    """FCN-8s: skips from pool4 and pool3, upsampled 8×."""
    return _build(num_classes, ("pool4", "pool3"), **options)


def fcn_head(in_channels: int, num_classes: int) -> nn.Sequential:
    """torchvision's ``FCNHead``: 3×3 conv to in/4 channels, BN, ReLU, dropout 0.1, 1×1 scores."""
    inter = in_channels // 4
    return nn.Sequential(nn.Conv2d(in_channels, inter, 3, padding=1, bias=False), nn.BatchNorm2d(inter),
                         nn.ReLU(), nn.Dropout(0.1), nn.Conv2d(inter, num_classes, 1))


def _build_resnet(depth: int, num_classes: int, *, aux: bool = False, output_stride: int = 8,
                  width_mult: float = 1.0, weights: str | None = None, weights_backbone: str | None = None,
                  frozen_bn: bool = False) -> SegmentationModel:
    """torchvision's FCN variant: dilated ResNet (output stride 8) + ``fcn_head`` (+ aux head on layer3)."""
    backbone = resnet_backbone(depth, output_stride=output_stride, width_mult=width_mult,
                               weights_backbone=weights_backbone, frozen_bn=frozen_bn)
    aux_head = fcn_head(backbone.channels["layer3"], num_classes) if aux else None
    model = SegmentationModel(backbone, fcn_head(backbone.channels["layer4"], num_classes), aux_head)
    return load_weights(model, weights)


_TV_FCN = "torchvision's FCN variant: dilated ResNet + FCN head (Long et al., arXiv:1411.4038)"


@register("fcn_resnet50", task="semantic", paper=_TV_FCN)
@options_of(_build_resnet)
def fcn_resnet50(num_classes: int, **options) -> SegmentationModel:
    """FCN head on a dilated ResNet-50 (output stride 8), torchvision's layout and parameter names."""
    return _build_resnet(50, num_classes, **options)


@register("fcn_resnet101", task="semantic", paper=_TV_FCN)
@options_of(_build_resnet)
def fcn_resnet101(num_classes: int, **options) -> SegmentationModel:
    """FCN head on a dilated ResNet-101 (output stride 8), torchvision's layout and parameter names."""
    return _build_resnet(101, num_classes, **options)
