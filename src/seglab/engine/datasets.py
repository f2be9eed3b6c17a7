"""A dataset split ready for training or evaluation: built by name, its files checked before any work starts."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from .. import data
from ..data.transforms import IGNORE_INDEX


def build_split(name: str, split: str, *, root: str | Path | None = None, num_images: int | None = None,
                image_size: int = 128, seed: int = 0, num_classes: int | None = None, options: dict | None = None,
                announce: bool = True, report: str | Path | None = None, model_classes: Sequence[str] | None = None,
                model_source: str | Path | None = None):
    """``data.build_dataset(name, split, ...)`` (no transforms), validated by ``data.validate_dataset`` against
    ``num_classes`` (default: the dataset's classes) unless it is generated (Shapes, valid by construction):
    the same checks as ``seglab data check``, the first error raised.

    A split whose every mask pixel is 255 is refused (nothing to learn from or score). The check's warnings
    (0/255 binary masks, classes with no pixels, masks without an image, EXIF-rotated photos, and images
    with no labelled pixel: kept, they add nothing to the loss) are kept in ``dataset.data_check``
    (``{"summary": validate_dataset's dict, "warnings": [one line each], "text": the class table and the
    warnings}``); ``announce``: print each warning (``tqdm.write``, for the main rank); ``report``: write
    ``text`` to that file (e.g. the run directory's ``data_check_<split>.txt``).

    ``model_classes``: the class names of the model to be scored (that of the checkpoint ``model_source``);
    unless the dataset's first classes are these, name by name and in order, a ValueError naming both lists
    (the scores would go under the wrong names), before any file is checked.
    """
    dataset = data.build_dataset(name, split, root=root, num_images=num_images, image_size=image_size, seed=seed,
                                 **(options or {}))
    if model_classes is not None:
        _check_classes(list(model_classes), dataset, model_source or "the model",
                       f"split {split!r} of {name}" + (f" under {root}" if root else ""))
    if name == "shapes":
        return dataset
    summary = data.validate_dataset(dataset, num_classes)
    if summary["ignore_pixels"] == summary["total_pixels"]:
        raise ValueError(f"every mask pixel of split {split!r} is {IGNORE_INDEX} (ignore): nothing to learn from "
                         f"or score; check the masks' values and the class mapping")
    warnings = list(summary["warnings"])
    if summary["unlabelled_images"]:
        warnings.append(f"{summary['unlabelled_images']} of {summary['images']} images of split {split!r} have no "
                        f"labelled pixel (all {IGNORE_INDEX}); they are kept and add nothing to the loss")
    classes = list(dataset.classes)[:num_classes or len(dataset.classes)]
    text = "\n".join([f"# data check: {name} split {split!r} under {root}", "", data.format_summary(summary, classes),
                      "", *(f"warning: {w}" for w in warnings)]) + "\n"
    dataset.data_check = {"summary": summary, "warnings": warnings, "text": text}
    if announce:
        for warning in warnings:
            tqdm.write(f"seglab: warning: {warning}")
    if report is not None:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(text)
    return dataset


def _check_classes(model_classes: list[str], dataset, model_source, where: str) -> None:
    """``build_split``'s ``model_classes`` check."""
    classes = list(dataset.classes)[:len(model_classes)]
    if classes != model_classes:
        raise ValueError(f"{model_source} was trained on the classes {', '.join(model_classes)} "
                         f"({len(model_classes)}), {where} has {', '.join(classes)} ({len(classes)}): its scores "
                         f"would go under the wrong names; evaluate on data with the model's classes, in its order "
                         f"(e.g. the folder's classes.txt)")
