"""Whole models that torchvision publishes trained weights for, loaded by name (``weights="DEFAULT"``) through
``seglab.hub``: the torchvision builder whose weights fit each seglab model, and the options those weights
were trained with (they live outside the state dict)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torchvision.models import WeightsEnum

from .. import hub
from ..io import load_state

log = logging.getLogger("seglab")


@dataclass(frozen=True)
class Published:
    arch: str  # torchvision's builder name (its weights API name)
    options: dict = field(default_factory=dict)  # seglab options the weights need


# torchvision trains these with the auxiliary FCN head on layer3 (its weights include it), and its COCO_V1
# Mask R-CNN with FrozenBatchNorm eps 0 (torchvision's ``overwrite_eps(model, 0.0)`` for those weights).
PUBLISHED = {
    "fcn_resnet50": Published("fcn_resnet50", {"aux": True}),
    "fcn_resnet101": Published("fcn_resnet101", {"aux": True}),
    "deeplabv3_resnet50": Published("deeplabv3_resnet50", {"aux": True}),
    "deeplabv3_resnet101": Published("deeplabv3_resnet101", {"aux": True}),
    "maskrcnn_resnet50_fpn": Published("maskrcnn_resnet50_fpn", {"bn_eps": 0.0}),
}


def published(name: str, backbone_weights: Callable[[], list[str]]) -> Published:
    """How torchvision publishes ``name``; a ValueError saying what it can start from instead (its backbone's
    ImageNet weights, ``backbone_weights()``, asked only then) when torchvision publishes no trained ``name``."""
    if name not in PUBLISHED:
        backbone_weights = backbone_weights()
        instead = (f"start from ImageNet backbone weights instead: --backbone-weights {' | '.join(backbone_weights)} "
                   f"(Python: backbone_weights=NAME)" if backbone_weights else "train it from scratch")
        raise ValueError(f"torchvision publishes no trained {name}; {instead}, or give a weights file")
    return PUBLISHED[name]


def class_dependent_keys(build: Callable[[int], nn.Module], num_classes: int) -> set[str]:
    """The state-dict keys whose shapes depend on the number of classes (the classifiers), found by building
    the model on the meta device at ``num_classes`` and one more (no memory, no initialisation cost)."""
    with torch.device("meta"):
        one, other = build(num_classes).state_dict(), build(num_classes + 1).state_dict()
    return {key for key, value in one.items() if other[key].shape != value.shape}


def load_published(model: nn.Module, member: WeightsEnum, build: Callable[[int], nn.Module],
                   num_classes: int) -> None:
    """Load ``member``'s weights into ``model`` (built for ``num_classes``). When the weights have other classes
    (fine-tuning), the classifier layers (:func:`class_dependent_keys`) keep their fresh initialisation, and a log
    line names them; every other key must fit (strict, the first misfit named)."""
    state = hub.state_dict(member)
    trained = len(member.meta["categories"])
    skipped = set()
    if num_classes != trained:
        skipped = class_dependent_keys(build, num_classes)
        state = {key: value for key, value in state.items() if key not in skipped}
        layers = sorted({key.rsplit(".", 1)[0] for key in skipped})
        log.info("seglab: %s has %d classes, the model %d: re-initialised %s", member, trained, num_classes,
                 ", ".join(layers))
    load_state(model, state, hub.cache_path(member), missing_ok=skipped)
