"""``seglab predict``: a model (from a checkpoint or an ONNX file) run on image files by its task."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from torch import nn

from ..io import writable_dir
from .tasks import task_module


def predict(model: nn.Module, images: Iterable[str | Path], out: str | Path, **options) -> str:
    """Run ``model`` on the image files and write its task's predictions to ``out``; ``options`` are the task's
    ``predict_files`` keywords. Returns what was written."""
    task = task_module(model.meta)
    written = task.predict_files(model, images, writable_dir(out), **options)
    return f"wrote {len(written)} {task.PREDICTION_FILES} to {out}"
