"""Instance segmentation in the engine (torchvision's detection I/O): training data and loss, COCO
evaluation through pycocotools, reports and pictures."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from pycocotools.coco import COCO
from torch import nn
from torchvision.transforms import v2
from tqdm import tqdm

from .. import report, viz
from . import distributed
from ..data.coco import collate_instances, instance_annotations
from ..metrics.coco import coco_results, evaluate_coco, format_coco_table
from .inference import model_device
from .predict import read_image

MODEL_KEYS = ("boxes", "labels", "masks")  # what a detection model reads from a target


def instance_transforms(hflip: bool = True) -> v2.Compose:
    """Training augmentation: horizontal flip (boxes and masks follow), image -> float32 in [0, 1]
    (the model normalises and resizes itself)."""
    return v2.Compose([*([v2.RandomHorizontalFlip()] if hflip else []), v2.ToDtype(torch.float32, scale=True)])


def collate_for_model(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    """(images, targets) lists with the targets cut to the keys the model reads."""
    images, targets = collate_instances(batch)
    return images, [{key: target[key] for key in MODEL_KEYS} for target in targets]


def instance_loss(model: nn.Module, images: list[torch.Tensor], targets: list[dict], device) -> torch.Tensor:
    """Sum of the model's training losses (RPN objectness and boxes, classifier, boxes, masks)."""
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{key: value.to(device, non_blocking=True) for key, value in target.items()} for target in targets]
    return sum(model(images, targets).values())


def ground_truth(dataset) -> tuple[COCO, dict[int, int], list[int]]:
    """(pycocotools COCO, label → category id, image id per index) of an instance dataset.

    A COCO dataset brings its own index; any other (e.g. Shapes) is indexed in memory from its targets
    (image ids 1..N, category id = label).
    """
    if hasattr(dataset, "coco"):
        return dataset.coco, dict(dataset.label_to_category_id), list(dataset.ids)
    images, annotations = [], []
    for index in range(len(dataset)):
        image, target = dataset[index]
        height, width = image.shape[-2:]
        images.append({"id": index + 1, "height": int(height), "width": int(width)})
        annotations += instance_annotations(target["masks"], target["labels"].tolist(), index + 1, len(annotations) + 1)
    categories = [{"id": i, "name": name} for i, name in enumerate(dataset.classes) if i > 0]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    coco.createIndex()
    return coco, {i: i for i in range(1, len(dataset.classes))}, [image["id"] for image in images]


@torch.no_grad()
def evaluate_instances(model: nn.Module, dataset, num_visuals: int = 8, progress: bool = True,
                       labels: Sequence[int] | None = None, curves: dict | None = None):
    """COCO box and mask AP of ``model`` over ``dataset`` (uint8 images, no transforms); ``labels``: score
    these classes only (e.g. the box-only set B of partial supervision); ``curves``: a dict that receives
    the precision-recall curves of each IoU type (``metrics.coco.precision_recall``; on rank 0 only).

    Returns ``(metrics, visuals)``: ``{"bbox": {AP, AP50, ...}, "segm": {...}}`` from COCOeval and up to
    ``num_visuals`` tuples ``(image, target, prediction)`` for the picture grid. Under torchrun each
    process predicts its own shard; rank 0 scores all of them and shares the metrics.
    """
    coco, label_to_category, image_ids = ground_truth(dataset)
    device = model_device(model)
    was_training = model.training
    model.eval()
    predictions, visuals = [], []
    indices = distributed.shard_indices(len(dataset))
    for index in tqdm(indices, desc="eval", disable=not progress, leave=False):
        image, target = dataset[index]
        prediction = model([image.to(device).float() / 255])[0]
        prediction = {key: value.cpu() for key, value in prediction.items()}
        predictions.append(prediction)
        if len(visuals) < num_visuals:
            visuals.append((image, target, prediction))
    model.train(was_training)
    results = distributed.gather_to_main(coco_results(predictions, [image_ids[i] for i in indices], label_to_category))
    category_ids = None if labels is None else [label_to_category[label] for label in labels]
    metrics = evaluate_coco(coco, results, category_ids=category_ids, curves=curves) if results is not None else None
    return distributed.broadcast_from_main(metrics), visuals


def flat_metrics(metrics: dict) -> dict[str, float]:
    """``{"bbox": {"AP": …}}`` -> ``{"bbox_AP": …}`` for logs and ``best_metric``."""
    return {f"{kind}_{name}": value for kind, stats in metrics.items() for name, value in stats.items()}


def instance_picture(image, target, prediction, classes, palette, score_threshold: float = 0.5):
    """[input, ground truth, prediction] PIL images of one sample (masks thresholded at 0.5)."""
    keep = prediction["scores"] >= score_threshold
    return [Image.fromarray(image.permute(1, 2, 0).numpy()),
            viz.draw_instances(image, target["boxes"], target["labels"], target["masks"].bool(), classes, palette),
            viz.draw_instances(image, prediction["boxes"][keep], prediction["labels"][keep],
                               prediction["masks"][keep, 0] > 0.5, classes, palette, prediction["scores"][keep])]


def write_instance_report(metrics: dict, classes: Sequence[str], palette, visuals, out_dir: str | Path, *,
                          curves: dict | None = None, config: dict | None = None,
                          run_dir: str | Path | None = None) -> str:
    """Write ``metrics.json`` (COCO box/mask stats), ``overlays.png`` (input | ground truth | predictions
    scoring ≥ 0.5) and ``report.html`` (``seglab.report``: with the precision-recall ``curves`` of
    ``evaluate_instances``, the run's ``config`` and training curves from ``run_dir``); return the Markdown table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    rows = [instance_picture(image, target, prediction, classes, palette) for image, target, prediction in visuals]
    if rows:
        viz.grid(rows, titles=list(report.INSTANCE_COLUMNS)).save(out / "overlays.png")
    report.instance_report(out, metrics, classes, [("", row) for row in rows], curves=curves, config=config,
                           run_dir=run_dir)
    return format_coco_table(metrics)


@torch.no_grad()
def predict_instance_files(model: nn.Module, paths, out_dir: str | Path, score_threshold: float = 0.5) -> list[Path]:
    """For each image: ``<stem>_instances.png`` (masks, boxes, class and score drawn) and ``<stem>.json``
    (boxes xyxy in pixels, labels, class names, scores) of the detections scoring ≥ ``score_threshold``."""
    meta, device = model.meta, model_device(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    written = []
    for path in tqdm(list(paths), desc="predict", unit="img"):
        image = read_image(path)
        prediction = {k: v.cpu() for k, v in model([image.to(device).float() / 255])[0].items()}
        keep = prediction["scores"] >= score_threshold
        boxes, labels, scores = prediction["boxes"][keep], prediction["labels"][keep], prediction["scores"][keep]
        stem = Path(path).stem
        viz.draw_instances(image, boxes, labels, prediction["masks"][keep, 0] > 0.5, meta["classes"], meta["palette"],
                           scores).save(out / f"{stem}_instances.png")
        detections = [{"box": [round(float(v), 2) for v in box], "label": int(label),
                       "class": meta["classes"][int(label)], "score": round(float(score), 4)}
                      for box, label, score in zip(boxes, labels, scores)]
        (out / f"{stem}.json").write_text(json.dumps(detections, indent=1))
        written.append(out / f"{stem}_instances.png")
    return written
