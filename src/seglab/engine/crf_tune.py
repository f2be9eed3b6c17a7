"""DeepLab's choice of the dense CRF's appearance kernel: a grid search over (w1, θα, θβ) on a few
validation images, with the smoothness kernel fixed (w2 = 3, θγ = 3), as in Chen et al. (ICLR 2015)."""
from __future__ import annotations

import itertools
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..crf import dense_crf
from ..metrics import SegmentationMetrics
from .inference import infer_logits

#: dense_crf keyword -> values tried; the appearance weight w1, θα (pixels) and θβ (intensity).
DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "bilateral_compat": (3.0, 4.0, 5.0, 10.0),
    "bilateral_sxy": (20.0, 50.0, 80.0, 121.0),
    "bilateral_srgb": (3.0, 5.0, 13.0),
}


@torch.no_grad()
def tune_crf(model: nn.Module, dataset: Dataset, num_classes: int, mean: Sequence[float], std: Sequence[float],
             grid: dict[str, Sequence[float]] | None = None, fixed: dict[str, float] | None = None,
             iterations: int = 10, progress: bool = True) -> tuple[float, list[tuple[dict, float]]]:
    """mIoU without the CRF and ``[(dense_crf keywords, mIoU)]`` for every grid point, best first.

    The model runs once per image (whole-image inference); its logits are kept and every setting of
    ``grid`` (default :data:`DEFAULT_GRID`) refines them. ``fixed`` holds the other keywords
    (default: the smoothness kernel w2 = 3, θγ = 3).
    """
    grid = grid or DEFAULT_GRID
    fixed = {"gaussian_sxy": 3.0, "gaussian_compat": 3.0, **(fixed or {}), "iterations": iterations}
    was_training = model.training
    model.eval()
    samples, baseline = [], SegmentationMetrics(num_classes)
    for index in tqdm(range(len(dataset)), desc="logits", disable=not progress, leave=False):
        image, target = dataset[index]
        logits = infer_logits(model, image[None], mean, std).float().cpu()
        baseline.update(logits.argmax(1), target["mask"][None])
        samples.append((image[None], target["mask"][None], logits))
    model.train(was_training)
    results = []
    settings = list(itertools.product(*grid.values()))
    for values in tqdm(settings, desc="crf-tune", disable=not progress):
        params = {**fixed, **dict(zip(grid, values))}
        metrics = SegmentationMetrics(num_classes)
        for image, mask, logits in samples:
            metrics.update(dense_crf(image, logits, logits=True, **params).argmax(1), mask)
        results.append((params, metrics.compute()["miou"]))
    results.sort(key=lambda item: -item[1])
    return baseline.compute()["miou"], results
