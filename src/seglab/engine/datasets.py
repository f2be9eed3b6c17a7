"""A dataset split ready for training or evaluation: built by name, its files checked before any work starts."""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from .. import data
from ..data.transforms import IGNORE_INDEX


def build_split(name: str, split: str, *, root: str | Path | None = None, num_images: int | None = None,
                image_size: int = 128, seed: int = 0, num_classes: int | None = None, options: dict | None = None,
                announce: bool = True):
    """``data.build_dataset(name, split, ...)`` (no transforms), validated by ``data.validate_dataset`` against
    ``num_classes`` (default: the dataset's classes) unless it is generated (Shapes, valid by construction).

    A split whose every mask pixel is 255 is refused (nothing to learn from or score); ``announce``: say how
    many images have no labelled pixel (they are kept and add nothing to the loss).
    """
    dataset = data.build_dataset(name, split, root=root, num_images=num_images, image_size=image_size, seed=seed,
                                 **(options or {}))
    if name == "shapes":
        return dataset
    summary = data.validate_dataset(dataset, num_classes)
    if summary["ignore_pixels"] == summary["total_pixels"]:
        raise ValueError(f"every mask pixel of split {split!r} is {IGNORE_INDEX} (ignore): nothing to learn from "
                         f"or score; check the masks' values and the class mapping")
    if summary["unlabelled_images"] and announce:
        tqdm.write(f"seglab: {summary['unlabelled_images']} of {summary['images']} images of split {split!r} have no "
                   f"labelled pixel (all {IGNORE_INDEX}); they are kept and add nothing to the loss")
    return dataset
