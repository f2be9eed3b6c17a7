"""Weight interop with torchvision: its segmentation models → seglab models with the same weights."""
from __future__ import annotations

from torch import nn
from torchvision.models import segmentation as tvseg

from . import models
from .backbones.resnet import DEPTHS


def _depth(tv_model: nn.Module) -> int:
    """50 or 101, from the number of blocks in layer3."""
    blocks = len(tv_model.backbone.layer3)
    return next(depth for depth, layout in DEPTHS.items() if layout[2] == blocks)


def _output_stride(tv_model: nn.Module) -> int:
    """Output stride of the torchvision backbone (its layer3/layer4 trade stride for dilation)."""
    stride = 32
    for layer in (tv_model.backbone.layer4, tv_model.backbone.layer3):
        if layer[0].conv2.stride == (1, 1) and (layer[0].downsample is None or layer[0].downsample[0].stride == (1, 1)):
            stride //= 2
    return stride


def from_torchvision(tv_model: nn.Module) -> nn.Module:
    """A torchvision ``fcn_resnet50/101`` or ``deeplabv3_resnet50/101`` (with or without aux head) as
    the seglab model with the same weights and the same outputs (eval mode: ``out`` and ``aux``).

    The parameter names are identical by construction; the returned model is in the input's train/eval mode.
    """
    if isinstance(tv_model, tvseg.DeepLabV3):
        family = "deeplabv3"
        rates = [branch[0].dilation[0] for branch in tv_model.classifier[0].convs[1:4]]
        options = {"aspp_rates": rates}
    elif isinstance(tv_model, tvseg.FCN):
        family, options = "fcn", {}
    else:
        raise ValueError(f"from_torchvision takes torchvision FCN or DeepLabV3 (ResNet) models, got "
                         f"{type(tv_model).__name__}")
    num_classes = tv_model.classifier[-1].out_channels
    model = models.create(f"{family}_resnet{_depth(tv_model)}", num_classes, aux=tv_model.aux_classifier is not None,
                          output_stride=_output_stride(tv_model), **options)
    model.load_state_dict(tv_model.state_dict(), strict=True)
    return model.train(tv_model.training)
