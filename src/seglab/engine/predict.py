"""``seglab predict``: a model (from a checkpoint or an ONNX file) run by its task on image files, folders of them
and videos (``engine.inputs`` finds them and names their outputs)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from torch import nn

from ..io import writable_dir
from .inputs import find_inputs
from .tasks import task_module


def predict(model: nn.Module, sources: Iterable[str | Path], out: str | Path, *, glob: str | None = None,
            **options) -> str:
    """Run ``model`` on the images and videos of ``sources`` (files and folders searched recursively for ``glob``,
    see ``engine.inputs.find_inputs``) and write its task's predictions under ``out``, mirroring the inputs'
    folders; ``options`` are the task's ``predict_files`` keywords. Returns a summary of what was written."""
    items = find_inputs(sources, glob, exclude=Path(out))
    task = task_module(model.meta)
    done = task.predict_files(model, items, writable_dir(out), **options)
    summary = f"wrote {done.files} files ({task.PREDICTION_FILES}) for {done.inputs} inputs to {out}"
    if done.skipped:
        summary += f"; skipped {done.skipped} inputs whose outputs exist"
    return "; ".join([summary, *done.notes])
