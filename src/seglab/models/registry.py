"""The model registry: ``@register(name)`` on a builder whose keyword arguments are the model's options."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .. import hub
from ..data.palette import voc_palette
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from . import pretrained

# classes of a model built without a dataset: PASCAL VOC's 21 and COCO's 91 category ids (torchvision's defaults)
DEFAULT_NUM_CLASSES = {"semantic": 21, "instance": 91}
WEIGHT_OPTIONS = ("weights", "weights_backbone")  # where a model's first weights come from: not part of what it is


@dataclass(frozen=True)
class Entry:
    name: str
    builder: Callable[..., nn.Module]
    task: str  # "semantic" or "instance"
    paper: str


_REGISTRY: dict[str, Entry] = {}


def register(name: str, *, task: str, paper: str):
    """Decorator adding ``builder(num_classes, **options) -> nn.Module`` to the registry as ``name``."""

    def decorate(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = Entry(name, builder, task, paper)
        return builder

    return decorate


def entry(name: str) -> Entry:
    """The registry entry of ``name``; ValueError listing the known names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return _REGISTRY[name]


def task_of(meta: dict) -> str:
    """The task of the model that a checkpoint's or exported file's ``meta`` describes: its registry entry's, or
    the stored one where no model name is stored (a model built by hand)."""
    name = meta.get("model")
    return entry(name).task if name else meta["task"]


def default_num_classes(name: str) -> int:
    """The classes of ``name`` built without a dataset (:data:`DEFAULT_NUM_CLASSES` of its task)."""
    return DEFAULT_NUM_CLASSES[entry(name).task]


def names(task: str | None = None) -> list[str]:
    """Sorted registered model names, optionally only those of one task."""
    return sorted(n for n, e in _REGISTRY.items() if task is None or e.task == task)


def options(name: str) -> dict[str, object]:
    """The keyword options of model ``name`` and their defaults, in the order of its builder's signature
    (without ``num_classes``); e.g. ``options("fcn8s_vgg16")["width_mult"] == 1.0``."""
    parameters = inspect.signature(entry(name).builder).parameters.values()
    return {p.name: p.default for p in parameters
            if p.name != "num_classes" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def create(name: str, num_classes: int | None = None, **options) -> nn.Module:
    """Build the registered model ``name`` for ``num_classes`` classes with the builder's ``options``.

    ``weights`` may name torchvision's trained weights for the models it publishes (``"DEFAULT"``,
    ``"COCO_WITH_VOC_LABELS_V1"``, …; ``models.pretrained``): they are loaded through torch's hub cache, with the
    options they were trained with, and ``num_classes`` defaults to theirs (another count re-initialises the
    classifiers: fine-tuning). ``weights_backbone`` (or ``backbone_weights``) may name ImageNet weights of the backbone (``"IMAGENET1K_V1"``,
    ``"DEFAULT"``, …) or be a file. ``num_classes`` defaults to :data:`DEFAULT_NUM_CLASSES` otherwise.

    The model carries ``model.meta`` (:func:`model_meta`: the weights' class names where they have them, else
    "background", "class_1", …; the input normalisation the weights expect), which training replaces with the data's
    class names."""
    if "backbone_weights" in options:  # the CLI's spelling, also accepted in Python
        options["weights_backbone"] = options.pop("backbone_weights")
    weights, member = options.get("weights"), None
    if hub.is_name(weights):
        spec = pretrained.published(name, lambda: backbone_weight_names(name))
        member = hub.weights(spec.arch, weights)
        num_classes = num_classes or len(member.meta["categories"])
        options = {**spec.options, **options, "weights": None}
    num_classes = num_classes or default_num_classes(name)
    model = _build(name, num_classes, options)
    classes, normalization = None, _input_normalization(model)
    if member is not None:
        pretrained.load_published(model, member, lambda n: _build(name, n, options), num_classes)
        if num_classes == len(member.meta["categories"]):
            classes = member.meta["categories"]
        normalization = hub.normalization(member) or normalization
    model.meta = model_meta(name, num_classes, options, classes=classes, **(normalization or {}))
    return model


def _build(name: str, num_classes: int, options: dict) -> nn.Module:
    """``builder(num_classes, **options)``; an option the builder does not take is a ValueError."""
    try:
        return entry(name).builder(num_classes=num_classes, **options)
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            raise ValueError(f"model {name!r} does not take that option: {error}") from error
        raise


def _input_normalization(model: nn.Module) -> dict | None:
    """The normalisation a backbone's weights asked for (``backbones.pretrained``: IMAGENET1K_FEATURES), if any."""
    return next((m.input_normalization for m in model.modules() if hasattr(m, "input_normalization")), None)


def backbone_weight_names(name: str) -> list[str]:
    """The torchvision weight names the backbone of ``name`` (built with its default options) accepts as
    ``weights_backbone``: those of every ``torchvision_arch`` it declares (found on the meta device)."""
    with torch.device("meta"):
        model = entry(name).builder(num_classes=2)
    archs = sorted({m.torchvision_arch for m in model.modules() if hasattr(m, "torchvision_arch")})
    return [weight for arch in archs for weight in hub.weight_names(arch)]


def weight_names(name: str) -> list[str]:
    """The names of torchvision's trained weights that ``weights`` accepts for ``name`` (none for most models)."""
    return hub.weight_names(pretrained.PUBLISHED[name].arch) if name in pretrained.PUBLISHED else []


def model_meta(name: str, num_classes: int, options: dict | None = None, *, classes=None, palette=None,
               mean=IMAGENET_MEAN, std=IMAGENET_STD) -> dict:
    """The ``"meta"`` of a checkpoint or exported file, all that prediction needs beside the weights: model name,
    task and options (without the ``WEIGHT_OPTIONS``, which only initialise), ``num_classes``, class names
    (default "background", "class_1", …), palette (default VOC's, as lists) and the input normalisation
    ``mean``/``std`` (fractions of 255)."""
    classes = list(classes)[:num_classes] if classes is not None else \
        ["background"] + [f"class_{i}" for i in range(1, num_classes)]
    return {"model": name, "task": entry(name).task, "num_classes": num_classes,
            "options": {k: v for k, v in (options or {}).items() if k not in WEIGHT_OPTIONS},
            "classes": classes, "palette": [list(c) for c in (palette or voc_palette(256))],
            "mean": list(mean), "std": list(std)}


def count_parameters(name: str, num_classes: int = 21, **options) -> int:
    """Trainable parameter count of a model, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = create(name, num_classes, **options)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def describe(name: str) -> str:
    """What ``seglab models NAME`` prints: the builder's summary, paper, task, parameter count (at the default
    classes) and every option with its default, read from the builder's signature."""
    model = entry(name)
    num_classes = default_num_classes(name)
    summary = (inspect.getdoc(model.builder) or "").split("\n\n")[0].replace("\n", " ")
    lines = [f"{name}: {summary}", f"paper: {model.paper}", f"task: {model.task}",
             f"parameters ({num_classes} classes): {count_parameters(name, num_classes):,}",
             f"weights (torchvision's trained model): {', '.join(weight_names(name)) or 'none published'}",
             f"backbone weights (ImageNet): {', '.join(backbone_weight_names(name)) or 'none'}", "options (default):"]
    lines += [f"  {key} = {value!r}" for key, value in options(name).items()]
    return "\n".join(lines)
