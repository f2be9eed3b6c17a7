"""DeepLab's choice of the dense CRF's appearance kernel: a grid search over (w1, θα, θβ) on a few
validation images, with the smoothness kernel fixed (w2 = 3, θγ = 3), as in Chen et al. (ICLR 2015)."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..crf import dense_crf
from ..io import writable_dir, write_json
from ..metrics import SegmentationMetrics
from .evaluate import evaluation_setup
from .inference import infer_logits, inference_context

#: dense_crf keyword -> values tried; the appearance weight w1, θα (pixels) and θβ (intensity).
DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "bilateral_compat": (3.0, 4.0, 5.0, 10.0),
    "bilateral_sxy": (20.0, 50.0, 80.0, 121.0),
    "bilateral_srgb": (3.0, 5.0, 13.0),
}


# What the search keeps fixed: DeepLab's smoothness kernel (w2 = 3, θγ = 3) and the per-pixel normalisation
# D^-1 K of densecrf v1, under which DeepLab cross-validated its bilateral kernel.
FIXED = {"gaussian_sxy": 3.0, "gaussian_compat": 3.0, "normalization": "after"}


@torch.no_grad()
def tune_crf(model: nn.Module, dataset: Dataset, num_classes: int, mean: Sequence[float], std: Sequence[float],
             grid: dict[str, Sequence[float]] | None = None, fixed: dict[str, float] | None = None,
             iterations: int = 10, progress: bool = True) -> tuple[float, list[tuple[dict, float]]]:
    """mIoU without the CRF and ``[(dense_crf keywords, mIoU)]`` for every grid point, best first.

    The model runs once per image (whole-image inference); its logits are kept and every setting of
    ``grid`` (default :data:`DEFAULT_GRID`) refines them. ``fixed`` holds the other keywords
    (default :data:`FIXED`: the smoothness kernel w2 = 3, θγ = 3, normalisation "after").
    """
    grid = grid or DEFAULT_GRID
    fixed = {**FIXED, **(fixed or {}), "iterations": iterations}
    samples, baseline = [], SegmentationMetrics(num_classes)
    with inference_context(model):
        for index in tqdm(range(len(dataset)), desc="logits", disable=not progress, leave=False):
            image, target = dataset[index]
            logits = infer_logits(model, image[None], mean, std).float().cpu()
            baseline.update(logits.argmax(1), target["mask"][None])
            samples.append((image[None], target["mask"][None], logits))
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


def crf_tune_checkpoint(checkpoint: str | Path, out: str | Path | None = None, *, num_images: int | None = 100,
                        grid: dict[str, Sequence[float] | None] | None = None, fixed: dict[str, float] | None = None,
                        iterations: int = 10, top: int = 10, **setup) -> str:
    """``seglab crf-tune``: :func:`tune_crf` on the first ``num_images`` images of the split that
    ``evaluation_setup``'s ``setup`` keywords choose; ``grid`` values left None take :data:`DEFAULT_GRID`'s.
    Writes ``OUT/crf_tune.json`` (default ``RUN_DIR/crf_tune``); returns the ranked table (``top`` rows), the
    best setting and the flags that select it."""
    path, model, dataset, _ = evaluation_setup(checkpoint, **setup)
    meta = model.meta
    if num_images and num_images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(num_images))
    grid = {key: (grid or {}).get(key) or values for key, values in DEFAULT_GRID.items()}
    fixed = {**FIXED, **(fixed or {})}
    baseline, results = tune_crf(model, dataset, meta["num_classes"], meta["mean"], meta["std"], grid, fixed,
                                 iterations)
    lines = [f"{len(dataset)} images, w2 = {fixed['gaussian_compat']:g}, θγ = {fixed['gaussian_sxy']:g}, "
             f"normalisation {fixed['normalization']!r}, {iterations} iterations; "
             f"mIoU without the CRF: {baseline:.4f}", "",
             "| w1 | θα | θβ | mIoU |", "|---:|---:|---:|---:|"]
    lines += [f"| {p['bilateral_compat']:g} | {p['bilateral_sxy']:g} | {p['bilateral_srgb']:g} | {miou:.4f} |"
              for p, miou in results[:top]]
    best, miou = results[0]
    flags = " ".join(f"--crf-param {key}={best[key]:g}" for key in ("bilateral_compat", "bilateral_sxy",
                                                                   "bilateral_srgb", "gaussian_compat", "gaussian_sxy"))
    flags += f" --crf-param normalization={best['normalization']}"
    out = writable_dir(out or path.parent / "crf_tune")
    write_json(out / "crf_tune.json", {"images": len(dataset), "baseline_miou": baseline,
                                       "results": [{**p, "miou": m} for p, m in results]})
    lines += ["", f"best: w1 = {best['bilateral_compat']:g}, θα = {best['bilateral_sxy']:g}, "
                  f"θβ = {best['bilateral_srgb']:g}: mIoU {miou:.4f} ({miou - baseline:+.4f} over no CRF)",
              f"use: seglab eval --checkpoint {checkpoint} --crf {flags}", f"wrote {out}/crf_tune.json"]
    return "\n".join(lines)
