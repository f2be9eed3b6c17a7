"""Evaluation of a semantic model on a dataset: metrics, per-class table, pictures and the HTML report."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from .. import report, viz
from . import distributed
from ..metrics import SegmentationMetrics, format_table
from .inference import Size, crf_refine, infer_logits


def _same_size_groups(items: list) -> list[list]:
    """Split a batch of (image, target) items into runs of equal image size (so they can be stacked)."""
    groups: list[list] = []
    for item in items:
        if groups and groups[-1][0][0].shape == item[0].shape:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def image_miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> float:
    """Mean IoU of one image (H, W) over the classes in its labelled target or prediction pixels; nan when
    no pixel is labelled."""
    keep = target != ignore_index
    pred, target = pred[keep].long(), target[keep].long()
    hits = torch.bincount(target[pred == target], minlength=num_classes)
    union = torch.bincount(target, minlength=num_classes) + torch.bincount(pred, minlength=num_classes) - hits
    present = union > 0
    return (hits[present] / union[present]).mean().item()


def _best_and_worst(ranked: list, count: int) -> list:
    """The ``count // 2`` best and the other ``count - count // 2`` worst of (…, iou) tuples, best first."""
    ranked.sort(key=lambda item: -item[-1])
    return ranked if len(ranked) <= count else ranked[: count // 2] + ranked[len(ranked) - (count - count // 2):]


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, num_classes: int, mean: Sequence[float], std: Sequence[float],
             batch_size: int = 8, num_visuals: int = 8, num_workers: int = 0, progress: bool = True, *,
             crop: Size | None = None, stride: Size | None = None, scales: Sequence[float] = (1.0,),
             flip: bool = False, crf: dict | None = None):
    """Metrics of ``model`` over ``dataset`` (items as uint8 images, no transforms applied).

    ``crop``, ``stride``, ``scales`` and ``flip`` choose the inference mode (see ``infer_logits``);
    the default is whole-image inference. ``crf``: ``dense_crf`` keywords to refine each prediction.

    Returns ``(result, visuals)``: the ``SegmentationMetrics.compute()`` dict plus ``"confusion"`` (the
    (C, C) pixel counts as lists, rows = target) and, with ``crf``, ``"without_crf"``: the same for the
    unrefined predictions; ``visuals``: tuples ``(image uint8 (3,H,W), target (H,W), prediction (H,W),
    image mIoU)`` of the ``num_visuals // 2`` best and the other worst images by ``image_miou``, best first.
    Under torchrun each process evaluates its own shard (and keeps its own visuals) and the confusion
    matrices are summed over the processes.
    """
    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(num_classes)
    plain = SegmentationMetrics(num_classes) if crf is not None else None
    visuals = []
    shard = Subset(dataset, distributed.shard_indices(len(dataset)))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    for batch in tqdm(loader, desc="eval", disable=not progress, leave=False):
        for group in _same_size_groups(batch):
            images = torch.stack([image for image, _ in group])
            targets = torch.stack([target["mask"] for _, target in group])
            logits = infer_logits(model, images, mean, std, crop=crop, stride=stride, scales=scales, flip=flip)
            if plain is not None:
                plain.update(logits.argmax(1).cpu(), targets)
                logits = crf_refine(images, logits, crf)
            preds = logits.argmax(1).cpu()
            metrics.update(preds, targets)
            for image, target, pred in zip(images, targets, preds):
                iou = image_miou(pred, target, num_classes)
                if not math.isnan(iou):
                    visuals.append((image, target, pred, iou))
        visuals = _best_and_worst(visuals, num_visuals)
    model.train(was_training)
    result = _with_confusion(metrics)
    if plain is not None:
        result["without_crf"] = _with_confusion(plain)
    return result, visuals


def _with_confusion(metrics: SegmentationMetrics) -> dict:
    """``metrics.compute()`` (which sums the confusion matrices of all processes) plus ``"confusion"``."""
    return metrics.compute() | {"confusion": metrics.confusion.tolist()}


def overlay_rows(visuals, palette) -> list[list]:
    """[input, ground truth overlay, prediction overlay] PIL images of each of ``evaluate``'s visuals."""
    return [[viz.overlay(image, torch.full_like(target, 255), palette), viz.overlay(image, target, palette),
             viz.overlay(image, pred, palette)] for image, target, pred, _ in visuals]


def write_report(result: dict, classes: Sequence[str], palette, visuals, out_dir: str | Path, *,
                 config: dict | None = None, run_dir: str | Path | None = None) -> str:
    """Write ``metrics.json`` (the four summary metrics and per-class IoU, also without the CRF when
    ``result`` has both), ``per_class_iou.png``, ``overlays.png`` (rows: input | ground truth | prediction,
    best images first) and ``report.html`` (``seglab.report``: ``config`` is the run's, training curves
    from ``run_dir``) to ``out_dir``; return the Markdown table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def summary(values: dict) -> dict:
        return {k: values[k] for k in report.SEMANTIC_METRICS} | {"iou": dict(zip(classes, values["iou"]))}

    extra = {"without_crf": summary(result["without_crf"])} if "without_crf" in result else {}
    (out / "metrics.json").write_text(json.dumps(summary(result) | extra, indent=2))
    viz.plot_per_class_iou(result["iou"], classes, out / "per_class_iou.png")
    rows = overlay_rows(visuals, palette)
    if rows:
        viz.grid(rows, titles=list(report.SEMANTIC_COLUMNS)).save(out / "overlays.png")
    ranked = [(f"mIoU {100 * iou:.1f}%", row) for row, (*_, iou) in zip(rows, visuals)]
    report.semantic_report(out, result, classes, ranked, config=config, run_dir=run_dir)
    return format_table(result, classes)
