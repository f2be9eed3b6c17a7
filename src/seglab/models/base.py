"""The shape shared by most semantic models: backbone → head on one feature map → bilinear upsampling
to the input size (torchvision's ``_SimpleSegmentationModel``), plus the helpers their builders share."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import BASIC_DEPTHS, BasicResNet, ResNet, prepare_backbone
from ..io import evaluated_weights, load_state, safe_load


class SegmentationModel(nn.Module):
    """Images (N,3,H,W) → {"out": logits (N,C,H,W)[, "aux": logits (N,C,H,W)]}.

    ``classifier`` reads ``features[feature]`` (or the whole feature dict when ``feature`` is None, for
    decoders that fuse several levels); ``aux_classifier`` reads ``features[aux_feature]``. Logits are
    upsampled bilinearly to the input size (``align_corners=True`` for backbones whose output pixel i
    is centred on input pixel stride·i, as Caffe's DeepLab).
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module, aux_classifier: nn.Module | None = None,
                 feature: str | None = "layer4", aux_feature: str = "layer3", align_corners: bool = False):
        super().__init__()
        self.backbone, self.classifier, self.aux_classifier = backbone, classifier, aux_classifier
        self.feature, self.aux_feature, self.align_corners = feature, aux_feature, align_corners

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = images.shape[-2:]
        features = self.backbone(images)
        scores = self.classifier(features if self.feature is None else features[self.feature])
        out = {"out": F.interpolate(scores, size=size, mode="bilinear", align_corners=self.align_corners)}
        if self.aux_classifier is not None:
            aux = self.aux_classifier(features[self.aux_feature])
            out["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=self.align_corners)
        return out


def resnet_backbone(depth: int, *, output_stride: int, multi_grid=None, width_mult: float = 1.0,
                    weights_backbone: str | None = None, frozen_bn: bool = False) -> ResNet:
    """A ``ResNet`` (``BasicResNet`` for depths 18 and 34, which take no ``multi_grid``) with optional ImageNet
    weights from disk and optionally frozen BatchNorm."""
    if depth in BASIC_DEPTHS:
        backbone = BasicResNet(depth, output_stride, width_mult)
    else:
        backbone = ResNet(depth, output_stride, tuple(multi_grid) if multi_grid else None, width_mult)
    return prepare_backbone(backbone, weights_backbone=weights_backbone, frozen_bn=frozen_bn)


def load_weights(model: nn.Module, path: str | None) -> nn.Module:
    """Load a seglab checkpoint (its ``"model"``) or a plain state dict from disk, weights_only, strict."""
    if path is not None:
        state = safe_load(path)
        load_state(model, state.get("model", state), path)
    return model


def load_part(model: nn.Module, path: str | Path) -> int:
    """Load a seglab checkpoint (the weights its validation evaluated: ``io.evaluated_weights``) or a plain state
    dict from disk (weights_only) whose keys are a subset of ``model``'s, with the same shapes: staged training
    (FCN-16s from FCN-32s). The model's other weights keep their values. Returns the number of tensors loaded; a
    ValueError naming ``path`` and the key when a tensor does not fit or the model lacks it."""
    state = evaluated_weights(safe_load(path))
    state = state.get("model", state)
    load_state(model, state, path, missing_ok=set(model.state_dict()) - set(state))
    return len(state)


DEVICES = "auto, cpu, cuda, cuda:N, mps"  # what check_device accepts


def check_device(name: str) -> torch.device:
    """The device ``name`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``; ``auto``: cuda when there is one, else the
    CPU) when this machine has it; a ValueError in one line otherwise ("--device cuda: no CUDA device is
    available here", "--device gpu: not a device; use one of …")."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: not a device; use one of {DEVICES}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: no CUDA device is available here")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: no MPS (Apple GPU) device is available here")
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters; the CPU for a model without (``seglab.export.OnnxModel``)."""
    return next(model.parameters(), torch.empty(0)).device


def options_of(*targets: Callable, exclude: tuple[str, ...] = ()):
    """Decorator for a builder that passes ``**options`` on to ``targets``: its ``inspect.signature`` becomes its
    own parameters (without ``**options``), then the keyword-only parameters of each target not named yet or in
    ``exclude``, with their defaults. The options are written once, where they are used, and still listed.
    An unknown option raises where it lands (TypeError "unexpected keyword argument")."""

    def decorate(builder: Callable) -> Callable:
        own = inspect.signature(builder)
        parameters = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
        for target in targets:
            names = {p.name for p in parameters} | set(exclude)
            parameters += [p for p in inspect.signature(target).parameters.values()
                           if p.kind is p.KEYWORD_ONLY and p.name not in names]
        builder.__signature__ = own.replace(parameters=parameters)
        return builder

    return decorate
