"""Evaluation of a semantic model on a dataset: metrics, per-class table and pictures."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from .. import viz
from . import distributed
from ..metrics import SegmentationMetrics, format_table
from .inference import Size, predict_labels


def _same_size_groups(items: list) -> list[list]:
    """Split a batch of (image, target) items into runs of equal image size (so they can be stacked)."""
    groups: list[list] = []
    for item in items:
        if groups and groups[-1][0][0].shape == item[0].shape:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, num_classes: int, mean: Sequence[float], std: Sequence[float],
             batch_size: int = 8, num_visuals: int = 8, num_workers: int = 0, progress: bool = True, *,
             crop: Size | None = None, stride: Size | None = None, scales: Sequence[float] = (1.0,),
             flip: bool = False, crf: dict | None = None):
    """Metrics of ``model`` over ``dataset`` (items as uint8 images, no transforms applied).

    ``crop``, ``stride``, ``scales`` and ``flip`` choose the inference mode (see ``infer_logits``);
    the default is whole-image inference. ``crf``: ``dense_crf`` keywords to refine each prediction.

    Returns ``(result, visuals)``: the ``SegmentationMetrics.compute()`` dict and up to ``num_visuals``
    tuples ``(image uint8 (3,H,W), target (H,W), prediction (H,W))`` for the overlay grid. Under torchrun
    each process evaluates its own shard and the confusion matrix is summed over the processes.
    """
    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(num_classes)
    visuals = []
    shard = Subset(dataset, distributed.shard_indices(len(dataset)))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    for batch in tqdm(loader, desc="eval", disable=not progress, leave=False):
        for group in _same_size_groups(batch):
            images = torch.stack([image for image, _ in group])
            targets = torch.stack([target["mask"] for _, target in group])
            preds = predict_labels(model, images, mean, std, crop=crop, stride=stride, scales=scales,
                                   flip=flip, crf=crf).cpu()
            metrics.update(preds, targets)
            for image, target, pred in zip(images, targets, preds):
                if len(visuals) < num_visuals:
                    visuals.append((image, target, pred))
    model.train(was_training)
    return metrics.compute(), visuals  # compute() sums the confusion matrices of all processes


def write_report(result: dict, classes: Sequence[str], palette, visuals, out_dir: str | Path) -> str:
    """Write ``metrics.json`` (per-class IoU and the four summary metrics), ``per_class_iou.png`` and
    ``overlays.png`` (rows: input | ground truth | prediction) to ``out_dir``; return the Markdown table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: result[k] for k in ("pixel_acc", "mean_acc", "miou", "fwiou")}
    per_class = {name: iou for name, iou in zip(classes, result["iou"])}
    (out / "metrics.json").write_text(json.dumps({**summary, "iou": per_class}, indent=2))
    viz.plot_per_class_iou(result["iou"], classes, out / "per_class_iou.png")
    if visuals:
        rows = [[viz.overlay(image, torch.full_like(target, 255), palette),
                 viz.overlay(image, target, palette), viz.overlay(image, pred, palette)]
                for image, target, pred in visuals]
        viz.grid(rows, titles=["input", "ground truth", "prediction"]).save(out / "overlays.png")
    return format_table(result, classes)
