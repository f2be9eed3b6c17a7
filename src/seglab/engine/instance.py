"""The instance task in the engine (torchvision's detection I/O): training data and loss, COCO evaluation
through pycocotools, pictures, the report and prediction on image files. The same names as
``engine.semantic`` (the task seam, ``engine.tasks``)."""
from __future__ import annotations

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
from ..data.transforms import RandomRotate, color_jitter_transform
from ..io import save_image, write_json
from ..metrics.coco import IOU_TYPES, STAT_NAMES, coco_results, evaluate_coco, format_coco_table
from ..models.base import model_device
from ..models.detection import paste_masks_in_image, resize_boxes
from . import distributed, inputs
from .inference import inference_context
from .sampler import aspect_ratio_groups

DEFAULT_METRIC = "segm_AP"
METRICS = tuple(f"{kind}_{name}" for kind in IOU_TYPES for name in STAT_NAMES)  # summary()'s names
REPORT_FILES = ("metrics.json (COCO box and mask AP)", "overlays.png", "report.html")
PREDICTION_FILES = "drawings (<stem>_instances.png) and detections (<stem>.json)"
MODEL_KEYS = ("boxes", "labels", "masks")  # what a detection model reads from a target
SEMANTIC_ONLY = {"crop": None, "stride": None, "scales": (1.0,), "flip": False, "crf": None, "batch_size": None,
                 "resize_short": None, "boundary_band": None}


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


def synthetic_batch(meta: dict, batch: int, size: tuple[int, int],
                    generator: torch.Generator) -> tuple[list[torch.Tensor], list[dict]]:
    """Random images (3,H,W) in [0, 1] with two box-and-mask instances each of ``meta``'s classes, as ``collate``
    gives them (for ``engine.benchmark``)."""
    height, width = size
    images, targets = [], []
    for _ in range(batch):
        corners = torch.rand(2, 4, generator=generator) * torch.tensor([width / 2, height / 2] * 2)
        boxes = torch.cat([corners[:, :2], corners[:, :2] + corners[:, 2:] + 8], 1).round()
        boxes = boxes.clamp_max(torch.tensor([width - 1, height - 1] * 2, dtype=boxes.dtype))
        masks = torch.zeros(2, height, width, dtype=torch.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
            mask[y1:y2 + 1, x1:x2 + 1] = 1
        labels = torch.randint(1, meta["num_classes"], (2,), generator=generator)
        images.append(torch.rand(3, height, width, generator=generator))
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return images, targets


def model_inputs(images: list[torch.Tensor], device: torch.device,
                 memory_format: torch.memory_format | None = None) -> list[torch.Tensor]:
    """What the model's forward takes for a ``collate``-d batch of images: the list on ``device``
    (``memory_format`` is the semantic models': detection models batch their images themselves)."""
    return [image.to(device) for image in images]


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


def detect_batch(model: nn.Module, images: list[torch.Tensor],
                 device: torch.device | None = None) -> list[dict[str, torch.Tensor]]:
    """The detections of each uint8 image (3,H,W), the list through the model in one call, on the CPU: boxes (K,4)
    xyxy pixels, labels (K,), scores (K,), masks (K,1,H,W) probabilities."""
    device = model_device(model) if device is None else device
    return [{key: value.cpu() for key, value in prediction.items()}
            for prediction in model([image.to(device).float() / 255 for image in images])]


def detect(model: nn.Module, image: torch.Tensor, device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """``detect_batch`` of one uint8 image (3,H,W)."""
    return detect_batch(model, [image], device)[0]


@torch.no_grad()
def mask_iou_on_true_boxes(model: nn.Module, dataset, labels: Sequence[int] | None = None) -> float:
    """Mean IoU between the ground-truth masks of ``dataset``'s instances (of ``labels`` only, if given) and the
    model's masks (probability ≥ 0.5) for their true boxes and classes (``roi_heads.masks_for``): mask quality
    apart from detection, as the Mask^X paper measures it."""
    device = model_device(model)
    model.eval()
    ious = []
    for image, target in dataset:
        keep = torch.ones_like(target["labels"], dtype=torch.bool) if labels is None else \
            torch.isin(target["labels"], torch.tensor(list(labels)))
        if not keep.any():
            continue
        boxes, size = target["boxes"][keep].float(), tuple(image.shape[-2:])
        batch, sizes, _ = model.transform([image.float().to(device) / 255])
        resized = resize_boxes(boxes.to(device), size, sizes[0])
        probs = model.roi_heads.masks_for(model.backbone(batch), [resized], target["labels"][keep].to(device), sizes)
        masks = paste_masks_in_image(probs, boxes.to(device), size)[:, 0].cpu() >= 0.5
        truth = target["masks"][keep].bool()
        ious.append((masks & truth).flatten(1).sum(1) / (masks | truth).flatten(1).sum(1).clamp(min=1))
    return torch.cat(ious).mean().item() if ious else float("nan")


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
    write_json(out / "metrics.json", scores)  # NaN (no instance to measure) as null
    rows = pictures(visuals, meta)
    if rows:
        viz.grid(rows, titles=list(report.INSTANCE_COLUMNS)).save(out / "overlays.png")
    report.instance_report(out, scores, meta["classes"], [("", row) for row in rows], curves=metrics.get("curves"),
                           config=config, run_dir=run_dir)
    return format_coco_table(scores)


def _prediction_outputs(item: inputs.Input, out: Path, video_masks: bool) -> list[Path]:
    """The files ``predict_files`` writes for ``item`` in ``out`` (a video's mask frames: their folder)."""
    base = out / item.name
    if item.is_video:
        return inputs.video_outputs(base, video_masks)
    return [base.with_name(base.name + "_instances.png"), base.with_name(base.name + ".json")]


def _shown_batch(model: nn.Module, images: list[torch.Tensor], device: torch.device, meta: dict,
                 score_threshold: float | None) -> list[dict[str, torch.Tensor]]:
    """``shown_detections`` of each uint8 image (3,H,W), the list through the model in one call."""
    return [shown_detections(prediction, meta, score_threshold) for prediction in detect_batch(model, images, device)]


def drawing(image: torch.Tensor, shown: dict[str, torch.Tensor], meta: dict) -> Image.Image:
    """``viz.draw_instances`` of ``shown_detections`` on the uint8 image (3,H,W)."""
    return viz.draw_instances(image, shown["boxes"], shown["labels"], shown["masks"], meta["classes"],
                              meta["palette"], shown["scores"])


def _class_map(shown: dict[str, torch.Tensor], meta: dict, size: tuple[int, int]) -> Image.Image:
    """Palette PNG (H,W) of the class of the best-scoring detection over each pixel (0 where none)."""
    labels = torch.zeros(size, dtype=torch.uint8)
    for k in shown["scores"].argsort().tolist():  # ascending, so the best is painted last
        labels[shown["masks"][k]] = int(shown["labels"][k])
    return viz.colorize(labels, meta["palette"])


def predict_files(model: nn.Module, paths: Iterable[inputs.Input | str | Path], out_dir: str | Path, *,
                  score_threshold: float | None = None, fmt: str = "palette", batch_size: int = 1,
                  resize: Sequence[int] | None = None, save_probs: bool = False, skip_existing: bool = False,
                  video_masks: bool = False, **inference) -> inputs.Written:
    """For each image (an ``engine.inputs.Input`` or a path; ``NAME`` its output name): ``OUT/NAME_instances.png``
    (masks, boxes, class and score drawn) and ``OUT/NAME.json`` (boxes xyxy in pixels, labels, class names,
    scores) of the detections scoring ≥ ``score_threshold`` (default 0.5); detections of unnamed classes (COCO's
    "N/A" ids) are left out. For each video: ``OUT/NAME_overlay.mp4`` of the drawings, with ``video_masks`` also
    ``OUT/NAME/frame_000000.png`` ... (palette PNGs of the best-scoring detection's class per pixel).
    ``batch_size`` images go through the model as one list (any sizes); ``skip_existing`` skips inputs whose
    outputs all exist. ``fmt``, ``resize``, ``save_probs`` and ``inference`` are the semantic models' options (an
    error when set)."""
    _refuse_semantic_options(inference)
    if fmt != "palette":
        raise ValueError(f"--format {fmt} applies to semantic models only")
    if save_probs:
        raise ValueError("--save-probs applies to semantic models only: an instance model scores detections, "
                         "not classes per pixel (see NAME.json)")
    if resize is not None:
        raise ValueError("--resize applies to semantic models only: an instance model resizes images itself "
                         "(its min_size/max_size options)")
    items = inputs.as_inputs(paths)
    meta, device, out = model.meta, model_device(model), Path(out_dir)

    def outputs(item: inputs.Input) -> list[Path]:
        return _prediction_outputs(item, out, video_masks)

    todo, skipped = inputs.plan(items, outputs, batch_size, skip_existing)
    written = inputs.Written(skipped=skipped)

    def draw_frames(frames: list[torch.Tensor]) -> list:
        return [(drawing(frame, shown, meta), _class_map(shown, meta, frame.shape[-2:]) if video_masks else None)
                for frame, shown in zip(frames, _shown_batch(model, frames, device, meta, score_threshold))]

    with inference_context(model):
        for batch in inputs.image_batches([i for i in todo if not i.is_video], batch_size, by_size=False):
            images = [image for _, image in batch]
            for (item, image), shown in zip(batch, _shown_batch(model, images, device, meta, score_threshold)):
                drawing_path, records = outputs(item)
                save_image(drawing(image, shown, meta), drawing_path)
                write_json(records, detection_records(shown, meta), indent=1)
                written.files += 2
                written.inputs += 1
        inputs.predict_videos(todo, outputs, draw_frames, batch_size, written)
    return written
