"""``seglab eval``: a model (a checkpoint's, or one built by name) scored on a dataset split, with the report of
its task."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..io import evaluated_weights, resolve_checkpoint, safe_load, writable_dir
from ..models import from_checkpoint, model_meta
from ..models.base import check_device
from .compiled import Compiled
from .datasets import build_split
from .tasks import task_module


def evaluation_setup(checkpoint: str | Path | nn.Module, *, data: str | None = None, data_root: str | None = None,
                     split: str = "val", num_images: int | None = None, image_size: int | None = None,
                     device: str = "cpu", model_options: dict | None = None, evaluated: bool = False):
    """(checkpoint file or None, model with ``.meta``, validated dataset, the training config saved in the
    checkpoint or {}).

    ``checkpoint`` is a checkpoint file or run directory, or a model already built (``seglab.models.create``,
    e.g. with torchvision's trained weights; then ``data`` is needed). The dataset defaults to the one the
    checkpoint was trained on: its name and root, and, only when ``data`` is that name too, its reader options,
    Shapes count, size and seed. A checkpoint's class names (unless they are the placeholders ``class_1``, …)
    must be the dataset's (``build_split``'s ``model_classes``). ``model_options`` override saved model options
    where the weights allow (e.g. ``output_stride=8``). ``evaluated``: the weights the run's validation evaluated
    (the average of an ``--ema`` run's ``last.pt``; ``io.evaluated_weights``), not its raw ``"model"``.
    """
    device = check_device(device)
    if isinstance(checkpoint, nn.Module):
        if data is None:
            raise ValueError("evaluating a model built by name needs --data (and --data-root): it has no training run")
        path, model, trained = None, checkpoint, {}
    else:
        path = resolve_checkpoint(checkpoint)
        saved = evaluated_weights(safe_load(path)) if evaluated else safe_load(path)
        model = from_checkpoint(saved, path, device=device, **(model_options or {}))
        trained = saved.get("config") or {}
    name = data or trained.get("data", "shapes")
    same = trained if name == trained.get("data", "shapes") else {}  # the training data's options: for it only
    root = data_root or same.get("data_root")
    meta = model.meta  # a model built by name, or saved without class names, has none to compare the data's with
    named = path is not None and meta["classes"] != model_meta(meta["model"], meta["num_classes"])["classes"]
    dataset = build_split(name, split, root=root, num_images=num_images or same.get("num_val"),
                          image_size=image_size or same.get("image_size", 128), seed=same.get("seed", 0),
                          options=same.get("data_options"), num_classes=meta["num_classes"],
                          model_classes=meta["classes"] if named else None, model_source=path)
    return path, model, dataset, trained


def evaluate_checkpoint(checkpoint: str | Path | nn.Module, out: str | Path | None = None, *,
                        inference: dict | None = None, compile: bool = False, **setup) -> str:
    """Evaluate ``checkpoint`` (or a built model; ``evaluation_setup``'s ``setup`` keywords choose data and
    device) and write its task's report to ``out`` (default ``RUN_DIR/eval``; needed for a built model);
    ``inference``: the task's inference options (semantic models: batch size, sliding windows, scales, flip,
    CRF); ``compile``: run the model through ``torch.compile`` (``engine.compiled``). Returns the text to show:
    table and files written."""
    path, model, dataset, trained = evaluation_setup(checkpoint, **setup)
    if out is None and path is None:
        raise ValueError("evaluating a model built by name needs --out: it has no run directory")
    out = writable_dir(out or path.parent / "eval")
    task = task_module(model.meta)
    result, visuals = task.evaluate(Compiled(model) if compile else model, dataset, model.meta, **(inference or {}))
    table = task.write_report(result, visuals, model.meta, out, config=trained,
                              run_dir=path.parent if path is not None else None)
    return f"{table}\nwrote {out}/: {', '.join(task.REPORT_FILES)}"
