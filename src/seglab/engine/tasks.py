"""The task seam: ``engine.semantic`` and ``engine.instance`` expose the same names, and the Trainer, ``eval``,
``predict`` and ``export`` pick one of them once, from the registry entry of the model."""
from __future__ import annotations

from types import ModuleType

from ..models.registry import task_of
from . import instance, semantic

TASKS: dict[str, ModuleType] = {"semantic": semantic, "instance": instance}


def task_module(meta: dict) -> ModuleType:
    """``engine.semantic`` or ``engine.instance``, for the model that ``meta`` describes."""
    return TASKS[task_of(meta)]
