"""Global Convolutional Network (Peng et al., "Large Kernel Matters", arXiv:1703.02719), Figure 2.

- ``GlobalConv`` (Fig. 2 B, §3.1): a k×k receptive field from two separable branches, (k×1 → 1×k) and
  (1×k → k×1), summed; no BatchNorm and no nonlinearity inside. It maps a backbone stage straight to
  C = num_classes score maps. k = 15 by default, the best kernel of the paper's ablation (§4.1, Table 1).
- ``BoundaryRefinement`` (Fig. 2 C, §3.2): residual x + conv3×3(ReLU(conv3×3(x))) on the C score maps.
- ``GlobalConvNet`` (Fig. 2 A): a ResNet (res-2..res-5 = layer1..layer4, output stride 32, no dilation)
  with GCN → BR on each of the four stages (score maps at strides 4, 8, 16, 32), then an FCN-4 style
  decoder: the coarsest map goes through a 2× deconvolution, is added to the next finer map, then BR;
  twice more down to stride 4; then deconv → BR twice more to stride 1. In all: 4 GCN, 9 BR (4 per
  stage + 5 in the decoder) and 5 deconvolutions. ``boundary_refinement=False`` drops all 9 BR blocks:
  the paper's BR ablation (§4.1, GCN with and without BR, boundary vs internal accuracy).

Biases: the paper's code is not public; every convolution here has a bias (Caffe's default,
``bias_term: true``), except the deconvolutions, which are FCN's bilinear-initialised, bias-free
``ConvTranspose2d`` (``seglab.ops.bilinear_conv_transpose``). ``width_mult`` scales the backbone only:
the head always works on C channels.

Sizes: the ResNet rounds up (a stride-s map has ⌈H/s⌉ rows), so a 2× upsampled map is the size of the
next finer map or one pixel larger (odd sizes); it is cropped at its bottom/right to the finer map's
size, and the stride-1 map (4·⌈H/4⌉ ≥ H rows) is cropped the same way to the input size. Cropping, not
resizing, keeps pixel (0, 0) of every map aligned and adds no interpolation the paper does not have.
"""
from __future__ import annotations

import torch
from torch import nn

from ..backbones.resnet import LAYER_NAMES, ResNet
from ..ops import bilinear_conv_transpose, upsampling_padding
from .base import load_weights, options_of, resnet_backbone
from .fcn import crop_like
from .registry import register


class GlobalConv(nn.Module):
    """GCN module (Fig. 2 B): (N,C_in,H,W) → (N,C_out,H,W), ``left`` (k×1 → 1×k) + ``right`` (1×k → k×1).

    Parameters: 2·(k·C_in·C_out + k·C_out·C_out) weights + 4·C_out biases. ``kernel_size`` must be odd
    so that (k−1)/2 padding keeps the size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 15):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"GlobalConv: kernel_size must be a positive odd number, got {kernel_size}")
        k, pad = kernel_size, (kernel_size - 1) // 2
        self.left = nn.Sequential(nn.Conv2d(in_channels, out_channels, (k, 1), padding=(pad, 0)),
                                  nn.Conv2d(out_channels, out_channels, (1, k), padding=(0, pad)))
        self.right = nn.Sequential(nn.Conv2d(in_channels, out_channels, (1, k), padding=(0, pad)),
                                   nn.Conv2d(out_channels, out_channels, (k, 1), padding=(pad, 0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.left(x) + self.right(x)


class BoundaryRefinement(nn.Module):
    """BR block (Fig. 2 C): (N,C,H,W) → x + conv2(ReLU(conv1(x))), both convolutions 3×3, C → C."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


class GlobalConvNet(nn.Module):
    """The whole pipeline (Fig. 2 A). Images (N,3,H,W), normalised → {"out": logits (N,C,H,W)}.

    Modules: ``gcn[i]`` and ``br[i]`` score stage ``LAYER_NAMES[i]`` (layer1 = res-2 … layer4 = res-5);
    the decoder runs coarse to fine: ``deconv[j]`` upsamples 2×, the sum with the next finer stage's
    scores (j < 3) goes through ``br_fuse[j]``. j = 0, 1, 2 reach strides 16, 8, 4 (fusing layer3, layer2,
    layer1); j = 3, 4 reach strides 2 and 1 with no skip.

    With a dilated backbone (``output_stride`` 16 or 8), stages of equal stride are added without a
    deconvolution (``deconv[j]`` is then an ``nn.Identity``); the paper's network has output stride 32.
    Without ``boundary_refinement`` every ``br[i]`` and ``br_fuse[j]`` is an ``nn.Identity``.
    """

    def __init__(self, backbone: ResNet, num_classes: int, kernel_size: int = 15, boundary_refinement: bool = True):
        super().__init__()
        self.backbone = backbone
        self.gcn = nn.ModuleList(GlobalConv(backbone.channels[name], num_classes, kernel_size)
                                 for name in LAYER_NAMES)
        strides = [backbone.strides[name] for name in reversed(LAYER_NAMES)] + [2, 1]
        self.deconv = nn.ModuleList(
            bilinear_conv_transpose(num_classes, 2, upsampling_padding(2)) if coarse == 2 * fine else nn.Identity()
            for coarse, fine in zip(strides, strides[1:]))

        def refinement() -> nn.Module:
            return BoundaryRefinement(num_classes) if boundary_refinement else nn.Identity()

        self.br = nn.ModuleList(refinement() for _ in LAYER_NAMES)
        self.br_fuse = nn.ModuleList(refinement() for _ in self.deconv)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = images.shape[-2:]
        features = self.backbone(images)
        scores = [br(gcn(features[name])) for name, gcn, br in zip(LAYER_NAMES, self.gcn, self.br)]
        skips = [*reversed(scores[:-1]), None, None]  # layer3, layer2, layer1, then none at strides 2 and 1
        x = scores[-1]
        for deconv, br, skip in zip(self.deconv, self.br_fuse, skips):
            x = deconv(x)
            if skip is not None:
                x = crop_like(x, 0, *skip.shape[-2:]) + skip
            x = br(x)
        return {"out": crop_like(x, 0, height, width)}


def _build(depth: int, num_classes: int, *, kernel_size: int = 15, boundary_refinement: bool = True,
           width_mult: float = 1.0, output_stride: int = 32, weights: str | None = None,
           weights_backbone: str | None = None, frozen_bn: bool = False) -> GlobalConvNet:
    """Options: GCN ``kernel_size`` (odd), ``boundary_refinement`` (False: no BR block, the BR ablation),
    backbone ``width_mult``, ``output_stride`` (32 = the paper), ``weights`` (a seglab checkpoint),
    ``weights_backbone`` (torchvision ResNet weights), ``frozen_bn``."""
    backbone = resnet_backbone(depth, output_stride=output_stride, width_mult=width_mult,
                               weights_backbone=weights_backbone, frozen_bn=frozen_bn)
    return load_weights(GlobalConvNet(backbone, num_classes, kernel_size, boundary_refinement), weights)


_PAPER = "Peng et al., Large Kernel Matters — Improve Semantic Segmentation by Global Convolutional Network " \
         "(arXiv:1703.02719)"


@register("gcn_resnet18", task="semantic", paper=_PAPER)
@options_of(_build)
def gcn_resnet18(num_classes: int, **options) -> GlobalConvNet:
    """GCN + BR on ResNet-18 (basic blocks: a small model for CPU experiments), k = 15, output stride 32
    (options: see ``_build``)."""
    return _build(18, num_classes, **options)


@register("gcn_resnet50", task="semantic", paper=_PAPER)
@options_of(_build)
def gcn_resnet50(num_classes: int, **options) -> GlobalConvNet:
    """GCN + BR on ResNet-50, k = 15, output stride 32 (options: see ``_build``)."""
    return _build(50, num_classes, **options)


@register("gcn_resnet101", task="semantic", paper=_PAPER)
@options_of(_build)
def gcn_resnet101(num_classes: int, **options) -> GlobalConvNet:
    """GCN + BR on ResNet-101, k = 15, output stride 32 (options: see ``_build``)."""
    return _build(101, num_classes, **options)
