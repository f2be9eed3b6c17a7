"""Datasets, transforms, export and validation.

Every dataset: ``ds[i] -> (tv_tensors.Image uint8 (3, H, W), {"mask": tv_tensors.Mask (H, W) int64,
255 = ignore, plus "boxes", "labels", "masks" where instances exist})``; constructor takes
``transforms=``; attributes ``classes`` and ``palette``.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

from seglab.data.cityscapes import Cityscapes
from seglab.data.coco import COCOInstances
from seglab.data.export import export_shapes
from seglab.data.folder import FolderSegmentation
from seglab.data.sbd import SBD
from seglab.data.shapes import DEFAULT_NUM_IMAGES, Shapes
from seglab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transforms, train_transforms
from seglab.data.validate import format_summary, validate_dataset
from seglab.data.voc import VOCSegmentation

__all__ = [
    "COCOInstances",
    "Cityscapes",
    "FolderSegmentation",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SBD",
    "Shapes",
    "VOCSegmentation",
    "build_dataset",
    "check_reader_options",
    "dataset_names",
    "eval_transforms",
    "export_shapes",
    "format_summary",
    "reader_options",
    "train_transforms",
    "validate_dataset",
]


def _coco(root: Path, split: str, transforms: Callable | None, **options):
    return COCOInstances(root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json",
                         transforms=transforms, **options)


def _folder(root: Path, split: str | None, transforms: Callable | None, **options):
    return FolderSegmentation(root, split=None if split == "all" else split, transforms=transforms, **options)


# name: (reader(root, split, transforms, **options), the dataset class it builds, what its root holds)
_READERS = {
    "voc": (VOCSegmentation, VOCSegmentation, "the folder holding JPEGImages/, SegmentationClass/, ImageSets/"),
    "sbd": (SBD, SBD, "the folder holding img/, cls/, train.txt, val.txt"),
    "cityscapes": (Cityscapes, Cityscapes, "the folder holding leftImg8bit/ and gtFine/"),
    "coco": (_coco, COCOInstances, "the folder holding <split>2017/ and annotations/"),
    "folder": (_folder, FolderSegmentation, "the folder holding images/, masks/, classes.txt"),
}
# constructor arguments that build_dataset itself passes, not reader options
_PASSED = {"root", "split", "transforms", "image_dir", "ann_file"}


def dataset_names() -> list[str]:
    """Names accepted by ``build_dataset``."""
    return sorted(["shapes", *_READERS])


def reader_options(name: str) -> list[str]:
    """The reader options (``--data-option KEY=VALUE`` keys) that dataset ``name`` takes."""
    if name == "shapes":
        return []
    if name not in _READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    parameters = inspect.signature(_READERS[name][1]).parameters
    return [key for key, p in parameters.items()
            if key not in _PASSED and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_reader_options(name: str, options: dict) -> None:
    """ValueError naming the unknown keys when ``options`` are not all reader options of dataset ``name``."""
    known = reader_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"data_options: {', '.join(map(repr, unknown))} is not an option of the {name!r} reader; "
                         + (f"its options: {', '.join(known)}" if known else "it takes none"))


def build_dataset(
    name: str,
    split: str | None,
    root: str | Path | None = None,
    num_images: int | None = None,
    image_size: int = 128,
    seed: int = 0,
    transforms: Callable | None = None,
    **options,
):
    """The dataset ``name`` (one of ``dataset_names()``) for ``split``.

    "shapes": generated, ``num_images`` defaults to train 1000, val 200, test 200; ``image_size``
    (pixels) and ``seed`` apply to it only. The others read ``root`` (required), and ``options`` go to
    their reader: "voc" ``VOCSegmentation``, "sbd" ``SBD`` (``voc_root=`` for "train_aug"),
    "cityscapes" ``Cityscapes``, "coco" ``COCOInstances`` on ``root/<split>2017/`` and
    ``root/annotations/instances_<split>2017.json``, "folder" ``FolderSegmentation`` (split "all" or
    None: every image).
    """
    check_reader_options(name, options)
    if name == "shapes":
        num_images = DEFAULT_NUM_IMAGES.get(split, 0) if num_images is None else num_images
        return Shapes(split, num_images, image_size=image_size, seed=seed, transforms=transforms, cache=True)
    reader, _, layout = _READERS[name]
    if root is None:
        raise ValueError(f"dataset {name!r} needs root ({layout})")
    if num_images is not None:
        raise ValueError(f"num_images only applies to 'shapes'; {name!r} reads the files under its root")
    return reader(Path(root), split, transforms, **options)
