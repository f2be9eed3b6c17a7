"""Cityscapes pixel-level evaluation of label-id PNG predictions, as cityscapesscripts'
``evaluation/evalPixelLevelSemanticLabeling.py`` computes its class IoUs and their average."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from seglab.data import cityscapes
from seglab.data.images import read_label_png
from seglab.data.transforms import IGNORE_INDEX
from seglab.metrics.semantic import SegmentationMetrics

OTHER = len(cityscapes.CLASSES)  # column of predicted label ids that are none of the 19 classes


def match_predictions(results_dir: str | Path, gt_files: list[Path]) -> list[Path]:
    """For each ``<city>_<seq>_<frame>_gtFine_labelIds.png``, the one PNG under ``results_dir`` (searched
    recursively) whose name starts with ``<city>_<seq>_<frame>`` (the official ``getPrediction`` rule);
    none -> FileNotFoundError, several -> ValueError, naming the ground truth."""
    candidates = sorted(Path(results_dir).rglob("*.png"))
    matches = []
    for gt in gt_files:
        prefix = cityscapes.frame_prefix(gt)
        found = [path for path in candidates if path.name.startswith(prefix)]
        if not found:
            raise FileNotFoundError(f"no prediction {prefix}*.png under {results_dir} for {gt}")
        if len(found) > 1:
            raise ValueError(f"several predictions for {gt}: {', '.join(map(str, found))}")
        matches.append(found[0])
    return matches


def evaluate_results(results_dir: str | Path, root: str | Path, split: str = "val") -> dict:
    """Class IoUs of the label-id PNGs in ``results_dir`` against every
    ``root/gtFine/<split>/<city>/*_gtFine_labelIds.png``, paired by ``match_predictions``.

    The official rules: ground-truth pixels of the labels that are not evaluated (train id 255) do not
    count; a predicted label id that is none of the 19 classes counts as a miss of the ground-truth class
    (a false negative) and as no class's false positive; a class with neither ground-truth pixels nor
    predictions on counted pixels has no IoU (nan) and is left out of the mean.
    Returns ``SegmentationMetrics.compute()``'s keys for the 19 classes (the per-class lists ``iou``, ``acc``,
    ``dice``, ``precision``, ``recall`` and their means over the non-nan values, ``miou`` …; ``pixel_acc``,
    ``fwiou``), plus ``images``.
    """
    gt_files = sorted((Path(root) / "gtFine" / split).glob(f"*/*{cityscapes.GT_SUFFIX}"))
    if not gt_files:
        raise FileNotFoundError(f"no ground truth <city>/*{cityscapes.GT_SUFFIX} under {Path(root) / 'gtFine' / split}")
    metrics = SegmentationMetrics(len(cityscapes.CLASSES) + 1)  # + OTHER, which no ground truth has
    pairs = zip(match_predictions(results_dir, gt_files), gt_files)
    for pred_file, gt_file in tqdm(list(pairs), desc="cityscapes eval", unit="img"):
        gt = cityscapes.read_gt(gt_file)
        pred = cityscapes.train_ids(read_label_png(pred_file))
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred_file} is {pred.shape} (H, W) but {gt_file} is {gt.shape}")
        pred[pred == IGNORE_INDEX] = OTHER
        metrics.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(gt.astype(np.int64)))
    result = metrics.compute()
    evaluated = {}  # the 19 classes' values, and their means, without the OTHER column
    for per_class, mean in (("iou", "miou"), ("acc", "mean_acc"), ("dice", "mean_dice"),
                            ("precision", "mean_precision"), ("recall", "mean_recall")):
        values = result[per_class][:OTHER]
        valid = [value for value in values if not math.isnan(value)]
        evaluated |= {per_class: values, mean: sum(valid) / len(valid) if valid else math.nan}
    return {**result, **evaluated, "images": len(gt_files)}
