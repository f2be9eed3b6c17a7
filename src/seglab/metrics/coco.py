"""COCO detection / instance segmentation metrics, computed by pycocotools' ``COCOeval`` (never re-implemented).

Flow: model outputs -> ``coco_results`` (COCO results records: original category ids, boxes XYWH, masks as
compressed RLE) -> ``write_coco_results`` (the JSON file COCO tools read) and/or ``evaluate_coco`` ->
``{"bbox": {"AP": ...}, "segm": {...}}``.

As in detectron2's COCO evaluator, one record carries both ``bbox`` and ``segmentation``; for "segm"
evaluation the ``bbox`` is dropped so that ``COCO.loadRes`` takes the detection's area from its mask
(the small / medium / large ranges), and for "bbox" the ``segmentation`` is dropped.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seglab.data.coco_format import encode_masks, load_coco, read_json

# COCOeval.stats, in order (maxDets 100 unless named; s/m/l: area < 32², 32²..96², > 96² pixels)
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")


def coco_results(
    predictions: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    label_to_category_id: Mapping[int, int],
    mask_threshold: float = 0.5,
) -> list[dict]:
    """COCO results records of instance-model outputs.

    Args:
        predictions: one dict per image (torchvision's detection convention, in the image's original
            pixels): ``boxes`` (N, 4) XYXY, ``labels`` (N,) contiguous labels, ``scores`` (N,),
            optionally ``masks`` (N, 1, H, W) or (N, H, W), float probabilities (kept where
            ``> mask_threshold``) or bool / integer binary masks (kept where non-zero).
        image_ids: the COCO image id of each prediction (``target["image_id"]``).
        label_to_category_id: contiguous label -> original COCO category id (``dataset.label_to_category_id``).

    Returns a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` (plus
    ``"segmentation"``: compressed RLE with ``counts`` as str, when masks are given), JSON-ready.
    """
    if len(predictions) != len(image_ids):
        raise ValueError(f"got {len(predictions)} predictions but {len(image_ids)} image ids")
    records = []
    for prediction, image_id in zip(predictions, image_ids):
        boxes = torch.as_tensor(prediction["boxes"]).detach().cpu().reshape(-1, 4).to(torch.float64)
        labels = torch.as_tensor(prediction["labels"]).detach().cpu().reshape(-1).tolist()
        scores = torch.as_tensor(prediction["scores"]).detach().cpu().reshape(-1).tolist()
        if not len(boxes) == len(labels) == len(scores):
            raise ValueError(f"image {image_id}: {len(boxes)} boxes, {len(labels)} labels and {len(scores)} "
                             "scores; expected one of each per detection")
        unknown = sorted(set(labels) - set(label_to_category_id))
        if unknown:
            raise ValueError(f"image {image_id}: labels {unknown} have no COCO category id (known labels "
                             f"{sorted(label_to_category_id)})")
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        segmentations = None
        if prediction.get("masks") is not None:
            masks = torch.as_tensor(prediction["masks"]).detach().cpu()
            if masks.dim() == 4:
                masks = masks[:, 0]
            if masks.dim() != 3 or len(masks) != len(boxes):
                raise ValueError(f"image {image_id}: masks of shape {tuple(masks.shape)} for {len(boxes)} "
                                 "detections; expected (N, 1, H, W) or (N, H, W)")
            segmentations = encode_masks(masks > mask_threshold if masks.is_floating_point() else masks != 0)
        for k, (box, label, score) in enumerate(zip(xywh, labels, scores)):
            record = {"image_id": int(image_id), "category_id": int(label_to_category_id[label]),
                      "bbox": [float(v) for v in box], "score": float(score)}
            if segmentations is not None:
                record["segmentation"] = segmentations[k]
            records.append(record)
    return records


def write_coco_results(results: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write ``results`` (``coco_results``' records) as the JSON list that ``COCO.loadRes`` and the COCO
    evaluation server read; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(results)))
    return path


def _load_results(results: str | Path | Sequence[Mapping[str, Any]]) -> list[dict]:
    if isinstance(results, (str, Path)):
        path = Path(results)
        results = read_json(path, "COCO results file")
        if not isinstance(results, list):
            raise ValueError(f"{path}: expected a JSON list of result records, got {type(results).__name__}")
    return list(results)


def _empty_results(coco_gt: COCO) -> COCO:
    """A results index with no detections (``COCO.loadRes`` fails on an empty list)."""
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                       "categories": copy.deepcopy(coco_gt.dataset["categories"]), "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def evaluate_coco(
    coco_gt: COCO | str | Path,
    results: str | Path | Sequence[Mapping[str, Any]],
    iou_types: Sequence[str] = IOU_TYPES,
    image_ids: Sequence[int] | None = None,
    verbose: bool = False,
    category_ids: Sequence[int] | None = None,
    curves: dict | None = None,
) -> dict[str, dict[str, float]]:
    """COCO metrics of ``results`` against ``coco_gt``, from ``COCOeval(...).stats``.

    Args:
        coco_gt: a pycocotools ``COCO`` (e.g. ``COCOInstances.coco``) or the path of an instances json.
        results: ``coco_results``' records or the path of a results JSON file.
        iou_types: any of "bbox", "segm" ("segm" needs ``segmentation`` in every record).
        image_ids: evaluate on these images only (default: every image of ``coco_gt``; images without
            detections count as misses).
        verbose: print COCOeval's summary table.
        category_ids: evaluate these categories only (COCOeval's ``params.catIds``; default: all).
        curves: a dict that receives ``{iou_type: precision_recall(evaluator)}``, the precision-recall curves.

    Returns ``{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs",
    "ARm", "ARl"}}``, fractions in [0, 1]; a metric COCOeval cannot define (no ground truth in that
    area range: its -1) is NaN. With no detections at all, COCOeval runs on an empty results set
    (AP 0 where there is ground truth) and a warning says so, instead of pycocotools' crash.
    """
    unknown_types = sorted(set(iou_types) - set(IOU_TYPES))
    if unknown_types:
        raise ValueError(f"iou_types {unknown_types} not supported; choose from {IOU_TYPES}")
    if not isinstance(coco_gt, COCO):
        coco_gt = load_coco(coco_gt)
    results = _load_results(results)
    gt_images, gt_categories = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    stray_images = sorted({r["image_id"] for r in results} - gt_images)
    if stray_images:
        raise ValueError(f"results refer to image ids {stray_images[:10]} not in the ground truth")
    stray_categories = sorted({r["category_id"] for r in results} - gt_categories)
    if stray_categories:
        raise ValueError(f"results have category ids {stray_categories[:10]} not in the ground truth "
                         f"{sorted(gt_categories)} (were contiguous labels passed instead of COCO ids?)")
    for record in results:  # maskUtils.iou gives -1 for masks of another size: silent misses otherwise
        segmentation = record.get("segmentation")
        image = coco_gt.imgs[record["image_id"]]
        if isinstance(segmentation, dict) and list(segmentation["size"]) != [image["height"], image["width"]]:
            raise ValueError(f"image id {record['image_id']}: mask of size {list(segmentation['size'])} (h, w) but "
                             f"the image is [{image['height']}, {image['width']}]; predictions must be in the "
                             "original image's pixels")
    if not results:
        warnings.warn("no detections: COCO metrics computed on an empty results set (AP 0 where there is "
                      "ground truth)", stacklevel=2)

    metrics = {}
    for iou_type in iou_types:
        key, drop = ("bbox", "segmentation") if iou_type == "bbox" else ("segmentation", "bbox")
        missing = sum(key not in r for r in results)
        if missing:
            raise ValueError(f"{iou_type} evaluation needs {key!r} in every result record; {missing} of "
                             f"{len(results)} lack it")
        # loadRes adds id / area / iscrowd (and a box or polygon) to the records it gets: give it copies
        records = [{k: v for k, v in r.items() if k != drop} for r in results]
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            coco_dt = coco_gt.loadRes(records) if records else _empty_results(coco_gt)
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            if image_ids is not None:
                evaluator.params.imgIds = sorted(int(i) for i in image_ids)
            if category_ids is not None:
                evaluator.params.catIds = sorted(int(i) for i in category_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        if verbose:
            print(f"COCO {iou_type}:\n" + output.getvalue())
        metrics[iou_type] = {name: float(v) if v >= 0 else math.nan for name, v in zip(STAT_NAMES, evaluator.stats)}
        if curves is not None:
            curves[iou_type] = precision_recall(evaluator)
    return metrics


def precision_recall(evaluator: COCOeval) -> dict[str, list[float]]:
    """Precision at recall 0, 0.01, …, 1 of an accumulated ``COCOeval`` (``eval["precision"]``, all areas,
    the most detections of ``params.maxDets``), averaged over the categories that have ground truth, at
    IoU 0.50:0.95 (also averaged over the thresholds), 0.50 and 0.75: ``{"IoU 0.50:0.95": [...101], ...}``,
    NaN where no category has ground truth."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (IoU thresholds, recall points, categories)
    valid = precision > -1  # -1: a category without ground truth
    counts = valid.sum(axis=2)
    mean = np.where(valid, precision, 0).sum(axis=2) / np.where(counts > 0, counts, np.nan)  # (T, R)
    thresholds = list(np.round(evaluator.params.iouThrs, 2))
    return {"IoU 0.50:0.95": mean.mean(axis=0).tolist(),
            **{f"IoU {iou:.2f}": mean[thresholds.index(iou)].tolist() for iou in (0.5, 0.75)}}


def format_coco_table(metrics: Mapping[str, Mapping[str, float]], names: Sequence[str] = STAT_NAMES[:6]) -> str:
    """A Markdown table of ``evaluate_coco``'s result: one row per IoU type, metrics in percent."""
    lines = ["| iou type | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for iou_type, values in metrics.items():
        cells = ("n/a" if math.isnan(values[n]) else f"{100 * values[n]:.1f}" for n in names)
        lines.append(f"| {iou_type} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
