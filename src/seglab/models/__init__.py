"""Model registry and loading: ``create(name, num_classes, **options)``, ``names()``, ``load(path)``."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..io import load_state, resolve_checkpoint, safe_load
from . import deeplab, dilation, fcis, fcn, gcn, maskrcnn, maskxrcnn  # noqa: F401  (registering the models)
from .registry import (count_parameters, create, default_num_classes, describe, entry, model_meta, names, options,
                       register, task_of)


def load(path: str | Path, device: str = "cpu", **options) -> nn.Module:
    """A ready model (eval mode) from a checkpoint file or a run directory (``best.pt``, else ``last.pt``).

    The checkpoint's ``"meta"`` (model name and options, class names, palette, mean/std) is attached as
    ``model.meta``, so prediction needs nothing else. ``options`` override the saved model options where
    the weights allow it, e.g. ``output_stride=8`` to evaluate a DeepLab trained at output stride 16.
    """
    return from_checkpoint(safe_load(resolve_checkpoint(path)), path, device, **options)


def from_checkpoint(checkpoint: dict, source: str | Path, device: str = "cpu", **options) -> nn.Module:
    """:func:`load` of a checkpoint already read (its ``"meta"`` and ``"model"``); ``source`` names it in errors."""
    if not isinstance(checkpoint, dict) or "meta" not in checkpoint or "model" not in checkpoint:
        raise ValueError(f"{source} holds weights without seglab's meta (model name, classes, normalisation): load "
                         f"it with --model NAME --weights {source} (Python: create(NAME, weights=...))")
    meta = checkpoint["meta"]
    meta["options"] = {**meta["options"], **options}
    model = create(meta["model"], meta["num_classes"], **meta["options"])
    load_state(model, checkpoint["model"], source)
    model.meta = meta
    return model.to(device).eval()


__all__ = ["create", "names", "load", "from_checkpoint", "register", "entry", "count_parameters", "model_meta",
           "task_of", "default_num_classes", "describe", "options"]
