"""Datasets, transforms, export and validation.

Every dataset: ``ds[i] -> (tv_tensors.Image uint8 (3, H, W), {"mask": tv_tensors.Mask (H, W) int64,
255 = ignore, plus "boxes", "labels", "masks" where instances exist})``; constructor takes
``transforms=``; attributes ``classes`` and ``palette``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from seglab.data.coco import COCOInstances, GroupedBatchSampler, aspect_ratio_groups, collate_instances
from seglab.data.export import export_shapes
from seglab.data.shapes import DEFAULT_NUM_IMAGES, Shapes
from seglab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transforms, train_transforms
from seglab.data.validate import format_summary, validate_dataset
from seglab.data.voc import VOCSegmentation

__all__ = [
    "COCOInstances",
    "GroupedBatchSampler",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Shapes",
    "VOCSegmentation",
    "aspect_ratio_groups",
    "build_dataset",
    "collate_instances",
    "dataset_names",
    "eval_transforms",
    "export_shapes",
    "format_summary",
    "train_transforms",
    "validate_dataset",
]


def _shapes(split, root, num_images, image_size, seed, transforms):
    num_images = DEFAULT_NUM_IMAGES.get(split, 0) if num_images is None else num_images
    return Shapes(split, num_images, image_size=image_size, seed=seed, transforms=transforms, cache=True)


def _voc(split, root, num_images, image_size, seed, transforms):
    if root is None:
        raise ValueError("dataset 'voc' needs root (the folder holding JPEGImages/, SegmentationClass/, ImageSets/)")
    if num_images is not None:
        raise ValueError("num_images only applies to 'shapes'; 'voc' reads the ids listed in its split file")
    return VOCSegmentation(root, split, transforms=transforms)


def _coco(split, root, num_images, image_size, seed, transforms):
    if root is None:
        raise ValueError("dataset 'coco' needs root (the folder holding <split>2017/ and annotations/)")
    if num_images is not None:
        raise ValueError("num_images only applies to 'shapes'; 'coco' reads the images of its annotation file")
    root = Path(root)
    return COCOInstances(root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json",
                         transforms=transforms)


_BUILDERS = {"shapes": _shapes, "voc": _voc, "coco": _coco}


def dataset_names() -> list[str]:
    """Names accepted by ``build_dataset``."""
    return sorted(_BUILDERS)


def build_dataset(
    name: str,
    split: str,
    root: str | Path | None = None,
    num_images: int | None = None,
    image_size: int = 128,
    seed: int = 0,
    transforms: Callable | None = None,
):
    """The dataset ``name`` ("shapes", "voc" or "coco") for ``split``.

    "shapes": generated, ``num_images`` defaults to train 1000, val 200, test 200; ``image_size``
    (pixels) and ``seed`` apply to it only. "voc", "coco": read from ``root`` (required); "coco" reads
    ``root/<split>2017/`` and ``root/annotations/instances_<split>2017.json``.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    return _BUILDERS[name](split, root, num_images, image_size, seed, transforms)
