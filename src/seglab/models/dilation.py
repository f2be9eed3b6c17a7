"""Multi-Scale Context Aggregation by Dilated Convolutions (Yu & Koltun, arXiv:1511.07122): the VGG16
front-end (§4, ``backbones.dilation_vgg16_frontend``) followed by the context module (§3, Table 1).

The context module has 7 layers of 3×3 convolutions with dilations 1, 1, 2, 4, 8, 16, 1, each followed
by the truncation max(·, 0), then a 1×1 convolution to C channels without truncation (Table 1, and the
reference net's ``ctx_final``). Its widths are C throughout ("basic") or 2C, 2C, 4C, 8C, 16C, 32C, 32C
("large"). Layer names are the reference net's (fyu/dilation ``network.py``): ``ctx_conv1_1`` …
``ctx_fc1``, ``ctx_final``; the front-end's class scoring layer is its ``final``.

Choices, where the paper leaves them open or its code differs:

- Padding: each context layer pads by its dilation, as the reference net does, so C×h×w stays h×w;
  the front-end uses "same" zero padding instead of the reference's 186-px reflection padding of the
  input (see ``dilation_vgg16_frontend``).
- Upsampling: bilinear straight to the input size (``F.interpolate``, align_corners=False, which matches
  the front-end's pixel-centre geometry); the reference uses a fixed bilinear 16×16 deconvolution of
  stride 8, a no-parameter equivalent up to the border.
- Identity initialisation (§3): eq. 4 for "basic"; eq. 5 for "large", whose noise σ the paper only bounds
  (σ ≪ C/c_{i+1}, at least 1/32 here): ``LARGE_INIT_NOISE_STD`` = 1e-3 is our default.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..backbones import dilation_vgg16_frontend
from .base import SegmentationModel, load_weights
from .registry import register

CONTEXT_DILATIONS = (1, 1, 2, 4, 8, 16, 1)  # layers 1–7, Table 1
CONTEXT_WIDTHS = {"basic": (1, 1, 1, 1, 1, 1, 1), "large": (2, 2, 4, 8, 16, 32, 32)}  # × C, Table 1
CONTEXT_NAMES = ("ctx_conv1_1", "ctx_conv1_2", "ctx_conv2_1", "ctx_conv3_1", "ctx_conv4_1", "ctx_conv5_1", "ctx_fc1")
LARGE_INIT_NOISE_STD = 1e-3


def identity_init_(conv: nn.Conv2d, num_classes: int, noise_std: float = 0.0) -> nn.Conv2d:
    """Yu & Koltun's identity initialisation (§3, eq. 5) of a c_in → c_out convolution, in place:

    k^b(t, a) = C/c_out if t = 0 (the kernel centre) and ⌊a·C/c_in⌋ = ⌊b·C/c_out⌋, else ε ~ N(0, σ²),
    for input channel a, output channel b, C = ``num_classes``, σ = ``noise_std``; biases 0. With
    c_in = c_out = C and σ = 0 this is eq. 4, k^b(t, a) = 1[t=0]·1[a=b]. With σ = 0, channel g of the
    module's input is carried by the c/C channels of group g, each holding x_g·C/c, so a chain of such
    layers with ReLUs in between is the identity on non-negative input.
    """
    c_out, c_in, kh, kw = conv.weight.shape
    groups_in = torch.arange(c_in, device=conv.weight.device) * num_classes // c_in
    groups_out = torch.arange(c_out, device=conv.weight.device) * num_classes // c_out
    same_group = groups_out[:, None] == groups_in[None, :]
    with torch.no_grad():
        if noise_std > 0:
            conv.weight.normal_(0.0, noise_std)
        else:
            conv.weight.zero_()
        centre = conv.weight[:, :, kh // 2, kw // 2]
        centre.copy_(torch.where(same_group, torch.full_like(centre, num_classes / c_out), centre))
        conv.bias.zero_()
    return conv


class ContextModule(nn.Sequential):
    """The context module (§3, Table 1): class scores (N,C,H,W) → refined scores (N,C,H,W).

    Args:
        num_classes: C, the width of its input and output.
        variant: "basic" (every layer C wide) or "large" (2C … 32C, see the module docstring).
        init_noise_std: σ of the identity initialisation's noise; None: 0 for "basic" (eq. 4),
            ``LARGE_INIT_NOISE_STD`` for "large" (eq. 5).
    """

    def __init__(self, num_classes: int, variant: str = "basic", init_noise_std: float | None = None):
        if variant not in CONTEXT_WIDTHS:
            raise ValueError(f"context variant must be one of {sorted(CONTEXT_WIDTHS)}, got {variant!r}")
        if init_noise_std is None:
            init_noise_std = 0.0 if variant == "basic" else LARGE_INIT_NOISE_STD
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels = num_classes
        for name, multiple, dilation in zip(CONTEXT_NAMES, CONTEXT_WIDTHS[variant], CONTEXT_DILATIONS):
            layers[name] = nn.Conv2d(in_channels, multiple * num_classes, 3, padding=dilation, dilation=dilation)
            layers[f"{name}_relu"] = nn.ReLU(inplace=True)
            in_channels = multiple * num_classes
        layers["ctx_final"] = nn.Conv2d(in_channels, num_classes, 1)
        super().__init__(layers)
        for layer in self:
            if isinstance(layer, nn.Conv2d):
                identity_init_(layer, num_classes, init_noise_std)


class DilationNet(SegmentationModel):
    """Front-end → ``final`` (1×1 class scores) → context module → bilinear upsampling to the input size.

    Images (N,3,H,W), normalised → {"out": logits (N,C,H,W)}. Parameters: ``backbone.*`` (the front-end),
    ``classifier.final``, ``classifier.context.ctx_*``.

    Args:
        frontend: a backbone returning "fc7" at stride 8, e.g. ``dilation_vgg16_frontend()``.
        num_classes: C, background included.
        context: "basic", "large" or None (the front-end alone, §4).
        init_noise_std: see ``ContextModule``.
    """

    def __init__(self, frontend: nn.Module, num_classes: int, context: str | None = "basic",
                 init_noise_std: float | None = None):
        final = nn.Conv2d(frontend.channels["fc7"], num_classes, 1)
        nn.init.normal_(final.weight, std=0.001)  # the reference net's filler for ``final``
        nn.init.zeros_(final.bias)
        head: OrderedDict[str, nn.Module] = OrderedDict(final=final)
        if context is not None:
            head["context"] = ContextModule(num_classes, context, init_noise_std)
        super().__init__(frontend, nn.Sequential(head), feature="fc7")


_PAPER = "Yu & Koltun, Multi-Scale Context Aggregation by Dilated Convolutions (arXiv:1511.07122)"


@register("dilation_vgg16", task="semantic", paper=_PAPER)
def dilation_vgg16(num_classes: int, *, context: str | None = "basic", width_mult: float = 1.0,
                   batch_norm: bool = False, dropout: float = 0.5, init_noise_std: float | None = None,
                   weights: str | None = None, weights_backbone: str | None = None,
                   frozen_bn: bool = False) -> DilationNet:
    """VGG16 front-end + context module ("basic", "large" or None), output stride 8.

    ``weights_backbone``: torchvision ``vgg16``/``vgg16_bn`` ImageNet weights, a weight name (``IMAGENET1K_V1``,
    ``DEFAULT``) or a state-dict path, loaded into the front-end as the reference code does (every layer as it is,
    fc6/fc7 reshaped into convolutions; see ``dilation_vgg16_frontend``); ``final`` and the context module keep
    their own initialisations. ``weights``: a seglab checkpoint or state dict of this model; ``frozen_bn`` freezes
    the front-end's BatchNorm (``batch_norm=True``).
    """
    frontend = dilation_vgg16_frontend(width_mult=width_mult, batch_norm=batch_norm, dropout=dropout,
                                       weights_backbone=weights_backbone, frozen_bn=frozen_bn)
    return load_weights(DilationNet(frontend, num_classes, context, init_noise_std), weights)
