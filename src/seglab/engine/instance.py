"""The instance task in the engine (torchvision's detection I/O): training data and loss, COCO evaluation
through pycocotools, pictures, the report and prediction on image files. The same names as
``engine.semantic`` (the task seam, ``engine.tasks``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import torch
from PIL import Image
from pycocotools.coco import COCO
from torch import nn
from torchvision.transforms import v2
from tqdm import tqdm

from .. import report, viz
from ..data.coco_format import instance_annotations
from ..data.images import read_image
from ..data.transforms import RandomRotate, color_jitter_transform
from ..metrics.coco import IOU_TYPES, coco_results, evaluate_coco, format_coco_table
from ..models.base import model_device
from . import distributed
from .inference import inference_context
from .sampler import aspect_ratio_groups

DEFAULT_METRIC = "segm_AP"
REPORT_FILES = ("metrics.json (COCO box and mask AP)", "overlays.png", "report.html")
PREDICTION_FILES = "drawings (<stem>_instances.png) and detections (<stem>.json)"
MODEL_KEYS = ("boxes", "labels", "masks")  # what a detection model reads from a target
SEMANTIC_ONLY = {"crop": None, "stride": None, "scales": (1.0,), "flip": False, "crf": None, "batch_size": None,
                 "resize_short": None}


def _refuse_semantic_options(options: dict) -> None:
    """ValueError when an inference option of semantic models is set away from its default."""
    given = [key for key, value in options.items()
             if (tuple(value) if key == "scales" else value) != SEMANTIC_ONLY[key]]
    if given:
        flags = ", ".join("--" + key.replace("_", "-") for key in given)
        raise ValueError(f"{flags} {'applies' if len(given) == 1 else 'apply'} to semantic models only")


def model_options(config, classes: Sequence[str]) -> dict:
    """``mask_classes`` (partial mask supervision: the set-A class names of ``config``) as class ids."""
    names = config.mask_classes
    if names is None:
        return {}
    classes = list(classes)
    unknown = [name for name in names if name not in classes[1:]]
    if unknown or not names:
        raise ValueError(f"mask_classes must name at least one class among {classes[1:]}; unknown: {unknown}")
    return {"mask_classes": sorted(classes.index(name) for name in names)}


def train_transforms(config, meta: dict | None = None) -> v2.Compose:
    """Training augmentation: horizontal flip (``config.hflip``; boxes and masks follow), rotation
    (``config.rotate``: boxes recomputed from the rotated masks, instances left empty dropped), colour jitter
    (``config.color_jitter``, the image only), image -> float32 in [0, 1] (the model normalises and resizes
    itself, so ``meta`` is not needed)."""
    steps = [v2.RandomHorizontalFlip()] if config.hflip else []
    if config.rotate:
        steps.append(RandomRotate(config.rotate))
    if config.color_jitter is not None:
        steps.append(color_jitter_transform(config.color_jitter))
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True)])


def collate(batch: Sequence[tuple]) -> tuple[list[torch.Tensor], list[dict]]:
    """``[(image, target), ...]`` → ``([images], [targets])``, images kept apart since their sizes differ (the
    model batches them itself), targets cut to the keys the model reads."""
    return [image for image, _ in batch], [{key: target[key] for key in MODEL_KEYS} for _, target in batch]


def batch_groups(dataset) -> list[int] | None:
    """Aspect-ratio groups of a COCO dataset (detection batches share one, as torchvision's reference); None
    for generated data, whose images share one size."""
    return aspect_ratio_groups(dataset) if hasattr(dataset, "coco") else None


def criterion(config, train_set, meta: dict) -> None:
    """Instance models train on their own loss dict: the semantic loss options are refused when set."""
    defaults = {"loss": "ce", "loss_weights": None, "class_weights": None, "ohem": None, "label_smoothing": 0.0}
    for name, default in defaults.items():
        if getattr(config, name) != default:
            raise ValueError(f"{name} {getattr(config, name)!r} applies to semantic models only (instance models "
                             f"train on their own losses)")
    return None


def loss_normalizer(micro_batches: list, device: torch.device, criterion: None = None) -> float:
    """The micro-batches of the step: the model's losses are means over its batch, so each is divided by it."""
    return float(len(micro_batches))


def loss(model: nn.Module, images: list[torch.Tensor], targets: list[dict], device: torch.device,
         normalizer: float = 1.0, memory_format: torch.memory_format | None = None,
         criterion: None = None) -> torch.Tensor:
    """Sum of the model's training losses (RPN objectness and boxes, classifier, boxes, masks) / ``normalizer``;
    ``memory_format`` and ``criterion`` are the semantic models' (detection models batch their images themselves
    and compute their own losses)."""
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{key: value.to(device, non_blocking=True) for key, value in target.items()} for target in targets]
    return sum(model(images, targets).values()) / normalizer


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


def detect(model: nn.Module, image: torch.Tensor, device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """The detections of one uint8 image (3,H,W), on the CPU: boxes (K,4) xyxy pixels, labels (K,), scores (K,),
    masks (K,1,H,W) probabilities."""
    device = model_device(model) if device is None else device
    return {key: value.cpu() for key, value in model([image.to(device).float() / 255])[0].items()}


def shown_detections(prediction: dict[str, torch.Tensor], meta: dict,
                     score_threshold: float | None = None) -> dict[str, torch.Tensor]:
    """The detections of ``detect`` scoring >= ``score_threshold`` (default 0.5) and of a named class (COCO's
    "N/A" ids left out), masks binarised at 0.5 to (K,H,W) bool."""
    threshold = 0.5 if score_threshold is None else score_threshold
    named = torch.tensor([meta["classes"][int(label)] != viz.UNNAMED for label in prediction["labels"]],
                         dtype=torch.bool)
    keep = (prediction["scores"] >= threshold) & named
    return {"boxes": prediction["boxes"][keep], "labels": prediction["labels"][keep],
            "scores": prediction["scores"][keep], "masks": prediction["masks"][keep, 0] > 0.5}


def detection_records(shown: dict[str, torch.Tensor], meta: dict) -> list[dict]:
    """``shown_detections`` as JSON records: box xyxy in pixels, label, class name, score."""
    return [{"box": [round(float(v), 2) for v in box], "label": int(label), "class": meta["classes"][int(label)],
             "score": round(float(score), 4)} for box, label, score in zip(shown["boxes"], shown["labels"],
                                                                           shown["scores"])]


def evaluate(model: nn.Module, dataset, meta: dict | None = None, *, progress: bool = True, num_visuals: int = 8,
             labels: Sequence[int] | None = None, **inference):
    """COCO box and mask AP of ``model`` over ``dataset`` (uint8 images, no transforms); ``labels``: score
    these classes only (e.g. the box-only set B of partial supervision). ``meta`` is not needed (the COCO
    categories come from the dataset); ``inference`` options are the semantic models' (an error when set).

    Returns ``(metrics, visuals)``: ``{"bbox": {AP, AP50, ...}, "segm": {...}, "curves": {iou type:
    precision-recall curves}}`` from COCOeval (``metrics.coco.precision_recall``) and up to ``num_visuals``
    tuples ``(image, target, prediction)`` for the picture grid. Under torchrun each process predicts its own
    shard; rank 0 scores all of them and shares the metrics.
    """
    _refuse_semantic_options(inference)
    coco, label_to_category, image_ids = ground_truth(dataset)
    device = model_device(model)
    predictions, visuals = [], []
    indices = distributed.shard_indices(len(dataset))
    with inference_context(model):
        for index in tqdm(indices, desc="eval", disable=not progress, leave=False):
            image, target = dataset[index]
            prediction = detect(model, image, device)
            predictions.append(prediction)
            if len(visuals) < num_visuals:
                visuals.append((image, target, prediction))
    results = distributed.gather_to_main(coco_results(predictions, [image_ids[i] for i in indices], label_to_category))
    metrics = None
    if results is not None:
        curves = {}
        category_ids = None if labels is None else [label_to_category[label] for label in labels]
        metrics = evaluate_coco(coco, results, category_ids=category_ids, curves=curves) | {"curves": curves}
    return distributed.broadcast_from_main(metrics), visuals


def summary(metrics: dict) -> dict[str, float]:
    """``{"bbox": {"AP": …}, …}`` -> ``{"bbox_AP": …}`` for logs and ``best_metric``."""
    return {f"{kind}_{name}": value for kind in IOU_TYPES if kind in metrics for name, value in metrics[kind].items()}


def _picture(image, target, prediction, meta: dict, score_threshold: float = 0.5) -> list[Image.Image]:
    """[input, ground truth, prediction] PIL images of one sample (masks thresholded at 0.5)."""
    classes, palette = meta["classes"], meta["palette"]
    keep = prediction["scores"] >= score_threshold
    return [Image.fromarray(image.permute(1, 2, 0).numpy()),
            viz.draw_instances(image, target["boxes"], target["labels"], target["masks"].bool(), classes, palette),
            viz.draw_instances(image, prediction["boxes"][keep], prediction["labels"][keep],
                               prediction["masks"][keep, 0] > 0.5, classes, palette, prediction["scores"][keep])]


def pictures(visuals, meta: dict) -> list[list[Image.Image]]:
    """[input, ground truth, predictions scoring ≥ 0.5] PIL images of each of :func:`evaluate`'s visuals."""
    return [_picture(*visual, meta) for visual in visuals]


def write_report(metrics: dict, visuals, meta: dict, out_dir: str | Path, *, config: dict | None = None,
                 run_dir: str | Path | None = None) -> str:
    """Write ``metrics.json`` (COCO box/mask stats), ``overlays.png`` (input | ground truth | predictions
    scoring ≥ 0.5) and ``report.html`` (``seglab.report``: with the precision-recall curves of
    :func:`evaluate`, the run's ``config`` and training curves from ``run_dir``); return the Markdown table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores = {kind: metrics[kind] for kind in IOU_TYPES if kind in metrics}
    (out / "metrics.json").write_text(json.dumps(scores, indent=2))
    rows = pictures(visuals, meta)
    if rows:
        viz.grid(rows, titles=list(report.INSTANCE_COLUMNS)).save(out / "overlays.png")
    report.instance_report(out, scores, meta["classes"], [("", row) for row in rows], curves=metrics.get("curves"),
                           config=config, run_dir=run_dir)
    return format_coco_table(scores)


def predict_files(model: nn.Module, paths: Iterable[str | Path], out_dir: str | Path, *,
                  score_threshold: float | None = None, fmt: str = "palette", **inference) -> list[Path]:
    """For each image: ``<stem>_instances.png`` (masks, boxes, class and score drawn) and ``<stem>.json``
    (boxes xyxy in pixels, labels, class names, scores) of the detections scoring ≥ ``score_threshold``
    (default 0.5); detections of unnamed classes (COCO's "N/A" ids) are left out. ``fmt`` and ``inference`` are the semantic models' options (an error when set)."""
    _refuse_semantic_options(inference)
    if fmt != "palette":
        raise ValueError(f"--format {fmt} applies to semantic models only")
    meta, device = model.meta, model_device(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with inference_context(model):
        for path in tqdm(list(paths), desc="predict", unit="img"):
            image = read_image(path)
            shown = shown_detections(detect(model, image, device), meta, score_threshold)
            stem = Path(path).stem
            viz.draw_instances(image, shown["boxes"], shown["labels"], shown["masks"], meta["classes"],
                               meta["palette"], shown["scores"]).save(out / f"{stem}_instances.png")
            (out / f"{stem}.json").write_text(json.dumps(detection_records(shown, meta), indent=1))
            written.append(out / f"{stem}_instances.png")
    return written
