"""``seglab eval``: a model (a checkpoint's, or one built by name) scored on a dataset split, with the report of
its task."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..io import resolve_checkpoint, safe_load, writable_dir
from ..models import from_checkpoint
from .datasets import build_split
from .tasks import task_module


def evaluation_setup(checkpoint: str | Path | nn.Module, *, data: str | None = None, data_root: str | None = None,
                     split: str = "val", num_images: int | None = None, image_size: int | None = None,
                     device: str = "cpu", model_options: dict | None = None):
    """(checkpoint file or None, model with ``.meta``, validated dataset, the training config saved in the
    checkpoint or {}).

    ``checkpoint`` is a checkpoint file or run directory, or a model already built (``seglab.models.create``,
    e.g. with torchvision's trained weights; then ``data`` is needed). The dataset defaults to the one the
    checkpoint was trained on (its name, root, Shapes count, size and seed); ``model_options`` override saved
    model options where the weights allow (e.g. ``output_stride=8``).
    """
    if isinstance(checkpoint, nn.Module):
        if data is None:
            raise ValueError("evaluating a model built by name needs --data (and --data-root): it has no training run")
        path, model, trained = None, checkpoint, {}
    else:
        path = resolve_checkpoint(checkpoint)
        saved = safe_load(path)
        model = from_checkpoint(saved, path, device=device, **(model_options or {}))
        trained = saved.get("config") or {}
    dataset = build_split(data or trained.get("data", "shapes"), split, root=data_root or trained.get("data_root"),
                          num_images=num_images or trained.get("num_val"),
                          image_size=image_size or trained.get("image_size", 128), seed=trained.get("seed", 0),
                          num_classes=model.meta["num_classes"])
    return path, model, dataset, trained


def evaluate_checkpoint(checkpoint: str | Path | nn.Module, out: str | Path | None = None, *,
                        inference: dict | None = None, **setup) -> str:
    """Evaluate ``checkpoint`` (or a built model; ``evaluation_setup``'s ``setup`` keywords choose data and
    device) and write its task's report to ``out`` (default ``RUN_DIR/eval``; needed for a built model);
    ``inference``: the task's inference options (semantic models: batch size, sliding windows, scales, flip,
    CRF). Returns the text to show: table and files written."""
    path, model, dataset, trained = evaluation_setup(checkpoint, **setup)
    if out is None and path is None:
        raise ValueError("evaluating a model built by name needs --out: it has no run directory")
    out = writable_dir(out or path.parent / "eval")
    task = task_module(model.meta)
    result, visuals = task.evaluate(model, dataset, model.meta, **(inference or {}))
    table = task.write_report(result, visuals, model.meta, out, config=trained,
                              run_dir=path.parent if path is not None else None)
    return f"{table}\nwrote {out}/: {', '.join(task.REPORT_FILES)}"
